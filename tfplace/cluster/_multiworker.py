"""MultiWorkerMirroredStrategy construction, made to work with Keras 3 ``model.fit``.

Keras 3's TensorFlow trainer calls ``strategy.reduce`` in two ways that TensorFlow's collective
(multi-worker) strategy rejects with ``Attempt to convert a value (PerReplica:{...}) ... to a
Tensor`` (keras-team/keras#20585, tensorflow/tensorflow#72388):

1. on a nested structure (the first data batch, in ``_maybe_symbolic_build``), although
   ``Strategy.reduce`` is documented to take nests and the mirrored strategy accepts them;
2. with ``axis=0`` on scalar per-replica values (metrics, in ``reduce_per_replica``), where
   there is no axis 0 to reduce along.

tfplace builds a subclass of ``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce``
maps over nests leaf by leaf and treats ``axis=0`` on a scalar as a reduction across replicas
only. Everything else is TensorFlow's strategy unchanged, so ``isinstance`` checks (Keras's
own among them) still see a ``MultiWorkerMirroredStrategy``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace._decide.strategy import Plan
from tfplace._facts.cluster.env import from_env
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace.cluster._stock import StockCallbackWarning, watch as watch_stock_callbacks
from tfplace.errors import (
    AlreadyInitializedError,
    BarrierTimeoutError,
    ClusterConfigError,
    TfplaceError,
    one_line,
)

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "MULTI_WORKER_FIX",
    "BarrierTimeoutError",
    "PeerError",
    "StockCallbackWarning",
    "barrier",
    "cluster_of",
    "compare_replica_counts",
    "is_chief",
    "kv_get",
    "kv_set",
    "kv_wait",
    "make_multi_worker",
    "multi_worker_class",
    "worker_save_path",
]

MULTI_WORKER_FIX = (
    "Create the multi-worker strategy first: call tfplace.configure_*() (optional), then "
    "tfplace.pick_strategy(), then build models and data, in a fresh process (TF#47861)."
)

log = logging.getLogger("tfplace")
_class_lock = threading.Lock()
_class: type | None = None
#: The cluster of the last multi-worker strategy built in this process (None: none built).
_built_cluster: ClusterSpec | None = None
#: Seconds between two looks at the coordination service while waiting for a key.
POLL_S = 1.0


class PeerError(TfplaceError):
    """Raised while waiting for a worker's key when a worker reported a failure instead."""


def _rank(value: Any) -> int | None:
    values = getattr(value, "values", None)
    first = values[0] if isinstance(values, tuple) and values else value
    shape = getattr(first, "shape", None)
    return getattr(shape, "rank", None) if shape is not None else None


def multi_worker_class() -> type:
    """The Keras-compatible ``MultiWorkerMirroredStrategy`` subclass (created once)."""
    global _class
    with _class_lock:
        if _class is not None:
            return _class
        base = _tf.multi_worker_base()
        nest = _tf.nest()

        class KerasMultiWorkerMirroredStrategy(base):  # type: ignore[misc, valid-type]
            """``MultiWorkerMirroredStrategy`` whose ``reduce`` handles what Keras 3 passes."""

            def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:
                if not nest.is_nested(value):
                    if axis is not None and _rank(value) == 0:
                        axis = None  # a scalar has no axis: reduce across replicas only
                    with _tf.nested_collective_keys():
                        return super().reduce(reduce_op, value, axis=axis)
                return nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)

            def run(self, fn: Any, args: Any = (), kwargs: Any = None, options: Any = None) -> Any:
                with _tf.nested_collective_keys():  # steps_per_execution > 1 (keras#19246)
                    return super().run(fn, args=args, kwargs=kwargs, options=options)

        KerasMultiWorkerMirroredStrategy.__module__ = __name__
        _class = KerasMultiWorkerMirroredStrategy
        return _class


