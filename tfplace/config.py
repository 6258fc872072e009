"""Device configuration: ``configure_gpus`` and ``configure_cpus``.

Each function validates its arguments first (plain ValueError/TypeError, before touching
TensorFlow), works out the desired state, compares it with what is in force, and only then
calls ``tf.config``. The same settings twice is a no-op, also after TensorFlow's runtime
has started; different settings after the start raise
:class:`~tfplace.errors.AlreadyInitializedError` saying what to do.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tfplace import _tf
from tfplace.errors import AlreadyInitializedError, DeviceNotFoundError

if TYPE_CHECKING:
    from tfplace._inventory import GPUInfo, Inventory

__all__ = [
    "CPUChangeSet",
    "CPUConfig",
    "CPUFacts",
    "ConfigBackend",
    "ConfigChange",
    "GPUChangeSet",
    "GPUConfig",
    "GPUFacts",
    "auto_request",
    "auto_threads",
    "choose_gpus",
    "configure_cpus",
    "configure_gpus",
    "plan_auto_cpus",
    "plan_cpus",
    "plan_gpus",
    "read_cpu_facts",
    "read_gpu_facts",
]

log = logging.getLogger("tfplace")
_lock = threading.RLock()

_GPU_FIX = (
    "Call tfplace.configure_gpus() first, before creating tensors, models or strategies "
    "(or set TF_FORCE_GPU_ALLOW_GROWTH=true / CUDA_VISIBLE_DEVICES before importing "
    "TensorFlow), or restart the process (in a notebook: restart the kernel)."
)
_CPU_FIX = (
    "Call tfplace.configure_cpus() first, before creating tensors, models or strategies "
    "(or set TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS before importing TensorFlow), "
    "or restart the process (in a notebook: restart the kernel)."
)


@dataclass(frozen=True)
class ConfigChange:
    """One setting a configuration call changes: from what, to what, and why.

    Example:
        >>> str(ConfigChange("virtual CPU devices", 1, 2, "virtual_devices=2 was requested"))
        'virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)'
    """

    setting: str
    before: Any
    after: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.setting} {self.before} -> {self.after} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class GPUFacts:
    """The GPU settings in force, as read through the seam (physical indices)."""

    physical: tuple[int, ...]
    visible: tuple[int, ...]
    growth: tuple[bool, ...]  # per physical GPU
    split: tuple[tuple[int | None, ...] | None, ...]  # per physical GPU
    runtime_started: bool


@dataclass(frozen=True)
class GPUChangeSet:
    """The pure decision of :func:`plan_gpus`: the target state and the changes to get there."""

    visible: tuple[int, ...]
    memory_growth: bool | None
    memory_limit_mb: tuple[int, ...] | None
    changes: tuple[ConfigChange, ...]
    logical_gpus: int = 1


@dataclass(frozen=True)
class CPUFacts:
    """The CPU settings in force, as read through the seam."""

    intra_op_threads: int
    inter_op_threads: int
    virtual_devices: int
    runtime_started: bool


@dataclass(frozen=True)
class CPUChangeSet:
    """The pure decision of :func:`plan_cpus`: target values (None: leave) and the changes."""

    intra_op_threads: int | None
    inter_op_threads: int | None
    virtual_devices: int | None
    changes: tuple[ConfigChange, ...]


@dataclass(frozen=True)
class GPUConfig:
    """What :func:`configure_gpus` left in force.

    Attributes:
        visible: physical indices of the GPUs TensorFlow uses (in logical order).
        memory_growth: growth on every visible GPU (None when not set by anyone).
        memory_limit_mb: per visible GPU (per logical GPU when split), or None.
        changed: whether this call changed anything.
        changes: what this call changed (with ``dry_run=True``: what it would change).
        logical_gpus: logical GPUs TensorFlow makes of each visible GPU (1: not split).
    """

    visible: tuple[int, ...]
    memory_growth: bool | None
    memory_limit_mb: tuple[int, ...] | None
    changed: bool
    changes: tuple[ConfigChange, ...] = field(default=(), compare=False)
    logical_gpus: int = 1


@dataclass(frozen=True)
class CPUConfig:
    """What :func:`configure_cpus` left in force (0 threads = TensorFlow's default).

    ``changes`` lists what the call changed (with ``dry_run=True``: what it would change).
    """

    intra_op_threads: int
    inter_op_threads: int
    virtual_devices: int
    changed: bool
    changes: tuple[ConfigChange, ...] = field(default=(), compare=False)


class ConfigBackend(Protocol):
    """The few ``tf.config`` calls configuration needs.

    The real one is :class:`tfplace._tf.TFConfig` (the one TensorFlow seam, which
    :func:`tfplace.inventory` reads devices through as well); tests substitute a fake GPU
    machine.
    """

    def runtime_started(self) -> bool: ...
    def gpus(self) -> list[Any]: ...
    def cpus(self) -> list[Any]: ...
    def get_visible(self, kind: str) -> list[Any]: ...
    def set_visible(self, devices: list[Any], kind: str) -> None: ...
    def get_growth(self, device: Any) -> bool: ...
    def set_growth(self, device: Any, enabled: bool) -> None: ...
    def get_split(self, device: Any) -> list[int | None] | None: ...
    def set_split(self, device: Any, limits: list[int | None]) -> None: ...
    def logical_count(self, kind: str) -> int: ...
    def get_threads(self) -> tuple[int, int]: ...
    def set_threads(self, intra: int | None, inter: int | None) -> None: ...


def _index(device: Any, position: int) -> int:
    tail = str(getattr(device, "name", "")).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else position


def _check_bool(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, found {value!r}")


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, found {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return value


def _check_gpu_request(
    memory_growth: object,
    memory_limit_mb: object,
    visible: object,
    logical_gpus: object = None,
) -> tuple[int | tuple[int, ...] | None, tuple[int, ...] | None]:
    """Validate ``configure_gpus``'s arguments; return (limits, visible) normalised."""
    _check_bool("memory_growth", memory_growth)
    if logical_gpus is not None:
        _check_count("logical_gpus", logical_gpus)
    limits: tuple[int, ...] | int | None = None
    if memory_limit_mb is not None:
        if isinstance(memory_limit_mb, int) and not isinstance(memory_limit_mb, bool):
            limits = _check_count("memory_limit_mb", memory_limit_mb)
        elif isinstance(memory_limit_mb, Sequence) and not isinstance(memory_limit_mb, str):
            limits = tuple(_check_count("memory_limit_mb[i]", m) for m in memory_limit_mb)
            if not limits:
                raise ValueError("memory_limit_mb is an empty list; pass None for no limit")
        else:
            raise TypeError(
                f"memory_limit_mb must be an int, a list of ints or None, found {memory_limit_mb!r}"
            )
    if memory_growth and limits is not None:
        raise ValueError(
            "memory_growth=True and memory_limit_mb exclude each other: TensorFlow ignores "
            "growth on a GPU with a memory limit (TF#38367). Pass one of them."
        )
    if isinstance(logical_gpus, int) and logical_gpus > 1:
        if memory_growth:
            raise ValueError(
                f"logical_gpus={logical_gpus} and memory_growth=True exclude each other: "
                "TensorFlow cannot grow memory on a GPU split into logical GPUs. Pass "
                "memory_limit_mb (the memory of each logical GPU) instead."
            )
        if limits is None:
            raise ValueError(
                f"logical_gpus={logical_gpus} needs memory_limit_mb, the memory of each logical "
                "GPU (TensorFlow requires a limit per logical GPU), e.g. "
                f"configure_gpus(logical_gpus={logical_gpus}, memory_limit_mb=8192)"
            )
    wanted: tuple[int, ...] | None = None
    if visible == "auto":
        return limits, None
    if visible is not None:
        if isinstance(visible, str) or not isinstance(visible, Sequence):
            raise TypeError(f"visible must be a list of GPU indices or 'auto', found {visible!r}")
        wanted = tuple(_check_count("visible[i]", v, 0) for v in visible)
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"visible lists a GPU twice: {list(visible)}")
    return limits, wanted


