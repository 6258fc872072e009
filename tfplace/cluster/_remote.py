"""Workers on other hosts over SSH: the action behind ``tfplace launch --hosts/--hostfile``.

Each worker is one ``ssh`` client on the launching machine running a small wrapper on its
host (``python -I -S -c``). The wrapper reads the worker's description (command, extra
environment, working folder, grace period) as one JSON line on its standard input, starts the
worker in a new session (so its process group holds everything the worker starts), and then
keeps listening on its standard input:

- ``.`` is the launcher's heartbeat (one a second);
- ``SIG n`` sends signal n to the worker's group, ``KILL`` sends SIGKILL;
- end of input (the launcher or its ssh ended, the connection closed), or no heartbeat for
  :data:`HEARTBEAT_TIMEOUT` seconds (the link is cut: nothing closes), stops the worker's
  group: SIGTERM, then SIGKILL after the grace period.

When the worker ends the wrapper SIGKILLs what is left of its group and exits with the
worker's code (128 + n for a death by signal n), which ssh passes back. So nothing is left on
a host after success, failure, Ctrl-C, a killed launcher or a lost link.

Before each attempt one short ssh call per host (in parallel) reports that host's usable cores
and free TCP ports (or checks fixed ones): the workers' ``TF_CONFIG`` names the hosts as
written in the host list, with ports free on each host, and each worker's TensorFlow thread
pools get its share of its host's cores (:func:`~tfplace._decide.threads.split_threads`).

Only chosen variables of the launcher's environment reach the workers (ssh does not forward
the environment): TensorFlow's own by an explicit list, a few families by prefix, and those
``forward`` names (:mod:`tfplace.cluster._forward`; never Terraform's ``TF_VAR_*``,
``TF_TOKEN_*``, ``TF_CLI_ARGS*``); the rest comes from the host's own login environment.

The ssh client runs with ``BatchMode=yes`` (never a password prompt), a 10 s connect timeout,
and ``ServerAliveInterval=1`` / ``ServerAliveCountMax=3``: a host that stops answering (power
loss, cut link) ends its ssh within about 4 s, the launcher sees a failed worker (exit code 255)
and stops the group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

from tfplace._decide.threads import split_threads
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace.cluster._core import (
    LaunchResult,
    LostLink,
    RestartPolicy,
    Supervision,
    Transport,
    supervise,
)
from tfplace.cluster._forward import FORWARD_PREFIXES, TF_VARIABLES, forwarded_env
from tfplace.cluster._hosts import HostSlots, parse_hosts, worker_hosts
from tfplace.cluster._output import WorkerOutput
from tfplace.cluster._restarts import RESTART_COUNT_ENV
from tfplace.errors import ClusterConfigError

__all__ = [
    "FORWARD_PREFIXES",
    "HEARTBEAT_TIMEOUT",
    "SSH_OPTIONS",
    "TF_VARIABLES",
    "forwarded_env",
    "launch_on_hosts",
    "ssh_command",
]

log = logging.getLogger("tfplace")

#: Options every ssh call gets after the user's own (ssh keeps the first value it sees, so
#: the user's ``-o`` wins).
SSH_OPTIONS = (
    "-T",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=10",
    "-o", "ConnectionAttempts=3",
    "-o", "ServerAliveInterval=1",
    "-o", "ServerAliveCountMax=3",
    "-o", "LogLevel=ERROR",
)  # fmt: skip

#: Seconds without the launcher's heartbeat after which a wrapper stops its worker.
HEARTBEAT_TIMEOUT = 5.0

#: ssh's own exit code for a failed or lost connection.
SSH_LOST = 255

#: After a worker failure the others get SIGTERM and at most this long before SIGKILL (see
#: ``launch_on_hosts``).
FAILURE_GRACE = 1.0

_WRAPPER = r"""
import json, os, signal, socket, subprocess, sys, threading, time
spec = json.loads(sys.stdin.readline() or "null")
if not spec:
    sys.exit(0)
