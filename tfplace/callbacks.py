"""Keras callbacks that are safe with several workers: backups, checkpoints, preemption.

``tfplace.callbacks.BackupAndRestore`` and ``tfplace.callbacks.ModelCheckpoint`` take the
main arguments of Keras's callbacks of the same names and are a one-line change:

    keras.callbacks.BackupAndRestore(backup_dir)  ->  tfplace.callbacks.BackupAndRestore(backup_dir)

They work with one process, under tfplace's multi-worker strategy, and with Keras 3 or
tf_keras (``TF_USE_LEGACY_KERAS=1``): the class is built on the ``Callback`` of the Keras that
``tf.keras`` stands for when the callback is created. What they add to Keras's:

- every worker saves (so the collective ops a save may run stay matched), but only the chief
  (``strategy.extended.should_checkpoint``) writes the real location; the others write to a
  private temporary folder that is removed at once;
- a save is atomic: it is written under a temporary name in the same folder and renamed
  into place, so a crash during a save leaves the previous backup usable;
- :class:`BackupAndRestore` restores weights, optimizer state, the epoch AND the step: with
  ``save_freq=<int>`` a restarted run skips the batches it had already trained;
- workers meet at a :func:`tfplace.barrier` before reading a backup and before the backup is
  deleted at the end;
- SIGTERM (a preemption) makes every worker save a backup at the same step and exit with
  :data:`tfplace.cluster._restarts.RESTART_EXIT_CODE` (143), so that the next start resumes.

Why not change Keras's own classes when the multi-worker strategy is active? Keras's
``BackupAndRestore`` keeps its state in files that it overwrites in place and ``rmtree``s at
the end; making it safe means replacing its private methods (``_save_model``,
``_load_model``), which change between Keras releases, and doing that only in some processes
would give one class name two behaviours. An explicit class is a one-line, visible change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace.cluster._restarts import RESTART_EXIT_CODE

__all__ = ["BackupAndRestore", "ModelCheckpoint"]

log = logging.getLogger("tfplace")

_BACKUP = "backup-"
_TMP = ".tmp-backup-"
_META = "state.json"
_BARRIER = "tfplace.callbacks"
_classes: dict[tuple[type, str], type] = {}
_classes_lock = threading.Lock()


class _KerasFlavoured:
    """Instances are of a subclass that also derives from the right Keras base class."""

    _keras_base = "Callback"
    _tfplace_keras = "keras"
    if TYPE_CHECKING:  # provided by the Keras base class at run time
        model: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        keras = _tf.load_keras(stacklevel=3)
        key = (cls, keras.__name__)
        with _classes_lock:
            concrete = _classes.get(key)
            if concrete is None:
                base = getattr(keras.callbacks, cls._keras_base)
                concrete = type(cls.__name__, (cls, base), {"__module__": cls.__module__})
                concrete.__qualname__ = cls.__qualname__
                _classes[key] = concrete
        instance: Any = object.__new__(concrete)
        instance._tfplace_keras = keras.__name__
        return instance


def _strategy(model: Any) -> Any:
    return getattr(model, "distribute_strategy", None)


def _is_writer(model: Any) -> bool:
    """Whether this worker writes the real files (the chief; any single process)."""
    extended = getattr(_strategy(model), "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def _multi_worker(model: Any) -> bool:
    strategy = _strategy(model)
    if strategy is None:
        return False
    return _tf.is_multi_worker(strategy) and (strategy.extended._num_workers > 1)


def _task(model: Any) -> str:
    resolver = getattr(_strategy(model), "cluster_resolver", None)
    return f"{getattr(resolver, 'task_type', 'worker')}/{getattr(resolver, 'task_id', 0)}"


def _tasks(model: Any) -> list[str]:
    resolver = _strategy(model).cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    return [f"{job}/{i}" for job in ("chief", "worker") for i in range(len(spec.get(job, [])))]


def _meet(model: Any, timeout: float = 600.0) -> None:
    if _multi_worker(model):
        from tfplace.cluster._multiworker import barrier

        barrier(timeout=timeout, name=_BARRIER)


def _legacy(keras_module_name: str) -> bool:
    return keras_module_name.startswith("tf_keras")


class BackupAndRestore(_KerasFlavoured):
    """Back up the training state regularly and resume from it after a restart or preemption.

    A drop-in for ``keras.callbacks.BackupAndRestore`` that is safe with several workers (see
    the module docstring). ``backup_dir`` must be a folder every worker can read (a shared
    file system or bucket path), the same in every worker, and not shared with another run.
    It holds ``backup-<n>/`` folders (weights and optimizer state, plus ``state.json`` with the
    epoch and batch); the newest complete one is restored.

    Resuming mid-epoch (``save_freq=<int>``, or a preemption) is exact when the input pipeline
    yields the same batches in the same order on every start: the same data, batch size and
    ``steps_per_execution``, no shuffling or a shuffle with a fixed seed, no randomness that
    depends on how many batches were drawn before.

    Args:
        backup_dir: where the backups live.
        save_freq: ``"epoch"`` (a backup after each epoch) or an int (after every that many
            batches).
        double_checkpoint: keep the previous backup as well as the newest one.
        delete_checkpoint: remove the backups when ``fit`` completes.
        preemption: on SIGTERM, save a backup at the next step every worker can reach and exit
            with the restart code 143 (installed only in the main thread, during ``fit``).
        timeout: seconds the workers wait for each other at the barriers.

    Example:
        >>> import tfplace.callbacks
        >>> backup = tfplace.callbacks.BackupAndRestore("/tmp/run1/backup", save_freq=100)
        >>> backup.save_freq, backup.delete_checkpoint
        (100, True)
    """

    _fits = 0  # fit() calls so far in this process: every worker counts the same

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        *,
        preemption: bool = True,
        timeout: float = 600.0,
    ) -> None:
        super().__init__()
        if not backup_dir:
            raise ValueError("BackupAndRestore: backup_dir is empty; give the backup folder")
        if save_freq != "epoch" and not (
            isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq > 0
        ):
            raise ValueError(
                f"BackupAndRestore(save_freq={save_freq!r}): expected 'epoch' or a positive "
                "number of batches"
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.preemption = preemption
        self.timeout = timeout
        self._lock = threading.Lock()
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._epoch = 0
        self._batch = -1
        self._since_save = 0
        self._skip = 0
        self._next_save = 0
        self._ends = 0  # batch ends seen in this fit (all epochs)
        self._checked = 0  # the last batch end that saw no preemption
        self._flagged = False
        self._stop_at: int | None = None
        self._previous_handler: Any = None
        self._sigterms = 0
        self._preempt_key = ""
        self._original_train_function: Any = None

    # Files.

    def _backups(self) -> list[tuple[int, Path]]:
        root = Path(self.backup_dir)
        if not root.is_dir():
            return []
        found = []
        for entry in root.iterdir():
            number = entry.name.removeprefix(_BACKUP)
            if entry.name.startswith(_BACKUP) and number.isdigit() and (entry / _META).is_file():
                found.append((int(number), entry))
        return sorted(found)

    def _weights_name(self) -> str:
        # tf_keras's .h5 weights leave the optimizer out; its TensorFlow format keeps it.
        return "weights" if _legacy(self._tfplace_keras) else "model.weights.h5"

    def _save(self, epoch: int, batch: int) -> None:
        model = self.model
        writer = _is_writer(model)
        if writer:
            os.makedirs(self.backup_dir, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=_TMP, dir=self.backup_dir)
        else:
            folder = tempfile.mkdtemp(prefix="tfplace-backup-")
        try:
            model.save_weights(os.path.join(folder, self._weights_name()))
            state = {"epoch": epoch, "batch": batch, "save": self._next_save}
            with open(os.path.join(folder, _META), "w") as fh:
                json.dump(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if writer:
                final = os.path.join(self.backup_dir, f"{_BACKUP}{self._next_save:08d}")
                os.rename(folder, final)  # atomic: the backup appears complete or not at all
                keep = 2 if self.double_checkpoint else 1
                for _, old in self._backups()[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            if not writer or os.path.isdir(folder):
                shutil.rmtree(folder, ignore_errors=True)
        log.debug("tfplace: backup %d saved (epoch %d, batch %d)", self._next_save, epoch, batch)
        self._next_save += 1
        self._since_save = 0

    # Keras hooks.

    def on_train_begin(self, logs: Any = None) -> None:
        model = self.model
        if not model.built:
            raise ValueError(
                "BackupAndRestore: the model must be built before fit() (found an unbuilt "
                f"{type(model).__name__}). Fix: give it an Input, or call it on a batch first."
            )
        self._reset_run_state()
        BackupAndRestore._fits += 1  # the base class: one count whatever the subclass
        self._preempt_key = f"tfplace/preempt/{BackupAndRestore._fits}"
        _meet(model, self.timeout)  # nobody reads while the chief may still be writing
        backups = self._backups()
        if backups:
            self._restore(backups[-1][1])
        if _is_writer(model):
            for entry in Path(self.backup_dir).glob(_TMP + "*"):  # left by a crash mid-save
                shutil.rmtree(entry, ignore_errors=True)
        if self.preemption:
            self._watch_preemption()

    def _restore(self, folder: Path) -> None:
        model = self.model
        state = json.loads((folder / _META).read_text())
        optimizer = getattr(model, "optimizer", None)
        legacy = _legacy(self._tfplace_keras)
        if optimizer is not None and not legacy and not getattr(optimizer, "built", True):
            optimizer.build(model.trainable_variables)
        if legacy:
            model.load_weights(str(folder / "weights")).expect_partial()
        else:
            model.load_weights(str(folder / self._weights_name()))
        self._next_save = int(state["save"]) + 1
        epoch, batch = int(state["epoch"]), int(state["batch"])
        self._epoch = epoch
        self._skip = batch + 1
        if legacy:
            model._training_state = _InitialCounters(epoch)
        else:
            model._initial_epoch = epoch
        if self._skip:
            self._skip_batches(self._skip)
        log.info("tfplace: resumed from %s (epoch %d, batch %d)", folder, epoch, batch)

    def _skip_batches(self, batches: int) -> None:
        """Make the next ``fit`` steps draw their batches without training on them."""
        model = self.model
        original = model.train_function
        self._original_train_function = original
        value: Any = getattr(model, "steps_per_execution", None)  # tf_keras: a tf.Variable
        per_call = int(value.numpy() if hasattr(value, "numpy") else (value or 1))
        calls = max(1, batches // per_call)

        def skipping(iterator: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls -= 1
            if calls <= 0:
                model.train_function = original
                self._original_train_function = None
            for _ in range(per_call):
                next(iterator)
            return {}

        model.train_function = skipping

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch
        self._batch = -1

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        skipping = self._skip > 0 and batch < self._skip
        if self._skip and not skipping:
            self._skip = 0
        if not skipping and self.save_freq != "epoch":
            self._since_save += batch - self._batch
        self._batch = batch
        self._ends += 1
        if self.preemption and self._preempted():
            self._save(self._epoch, batch)
            _meet(self.model, self.timeout)  # every worker's share of the save is done
            log.warning(
                "tfplace: preempted; backup saved at epoch %d, batch %d; exiting with %d",
                self._epoch,
                batch,
                RESTART_EXIT_CODE,
            )
            sys.exit(RESTART_EXIT_CODE)
        freq = self.save_freq
        if not skipping and isinstance(freq, int) and self._since_save >= freq:
            self._save(self._epoch, batch)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch + 1
        self._batch = -1
        if self.save_freq == "epoch":
            self._save(epoch + 1, -1)

    def on_train_end(self, logs: Any = None) -> None:
        model = self.model
        self._stop_watching()
        if self._original_train_function is not None:
            model.train_function = self._original_train_function
        if _legacy(self._tfplace_keras):
            model._training_state = None
        else:
            model._initial_epoch = None
        if self.delete_checkpoint:
            _meet(model, self.timeout)  # nobody may still be reading the backup
            if _is_writer(model):
                for _, folder in self._backups():
                    shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rmdir(self.backup_dir)  # only when nothing else is in it

    # Preemption: SIGTERM to any worker stops every worker at the same step.

    def _watch_preemption(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        if _multi_worker(self.model):
            threading.Thread(target=self._watch, daemon=True, name="tfplace-preempt").start()

    def _stop_watching(self) -> None:
        if self._previous_handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        if self.preemption and _multi_worker(self.model):
            with contextlib.suppress(Exception):  # a preemption may have set it first
                _tf.coordination_context().set_config_key_value(self._preempt_key, "done")

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._sigterms:  # a second SIGTERM (or fit() died without on_train_end): give up
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self._sigterms += 1
        log.warning("tfplace: SIGTERM received; saving a backup at the next step")
        if not _multi_worker(self.model):
            self._flagged = True
            return

        def publish() -> None:
            with contextlib.suppress(Exception):  # another worker was preempted first
                _tf.coordination_context().set_config_key_value(self._preempt_key, "preempt")

        threading.Thread(target=publish, daemon=True).start()

    def _watch(self) -> None:
        """Wait for a preemption notice; then propose the first batch end this worker will
        check, so that all workers can agree to stop at the latest proposal."""
        ctx = _tf.coordination_context()
        try:
            value = ctx.get_config_key_value(self._preempt_key)
        except Exception:  # the runtime shut down
            return
        if value != "preempt":
            return
        with self._lock:
            self._flagged = True
            proposal = self._checked + 1
        with contextlib.suppress(Exception):
            ctx.set_config_key_value(f"{self._preempt_key}/stop/{_task(self.model)}", str(proposal))

    def _preempted(self) -> bool:
        """Whether this batch end is the one where every worker saves and stops."""
        with self._lock:
            if not self._flagged:
                self._checked = self._ends
                return False
        if not _multi_worker(self.model):
            return True
        if self._stop_at is None:
            ctx = _tf.coordination_context()
            wait_ms = int(self.timeout * 1000)
            proposals = [
                int(ctx.get_config_key_value(f"{self._preempt_key}/stop/{task}", wait_ms))
                for task in _tasks(self.model)
            ]
            self._stop_at = max(proposals)
        return self._ends >= self._stop_at


class _InitialCounters:
    """What tf_keras's ``fit`` asks ``model._training_state`` for: where to start."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch: Any, initial_epoch: int, mode: Any = None
    ) -> tuple[int, int]:
        return self.epoch, 0  # the batches already trained are skipped by BackupAndRestore

    def maybe_load_initial_epoch_from_ckpt(self, initial_epoch: int, mode: Any = None) -> int:
        return self.epoch


