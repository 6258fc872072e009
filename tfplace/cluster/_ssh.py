"""ssh plumbing of the hostfile launcher: the client's options, the probe of each host, the
wrapper that runs a worker on its host.

The wrapper (``python -I -S -c``, started by ssh) reads the worker's description (command,
extra environment, working folder, grace period, heartbeat timeout) as one JSON line on its
standard input, starts the worker in a new session (so its process group holds everything the
worker starts), and then keeps listening on its standard input:

- ``.`` is the launcher's heartbeat (one a second);
- ``SIG n`` sends signal n to the worker's group, ``KILL`` sends SIGKILL;
- end of input (the launcher or its ssh ended, the connection closed), or no heartbeat for
  the link timeout plus 2 s (the link is cut: nothing closes), stops the worker's group:
  SIGTERM, then SIGKILL after the grace period.

The worker's standard output and error go to the wrapper's standard output. The wrapper's own
lines go to its standard error, each starting with :data:`CONTROL`: ``start PID HOST`` once
the worker runs, ``beat`` every second (so that the launcher knows when it last heard from the
host), and ``exit CODE`` with the worker's own return code (negative for a death by a signal)
before the wrapper exits with ``128 + n`` / the code, which ssh passes back.

The client runs with ``BatchMode=yes`` (never a password prompt), a 10 s connect timeout, and
``ServerAliveInterval=1`` / ``ServerAliveCountMax=`` the link timeout (default
:data:`LINK_TIMEOUT`): a host that answers nothing for that long ends its ssh with exit code
255, a shorter blip is ridden through.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import shlex
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tfplace.cluster._hosts import HostSlots
from tfplace.errors import ClusterConfigError

__all__ = [
    "CONTROL",
    "LINK_TIMEOUT",
    "SSH_LOST",
    "SSH_OPTIONS",
    "heartbeat_timeout",
    "ssh_command",
    "ssh_options",
    "transient_ssh_failure",
]

log = logging.getLogger("tfplace")

#: Seconds a host may answer nothing (a network blip, a stalled switch) before its workers are
#: taken as lost (``--link-timeout``). Below TensorFlow's own coordination-service heartbeat
#: would end the survivors first; see docs/clusters.md, "A lost machine".
LINK_TIMEOUT = 10.0

#: ssh's own exit code for a failed or lost connection.
SSH_LOST = 255

#: What starts each of the wrapper's own lines (on its standard error).
CONTROL = "\x02tfplace "


def ssh_options(link_timeout: float = LINK_TIMEOUT) -> tuple[str, ...]:
    """The options every ssh call gets after the user's own (ssh keeps the first value it sees,
    so the user's ``-o`` wins).

    Example:
        >>> [o for o in ssh_options(2.5) if o.startswith("ServerAliveCountMax")]
        ['ServerAliveCountMax=3']
    """
    return (
        "-T",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10",
        "-o", "ConnectionAttempts=3",
        "-o", "ServerAliveInterval=1",
        "-o", f"ServerAliveCountMax={max(1, math.ceil(link_timeout))}",
        "-o", "LogLevel=ERROR",
    )  # fmt: skip


#: :func:`ssh_options` with the default link timeout.
SSH_OPTIONS = ssh_options()


def heartbeat_timeout(link_timeout: float) -> float:
    """Seconds without the launcher's heartbeat after which a wrapper stops its worker: 2 s
    more than the launcher waits, so that the launcher decides first."""
    return link_timeout + 2.0


def ssh_command(
    ssh: Sequence[str], host: str, remote: Sequence[str], link_timeout: float = LINK_TIMEOUT
) -> list[str]:
    """The ssh command line that runs ``remote`` (a program and its arguments) on ``host``.

    Args:
        ssh: the ssh client and the user's own options, e.g. ``["ssh", "-p", "2222"]``.
        host: the host as written in the host list (IPv6 in brackets).
        remote: the remote program and arguments; each is shell-quoted.
        link_timeout: seconds of silence from the host before ssh gives up.

    Example:
        >>> ssh_command(["ssh"], "node1", ["python3", "-c", "print(1)"])[-2:]
        ['node1', "python3 -c 'print(1)'"]
        >>> "BatchMode=yes" in ssh_command(["ssh"], "node1", ["true"])
        True
    """
    return [*ssh, *ssh_options(link_timeout), host.strip("[]"), shlex.join(remote)]


_WRAPPER = r"""
import json, os, signal, socket, subprocess, sys, threading, time
spec = json.loads(sys.stdin.readline() or "null")
if not spec:
    sys.exit(0)
