"""Loading TensorFlow and Keras, and reading TensorFlow's errors.

:func:`load` is the one ``import tensorflow`` of the library; :func:`load_keras` picks the
Keras that ``tf.keras`` stands for. TensorFlow's error texts are matched here, once, and
turned into tfplace errors or plain answers.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from types import ModuleType

from tfplace.errors import AlreadyInitializedError, TfplaceWarning

__all__ = [
    "INSTALL_HINT",
    "already_initialized",
    "is_already_exists",
    "is_deadline_exceeded",
    "is_placement_error",
    "is_resource_exhausted",
    "keras_of",
    "load",
    "load_keras",
    "nest",
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


#: The values of TF_USE_LEGACY_KERAS that make TensorFlow route tf.keras to tf_keras.
_LEGACY_TRUE = ("1", "true", "True")


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


def load_keras(*, stacklevel: int = 2) -> ModuleType:
    """Return the Keras module ``tf.keras`` stands for: ``tf_keras`` or Keras 3.

    TensorFlow picks ``tf_keras`` when ``TF_USE_LEGACY_KERAS`` is ``1``/``true``/``True``,
    else the ``keras`` package. This function applies the same rule itself, without touching
    ``tf.keras``: when that variable is set but tf_keras is not installed, ``tf.keras`` raises
    ``ImportError: Keras cannot be imported`` and every later use raises ``RecursionError``
    (TensorFlow's lazy loader is left half-initialised). Ray Train sets the variable in every
    worker, and there ``import keras`` still gives Keras 3, the only Keras the process can
    use, so that is what this returns, with a :class:`~tfplace.errors.TfplaceWarning`.

    Args:
        stacklevel: the frame the warning points at (2: the caller; public functions that
            call this pass 3 so that it points at the user's line).

    Raises:
        ImportError: TensorFlow, or the Keras it needs, is not installed; the message names
            the pip command.

    Warns:
        TfplaceWarning: ``TF_USE_LEGACY_KERAS`` asks for tf_keras, which is not installed;
            Keras 3 is used instead.

    Example:
        >>> from tfplace import _tf
        >>> _tf.load_keras().__name__ in ("keras", "tf_keras")
        True
    """
    load()
    # The variable TensorFlow's own KerasLazyLoader reads, read here at the same moment so
    # both agree; the inventory reports it (Inventory.keras) but may have been taken earlier.
    legacy = os.environ.get("TF_USE_LEGACY_KERAS")
    if legacy in _LEGACY_TRUE:
        try:
            import tf_keras
        except ImportError as err:
            legacy_error: ImportError | None = err
        else:
            module: ModuleType = tf_keras
            return module
    else:
        legacy_error = None
    try:
        import keras
    except ImportError as err:
        if legacy_error is not None:
            raise ImportError(
                f"TF_USE_LEGACY_KERAS={legacy} asks TensorFlow for tf_keras, which is not "
                f"installed ({legacy_error}), and Keras 3 is not installed either ({err}). "
                'Fix: pip install "tf-keras" for legacy Keras, or pip install "keras>=3" '
                "and unset TF_USE_LEGACY_KERAS."
            ) from err
        raise ImportError(
            f"TensorFlow needs the keras package, which is not installed ({err}). "
            'Fix: pip install "keras>=3" (or pip install "tf-keras" and set '
            "TF_USE_LEGACY_KERAS=1 for legacy Keras)."
        ) from err
    if legacy_error is not None:
        warnings.warn(
            f"TF_USE_LEGACY_KERAS={legacy} asks for legacy Keras (tf_keras), but tf_keras is "
            "not installed, so tf.keras cannot be used in this process (Ray Train sets this "
            "variable in every worker). tfplace uses Keras 3 (import keras) instead. Fix: "
            'pip install "tf-keras" if your code uses tf.keras; if it uses import keras, '
            'remove the variable first (os.environ.pop("TF_USE_LEGACY_KERAS", None) at the '
            "top of the training function).",
            TfplaceWarning,
            stacklevel=stacklevel,
        )
    modern: ModuleType = keras
    return modern


def keras_of(model: object) -> ModuleType:
    """The Keras package a model comes from: ``keras`` (Keras 3) or ``tf_keras``."""
    root = type(model).__module__.split(".")[0]
    if root in ("keras", "tf_keras"):
        return importlib.import_module(root)
    return load_keras(stacklevel=3)


def nest() -> ModuleType:
    """``tf.nest``: ``is_nested`` / ``map_structure`` over Keras's nested values."""
    module: ModuleType = load().nest
    return module


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
    return (
        "Could not satisfy explicit device specification" in text
        or "Could not satisfy device specification" in text
        or "no supported kernel" in text
    )


def is_resource_exhausted(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from TensorFlow."""
    if "tensorflow" in sys.modules:
        tf = load()
        if isinstance(err, tf.errors.ResourceExhaustedError):
            return True
    text = str(err)
    return "OOM when allocating" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text


def is_already_exists(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's ``AlreadyExistsError`` (e.g. a key set twice)."""
    return "tensorflow" in sys.modules and isinstance(err, load().errors.AlreadyExistsError)


def is_deadline_exceeded(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's ``DeadlineExceededError`` (a wait that timed out)."""
    return "tensorflow" in sys.modules and isinstance(err, load().errors.DeadlineExceededError)
