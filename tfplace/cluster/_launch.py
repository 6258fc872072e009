"""``tfplace launch``: the public entry, and the local transport of the launcher core.

:func:`launch` checks its arguments, then hands a transport to the one supervision core
(:mod:`tfplace.cluster._core`: group states, failures, the restart policy, signals, the stop):
:class:`LocalWorkers` here for N worker processes of the current Python on this machine, or
the ssh transport of :mod:`tfplace.cluster._remote` for workers on other hosts.

Local workers each get their own ``TF_CONFIG`` on free loopback ports (new ones at each
restart) and run in their own process group, so whatever a worker starts is stopped with it.
Each worker's TensorFlow thread pools are sized to its share of the usable cores
(:func:`split_threads`, pure) through ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``,
unless the environment sets them already; on Linux the workers share a private network with
only a loopback interface (:mod:`tfplace.cluster._netns`).

Restarts follow Kubeflow's ``restartPolicy: ExitCode`` (kubeflow/training-operator,
``pkg/util/train/train_util.go``, ``IsRetryableExitCode``): a death by a signal and the
restart exit code 143 are retried, an ordinary error code (1, 2, ...) is permanent;
``restart_on="any"`` retries every failure. A signal to the launcher itself is never a reason
to restart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from tfplace._decide.threads import split_threads
from tfplace._facts.cluster.spec import ClusterSpec, check_host, parse_tf_config
from tfplace.cluster._core import (
    RESTART_ON,
    LaunchResult,
    RestartPolicy,
    Supervision,
    Transport,
    batch_env,
    supervise,
)
from tfplace.cluster._forward import forward_values
from tfplace.cluster._hosts import HostSlots
from tfplace.cluster._netns import NETWORKS, PrivateNetwork, choose_network
from tfplace.cluster._output import WorkerOutput
from tfplace.cluster._restarts import RESTART_COUNT_ENV
from tfplace.cluster._ssh import LINK_TIMEOUT
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


def _replaced_tf_config(value: str | None) -> None:
    """Say, in one line, that the launcher's own ``TF_CONFIG`` is not what the workers get."""
    if value is None or not value.strip():
        return
    try:
        parse_tf_config(value)
    except ClusterConfigError as err:
        log.warning(
            "tfplace launch: the TF_CONFIG of this environment is not valid (%s); it is not "
            "used: each worker gets its own TF_CONFIG from the launcher",
            err,
        )
        return
    log.info("tfplace launch: each worker gets its own TF_CONFIG, not this environment's")


def _usable_cores() -> int:
    from tfplace._facts.inventory import CPUInfo, _affinity, cpu_quota

    return CPUInfo(
        host_cores=os.cpu_count() or 1, affinity_cores=_affinity(), quota_cores=cpu_quota()
    ).usable_cores


