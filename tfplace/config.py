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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tfplace import _tf
from tfplace.errors import AlreadyInitializedError, DeviceNotFoundError

__all__ = ["CPUConfig", "GPUConfig", "auto_threads", "configure_cpus", "configure_gpus"]

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
        memory_limit_mb: per visible GPU, or None.
        changed: whether this call changed anything.
    """

    visible: tuple[int, ...]
    memory_growth: bool | None
    memory_limit_mb: tuple[int, ...] | None
    changed: bool


@dataclass(frozen=True)
class CPUConfig:
    """What :func:`configure_cpus` left in force (0 threads = TensorFlow's default)."""

    intra_op_threads: int
    inter_op_threads: int
    virtual_devices: int
    changed: bool


class ConfigBackend(Protocol):
    """The few ``tf.config`` calls configuration needs; tests substitute a fake GPU machine."""

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


class TFConfigBackend:
    """The real backend: thin calls into ``tf.config``."""

    def __init__(self) -> None:
        self.tf = _tf.load()

    def runtime_started(self) -> bool:
        return _tf.runtime_started()

    def gpus(self) -> list[Any]:
        return list(self.tf.config.list_physical_devices("GPU"))

    def cpus(self) -> list[Any]:
        return list(self.tf.config.list_physical_devices("CPU"))

    def get_visible(self, kind: str) -> list[Any]:
        return list(self.tf.config.get_visible_devices(kind))

    def set_visible(self, devices: list[Any], kind: str) -> None:
        self.tf.config.set_visible_devices(devices, kind)

    def get_growth(self, device: Any) -> bool:
        return bool(self.tf.config.experimental.get_memory_growth(device))

    def set_growth(self, device: Any, enabled: bool) -> None:
        self.tf.config.experimental.set_memory_growth(device, enabled)

    def get_split(self, device: Any) -> list[int | None] | None:
        split = self.tf.config.get_logical_device_configuration(device)
        return None if split is None else [c.memory_limit for c in split]

    def set_split(self, device: Any, limits: list[int | None]) -> None:
        conf = self.tf.config.LogicalDeviceConfiguration
        self.tf.config.set_logical_device_configuration(
            device, [conf(memory_limit=m) for m in limits]
        )

    def logical_count(self, kind: str) -> int:
        return len(self.tf.config.list_logical_devices(kind))

    def get_threads(self) -> tuple[int, int]:
        threading_ = self.tf.config.threading
        return (
            int(threading_.get_intra_op_parallelism_threads()),
            int(threading_.get_inter_op_parallelism_threads()),
        )

    def set_threads(self, intra: int | None, inter: int | None) -> None:
        if intra is not None:
            self.tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter is not None:
            self.tf.config.threading.set_inter_op_parallelism_threads(inter)


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


def configure_gpus(
    memory_growth: bool | None = None,
    memory_limit_mb: int | Sequence[int] | None = None,
    visible: Sequence[int] | None = None,
    *,
    backend: ConfigBackend | None = None,
) -> GPUConfig:
    """Configure every visible GPU consistently, before TensorFlow's runtime starts.

    Args:
        memory_growth: allocate GPU memory as needed instead of mapping it all up front;
            applied to every visible GPU (TensorFlow requires growth on all or none).
        memory_limit_mb: cap each visible GPU at this many MB: one number for all, or one
            per visible GPU. Excludes ``memory_growth=True``.
        visible: physical GPU indices TensorFlow may use; the others are hidden.
        backend: for tests only: a substitute for ``tf.config``.

    Returns:
        The :class:`GPUConfig` in force afterwards. On a machine without GPUs it returns
        cleanly with nothing applied.

    Raises:
        ValueError / TypeError: bad arguments (checked before TensorFlow is touched).
        DeviceNotFoundError: ``visible`` names a GPU that does not exist.
        AlreadyInitializedError: different settings after the runtime started.

    Example:
        >>> tfplace.configure_gpus(memory_growth=True)  # doctest: +SKIP
        GPUConfig(visible=(0, 1), memory_growth=True, memory_limit_mb=None, changed=True)
    """
    _check_bool("memory_growth", memory_growth)
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
    wanted_visible: tuple[int, ...] | None = None
    if visible is not None:
        if isinstance(visible, str) or not isinstance(visible, Sequence):
            raise TypeError(f"visible must be a list of GPU indices, found {visible!r}")
        wanted_visible = tuple(_check_count("visible[i]", v, 0) for v in visible)
        if len(set(wanted_visible)) != len(wanted_visible):
            raise ValueError(f"visible lists a GPU twice: {list(visible)}")

    with _lock:
        be = backend or TFConfigBackend()
        physical = be.gpus()
        by_index = {_index(d, i): d for i, d in enumerate(physical)}
        if not physical:
            log.info("configure_gpus: no GPU is visible to TensorFlow; nothing to configure")
            return GPUConfig((), None, None, changed=False)
        if wanted_visible is not None:
            missing = [i for i in wanted_visible if i not in by_index]
            if missing:
                raise DeviceNotFoundError(
                    f"configure_gpus(visible={list(wanted_visible)}): GPU(s) {missing} do not "
                    f"exist; TensorFlow sees physical GPU(s) {sorted(by_index)} "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                    "Use those indices."
                )
        current_visible = tuple(
            _index(d, physical.index(d)) for d in be.get_visible("GPU") if d in physical
        )
        target_visible = wanted_visible if wanted_visible is not None else current_visible
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
        devs = [by_index[i] for i in target_visible]
        current_growth = [be.get_growth(d) for d in devs]
        current_split = [be.get_split(d) for d in devs]

        changes: list[str] = []
        if target_visible != current_visible:
            changes.append(f"visible GPUs {list(current_visible)} -> {list(target_visible)}")
        if memory_growth is not None and any(g != memory_growth for g in current_growth):
            changes.append(f"memory growth -> {memory_growth}")
        if target_limits is not None:
            now = [s[0] if s and len(s) == 1 else None for s in current_split]
            if now != list(target_limits):
                changes.append(f"memory limits (MB) {now} -> {list(target_limits)}")
        if changes and be.runtime_started():
            raise AlreadyInitializedError(
                f"configure_gpus: cannot change {'; '.join(changes)}: TensorFlow's runtime has "
                f"already started and fixes GPU settings at start-up. {_GPU_FIX}"
            )
        if changes:
            try:
                if target_visible != current_visible:
                    be.set_visible([*devs], "GPU")
                for d, g in zip(devs, current_growth, strict=True):
                    if memory_growth is not None and g != memory_growth:
                        be.set_growth(d, memory_growth)
                if target_limits is not None:
                    for d, m in zip(devs, target_limits, strict=True):
                        be.set_split(d, [m])
            except (RuntimeError, ValueError) as err:
                _tf.reraise_if_initialized(err, "configure_gpus", _GPU_FIX)
                raise
            log.info("configure_gpus: %s", "; ".join(changes))
        growth_now = [be.get_growth(d) for d in devs]
        growth: bool | None = (
            memory_growth
            if memory_growth is not None
            else (
                growth_now[0]
                if growth_now and len(set(growth_now)) == 1 and any(growth_now)
                else None
            )
        )
        split_now = [be.get_split(d) for d in devs]
        limits_now = (
            tuple(int(s[0]) for s in split_now if s and s[0] is not None)
            if all(s and len(s) == 1 and s[0] is not None for s in split_now) and split_now
            else None
        )
        return GPUConfig(target_visible, growth, limits_now, changed=bool(changes))


def auto_threads(usable_cores: int) -> tuple[int, int]:
    """The ``(intra_op, inter_op)`` thread counts ``configure_cpus("auto")`` chooses.

    TensorFlow sizes both pools from the host's cores; "auto" sizes them from the cores this
    process may really use (affinity and cgroup quota), so a ``--cpus 4`` container on a
    64-core host runs 4 + 4 threads instead of 64 + 64.
    """
    usable = max(1, usable_cores)
    return usable, usable


def configure_cpus(
    threads: Literal["auto"] | int | None = "auto",
    inter_op_threads: int | None = None,
    virtual_devices: int | None = None,
    *,
    backend: ConfigBackend | None = None,
) -> CPUConfig:
    """Size TensorFlow's CPU thread pools and optionally split the CPU into virtual devices.

    Args:
        threads: intra-op threads: ``"auto"`` (the cores this process may use, from the
            cgroup quota and CPU affinity; TF_NUM_INTRAOP_THREADS wins when set), an int,
            or None to leave TensorFlow's default.
        inter_op_threads: inter-op threads; None means the same as ``threads`` when that is
            ``"auto"``, else TensorFlow's default.
        virtual_devices: split the CPU into this many logical devices (``/CPU:0`` ...), for
            running multi-replica code (MirroredStrategy) on one CPU.
        backend: for tests only: a substitute for ``tf.config``.

    Returns:
        The :class:`CPUConfig` in force afterwards.

    Raises:
        ValueError / TypeError: bad arguments.
        AlreadyInitializedError: different settings after the runtime started.

    Example:
        >>> tfplace.configure_cpus("auto", virtual_devices=2)  # doctest: +SKIP
        CPUConfig(intra_op_threads=2, inter_op_threads=2, virtual_devices=2, changed=True)
    """
    if threads != "auto" and threads is not None:
        _check_count("threads", threads)
    if inter_op_threads is not None:
        _check_count("inter_op_threads", inter_op_threads)
    if virtual_devices is not None:
        _check_count("virtual_devices", virtual_devices)
    intra: int | None
    inter: int | None = inter_op_threads
    if threads == "auto":
        from tfplace._inventory import inventory

        inv = inventory()
        auto_intra, auto_inter = auto_threads(inv.cpu.usable_cores)
        env_intra = inv.env_value("TF_NUM_INTRAOP_THREADS")
        env_inter = inv.env_value("TF_NUM_INTEROP_THREADS")
        intra = None if env_intra else auto_intra
        if inter is None and not env_inter:
            inter = auto_inter
    else:
        intra = threads

    with _lock:
        be = backend or TFConfigBackend()
        started = be.runtime_started()
        cur_intra, cur_inter = be.get_threads()
        cpus = be.cpus()
        if started:
            cur_virtual = be.logical_count("CPU")
        else:
            split = be.get_split(cpus[0]) if cpus else None
            cur_virtual = len(split) if split else 1
        changes: list[str] = []
        if intra is not None and intra != cur_intra:
            changes.append(f"intra-op threads {cur_intra or 'default'} -> {intra}")
        if inter is not None and inter != cur_inter:
            changes.append(f"inter-op threads {cur_inter or 'default'} -> {inter}")
        if virtual_devices is not None and virtual_devices != cur_virtual:
            changes.append(f"virtual CPU devices {cur_virtual} -> {virtual_devices}")
        if changes and started:
            raise AlreadyInitializedError(
                f"configure_cpus: cannot change {'; '.join(changes)}: TensorFlow's runtime has "
                f"already started and fixes thread pools and devices at start-up. {_CPU_FIX}"
            )
        if changes:
            try:
                be.set_threads(
                    intra if intra != cur_intra else None, inter if inter != cur_inter else None
                )
                if virtual_devices is not None and virtual_devices != cur_virtual and cpus:
                    be.set_split(cpus[0], [None] * virtual_devices)
            except (RuntimeError, ValueError) as err:
                _tf.reraise_if_initialized(err, "configure_cpus", _CPU_FIX)
                raise
            log.info("configure_cpus: %s", "; ".join(changes))
        new_intra, new_inter = be.get_threads()
        return CPUConfig(
            intra_op_threads=new_intra,
            inter_op_threads=new_inter,
            virtual_devices=virtual_devices if virtual_devices is not None else cur_virtual,
            changed=bool(changes),
        )