def say(word):
    try:
        os.write(2, ("\x02tfplace " + word + "\n").encode())
    except OSError:
        pass
env = dict(os.environ)
env.update(spec["env"])
try:
    proc = subprocess.Popen(spec["argv"], env=env, cwd=spec["cwd"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
except OSError as err:
    print("tfplace launch: cannot start %r here: %s" % (spec["argv"][0], err), flush=True)
    sys.exit(127)
say("start %d %s" % (proc.pid, socket.gethostname()))
state = {"seen": time.monotonic(), "stop": False}
def group(sig):
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
def listen():
    while True:
        line = sys.stdin.readline()
        if not line:
            state["stop"] = True
            return
        word = line.strip()
        state["seen"] = time.monotonic()
        if word.startswith("SIG "):
            group(int(word[4:]))
        elif word == "KILL":
            group(signal.SIGKILL)
def on_signal(sig, frame):
    state["stop"] = True
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, on_signal)
threading.Thread(target=listen, daemon=True).start()
deadline, beat = None, time.monotonic()
while proc.poll() is None:
    now = time.monotonic()
    if now - beat >= 1.0:
        say("beat")
        beat = now
    lost = now - state["seen"] > spec["heartbeat"]
    if deadline is None and (state["stop"] or lost):
        group(signal.SIGTERM)
        deadline = now + spec["grace"]
    if deadline is not None and now > deadline:
        group(signal.SIGKILL)
    time.sleep(0.05)
group(signal.SIGKILL)
code = proc.returncode
say("exit %d" % code)
os._exit(128 - code if code < 0 else code)
"""

_PROBE = r"""
import json, os, socket, sys
n, fixed = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
try:
    cores = len(os.sched_getaffinity(0))
except AttributeError:
    cores = os.cpu_count() or 1
try:
    quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
    if quota != "max":
        cores = max(1, min(cores, int(int(quota) / int(period))))
except (OSError, ValueError):
    pass
socks, ports, busy = [], [], []
for port in fixed or [0] * n:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks.append(s)
    try:
        s.bind(("", port))
        ports.append(s.getsockname()[1])
    except OSError:
        busy.append(port)
reached = (os.environ.get("SSH_CONNECTION") or "").split()[2:3]  # the address ssh came to
print(json.dumps({"cores": cores, "ports": ports, "busy": busy, "name": socket.gethostname(),
                  "reached": reached[0] if reached else None}))
"""


@dataclass(frozen=True)
class Probe:
    """What a host said before an attempt.

    Attributes:
        cores: its usable cores (affinity and cgroup quota).
        ports: free ports (or the fixed ones, checked free), one a slot.
        address: how the workers' ``TF_CONFIG`` names the host: as written in the host list,
            or, for an ssh-config alias, an address of the host (see :func:`worker_address`).
    """

    cores: int
    ports: tuple[int, ...]
    address: str


#: What ssh says when the connection ended before the login from a cause that passes: an
#: sshd dropping connections over its ``MaxStartups`` limit, or one (re)starting on a host
#: that is coming back. The probe tries again after these; never after a refused login.
TRANSIENT_SSH = (
    "kex_exchange_identification",
    "Connection reset by peer",
    "Connection closed by",
    "Connection refused",
    "during banner exchange",
)
#: Seconds before each further try of a probe that failed transiently (3 tries in all).
PROBE_RETRY_S = (0.5, 1.5)


def transient_ssh_failure(code: int, said: str) -> bool:
    """Whether ssh failed (exit code 255) before the login, from a cause that may pass (pure).

    Example:
        >>> transient_ssh_failure(255, "kex_exchange_identification: Connection reset by peer")
        True
        >>> transient_ssh_failure(255, "root@node1: Permission denied (publickey).")
        False
    """
    return code == SSH_LOST and any(mark in said for mark in TRANSIENT_SSH)


def worker_address(host: str, resolved: str | None, reached: str | None) -> str:
    """The name of ``host`` that every worker can use (pure).

    A host that ssh's configuration does not rename (``ssh -G`` resolves it to itself, or
    cannot say) keeps its name as written. An alias (``Host gpu1`` / ``HostName 10.0.0.5``)
    means nothing to TensorFlow's gRPC: it becomes the address the ssh connection reached on
    the host (``SSH_CONNECTION``, so the address on the network ssh used), else what ssh
    resolves it to.

    Example:
        >>> worker_address("node1", "node1", "10.0.0.5")
        'node1'
        >>> worker_address("gpu1", "10.0.0.5", "10.0.0.5"), worker_address("gpu2", "n2.lan", None)
        ('10.0.0.5', 'n2.lan')
        >>> worker_address("gpu3", "fd00::3", "fd00::3")
        '[fd00::3]'
    """
    bare = host.strip("[]")
    if resolved is None or resolved.lower() == bare.lower():
        return host
    name = reached or resolved
    try:
        is_v6 = ipaddress.ip_address(name).version == 6
    except ValueError:
        is_v6 = False
    return f"[{name}]" if is_v6 else name


def resolve_host(ssh: Sequence[str], host: str) -> str | None:
    """The ``hostname`` ssh's configuration gives ``host`` (``ssh -G``), or None where that
    cannot be asked (an ssh client without ``-G``, a wrapper command)."""
    try:
        done = subprocess.run(
            [*ssh, "-G", host.strip("[]")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value.strip():
            return value.strip()
    return None


def probe(
    ssh: Sequence[str],
    python: str,
    host: HostSlots,
    port: int | None,
    source: str,
    link_timeout: float = LINK_TIMEOUT,
    quiet: bool = False,
) -> Probe:
    """Ask ``host``, over ssh, for its usable cores and free ports (tried again after a
    transient ssh failure before the login, with a WARNING, or INFO when ``quiet``).

    Raises:
        ClusterConfigError: ssh cannot run or log in, ``python`` fails there, or a fixed port
            is in use.
    """
    fixed = [str(port + i) for i in range(host.slots)] if port else []
    remote = [python, "-I", "-S", "-c", _PROBE, str(host.slots), *fixed]
    cmd = ssh_command(ssh, host.host, remote, link_timeout)
    for wait in (*PROBE_RETRY_S, None):
        try:
            done = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ClusterConfigError(
                f"{source}: host {host.host}: cannot run ssh ({err}); expected an ssh client "
                "that reaches the host within 60 s. Fix: install OpenSSH's client, or pass "
                "ssh=[...]"
            ) from err
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        last = said[-1] if said else "no message"
        if wait is None or not transient_ssh_failure(done.returncode, last):
            break
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "%s: host %s: ssh failed (%s); trying again in %g s",
            source,
            host.host,
            last,
            wait,
        )
        time.sleep(wait)
    if done.returncode == SSH_LOST:
        raise ClusterConfigError(
            f"{source}: host {host.host}: cannot log in over ssh ({last}); expected "
            f"'ssh {host.host}' to work without a password or prompt (BatchMode). Fix: set up "
            "key login (ssh-copy-id), accept the host key once, or pass ssh options (--ssh)"
        )
    if done.returncode != 0:
        raise ClusterConfigError(
            f"{source}: host {host.host}: {python!r} failed there (exit code "
            f"{done.returncode}: {last}); expected the same Python at the same path on every "
            "host. Fix: install the environment at that path on every host, or pass python=..."
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["busy"]:
        raise ClusterConfigError(
            f"{source}: host {host.host}: port(s) {report['busy']} in use; expected "
            f"{host.slots} free port(s) from {port}. Fix: choose another port base, or leave "
            "it out to use free ports"
        )
    address = worker_address(host.host, resolve_host(ssh, host.host), report.get("reached"))
    if address != host.host:
        log.info("tfplace launch: host %s is %s in the workers' TF_CONFIG", host.host, address)
    return Probe(int(report["cores"]), tuple(int(p) for p in report["ports"]), address)


def probe_all(
    ssh: Sequence[str],
    python: str,
    hosts: Sequence[HostSlots],
    port: int | None,
    source: str,
    link_timeout: float = LINK_TIMEOUT,
) -> list[Probe]:
    """:func:`probe` every host, in parallel; the first error is raised."""
    found = probe_each(ssh, python, hosts, port, source, link_timeout)
    for answer in found:
        if isinstance(answer, ClusterConfigError):
            raise answer
    return [answer for answer in found if isinstance(answer, Probe)]


def probe_each(
    ssh: Sequence[str],
    python: str,
    hosts: Sequence[HostSlots],
    port: int | None,
    source: str,
    link_timeout: float = LINK_TIMEOUT,
    quiet: bool = False,
) -> list[Probe | ClusterConfigError]:
    """:func:`probe` every host, in parallel: each host's answer, or why it gave none
    (``quiet``: its tries again are INFO, not WARNING)."""

    def one(host: HostSlots) -> Probe | ClusterConfigError:
        try:
            return probe(ssh, python, host, port, source, link_timeout, quiet)
        except ClusterConfigError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return list(pool.map(one, hosts))
