"""The local multi-worker launcher behind ``tfplace launch``.

Starts N worker processes of the current Python, each with its own ``TF_CONFIG`` on free
loopback ports, prefixes every output line with the worker's index, forwards Ctrl-C and
SIGTERM, and as soon as one worker fails stops the others (SIGTERM, then SIGKILL after a
grace period) and exits with that worker's code. Each worker runs in its own process group,
so whatever it started is stopped with it.

With ``max_restarts=N`` a failed group is started again, whole (a single restarted
MultiWorkerMirroredStrategy worker could deadlock the collectives of the others), on new
ports and with ``TFPLACE_RESTART_COUNT`` set, up to N times. What is retried follows
Kubeflow's ``restartPolicy: ExitCode`` (kubeflow/training-operator,
``pkg/util/train/train_util.go``, ``IsRetryableExitCode``): a death by a signal and the
restart exit code 143 are retried, an ordinary error code (1, 2, ...) is permanent, since the
same program would fail the same way again; ``restart_on="any"`` retries every failure.
A signal to the launcher itself (Ctrl-C, SIGTERM) is never a reason to restart.

Two things keep local workers from getting in each other's way and out of reach:

- Core shares (:func:`split_threads`, pure): each worker's TensorFlow thread pools are sized
  to its share of the usable cores through ``TF_NUM_INTRAOP_THREADS`` /
  ``TF_NUM_INTEROP_THREADS``, unless the environment sets them already.
- A private network: TensorFlow's gRPC server always listens on every interface
  (``GrpcServer::Init`` binds ``0.0.0.0:<port>``, whatever host ``TF_CONFIG`` names), and its
  distributed runtime has no authentication. On Linux the workers therefore run in one
  private network namespace that has only a loopback interface (as root, or through an
  unprivileged user namespace); where that is impossible the launch log warns.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tfplace._decide.threads import split_threads
from tfplace._facts.cluster.spec import ClusterSpec, check_host
from tfplace.cluster._hosts import HostSlots
from tfplace.cluster._output import WorkerOutput
from tfplace.cluster._restarts import RESTART_COUNT_ENV, RESTART_EXIT_CODE, is_retryable
from tfplace.errors import ClusterConfigError

__all__ = ["LaunchResult", "free_ports", "launch", "tf_configs"]

log = logging.getLogger("tfplace")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ask the OS for ``n`` distinct free TCP ports on ``host``.

    Args:
        n: how many ports (>= 1).
        host: a local IPv4 address, IPv6 address or host name to bind to.

    Raises:
        ClusterConfigError: ``host`` is not a valid host, or no socket can bind to it here
            (it does not resolve, or is not an address of this machine).
        ValueError: ``n`` is not a positive int.

    Example:
        >>> ports = free_ports(2)
        >>> len(set(ports)), all(0 < p < 65536 for p in ports)
        (2, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"free_ports needs a positive count, found {n!r}")
    return _free_ports(n, host, "free_ports")


def _free_ports(n: int, host: str, source: str) -> list[int]:
    bare = check_host(host, source).strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(bare, 0, type=socket.SOCK_STREAM)[0]
    except OSError as err:
        raise _unusable(source, host, err) from err
    socks: list[socket.socket] = []
    try:
        for _ in range(n):  # each socket is closed below, even when a later one fails
            socks.append(socket.socket(family, kind, proto))
            socks[-1].bind(sockaddr)
        return [int(s.getsockname()[1]) for s in socks]
    except OSError as err:
        raise _unusable(source, host, err) from err
    finally:
        for s in socks:
            s.close()


def _unusable(source: str, host: str, err: OSError) -> ClusterConfigError:
    return ClusterConfigError(
        f"{source}: host: cannot listen on {host!r} here ({err}); expected an address of "
        "this machine. Fix: use 127.0.0.1 (the default), ::1 or this machine's own name"
    )


def tf_configs(hosts: Sequence[str], port: int = 2222) -> list[str]:
    """The TF_CONFIG text for each host of a cluster of workers, in order.

    Args:
        hosts: host names or ``host:port`` entries; entries without a port get ``port``.
        port: the default port.

    Raises:
        ClusterConfigError: a host or port is invalid, or an address repeats.

    Example:
        >>> tf_configs(["node1", "node2"])[1]
        '{"cluster":{"worker":["node1:2222","node2:2222"]},"task":{"type":"worker","index":1}}'
    """
    spec = ClusterSpec.from_hosts(hosts, port=port)
    return [spec.for_task(i).to_tf_config() for i in range(spec.num_workers)]


def _usable_cores() -> int:
    from tfplace._facts.inventory import CPUInfo, _affinity, cpu_quota

    return CPUInfo(
        host_cores=os.cpu_count() or 1, affinity_cores=_affinity(), quota_cores=cpu_quota()
    ).usable_cores


# A process that creates the workers' network namespace (with only the loopback interface,
# brought up) and holds it open until its standard input closes. Run with ``python -I -S``.
_HOLDER = """
import ctypes, fcntl, os, socket, struct, sys
NEWNET, NEWUSER = 0x40000000, 0x10000000
try:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(NEWNET) != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(NEWUSER | NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET), also with CLONE_NEWUSER")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # bring lo up
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifreq)[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
except Exception as err:
    print("FAIL", err, flush=True)
    sys.exit(0)
print("READY", flush=True)
sys.stdin.read()
"""

# Joins the holder's namespaces (argv[1] is its pid), then becomes the worker (exec: same pid).
_ENTER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = sys.argv[1]
for kind, flag in (("user", 0x10000000), ("net", 0x40000000)):
    if os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}"):
        continue
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
    if libc.setns(fd, flag) != 0:
        sys.exit(f"tfplace launch: cannot join the workers' {kind} namespace: "
                 + os.strerror(ctypes.get_errno()))
    os.close(fd)
os.execvp(sys.argv[2], sys.argv[2:])
"""

NETWORKS = ("auto", "private", "host")


class _PrivateNetwork:
    """A network namespace that only the workers share, held by a small process."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        self.holder = holder

    @classmethod
    def open(cls) -> _PrivateNetwork | str:
        """The namespace, or why there cannot be one here."""
        if not sys.platform.startswith("linux"):
            return f"network namespaces are Linux-only (this is {sys.platform})"
        try:
            holder = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HOLDER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as err:
            return f"cannot start the namespace holder ({err})"
        assert holder.stdout is not None
        try:
            # The holder answers at once; a hung one must not hang the launch.
            ready, _, _ = select.select([holder.stdout], [], [], 10.0)
            first = holder.stdout.readline().strip() if ready else ""
        except BaseException:
            cls(holder).close()
            raise
        if first == "READY":
            return cls(holder)
        cls(holder).close()
        if not ready:
            return "the namespace holder did not answer within 10 s"
        return first.removeprefix("FAIL ") or "the namespace holder ended without a word"

    def wrap(self, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
        # The worker's program is found here, as Popen would find it, so that a missing one
        # is still FileNotFoundError in the launcher and not a failing worker.
        program = command[0]
        if os.sep not in program:
            found = shutil.which(program, path=env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        elif not os.access(program, os.X_OK):
            kind = errno.EACCES if os.path.exists(program) else errno.ENOENT
            raise (PermissionError if kind == errno.EACCES else FileNotFoundError)(
                kind, os.strerror(kind), program
            )
        return [sys.executable, "-I", "-S", "-c", _ENTER, str(self.holder.pid), *command]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.holder.stdin is not None:
                self.holder.stdin.close()
        try:
            self.holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        if self.holder.stdout is not None:
            self.holder.stdout.close()


def _is_loopback(host: str) -> bool:
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended.

    Attributes:
        returncode: 0 when every worker succeeded, else the first failing worker's code
            (128 + signal number for a worker killed by a signal) in the last attempt.
        worker_codes: each worker's exit code in the last attempt (128 + N for a worker a
            signal N ended, the launcher's SIGTERM/SIGKILL included; None only for a worker
            that never started).
        failed_worker: the index of the first worker that failed in the last attempt, or None.
        seconds: wall time of the launch, all attempts together.
        attempts: how many times the group was started (1 + the restarts).
    """

    returncode: int
    worker_codes: tuple[int | None, ...]
    failed_worker: int | None
    seconds: float
    attempts: int = 1

    def __str__(self) -> str:
        """One line: how the launch ended, each worker's exit code, the time and attempts.

        Example:
            >>> print(LaunchResult(3, (0, 3, 143), 1, 4.25, attempts=2))
            launch failed: worker 1 exited with code 3; exit codes 0, 3, 143; 4.2 s, 2 attempts
            >>> print(LaunchResult(0, (0, 0), None, 1.5))
            launch succeeded: 2 workers exited with code 0; 1.5 s, 1 attempt
        """
        codes = ", ".join("not started" if c is None else str(c) for c in self.worker_codes)
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.returncode == 0:
            head = f"launch succeeded: {len(self.worker_codes)} workers exited with code 0"
            return f"{head}; {self.seconds:.1f} s, {tries}"
        if self.failed_worker is None:
            head = f"launch stopped with code {self.returncode} (the launcher was signalled)"
        else:
            head = f"launch failed: worker {self.failed_worker} exited with code {self.returncode}"
        return f"{head}; exit codes {codes}; {self.seconds:.1f} s, {tries}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "returncode": self.returncode,
            "worker_codes": list(self.worker_codes),
            "failed_worker": self.failed_worker,
            "seconds": self.seconds,
            "attempts": self.attempts,
        }


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


