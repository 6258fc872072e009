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
- every file operation goes through ``tf.io.gfile``: a local path or any URL TensorFlow
  knows (``gs://``, ``hdfs://``, ``ram://``);
- a save is atomic on a local path (written under a temporary name and renamed into place);
  elsewhere a backup counts only once its ``state.json``, written last, exists; either way a
  crash during a save leaves the previous backup usable;
- :class:`BackupAndRestore` restores weights, optimizer state, the epoch AND the step: with
  ``save_freq=<int>`` a restarted run skips the batches it had already trained;
- the chief chooses the backup to restore and every worker restores that one, or all stop
  with a :class:`~tfplace.errors.ClusterConfigError` saying that ``backup_dir`` must be
  shared storage; workers meet at a :func:`tfplace.barrier` before the backup is deleted at
  the end;
- SIGTERM (a preemption) makes every worker save a backup at the same step and exit with
  :data:`tfplace.cluster._restarts.RESTART_EXIT_CODE` (143), so that the next start resumes.

Why not change Keras's own classes when the multi-worker strategy is active? Keras's
``BackupAndRestore`` keeps its state in files that it overwrites in place and ``rmtree``s at
the end; making it safe means replacing its private methods (``_save_model``,
``_load_model``), which change between Keras releases, and doing that only in some processes
would give one class name two behaviours. An explicit class is a one-line, visible change;
under a multi-worker strategy (tfplace's, or one the user built once tfplace sees it), Keras
3's own two classes warn once per process (:class:`~tfplace.errors.TfplaceWarning`) naming
these replacements (:mod:`tfplace.cluster._stock`).

The parts: ``_store`` (backups through ``tf.io.gfile``), ``_shared`` (every worker sees the
chief's backups), ``_preemption`` (SIGTERM), ``_backup`` and ``_checkpoint`` (the Keras hooks).
"""

from __future__ import annotations

from tfplace.callbacks._backup import BackupAndRestore
from tfplace.callbacks._checkpoint import ModelCheckpoint

__all__ = ["BackupAndRestore", "ModelCheckpoint"]
