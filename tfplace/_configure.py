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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tfplace import _tf
from tfplace._decide.devices import (
    ConfigChange,
    CPUFacts,
    GPUChangeSet,
    GPUFacts,
    Target,
    auto_request,
    check_bool,
    check_count,
    check_gpu_request,
    choose_gpus,
    cpu_changes,
    gpu_changes,
    gpu_fallback,
)
from tfplace.errors import AlreadyInitializedError, DeviceFallbackWarning

if TYPE_CHECKING:
    pass

__all__ = [
    "CPUConfig",
    "ConfigBackend",
    "GPUConfig",
    "configure_cpus",
    "configure_gpus",
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

    def __str__(self) -> str:
        """The settings in force, then what this call changed (or would change), one a line.

        Example:
            >>> print(GPUConfig((0, 1), True, None, changed=False))
            GPUs 0, 1: memory growth on, no memory limit
              no change
        """
        if not self.visible:
            head = "GPUs: none visible"
        else:
            growth = {True: "on", False: "off", None: "not set"}[self.memory_growth]
            if self.memory_limit_mb is None:
                limit = "no memory limit"
            elif self.logical_gpus > 1:
                limit = (
                    f"each split into {self.logical_gpus} logical GPUs of "
                    f"{_mb(self.memory_limit_mb)} MB"
                )
            else:
                limit = f"memory limit {_mb(self.memory_limit_mb)} MB"
            head = f"GPUs {', '.join(map(str, self.visible))}: memory growth {growth}, {limit}"
        return head + _changes_text(self.changed, self.changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "visible": list(self.visible),
            "memory_growth": self.memory_growth,
            "memory_limit_mb": None if self.memory_limit_mb is None else list(self.memory_limit_mb),
            "logical_gpus": self.logical_gpus,
            "changed": self.changed,
            "changes": [c.to_dict() for c in self.changes],
        }


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

    def __str__(self) -> str:
        """The settings in force, then what this call changed (or would change), one a line.

        Example:
            >>> print(CPUConfig(2, 0, 1, changed=False))
            CPU: 2 intra-op / default inter-op threads, 1 CPU device
              no change
        """
        intra = self.intra_op_threads or "default"
        inter = self.inter_op_threads or "default"
        devices = f"{self.virtual_devices} CPU device" + ("s" if self.virtual_devices != 1 else "")
        head = f"CPU: {intra} intra-op / {inter} inter-op threads, {devices}"
        return head + _changes_text(self.changed, self.changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "virtual_devices": self.virtual_devices,
            "changed": self.changed,
            "changes": [c.to_dict() for c in self.changes],
        }


def _mb(limits: tuple[int, ...]) -> str:
    """``4096`` when every GPU has the same limit, else ``4096, 8192``."""
    return str(limits[0]) if len(set(limits)) == 1 else ", ".join(map(str, limits))


def _changes_text(changed: bool, changes: Sequence[ConfigChange]) -> str:
    """The lines under a config's first line: what changed, or would with ``dry_run``."""
    if not changes:
        return "\n  no change"
    verb = "changed" if changed else "would change (dry run)"
    return "".join(
        f"\n  {verb}: {c.setting} {_short(c.before)} -> {_short(c.after)} ({c.reason})"
        for c in changes
    )


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


def _apply_gpus(plan: GPUChangeSet, by_index: dict[int, Any], be: ConfigBackend) -> None:
    """Apply a change set through the seam (the only side effects of configure_gpus)."""
    devs = [by_index[i] for i in plan.visible]
    settings = {c.setting for c in plan.changes}
    try:
        if Target.VISIBLE_GPUS in settings:
            be.set_visible(devs, "GPU")
        if Target.MEMORY_GROWTH in settings and plan.memory_growth is not None:
            for d in devs:
                if be.get_growth(d) != plan.memory_growth:
                    be.set_growth(d, plan.memory_growth)
        split = {Target.MEMORY_LIMITS, Target.LOGICAL_GPUS} & settings
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
    strict: bool = False,
    dry_run: bool = False,
    backend: ConfigBackend | None = None,
) -> GPUConfig:
    """Configure every visible GPU consistently, before TensorFlow's runtime starts.

    Reads the settings in force, decides the changes with the pure :func:`gpu_changes`, and
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
        strict: on a machine where TensorFlow sees no GPU at all, raise instead of warning
            when ``visible`` (or ``visible="auto"`` with ``count``) asks for GPUs, and instead
            of doing nothing when GPU settings (``memory_growth``, ``memory_limit_mb``,
            ``logical_gpus``) are given.
        dry_run: decide and return the changes (``.changes``) without applying them. It
            refuses what the real call refuses: after the runtime started, a dry run that
            would change something raises the same :class:`AlreadyInitializedError`.
        backend: for tests only: a substitute for ``tf.config``.

    GPU fallback: this call follows the one policy that :class:`~tfplace.on_gpu` follows
    (:func:`tfplace._decide.devices.gpu_fallback`). Asked for GPUs on a machine where
    TensorFlow sees none at all, it applies nothing, warns with a
    :class:`~tfplace.errors.DeviceFallbackWarning` and TensorFlow runs on the CPU; with
    ``strict=True`` it raises :class:`DeviceNotFoundError`, also for GPU settings alone. On a
    machine that has GPUs, an index that does not exist always raises: that is a wrong index,
    not a missing GPU. The whole table: :data:`tfplace._decide.devices.GPU_POLICY`.

    Returns:
        The :class:`GPUConfig` in force afterwards (with ``dry_run``: the one that would be).
        On a machine without GPUs it returns ``GPUConfig(visible=(), ...)`` with nothing
        applied. ``print()`` it for a readable summary.

    Raises:
        ValueError / TypeError: bad arguments (checked before TensorFlow is touched).
        DeviceNotFoundError: ``visible`` names a GPU that does not exist on a machine with
            GPUs; with ``strict=True``, GPUs asked for or configured where there is none;
            fewer GPUs than
            ``count`` qualify for ``visible="auto"``.
        AlreadyInitializedError: different settings after the runtime started (also with
            ``dry_run=True``).

    Example:
        The result depends on the machine's GPUs (skipped under doctest):

        >>> print(tfplace.configure_gpus(memory_growth=True))  # doctest: +SKIP
        GPUs 0, 1: memory growth on, no memory limit
          changed: memory growth False -> True (memory_growth=True was requested)
    """
    check_bool("dry_run", dry_run)
    check_bool("strict", strict)
    check_gpu_request(memory_growth, memory_limit_mb, visible, logical_gpus)
    if count is not None:
        check_count("count", count)
    if min_free_mb is not None:
        check_count("min_free_mb", min_free_mb, 0)
    if (count is not None or min_free_mb is not None) and visible != "auto":
        raise ValueError(
            "count and min_free_mb choose GPUs for visible='auto'; found visible="
            f"{visible!r}. Pass visible='auto', or drop them."
        )
    with _lock:
        be = backend or _tf.TFConfig()
        facts, by_index = read_gpu_facts(be)
        if not facts.physical:
            _no_gpus(visible, count, strict, memory_growth, memory_limit_mb, logical_gpus)
            return GPUConfig((), None, None, changed=False)
        indices: Sequence[int] | None
        why: str | None = None
        if visible == "auto":
            from tfplace._facts.inventory import inventory

            indices, why = choose_gpus(inventory().gpus, count, min_free_mb)
        else:
            indices = visible
        decision = gpu_changes(
            facts,
            memory_growth,
            memory_limit_mb,
            indices,
            logical_gpus=logical_gpus,
            visible_env=os.environ.get("CUDA_VISIBLE_DEVICES"),
            visible_reason=why,
        )
        if decision.changes and facts.runtime_started:  # a dry run refuses it too
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


