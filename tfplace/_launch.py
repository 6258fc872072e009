"""The local multi-worker launcher behind ``tfplace launch``.

Starts N worker processes of the current Python, each with its own ``TF_CONFIG`` on free
loopback ports, prefixes every output line with the worker's index, forwards Ctrl-C and
SIGTERM, and as soon as one worker fails stops the others (SIGTERM, then SIGKILL after a
grace period) and exits with that worker's code. Each worker runs in its own process group,
so whatever it started is stopped with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tfplace.cluster import ClusterSpec

__all__ = ["LaunchResult", "free_ports", "launch", "tf_configs"]

log = logging.getLogger("tfplace")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ask the OS for ``n`` distinct free TCP ports on ``host``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"free_ports needs a positive count, found {n!r}")
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(hosts: Sequence[str], port: int = 2222) -> list[str]:
    """The TF_CONFIG text for each host of a cluster of workers, in order.

    Args:
        hosts: host names or ``host:port`` entries; entries without a port get ``port``.
        port: the default port.

    Raises:
        ClusterConfigError: a host or port is invalid, or an address repeats.
    """
    from tfplace.cluster import from_mapping

    if isinstance(hosts, str) or not hosts:
        raise ValueError("tf_configs needs a non-empty list of hosts")
    addresses = [_with_port(h, port) for h in hosts]
    configs = []
    for i in range(len(addresses)):
        spec: ClusterSpec = from_mapping(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}},
            source="host list",
        )
        configs.append(spec.to_tf_config())
    return configs


def _with_port(host: str, port: int) -> str:
    if not isinstance(host, str):
        raise TypeError(f"hosts must be strings, found {host!r}")
    if host.startswith("["):
        return host if "]:" in host else f"{host}:{port}"
    if host.count(":") > 1:  # a bare IPv6 address
        return f"[{host}]:{port}"
    return host if ":" in host else f"{host}:{port}"


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
        n: int,
        env: Mapping[str, str],
        grace: float,
        out: IO[str],
        host: str,
    ) -> None:
        self.command = list(command)
        self.n = n
        self.env = env
        self.grace = grace
        self.out = out
        self.host = host
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        self.out_lock = threading.Lock()
        self.stop_signal: int | None = None

    def _pump(self, index: int, stream: IO[bytes]) -> None:
        prefix = f"[worker {index}] "
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.out_lock:
                self.out.write(prefix + line + "\n")
                self.out.flush()
        stream.close()

    def start(self) -> None:
        ports = free_ports(self.n, self.host)
        cluster = {"worker": [f"{self.host}:{p}" for p in ports]}
        for i in range(self.n):
            env = dict(self.env)
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}
            )
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
        log.info("tfplace launch: %d workers on %s", self.n, ", ".join(cluster["worker"]))

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
) -> LaunchResult:
    """Run ``command`` as ``num_workers`` local workers of one TensorFlow cluster.

    Args:
        command: the program and its arguments, e.g. ``[sys.executable, "train.py"]``.
        num_workers: how many workers (>= 1).
        env: the base environment (default: this process's); each worker also gets
            ``TF_CONFIG`` and ``TFPLACE_WORKER_INDEX``.
        grace_seconds: how long stopped workers get between SIGTERM and SIGKILL.
        host: the loopback address the workers listen on.
        out: where prefixed output goes (default: standard output).

    Returns:
        A :class:`LaunchResult`; no worker process is left running.

    Raises:
        ValueError / TypeError: bad arguments.

    Example:
        >>> launch([sys.executable, "train.py"], 2).returncode  # doctest: +SKIP
        0
    """
    if isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
        raise TypeError(f"command must be a non-empty list of strings, found {command!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, found {num_workers!r}")
    if not isinstance(grace_seconds, int | float) or grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, found {grace_seconds!r}")
    started = time.monotonic()
    run = _Launch(
        command, num_workers, dict(env or os.environ), grace_seconds, out or sys.stdout, host
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
    return LaunchResult(
        returncode=code,
        worker_codes=tuple(
            None if p.returncode is None else _code(p.returncode) for p in run.procs
        ),
        failed_worker=failed,
        seconds=time.monotonic() - started,
    )
