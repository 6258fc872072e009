"""``pick_strategy``: build the ``tf.distribute.Strategy`` that :func:`~tfplace.plan` decides."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfplace import _tf
from tfplace._decide.strategy import REDUCTIONS, Plan, plan
from tfplace._facts.inventory import Inventory
from tfplace.cluster._multiworker import MULTI_WORKER_FIX
from tfplace.cluster._spec import ClusterSpec

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "DEFAULT_COMMUNICATION_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "build_strategy",
    "pick_strategy",
]

log = logging.getLogger("tfplace")

#: Seconds a collective may wait for its peers before failing (multi-worker), so a dead
#: worker makes the others fail instead of hanging forever.
DEFAULT_COMMUNICATION_TIMEOUT = 300.0
#: Seconds every worker of a cluster has to start and join, so a worker that never starts
#: (wrong address, crashed at start-up, pod not scheduled) is an error, not an endless wait.
DEFAULT_STARTUP_TIMEOUT = 900.0


def pick_strategy(
    kind: str = "auto",
    *,
    devices: Sequence[str] | None = None,
    cross_device_ops: str | None = None,
    cluster: ClusterSpec | None = None,
    communication_timeout: float | None = DEFAULT_COMMUNICATION_TIMEOUT,
    startup_timeout: float | None = DEFAULT_STARTUP_TIMEOUT,
    inventory: Inventory | None = None,
    port: int | None = None,
) -> tf.distribute.Strategy:
    """Return the best ``tf.distribute.Strategy`` for this machine (or the one asked for).

    Automatic choice, best first (:data:`tfplace.PRIORITY`): a TPU -> ``TPUStrategy``;
    a TF_CONFIG/SLURM cluster -> ``MultiWorkerMirroredStrategy``; two or more GPUs ->
    ``MirroredStrategy`` (NCCL where it exists, HierarchicalCopyAllReduce elsewhere); one
    GPU -> ``OneDeviceStrategy`` on it; otherwise TensorFlow's default strategy on the CPU.
    Logs one line saying what it chose and why.

    Args:
        kind: ``"auto"``, ``"default"``, ``"one_device"``, ``"mirrored"``,
            ``"multi_worker"`` or ``"tpu"``.
        devices: explicit local devices for ``one_device`` / ``mirrored``.
        cross_device_ops: override the reduction (see :func:`tfplace.plan`).
        cluster: an explicit cluster instead of TF_CONFIG / SLURM.
        communication_timeout: seconds a multi-worker collective waits for its peers
            (None: forever).
        startup_timeout: seconds every worker of a cluster has to start and join. TensorFlow
            waits for them in C++, where Python cannot interrupt it, so after this long a
            small watchdog process says which peers are unreachable and kills this worker
            (SIGKILL) instead of letting it wait forever (None: wait forever, TensorFlow's
            behaviour).
        inventory: decide on these facts instead of the real ones (tests).
        port: the first port of a SLURM step's workers; a node's k-th task listens on
            ``port + k``. By default the ``TFPLACE_PORT`` environment variable, else a port
            derived from ``SLURM_JOB_ID`` and ``SLURM_STEP_ID``, so that two jobs sharing a
            node do not collide (see ``tfplace.cluster._slurm.slurm_port``). TF_CONFIG names its
            own ports, so it does not apply there.

    Returns:
        A ``tf.distribute.Strategy``; use ``with strategy.scope():`` to build models.

    Raises:
        ValueError / TypeError: bad arguments, e.g. an unknown kind.
        DeviceNotFoundError: a requested device or TPU is not there.
        ClusterConfigError: the cluster description is malformed.
        AlreadyInitializedError: a multi-worker strategy after the runtime started.

    Example:
        >>> s = tfplace.pick_strategy("one_device", devices=["/CPU:0"])
        >>> type(s).__name__, s.num_replicas_in_sync
        ('OneDeviceStrategy', 1)

        The automatic choice depends on the machine's GPUs (skipped under doctest):

        >>> strategy = tfplace.pick_strategy()  # doctest: +SKIP
        >>> with strategy.scope():  # doctest: +SKIP
        ...     model = build_model()
    """
    for name, value in (
        ("communication_timeout", communication_timeout),
        ("startup_timeout", startup_timeout),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ValueError(
                f"{name} must be a positive number of seconds or None, found {value!r}"
            )
    decision = plan(
        kind,
        devices=devices,
        cross_device_ops=cross_device_ops,
        cluster=cluster,
        inventory=inventory,
        port=port,
    )
    strategy = build_strategy(
        decision, communication_timeout=communication_timeout, startup_timeout=startup_timeout
    )
    log.info("tfplace: %s", decision.summary())
    return strategy


def build_strategy(
    decision: Plan,
    *,
    communication_timeout: float | None = DEFAULT_COMMUNICATION_TIMEOUT,
    startup_timeout: float | None = DEFAULT_STARTUP_TIMEOUT,
) -> tf.distribute.Strategy:
    """Build exactly the strategy a :class:`~tfplace.Plan` describes (the thin TensorFlow part).

    Every field is used as it is: the devices, and the reduction through the one mapping
    :data:`tfplace._tf.MIRRORED_REDUCTIONS` / :data:`~tfplace._tf.COLLECTIVE_IMPLEMENTATIONS`.
    A plan that does not come from :func:`tfplace.plan` is checked the same way.

    Raises:
        ValueError: the plan's reduction does not belong to its kind (see ``REDUCTIONS``).
    """
    if not isinstance(decision, Plan):
        raise TypeError(f"build_strategy takes a Plan, found {type(decision).__name__}")
    kind = decision.kind
    allowed = REDUCTIONS.get(kind, ())
    fits = decision.cross_device_ops in allowed if allowed else decision.cross_device_ops is None
    if not fits:
        raise ValueError(
            f"this plan cannot be built: {kind!r} takes cross_device_ops "
            + (f"in {allowed}" if allowed else "None")
            + f", found {decision.cross_device_ops!r}. Make plans with tfplace.plan()."
        )
    if kind == "default":
        return _tf.current_strategy()
    if kind == "one_device":
        return _tf.one_device_strategy(decision.devices[0])
    if kind == "mirrored":
        assert decision.cross_device_ops is not None  # checked above
        return _tf.mirrored_strategy(list(decision.devices), decision.cross_device_ops)
    if kind == "multi_worker":
        from tfplace.cluster._multiworker import make_multi_worker

        try:
            return make_multi_worker(decision, communication_timeout, startup_timeout)
        except (RuntimeError, ValueError) as err:
            _tf.reraise_if_initialized(err, "pick_strategy('multi_worker')", MULTI_WORKER_FIX)
            raise
    if kind == "tpu":  # pragma: no cover - needs a TPU
        return _tf.tpu_strategy(decision.tpu_address or "")
    raise AssertionError(f"unhandled kind {kind!r}")  # pragma: no cover