def _no_gpus(
    visible: Sequence[int] | Literal["auto"] | None,
    count: int | None,
    strict: bool,
    memory_growth: bool | None,
    memory_limit_mb: int | Sequence[int] | None,
    logical_gpus: int | None,
) -> None:
    """The GPU policy's row for a machine without GPUs: warn for GPUs asked for, raise with
    ``strict=True`` (also for GPU settings alone), else a log line (``GPU_POLICY``)."""
    asked = (visible not in (None, "auto") and len(visible) > 0) or (
        visible == "auto" and count is not None
    )
    settings = {
        "memory_growth": memory_growth,
        "memory_limit_mb": memory_limit_mb,
        "logical_gpus": logical_gpus,
    }
    if strict and not asked and any(v is not None for v in settings.values()):
        given = ", ".join(f"{k}={v!r}" for k, v in settings.items() if v is not None)
        gpu_fallback(  # raises: strict settings for GPUs that are not there
            f"configure_gpus({given})",
            "no GPU is visible to TensorFlow here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
            strict=True,
            strict_call=f"configure_gpus({given}, strict=True)",
            fix="Run `tfplace doctor` to see why, or pass strict=False to go on on "
            "the CPU (nothing to configure).",
            instead="",
        )
    if asked:  # an explicit request for GPUs is never silently dropped
        call = f"configure_gpus(visible={visible!r}" + (
            f", count={count}" if count is not None else ""
        )
        message = gpu_fallback(
            call + ")",
            "no GPU is visible to TensorFlow here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
            strict=strict,
            strict_call=call + ", strict=True)",
            fix="Run `tfplace doctor` to see why, or pass strict=False to warn and "
            "continue on the CPU.",
            instead="nothing configured, TensorFlow runs on the CPU",
        )
        warnings.warn(message, DeviceFallbackWarning, stacklevel=3)
    log.info("configure_gpus: no GPU is visible to TensorFlow; nothing to configure")


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