_WATCHDOG = r"""
import os, select, signal, socket, sys
parent, timeout, me, peers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if ready:
    sys.exit(0)  # the strategy was built (or the parent died and closed the pipe)
def reachable(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False
down = [a for a in peers if a != me and not reachable(a)]
detail = (
    "Nothing listens at " + ", ".join(down) + ": start those workers, or check the addresses "
    "and the firewall." if down else
    "Every peer accepts connections but not all joined: check that they run the same program "
    "with the same cluster."
)
sys.stderr.write(
    "tfplace: pick_strategy('multi_worker'): not every worker joined within %g s (this is %s). "
    "%s Stopping this worker (SIGKILL) instead of waiting forever; "
    "pick_strategy(startup_timeout=...) changes the limit, None waits forever.\n"
    % (timeout, me, detail)
)
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


def _start_watchdog(spec: ClusterSpec, startup_timeout: float) -> subprocess.Popen[bytes]:
    """Kill this worker, saying why, unless the strategy is built within ``startup_timeout``.

    TensorFlow waits in C++ for every worker to join, holding the GIL, where neither a Python
    thread nor a signal handler can run; a worker that never starts would leave the others
    waiting for good. So the watchdog is a small separate process; closing its stdin (see
    :func:`_stop_watchdog`) tells it the strategy exists.
    """
    peers = [a for name, addrs in spec.jobs if name in ("chief", "worker") for a in addrs]
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WATCHDOG,
            str(os.getpid()),
            str(startup_timeout),
            spec.address,
            *peers,
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def _stop_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        assert watchdog.stdin is not None
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:  # it should end as soon as its stdin closes
        watchdog.kill()
        watchdog.wait()


def make_multi_worker(
    decision: Plan, timeout: float | None, startup_timeout: float | None = None
) -> tf.distribute.Strategy:
    """Build the multi-worker strategy for ``decision`` (collectives with a timeout)."""
    if _tf.runtime_started():
        raise AlreadyInitializedError(
            "pick_strategy('multi_worker'): TensorFlow's runtime has already started, and "
            f"collective ops must be configured at program start-up. {MULTI_WORKER_FIX}"
        )
    if decision.cross_device_ops is None:
        raise ValueError(
            "a multi_worker plan must name its collective implementation (one of "
            "'ring', 'nccl', 'auto'); found None. Make plans with tfplace.plan()."
        )
    options = _tf.communication_options(decision.cross_device_ops, timeout)
    resolver: Any = None
    if decision.cluster is not None:
        spec = decision.cluster
        resolver = _tf.simple_cluster_resolver(
            {name: list(addrs) for name, addrs in spec.jobs}, spec.task_type, spec.task_index
        )
    watchdog = (
        _start_watchdog(decision.cluster, startup_timeout)
        if decision.cluster is not None and startup_timeout is not None
        else None
    )
    try:
        strategy: Any = multi_worker_class()(
            cluster_resolver=resolver, communication_options=options
        )
    finally:
        if watchdog is not None:
            _stop_watchdog(watchdog)
    global _built_cluster
    strategy._tfplace_cluster = decision.cluster
    _built_cluster = decision.cluster
    if decision.cluster is not None:
        _exchange_replica_counts(strategy, decision.cluster, timeout)
        watch_stock_callbacks(strategy)  # while it lives, with more than one worker
    return strategy


def cluster_of(strategy: object) -> ClusterSpec | None:
    """The cluster tfplace built ``strategy`` for; None for any other strategy.

    Example:
        >>> cluster_of(object()) is None
        True
    """
    cluster = getattr(strategy, "_tfplace_cluster", None)
    return cluster if isinstance(cluster, ClusterSpec) else None


def _local_replicas(strategy: Any) -> int:
    return len(strategy.extended.worker_devices)


def compare_replica_counts(counts: dict[str, int], source: str) -> None:
    """Raise :class:`ClusterConfigError` unless every worker runs as many replicas. Pure.

    Args:
        counts: ``{"worker 0": 2, "worker 1": 1, ...}``.
        source: where the cluster came from, for the message.
    """
    if len(set(counts.values())) <= 1:
        return
    listing = ", ".join(f"{task}: {n}" for task, n in counts.items())
    raise ClusterConfigError(
        f"{source}: replicas per worker differ ({listing}). Every worker must run the same "
        "number of replicas, or collectives fail with 'Collective Op has group_size ... but "
        "that group has size ...' (TF#47203). Give every worker the same GPUs "
        "(CUDA_VISIBLE_DEVICES, or tfplace.configure_gpus(visible=...))."
    )


def _exchange_replica_counts(strategy: Any, spec: ClusterSpec, timeout: float | None) -> None:
    """Tell the other workers how many replicas this one runs, through TensorFlow's
    coordination service, and compare, before the first collective could fail on it.

    A failure is never silent: a worker that cannot publish its count logs a WARNING and
    reports it under ``tfplace/replicas/error``, where the others see it within
    :data:`POLL_S` seconds; they log a WARNING too, and every worker goes on without the
    comparison (a mismatch then fails at the first collective, TF#47203).
    """
    me = f"{spec.task_type} {spec.task_index}"
    prefix = "tfplace/replicas"
    error_key = f"{prefix}/error"
    try:
        ctx = _tf.coordination_context()
        mine = str(_local_replicas(strategy))
    except Exception as err:
        log.warning(
            "tfplace: %s could not compare replica counts across workers (no coordination "
            "service: %s); a mismatch will fail at the first collective instead (TF#47203)",
            me,
            one_line(err, 500),
        )
        return
    key = f"{prefix}/{spec.task_type}/{spec.task_index}"
    try:
        kv_set(ctx, key, mine, same_ok=True)
    except Exception as err:
        what = f"{me} could not publish its replica count ({key}: {one_line(err, 500)})"
        log.warning("tfplace: %s; the workers go on without comparing replica counts", what)
        _report(ctx, error_key, what)
        return
    wait = timeout or 300.0
    try:
        counts = {
            f"{job} {i}": int(kv_wait(ctx, f"{prefix}/{job}/{i}", wait, error_key=error_key))
            for job, i in _worker_tasks(spec)
        }
    except PeerError as err:
        log.warning("tfplace: %s; the workers go on without comparing replica counts", err)
        return
    except BarrierTimeoutError as err:
        log.warning("tfplace: could not compare replica counts across workers: %s", err)
        return
    compare_replica_counts(counts, spec.source)


def _report(ctx: Any, error_key: str, what: str) -> None:
    """Publish a failure for the other workers; say so if even that fails."""
    try:
        kv_set(ctx, error_key, what)
    except Exception as err:
        log.warning(
            "tfplace: could not report that failure to the other workers either (%s: %s); "
            "they learn of it only when their own wait times out",
            error_key,
            one_line(err, 500),
        )


def kv_set(ctx: Any, key: str, value: str, *, same_ok: bool = False) -> None:
    """Set ``key`` in the coordination service's key-value store.

    Args:
        ctx: the seam's ``coordination_context()``.
        key: the key (set once: a second set raises).
        value: its value.
        same_ok: a key that already holds ``value`` (set by an earlier call) is not an error.

    Raises:
        Exception: TensorFlow's error, e.g. ``AlreadyExistsError``, ``UnavailableError``.
    """
    try:
        ctx.set_config_key_value(key, value)
    except Exception as err:
        if same_ok and _tf.is_already_exists(err) and kv_get(ctx, key, 1.0) == value:
            return
        raise


def kv_get(ctx: Any, key: str, wait: float) -> str | None:
    """The value of ``key``, waiting up to ``wait`` seconds; None when it is not set by then.

    Raises:
        Exception: any other failure of the coordination service (TensorFlow's error).
    """
    try:
        value: str = ctx.get_config_key_value(key, max(1, int(wait * 1000)))
    except Exception as err:
        if _tf.is_deadline_exceeded(err):
            return None
        raise
    return value


def kv_wait(ctx: Any, key: str, timeout: float, *, error_key: str | None = None) -> str:
    """Wait for ``key``; every :data:`POLL_S` seconds look whether a worker reported a failure
    under ``error_key`` instead, so that a failure reaches the others within seconds.

    Raises:
        PeerError: ``error_key`` holds a failure (its text is the message).
        BarrierTimeoutError: ``key`` was not set within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        value = kv_get(ctx, key, max(0.001, min(POLL_S, left)))
        if value is not None:
            return value
        if error_key is not None:
            failure = kv_get(ctx, error_key, 0.001)
            if failure is not None:
                raise PeerError(failure)
        if time.monotonic() >= deadline:
            raise BarrierTimeoutError(
                f"{key!r} was not set within {timeout:g} s: the worker that sets it died, "
                "hangs, or runs a different program"
            )


def _worker_tasks(spec: ClusterSpec) -> list[tuple[str, int]]:
    """``(task type, index)`` of every task that trains (chief, then workers)."""
    return [
        (job, i)
        for job, addrs in spec.jobs
        if job in ("chief", "worker")
        for i in range(len(addrs))
    ]


def _current_cluster(cluster: ClusterSpec | None) -> ClusterSpec | None:
    """The cluster this process belongs to: ``cluster`` if given; else that of the
    multi-worker strategy in force (``tf.distribute.get_strategy()``) or, outside its scope,
    of the last one tfplace built in this process (``pick_strategy(cluster=...)`` included);
    else the environment (TF_CONFIG, SLURM), read without importing TensorFlow."""
    if cluster is not None:
        if not isinstance(cluster, ClusterSpec):
            raise TypeError(f"cluster must be a ClusterSpec, found {type(cluster).__name__}")
        return cluster
    if _built_cluster is not None:  # TensorFlow is loaded: a strategy was built
        return cluster_of(_tf.current_strategy()) or _built_cluster
    return from_env()  # the environment only: no TensorFlow, no package scan


def is_chief(cluster: ClusterSpec | None = None) -> bool:
    """Whether this process is the chief: the one that writes checkpoints, logs and exports.

    The ``chief`` task when the cluster has one, else worker 0; True outside a cluster.
    The cluster is ``cluster`` if given, else that of the multi-worker strategy built in this
    process (``pick_strategy(cluster=...)`` included), else the environment (``TF_CONFIG``,
    else the SLURM variables), read without importing TensorFlow: it is cheap to call
    anywhere, before ``pick_strategy`` too.

    Args:
        cluster: an explicit cluster; by default the strategy's, else TF_CONFIG or SLURM.

    Raises:
        ClusterConfigError: the cluster description is malformed.

    Example:
        >>> from tfplace._facts.cluster.spec import ClusterSpec
        >>> cluster = ClusterSpec.from_hosts(["node1", "node2"])
        >>> is_chief(cluster), is_chief(cluster.for_task(1))
        (True, False)
    """
    spec = _current_cluster(cluster)
    return True if spec is None else spec.is_chief


@contextlib.contextmanager
def worker_save_path(
    path: str | os.PathLike[str], cluster: ClusterSpec | None = None
) -> Iterator[str]:
    """A path to save to that never races: the real path on the chief, a private one elsewhere.

    Under a multi-worker strategy every worker must take part in saving (the variables are
    synchronized through collectives), but only one may write the real file. The chief gets
    ``path``; every other worker gets a path in its own local temporary directory, with the
    same file name, deleted when the block ends. ``path`` may be a URL TensorFlow's file
    systems know (``gs://bucket/run/model.keras``, ``ram://...``): the chief gets it exactly
    as written. It finds the cluster as :func:`is_chief` does. The folder of ``path`` must
    exist on the chief (create it first, as for any save).

    Args:
        path: where the model or checkpoint should end up.
        cluster: an explicit cluster; by default the strategy's, else TF_CONFIG or SLURM.

    Example:
        >>> from tfplace._facts.cluster.spec import ClusterSpec
        >>> second = ClusterSpec.from_hosts(["node1", "node2"]).for_task(1)
        >>> with worker_save_path("model.keras", second) as p:  # model.save(p) goes here
        ...     p != "model.keras" and p.endswith("model.keras")
        True
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, found {path!r}")
    spec = _current_cluster(cluster)
    target = os.fspath(path)
    if not isinstance(target, str):
        raise TypeError(f"path must name a file as text, found the bytes path {target!r}")
    url = "://" in target  # gs://, ram://, hdfs://: kept as written, never through Path()
    if spec is None or spec.is_chief:
        yield target if url else str(Path(target))
        return
    name = target.rstrip("/").rsplit("/", 1)[-1] if url else Path(target).name
    private = tempfile.mkdtemp(prefix=f"tfplace-{spec.task_type}-{spec.task_index}-")
    try:
        yield os.path.join(private, name)
    finally:
        shutil.rmtree(private, ignore_errors=True)


_barrier_lock = threading.Lock()
_barrier_counts: dict[str, int] = {}


def barrier(
    timeout: float | None = 300.0, *, name: str = "tfplace", cluster: ClusterSpec | None = None
) -> None:
    """Wait until every worker of the cluster has reached this call (a no-op with one worker).

    Use it where one worker reads what another wrote: the chief saves, ``barrier()``, then the
    others load. Every worker must call it the same number of times with the same ``name``
    (the n-th call of each worker meets the n-th call of the others). It goes through
    TensorFlow's coordination service, which the multi-worker strategy starts, so call
    :func:`tfplace.pick_strategy` first; it runs no collective op and needs no device.

    The cluster is found as :func:`is_chief` finds it: ``cluster``, else that of the
    multi-worker strategy built in this process (``pick_strategy(cluster=...)`` included),
    else ``TF_CONFIG``/SLURM. Outside a cluster, or with a single worker, it returns at once.

    Args:
        timeout: seconds to wait for the other workers (``None``: one day).
        name: separates independent sequences of barriers (a library's from the user's).
        cluster: an explicit cluster; by default the strategy's, else TF_CONFIG or SLURM.

    Raises:
        BarrierTimeoutError: a worker did not arrive in time (it died, hangs, or runs a
            different program).
        TfplaceError: in a cluster, but the multi-worker strategy was not built in this
            process, so there is no coordination service to meet in.
        ValueError: ``timeout`` is not positive.

    Example:
        >>> import tfplace
        >>> tfplace.barrier(timeout=5)  # no cluster here: returns at once
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"barrier(timeout={timeout!r}): expected a positive number of seconds")
    spec = _current_cluster(cluster)
    if spec is None or spec.num_workers <= 1:
        return
    if not _tf.runtime_started():
        raise TfplaceError(
            f"barrier(): this process is {spec.task_type} {spec.task_index} of a "
            f"{spec.num_workers}-worker cluster ({spec.source}), but TensorFlow has not started "
            "the multi-worker strategy, whose coordination service barriers use. Fix: call "
            "tfplace.pick_strategy() before barrier()."
        )
    ctx = _tf.coordination_context()
    if getattr(ctx, "coordination_service", None) is None:
        raise TfplaceError(
            f"barrier(): {spec.task_type} {spec.task_index} of a {spec.num_workers}-worker "
            "cluster has no TensorFlow coordination service (the multi-worker strategy starts "
            "it). Fix: build the strategy with tfplace.pick_strategy() first, in every worker."
        )
    # Counted only once the call can really meet the others: a refused call (above) must not
    # put this worker one barrier ahead of its peers.
    with _barrier_lock:
        count = _barrier_counts.get(name, 0)
        _barrier_counts[name] = count + 1
    barrier_id = f"tfplace/barrier/{name}/{count}"
    wait = 86_400.0 if timeout is None else timeout
    started = time.monotonic()
    with contextlib.suppress(Exception):  # only for naming the missing workers on failure
        ctx.set_config_key_value(f"{barrier_id}/{spec.task_type}/{spec.task_index}", "1")
    try:
        ctx.wait_at_barrier(barrier_id, int(wait * 1000))
    except Exception as err:
        waited = time.monotonic() - started
        missing = _not_arrived(ctx, barrier_id, spec)
        who = f"missing: {', '.join(missing)}" if missing else "every worker had arrived"
        raise BarrierTimeoutError(
            f"barrier({name!r}, call {count}): not every worker arrived within {wait:g} s "
            f"({who}; this is {spec.task_type} {spec.task_index}, waited {waited:.1f} s; "
            f"TensorFlow says: {one_line(err, 500)}). Every worker must call barrier() the same "
            "number of times: check that none died or took another branch, or raise the "
            "timeout."
        ) from err
    log.debug("tfplace: passed barrier %s in %.3f s", barrier_id, time.monotonic() - started)


def _not_arrived(ctx: Any, barrier_id: str, spec: ClusterSpec) -> list[str]:
    """The workers whose arrival mark for ``barrier_id`` is absent (best effort)."""
    missing = []
    for job, i in _worker_tasks(spec):
        try:
            ctx.get_config_key_value(f"{barrier_id}/{job}/{i}", 200)
        except Exception:
            missing.append(f"{job} {i}")
    return missing