def read_gpu_facts(backend: ConfigBackend) -> tuple[GPUFacts, dict[int, Any]]:
    """Read the GPU settings in force through ``backend``; also the devices by index."""
    physical = backend.gpus()
    by_index = {_index(d, i): d for i, d in enumerate(physical)}
    visible = tuple(
        _index(d, physical.index(d)) for d in backend.get_visible("GPU") if d in physical
    )
    splits = []
    for d in physical:
        split = backend.get_split(d)
        splits.append(None if split is None else tuple(split))
    facts = GPUFacts(
        physical=tuple(by_index),
        visible=visible,
        growth=tuple(backend.get_growth(d) for d in physical),
        split=tuple(splits),
        runtime_started=backend.runtime_started(),
    )
    return facts, by_index


def plan_gpus(
    facts: GPUFacts,
    memory_growth: bool | None = None,
    memory_limit_mb: int | Sequence[int] | None = None,
    visible: Sequence[int] | None = None,
    *,
    logical_gpus: int | None = None,
    visible_env: str | None = None,
    visible_reason: str | None = None,
) -> GPUChangeSet:
    """Decide what ``configure_gpus`` changes. Pure: facts and request in, change set out.

    Args:
        facts: the GPU settings in force (:func:`read_gpu_facts`, or synthetic).
        memory_growth, memory_limit_mb, visible, logical_gpus: as for
            :func:`configure_gpus` (``visible`` as indices: "auto" is resolved by
            :func:`choose_gpus` first).
        visible_env: the value of ``CUDA_VISIBLE_DEVICES``, for the error message only.
        visible_reason: why ``visible`` was chosen, for the change's reason.

    Raises:
        ValueError / TypeError: bad arguments.
        DeviceNotFoundError: ``visible`` names a GPU that does not exist.

    Example:
        >>> facts = GPUFacts((0, 1), (0, 1), (False, False), (None, None), False)
        >>> [str(c) for c in plan_gpus(facts, memory_growth=True).changes]
        ['memory growth [False, False] -> True (memory_growth=True was requested)']
    """
    limits, wanted = _check_gpu_request(memory_growth, memory_limit_mb, visible, logical_gpus)
    logical = logical_gpus or 1
    if not facts.physical:
        return GPUChangeSet((), None, None, ())
    if wanted is not None:
        missing = [i for i in wanted if i not in facts.physical]
        if missing:
            raise DeviceNotFoundError(
                f"configure_gpus(visible={list(wanted)}): GPU(s) {missing} do not "
                f"exist; TensorFlow sees physical GPU(s) {sorted(facts.physical)} "
                f"(CUDA_VISIBLE_DEVICES={visible_env!r}). Use those indices."
            )
    target_visible = wanted if wanted is not None else facts.visible
    if isinstance(limits, tuple) and len(limits) != len(target_visible):
        raise ValueError(
            f"memory_limit_mb has {len(limits)} value(s) but {len(target_visible)} GPU(s) "
            f"are visible {list(target_visible)}; give one number or one per visible GPU"
        )
    target_limits: tuple[int, ...] | None
    if limits is None:
        target_limits = None
    elif isinstance(limits, int):
        target_limits = (limits,) * len(target_visible)
    else:
        target_limits = limits
    position = {index: n for n, index in enumerate(facts.physical)}
    growth_now = [facts.growth[position[i]] for i in target_visible]
    split_now = [facts.split[position[i]] for i in target_visible]

    changes: list[ConfigChange] = []
    if target_visible != facts.visible:
        changes.append(
            ConfigChange(
                "visible GPUs",
                list(facts.visible),
                list(target_visible),
                visible_reason or f"visible={list(target_visible)} was requested",
            )
        )
    if memory_growth is not None and any(g != memory_growth for g in growth_now):
        changes.append(
            ConfigChange(
                "memory growth",
                growth_now,
                memory_growth,
                f"memory_growth={memory_growth} was requested",
            )
        )
    if target_limits is not None and logical == 1:
        now = [s[0] if s and len(s) == 1 else None for s in split_now]
        if now != list(target_limits):
            changes.append(
                ConfigChange(
                    "memory limits (MB)",
                    now,
                    list(target_limits),
                    f"memory_limit_mb={memory_limit_mb!r} was requested",
                )
            )
    elif target_limits is not None:
        now_split = [list(s) if s else None for s in split_now]
        wanted_split = [[m] * logical for m in target_limits]
        if now_split != wanted_split:
            changes.append(
                ConfigChange(
                    "logical GPUs (MB each)",
                    now_split,
                    wanted_split,
                    f"logical_gpus={logical} with memory_limit_mb={memory_limit_mb!r} was "
                    "requested",
                )
            )
    return GPUChangeSet(
        target_visible, memory_growth, target_limits, tuple(changes), logical_gpus=logical
    )