env = dict(os.environ)
env.update(spec["env"])
try:
    proc = subprocess.Popen(spec["argv"], env=env, cwd=spec["cwd"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
except OSError as err:
    print("tfplace launch: cannot start %r here: %s" % (spec["argv"][0], err), flush=True)
    sys.exit(127)
print("\x02tfplace start %d %s" % (proc.pid, socket.gethostname()), flush=True)
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
deadline = None
while proc.poll() is None:
    lost = time.monotonic() - state["seen"] > spec["heartbeat"]
    if deadline is None and (state["stop"] or lost):
        group(signal.SIGTERM)
        deadline = time.monotonic() + spec["grace"]
    if deadline is not None and time.monotonic() > deadline:
        group(signal.SIGKILL)
    time.sleep(0.05)
group(signal.SIGKILL)
code = proc.returncode
print("\x02tfplace exit %d" % code, flush=True)
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
print(json.dumps({"cores": cores, "ports": ports, "busy": busy, "name": socket.gethostname()}))
"""


def ssh_command(ssh: Sequence[str], host: str, remote: Sequence[str]) -> list[str]:
    """The ssh command line that runs ``remote`` (a program and its arguments) on ``host``.

    Args:
        ssh: the ssh client and the user's own options, e.g. ``["ssh", "-p", "2222"]``.
        host: the host as written in the host list (IPv6 in brackets).
        remote: the remote program and arguments; each is shell-quoted.

    Example:
        >>> ssh_command(["ssh"], "node1", ["python3", "-c", "print(1)"])[-2:]
        ['node1', "python3 -c 'print(1)'"]
        >>> "BatchMode=yes" in ssh_command(["ssh"], "node1", ["true"])
        True
    """
    return [*ssh, *SSH_OPTIONS, host.strip("[]"), shlex.join(remote)]


@dataclass(frozen=True)
class _Probe:
    cores: int
    ports: tuple[int, ...]


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


def _probe(
    ssh: Sequence[str], python: str, host: HostSlots, port: int | None, source: str
) -> _Probe:
    fixed = [str(port + i) for i in range(host.slots)] if port else []
    cmd = ssh_command(ssh, host.host, [python, "-I", "-S", "-c", _PROBE, str(host.slots), *fixed])
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
        log.warning(
            "%s: host %s: ssh failed (%s); trying again in %g s", source, host.host, last, wait
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
    return _Probe(int(report["cores"]), tuple(int(p) for p in report["ports"]))


def _probe_all(
    ssh: Sequence[str], python: str, hosts: Sequence[HostSlots], port: int | None, source: str
) -> list[_Probe]:
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        futures = [pool.submit(_probe, ssh, python, h, port, source) for h in hosts]
        return [f.result() for f in futures]


#: What starts the wrapper's own lines (its worker's pid at the start, the worker's raw
#: return code at the end), which the launcher reads and does not print.
CONTROL = "\x02tfplace "


class _Worker:
    """One ssh client running the wrapper, and the thread that prefixes its output."""

    def __init__(self, index: int, host: str, proc: subprocess.Popen[bytes]) -> None:
        self.index = index
        self.host = host
        self.proc = proc
        self.lock = threading.Lock()
        self.reader: threading.Thread | None = None
        #: The worker's own ``Popen.returncode`` as its wrapper reported it (negative for a
        #: death by a signal), once it did.
        self.reported: int | None = None

    def control(self, line: str, output: WorkerOutput) -> bool:
        """Read one of the wrapper's own lines; True when ``line`` was one."""
        if not line.startswith(CONTROL):
            return False
        words = line[len(CONTROL) :].split()
        if words[:1] == ["start"] and len(words) == 3:
            output.say(f"worker {self.index}: pid {words[1]} on host {words[2]}")
        elif words[:1] == ["exit"] and len(words) == 2:
            with contextlib.suppress(ValueError):
                self.reported = int(words[1])
        return True

    def returncode(self) -> int | None:
        """The ssh client's return code, or the worker's own where its wrapper reported it
        (so that a worker killed by a signal on its host reads as one here too)."""
        code = self.proc.poll()
        if code is None or code == 0:
            return code
        if self.reader is not None:  # its last line (the report) is read before the pipe ends
            self.reader.join(timeout=2.0)
            self.reader = None
        raw = self.reported
        if raw is not None and (128 - raw if raw < 0 else raw) == code:
            return raw
        return code

    def send(self, word: str) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()

    def close_input(self) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()


def launch_on_hosts(
    command: Sequence[str],
    hosts: str | Sequence[HostSlots],
    *,
    num_workers: int | None = None,
    env: Mapping[str, str] | None = None,
    forward: Sequence[str] = (),
    ssh: Sequence[str] = ("ssh",),
    python: str | None = None,
    port: int | None = None,
    grace_seconds: float = 5.0,
    failure_grace: float = FAILURE_GRACE,
    out: IO[str] | None = None,
    on_line: Callable[[int, str], None] | None = None,
    max_restarts: int = 0,
    restart_on: str = "retryable",
    cwd: str | None = None,
) -> LaunchResult:
    """Run ``command`` as workers on ``hosts`` over ssh; see :func:`tfplace.cluster._launch.launch`.

    ``hosts`` is a host list (``"node1:2,node2:2"``, see :func:`parse_hosts`) or parsed
    entries; ``num_workers``, when given, must equal its slot count. Output is cut into lines and
    prefixed as the local launcher's (``tfplace.cluster._output``).

    ``python`` is the interpreter that runs the small wrapper and probe on each host (default:
    this one's path, the same environment on every host as Horovod and DeepSpeed expect);
    ``cwd`` the workers' folder (default: this one's: a shared file system). ``port``: a fixed
    base (workers on a host use port, port + 1, ...; checked free) instead of free ports.
    A worker failure (not a launcher signal) gives the others ``min(grace_seconds,
    failure_grace)`` between SIGTERM and SIGKILL: in a synchronous group the survivors wait in
    a collective on the lost peer and cannot save anything, so a long grace only delays the
    restart. ssh's exit code 255 (a lost connection or host) is retried like a killed worker.

    Returns:
        A ``LaunchResult``; no worker process is left on any host, whatever the path.

    Raises:
        ClusterConfigError: a bad host list, a host that cannot be reached or logged in to
            without a prompt, a Python that does not run there, a fixed port in use, or
            ``num_workers`` different from the slots (checked before any worker starts).

    Example:
        >>> launch_on_hosts(["true"], "node1:2", num_workers=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: launch: found -n 3 workers, expected the 2 slots...
    """
    if isinstance(hosts, str):
        hosts = parse_hosts(hosts)
    slots = sum(h.slots for h in hosts)
    if num_workers is not None and num_workers != slots:
        raise ClusterConfigError(
            f"launch: found -n {num_workers} workers, expected the {slots} slots of the host "
            f"list ({', '.join(f'{h.host}:{h.slots}' for h in hosts)}). Fix: leave -n out "
            "with --hosts/--hostfile, or make the slots add up to it"
        )
    setup = _Setup(
        command=tuple(command),
        hosts=tuple(hosts),
        base=dict(os.environ if env is None else env),
        forward=tuple(forward),
        ssh=tuple(ssh),
        python=python or sys.executable,
        workdir=cwd or os.getcwd(),
        port=port,
        grace=float(grace_seconds),
    )
    forwarded_env(setup.base, setup.forward)  # a bad -x is an error before anything starts
    started = time.monotonic()
    workers = SshWorkers(setup, failure_grace)
    workers.prepare(1)  # errors before anything starts
    how = Supervision(
        RestartPolicy(max_restarts, restart_on),
        grace_seconds,
        WorkerOutput(out or sys.stdout, on_line),
        started,
    )
    return supervise(workers, how)


@dataclass(frozen=True)
class _Setup:
    """What every attempt on the hosts starts from, checked by :func:`launch_on_hosts`."""

    command: tuple[str, ...]
    hosts: tuple[HostSlots, ...]
    base: Mapping[str, str]
    forward: tuple[str, ...]
    ssh: tuple[str, ...]
    python: str
    workdir: str
    port: int | None
    grace: float


class SshWorkers(Transport):
    """The ssh transport: one ssh client a worker, each running the wrapper on its host.

    Its lost-link code (ssh's 255) is the one thing it tells the restart policy.
    """

    lost = LostLink(SSH_LOST, "ssh exit code 255: host down, unreachable or killed")

    def __init__(self, setup: _Setup, failure_grace: float = FAILURE_GRACE) -> None:
        self.setup = setup
        self.failure_grace = failure_grace
        self.restart_where = "on the same ports" if setup.port else "on new ports"
        self.probes: list[_Probe] = []
        self.workers: list[_Worker] = []
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()

    @property
    def size(self) -> int:
        return sum(h.slots for h in self.setup.hosts)

    def label(self, index: int) -> str:
        host = worker_hosts(self.setup.hosts)[index][0]
        return f"worker {index} on {host}"

    def prepare(self, attempt: int) -> None:
        s = self.setup
        self.probes = _probe_all(s.ssh, s.python, s.hosts, s.port, "launch")

    def start(self, attempt: int, output: WorkerOutput) -> None:
        self.workers, self.threads, self.done = [], [], threading.Event()
        for index, (host, cmd, spec) in enumerate(_commands(self.setup, self.probes, attempt)):
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            worker = _Worker(index, host, proc)
            self.workers.append(worker)
            worker.send(json.dumps(spec, separators=(",", ":")))
            assert proc.stdout is not None
            prefix = f"[worker {index} {host}] "
            reader = threading.Thread(
                target=output.pump,
                args=(index, prefix, proc.stdout, partial(worker.control, output=output)),
                daemon=True,
            )
            worker.reader = reader
            reader.start()
            self.threads.append(reader)
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        self.threads.append(beat)

    def _heartbeat(self) -> None:
        while not self.done.wait(1.0):
            for w in self.workers:
                if w.proc.poll() is None:
                    w.send(".")

    def returncodes(self) -> list[int | None]:
        return [w.returncode() for w in self.workers]

    def stop(self, sig: int, grace: float) -> None:
        live = [w for w in self.workers if w.proc.poll() is None]
        for w in live:
            w.send(f"SIG {int(sig)}")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in live):
            time.sleep(0.02)
        for w in live:
            if w.proc.poll() is None:
                w.send("KILL")
            w.close_input()
        # The wrappers exit once their workers are gone and ssh ends with them; an ssh whose
        # host does not answer is killed here (its wrapper stops on the missing heartbeat).
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in live):
            time.sleep(0.02)
        self._kill_clients()

    def _kill_clients(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
            w.close_input()

    def finish(self) -> None:
        if all(w.proc.poll() is not None for w in self.workers):
            self._kill_clients()
        self.done.set()
        for t in self.threads:
            t.join(timeout=5)


def _commands(
    setup: _Setup, probes: Sequence[_Probe], attempt: int
) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Each worker's (host, ssh command, wrapper description), workers numbered host by host."""
    hosts = setup.hosts
    ports = {h.host: list(p.ports) for h, p in zip(hosts, probes, strict=True)}
    layout = worker_hosts(hosts)
    addresses = [f"{host}:{ports[host][slot]}" for host, slot in layout]
    cluster = ClusterSpec.from_hosts(addresses, source="launch")
    shared = forwarded_env(setup.base, setup.forward)
    threads = {
        h.host: split_threads(p.cores, h.slots, setup.base)
        for h, p in zip(hosts, probes, strict=True)
    }
    if attempt == 1:
        for h in hosts:
            for reason in threads[h.host].reasons:
                log.info("tfplace launch: %s: %s", h.host, reason)
        log.info("tfplace launch: %d workers on %s", len(addresses), ", ".join(addresses))
    wrapper = shlex.join([setup.python, "-I", "-S", "-c", _WRAPPER])
    result = []
    for index, (host, _) in enumerate(layout):
        worker_env = {
            **shared,
            **dict(threads[host].set_env),
            "TF_CONFIG": cluster.for_task(index).to_tf_config(),
            "TFPLACE_WORKER_INDEX": str(index),
            RESTART_COUNT_ENV: str(attempt - 1),
        }
        worker_env.setdefault("PYTHONUNBUFFERED", "1")
        spec = {
            "argv": list(setup.command),
            "env": worker_env,
            "cwd": setup.workdir,
            "grace": setup.grace,
            "heartbeat": HEARTBEAT_TIMEOUT,
        }
        result.append((host, [*setup.ssh, *SSH_OPTIONS, host.strip("[]"), wrapper], spec))
    return result
