"""Backups in a folder on any file system TensorFlow knows: list, write, read, remove.

Every operation goes through ``tf.io.gfile`` (the seam's ``gfile_*`` functions), so
``backup_dir`` may be a local path or any scheme TensorFlow supports (``gs://``, ``s3://``
with the TensorFlow I/O plug-in, ``hdfs://``, the in-memory ``ram://``).

A backup is ``<backup_dir>/backup-<n>/`` holding the weights and ``state.json``; it counts
only once its ``state.json`` exists:

- on a local path the backup is written in a temporary folder (``.tmp-backup-...``) beside
  it and renamed into place, which is atomic: it appears complete or not at all;
- elsewhere (object stores have no atomic folder rename: ``gs://`` copies object by object,
  ``ram://`` does not move a folder's files) the weights are written in place and
  ``state.json`` last, as one file: an interrupted save leaves a folder without it, which is
  ignored and removed at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from tfplace import _tf

__all__ = ["BACKUP", "META", "TMP", "BackupStore", "has_atomic_rename", "join"]

log = logging.getLogger("tfplace")

BACKUP = "backup-"
TMP = ".tmp-backup-"
META = "state.json"


def has_atomic_rename(path: str) -> bool:
    """Whether ``path`` is on the local file system, where a folder rename is atomic."""
    return "://" not in path or path.startswith("file://")


def join(folder: str, name: str) -> str:
    """``folder/name`` for a local path or a URL (``os.path.join`` for local paths)."""
    if "://" in folder:
        return folder.rstrip("/") + "/" + name
    return os.path.join(folder, name)


class BackupStore:
    """The ``backup-<n>/`` folders of one ``backup_dir``.

    Example:
        >>> store = BackupStore("ram://example/backup")
        >>> store.numbers()  # nothing saved yet
        []
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def folder(self, number: int) -> str:
        """The folder of backup ``number``."""
        return join(self.root, f"{BACKUP}{number:08d}")

    def is_complete(self, number: int) -> bool:
        """Whether backup ``number`` exists with its ``state.json``."""
        return _tf.gfile_exists(join(self.folder(number), META))

    def numbers(self) -> list[int]:
        """The numbers of the complete backups, oldest first."""
        found = []
        for name in self._entries():
            number = name.removeprefix(BACKUP)
            if name.startswith(BACKUP) and number.isdigit() and self.is_complete(int(number)):
                found.append(int(number))
        return sorted(found)

    def latest(self) -> int | None:
        """The number of the newest complete backup, or None."""
        numbers = self.numbers()
        return numbers[-1] if numbers else None

    def state(self, number: int) -> dict[str, Any]:
        """Backup ``number``'s ``state.json``: ``{"epoch", "batch", "save"}``, and what the
        training's math depended on (``workers``, ``replicas``, ``steps_per_epoch``,
        ``global_batch`` when given); older backups lack those."""
        loaded: dict[str, Any] = json.loads(_tf.gfile_read_text(join(self.folder(number), META)))
        return loaded

    def write(
        self,
        number: int,
        state: dict[str, Any],
        save_weights: Callable[[str], None],
        *,
        writer: bool,
    ) -> None:
        """Save backup ``number``: ``save_weights(folder)`` writes the weights into ``folder``.

        A worker that is not the ``writer`` saves into a private local folder that is removed
        at once (it must take part in the save, but not write the real place).
        """
        if not writer:
            private = tempfile.mkdtemp(prefix="tfplace-backup-")
            try:
                save_weights(private)
            finally:
                shutil.rmtree(private, ignore_errors=True)
            return
        _tf.gfile_makedirs(self.root)
        final = self.folder(number)
        if _tf.gfile_exists(final):  # an incomplete one, left by a crash mid-save
            _tf.gfile_rmtree(final)
        text = json.dumps(state)
        if not has_atomic_rename(self.root):
            _tf.gfile_makedirs(final)
            save_weights(final)
            _tf.gfile_write_text(join(final, META), text)  # last: the backup now counts
            return
        temporary = join(self.root, f"{TMP}{number:08d}-{uuid.uuid4().hex[:8]}")
        _tf.gfile_makedirs(temporary)
        try:
            save_weights(temporary)
            _tf.gfile_write_text(join(temporary, META), text)
            _tf.gfile_rename(temporary, final)  # atomic: complete or not at all
        finally:
            if _tf.gfile_exists(temporary):
                _tf.gfile_rmtree(temporary)

    def prune(self, keep: int) -> None:
        """Remove all but the newest ``keep`` complete backups."""
        for number in self.numbers()[:-keep]:
            _tf.gfile_rmtree(self.folder(number))

    def remove_incomplete(self) -> None:
        """Remove what an interrupted save left: temporary folders, backups without state."""
        for name in self._entries():
            number = name.removeprefix(BACKUP)
            stale = name.startswith(TMP) or (
                name.startswith(BACKUP) and number.isdigit() and not self.is_complete(int(number))
            )
            if stale:
                _tf.gfile_rmtree(join(self.root, name))

    def remove_all(self) -> None:
        """Remove every backup, and the folder itself when nothing else is in it."""
        for number in self.numbers():
            _tf.gfile_rmtree(self.folder(number))
        try:
            if _tf.gfile_isdir(self.root) and not _tf.gfile_listdir(self.root):
                _tf.gfile_rmtree(self.root)
        except Exception as err:  # the backups are gone; only the empty folder stays
            log.debug("tfplace: could not remove the empty %s: %s", self.root, err)

    def _entries(self) -> list[str]:
        if not _tf.gfile_isdir(self.root):
            return []
        return [name.rstrip("/") for name in _tf.gfile_listdir(self.root)]