def choose_gpus(
    gpus: Sequence[GPUInfo], count: int | None = None, min_free_mb: int | None = None
) -> tuple[tuple[int, ...], str]:
    """Pick the least-loaded GPUs: most free memory, then lowest utilization, then index. Pure.

    Args:
        gpus: TensorFlow's physical GPUs with the driver's load facts
            (``tfplace.inventory().gpus``).
        count: how many to pick (None: every GPU that qualifies).
        min_free_mb: only GPUs with at least this much free memory qualify.

    Returns:
        The chosen physical indices in ascending order, and the reason in words.

    Raises:
        DeviceNotFoundError: fewer than ``count`` GPUs qualify (or none), listing each GPU's
            free memory and utilization.

    Example:
        >>> from tfplace._inventory import GPUInfo
        >>> gpus = [GPUInfo(0, memory_free_mb=1000, utilization_percent=90),
        ...         GPUInfo(1, memory_free_mb=70000, utilization_percent=0),
        ...         GPUInfo(2, memory_free_mb=70000, utilization_percent=5)]
        >>> choose_gpus(gpus, count=2)[0]
        (1, 2)
    """

    def load(g: GPUInfo) -> str:
        free = f"{g.memory_free_mb} MB free" if g.memory_free_mb is not None else "free unknown"
        util = f"{g.utilization_percent} %" if g.utilization_percent is not None else "? %"
        return f"GPU {g.index} ({free}, {util})"

    qualified = [
        g
        for g in gpus
        if min_free_mb is None or (g.memory_free_mb is not None and g.memory_free_mb >= min_free_mb)
    ]
    qualified.sort(
        key=lambda g: (
            -(g.memory_free_mb if g.memory_free_mb is not None else -1),
            g.utilization_percent if g.utilization_percent is not None else 101,
            g.index,
        )
    )
    want = len(qualified) if count is None else count
    if not qualified or len(qualified) < want:
        need = f"{want} GPU(s)" if count is not None else "a GPU"
        floor = f" with at least {min_free_mb} MB free" if min_free_mb is not None else ""
        unknown = (
            " The driver's load facts are missing (install nvidia-ml-py, the 'gpu' extra, or "
            "put nvidia-smi on PATH)."
            if gpus and all(g.memory_free_mb is None for g in gpus)
            else ""
        )
        raise DeviceNotFoundError(
            f"configure_gpus(visible='auto'): found {len(qualified)} of the {need}{floor} "
            f"asked for: {', '.join(load(g) for g in gpus) or 'no GPU'}.{unknown} Lower "
            "count or min_free_mb, or free a GPU."
        )
    chosen = qualified[:want]
    rest = [g for g in gpus if g not in chosen]
    reason = (
        f"visible='auto': the {len(chosen)} least loaded of {len(gpus)} GPU(s): "
        + ", ".join(load(g) for g in chosen)
        + (f"; not chosen: {', '.join(load(g) for g in rest)}" if rest else "")
    )
    return tuple(sorted(g.index for g in chosen)), reason


