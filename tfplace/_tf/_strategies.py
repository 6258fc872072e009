"""Strategies and coordination: the ``tf.distribute`` constructors tfplace builds, the
collective-key ranges that keep several of them apart in one process (tensorflow#61314), and
the coordination service multi-worker start-up, barriers and callbacks talk through."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tfplace._tf._core import load
from tfplace._tf._devices import connect_tpu
from tfplace._tf._probes import internal_missing

__all__ = [
    "COLLECTIVE_IMPLEMENTATIONS",
    "MIRRORED_REDUCTIONS",
    "collective_mirrored_strategy",
    "communication_options",
    "coordination_context",
    "cross_device_ops",
    "current_strategy",
    "fresh_collective_keys",
    "is_multi_worker",
    "mirrored_strategy",
    "multi_worker_base",
    "nested_collective_keys",
    "one_device_strategy",
    "simple_cluster_resolver",
    "strategy_num_workers",
    "tpu_strategy",
]


#: The one mapping from a plan's reduction name to TensorFlow's object, per strategy family.
#: Its keys are exactly ``tfplace._decide.strategy.REDUCTIONS`` (a test checks); no name falls
#: back to anything else.
MIRRORED_REDUCTIONS: dict[str, str] = {
    "nccl": "NcclAllReduce",
    "hierarchical_copy": "HierarchicalCopyAllReduce",
    "reduce_to_one": "ReductionToOneDevice",
}


COLLECTIVE_IMPLEMENTATIONS: dict[str, str] = {"ring": "RING", "nccl": "NCCL", "auto": "AUTO"}


def cross_device_ops(name: str) -> Any:
    """``tf.distribute.<class>()`` for a mirrored reduction name (KeyError if unknown)."""
    return getattr(load().distribute, MIRRORED_REDUCTIONS[name])()


def communication_options(name: str, timeout_seconds: float | None) -> Any:
    """``CommunicationOptions`` for a collective implementation name (KeyError if unknown)."""
    experimental = load().distribute.experimental
    implementation = getattr(
        experimental.CommunicationImplementation, COLLECTIVE_IMPLEMENTATIONS[name]
    )
    return experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=timeout_seconds
    )


def current_strategy() -> Any:
    """The strategy in force (``tf.distribute.get_strategy()``: the default one outside a scope)."""
    return load().distribute.get_strategy()


def one_device_strategy(device: str) -> Any:
    """``tf.distribute.OneDeviceStrategy(device)``."""
    return load().distribute.OneDeviceStrategy(device)


def mirrored_strategy(devices: list[str], reduction: str) -> Any:
    """``tf.distribute.MirroredStrategy`` over ``devices`` with the named reduction."""
    distribute, ops = load().distribute, cross_device_ops(reduction)
    # in collective keys of its own: XLA on GPUs all-reduces with them (tensorflow#61314)
    return _own_keys(lambda: distribute.MirroredStrategy(devices=devices, cross_device_ops=ops))


def tpu_strategy(address: str) -> Any:  # pragma: no cover - needs a TPU
    """``tf.distribute.TPUStrategy`` on the TPU at ``address`` ("" for the local TPU VM)."""
    return load().distribute.TPUStrategy(connect_tpu(address))


def multi_worker_base() -> type:
    """``tf.distribute.MultiWorkerMirroredStrategy``, the class tfplace's strategy extends."""
    base: type = load().distribute.MultiWorkerMirroredStrategy
    return base


