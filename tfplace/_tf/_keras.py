"""Keras calls (the session, the global dtype policy) and the Keras internals tfplace relies
on, each behind a named function that probes for it first (:mod:`tfplace._tf._probes`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from tfplace._tf._core import load_keras
from tfplace._tf._probes import internal_missing, internal_text
from tfplace.errors import TfplaceError, TfplaceWarning

__all__ = [
    "CHECKPOINT_HOOKS",
    "check_checkpoint_hooks",
    "clear_initial_epoch",
    "clear_keras_session",
    "flat_layers",
    "keras_policy",
    "set_initial_epoch",
    "set_keras_policy",
    "skip_train_steps",
    "steps_per_execution",
    "stock_callback_classes",
    "wrap_method",
    "writes_like_stock",
]


def clear_keras_session() -> None:
    """``keras.backend.clear_session()`` of the Keras flavour in use (frees models, graphs)."""
    load_keras(stacklevel=3).backend.clear_session()


def keras_policy() -> str:
    """The name of Keras's global dtype policy (``"float32"``, ``"mixed_float16"``, ...)."""
    return str(load_keras(stacklevel=3).mixed_precision.global_policy().name)


def set_keras_policy(name: str) -> None:
    """``keras.mixed_precision.set_global_policy(name)``."""
    load_keras(stacklevel=3).mixed_precision.set_global_policy(name)


# -- Keras internals, each behind a probe (see tfplace._tf._probes) ----------------------------