def _apply_gpus(plan: GPUChangeSet, by_index: dict[int, Any], be: ConfigBackend) -> None:
    """Apply a change set through the seam (the only side effects of configure_gpus)."""
    devs = [by_index[i] for i in plan.visible]
    settings = {c.setting for c in plan.changes}
    try:
        if "visible GPUs" in settings:
            be.set_visible(devs, "GPU")
        if "memory growth" in settings and plan.memory_growth is not None:
            for d in devs:
                if be.get_growth(d) != plan.memory_growth:
                    be.set_growth(d, plan.memory_growth)
        split = {"memory limits (MB)", "logical GPUs (MB each)"} & settings
        if split and plan.memory_limit_mb is not None:
            for d, m in zip(devs, plan.memory_limit_mb, strict=True):
                be.set_split(d, [m] * plan.logical_gpus)
    except (RuntimeError, ValueError) as err:
        _tf.reraise_if_initialized(err, "configure_gpus", _GPU_FIX)
        raise


def configure_gpus(
    memory_growth: bool | None = None,
    memory_limit_mb: int | Sequence[int] | None = None,
    visible: Sequence[int] | Literal["auto"] | None = None,
    *,
    count: int | None = None,
    min_free_mb: int | None = None,
    logical_gpus: int | None = None,
    dry_run: bool = False,
    backend: ConfigBackend | None = None,
) -> GPUConfig:
    """Configure every visible GPU consistently, before TensorFlow's runtime starts.

    Reads the settings in force, decides the changes with the pure :func:`plan_gpus`, and
    applies only those. The same settings twice is a no-op, also after the runtime started.

    Args:
        memory_growth: allocate GPU memory as needed instead of mapping it all up front;
            applied to every visible GPU (TensorFlow requires growth on all or none).
        memory_limit_mb: cap each visible GPU at this many MB: one number for all, or one
            per visible GPU. Excludes ``memory_growth=True``.
        visible: physical GPU indices TensorFlow may use; the others are hidden. ``"auto"``:
            the least-loaded GPUs by the driver's facts (free memory, then utilization, then
            index; :func:`choose_gpus`), read before TensorFlow starts.
        count: with ``visible="auto"``: how many GPUs (default: all that qualify).
        min_free_mb: with ``visible="auto"``: only GPUs with this much free memory qualify.
        logical_gpus: split each visible GPU into this many logical GPUs of
            ``memory_limit_mb`` each (TensorFlow's way to run multi-GPU code on one card);
            ``plan()`` and ``pick_strategy("mirrored")`` then count and mirror over them.
        dry_run: decide and return the changes (``.changes``) without applying them.
        backend: for tests only: a substitute for ``tf.config``.

    Returns:
        The :class:`GPUConfig` in force afterwards (with ``dry_run``: the one that would be).
        On a machine without GPUs it returns cleanly with nothing applied.

    Raises:
        ValueError / TypeError: bad arguments (checked before TensorFlow is touched).
        DeviceNotFoundError: ``visible`` names a GPU that does not exist (also where no GPU
            is visible at all), or fewer GPUs than ``count`` qualify for ``visible="auto"``.
        AlreadyInitializedError: different settings after the runtime started.

    Example:
        The result depends on the machine's GPUs (skipped under doctest):

        >>> tfplace.configure_gpus(memory_growth=True)  # doctest: +SKIP
        GPUConfig(visible=(0, 1), memory_growth=True, memory_limit_mb=None, changed=True)
    """
    _check_bool("dry_run", dry_run)
    _check_gpu_request(memory_growth, memory_limit_mb, visible, logical_gpus)
    if count is not None:
        _check_count("count", count)
    if min_free_mb is not None:
        _check_count("min_free_mb", min_free_mb, 0)
    if (count is not None or min_free_mb is not None) and visible != "auto":
        raise ValueError(
            "count and min_free_mb choose GPUs for visible='auto'; found visible="
            f"{visible!r}. Pass visible='auto', or drop them."
        )
    with _lock:
        be = backend or _tf.TFConfig()
        facts, by_index = read_gpu_facts(be)
        if not facts.physical:
            asked = (visible not in (None, "auto") and len(visible) > 0) or (
                visible == "auto" and count is not None
            )
            if asked:  # an explicit request for GPUs is not silently dropped
                raise DeviceNotFoundError(
                    f"configure_gpus(visible={visible!r}"
                    + (f", count={count}" if count is not None else "")
                    + "): no GPU is visible to TensorFlow here "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Run "
                    "`tfplace doctor` to see why, or drop visible= on machines without GPUs."
                )
            log.info("configure_gpus: no GPU is visible to TensorFlow; nothing to configure")
            return GPUConfig((), None, None, changed=False)
        indices: Sequence[int] | None
        why: str | None = None
        if visible == "auto":
            from tfplace._inventory import inventory

            indices, why = choose_gpus(inventory().gpus, count, min_free_mb)
        else:
            indices = visible
        decision = plan_gpus(
            facts,
            memory_growth,
            memory_limit_mb,
            indices,
            logical_gpus=logical_gpus,
            visible_env=os.environ.get("CUDA_VISIBLE_DEVICES"),
            visible_reason=why,
        )
        if decision.changes and facts.runtime_started and not dry_run:
            raise AlreadyInitializedError(
                f"configure_gpus: cannot change {_describe(decision.changes)}: TensorFlow's "
                f"runtime has already started and fixes GPU settings at start-up. {_GPU_FIX}"
            )
        if dry_run:
            return _gpu_result(decision, _projected(decision, facts), applied=False)
        if decision.changes:
            _apply_gpus(decision, by_index, be)
            log.info("configure_gpus: %s", _describe(decision.changes))
        after, _ = read_gpu_facts(be)
        return _gpu_result(decision, after, applied=True)


