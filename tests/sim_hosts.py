"""Simulated hosts on one Linux machine, for multi-node tests.

Each simulated host is a network namespace plus a UTS namespace (its own host name) whose
``eth0`` is one end of a veth pair; the other end sits in a separate "switch" namespace, on a
bridge that joins all hosts. Every host gets an address in a private subnet (by default
``10.213.0.0/24``) that exists only inside these namespaces: nothing is added to the machine's
own network, so test traffic can only go to loopback or to the other simulated hosts.

A command run "on" a host enters its network and UTS namespaces (``nsenter``; not
``ip netns exec``, which remounts ``/sys`` and hides ``/sys/fs/cgroup``) and a private mount
namespace (``unshare --mount``) in which a hosts file naming every simulated host is bind-mounted
over ``/etc/hosts``. The file system is otherwise the machine's, shared by all hosts as NFS
would be.

Example::

    reason = unavailable()
    if reason is None:
        with SimulatedHosts(2) as hosts:
            hosts[0].run(["ping", "-c1", hosts[1].name])
            hosts.cut_link(1)        # host 1 is unreachable (cable pulled)
            hosts.restore_link(1)
            hosts.kill_all(1)        # SIGKILL every process running on host 1
        assert not hosts.leftovers()

Teardown (``close``, also on exceptions inside ``with``) kills every process inside the hosts'
namespaces, deletes the namespaces (which removes the veths and the bridge) and the UTS
namespace files; :meth:`SimulatedHosts.leftovers` lists anything that survived.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SimulatedHost", "SimulatedHosts", "unavailable"]

_TOOLS = ("ip", "nsenter", "unshare", "mount", "umount")
_RUN_ROOT = Path("/run/tfplace-sim")
_NETNS_DIR = Path("/run/netns")


def _which(tool: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
    return shutil.which(tool, path=path)


def unavailable() -> str | None:
    """Why simulated hosts cannot be made here, or None when they can.

    Checks for root, the tools (``ip``, ``nsenter``, ``unshare``, ``mount``) and that a
    network namespace can really be created and deleted (containers often forbid it).
    """
    if os.geteuid() != 0:
        return "simulated hosts need root (network and UTS namespaces)"
    missing = [t for t in _TOOLS if _which(t) is None]
    if missing:
        return f"simulated hosts need {', '.join(missing)} (not found)"
    probe = f"tfpprobe-{os.getpid()}-{secrets.token_hex(3)}"
    ip = _which("ip") or "ip"
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run([ip, "netns", "delete", probe], capture_output=True)
    return None


def _ns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int) -> list[int]:
    """Every live (non-zombie) process whose network namespace has this inode."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != inode:
                continue
            if not (entry / "cmdline").read_bytes():
                continue  # a zombie (or a kernel thread): nothing to kill
        except OSError:
            continue
        found.append(int(entry.name))
    return found


class SimulatedHost:
    """One simulated host: a name, an address, and ways to run commands on it."""

    def __init__(self, owner: SimulatedHosts, index: int, name: str, address: str) -> None:
        self._owner = owner
        self.index = index
        self.name = name
        self.address = address
        self.netns = f"{owner.tag}-h{index}"
        self.uts_file = owner.run_dir / f"uts-h{index}"
        self.net_inode = 0  # set once the namespace exists

    def __repr__(self) -> str:
        return f"SimulatedHost({self.name!r}, {self.address!r})"

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` wrapped so that it runs on this host (namespaces entered, /etc/hosts bound)."""
        o = self._owner
        # node-local folders: this host's own copy bound over each path (see ``local``)
        binds = "".join(
            f" && {o.mount} --bind {shlex.quote(str(self.local_dir(i)))} {shlex.quote(str(path))}"
            for i, path in enumerate(o.local)
        )
        return [
            o.nsenter,
            f"--net={_NETNS_DIR / self.netns}",
            f"--uts={self.uts_file}",
            "--",
            o.unshare,
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            f'{o.mount} --bind "$0" /etc/hosts{binds} && exec "$@"',
            str(o.hosts_file),
            *args,
        ]

    def local_dir(self, i: int) -> Path:
        """Where this host's own copy of the i-th node-local folder lives."""
        return self._owner.run_dir / f"local-h{self.index}-{i}"

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` on this host (``subprocess.Popen`` keywords apply); the process is
        killed at teardown if it is still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(args), **kwargs)
        self._owner._children.append(proc)
        return proc

    def run(
        self, args: Sequence[str], *, timeout: float = 60, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on this host to completion, capturing text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(args), timeout=timeout, check=check, **kwargs)

    def pids(self) -> list[int]:
        """The processes running on this host now."""
        return _pids_in_netns(self.net_inode) if self.net_inode else []