class ModelCheckpoint(_KerasFlavoured):
    """``keras.callbacks.ModelCheckpoint`` that only the chief writes, atomically.

    Takes exactly the arguments of the Keras class it stands for (``filepath``, ``monitor``,
    ``save_best_only``, ``save_weights_only``, ``save_freq``, ...). Every worker saves (the
    save may run collective ops); the chief saves under a temporary name in the target folder
    and renames it into place, the others into a private temporary folder that is removed.
    tf_keras's TensorFlow-format weights (a path without ``.h5``) are several files: those are
    written in place on the chief, not renamed.

    Example:
        >>> import tfplace.callbacks
        >>> ckpt = tfplace.callbacks.ModelCheckpoint("/tmp/run1/epoch{epoch}.keras")
        >>> ckpt.filepath
        '/tmp/run1/epoch{epoch}.keras'
    """

    _keras_base = "ModelCheckpoint"
    #: (path Keras writes, path to rename it to on the chief, private folder to remove)
    _tfplace_move: tuple[str, str | None, str | None] | None = None

    def _get_file_path(self, epoch: Any, batch: Any, logs: Any) -> str:
        real: str = super()._get_file_path(epoch, batch, logs)  # type: ignore[misc]
        name = os.path.basename(real)
        if not _is_writer(self.model):
            private = tempfile.mkdtemp(prefix="tfplace-checkpoint-")
            self._tfplace_move = (os.path.join(private, name), None, private)
        elif name.endswith((".keras", ".h5")):
            folder = os.path.dirname(real) or "."
            temporary = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
            self._tfplace_move = (temporary, real, None)
        else:
            self._tfplace_move = (real, None, None)
        return self._tfplace_move[0]

    def _save_model(self, epoch: Any, batch: Any, logs: Any) -> None:
        self._tfplace_move = None
        try:
            super()._save_model(epoch, batch, logs)  # type: ignore[misc]
            if self._tfplace_move is not None:
                written, final, _ = self._tfplace_move
                if final is not None and os.path.exists(written):
                    os.replace(written, final)
        finally:
            if self._tfplace_move is not None:
                written, final, private = self._tfplace_move
                if private is not None:
                    shutil.rmtree(private, ignore_errors=True)
                elif final is not None and os.path.exists(written):
                    os.remove(written)