def _describe(changes: Sequence[ConfigChange]) -> str:
    return "; ".join(f"{c.setting} {_short(c.before)} -> {_short(c.after)}" for c in changes)


def _short(value: Any) -> Any:
    """Growth per GPU reads as one value when all agree (``[False, False]`` -> ``False``)."""
    if isinstance(value, list) and value and all(isinstance(v, bool) for v in value):
        return value[0] if len(set(value)) == 1 else value
    return value


def _projected(decision: GPUChangeSet, facts: GPUFacts) -> GPUFacts:
    """The facts ``decision`` would leave in force (what a dry run reports)."""
    growth = list(facts.growth)
    split = list(facts.split)
    position = {index: n for n, index in enumerate(facts.physical)}
    for n, i in enumerate(decision.visible):
        if decision.memory_growth is not None:
            growth[position[i]] = decision.memory_growth
        if decision.memory_limit_mb is not None:
            split[position[i]] = (decision.memory_limit_mb[n],) * decision.logical_gpus
    return replace(facts, visible=decision.visible, growth=tuple(growth), split=tuple(split))


def _gpu_result(decision: GPUChangeSet, facts: GPUFacts, *, applied: bool) -> GPUConfig:
    """The GPUConfig for ``decision`` given the facts in force after it (read back after
    applying, or :func:`_projected` for a dry run)."""
    position = {index: n for n, index in enumerate(facts.physical)}
    growth_now = [facts.growth[position[i]] for i in decision.visible]
    split_now = [facts.split[position[i]] for i in decision.visible]
    growth: bool | None = (
        decision.memory_growth
        if decision.memory_growth is not None
        else (
            growth_now[0] if growth_now and len(set(growth_now)) == 1 and any(growth_now) else None
        )
    )
    limits: tuple[int, ...] | None = None
    lengths = {len(s) if s else 1 for s in split_now}
    if split_now and all(s and s[0] is not None and len(set(s)) == 1 for s in split_now):
        limits = tuple(int(s[0]) for s in split_now if s and s[0] is not None)
    return GPUConfig(
        decision.visible,
        growth,
        limits,
        changed=applied and bool(decision.changes),
        changes=decision.changes,
        logical_gpus=lengths.pop() if len(lengths) == 1 else 1,
    )


