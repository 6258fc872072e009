"""MultiWorkerMirroredStrategy construction (and, later, Keras 3 compatibility)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace.errors import AlreadyInitializedError
from tfplace.plan import Plan

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["MULTI_WORKER_FIX", "make_multi_worker"]

MULTI_WORKER_FIX = (
    "Create the multi-worker strategy first: call tfplace.configure_*() (optional), then "
    "tfplace.pick_strategy(), then build models and data, in a fresh process (TF#47861)."
)


def make_multi_worker(decision: Plan, timeout: float | None) -> tf.distribute.Strategy:
    """Build a MultiWorkerMirroredStrategy for ``decision`` (collectives with a timeout)."""
    tf = _tf.load()
    if _tf.runtime_started():
        raise AlreadyInitializedError(
            "pick_strategy('multi_worker'): TensorFlow's runtime has already started, and "
            f"collective ops must be configured at program start-up. {MULTI_WORKER_FIX}"
        )
    impl = {
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    }.get(
        decision.cross_device_ops or "", tf.distribute.experimental.CommunicationImplementation.AUTO
    )
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
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )
