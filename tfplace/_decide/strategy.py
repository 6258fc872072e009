"""Decisions: which distribution strategy, on which devices, with which reduction.

:func:`decide` is a pure function of an :class:`~tfplace.Inventory` and a request;
it makes no TensorFlow call. :data:`PRIORITY` is the one table that ranks the automatic
choices; ``plan``, ``pick_strategy``, ``doctor`` and the docs all read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from tfplace._facts.cluster.env import from_env
from tfplace._facts.cluster.slurm import slurm_port
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace._facts.inventory import Inventory
from tfplace.errors import ClusterConfigError, DeviceNotFoundError

__all__ = [
    "KINDS",
    "PRIORITY",
    "REDUCTIONS",
    "CrossDeviceOps",
    "Plan",
    "PriorityRule",
    "StrategyKind",
    "cluster_of",
    "decide",
    "plan",
]

StrategyKind = Literal["default", "one_device", "mirrored", "multi_worker", "tpu"]
CrossDeviceOps = Literal["nccl", "hierarchical_copy", "reduce_to_one", "ring", "auto"]

#: Every kind ``plan`` and ``pick_strategy`` accept.
KINDS: tuple[str, ...] = ("auto", *get_args(StrategyKind))
_CROSS_OPS: tuple[str, ...] = get_args(CrossDeviceOps)

#: The reductions each strategy kind can be built with, and nothing else. ``mirrored`` sums
#: gradients with a cross-device-ops object (``NcclAllReduce``, ``HierarchicalCopyAllReduce``,
#: ``ReductionToOneDevice``); ``multi_worker`` with a collective implementation (``RING``,
#: ``NCCL``, or ``AUTO``: TensorFlow chooses at run time). The other kinds run one replica per
#: worker and take none. ``pick_strategy`` maps each name to exactly one TensorFlow object.
REDUCTIONS: dict[StrategyKind, tuple[CrossDeviceOps, ...]] = {
    "default": (),
    "one_device": (),
    "mirrored": ("nccl", "hierarchical_copy", "reduce_to_one"),
    "multi_worker": ("ring", "nccl", "auto"),
    "tpu": (),
}
_DEVICE_RE = re.compile(r"^/?(?:device:)?(CPU|GPU|TPU):(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    """A decision, as data. ``pick_strategy`` builds exactly this.

    Attributes:
        kind: the strategy kind.
        devices: local device names the replicas run on, e.g. ``("/GPU:0", "/GPU:1")``.
        cross_device_ops: how gradients are summed across replicas: one of the kind's
            :data:`REDUCTIONS`, or None for the kinds that take none.
        num_replicas_in_sync: replicas over all workers.
        reasons: why, in plain words, most important first.
        cluster: the validated cluster for ``multi_worker``.
        tpu_address: for ``tpu``: the TPU to connect to (``""``: the local TPU VM).
        needs_fresh_runtime: building this strategy must happen before TensorFlow's runtime
            starts (multi-worker collectives and TPU initialisation are start-up settings).
        fallbacks: where the plan gives less than the request asked for, in plain words
            (``multi_worker`` with no cluster trains as one worker; ``mirrored`` on one device
            runs one replica); empty when it gives what was asked. ``pick_strategy`` logs
            each one at WARNING.

    A TPU plan has no devices and ``num_replicas_in_sync == 0``: both are known only once the
    TPU system is initialised, which ``pick_strategy`` does.
    """

    kind: StrategyKind
    devices: tuple[str, ...]
    cross_device_ops: CrossDeviceOps | None
    num_replicas_in_sync: int
    reasons: tuple[str, ...]
    cluster: ClusterSpec | None = field(default=None)
    tpu_address: str | None = field(default=None)
    needs_fresh_runtime: bool = field(default=False)
    fallbacks: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        """:meth:`summary`, then each further reason and each fallback on its own line.

        Example:
            >>> from tfplace.testing import fake_inventory
            >>> print(plan("mirrored", inventory=fake_inventory()))  # one CPU device
            mirrored on /CPU:0 (1 replica(s), reduce_to_one reduction): kind='mirrored' was requested
              - only one CPU device, so one replica; split it with tfplace.configure_cpus(virtual_devices=N) before TensorFlow starts
              - one device: its values are the result (ReductionToOneDevice)
              fallback: mirrored was asked for, but there is only one device (no GPU, one CPU device): it runs one replica. Split the CPU with tfplace.configure_cpus(virtual_devices=N) before TensorFlow starts, or ask for 'auto'
        """  # noqa: E501
        lines = [self.summary()]
        lines += [f"  - {reason}" for reason in self.reasons[1:]]
        lines += [f"  fallback: {text}" for text in self.fallbacks]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: what was chosen and the first reason.

        Example:
            >>> from tfplace.testing import fake_inventory
            >>> decide(fake_inventory(gpus=2)).summary()
            'mirrored on /GPU:0, /GPU:1 (2 replica(s), nccl reduction): two or more GPUs are visible (automatic choice)'
        """  # noqa: E501
        if self.kind == "tpu":
            where = f"the TPU {self.tpu_address!r}" if self.tpu_address else "the local TPU"
            count = "replicas known once the TPU system is initialised"
        else:
            where = ", ".join(self.devices)
            count = f"{self.num_replicas_in_sync} replica(s)"
        ops = f", {self.cross_device_ops} reduction" if self.cross_device_ops else ""
        return f"{self.kind} on {where} ({count}{ops}): {self.reasons[0] if self.reasons else ''}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "kind": self.kind,
            "devices": list(self.devices),
            "cross_device_ops": self.cross_device_ops,
            "num_replicas_in_sync": self.num_replicas_in_sync,
            "reasons": list(self.reasons),
            "cluster": self.cluster.to_dict() if self.cluster else None,
            "tpu_address": self.tpu_address,
            "needs_fresh_runtime": self.needs_fresh_runtime,
            "fallbacks": list(self.fallbacks),
        }


def cluster_of(inv: Inventory, *, port: int | None = None) -> ClusterSpec | None:
    """The cluster the environment describes (TF_CONFIG first, then SLURM), validated.

    Args:
        inv: the facts.
        port: the first port of a SLURM step's workers (``tfplace._facts.cluster.slurm.slurm_port``;
            by default ``TFPLACE_PORT``, else derived from the job and step ids). TF_CONFIG
            names its own ports, so it does not apply there.

    Raises:
        ClusterConfigError: TF_CONFIG or the SLURM variables are malformed.
    """
    env = {**dict(inv.env), **dict(inv.cluster.slurm), "TF_CONFIG": inv.cluster.tf_config or ""}
    return from_env(env, port=port)


@dataclass(frozen=True)
class PriorityRule:
    """One row of the automatic choice: the first row whose ``applies`` is true wins."""

    kind: StrategyKind
    condition: str
    applies: Callable[[Inventory, ClusterSpec | None], bool]


#: The automatic choice, best first. The last row always applies.
PRIORITY: tuple[PriorityRule, ...] = (
    PriorityRule("tpu", "a TPU is attached", lambda inv, _c: inv.tpu.present),
    PriorityRule(
        "multi_worker",
        "TF_CONFIG or SLURM describes two or more workers",
        lambda _inv, c: c is not None and c.num_workers >= 2,
    ),
    PriorityRule(
        "mirrored", "two or more GPUs are visible", lambda inv, _c: inv.logical_gpu_count >= 2
    ),
    PriorityRule(
        "one_device", "exactly one GPU is visible", lambda inv, _c: inv.logical_gpu_count == 1
    ),
    PriorityRule("default", "no TPU, cluster or GPU: the CPU", lambda _inv, _c: True),
)


def _gpu_hidden_reason(inv: Inventory) -> str | None:
    if inv.gpus_hidden_by_env:
        return f"CUDA_VISIBLE_DEVICES={inv.env_value('CUDA_VISIBLE_DEVICES')!r} hides every GPU"
    if inv.gpus and not inv.visible_gpus:
        return "configure_gpus(visible=...) hid every GPU"
    if inv.tensorflow is not None and not (
        inv.tensorflow.is_cuda_build or inv.tensorflow.is_rocm_build
    ):
        return "this TensorFlow is a CPU-only build"
    return None


def _normalize(name: object) -> tuple[str, int]:
    if not isinstance(name, str):
        raise TypeError(f"device names must be strings like '/GPU:0', found {name!r}")
    m = _DEVICE_RE.match(name.strip())
    if not m:
        raise ValueError(f"cannot read the device name {name!r}; expected '/CPU:0' or '/GPU:1'")
    return m.group(1).upper(), int(m.group(2))


def _check_devices(inv: Inventory, devices: Sequence[str]) -> tuple[str, ...]:
    available = {
        "GPU": inv.logical_gpu_count,
        "CPU": inv.cpu.logical_devices,
        "TPU": 0,
    }
    out = []
    for name in devices:
        kind, index = _normalize(name)
        if index >= available[kind]:
            have = ", ".join(inv.local_device_names) or "none"
            raise DeviceNotFoundError(
                f"device {name!r} is not visible; visible devices: {have}. "
                + (
                    "Split the CPU first with tfplace.configure_cpus(virtual_devices=N)."
                    if kind == "CPU"
                    else "Check CUDA_VISIBLE_DEVICES and `tfplace doctor`."
                )
            )
        out.append(f"/{kind}:{index}")
    if len(set(out)) != len(out):
        raise ValueError(f"devices lists a device twice: {list(devices)}")
    return tuple(out)


def _mirror_ops(inv: Inventory, devices: Sequence[str]) -> tuple[CrossDeviceOps, str]:
    if len(devices) < 2:
        return "reduce_to_one", "one device: its values are the result (ReductionToOneDevice)"
    if all(d.startswith("/GPU") for d in devices):
        if inv.gpus_shared:
            return "hierarchical_copy", (
                "logical GPUs share a physical GPU and NCCL cannot run two ranks on one "
                "device, so HierarchicalCopyAllReduce is used"
            )
        if inv.has_nccl:
            return "nccl", "NCCL all-reduce between GPUs"
        return "hierarchical_copy", (
            f"NCCL is not available on {inv.platform}, so HierarchicalCopyAllReduce is used"
        )
    return "reduce_to_one", "CPU replicas reduce through one device (NCCL needs GPUs)"


def decide(
    inv: Inventory,
    kind: str | None = "auto",
    *,
    devices: Sequence[str] | None = None,
    cross_device_ops: str | None = None,
    cluster: ClusterSpec | None = None,
    port: int | None = None,
) -> Plan:
    """Decide the strategy for ``inv``. Pure: no TensorFlow call, no environment read.

    Args:
        inv: the facts (real from :func:`~tfplace.inventory`, or synthetic).
        kind: one of :data:`KINDS`; None means ``"auto"``.
        devices: explicit local devices for ``one_device`` / ``mirrored``.
        cross_device_ops: override the reduction (one of ``CrossDeviceOps``).
        cluster: an explicit cluster, used instead of TF_CONFIG / SLURM.
        port: the first port of a SLURM step's workers (see :func:`cluster_of`).

    Returns:
        The :class:`Plan`.

    Raises:
        ValueError / TypeError: bad arguments, or a ``cross_device_ops`` the chosen kind
            cannot be built with (see :data:`REDUCTIONS`).
        DeviceNotFoundError: a requested device or TPU is not there.
        ClusterConfigError: the cluster description is malformed or unsupported.
    """
    if kind is None:  # e.g. pick_strategy(os.environ.get("STRATEGY")) with the variable unset
        kind = "auto"
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown strategy kind {kind!r}; expected one of {', '.join(KINDS)}")
    if cross_device_ops is not None and (
        not isinstance(cross_device_ops, str) or cross_device_ops not in _CROSS_OPS
    ):
        raise ValueError(
            f"unknown cross_device_ops {cross_device_ops!r}; "
            f"expected one of {', '.join(_CROSS_OPS)}"
        )
    if devices is not None:
        if isinstance(devices, str) or not isinstance(devices, Sequence):
            raise TypeError(f"devices must be a list of device names, found {devices!r}")
        if kind not in ("one_device", "mirrored", "auto"):
            raise ValueError(f"devices only apply to 'one_device' and 'mirrored', not {kind!r}")
        if not devices:
            raise ValueError("devices is empty; pass None to let tfplace choose")
    if cluster is not None and not isinstance(cluster, ClusterSpec):
        raise TypeError(f"cluster must be a ClusterSpec, found {type(cluster).__name__}")
    if port is not None:
        slurm_port({}, port)  # a bad port is a ValueError, whatever the cluster
    spec = cluster if cluster is not None else cluster_of(inv, port=port)
    reasons: list[str] = []
    chosen: StrategyKind
    if kind == "auto":
        if devices is not None:
            checked = _check_devices(inv, devices)
            chosen = "mirrored" if len(checked) > 1 else "one_device"
            reasons.append(f"devices were given explicitly: {', '.join(checked)}")
        else:
            rule = next(r for r in PRIORITY if r.applies(inv, spec))
            chosen = rule.kind
            reasons.append(f"{rule.condition} (automatic choice)")
    else:
        chosen = kind  # type: ignore[assignment]
        reasons.append(f"kind={kind!r} was requested")
    result = _BUILDERS[chosen](inv, devices, spec, reasons)
    if cross_device_ops is not None:
        result = _with_reduction(inv, result, cross_device_ops)  # type: ignore[arg-type]
    return result


def _with_reduction(inv: Inventory, result: Plan, name: CrossDeviceOps) -> Plan:
    """``result`` with the requested reduction, or ValueError when it cannot be built."""
    allowed = REDUCTIONS[result.kind]
    if name not in allowed:
        takes = (
            f"takes one of {', '.join(allowed)}"
            if allowed
            else "runs one replica per worker and takes no cross_device_ops (pass None)"
        )
        other = [k for k, names in REDUCTIONS.items() if name in names]
        raise ValueError(
            f"cross_device_ops={name!r} does not apply to a {result.kind!r} strategy, which "
            f"{takes}; {name!r} is for {' and '.join(repr(k) for k in other)}."
        )
    on_gpus = bool(result.devices) and all(d.startswith("/GPU") for d in result.devices)
    if name == "nccl" and inv.gpus_shared and on_gpus:
        raise ValueError(
            "cross_device_ops='nccl' cannot run on logical GPUs that share a physical GPU "
            "(NCCL puts one rank on each device). Use 'hierarchical_copy', or None."
        )
    if name == "nccl" and not (on_gpus and inv.has_nccl):
        where = ", ".join(result.devices)
        raise ValueError(
            f"cross_device_ops='nccl' needs GPU replicas and NCCL, but this plan runs on "
            f"{where} on {inv.platform}"
            + ("" if inv.has_nccl else " (no NCCL on this platform)")
            + f". Use one of {', '.join(n for n in allowed if n != 'nccl')}, or None."
        )
    return replace(
        result,
        cross_device_ops=name,
        reasons=(*result.reasons, f"cross_device_ops={name!r} was requested"),
    )


def _gpu_names(inv: Inventory) -> tuple[str, ...]:
    return tuple(f"/GPU:{i}" for i in range(inv.logical_gpu_count))


def _build_default(
    inv: Inventory, devices: Sequence[str] | None, spec: ClusterSpec | None, reasons: list[str]
) -> Plan:
    gpus = _gpu_names(inv)
    if not gpus:
        hidden = _gpu_hidden_reason(inv)
        reasons.append(f"no GPU is used: {hidden}" if hidden else "no GPU is visible")
        if inv.cpu.logical_devices > 1:
            reasons.append(
                f"{inv.cpu.logical_devices} virtual CPU devices exist; "
                "pick_strategy('mirrored') runs one replica on each"
            )
    return Plan("default", (gpus[0] if gpus else "/CPU:0",), None, 1, tuple(reasons))


def _build_one_device(
    inv: Inventory, devices: Sequence[str] | None, spec: ClusterSpec | None, reasons: list[str]
) -> Plan:
    if devices is not None:
        checked = _check_devices(inv, devices)
        if len(checked) != 1:
            raise ValueError(f"one_device takes exactly one device, found {list(devices)}")
        device = checked[0]
    else:
        gpus = _gpu_names(inv)
        device = gpus[0] if gpus else "/CPU:0"
        if gpus:
            gpu = inv.visible_gpus[0]
            reasons.append(f"on the first visible GPU ({gpu.name or 'GPU'} {gpu.index})")
        else:
            hidden = _gpu_hidden_reason(inv)
            reasons.append(f"on the CPU: {hidden}" if hidden else "on the CPU: no GPU is visible")
    return Plan("one_device", (device,), None, 1, tuple(reasons))


def _build_mirrored(
    inv: Inventory, devices: Sequence[str] | None, spec: ClusterSpec | None, reasons: list[str]
) -> Plan:
    if devices is not None:
        chosen = _check_devices(inv, devices)
    elif inv.visible_gpus:
        chosen = _gpu_names(inv)
        reasons.append(f"one replica on each of the {len(chosen)} visible GPU(s)")
    else:
        chosen = tuple(f"/CPU:{i}" for i in range(inv.cpu.logical_devices))
        if len(chosen) > 1:
            reasons.append(f"one replica on each of the {len(chosen)} virtual CPU devices")
        else:
            reasons.append(
                "only one CPU device, so one replica; split it with "
                "tfplace.configure_cpus(virtual_devices=N) before TensorFlow starts"
            )
    fallbacks: tuple[str, ...] = ()
    if devices is None and len(chosen) < 2:
        fallbacks = (
            "mirrored was asked for, but there is only one device (no GPU, one CPU device): "
            "it runs one replica. Split the CPU with tfplace.configure_cpus(virtual_devices=N) "
            "before TensorFlow starts, or ask for 'auto'",
        )
    ops, why = _mirror_ops(inv, chosen)
    reasons.append(why)
    return Plan("mirrored", chosen, ops, len(chosen), tuple(reasons), fallbacks=fallbacks)


def _build_multi_worker(
    inv: Inventory, devices: Sequence[str] | None, spec: ClusterSpec | None, reasons: list[str]
) -> Plan:
    gpus = _gpu_names(inv)
    local = gpus or ("/CPU:0",)
    fallbacks: tuple[str, ...] = ()
    if spec is None:
        fallbacks = (
            "multi_worker was asked for, but no cluster is configured: this process trains "
            "alone, as a one-worker cluster",
        )
        reasons.append(
            "no cluster is configured (no TF_CONFIG or SLURM step), so this process trains "
            "alone as a one-worker cluster"
        )
        workers = 1
    else:
        if spec.has_ps and inv.keras.flavour != "tf_keras":
            raise ClusterConfigError(
                f"{spec.source}: cluster.ps: parameter-server clusters do not work with Keras 3 "
                "model.fit (it asks for ClusterCoordinator.create_per_worker_dataset). Use a "
                "cluster of 'chief'/'worker' tasks only (multi-worker mirrored training), or "
                "tf_keras with TF_USE_LEGACY_KERAS=1."
            )
        physical = len(inv.visible_gpus)
        if spec.gpus_per_worker is not None and spec.gpus_per_worker != physical:
            raise ClusterConfigError(
                f"{spec.source}: GPUs per task: the allocation gives each task "
                f"{spec.gpus_per_worker} GPU(s) but this worker sees {physical}. Every worker "
                "must run the same number of replicas, or collectives fail with 'Collective "
                "Op has group_size ... but that group has size ...' (TF#47203). Bind GPUs to "
                "tasks (srun --gpus-per-task, or CUDA_VISIBLE_DEVICES per task)."
            )
        workers = spec.num_workers
        reasons.append(
            f"{workers} workers from {spec.source}; this is {spec.task_type} {spec.task_index}"
            + (" (chief)" if spec.is_chief else "")
        )
    ops: CrossDeviceOps = "nccl" if gpus and inv.has_nccl and not inv.gpus_shared else "ring"
    reasons.append("NCCL collectives between GPUs" if ops == "nccl" else "gRPC ring collectives")
    return Plan(
        "multi_worker",
        local,
        ops,
        workers * len(local),
        tuple(reasons),
        spec,
        needs_fresh_runtime=True,
        fallbacks=fallbacks,
    )


def _build_tpu(
    inv: Inventory, devices: Sequence[str] | None, spec: ClusterSpec | None, reasons: list[str]
) -> Plan:
    if not inv.tpu.present:
        raise DeviceNotFoundError(
            "kind='tpu' was requested but no TPU is attached (no TPU_NAME, COLAB_TPU_ADDR or "
            "/dev/accel*). Run on a TPU VM, set TPU_NAME, or use kind='auto'."
        )
    reasons.append("TPU hints: " + ", ".join(inv.tpu.hints))
    return Plan(
        "tpu", (), None, 0, tuple(reasons), tpu_address=inv.tpu.name or "", needs_fresh_runtime=True
    )


_BUILDERS: dict[
    str, Callable[[Inventory, Sequence[str] | None, ClusterSpec | None, list[str]], Plan]
] = {
    "default": _build_default,
    "one_device": _build_one_device,
    "mirrored": _build_mirrored,
    "multi_worker": _build_multi_worker,
    "tpu": _build_tpu,
}


def plan(
    kind: str | None = "auto",
    *,
    devices: Sequence[str] | None = None,
    cross_device_ops: str | None = None,
    cluster: ClusterSpec | None = None,
    inventory: Inventory | None = None,
    port: int | None = None,
) -> Plan:
    """Return what :func:`~tfplace.pick_strategy` would build, without creating anything.

    Args:
        kind: ``"auto"`` (or None, the same) or one of ``default``, ``one_device``,
            ``mirrored``, ``multi_worker``, ``tpu``.
        devices: explicit local devices, e.g. ``["/GPU:0", "/GPU:1"]``.
        cross_device_ops: override the reduction: ``nccl``, ``hierarchical_copy``,
            ``reduce_to_one`` (mirrored) or ``ring``, ``nccl``, ``auto`` (multi-worker); see
            :data:`REDUCTIONS`. Any other pair is refused, never silently replaced.
        cluster: an explicit cluster instead of TF_CONFIG / SLURM.
        inventory: the facts to decide on; by default :func:`tfplace.inventory()`.
        port: the first port of a SLURM step's workers (see :func:`cluster_of`).

    Returns:
        The :class:`Plan`, with its reasons.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> p = plan("mirrored", inventory=fake_inventory(virtual_cpus=2))
        >>> p.devices, p.cross_device_ops
        (('/CPU:0', '/CPU:1'), 'reduce_to_one')
    """
    if inventory is None:
        from tfplace._facts.inventory import inventory as gather

        inventory = gather()
    elif not isinstance(inventory, Inventory):
        raise TypeError(f"inventory must be an Inventory, found {type(inventory).__name__}")
    return decide(
        inventory,
        kind,
        devices=devices,
        cross_device_ops=cross_device_ops,
        cluster=cluster,
        port=port,
    )