def auto_threads(usable_cores: int) -> tuple[int, int]:
    """The ``(intra_op, inter_op)`` thread counts ``configure_cpus("auto")`` chooses.

    TensorFlow sizes both pools from the host's cores; "auto" sizes them from the cores this
    process may really use (affinity and cgroup quota), so a ``--cpus 4`` container on a
    64-core host runs 4 + 4 threads instead of 64 + 64.

    Example:
        >>> auto_threads(4), auto_threads(0)
        ((4, 4), (1, 1))
    """
    usable = max(1, usable_cores)
    return usable, usable


def auto_request(inv: Inventory) -> tuple[int | None, int | None, str]:
    """What ``threads="auto"`` asks for on ``inv``: ``(intra, inter, why)``. Pure.

    A thread count already set through ``TF_NUM_INTRAOP_THREADS`` /
    ``TF_NUM_INTEROP_THREADS`` is left to TensorFlow (None).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> auto_request(fake_inventory(cores=4))
        (4, 4, 'threads="auto": 4 usable core(s)')
    """
    intra, inter = auto_threads(inv.cpu.usable_cores)
    return (
        None if inv.env_value("TF_NUM_INTRAOP_THREADS") else intra,
        None if inv.env_value("TF_NUM_INTEROP_THREADS") else inter,
        f'threads="auto": {inv.cpu.usable_cores} usable core(s)',
    )


