"""``BackupAndRestore``: the Keras hooks. Files are in ``_store``, the check that every
worker sees the same backups in ``_shared``, SIGTERM in ``_preemption``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tfplace import _tf
from tfplace.callbacks._keras import (
    KerasFlavoured,
    is_legacy,
    is_writer,
    meet,
    multi_worker,
    task,
    tasks,
)
from tfplace.callbacks._preemption import Preemption
from tfplace.callbacks._shared import DEFAULT_GRACE_S, agree_on_restore, check_saved
from tfplace.callbacks._store import BackupStore, join
from tfplace.cluster._restarts import RESTART_EXIT_CODE, launched_global_batch

__all__ = ["BackupAndRestore"]

log = logging.getLogger("tfplace")


class BackupAndRestore(KerasFlavoured):
    """Back up the training state regularly and resume from it after a restart or preemption.

    A drop-in for ``keras.callbacks.BackupAndRestore`` that is safe with several workers (see
    :mod:`tfplace.callbacks`). ``backup_dir`` must be a folder every worker can read (a
    shared file system, or any path ``tf.io.gfile`` knows: ``gs://...``, ``hdfs://...``), the
    same in every worker, and not shared with another run. It holds ``backup-<n>/`` folders
    (weights and optimizer state, plus ``state.json`` with the epoch and batch). The chief
    chooses the newest complete one and every worker restores that one; a worker that does
    not see it (a folder that is not shared) stops every worker with a
    :class:`~tfplace.errors.ClusterConfigError`, as does a first save that not every worker
    sees.

    Resuming mid-epoch (``save_freq=<int>``, or a preemption) is exact when the input pipeline
    yields the same batches in the same order on every start: the same data, batch size and
    ``steps_per_execution``, no shuffling or a shuffle with a fixed seed, no randomness that
    depends on how many batches were drawn before.

    Args:
        backup_dir: where the backups live (a local path or a ``tf.io.gfile`` URL).
        save_freq: ``"epoch"`` (a backup after each epoch) or an int (after every that many
            batches).
        double_checkpoint: keep the previous backup as well as the newest one.
        delete_checkpoint: remove the backups when ``fit`` completes.
        preemption: on SIGTERM, save a backup at the next step every worker can reach and exit
            with the restart code 143 (installed only in the main thread, during ``fit``).
        timeout: seconds the workers wait for each other.
        shared_grace: seconds a worker keeps looking for a backup the chief wrote before
            calling ``backup_dir`` not shared (65: above Linux NFS's default attribute cache
            time, ``acdirmax`` 60 s). Only a worker that does not see the backup waits.
        global_batch: the global batch ``fit`` trains with, if you want it checked: it must
            divide over the replicas (each replica takes an equal share), and a backup saved
            at another global batch is refused. Under ``tfplace launch --global-batch B``,
            B by default (``TFPLACE_GLOBAL_BATCH``). Without it, the steps per epoch are compared
            (where the input's size is known).
        allow_new_batch: resume from a backup saved at another global batch (or another
            number of steps per epoch) instead of refusing it.

    A backup restores onto any number of workers: ``state.json`` records the workers, the
    replicas and the steps per epoch (and ``global_batch`` when given) it was saved with.
    With the same global batch, training on fewer or more workers computes the same thing
    (up to the order of the sums across replicas); with another one it does not, so that is
    refused unless ``allow_new_batch=True``.

    Raises:
        ValueError: ``backup_dir`` is empty, ``save_freq`` is not ``"epoch"`` or a positive
            int, ``shared_grace`` is negative, or ``global_batch`` is not a positive int; at
            the start of ``fit``: ``global_batch`` does not divide over the replicas, or the
            backup was saved at another global batch (without ``allow_new_batch``).

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
        shared_grace: float = DEFAULT_GRACE_S,
        global_batch: int | None = None,
        allow_new_batch: bool = False,
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
        if (
            isinstance(shared_grace, bool)
            or not isinstance(shared_grace, int | float)
            or not (shared_grace >= 0)
        ):
            raise ValueError(
                f"BackupAndRestore(shared_grace={shared_grace!r}): expected seconds >= 0"
            )
        if global_batch is not None and (
            isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1
        ):
            raise ValueError(
                f"BackupAndRestore(global_batch={global_batch!r}): expected a positive int, "
                "the batch size fit trains with across all replicas"
            )
        self.global_batch = global_batch if global_batch is not None else launched_global_batch()
        self.allow_new_batch = bool(allow_new_batch)
        self.backup_dir = os.fspath(backup_dir)
        self.shared_grace = float(shared_grace)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.preemption = preemption
        self.timeout = timeout
        self._store = BackupStore(self.backup_dir)
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._epoch = 0
        self._batch = -1
        self._since_save = 0
        self._skip = 0
        self._next_save = 0
        self._ends = 0  # batch ends seen in this fit (all epochs)
        self._key = ""  # this fit's prefix in the coordination service
        self._saves_checked = False
        self._watch: Preemption | None = None
        self._undo_skip: Callable[[], None] | None = None

    # Saving.

    def _weights_name(self) -> str:
        # tf_keras's .h5 weights leave the optimizer out; its TensorFlow format keeps it.
        return "weights" if is_legacy(self._tfplace_keras) else "model.weights.h5"

    def _save(self, epoch: int, batch: int) -> None:
        model = self.model
        number = self._next_save
        state = {"epoch": epoch, "batch": batch, "save": number, **self._shape()}
        self._store.write(
            number,
            state,
            lambda folder: model.save_weights(join(folder, self._weights_name())),
            writer=is_writer(model),
        )
        if is_writer(model):
            self._store.prune(2 if self.double_checkpoint else 1)
        if multi_worker(model) and not self._saves_checked:
            check_saved(
                model, self._store, number, f"{self._key}/saved", self.timeout, self.shared_grace
            )
            self._saves_checked = True
        log.debug("tfplace: backup %d saved (epoch %d, batch %d)", number, epoch, batch)
        self._next_save += 1
        self._since_save = 0

    def _shape(self) -> dict[str, Any]:
        """What the training's math depends on, as ``state.json`` records it."""
        strategy = getattr(self.model, "distribute_strategy", None)
        shape: dict[str, Any] = {
            "workers": _tf.strategy_num_workers(strategy),
            "replicas": int(getattr(strategy, "num_replicas_in_sync", 1) or 1),
            "steps_per_epoch": (getattr(self, "params", None) or {}).get("steps"),
        }
        if self.global_batch is not None:
            shape["global_batch"] = self.global_batch
        return shape

    def _check_batch(self) -> None:
        """The global batch divides over the replicas: each takes an equal share."""
        if self.global_batch is None:
            return
        replicas = self._shape()["replicas"]
        if self.global_batch % replicas:
            low = self.global_batch - self.global_batch % replicas
            sizes = [b for b in (low, low + replicas) if b > 0]
            counts = [n for n in range(1, self.global_batch + 1) if self.global_batch % n == 0]
            raise ValueError(
                f"BackupAndRestore: global_batch={self.global_batch} does not divide over "
                f"{replicas} replicas, so their shares differ and the training would not "
                f"compute what it does on another number of replicas. Use a global batch of "
                f"{' or '.join(map(str, sizes))} here, or a replica count that divides "
                f"{self.global_batch}: {', '.join(map(str, counts[:12]))}."
            )

    def _check_resumable(self, state: dict[str, Any], folder: str) -> None:
        """Refuse a backup saved at another global batch or with another number of steps per
        epoch; say when the workers changed, and when nothing could be compared."""
        now = self._shape()
        changed = [
            f"{key.replace('_', ' ')} {state[key]} then, {now[key]} now"
            for key in ("global_batch", "steps_per_epoch")
            if state.get(key) is not None and now.get(key) is not None and state[key] != now[key]
        ]
        batch_changed = any(text.startswith("global batch") for text in changed)
        what = "at another global batch" if batch_changed else "with other steps per epoch"
        if changed and not self.allow_new_batch:
            raise ValueError(
                f"BackupAndRestore: the backup in {folder} was saved {what} "
                f"({'; '.join(changed)}; {state.get('workers', '?')} worker(s) then, "
                f"{now['workers']} now). Resuming would not continue the same training: its "
                "position in the epoch means other batches now. Keep the global batch fixed "
                "when the number of workers changes (batch by the global batch, not by a "
                "per-replica batch times the replicas) and the data and steps_per_epoch as "
                "they were, or pass BackupAndRestore(..., allow_new_batch=True) to resume "
                "anyway."
            )
        if changed:
            log.warning(
                "tfplace: resuming from %s %s (%s): allow_new_batch=True",
                folder,
                what,
                "; ".join(changed),
            )
        elif not any(
            state.get(key) is not None and now.get(key) is not None
            for key in ("global_batch", "steps_per_epoch")
        ):
            log.info(
                "tfplace: resuming from %s without checking the global batch: the epoch's "
                "length is unknown (a dataset without a known size) and no global_batch= was "
                "given",
                folder,
            )
        if not changed and state.get("workers") not in (None, now["workers"]):
            log.info(
                "tfplace: restoring a backup of %s worker(s) onto %d: the same global batch, "
                "the same training (the order of the sums across replicas aside)",
                state["workers"],
                now["workers"],
            )

    # Restoring.

    def _restore(self, number: int) -> None:
        model = self.model
        folder = self._store.folder(number)
        state = self._store.state(number)
        self._check_resumable(state, folder)
        optimizer = getattr(model, "optimizer", None)
        legacy = is_legacy(self._tfplace_keras)
        if optimizer is not None and not legacy and not getattr(optimizer, "built", True):
            optimizer.build(model.trainable_variables)
        if legacy:
            model.load_weights(join(folder, "weights")).expect_partial()
        else:
            model.load_weights(join(folder, self._weights_name()))
        self._next_save = int(state["save"]) + 1
        epoch, batch = int(state["epoch"]), int(state["batch"])
        self._epoch = epoch
        # Keras reports an execution's last step as begin + steps_per_execution - 1, past the
        # epoch's end for a last, partial execution: skip no more than the epoch holds
        steps = (getattr(self, "params", None) or {}).get("steps")
        self._skip = batch + 1 if not steps else min(batch + 1, int(steps))
        if not _tf.set_initial_epoch(model, epoch, legacy=legacy):
            self._skip = 0  # fit starts at its initial_epoch argument (said once by the seam)
        if self._skip:
            self._undo_skip = _tf.skip_train_steps(model, self._skip)
            if self._undo_skip is None:  # trains the epoch again from its first batch
                self._skip = 0
        log.info("tfplace: resumed from %s (epoch %d, batch %d)", folder, epoch, batch)

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
        fit = BackupAndRestore._fits
        self._key = f"tfplace/backup/{fit}"
        self._check_batch()
        if multi_worker(model):  # the chief chooses; every worker checks it sees that one
            chosen = agree_on_restore(
                model, self._store, f"{self._key}/restore", self.timeout, self.shared_grace
            )
        else:
            chosen = self._store.latest()
        if chosen is not None:
            self._restore(chosen)
        if is_writer(model):
            self._store.remove_incomplete()  # left by a crash mid-save
        if self.preemption:
            everyone = tasks(model) if multi_worker(model) else []
            self._watch = Preemption(f"tfplace/preempt/{fit}", task(model), everyone, self.timeout)
            self._watch.start()

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
        verdict = self._watch.check(self._ends) if self._watch is not None else "train"
        if verdict == "abort":
            assert self._watch is not None
            log.warning(
                "tfplace: preempted, but the workers could not agree on a step (%s); exiting "
                "with %d without a new backup: the next start resumes from the previous one",
                self._watch.abort_reason,
                RESTART_EXIT_CODE,
            )
            sys.exit(RESTART_EXIT_CODE)
        if verdict == "stop":
            self._save(self._epoch, batch)
            meet(self.model, self.timeout)  # every worker's share of the save is done
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
        if self._watch is not None:
            self._watch.stop()
        if self._undo_skip is not None:
            self._undo_skip()
        _tf.clear_initial_epoch(model, legacy=is_legacy(self._tfplace_keras))
        if self.delete_checkpoint:
            meet(model, self.timeout)  # nobody may still be reading the backup
            if is_writer(model):
                self._store.remove_all()
