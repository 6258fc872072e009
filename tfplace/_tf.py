"""The only module that imports TensorFlow.

Everything else calls :func:`load` inside the functions that need TensorFlow, so
``import tfplace`` stays fast and never starts TensorFlow. TensorFlow's error texts are
matched here, once, and turned into tfplace errors.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tfplace.errors import AlreadyInitializedError

__all__ = [
    "INSTALL_HINT",
    "already_initialized",
    "device_context_factory",
    "is_placement_error",
    "is_resource_exhausted",
    "load",
    "load_keras",
    "reraise_if_initialized",
    "runtime_started",
]

INSTALL_HINT = (
    'pip install "tfplace[cpu]" (CPU-only TensorFlow), "tfplace[gpu]" (TensorFlow with CUDA '
    'libraries) or "tfplace[tensorflow]"'
)

_lock = threading.Lock()
_tf: ModuleType | None = None

# Substrings of TensorFlow's RuntimeError texts when a setting is changed after start-up.
_AFTER_START_MARKERS = (
    "cannot be modified after being initialized",
    "cannot be modified after initialization",
    "must be configured at program startup",
    "Collective ops must be configured",
)


def load() -> ModuleType:
    """Import TensorFlow once and return the module.

    Raises:
        ImportError: TensorFlow is not installed; the message names the pip command.
    """
    global _tf
    if _tf is not None:
        return _tf
    with _lock:
        if _tf is None:
            try:
                import tensorflow as tf
            except ImportError as err:
                raise ImportError(
                    f"tfplace needs TensorFlow, which is not installed ({err}). "
                    f"Install it with: {INSTALL_HINT}."
                ) from err
            _tf = tf
    return _tf


def load_keras() -> ModuleType:
    """Return the Keras module TensorFlow uses: ``tf_keras`` when legacy Keras is on."""
    tf = load()
    keras: ModuleType = tf.keras
    # tf.keras is a lazy loader; touching an attribute resolves it to the real module.
    name = getattr(keras, "__name__", "")
    if name.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras as k3

    if getattr(keras, "Model", None) is getattr(k3, "Model", None):
        return k3
    return keras


def runtime_started() -> bool:
    """Whether TensorFlow's runtime (its eager context) has started in this process.

    Never starts it: when TensorFlow is not imported yet, the answer is False.
    """
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover - TensorFlow layout changed
        return False
    ctx = context.context_safe()
    return ctx is not None and getattr(ctx, "_context_handle", None) is not None


def already_initialized(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's "cannot be modified after initialization" error."""
    text = str(err)
    return isinstance(err, RuntimeError | ValueError) and any(
        marker in text for marker in _AFTER_START_MARKERS
    )


def reraise_if_initialized(err: BaseException, what: str, fix: str) -> None:
    """Raise :class:`AlreadyInitializedError` chained to ``err`` if it is the start-up error."""
    if already_initialized(err):
        raise AlreadyInitializedError(
            f"{what}: TensorFlow's runtime has already started ({err}). {fix}"
        ) from err


def is_placement_error(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's failure to place an op on an explicit device."""
    text = str(err)
    return "Could not satisfy explicit device specification" in text or (
        "no supported kernel" in text
    )


def is_resource_exhausted(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from TensorFlow."""
    if "tensorflow" in sys.modules:
        tf = load()
        if isinstance(err, tf.errors.ResourceExhaustedError):
            return True
    text = str(err)
    return "OOM when allocating" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text


def device_context_factory() -> Callable[[str], Any]:
    """Return a function ``name -> context manager`` equivalent to ``tf.device(name)``.

    In eager mode it goes straight to the eager context's device scope, skipping the
    dispatch layers of ``tf.device`` (which is what keeps ``on_cpu``/``on_gpu`` as cheap
    as a raw ``tf.device``); inside a ``tf.function`` it uses the graph's device scope,
    exactly as ``tf.device`` does.
    """
    tf = load()
    try:
        from tensorflow.python.eager import context
        from tensorflow.python.framework import ops
    except ImportError:  # pragma: no cover - TensorFlow layout changed
        device: Callable[[str], Any] = tf.device
        return device

    executing_eagerly = context.executing_eagerly
    eager_context = context.context
    get_default_graph = ops.get_default_graph
    tf_device = tf.device

    def factory(name: str) -> Any:
        if executing_eagerly():
            return eager_context().device(name)
        if ops.inside_function():
            return get_default_graph().device(name)
        return tf_device(name)

    return factory
