"""A real single-node SLURM (munged + slurmctld + slurmd) in a temporary directory, for tests.

Everything lives under one directory: the munge key and socket, ``slurm.conf``, state, spool,
logs and PID files. The daemons are started directly (no systemd) and stopped by their PID
files; :meth:`SlurmCluster.stop` then checks that no process of this cluster is left (a task
of a job carries ``SLURM_CONF`` pointing here, so it is found through ``/proc/*/environ``).

The node claims ``max(4, cores)`` CPUs (``SlurmdParameters=config_overrides``) so that two
``-n2`` jobs fit side by side on a 2-core machine: the test about two concurrent jobs needs
them running at the same time, and TensorFlow workers mostly wait on each other anyway.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tfplace.cluster._launch import free_ports

BINARIES = (
    "munged",
    "slurmctld",
    "slurmd",
    "srun",
    "sbatch",
    "sinfo",
    "squeue",
    "scancel",
    "scontrol",
)


def missing_binaries() -> list[str]:
    """The SLURM/munge programs that are not installed (empty when all are there)."""
    extra = ("/usr/sbin", "/usr/local/sbin")
    path = os.pathsep.join([os.environ.get("PATH", ""), *extra])
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _which(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which(name, path=path)
    if found is None:  # pragma: no cover - checked by missing_binaries first
        raise FileNotFoundError(name)
    return found


def cluster_processes(root: Path, conf: Path, pids: set[int]) -> list[str]:
    """``"pid: command line"`` of every live process of a test SLURM cluster: one of ``pids``
    (its daemons), a process whose environment names ``conf`` (a task of its jobs, which carries
    ``SLURM_CONF``), or one whose command line names its folder ``root``."""
    found = []
    marker = f"SLURM_CONF={conf}".encode()
    folder = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if not cmdline:
            continue  # a zombie: already dead
        if int(entry.name) in pids or marker in environ.split(b"\0") or folder in cmdline:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {text}")
    return found


class SlurmCluster:
    """One node, one partition, munge authentication; all state under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        try:  # workers reach each other by the node's name, as on a real cluster
            socket.gethostbyname(self.node)
        except OSError:  # a machine whose own name does not resolve
            self.node = "localhost"
        self.cpus = max(4, os.cpu_count() or 1)
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.pid_files = {
            "munged": root / "munge" / "munged.pid",
            "slurmctld": root / "slurmctld.pid",
            "slurmd": root / "slurmd.pid",
        }
        self.setup_seconds = 0.0

    # -- environment -------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for SLURM client commands (``srun``, ``sbatch``, ...) of this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TF_CONFIG"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin"])
        env.update(extra or {})
        return env

    def run(
        self, args: list[str], *, timeout: float = 120, check: bool = True, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster."""
        env = self.env(kw.pop("env", None))  # type: ignore[arg-type]
        proc = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
        )  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                + self.logs()
            )
        return proc  # type: ignore[no-any-return]

    def submit(self, args: list[str], *, cwd: Path, env: Mapping[str, str]) -> str:
        """``sbatch --parsable ARGS`` in ``cwd``; return the job id."""
        proc = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, timeout=30)
        return proc.stdout.strip().split(";")[0]

    def wait(self, job: str, timeout: float = 300) -> tuple[str, str]:
        """Wait for a job to end; return its state and exit code (``"COMPLETED", "0:0"``).

        Polls ``scontrol`` every 0.2 s (``sbatch --wait`` sleeps up to 32 s between checks).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(["scontrol", "-o", "show", "job", job], timeout=10).stdout
            fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
            state = fields.get("JobState", "")
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", ""):
                return state, fields.get("ExitCode", "")
            time.sleep(0.2)
        self.run(["scancel", job], check=False, timeout=10)
        raise TimeoutError(f"job {job} did not end within {timeout} s\n" + self.logs())

    def logs(self) -> str:
        """The tails of the daemon logs, for failure messages."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(out)

    # -- start / stop --------------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        overrides = (
            "SlurmdParameters=config_overrides\n" if self.cpus > (os.cpu_count() or 1) else ""
        )
        ctld_port, slurmd_port = free_ports(2)  # held together: two distinct ports
        self.conf.write_text(
            f"""ClusterName=tfplace-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={self.pid_files["slurmctld"]}
SlurmdPidFile={self.pid_files["slurmd"]}
SlurmctldLogFile={r / "slurmctld.log"}
SlurmdLogFile={r / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
{overrides}NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; return once ``sinfo`` shows the node idle."""
        t0 = time.monotonic()
        self._write_conf()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        subprocess.run(
            [
                _which("munged"),
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.pid_files['munged']}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        env = self.env()
        for daemon in ("slurmctld", "slurmd"):
            args = [_which(daemon), "-f", str(self.conf)]
            if daemon == "slurmctld":
                args.append("-c")  # clean start: no state from an earlier run
            else:
                args += ["-N", self.node]
            subprocess.run(args, env=env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False, timeout=10)
            state = proc.stdout.strip()
            if state == "idle":
                self.setup_seconds = time.monotonic() - t0
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"the SLURM node is not idle after {timeout} s ({state!r})\n" + self.logs()
        )

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def leftovers(self) -> list[str]:
        """Processes of this cluster still running: its daemons, and any task of its jobs."""
        pids = {p for p in (self._pid(n) for n in self.pid_files) if p is not None}
        return cluster_processes(self.root, self.conf, pids)

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons by PID file; return what is left (should be [])."""
        if self.conf.exists() and self._pid("slurmctld"):
            self.run(["scancel", "--full", "--user", "root"], check=False, timeout=10)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = self.run(["squeue", "-h"], check=False, timeout=10)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}/cmdline").exists():
                if not Path(f"/proc/{pid}/cmdline").read_bytes():
                    break  # zombie
                time.sleep(0.1)
            else:
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.leftovers()
        return left
