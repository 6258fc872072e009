"""``pick_strategy``: build the ``tf.distribute.Strategy`` that :func:`~tfplace.plan` decides."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace._decide.strategy import REDUCTIONS, Plan, plan
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace._facts.inventory import Inventory
from tfplace.cluster._multiworker import MULTI_WORKER_FIX
from tfplace.errors import AlreadyInitializedError, ClusterConfigError

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


@dataclass(frozen=True)
class _Request:
    """What decides whether two ``pick_strategy`` calls ask for the same strategy: the plan
    (its reasons aside: ``"auto"`` and ``"multi_worker"`` may plan the same thing) and the
    timeouts the strategy is built with."""

    plan: Plan
    communication_timeout: float | None
    startup_timeout: float | None

    @classmethod
    def of(
        cls, decision: Plan, communication_timeout: float | None, startup_timeout: float | None
    ) -> _Request:
        return cls(
            replace(decision, reasons=(), fallbacks=()), communication_timeout, startup_timeout
        )

    def describe(self) -> str:
        timeouts = (
            f"communication_timeout={self.communication_timeout!r}"
            if self.plan.kind != "multi_worker"
            else f"communication_timeout={self.communication_timeout!r}, "
            f"startup_timeout={self.startup_timeout!r}"
        )
        return f"{self.plan.summary().rstrip(': ')} with {timeouts}"


#: The strategies this process built, by request (the ``default`` kind is not kept: it is
#: TensorFlow's own, always at hand).
_built: list[tuple[_Request, Any]] = []
_built_lock = threading.Lock()


def _another_strategy_message(existing: _Request, wanted: _Request) -> str:
    return (
        f"pick_strategy(): this process already built a strategy that TensorFlow can set up "
        f"only once per process: {existing.describe()}. This call asks for a different one: "
        f"{wanted.describe()}. Fix: reuse the strategy built first: keep the object "
        "pick_strategy() returned, or call pick_strategy() again with the same arguments "
        "(it returns that same strategy); a different strategy needs a new process."
    )


def pick_strategy(
    kind: str | None = "auto",
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
    Logs what it chose and every reason (logger ``"tfplace"``, INFO), and at WARNING each
    fallback from what was asked (``"multi_worker"`` with no cluster trains as one worker;
    ``"mirrored"`` on one device runs one replica).

    Idempotent, like ``configure_*``: the same request again in this process returns the
    strategy built the first time (the same object). A multi-worker or TPU strategy can be
    set up only once per process, so asking for a different one after it raises
    :class:`~tfplace.errors.AlreadyInitializedError` naming both.

    Args:
        kind: ``"auto"``, ``"default"``, ``"one_device"``, ``"mirrored"``,
            ``"multi_worker"`` or ``"tpu"``; None means ``"auto"`` (so
            ``pick_strategy(os.environ.get("STRATEGY"))`` works with the variable unset).
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
            node do not collide (see ``tfplace._facts.cluster.slurm.slurm_port``). TF_CONFIG
            names its own ports, so it does not apply there.

    Returns:
        A ``tf.distribute.Strategy``; use ``with strategy.scope():`` to build models.

    Raises:
        ValueError / TypeError: bad arguments, e.g. an unknown kind.
        DeviceNotFoundError: a requested device or TPU is not there.
        ClusterConfigError: the cluster description is malformed.
        AlreadyInitializedError: a multi-worker strategy after the runtime started, or a
            different multi-worker / TPU strategy after one was built in this process.

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
    wanted = _Request.of(decision, communication_timeout, startup_timeout)
    with _built_lock:  # one build at a time: a second thread gets the first one's strategy
        for request, built in _built:
            if request == wanted:
                log.info("tfplace: the same strategy as before: %s", decision.summary())
                return built
        if decision.needs_fresh_runtime:
            for request, _ in _built:
                if request.plan.needs_fresh_runtime:
                    raise AlreadyInitializedError(_another_strategy_message(request, wanted))
        strategy = build_strategy(
            decision, communication_timeout=communication_timeout, startup_timeout=startup_timeout
        )
        if decision.kind != "default":
            _built.append((wanted, strategy))
    _log_plan(decision, kind)
    return strategy


def _log_plan(decision: Plan, kind: str | None) -> None:
    """The choice and every reason at INFO, each fallback from the request at WARNING."""
    log.info("tfplace: %s", decision.summary())
    for reason in decision.reasons[1:]:
        log.info("tfplace:   - %s", reason)
    for text in decision.fallbacks:
        log.warning("tfplace: pick_strategy(%r): %s", kind, text)


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

        if decision.cluster is not None and decision.cluster.source == "SLURM":
            _check_slurm_port(decision.cluster)

        try:
            return make_multi_worker(decision, communication_timeout, startup_timeout)
        except (RuntimeError, ValueError) as err:
            _tf.reraise_if_initialized(err, "pick_strategy('multi_worker')", MULTI_WORKER_FIX)
            raise
    if kind == "tpu":  # pragma: no cover - needs a TPU
        return _tf.tpu_strategy(decision.tpu_address or "")
    raise AssertionError(f"unhandled kind {kind!r}")  # pragma: no cover


def _check_slurm_port(cluster: ClusterSpec) -> None:
    """Refuse a SLURM task's port that something on this node already listens on.

    Two jobs (or two steps of one job running at once) that share a node can derive the
    same ports (see ``tfplace._facts.cluster.slurm.slurm_port``); TensorFlow would then fail with
    ``Could not start gRPC server``, or a worker of the other job answer our peers. The check
    binds the port as TensorFlow's server will (every interface, ``SO_REUSEADDR``) and lets
    it go at once.

    Raises:
        ClusterConfigError: the port is in use, with what it means and the fixes.
    """
    port = int(cluster.address.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                return  # not ours to judge (no IPv4 here, ...): TensorFlow says what it finds
            raise ClusterConfigError(
                f"SLURM: port: this task ({cluster.task_type} {cluster.task_index}, "
                f"{cluster.address}) must listen on port {port}, but something on this node "
                "listens there already: another job or step sharing the node got the same "
                "ports (tfplace derives them from SLURM_JOB_ID and SLURM_STEP_ID, and "
                "different steps can coincide), or another program holds it. Fix: let SLURM "
                "reserve the ports (srun --resv-ports, with MpiParams=ports=12000-12999 in "
                "slurm.conf), or choose free ones with TFPLACE_PORT / pick_strategy(port=...)"
            ) from err