class _InitialCounters:
    """What tf_keras's ``fit`` asks ``model._training_state`` for: where to start."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch: Any, initial_epoch: int, mode: Any = None
    ) -> tuple[int, int]:
        return self.epoch, 0  # the batches already trained are skipped (skip_train_steps)

    def maybe_load_initial_epoch_from_ckpt(self, initial_epoch: int, mode: Any = None) -> int:
        return self.epoch


def _epoch_attribute(legacy: bool) -> str:
    return "_training_state" if legacy else "_initial_epoch"


def set_initial_epoch(model: Any, epoch: int, *, legacy: bool) -> bool:
    """Make the running ``fit`` of ``model`` start at ``epoch`` (called in ``on_train_begin``).

    Keras 3's ``fit`` reads ``model._initial_epoch`` after ``on_train_begin``; tf_keras's asks
    ``model._training_state``. Where the attribute is missing, says so once and changes
    nothing.

    Args:
        model: the model being fitted.
        epoch: the epoch to start at.
        legacy: the model is a tf_keras model.

    Returns:
        Whether ``fit`` will start at ``epoch``.
    """
    name = _epoch_attribute(legacy)
    if not hasattr(model, name):
        internal_missing("initial_epoch", f"{type(model).__name__} has no attribute {name}")
        return False
    setattr(model, name, _InitialCounters(epoch) if legacy else epoch)
    return True


def clear_initial_epoch(model: Any, *, legacy: bool) -> None:
    """Undo :func:`set_initial_epoch`: the next ``fit`` starts where its arguments say."""
    name = _epoch_attribute(legacy)
    if hasattr(model, name):
        setattr(model, name, None)


def steps_per_execution(model: Any) -> int:
    """How many batches one call of ``model``'s train function runs (``steps_per_execution``).

    Keras 3 holds an int, tf_keras a ``tf.Variable``; 1 where the model has none.
    """
    value: Any = getattr(model, "steps_per_execution", None)
    if hasattr(value, "numpy"):
        value = value.numpy()
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def skip_train_steps(model: Any, batches: int) -> Callable[[], None] | None:
    """Make the next ``batches`` batches of the running ``fit`` drawn without training.

    ``fit`` calls ``model.train_function(iterator)`` once per ``steps_per_execution``
    batches; this replaces it with a function that draws the batches (the last call only
    those left) and returns no logs, and puts the original back after the last skipped call.
    Called in ``on_train_begin`` (``fit`` has built its train function by then).

    Returns:
        A function that puts the original back at once (call it in ``on_train_end``; it does
        nothing once the skipping is over), or None where ``model.train_function`` is missing
        (said once): then nothing is skipped.
    """
    original = getattr(model, "train_function", None)
    if not callable(original):
        internal_missing(
            "train_function",
            f"{type(model).__name__}.train_function is {original!r} when fit calls "
            "on_train_begin, not a function",
        )
        return None
    per_call = max(1, steps_per_execution(model))
    left = max(1, batches)  # a last, partial execution draws only what is left of the epoch
    restored = False

    def restore() -> None:
        nonlocal restored
        if not restored:
            restored = True
            model.train_function = original

    def skipping(iterator: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal left
        draw = min(per_call, left)
        left -= draw
        if left <= 0:
            restore()
        for _ in range(draw):
            next(iterator)
        return {}

    model.train_function = skipping
    return restore


#: The methods of Keras's ``ModelCheckpoint`` that tfplace's subclass overrides.
CHECKPOINT_HOOKS = ("_get_file_path", "_save_model")


def check_checkpoint_hooks(base: type) -> None:
    """Check that Keras's ``ModelCheckpoint`` class ``base`` has the hooks tfplace overrides.

    Without them the override would never run and every worker would write the real file,
    so this refuses (before training) instead of warning.

    Raises:
        TfplaceError: a hook is missing; the message names it, the versions and what works.
    """
    missing = [hook for hook in CHECKPOINT_HOOKS if not callable(getattr(base, hook, None))]
    if missing:
        raise TfplaceError(
            internal_text(
                "checkpoint_hooks",
                f"{base.__module__}.{base.__qualname__} has no {', '.join(missing)}",
            )
        )


def flat_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, nested ones included (``model._flatten_layers()``).

    Where that internal is missing, says so once and walks the public ``layers`` lists.
    """
    flatten = getattr(model, "_flatten_layers", None)
    if callable(flatten):
        return list(flatten())
    if hasattr(model, "layers"):
        internal_missing("flatten_layers", f"{type(model).__name__} has no _flatten_layers()")
    found, stack = [model], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def stock_callback_classes() -> dict[str, type]:
    """Keras 3's own ``ModelCheckpoint`` and ``BackupAndRestore`` classes, by name.

    Empty under tf_keras (its callbacks already write per worker). A class that is missing, or
    has no ``on_train_begin`` to wrap, is left out and said once.
    """
    with warnings.catch_warnings():  # a TF_USE_LEGACY_KERAS warning is not ours to give here
        warnings.simplefilter("ignore", TfplaceWarning)
        keras = load_keras()
    if keras.__name__ != "keras":
        return {}
    found: dict[str, type] = {}
    for name in ("ModelCheckpoint", "BackupAndRestore"):
        cls = getattr(keras.callbacks, name, None)
        if isinstance(cls, type) and callable(getattr(cls, "on_train_begin", None)):
            found[name] = cls
        else:
            internal_missing("stock_callbacks", f"keras.callbacks.{name} is {cls!r}")
    return found


def wrap_method(cls: type, name: str, make: Callable[[Any], Any]) -> Callable[[], None]:
    """Replace ``cls.<name>`` with ``make(original)``; return the function that undoes it.

    The undo puts back exactly what was there: the class's own attribute, or none (the
    method was inherited), and does nothing the second time.
    """
    own = name in vars(cls)
    saved = vars(cls).get(name)
    setattr(cls, name, make(getattr(cls, name)))
    done = False

    def undo() -> None:
        nonlocal done
        if done:
            return
        done = True
        if own:
            setattr(cls, name, saved)
        elif name in vars(cls):
            delattr(cls, name)

    return undo


#: Keras's file hooks of each stock callback: a subclass that overrides one writes its own way.
_WRITE_HOOKS = {
    "ModelCheckpoint": ("_get_file_path", "_save_model"),
    "BackupAndRestore": ("_save_model",),
}


def writes_like_stock(callback: object, stock: type) -> bool:
    """Whether ``callback`` (an instance of Keras's ``stock`` class or a subclass) writes its
    files as the stock class does: it overrides none of Keras's file hooks."""
    kind = type(callback)
    return all(
        getattr(kind, hook, None) is getattr(stock, hook, None)
        for hook in _WRITE_HOOKS.get(stock.__name__, ())
    )