def plan_auto_cpus(inv: Inventory) -> CPUChangeSet:
    """What ``configure_cpus("auto")`` would change on ``inv``, from the inventory alone.

    Pure (the doctor shows it without applying anything).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> [str(c) for c in plan_auto_cpus(fake_inventory(cores=2)).changes]
        ... # doctest: +NORMALIZE_WHITESPACE
        ['intra-op threads default -> 2 (threads="auto": 2 usable core(s))',
         'inter-op threads default -> 2 (threads="auto": 2 usable core(s))']
    """
    cpu = inv.cpu
    facts = CPUFacts(
        cpu.intra_op_threads, cpu.inter_op_threads, cpu.logical_devices, inv.runtime_started
    )
    intra, inter, why = auto_request(inv)
    return plan_cpus(facts, intra, inter, None, why=why)


def read_cpu_facts(backend: ConfigBackend) -> CPUFacts:
    """Read the CPU settings in force through ``backend``; never starts the runtime."""
    intra, inter = backend.get_threads()
    return CPUFacts(intra, inter, _tf.cpu_device_count(backend), backend.runtime_started())


def plan_cpus(
    facts: CPUFacts,
    intra_op_threads: int | None,
    inter_op_threads: int | None,
    virtual_devices: int | None,
    *,
    why: str = "was requested",
) -> CPUChangeSet:
    """Decide what ``configure_cpus`` changes. Pure: facts and resolved request in.

    Args:
        facts: the CPU settings in force (:func:`read_cpu_facts`, or synthetic).
        intra_op_threads, inter_op_threads, virtual_devices: the wanted values (None: leave).
        why: how the thread counts were chosen, for the reasons.

    Example:
        >>> plan = plan_cpus(CPUFacts(0, 0, 1, False), 2, 2, 2, why="from 2 usable cores")
        >>> [str(c) for c in plan.changes]  # doctest: +NORMALIZE_WHITESPACE
        ['intra-op threads default -> 2 (from 2 usable cores)',
         'inter-op threads default -> 2 (from 2 usable cores)',
         'virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)']
    """
    changes: list[ConfigChange] = []
    intra = intra_op_threads
    inter = inter_op_threads
    if intra is not None and intra != facts.intra_op_threads:
        changes.append(
            ConfigChange("intra-op threads", facts.intra_op_threads or "default", intra, why)
        )
    if inter is not None and inter != facts.inter_op_threads:
        changes.append(
            ConfigChange("inter-op threads", facts.inter_op_threads or "default", inter, why)
        )
    if virtual_devices is not None and virtual_devices != facts.virtual_devices:
        changes.append(
            ConfigChange(
                "virtual CPU devices",
                facts.virtual_devices,
                virtual_devices,
                f"virtual_devices={virtual_devices} was requested",
            )
        )
    return CPUChangeSet(
        intra if intra != facts.intra_op_threads else None,
        inter if inter != facts.inter_op_threads else None,
        virtual_devices if virtual_devices != facts.virtual_devices else None,
        tuple(changes),
    )