RESTART_ON = ("retryable", "any")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _cause(worker: int, returncode: int) -> str:
    """Why a worker failed, in words: ``worker 1 was killed by SIGKILL (exit code 137)``."""
    code = _code(returncode)
    if returncode < 0:
        return f"worker {worker} was killed by {_signal_name(-returncode)} (exit code {code})"
    if code == RESTART_EXIT_CODE:
        return f"worker {worker} exited with the restart exit code {code}"
    if is_retryable(code):
        return f"worker {worker} exited with code {code} (128 + {_signal_name(code - 128)})"
    return f"worker {worker} exited with code {code}"


class _Interrupt:
    """The signal the launcher itself received (Ctrl-C, SIGTERM), shared by every attempt."""

    def __init__(self) -> None:
        self.signal: int | None = None


class _Launch:
    def __init__(
        self,
        command: Sequence[str],
        cluster: ClusterSpec,
        env: Mapping[str, str],
        grace: float,
        out: IO[str],
        on_line: Callable[[int, str], None] | None,
        network: _PrivateNetwork | None,
        interrupt: _Interrupt,
    ) -> None:
        self.command = list(command)
        self.network = network
        self.cluster = cluster
        self.env = env
        self.grace = grace
        self.output = WorkerOutput(out, on_line)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        self.interrupt = interrupt

    @property
    def callback_error(self) -> BaseException | None:
        """What ``on_line`` raised, if it did (the launch stops and re-raises it)."""
        return self.output.callback_error

    def _pump(self, index: int, stream: IO[bytes]) -> None:
        """Copy one of a worker's streams to the output, ``[worker i]`` on every line."""
        self.output.pump(index, f"[worker {index}] ", stream)

    def start(self) -> None:
        n = self.cluster.num_workers
        for i in range(n):
            env = dict(self.env)
            env["TF_CONFIG"] = self.cluster.for_task(i).to_tf_config()
            env["TFPLACE_WORKER_INDEX"] = str(i)
            env.setdefault("PYTHONUNBUFFERED", "1")
            proc = subprocess.Popen(
                self.network.wrap(self.command, env) if self.network else self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self.procs.append(proc)
            for stream in (proc.stdout, proc.stderr):
                assert stream is not None
                reader = threading.Thread(target=self._pump, args=(i, stream), daemon=True)
                reader.start()
                self.readers.append(reader)
        log.info("tfplace launch: %d workers on %s", n, ", ".join(self.cluster.addresses("worker")))

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)

    def stop_all(self, first: int = signal.SIGTERM) -> None:
        """Signal every live worker group, then SIGKILL after the grace period."""
        self._signal_all(first)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        self._kill_groups()

    def _kill_groups(self) -> None:
        """Once every worker has ended, SIGKILL whatever they started in their groups."""
        for proc in self.procs:
            proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def wait(self) -> tuple[int, int | None]:
        while True:
            if self.callback_error is not None:
                self._say("the on_line callback raised an error; stopping the workers")
                self.stop_all()
                raise self.callback_error
            stop_signal = self.interrupt.signal
            if stop_signal is not None:
                self._say(f"received signal {stop_signal}; stopping the workers")
                self.stop_all(stop_signal)
                return 128 + stop_signal, None
            codes = [p.poll() for p in self.procs]
            for i, code in enumerate(codes):
                if code is not None and code != 0:
                    self._say(f"worker {i} exited with code {_code(code)}; stopping the others")
                    self.stop_all()
                    return _code(code), i
            if all(code == 0 for code in codes):
                # Every worker succeeded: whatever they left running in their groups goes too,
                # and so the output pipes close and the readers end.
                self._kill_groups()
                return 0, None
            time.sleep(0.01)

    def _say(self, text: str) -> None:
        self.output.say(text)


