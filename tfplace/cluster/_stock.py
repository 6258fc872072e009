"""Keras 3's own ``ModelCheckpoint`` and ``BackupAndRestore`` under several workers: a warning.

Every worker runs the same callbacks, so Keras's two stock callbacks make every worker write
the same files (corrupt ``.keras`` files, ``FileExistsError``, ``unable to lock file``). Keras
3 has no public hook that sees ``fit``'s callbacks (the strategy never does), so while a
multi-worker strategy with more than one worker exists, the two classes' ``on_train_begin``
is wrapped with a check that warns once per class, then calls Keras's own method.

- Only where the stock behaviour is in force: tfplace's own callbacks, and user subclasses
  that write their own way (they override Keras's file hooks), are not flagged.
- Restored when no longer needed: a class is unwrapped as soon as it has warned, and both
  once every strategy that asked for the check has been garbage-collected.
- Any multi-worker strategy: tfplace's own (``pick_strategy``), and one the user built with
  ``tf.distribute.MultiWorkerMirroredStrategy`` once tfplace sees it (``global_batch_size``,
  ``prepare_dataset``, a ``tfplace.callbacks`` callback).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from tfplace import _tf
from tfplace.errors import TfplaceWarning

__all__ = ["StockCallbackWarning", "is_watching", "unwatch_all", "watch"]


class StockCallbackWarning(TfplaceWarning):
    """Keras's own ``ModelCheckpoint`` / ``BackupAndRestore`` under several workers."""


_lock = threading.RLock()  # a finalizer may run during garbage collection inside the lock
_undo: dict[str, Callable[[], None]] = {}  # class name -> put back Keras's own method
_watched: set[int] = set()  # ids of the live strategies that asked for the check
_flagged: set[str] = set()  # class names warned about in this process


def watch(strategy: object) -> None:
    """Check Keras's stock callbacks while ``strategy`` lives, if it trains several workers.

    Does nothing for any other strategy, for tf_keras (its callbacks write per worker) or for
    a class already warned about.

    Example:
        >>> watch(None)  # no strategy: nothing to check
        >>> is_watching()
        False
    """
    if strategy is None or _tf.strategy_num_workers(strategy) <= 1:
        return
    key = id(strategy)
    with _lock:
        if key in _watched:
            return
        with contextlib.suppress(TypeError):  # not weak-referable: stays until unwatch_all()
            weakref.finalize(strategy, _release, key)
        _watched.add(key)
        for name, cls in _tf.stock_callback_classes().items():
            if name not in _undo and name not in _flagged:
                _undo[name] = _tf.wrap_method(
                    cls, "on_train_begin", functools.partial(_flagging, name=name, stock=cls)
                )


def is_watching() -> bool:
    """Whether a stock callback class is wrapped now."""
    with _lock:
        return bool(_undo)


def unwatch_all() -> None:
    """Put back Keras's own methods now and forget every strategy (and what was flagged)."""
    with _lock:
        _restore(list(_undo))
        _watched.clear()
        _flagged.clear()


def _release(key: int) -> None:
    with _lock:
        _watched.discard(key)
        if not _watched:
            _restore(list(_undo))


def _restore(names: list[str]) -> None:
    for name in names:
        undo = _undo.pop(name, None)
        if undo is not None:
            undo()


def _flagging(original: Any, *, name: str, stock: type) -> Any:
    def on_train_begin(self: Any, logs: Any = None) -> Any:
        strategy: Any = getattr(getattr(self, "model", None), "distribute_strategy", None)
        if (
            not getattr(self, "_tfplace_safe", False)
            and _tf.writes_like_stock(self, stock)
            and _tf.strategy_num_workers(strategy) > 1
        ):
            with _lock:
                first = name not in _flagged
                _flagged.add(name)
                _restore([name])  # said once: nothing more to check for this class
            if first:
                warnings.warn(
                    f"keras.callbacks.{name} under a multi-worker strategy: every worker "
                    "writes the same files, which corrupts them or fails (BadZipFile, "
                    "FileExistsError, 'unable to lock file'). Fix: use "
                    f"tfplace.callbacks.{name} (same arguments): only the chief writes, "
                    "atomically.",
                    StockCallbackWarning,
                    stacklevel=2,
                )
        return original(self, logs)

    on_train_begin.__wrapped__ = original  # type: ignore[attr-defined]
    on_train_begin.__doc__ = original.__doc__
    return on_train_begin