def configure_cpus(
    threads: Literal["auto"] | int | None = "auto",
    inter_op_threads: int | None = None,
    virtual_devices: int | None = None,
    *,
    dry_run: bool = False,
    backend: ConfigBackend | None = None,
) -> CPUConfig:
    """Size TensorFlow's CPU thread pools and optionally split the CPU into virtual devices.

    Reads the settings in force, decides the changes with the pure :func:`plan_cpus`, and
    applies only those.

    Args:
        threads: intra-op threads: ``"auto"`` (the cores this process may use, from the
            cgroup quota and CPU affinity; TF_NUM_INTRAOP_THREADS wins when set), an int,
            or None to leave TensorFlow's default.
        inter_op_threads: inter-op threads; None means the same as ``threads`` when that is
            ``"auto"``, else TensorFlow's default.
        virtual_devices: split the CPU into this many logical devices (``/CPU:0`` ...), for
            running multi-replica code (MirroredStrategy) on one CPU.
        dry_run: decide and return the changes (``.changes``) without applying them.
        backend: for tests only: a substitute for ``tf.config``.

    Returns:
        The :class:`CPUConfig` in force afterwards (with ``dry_run``: the one that would be).

    Raises:
        ValueError / TypeError: bad arguments.
        AlreadyInitializedError: different settings after the runtime started.

    Example:
        The thread counts follow the machine's usable cores (skipped under doctest):

        >>> tfplace.configure_cpus("auto", virtual_devices=2)  # doctest: +SKIP
        CPUConfig(intra_op_threads=2, inter_op_threads=2, virtual_devices=2, changed=True)
    """
    if threads != "auto" and threads is not None:
        _check_count("threads", threads)
    if inter_op_threads is not None:
        _check_count("inter_op_threads", inter_op_threads)
    if virtual_devices is not None:
        _check_count("virtual_devices", virtual_devices)
    _check_bool("dry_run", dry_run)
    intra: int | None
    inter: int | None = inter_op_threads
    why = "was requested"
    if threads == "auto":
        from tfplace._inventory import inventory

        intra, auto_inter, why = auto_request(inventory())
        if inter is None:
            inter = auto_inter
    else:
        intra = threads

    with _lock:
        be = backend or _tf.TFConfig()
        facts = read_cpu_facts(be)
        decision = plan_cpus(facts, intra, inter, virtual_devices, why=why)
        if dry_run:
            return CPUConfig(
                intra_op_threads=intra if intra is not None else facts.intra_op_threads,
                inter_op_threads=inter if inter is not None else facts.inter_op_threads,
                virtual_devices=virtual_devices or facts.virtual_devices,
                changed=False,
                changes=decision.changes,
            )
        if decision.changes and facts.runtime_started:
            raise AlreadyInitializedError(
                f"configure_cpus: cannot change {_describe(decision.changes)}: TensorFlow's "
                "runtime has already started and fixes thread pools and devices at start-up. "
                f"{_CPU_FIX}"
            )
        if decision.changes:
            try:
                be.set_threads(decision.intra_op_threads, decision.inter_op_threads)
                cpus = be.cpus()
                if decision.virtual_devices is not None and cpus:
                    be.set_split(cpus[0], [None] * decision.virtual_devices)
            except (RuntimeError, ValueError) as err:
                _tf.reraise_if_initialized(err, "configure_cpus", _CPU_FIX)
                raise
            log.info("configure_cpus: %s", _describe(decision.changes))
        new_intra, new_inter = be.get_threads()
        return CPUConfig(
            intra_op_threads=new_intra,
            inter_op_threads=new_inter,
            virtual_devices=virtual_devices
            if virtual_devices is not None
            else facts.virtual_devices,
            changed=bool(decision.changes),
            changes=decision.changes,
        )
