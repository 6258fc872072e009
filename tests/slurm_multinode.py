"""A real multi-node SLURM on simulated hosts (see :mod:`sim_hosts`), for tests.

Layout:

- one ``munged`` in the machine's own namespaces. Munge is reached through a Unix socket on the
  file system, which every network namespace sees, so one daemon serves all hosts (on a real
  cluster each node runs its own with a shared key; the effect is the same).
- ``slurmctld`` on host 0, the "head node", which is also where clients (``srun``,
  ``sbatch``, ``squeue``...) run, as on a login node. It is not put in the machine's root
  namespace because that would need a link from the bridge into the machine's network; on a
  simulated host it is reached by name and address like any other, and nothing touches the
  machine's network. Consequence: host 0 is the one host whose loss takes the controller with
  it, so fault tests lose another host.
- one ``slurmd`` per simulated host (``NodeName=tfp-hI NodeAddr=<its address>``), all reading
  one ``slurm.conf``; ``%n`` in the spool, PID and log paths gives each its own files.

Every daemon runs in the foreground (``-D``) as a child of this process, inside its host's
namespaces, and ports are fixed (6817/6818): each simulated host has its own network stack, so
two clusters (pytest-xdist) never collide. Everything else lives under ``root``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim_hosts import SimulatedHost, SimulatedHosts
from slurm_cluster import cluster_processes

__all__ = ["BINARIES", "MultiNodeSlurm", "missing_binaries"]

BINARIES = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "squeue", "scontrol",
            "scancel")  # fmt: skip

_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def _path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH])


def missing_binaries() -> list[str]:
    """The SLURM/munge programs that are not installed."""
    return [b for b in BINARIES if shutil.which(b, path=_path()) is None]


def _which(name: str) -> str:
    found = shutil.which(name, path=_path())
    if found is None:
        raise FileNotFoundError(name)
    return found


class MultiNodeSlurm:
    """SLURM over every host of ``hosts``; controller and clients on ``hosts[0]``.

    Args:
        hosts: started simulated hosts; each becomes a node named like the host.
        root: an empty folder for configuration, state, logs (on the shared file system).
        cpus: CPUs each node claims.
        slurmd_timeout: seconds without an answer before slurmctld declares a node DOWN.

    Attributes:
        start_seconds / stop_seconds: how long ``start`` / ``stop`` took.
    """

    def __init__(
        self, hosts: SimulatedHosts, root: Path, *, cpus: int = 2, slurmd_timeout: int = 10
    ) -> None:
        self.hosts = hosts
        self.root = root
        self.cpus = cpus
        self.slurmd_timeout = slurmd_timeout
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.munge_pid = self.munge_dir / "munged.pid"
        self._ctld: subprocess.Popen[bytes] | None = None
        self._slurmd: dict[int, subprocess.Popen[bytes]] = {}
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    @property
    def head(self) -> SimulatedHost:
        """The host that runs slurmctld and the client commands."""
        return self.hosts[0]

    @property
    def node_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    # -- client side ----------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for client commands: no inherited SLURM_*/TF_CONFIG, our conf."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TF_CONFIG"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = _path()
        env.update(extra or {})
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 120,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command on the head node."""
        proc = self.head.run(list(args), env=self.env(env), cwd=cwd, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                + self.logs()
            )
        return proc

    def popen(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a client command (e.g. a long ``srun``) on the head node."""
        return self.head.popen(list(args), env=self.env(env), **kw)

    def submit(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> str:
        """``sbatch --parsable ARGS`` in ``cwd`` on the head node; return the job id."""
        out = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, timeout=30).stdout
        return out.strip().split(";")[0]

    def job(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dictionary (empty when the job is unknown)."""
        proc = self.run(["scontrol", "-o", "show", "job", job], check=False, timeout=10)
        return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)

    def wait(self, job: str, timeout: float = 300, poll: float = 0.2) -> tuple[str, str]:
        """Wait for a job to end; return (state, exit code), e.g. ``("COMPLETED", "0:0")``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.job(job)
            state = fields.get("JobState", "")
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", ""):
                return state, fields.get("ExitCode", "")
            time.sleep(poll)
        self.run(["scancel", job], check=False, timeout=10)
        raise TimeoutError(f"job {job} did not end within {timeout} s\n" + self.logs())

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as sinfo reports it (``idle``, ``alloc``, ``down*``...)."""
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=10).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def logs(self, lines: int = 15) -> str:
        """Tails of every daemon log, for failure messages."""
        out = []
        for path in [*sorted(self.root.glob("*.log")), self.munge_dir / "munged.log"]:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- start / stop ---------------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "munge"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        for h in self.hosts:
            (r / f"spool-{h.name}").mkdir(mode=0o700, exist_ok=True)
        head = self.head
        nodes = "".join(
            f"NodeName={h.name} NodeAddr={h.address} CPUs={self.cpus} State=UNKNOWN\n"
            for h in self.hosts
        )
        self.conf.write_text(
            f"""ClusterName=tfplace-multi
SlurmctldHost={head.name}({head.address})
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r / "slurmctld.log"}
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout={self.slurmd_timeout}
MessageTimeout=5
InactiveLimit=0
KillWait=5
{nodes}PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_munged(self) -> None:
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.munge_dir
        subprocess.run(
            [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.munge_pid}", f"--log-file={m / 'munged.log'}",
             f"--seed-file={m / 'munged.seed'}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def start_slurmd(self, i: int) -> None:
        """Start (or restart, after a crash) the slurmd of host i."""
        h = self.hosts[i]
        log = open(self.root / f"slurmd-{h.name}.stdout", "ab")  # noqa: SIM115
        self._slurmd[i] = h.popen(
            [_which("slurmd"), "-D", "-f", str(self.conf), "-N", h.name],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and every slurmd; return once every node is idle."""
        t0 = time.monotonic()
        self._write_conf()
        self._start_munged()
        log = open(self.root / "slurmctld.stdout", "ab")  # noqa: SIM115
        self._ctld = self.head.popen(
            [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        for i in range(len(self.hosts)):
            self.start_slurmd(i)
        self.wait_nodes({h.name: "idle" for h in self.hosts}, timeout)
        self.start_seconds = time.monotonic() - t0

    def wait_nodes(self, wanted: Mapping[str, str], timeout: float = 60) -> float:
        """Wait until sinfo shows these node states; return the seconds it took."""
        t0 = time.monotonic()
        states: dict[str, str] = {}
        while time.monotonic() - t0 < timeout:
            states = self.node_states()
            if all(states.get(n) == s for n, s in wanted.items()):
                return time.monotonic() - t0
            time.sleep(0.1)
        raise RuntimeError(f"nodes not {wanted} after {timeout} s: {states}\n" + self.logs())

    def _munged_pid(self) -> int | None:
        try:
            return int(self.munge_pid.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def leftovers(self) -> list[str]:
        """Processes of this cluster still running: daemons and tasks of its jobs."""
        munged = self._munged_pid()
        return cluster_processes(self.root, self.conf, set() if munged is None else {munged})

    @staticmethod
    def _end(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> list[str]:
        """Cancel every job, stop slurmds, slurmctld and munged; return what is left."""
        t0 = time.monotonic()
        if self._ctld is not None and self._ctld.poll() is None:
            self.run(["scancel", "--full", "--user", "root"], check=False, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                q = self.run(["squeue", "-h", "-t", "all"], check=False, timeout=10)
                if q.returncode != 0 or not any(s in q.stdout for s in (" R ", " CG ", " CF ")):
                    break
                time.sleep(0.2)
        for proc in self._slurmd.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._slurmd.values():
            self._end(proc)
        self._end(self._ctld)
        pid = self._munged_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    cmd = Path(f"/proc/{pid}/cmdline")
                    if not cmd.exists() or not cmd.read_bytes():
                        break
                    time.sleep(0.05)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = self.leftovers()
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.leftovers()
        self.stop_seconds = time.monotonic() - t0
        return left