class LocalWorkers(Transport):
    """The local transport: worker processes of this machine, each in its own process group
    (so that whatever a worker starts is stopped with it), in the private network if any."""

    def __init__(
        self,
        command: Sequence[str],
        num_workers: int,
        host: str,
        env: Mapping[str, str],
        network: PrivateNetwork | None,
        ports: list[int],
    ) -> None:
        self.command = list(command)
        self.num_workers = num_workers
        self.host = host
        self.env = env
        self.network = network
        self.ports = ports
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        self.cleaned: set[int] = set()

    @property
    def size(self) -> int:
        return self.num_workers

    def prepare(self, attempt: int) -> None:
        if attempt > 1:  # the first ports were found (and the host checked) by launch()
            self.ports = _free_ports(self.num_workers, self.host, "launch")

    def start(self, attempt: int, output: WorkerOutput) -> None:
        self.procs, self.readers, self.cleaned = [], [], set()
        cluster = ClusterSpec.local(self.ports, self.host)
        for i in range(self.num_workers):
            env = {**self.env, RESTART_COUNT_ENV: str(attempt - 1)}
            env["TF_CONFIG"] = cluster.for_task(i).to_tf_config()
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
            output.say(f"worker {i}: pid {proc.pid} on host {socket.gethostname()}")
            for stream in (proc.stdout, proc.stderr):
                assert stream is not None
                reader = threading.Thread(
                    target=output.pump, args=(i, f"[worker {i}] ", stream), daemon=True
                )
                reader.start()
                self.readers.append(reader)
        log.info(
            "tfplace launch: %d workers on %s", self.size, ", ".join(cluster.addresses("worker"))
        )

    def returncodes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)

    def stop(self, sig: int, grace: float) -> None:
        self._signal_all(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        self._kill_groups()

    def _kill_groups(self) -> None:
        """Once every worker has ended, SIGKILL whatever they started in their groups (once:
        a group id may be reused after that)."""
        for proc in self.procs:
            proc.wait()
            if proc.pid not in self.cleaned:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self.cleaned.add(proc.pid)

    def finish(self) -> None:
        # After success too: whatever the workers left running in their groups goes, and so
        # the output pipes close and the readers end.
        if all(p.poll() is not None for p in self.procs):
            self._kill_groups()
        for reader in self.readers:
            reader.join(timeout=5)


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
    link_timeout: float = LINK_TIMEOUT,
    min_workers: int | None = None,
    rejoin: bool = False,
    host_discovery: str | None = None,
    global_batch: int | None = None,
) -> LaunchResult:
    """Run ``command`` as ``num_workers`` local workers of one TensorFlow cluster.

    With ``hosts``, the workers run on those hosts over ssh instead (see
    :mod:`tfplace.cluster._remote`).

    Args:
        command: the program and its arguments, e.g. ``[sys.executable, "train.py"]``.
        num_workers: how many workers (>= 1).
        env: the base environment (default: this process's); each worker also gets
            ``TF_CONFIG`` and ``TFPLACE_WORKER_INDEX``, and ``TF_CPP_MIN_LOG_LEVEL=1`` (no
            TensorFlow INFO logs) unless ``env`` sets it. A ``TF_CONFIG`` in ``env`` is
            replaced (the log says so; a WARNING where it is not valid).
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
        forward: more variables for the workers, as ``mpirun -x`` takes them: ``"NAME"``
            passes ``env``'s value (an unset NAME is a ``ClusterConfigError``),
            ``"NAME=VALUE"`` sets VALUE. With ``hosts`` these are added to what is always
            forwarded (TensorFlow's own variables by an explicit list, never Terraform's
            ``TF_VAR_*``/``TF_TOKEN_*``/``TF_CLI_ARGS*``; see ``docs/clusters.md``).
        port: with ``hosts``: a fixed port base (checked free on each host) instead of free
            ports.
        link_timeout: with ``hosts``: seconds a host may answer nothing before its workers
            are taken as lost (default 10): a shorter network blip is ridden through.
        min_workers: with ``hosts``: the fewest workers to go on with. Before each start
            every listed host is probed; a host that does not answer is left out (said in
            one line) as long as the hosts that answer hold at least this many workers, and
            a host that answers again is taken back at the next restart. None (default):
            every host must answer. A lost host counts against ``max_restarts``.
        rejoin: with ``min_workers``: probe the hosts that are out every 5 s; when one answers,
            stop the group as for a preemption (SIGTERM and the full ``grace_seconds``: a
            ``tfplace.callbacks.BackupAndRestore`` saves and exits 143) and start it again on
            more workers, without counting that start against ``max_restarts``.
        host_discovery: instead of ``hosts``: a shell command that prints the current hosts,
            ``host:slots`` a line (Horovod's ``--host-discovery-script``), run before each start
            (and, with ``rejoin``, every 5 s to find new hosts).
        global_batch: the training's fixed global batch: every start's worker count must
            divide it (a count that does not, after a host is lost, is refused before that
            start, naming the counts that would), and each worker gets
            ``TFPLACE_GLOBAL_BATCH`` and its part, ``TFPLACE_WORKER_BATCH``.

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
    remote = hosts is not None or host_discovery is not None
    if (num_workers is not None or not remote) and (
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
    if (
        isinstance(link_timeout, bool)
        or not isinstance(link_timeout, int | float)
        or not math.isfinite(link_timeout)
        or link_timeout < 1
    ):
        raise ValueError(
            f"link_timeout must be a finite number of seconds >= 1, found {link_timeout!r}"
        )
    if min_workers is not None and (
        isinstance(min_workers, bool) or not isinstance(min_workers, int) or not remote
    ):
        raise ValueError(f"min_workers goes with hosts and is an int, found {min_workers!r}")
    if global_batch is not None and (
        isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1
    ):
        raise ValueError(f"global_batch must be a positive int, found {global_batch!r}")
    if rejoin and min_workers is None:
        raise ValueError("rejoin goes with min_workers (hosts that are out can come back)")
    if restart_on not in RESTART_ON:
        raise ValueError(f"restart_on must be one of {RESTART_ON}, found {restart_on!r}")
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO logs would bury the output
    _replaced_tf_config(env.get("TF_CONFIG"))
    if host_discovery is not None and (not isinstance(host_discovery, str) or not host_discovery):
        raise TypeError(f"host_discovery must be a shell command, found {host_discovery!r}")
    if remote:
        from tfplace.cluster._remote import launch_on_hosts

        if network == "private":
            raise ClusterConfigError(
                "launch: network='private' keeps workers on this machine, found hosts="
                f"{hosts!r}. Fix: leave network out with hosts (docs: clusters.md, 'The "
                "hostfile launcher', for what is exposed)"
            )
        return launch_on_hosts(
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
            link_timeout=link_timeout,
            min_workers=min_workers,
            rejoin=rejoin,
            host_discovery=host_discovery,
            global_batch=global_batch,
        )
    assert num_workers is not None
    ports = _free_ports(num_workers, host, "launch")  # checks the host before anything starts
    started = time.monotonic()
    base = {**env, **forward_values(forward, env), **batch_env(global_batch, num_workers)}
    threads = split_threads(_usable_cores(), num_workers, base)
    for reason in threads.reasons:
        log.info("tfplace launch: %s", reason)
    base.update(threads.set_env)
    private = choose_network(network, host)
    workers = LocalWorkers(command, num_workers, host, base, private, ports)
    how = Supervision(
        RestartPolicy(max_restarts, restart_on),
        grace_seconds,
        WorkerOutput(out or sys.stdout, on_line),
        started,
    )
    try:
        return supervise(workers, how)
    finally:
        if private is not None:
            private.close()
