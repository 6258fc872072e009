"""Device decisions: which GPUs, which limits, how many threads and CPU devices. Pure.

Each function here turns facts (what is in force, what the inventory says) and a request into a
change set: the target state and the :class:`ConfigChange` records that get there. The actions in
``tfplace._configure`` read the facts through the TensorFlow seam, call these, and apply the
result; the doctor calls the same functions to show what ``configure_cpus("auto")`` would do.

Each change carries a typed :class:`Target`, which the actions dispatch on; its value is the
label the reports print.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tfplace._decide.threads import auto_threads
from tfplace.errors import DeviceNotFoundError

if TYPE_CHECKING:
    from tfplace._facts.inventory import GPUInfo, Inventory

__all__ = [
    "CPUChangeSet",
    "CPUFacts",
    "ConfigChange",
    "GPUChangeSet",
    "GPUFacts",
    "Target",
    "auto_cpu_changes",
    "auto_request",
    "check_bool",
    "check_count",
    "check_gpu_request",
    "choose_gpus",
    "cpu_changes",
    "gpu_changes",
    "gpu_fallback",
]


class Target(str, enum.Enum):
    """What one :class:`ConfigChange` sets; the value is the label reports print."""

    VISIBLE_GPUS = "visible GPUs"
    MEMORY_GROWTH = "memory growth"
    MEMORY_LIMITS = "memory limits (MB)"
    LOGICAL_GPUS = "logical GPUs (MB each)"
    INTRA_OP_THREADS = "intra-op threads"
    INTER_OP_THREADS = "inter-op threads"
    VIRTUAL_CPUS = "virtual CPU devices"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ConfigChange:
    """One setting a configuration call changes: from what, to what, and why.

    Example:
        >>> str(ConfigChange(Target.VIRTUAL_CPUS, 1, 2, "virtual_devices=2 was requested"))
        'virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)'
    """

    setting: Target
    before: Any
    after: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.setting} {self.before} -> {self.after} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {**asdict(self), "setting": self.setting.value}


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
    """The pure decision of :func:`gpu_changes`: the target state and the changes to get there."""

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
    """The pure decision of :func:`cpu_changes`: target values (None: leave) and the changes."""

    intra_op_threads: int | None
    inter_op_threads: int | None
    virtual_devices: int | None
    changes: tuple[ConfigChange, ...]


def check_bool(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, found {value!r}")


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, found {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return value


def check_gpu_request(
    memory_growth: object,
    memory_limit_mb: object,
    visible: object,
    logical_gpus: object = None,
) -> tuple[int | tuple[int, ...] | None, tuple[int, ...] | None]:
    """Validate ``configure_gpus``'s arguments; return (limits, visible) normalised."""
    check_bool("memory_growth", memory_growth)
    if logical_gpus is not None:
        check_count("logical_gpus", logical_gpus)
    limits: tuple[int, ...] | int | None = None
    if memory_limit_mb is not None:
        if isinstance(memory_limit_mb, int) and not isinstance(memory_limit_mb, bool):
            limits = check_count("memory_limit_mb", memory_limit_mb)
        elif isinstance(memory_limit_mb, Sequence) and not isinstance(memory_limit_mb, str):
            limits = tuple(check_count("memory_limit_mb[i]", m) for m in memory_limit_mb)
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
        wanted = tuple(check_count("visible[i]", v, 0) for v in visible)
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"visible lists a GPU twice: {list(visible)}")
    return limits, wanted


#: The one GPU policy: what a request for GPUs does on each kind of machine, by default and
#: with ``strict=True``. The placement page shows this table and the tests run every row.
#: (request, machine, outcome, outcome with strict=True)
GPU_POLICY: tuple[tuple[str, str, str, str], ...] = (
    ("`on_gpu(i)`", "has GPU i", "runs on GPU i", "runs on GPU i"),
    ("`on_gpu(i)`", "has GPUs, not GPU i", "`DeviceNotFoundError`", "`DeviceNotFoundError`"),
    (
        "`on_gpu(i)`",
        "no GPU",
        "`DeviceFallbackWarning`, runs on `/CPU:0`",
        "`DeviceNotFoundError`",
    ),
    ("`configure_gpus(visible=[...])`", "has those GPUs", "applied", "applied"),
    (
        "`configure_gpus(visible=[...])`",
        "has GPUs, not all of those",
        "`DeviceNotFoundError`",
        "`DeviceNotFoundError`",
    ),
    (
        "`configure_gpus(visible=[...])`",
        "no GPU",
        "`DeviceFallbackWarning`, nothing applied",
        "`DeviceNotFoundError`",
    ),
    ("`configure_gpus(memory_growth=True)`", "has GPUs", "applied", "applied"),
    (
        "`configure_gpus(memory_growth=True)`",
        "no GPU",
        "nothing to configure (a log line)",
        "`DeviceNotFoundError`",
    ),
)


def wrong_gpu_index(call: str, asked: Sequence[int], have: Sequence[int], where: str) -> None:
    """The policy's other half: on a machine that has GPUs, an index it lacks always raises.

    It is a wrong index, not a missing GPU, whatever ``strict`` says: falling back to the
    CPU there would hide the mistake behind a warning on a machine built for the GPU. Pure.

    Args:
        call: the call as the error names it, e.g. ``"on_gpu(3)"``.
        asked: the GPU indices asked for.
        have: the GPU indices that exist.
        where: what the indices are (``"logical GPU(s)"``, ``"physical GPU(s)"``) and, in
            parentheses, how they were found (``CUDA_VISIBLE_DEVICES``, visible devices).

    Raises:
        DeviceNotFoundError: some of ``asked`` are not in ``have``.

    Example:
        >>> wrong_gpu_index("on_gpu(0)", [0], [0, 1], "logical GPU(s)")  # fine: returns None
    """
    missing = [i for i in asked if i not in have]
    if missing:
        raise DeviceNotFoundError(
            f"{call}: GPU(s) {missing} do not exist; TensorFlow sees {where} "
            f"{sorted(have)}. Use those indices."
        )