def read_cpu_facts(backend: ConfigBackend) -> CPUFacts:
    """Read the CPU settings in force through ``backend``; never starts the runtime."""
    intra, inter = backend.get_threads()
    return CPUFacts(intra, inter, _tf.cpu_device_count(backend), backend.runtime_started())


def configure_cpus(
    threads: Literal["auto"] | int | None = "auto",
    inter_op_threads: int | None = None,
    virtual_devices: int | None = None,
    *,
    dry_run: bool = False,
    backend: ConfigBackend | None = None,
) -> CPUConfig:
    """Size TensorFlow's CPU thread pools and optionally split the CPU into virtual devices.

    Reads the settings in force, decides the changes with the pure :func:`cpu_changes`, and
    applies only those.

    Args:
        threads: intra-op threads: ``"auto"`` (the cores this process may use, from the
            cgroup quota and CPU affinity; TF_NUM_INTRAOP_THREADS wins when set), an int,
            or None to leave TensorFlow's default.
        inter_op_threads: inter-op threads; None means the same as ``threads`` when that is
            ``"auto"``, else TensorFlow's default.
        virtual_devices: split the CPU into this many logical devices (``/CPU:0`` ...), for
            running multi-replica code (MirroredStrategy) on one CPU.
        dry_run: decide and return the changes (``.changes``) without applying them. It
            refuses what the real call refuses: after the runtime started, a dry run that
            would change something raises the same :class:`AlreadyInitializedError`.
        backend: for tests only: a substitute for ``tf.config``.

    Returns:
        The :class:`CPUConfig` in force afterwards, read back from TensorFlow (with
        ``dry_run``: the one that would be). ``print()`` it for a readable summary.

    Raises:
        ValueError / TypeError: bad arguments.
        AlreadyInitializedError: different settings after the runtime started (also with
            ``dry_run=True``).

    Example:
        The thread counts follow the machine's usable cores (skipped under doctest):

        >>> print(tfplace.configure_cpus("auto", virtual_devices=2))  # doctest: +SKIP
        CPU: 2 intra-op / 2 inter-op threads, 2 CPU devices
          changed: intra-op threads default -> 2 (threads="auto": 2 usable core(s))
          changed: inter-op threads default -> 2 (threads="auto": 2 usable core(s))
          changed: virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)
    """
    if threads != "auto" and threads is not None:
        check_count("threads", threads)
    if inter_op_threads is not None:
        check_count("inter_op_threads", inter_op_threads)
    if virtual_devices is not None:
        check_count("virtual_devices", virtual_devices)
    check_bool("dry_run", dry_run)
    intra: int | None
    inter: int | None = inter_op_threads
    why = "was requested"
    if threads == "auto":
        from tfplace._facts.inventory import inventory

        intra, auto_inter, why = auto_request(inventory())
        if inter is None:
            inter = auto_inter
    else:
        intra = threads

    with _lock:
        be = backend or _tf.TFConfig()
        facts = read_cpu_facts(be)
        decision = cpu_changes(facts, intra, inter, virtual_devices, why=why)
        if decision.changes and facts.runtime_started:  # a dry run refuses it too
            raise AlreadyInitializedError(
                f"configure_cpus: cannot change {_describe(decision.changes)}: TensorFlow's "
                "runtime has already started and fixes thread pools and devices at start-up. "
                f"{_CPU_FIX}"
            )
        if dry_run:
            return CPUConfig(
                intra_op_threads=intra if intra is not None else facts.intra_op_threads,
                inter_op_threads=inter if inter is not None else facts.inter_op_threads,
                virtual_devices=virtual_devices or facts.virtual_devices,
                changed=False,
                changes=decision.changes,
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
        after = read_cpu_facts(be)  # what is in force now, read back, not what was asked
        return CPUConfig(
            intra_op_threads=after.intra_op_threads,
            inter_op_threads=after.inter_op_threads,
            virtual_devices=after.virtual_devices,
            changed=bool(decision.changes),
            changes=decision.changes,
        )