def is_multi_worker(strategy: object) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` (tfplace's subclass included)."""
    return isinstance(strategy, load().distribute.MultiWorkerMirroredStrategy)


def simple_cluster_resolver(
    jobs: dict[str, list[str]], task_type: str | None, task_id: int | None
) -> Any:
    """A ``SimpleClusterResolver`` over ``jobs`` for one task (gRPC)."""
    distribute = load().distribute
    return distribute.cluster_resolver.SimpleClusterResolver(
        load().train.ClusterSpec(jobs), task_type=task_type, task_id=task_id, rpc_layer="grpc"
    )


def coordination_context() -> Any:
    """TensorFlow's eager context, whose coordination-service key-value calls multi-worker
    start-up uses (``set_config_key_value`` / ``get_config_key_value``)."""
    from tensorflow.python.eager import context

    return context.context()


#: Collective group keys each ``MirroredStrategy`` range spans; range 0 is TensorFlow's default.
_COLLECTIVE_KEY_STRIDE = 100_000


_key_lock = threading.Lock()


_key_ranges = iter(range(1, 2**31 // _COLLECTIVE_KEY_STRIDE))


def fresh_collective_keys() -> int:
    """Make the next ``tf.distribute.MirroredStrategy`` use collective keys no other one used.

    Every ``MirroredStrategy`` numbers its collective groups from the class attribute
    ``_collective_key_base`` (0 unless set; TensorFlow's own tests set it). Two strategies of
    different sizes in one process then join the same group, and the process's collectives
    abort for good ("joining a group with size 4, but that group has size 2",
    tensorflow#61314). Moving the base to a new range before each strategy prevents it.

    Returns:
        The new key base.
    """
    cls = load().distribute.MirroredStrategy
    with _key_lock:
        base = next(_key_ranges) * _COLLECTIVE_KEY_STRIDE
        if not isinstance(getattr(cls, "_collective_key_base", None), int):
            internal_missing(
                "collective_key_base",
                f"MirroredStrategy has no integer _collective_key_base "
                f"(found {getattr(cls, '_collective_key_base', None)!r})",
            )
            return base
        cls._collective_key_base = base
    return base


def _own_keys(make: Callable[[], Any]) -> Any:
    """``make()`` a MirroredStrategy in its own key range; the class then points at a fresh
    range, so the next strategy anyone builds does not share this one's keys either."""
    fresh_collective_keys()
    try:
        return make()
    finally:
        fresh_collective_keys()


def collective_mirrored_strategy(devices: list[str]) -> Any:
    """``tf.distribute.MirroredStrategy(devices)`` with TensorFlow's default reduction
    (collective all-reduce), in collective keys of its own (see :func:`fresh_collective_keys`)."""
    distribute = load().distribute
    return _own_keys(lambda: distribute.MirroredStrategy(devices=devices))


def strategy_num_workers(strategy: object) -> int:
    """How many workers train under ``strategy``: 1 unless it is a multi-worker strategy.

    Reads ``strategy.extended._num_workers`` (what Keras and TensorFlow read); where that
    internal is missing or not a count, says so once (a :class:`~tfplace.errors.TfplaceWarning`)
    and counts the chief and worker tasks of the strategy's public ``cluster_resolver``.

    Example:
        >>> strategy_num_workers(None)
        1
    """
    if strategy is None or not is_multi_worker(strategy):
        return 1
    extended = getattr(strategy, "extended", None)
    count = getattr(extended, "_num_workers", None)
    if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
        return count
    internal_missing(
        "num_workers",
        f"{type(extended).__name__} has no worker count _num_workers (found {count!r})",
    )
    try:
        jobs = strategy.cluster_resolver.cluster_spec().as_dict()  # type: ignore[attr-defined]
    except Exception:  # no resolver: a strategy of this process alone
        return 1
    return max(1, sum(len(jobs.get(job, ())) for job in ("chief", "worker")))


_keys_lock = threading.RLock()


def _traced_under_control_flow() -> bool:
    """Whether the graph being built now is a function traced inside a ``tf.cond`` or
    ``tf.while_loop`` branch (Keras 3's loop for ``steps_per_execution > 1``)."""
    from tensorflow.python.framework import ops

    graph: Any = ops.get_default_graph()
    if not getattr(graph, "building_function", False):
        return False
    graph = getattr(graph, "outer_graph", None)
    while graph is not None:
        if getattr(graph, "is_control_flow_graph", False):
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


@contextlib.contextmanager
def nested_collective_keys() -> Iterator[None]:
    """Inside, collectives traced in a function that runs under control flow get their
    instance keys when traced rather than when called (keras#19246).

    Collective ops of a multi-worker strategy take a key per call, fed when the outermost
    function is called (``capture_call_time_value``). A function traced inside a ``tf.cond``
    within a ``tf.while_loop`` (Keras 3's multi-step loop, ``steps_per_execution > 1``) never
    gets that key fed: ``You must feed a value for placeholder tensor
    '.../while/cond/Placeholder'``. There, and only there, this makes TensorFlow number the
    keys at trace time (``CollectiveReplicaLauncher._prefer_unique_instance_key = False``
    for the duration), as its own tests do; every worker traces the same functions in the
    same order, so the keys agree. Elsewhere it changes nothing.

    The setting is the class's, so while one thread traces such a function, a collective that
    another thread traces at that moment gets trace-time keys too (the lock orders only the
    threads that go through here). Keras traces a model's step in the thread that calls
    ``fit``; two threads tracing collectives of one multi-worker strategy at once is not a
    pattern TensorFlow supports either.
    """
    if not _traced_under_control_flow():
        yield
        return
    try:
        from tensorflow.python.distribute import cross_device_utils

        launcher: Any = cross_device_utils.CollectiveReplicaLauncher
        found = getattr(launcher, "_prefer_unique_instance_key", None)
    except (ImportError, AttributeError) as err:
        launcher, found = None, err
    if launcher is None or not isinstance(found, bool):
        internal_missing(
            "collective_instance_keys",
            f"CollectiveReplicaLauncher._prefer_unique_instance_key is {found!r}",
        )
        yield
        return
    with _keys_lock:
        before = launcher._prefer_unique_instance_key
        launcher._prefer_unique_instance_key = False
        try:
            yield
        finally:
            launcher._prefer_unique_instance_key = before
