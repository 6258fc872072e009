"""The local multi-worker launcher behind ``tfplace launch``.

Starts N worker processes of the current Python, each with its own ``TF_CONFIG`` on free
loopback ports, prefixes every output line with the worker's index, forwards Ctrl-C and
SIGTERM, and as soon as one worker fails stops the others (SIGTERM, then SIGKILL after a
grace period) and exits with that worker's code. Each worker runs in its own process group,
so whatever it started is stopped with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tfplace.cluster import ClusterSpec, check_host
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
        socks = [socket.socket(family, kind, proto) for _ in range(n)]
    except OSError as err:
        raise _unusable(source, host, err) from err
    try:
        for s in socks:
            s.bind(sockaddr)
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


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended.

    Attributes:
        returncode: 0 when every worker succeeded, else the first failing worker's code
            (128 + signal number for a worker killed by a signal).
        worker_codes: each worker's exit code (None if it had to be killed).
        failed_worker: the index of the first worker that failed, or None.
        seconds: wall time of the launch.
    """

    returncode: int
    worker_codes: tuple[int | None, ...]
    failed_worker: int | None
    seconds: float


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Launch:
    def __init__(
        self,
        command: Sequence[str],
        cluster: ClusterSpec,
        env: Mapping[str, str],
        grace: float,
        out: IO[str],
        on_line: Callable[[int, str], None] | None,
    ) -> None:
        self.command = list(command)
        self.cluster = cluster
        self.env = env
        self.grace = grace
        self.out = out
        self.on_line = on_line
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        self.out_lock = threading.Lock()
        self.stop_signal: int | None = None
        self.callback_error: BaseException | None = None

    def _pump(self, index: int, stream: IO[bytes]) -> None:
        prefix = f"[worker {index}] "
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.out_lock:  # one line at a time, so callbacks never run concurrently
                self.out.write(prefix + line + "\n")
                self.out.flush()
                if self.on_line is not None and self.callback_error is None:
                    try:
                        self.on_line(index, line)
                    except BaseException as err:  # stops the launch; launch() re-raises it
                        self.callback_error = err
        stream.close()

    def start(self) -> None:
        n = self.cluster.num_workers
        for i in range(n):
            env = dict(self.env)
            env["TF_CONFIG"] = self.cluster.for_task(i).to_tf_config()
            env["TFPLACE_WORKER_INDEX"] = str(i)
            env.setdefault("PYTHONUNBUFFERED", "1")
            proc = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            reader = threading.Thread(target=self._pump, args=(i, proc.stdout), daemon=True)
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
        for proc in self.procs:
            proc.wait()
            # Whatever the worker started in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def wait(self) -> tuple[int, int | None]:
        failed: int | None = None
        while True:
            if self.callback_error is not None:
                self._say("the on_line callback raised an error; stopping the workers")
                self.stop_all()
                raise self.callback_error
            if self.stop_signal is not None:
                self._say(f"received signal {self.stop_signal}; stopping the workers")
                self.stop_all(self.stop_signal)
                return 128 + self.stop_signal, None
            codes = [p.poll() for p in self.procs]
            for i, code in enumerate(codes):
                if code is not None and code != 0:
                    failed = i
                    self._say(f"worker {i} exited with code {_code(code)}; stopping the others")
                    self.stop_all()
                    return _code(code), failed
            if all(code == 0 for code in codes):
                return 0, None
            time.sleep(0.01)

    def _say(self, text: str) -> None:
        with self.out_lock:
            self.out.write(f"[tfplace launch] {text}\n")
            self.out.flush()


def launch(
    command: Sequence[str],
    num_workers: int,
    *,
    env: Mapping[str, str] | None = None,
    grace_seconds: float = 5.0,
    host: str = "127.0.0.1",
    out: IO[str] | None = None,
    on_line: Callable[[int, str], None] | None = None,
) -> LaunchResult:
    """Run ``command`` as ``num_workers`` local workers of one TensorFlow cluster.

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

    Returns:
        A :class:`LaunchResult`; no worker process is left running.

    Raises:
        ClusterConfigError: ``host`` is invalid or not an address of this machine (checked
            before any worker starts).
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
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, found {num_workers!r}")
    if not isinstance(grace_seconds, int | float) or grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, found {grace_seconds!r}")
    if on_line is not None and not callable(on_line):
        raise TypeError(f"on_line must be a callable (index, line), found {on_line!r}")
    cluster = ClusterSpec.local(_free_ports(num_workers, host, "launch"), host)
    started = time.monotonic()
    run = _Launch(
        command, cluster, dict(env or os.environ), grace_seconds, out or sys.stdout, on_line
    )
    previous: dict[int, Any] = {}

    def on_signal(sig: int, _frame: object) -> None:
        run.stop_signal = sig

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        run.start()
        code, failed = run.wait()
    except BaseException:
        run.stop_all()
        raise
    finally:
        if in_main:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for reader in run.readers:
            reader.join(timeout=5)
    if run.callback_error is not None:  # raised while the last lines were read
        raise run.callback_error
    return LaunchResult(
        returncode=code,
        worker_codes=tuple(
            None if p.returncode is None else _code(p.returncode) for p in run.procs
        ),
        failed_worker=failed,
        seconds=time.monotonic() - started,
    )