class SimulatedHosts:
    """``n`` simulated hosts on one bridge; use as a context manager (or call start/close).

    Args:
        n: how many hosts (1..250).
        prefix: host names are ``f"{prefix}{i}"``, e.g. ``tfp-h0``.
        subnet: the private IPv4 subnet; host i gets its (i+1)-th address. It exists only
            inside the namespaces, so every instance may use the same one.
        local: folders that are node-local instead of shared, like a node's ``/tmp`` or
            local scratch disk: a command on host i sees its own empty copy at each path
            (a private folder bind-mounted over it); files written there on one host are
            invisible on the others and outside the hosts.

    Attributes:
        up_seconds / down_seconds: how long ``start`` / ``close`` took.
    """

    def __init__(
        self,
        n: int,
        *,
        prefix: str = "tfp-h",
        subnet: str = "10.213.0.0/24",
        local: Sequence[Path] = (),
    ) -> None:
        if not 1 <= n <= 250:
            raise ValueError(f"SimulatedHosts: n must be 1..250, found {n}")
        self.tag = f"tfp{os.getpid() % 100000}x{secrets.token_hex(3)}"  # unique per instance
        self.run_dir = _RUN_ROOT / self.tag
        self.hosts_file = self.run_dir / "hosts"
        self.switch_netns = f"{self.tag}-sw"
        net = ipaddress.ip_network(subnet)
        addrs = list(net.hosts())
        if len(addrs) < n:
            raise ValueError(f"SimulatedHosts: {subnet} has fewer than {n} addresses")
        self.prefixlen = net.prefixlen
        self.local = [Path(p) for p in local]
        self.hosts = [SimulatedHost(self, i, f"{prefix}{i}", str(addrs[i])) for i in range(n)]
        self.ip = _which("ip") or "ip"
        self.nsenter = _which("nsenter") or "nsenter"
        self.unshare = _which("unshare") or "unshare"
        self.mount = _which("mount") or "mount"
        self.umount = _which("umount") or "umount"
        self._children: list[subprocess.Popen[Any]] = []
        self._inodes: list[int] = []
        self._started = False
        self._closed = False
        self.up_seconds = 0.0
        self.down_seconds = 0.0

    # -- container protocol ---------------------------------------------------------------
    def __getitem__(self, i: int) -> SimulatedHost:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[SimulatedHost]:
        return iter(self.hosts)

    def __enter__(self) -> SimulatedHosts:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- set-up ---------------------------------------------------------------------------
    def _ip(self, *args: str, netns: str | None = None) -> None:
        cmd = [self.ip, *(("-n", netns) if netns else ()), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")

    def start(self) -> None:
        """Create the namespaces, the bridge, the links and the hosts file (undone on error)."""
        if self._started:
            raise RuntimeError("SimulatedHosts.start: already started")
        self._started = True
        t0 = time.monotonic()
        try:
            self.run_dir.mkdir(parents=True, mode=0o755)
            self.hosts_file.write_text(
                "127.0.0.1 localhost\n::1 localhost\n"
                + "".join(f"{h.address} {h.name}\n" for h in self.hosts)
            )
            sw = self.switch_netns
            self._ip("netns", "add", sw)
            self._inodes.append(_ns_inode(_NETNS_DIR / sw) or 0)
            self._ip("link", "add", "br0", "type", "bridge", netns=sw)
            self._ip("link", "set", "br0", "up", netns=sw)
            for h in self.hosts:
                self._ip("netns", "add", h.netns)
                h.net_inode = _ns_inode(_NETNS_DIR / h.netns) or 0
                self._inodes.append(h.net_inode)
                port = f"p{h.index}"
                self._ip(
                    "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", h.netns, netns=sw,
                )  # fmt: skip
                self._ip("link", "set", port, "master", "br0", "up", netns=sw)
                self._ip("link", "set", "lo", "up", netns=h.netns)
                self._ip("addr", "add", f"{h.address}/{self.prefixlen}", "dev", "eth0",
                         netns=h.netns)  # fmt: skip
                self._ip("link", "set", "eth0", "up", netns=h.netns)
                # A default route out of eth0, as on a real host: programs that find "their"
                # address by routing towards the internet (Ray does) get the host's address.
                # Such packets reach the bridge and stop there: the switch has no uplink.
                self._ip("route", "add", "default", "dev", "eth0", netns=h.netns)
                h.uts_file.touch()
                for j, path in enumerate(self.local):
                    path.mkdir(parents=True, exist_ok=True)
                    h.local_dir(j).mkdir()
                made = subprocess.run(
                    [self.unshare, f"--uts={h.uts_file}", "hostname", h.name],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                if made.returncode != 0:
                    raise RuntimeError(f"UTS namespace for {h.name}: {made.stderr.strip()}")
        except BaseException:
            self.close()
            raise
        self.up_seconds = time.monotonic() - t0

    # -- faults ---------------------------------------------------------------------------
    def cut_link(self, i: int) -> None:
        """Pull host i's cable: its switch port goes down, packets to and from it are lost
        (no reset is sent: peers only notice through time-outs)."""
        self._ip("link", "set", f"p{i}", "down", netns=self.switch_netns)

    def restore_link(self, i: int) -> None:
        """Plug host i's cable back in."""
        self._ip("link", "set", f"p{i}", "up", netns=self.switch_netns)

    def kill_all(self, i: int, sig: int = signal.SIGKILL, timeout: float = 10) -> list[int]:
        """Send ``sig`` to every process on host i (as if it crashed); return their pids.

        With SIGKILL, repeats until none is left (a dying parent may have just forked)."""
        host = self.hosts[i]
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in host.pids() if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            if sig != signal.SIGKILL or time.monotonic() > deadline:
                break
            self._reap()
            time.sleep(0.05)
        self._reap()
        return sorted(set(killed))

    def stop_all(self, i: int, grace: float = 5) -> list[int]:
        """Stop every process on host i: SIGTERM, up to ``grace`` seconds to exit, then SIGKILL
        for what is left. Return the pids that were signalled."""
        termed = self.kill_all(i, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.hosts[i].pids() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        return sorted(set(termed + self.kill_all(i)))

    def _reap(self) -> None:
        for proc in self._children:
            if proc.returncode is None:
                proc.poll()

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every process on the hosts, delete namespaces, links, bridge and files.

        Safe to call twice, and after a failed ``start``."""
        if self._closed:
            return
        self._closed = True
        t0 = time.monotonic()
        for h in self.hosts:
            if h.net_inode:
                self.kill_all(h.index)
        for proc in self._children:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for name in [h.netns for h in self.hosts] + [self.switch_netns]:
            if (_NETNS_DIR / name).exists():
                subprocess.run([self.ip, "netns", "delete", name], capture_output=True)
        for h in self.hosts:
            if h.uts_file.exists():
                subprocess.run([self.umount, str(h.uts_file)], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            _RUN_ROOT.rmdir()  # only when no other instance uses it
        self.down_seconds = time.monotonic() - t0

    def leftovers(self) -> list[str]:
        """What of this instance still exists (should be empty after ``close``): processes
        in its namespaces, named namespaces, mounted UTS files, its run folder."""
        left: list[str] = []
        for inode in self._inodes:
            if inode:
                left += [f"process {pid} in netns inode {inode}" for pid in _pids_in_netns(inode)]
        if _NETNS_DIR.is_dir():
            left += [f"netns {n}" for n in os.listdir(_NETNS_DIR) if n.startswith(self.tag)]
        mountinfo = Path("/proc/self/mountinfo").read_text()
        left += [f"mount {line.split()[4]}" for line in mountinfo.splitlines() if self.tag in line]
        if self.run_dir.exists():
            left.append(f"folder {self.run_dir}")
        return left

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of this process's environment plus ``extra`` (a convenience for ``popen``)."""
        out = dict(os.environ)
        out.update(extra or {})
        return out
