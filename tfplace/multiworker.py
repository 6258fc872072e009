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

import threading
from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace.errors import AlreadyInitializedError
from tfplace.plan import Plan

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["MULTI_WORKER_FIX", "make_multi_worker", "multi_worker_class"]

MULTI_WORKER_FIX = (
    "Create the multi-worker strategy first: call tfplace.configure_*() (optional), then "
    "tfplace.pick_strategy(), then build models and data, in a fresh process (TF#47861)."
)

_class_lock = threading.Lock()
_class: type | None = None


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
        tf = _tf.load()
        base = tf.distribute.MultiWorkerMirroredStrategy
        nest = tf.nest

        class KerasMultiWorkerMirroredStrategy(base):  # type: ignore[misc, valid-type]
            """``MultiWorkerMirroredStrategy`` whose ``reduce`` handles what Keras 3 passes."""

            def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:
                if not nest.is_nested(value):
                    if axis is not None and _rank(value) == 0:
                        axis = None  # a scalar has no axis: reduce across replicas only
                    return super().reduce(reduce_op, value, axis=axis)
                return nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)

        KerasMultiWorkerMirroredStrategy.__module__ = __name__
        _class = KerasMultiWorkerMirroredStrategy
        return _class


def make_multi_worker(decision: Plan, timeout: float | None) -> tf.distribute.Strategy:
    """Build the multi-worker strategy for ``decision`` (collectives with a timeout)."""
    tf = _tf.load()
    if _tf.runtime_started():
        raise AlreadyInitializedError(
            "pick_strategy('multi_worker'): TensorFlow's runtime has already started, and "
            f"collective ops must be configured at program start-up. {MULTI_WORKER_FIX}"
        )
    impls = tf.distribute.experimental.CommunicationImplementation
    impl = {"nccl": impls.NCCL, "ring": impls.RING}.get(decision.cross_device_ops or "", impls.AUTO)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=impl, timeout_seconds=timeout
    )
    resolver: Any = None
    if decision.cluster is not None:
        spec = decision.cluster
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({name: list(addrs) for name, addrs in spec.jobs}),
            task_type=spec.task_type,
            task_id=spec.task_index,
            rpc_layer="grpc",
        )
    strategy: Any = multi_worker_class()(
        cluster_resolver=resolver, communication_options=options
    )
    return strategy