def gpu_fallback(
    call: str, missing: str, *, strict: bool, strict_call: str, fix: str, instead: str
) -> str:
    """The one policy when code asks for a GPU that is not there. Pure.

    ``on_gpu`` (a GPU index past the last visible one, or no GPU at all) and
    ``configure_gpus`` (``visible=[...]`` or ``visible="auto", count=N`` on a machine where
    TensorFlow sees no GPU at all) both follow it, so one script runs on a laptop and on a GPU
    workstation:

    - ``strict=False`` (the default of both calls): carry on without the GPU, on the CPU; the
      caller emits the returned text as a :class:`~tfplace.errors.DeviceFallbackWarning`;
    - ``strict=True``: raise :class:`~tfplace.errors.DeviceNotFoundError`.

    On a machine that *has* GPUs, an index it lacks raises in both calls whatever ``strict``
    says: a wrong index, not a missing GPU (:func:`wrong_gpu_index`). The whole policy is
    :data:`GPU_POLICY`.

    Args:
        call: the call as the warning names it, e.g. ``"on_gpu(0)"``.
        missing: what is missing, e.g. ``"no GPU is visible"``.
        strict: raise instead of falling back.
        strict_call: the call as the error names it, e.g. ``"on_gpu(0, strict=True)"``.
        fix: the error's fix.
        instead: what runs instead, for the warning (``"running on /CPU:0 instead"``).

    Returns:
        The warning's text (only with ``strict=False``).

    Raises:
        DeviceNotFoundError: with ``strict=True``.

    Example:
        >>> print(gpu_fallback("on_gpu(0)", "no GPU is visible", strict=False,
        ...                    strict_call="on_gpu(0, strict=True)", fix="",
        ...                    instead="running on /CPU:0 instead"))
        ... # doctest: +NORMALIZE_WHITESPACE
        on_gpu(0): no GPU is visible; running on /CPU:0 instead.
        Pass strict=True to make this an error.
    """
    if strict:
        raise DeviceNotFoundError(f"{strict_call}: {missing}. {fix}".rstrip())
    return f"{call}: {missing}; {instead}. Pass strict=True to make this an error."


def gpu_changes(
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
        facts: the GPU settings in force (``tfplace._configure.read_gpu_facts``, or synthetic).
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
        >>> [str(c) for c in gpu_changes(facts, memory_growth=True).changes]
        ['memory growth [False, False] -> True (memory_growth=True was requested)']
    """
    limits, wanted = check_gpu_request(memory_growth, memory_limit_mb, visible, logical_gpus)
    logical = logical_gpus or 1
    if not facts.physical:
        return GPUChangeSet((), None, None, ())
    if wanted is not None:
        wrong_gpu_index(
            f"configure_gpus(visible={list(wanted)})",
            wanted,
            facts.physical,
            f"physical GPU(s) (CUDA_VISIBLE_DEVICES={visible_env!r})",
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
                Target.VISIBLE_GPUS,
                list(facts.visible),
                list(target_visible),
                visible_reason or f"visible={list(target_visible)} was requested",
            )
        )
    if memory_growth is not None and any(g != memory_growth for g in growth_now):
        changes.append(
            ConfigChange(
                Target.MEMORY_GROWTH,
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
                    Target.MEMORY_LIMITS,
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
                    Target.LOGICAL_GPUS,
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
        >>> from tfplace._facts.inventory import GPUInfo
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


def auto_cpu_changes(inv: Inventory) -> CPUChangeSet:
    """What ``configure_cpus("auto")`` would change on ``inv``, from the inventory alone.

    Pure (the doctor shows it without applying anything).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> [str(c) for c in auto_cpu_changes(fake_inventory(cores=2)).changes]
        ... # doctest: +NORMALIZE_WHITESPACE
        ['intra-op threads default -> 2 (threads="auto": 2 usable core(s))',
         'inter-op threads default -> 2 (threads="auto": 2 usable core(s))']
    """
    cpu = inv.cpu
    facts = CPUFacts(
        cpu.intra_op_threads, cpu.inter_op_threads, cpu.logical_devices, inv.runtime_started
    )
    intra, inter, why = auto_request(inv)
    return cpu_changes(facts, intra, inter, None, why=why)


def cpu_changes(
    facts: CPUFacts,
    intra_op_threads: int | None,
    inter_op_threads: int | None,
    virtual_devices: int | None,
    *,
    why: str = "was requested",
) -> CPUChangeSet:
    """Decide what ``configure_cpus`` changes. Pure: facts and resolved request in.

    Args:
        facts: the CPU settings in force (``tfplace._configure.read_cpu_facts``, or synthetic).
        intra_op_threads, inter_op_threads, virtual_devices: the wanted values (None: leave).
        why: how the thread counts were chosen, for the reasons.

    Example:
        >>> plan = cpu_changes(CPUFacts(0, 0, 1, False), 2, 2, 2, why="from 2 usable cores")
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
            ConfigChange(Target.INTRA_OP_THREADS, facts.intra_op_threads or "default", intra, why)
        )
    if inter is not None and inter != facts.inter_op_threads:
        changes.append(
            ConfigChange(Target.INTER_OP_THREADS, facts.inter_op_threads or "default", inter, why)
        )
    if virtual_devices is not None and virtual_devices != facts.virtual_devices:
        changes.append(
            ConfigChange(
                Target.VIRTUAL_CPUS,
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