def launch(
    command: Sequence[str],
    num_workers: int | None,
    *,
    env: Mapping[str, str] | None = None,
    grace_seconds: float = 5.0,
    host: str = "127.0.0.1",
    out: IO[str] | None = None,
    on_line: Callable[[int, str], None] | None = None,
    network: str = "auto",
    max_restarts: int = 0,
    restart_on: str = "retryable",
    hosts: str | Sequence[HostSlots] | None = None,
    ssh: Sequence[str] = ("ssh",),
    forward: Sequence[str] = (),
    port: int | None = None,
) -> LaunchResult:
    """Run ``command`` as ``num_workers`` local workers of one TensorFlow cluster.

    With ``hosts``, the workers run on those hosts over ssh instead (see
    :mod:`tfplace.cluster._remote`).

    Args:
        command: the program and its arguments, e.g. ``[sys.executable, "train.py"]``.
        num_workers: how many workers (>= 1).
        env: the base environment (default: this process's); each worker also gets
            ``TF_CONFIG`` and ``TFPLACE_WORKER_INDEX``.
        grace_seconds: how long stopped workers get between SIGTERM and SIGKILL.
        host: the local address the workers listen on: IPv4, IPv6 or a name of this machine.
        out: where every output line goes, prefixed with ``[worker i]`` (default: standard
            output). Pass ``io.StringIO()`` to keep it quiet.
        on_line: called with ``(worker index, line)`` for every line a worker prints (stdout
            and stderr, without the prefix and newline), in addition to ``out``. Calls come
            from reader threads, one at a time. If it raises, the workers are stopped and
            ``launch`` raises that error.
        network: ``"auto"`` (default): on Linux, with a loopback ``host``, the workers run in
            one private network namespace with only a loopback interface, so nothing outside
            this machine can reach them (TensorFlow's gRPC servers listen on every interface
            and have no authentication); they then have no outbound network access either.
            Where no namespace can be made (not Linux, no privileges), the launch log warns.
            ``"private"``: the namespace or a ``ClusterConfigError``. ``"host"``: the
            machine's own network (outbound access; the workers' ports are reachable from
            wherever this machine is).
        max_restarts: how many times a failed group may be started again (default 0: the
            first failure ends the launch). All workers are stopped, then all are started
            again on new ports, with ``TFPLACE_RESTART_COUNT=k`` in their environment (``0``
            on the first start); each restart is logged with its cause (WARNING).
        restart_on: which failures are restarted: ``"retryable"`` (default) a worker killed
            by a signal (exit code 128 + n) or exiting with the restart exit code 143, as
            Kubeflow's ``restartPolicy: ExitCode``; any other code (1: an exception) is
            permanent and ends the launch at once. ``"any"``: every failure.
        hosts: run the workers on other machines over ssh: a host list such as
            ``"node1:2,node2:2"`` (or :func:`~tfplace.cluster._hosts.read_hostfile`'s
            entries); ``num_workers`` may then be None, else must equal the slots. ``host``
            and ``network`` do not apply (``network="private"`` is an error); a lost host
            (ssh's exit code 255) is retried like a killed worker.
        ssh: with ``hosts``: the ssh client and the user's own options.
        forward: with ``hosts``: names of more variables of ``env`` to pass to the workers.
        port: with ``hosts``: a fixed port base (checked free on each host) instead of free
            ports.

    A signal to the launcher itself (Ctrl-C, SIGTERM) stops every worker and is never
    restarted. When restarts are exhausted, the result carries the last failure's exit code
    and the log says how many attempts were made.

    Each worker's TensorFlow thread pools get its share of the usable cores (see
    :func:`split_threads`; variables already set in ``env`` are kept). Both decisions are
    logged (logger ``"tfplace"``, level INFO; the fallback is a WARNING).

    Returns:
        A :class:`LaunchResult` (``attempts`` counts the starts); no worker process is left
        running, whatever the path.

    Raises:
        ClusterConfigError: ``host`` is invalid or not an address of this machine, or
            ``network="private"`` is impossible here (checked before any worker starts).
        ValueError / TypeError: bad arguments.

    Example:
        >>> import io, sys
        >>> lines = []
        >>> result = launch([sys.executable, "-c", "print('hello')"], 2, out=io.StringIO(),
        ...                 on_line=lambda i, line: lines.append((i, line)))
        >>> result.returncode, sorted(lines)
        (0, [(0, 'hello'), (1, 'hello')])
    """
    if isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
        raise TypeError(f"command must be a non-empty list of strings, found {command!r}")
    if (num_workers is not None or hosts is None) and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1
    ):
        raise ValueError(f"num_workers must be a positive int, found {num_workers!r}")
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, int | float)
        or not math.isfinite(grace_seconds)
        or grace_seconds < 0
    ):
        raise ValueError(
            f"grace_seconds must be a finite number of seconds >= 0, found {grace_seconds!r}"
        )
    if on_line is not None and not callable(on_line):
        raise TypeError(f"on_line must be a callable (index, line), found {on_line!r}")
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, found {network!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, found {max_restarts!r}")
    if restart_on not in RESTART_ON:
        raise ValueError(f"restart_on must be one of {RESTART_ON}, found {restart_on!r}")
    if hosts is not None:
        from tfplace.cluster._remote import launch_on_hosts

        if network == "private":
            raise ClusterConfigError(
                "launch: network='private' keeps workers on this machine, found hosts="
                f"{hosts!r}. Fix: leave network out with hosts (docs: clusters.md, 'The "
                "hostfile launcher', for what is exposed)"
            )
        outcome = launch_on_hosts(
            command,
            hosts,
            num_workers=num_workers,
            env=env,
            forward=forward,
            ssh=ssh,
            port=port,
            grace_seconds=grace_seconds,
            out=out,
            on_line=on_line,
            max_restarts=max_restarts,
            restart_on=restart_on,
        )
        return LaunchResult(*outcome)
    assert num_workers is not None
    ports = _free_ports(num_workers, host, "launch")  # checks the host before anything starts
    started = time.monotonic()
    base = dict(os.environ if env is None else env)
    threads = split_threads(_usable_cores(), num_workers, base)
    for reason in threads.reasons:
        log.info("tfplace launch: %s", reason)
    base.update(threads.set_env)
    private = _network(network, host)
    config = _RunConfig(
        command=tuple(command),
        host=host,
        env=base,
        grace_seconds=grace_seconds,
        out=out or sys.stdout,
        on_line=on_line,
        network=private,
        restarts=_Restarts(max_restarts, restart_on),
        started=started,
    )
    try:
        return _run(config, ports)
    finally:
        if private is not None:
            private.close()


def _network(network: str, host: str) -> _PrivateNetwork | None:
    """The private namespace the workers will share, or None (with the reason logged)."""
    if network == "host":
        log.info("tfplace launch: network='host': the workers' ports are open on every interface")
        return None
    if not _is_loopback(host):
        if network == "private":
            raise ClusterConfigError(
                f"launch: network='private' needs a loopback host, found {host!r}. "
                "Fix: use host='127.0.0.1' (or '::1'), or network='host'"
            )
        log.info(
            "tfplace launch: host %r is not a loopback address: the workers use this "
            "machine's network and listen on every interface",
            host,
        )
        return None
    opened = _PrivateNetwork.open()
    if isinstance(opened, str):
        if network == "private":
            raise ClusterConfigError(
                f"launch: network='private': expected a private network namespace, found "
                f"none can be made here ({opened}). Fix: run as root or allow unprivileged "
                "user namespaces (kernel.unprivileged_userns_clone=1), or use network='auto'"
            )
        log.warning(
            "tfplace launch: the workers' TensorFlow servers listen on every network "
            "interface and could not be isolated (%s): anyone who can reach this machine can "
            "connect to them, and TensorFlow's runtime has no authentication. Run on a "
            "trusted network or behind a firewall (docs: multi-worker.md, 'Network exposure')",
            opened,
        )
        return None
    log.info(
        "tfplace launch: the workers share a private network namespace (loopback only): "
        "unreachable from outside this machine, and without outbound network access; "
        "network='host' keeps the machine's network"
    )
    return opened


class Restart(enum.Enum):
    """What happens after a failed attempt (see :meth:`_Restarts.verdict`)."""

    #: Start the whole group again.
    RESTART = "restart"
    #: ``max_restarts=0``: restarts were not asked for; the failure ends the launch silently.
    NOT_ASKED = "not asked"
    #: ``max_restarts`` restarts were made already.
    EXHAUSTED = "exhausted"
    #: The exit code is a permanent failure (and ``restart_on="retryable"``).
    PERMANENT = "permanent"


@dataclass(frozen=True)
class _Verdict:
    """Whether a failed attempt is restarted, and why not, in words."""

    decision: Restart
    reason: str = ""

    @property
    def restart(self) -> bool:
        return self.decision is Restart.RESTART


@dataclass(frozen=True)
class _Restarts:
    limit: int
    on: str

    def verdict(self, returncode: int, attempt: int) -> _Verdict:
        """Whether the failed ``attempt`` (1-based), ended by ``returncode``, is restarted.

        Example:
            >>> _Restarts(2, "retryable").verdict(1, 1).decision
            <Restart.PERMANENT: 'permanent'>
            >>> _Restarts(2, "retryable").verdict(-9, 1).restart
            True
        """
        if attempt > self.limit:
            if self.limit == 0:
                return _Verdict(Restart.NOT_ASKED)
            return _Verdict(
                Restart.EXHAUSTED,
                f"restarts exhausted: {attempt} attempts (1 start + {self.limit} restarts)",
            )
        if self.on != "any" and not is_retryable(returncode):
            return _Verdict(
                Restart.PERMANENT,
                f"exit code {_code(returncode)} is a permanent failure (retryable: a death "
                f"by a signal, or the restart exit code {RESTART_EXIT_CODE}); "
                "restart_on='any' (--restart-on any) restarts every failure",
            )
        return _Verdict(Restart.RESTART)


@dataclass(frozen=True)
class _RunConfig:
    """Everything one launch needs to start its attempts, checked by :func:`launch`."""

    command: tuple[str, ...]
    host: str
    env: Mapping[str, str]
    grace_seconds: float
    out: IO[str]
    on_line: Callable[[int, str], None] | None
    network: _PrivateNetwork | None
    restarts: _Restarts
    started: float


@contextlib.contextmanager
def _signals_to(interrupt: _Interrupt) -> Iterator[None]:
    """Record SIGINT and SIGTERM in ``interrupt`` meanwhile (main thread only; restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(sig: int, _frame: object) -> None:
        interrupt.signal = sig

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(config: _RunConfig, ports: list[int]) -> LaunchResult:
    """Start the group, and again after each failure the restart policy allows."""
    interrupt = _Interrupt()
    with _signals_to(interrupt):
        attempt = 1
        while True:
            run = _Launch(
                config.command,
                ClusterSpec.local(ports, config.host),
                {**config.env, RESTART_COUNT_ENV: str(attempt - 1)},
                config.grace_seconds,
                config.out,
                config.on_line,
                config.network,
                interrupt,
            )
            code, failed = _attempt(run)
            result = _result(run, code, failed, config.started, attempt)
            if failed is None or not _restart(config, run, result, attempt, interrupt):
                return result
            ports = _free_ports(len(ports), config.host, "launch")
            attempt += 1


def _result(
    run: _Launch, code: int, failed: int | None, started: float, attempt: int
) -> LaunchResult:
    return LaunchResult(
        returncode=code,
        worker_codes=tuple(
            None if p.returncode is None else _code(p.returncode) for p in run.procs
        ),
        failed_worker=failed,
        seconds=time.monotonic() - started,
        attempts=attempt,
    )


def _restart(
    config: _RunConfig, run: _Launch, result: LaunchResult, attempt: int, interrupt: _Interrupt
) -> bool:
    """Whether the failed ``attempt`` is restarted; says so, or why not, in the output and log."""
    assert result.failed_worker is not None
    raw = run.procs[result.failed_worker].returncode
    assert raw is not None
    cause = _cause(result.failed_worker, raw)
    if interrupt.signal is not None:
        run._say(f"received signal {interrupt.signal}; not restarting")
        log.warning(
            "tfplace launch: %s, and the launcher received signal %d: not restarting",
            cause,
            interrupt.signal,
        )
        return False
    verdict = config.restarts.verdict(raw, attempt)
    if verdict.decision is Restart.NOT_ASKED:
        return False
    if not verdict.restart:
        run._say(f"not restarting: {verdict.reason}; exit code {result.returncode}")
        log.warning(
            "tfplace launch: %s on attempt %d; not restarting: %s. Exit code %d",
            cause,
            attempt,
            verdict.reason,
            result.returncode,
        )
        return False
    n, limit = len(run.procs), config.restarts.limit
    run._say(
        f"restarting all {n} workers on new ports (restart {attempt} of {limit}, "
        f"{RESTART_COUNT_ENV}={attempt})"
    )
    log.warning(
        "tfplace launch: %s on attempt %d; restarting all %d workers on new ports "
        "(restart %d of %d, %s=%d)",
        cause,
        attempt,
        n,
        attempt,
        limit,
        RESTART_COUNT_ENV,
        attempt,
    )
    return True


def _attempt(run: _Launch) -> tuple[int, int | None]:
    """Start the group, wait for it to end; every worker has ended when this returns."""
    try:
        run.start()
        code, failed = run.wait()
    except BaseException:
        run.stop_all()
        raise
    finally:
        for reader in run.readers:
            reader.join(timeout=5)
    if run.callback_error is not None:  # raised while the last lines were read
        raise run.callback_error
    return code, failed
