"""Device scopes: ``on_cpu``, ``on_gpu`` and ``on_device``.

Each is a lower-case class usable three ways, like ``threadpoolctl.threadpool_limits``::

    with tfplace.on_cpu():          # a block
        ...

    @tfplace.on_gpu()               # a decorator: the scope applies at each call
    def step(x): ...

Scopes nest, restore the previous device on exceptions, work inside ``tf.function`` and
are thread-safe (each thread has its own stack). Entering one costs about what a raw
``tf.device`` costs (see ``benchmarks/bench_placement.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from tfplace import _tf
from tfplace._decide.devices import gpu_fallback, wrong_gpu_index
from tfplace.errors import DeviceFallbackWarning, DeviceNotFoundError

__all__ = ["on_cpu", "on_device", "on_gpu"]

log = logging.getLogger("tfplace")
F = TypeVar("F", bound=Callable[..., Any])

_tls = threading.local()
_ops: tuple[Callable[[str], Any], Callable[..., None]] | None = None
_devices: dict[str, int] = {}  # logical device counts, fixed once the runtime has started
_devices_lock = threading.Lock()


def _scope_ops() -> tuple[Callable[[str], Any], Callable[..., None]]:
    global _ops
    if _ops is None:
        _ops = _tf.device_scope_ops()
    return _ops


def _count(kind: str) -> int:
    """Logical devices of a kind (starts the runtime, as entering any device scope does)."""
    n = _devices.get(kind)
    if n is None:
        with _devices_lock:
            n = len(_tf.logical_device_names(kind))
            _devices[kind] = n
    return n


def _visible() -> str:
    names = [f"/GPU:{i}" for i in range(_count("GPU"))] + [
        f"/CPU:{i}" for i in range(_count("CPU"))
    ]
    return ", ".join(names)


_CPU_NAMES = tuple(f"/CPU:{i}" for i in range(16))
_GPU_NAMES = tuple(f"/GPU:{i}" for i in range(16))


def _check_index(fn: str, index: object) -> int:
    if type(index) is int and index >= 0:  # the common case, checked cheaply
        return index
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{fn}(index) takes an int, found {index!r}")
    if index < 0:
        raise ValueError(f"{fn}(index) must be >= 0, found {index}")
    return index


class _Scope:
    """Shared machinery: resolve a device name at enter, keep a per-thread stack."""

    __slots__ = ("_name",)

    def _resolve(self) -> str:
        raise NotImplementedError

    def __enter__(self) -> str:
        name = self._resolve()
        token = (_ops or _scope_ops())[0](name)
        try:
            stack = _tls.stack
        except AttributeError:
            stack = _tls.stack = []
        stack.append(token)
        return name

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        (_ops or _scope_ops())[1](_tls.stack.pop(), exc_type, exc, tb)
        if exc is not None and _tf.is_placement_error(exc):
            raise DeviceNotFoundError(
                f"an op inside {self!r} has no kernel for that device ({exc}). Wrap that op "
                "in tfplace.on_cpu(), or keep soft device placement on."
            ) from exc

    def _clone(self) -> _Scope:
        raise NotImplementedError

    def __call__(self, func: F) -> F:
        """Use the scope as a decorator: every call of ``func`` runs inside it."""
        if not callable(func):
            raise TypeError(f"{type(self).__name__}(...) decorates a callable, found {func!r}")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._clone():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class on_device(_Scope):
    """Place the ops of a block (or of each call of a decorated function) on ``name``.

    Args:
        name: a TensorFlow device name such as ``"/GPU:1"``, ``"/CPU:0"`` or
            ``"/job:worker/task:1/device:CPU:0"``. It is passed to ``tf.device`` as is.

    Raises:
        TypeError: ``name`` is not a string.

    Example:
        Entering gives the device name; ops created in the block run there.

        >>> with tfplace.on_device("/CPU:0") as device:
        ...     print(device)
        /CPU:0
    """

    __slots__ = ()

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"on_device(name) takes a device name string, found {name!r}")
        self._name = name

    def _resolve(self) -> str:
        return self._name

    def _clone(self) -> on_device:
        return on_device(self._name)

    def __repr__(self) -> str:
        return f"on_device({self._name!r})"


class on_cpu(_Scope):
    """Place the ops of a block (or of each call of a decorated function) on a CPU device.

    Args:
        index: the logical CPU device; only 0 exists unless the CPU was split with
            ``configure_cpus(virtual_devices=N)``.

    Raises:
        TypeError / ValueError: ``index`` is not a non-negative int.
        DeviceNotFoundError: at enter, when ``/CPU:<index>`` does not exist.

    Example:
        >>> @tfplace.on_cpu()
        ... def preprocess(images):
        ...     return images / 255  # runs on /CPU:0 at every call
        >>> preprocess(510)
        2.0
        >>> with tfplace.on_cpu() as device:
        ...     print(device)
        /CPU:0
    """

    __slots__ = ("_index",)

    def __init__(self, index: int = 0) -> None:
        self._index = _check_index("on_cpu", index)
        self._name = _CPU_NAMES[index] if index < 16 else f"/CPU:{index}"

    def _resolve(self) -> str:
        if self._index and self._index >= _count("CPU"):
            raise DeviceNotFoundError(
                f"on_cpu({self._index}): only {_count('CPU')} CPU device(s) exist "
                f"(visible: {_visible()}). Use a lower index, or split the CPU with "
                "tfplace.configure_cpus(virtual_devices=N) before TensorFlow starts."
            )
        return self._name

    def _clone(self) -> on_cpu:
        return on_cpu(self._index)

    def __repr__(self) -> str:
        return f"on_cpu({self._index})"


class on_gpu(_Scope):
    """Place the ops of a block (or of each call of a decorated function) on a GPU.

    TensorFlow's own ``tf.device("/GPU:0")`` silently runs on the CPU when there is no such
    GPU. ``on_gpu`` says so. On a machine without any GPU it falls back to ``/CPU:0`` with a
    :class:`~tfplace.errors.DeviceFallbackWarning`, or raises with ``strict=True``; on a
    machine that has GPUs, an index past the last one always raises (a wrong index). This is
    the one GPU policy (:data:`tfplace._decide.devices.GPU_POLICY`), which
    :func:`~tfplace.configure_gpus` follows too.

    Args:
        index: the logical GPU index (after ``configure_gpus(visible=...)``).
        strict: raise instead of falling back to the CPU when no GPU is visible.

    Raises:
        TypeError / ValueError: ``index`` is not a non-negative int.
        DeviceNotFoundError: at enter: the machine has GPUs but not this one; or, with
            ``strict=True``, no GPU is visible.

    Example:
        >>> @tfplace.on_gpu(strict=True)
        ... def predict(model, x):
        ...     return model(x)  # on /GPU:0; with no GPU visible, each call raises
        >>> with tfplace.on_gpu() as device:  # the result depends on the machine's GPUs
        ...     print(device)  # doctest: +SKIP
        /GPU:0
    """

    __slots__ = ("_index", "_strict")

    def __init__(self, index: int = 0, *, strict: bool = False) -> None:
        self._index = _check_index("on_gpu", index)
        if not isinstance(strict, bool):
            raise TypeError(f"on_gpu(strict=...) takes True or False, found {strict!r}")
        self._strict = strict
        self._name = _GPU_NAMES[index] if index < 16 else f"/GPU:{index}"

    def _resolve(self) -> str:
        gpus = _count("GPU")
        if self._index < gpus:
            return self._name
        if gpus:  # a wrong index, not a missing GPU: raises whatever strict says
            wrong_gpu_index(
                f"on_gpu({self._index})",
                [self._index],
                range(gpus),
                f"only logical GPU(s) (visible devices: {_visible()})",
            )
        message = gpu_fallback(
            f"on_gpu({self._index})",
            f"no GPU is visible (visible devices: {_visible()})"
            if self._strict
            else "no GPU is visible",
            strict=self._strict,
            strict_call=f"on_gpu({self._index}, strict=True)",
            fix="Run `tfplace doctor` to see why, "
            + f"or on_gpu({self._index}, strict=False) to fall back to the CPU.",
            instead="running on /CPU:0 instead",
        )
        warnings.warn(message, DeviceFallbackWarning, stacklevel=3)
        return "/CPU:0"

    def _clone(self) -> on_gpu:
        return on_gpu(self._index, strict=self._strict)

    def __repr__(self) -> str:
        return f"on_gpu({self._index}, strict={self._strict})"
