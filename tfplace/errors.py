"""Exceptions and warnings raised by tfplace.

The hierarchy::

    Exception
    └── TfplaceError                     every error tfplace raises on purpose
        ├── AlreadyInitializedError      (also RuntimeError)
        ├── DeviceNotFoundError          (also LookupError)
        ├── ClusterConfigError           (also ValueError)
        ├── BatchSizeError               (also RuntimeError)
        └── BarrierTimeoutError          (also TimeoutError)

    Warning
    └── TfplaceWarning                   something the user should change in their code
        └── DeviceFallbackWarning        a device scope fell back to another device

Bad arguments to a public function are plain :class:`ValueError` or :class:`TypeError`,
raised before anything touches TensorFlow. Errors that come from TensorFlow are chained
(``raise ... from err``) so the original traceback is never lost.
"""

from __future__ import annotations

__all__ = [
    "AlreadyInitializedError",
    "BarrierTimeoutError",
    "BatchSizeError",
    "ClusterConfigError",
    "DeviceFallbackWarning",
    "DeviceNotFoundError",
    "TfplaceError",
    "TfplaceWarning",
]


class TfplaceError(Exception):
    """Base class of every error tfplace raises on purpose.

    Example:
        >>> try:
        ...     with tfplace.on_cpu(99):  # no machine has a hundredth CPU device
        ...         pass
        ... except tfplace.TfplaceError as err:
        ...     print(type(err).__name__, "-", err)
        DeviceNotFoundError - on_cpu(99): only ... CPU device(s) exist (visible: ...). Use a
        lower index, or split the CPU with tfplace.configure_cpus(virtual_devices=N) before
        TensorFlow starts.
    """


class AlreadyInitializedError(TfplaceError, RuntimeError):
    """Raised when a setting can only change before TensorFlow's runtime starts.

    TensorFlow fixes devices, memory growth, virtual devices, thread pools and collective
    ops when its runtime starts (at the first tensor, model, ``list_logical_devices`` or
    distribution strategy). Asking for *different* settings afterwards raises this; asking
    for the settings already in force is a no-op.
    """


class DeviceNotFoundError(TfplaceError, LookupError):
    """Raised when a strict device request names a device that is not visible."""


class ClusterConfigError(TfplaceError, ValueError):
    """Raised when a cluster description (TF_CONFIG, SLURM, an explicit cluster) is invalid.

    The message names the source (for example ``TF_CONFIG``) and the field at fault.
    """


class BatchSizeError(TfplaceError, RuntimeError):
    """Raised by ``find_batch_size`` when even the smallest batch size runs out of memory."""


class BarrierTimeoutError(TfplaceError, TimeoutError):
    """Raised when :func:`tfplace.barrier` gives up: some worker did not arrive in time.

    The message names the barrier, the workers the coordination service reported as not
    arrived (when TensorFlow says), and the fix.
    """


class TfplaceWarning(UserWarning):
    """Base class of tfplace warnings: something the user should change in their code."""


class DeviceFallbackWarning(TfplaceWarning):
    """Emitted when ``on_gpu(strict=False)`` or ``configure_gpus(visible=...)`` falls back to
    the CPU because the GPU is absent (the one policy; ``strict=True`` raises instead)."""


def one_line(err: BaseException, width: int = 300) -> str:
    """An error as one line for a message: its first line, shortened, or its type's name.

    Not exported: tfplace's own messages quote other errors through it.

    Example:
        >>> one_line(RuntimeError("lost the peer\\ntraceback ..."))
        'lost the peer'
        >>> one_line(KeyError())
        'KeyError'
    """
    text = str(err).strip()
    return text.splitlines()[0][:width] if text else type(err).__name__
