"""Device memory: ``memory_info`` and the ``track_memory`` block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tfplace import _tf

__all__ = ["MemoryInfo", "MemoryPeak", "memory_info", "track_memory"]


@dataclass(frozen=True)
class MemoryInfo:
    """Memory TensorFlow's allocator holds on a device, in MB (zeros where it does not track)."""

    device: str
    current_mb: float
    peak_mb: float


@dataclass
class MemoryPeak:
    """Filled in when a :func:`track_memory` block ends."""

    device: str
    peak_mb: float = field(default=0.0)
    current_mb: float = field(default=0.0)


def _name(device: str) -> str:
    if not isinstance(device, str) or not device.strip():
        raise TypeError(f"device must be a device name like 'GPU:0', found {device!r}")
    return device.strip().removeprefix("/").removeprefix("device:")


def memory_info(device: str = "GPU:0") -> MemoryInfo:
    """Current and peak memory of ``device`` (``"GPU:0"``, ``"CPU:0"``), in MB.

    On CPUs TensorFlow tracks few allocations; the numbers are often zeros there, and are
    zeros whenever the CPU allocator keeps no statistics (TensorFlow 2.21's default: set
    ``TF_CPU_ALLOCATOR_USE_BFC=true`` before TensorFlow starts to have them).

    Raises:
        DeviceNotFoundError: the device does not exist.

    Example:
        >>> tfplace.memory_info("CPU:0")  # "GPU:0" (the default) on a GPU machine
        MemoryInfo(device='CPU:0', current_mb=..., peak_mb=...)
    """
    from tfplace.errors import DeviceNotFoundError

    name = _name(device)
    try:
        info = _tf.memory_stats(name)
    except ValueError as err:
        raise DeviceNotFoundError(
            f"memory_info({device!r}): no such device ({err}). Visible: "
            + ", ".join(_tf.logical_device_names())
        ) from err
    if info is None:  # the device exists, its allocator keeps no statistics
        return MemoryInfo(name, 0.0, 0.0)
    return MemoryInfo(name, info["current"] / 2**20, info["peak"] / 2**20)


@contextmanager
def track_memory(device: str = "GPU:0") -> Iterator[MemoryPeak]:
    """Measure the peak memory of a block: resets the device's peak, reads it at the end.

    Example:
        >>> with tfplace.track_memory("CPU:0") as mem:  # "GPU:0" (the default) on a GPU machine
        ...     pass  # the work to measure, e.g. model.fit(ds, epochs=1)
        >>> mem
        MemoryPeak(device='CPU:0', peak_mb=..., current_mb=...)
    """
    name = _name(device)
    memory_info(name)  # raises DeviceNotFoundError for an unknown device
    _tf.reset_memory_stats(name)
    result = MemoryPeak(name)
    try:
        yield result
    finally:
        info = memory_info(name)
        result.peak_mb, result.current_mb = info.peak_mb, info.current_mb
