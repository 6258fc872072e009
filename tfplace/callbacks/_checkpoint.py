"""``ModelCheckpoint``: Keras's, with only the chief writing the real place, atomically."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from typing import Any

from tfplace import _tf
from tfplace.callbacks._keras import KerasFlavoured, is_writer
from tfplace.callbacks._store import join

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(KerasFlavoured):
    """``keras.callbacks.ModelCheckpoint`` that only the chief writes, atomically.

    Takes exactly the arguments of the Keras class it stands for (``filepath``, ``monitor``,
    ``save_best_only``, ``save_weights_only``, ``save_freq``, ...). Every worker saves (the
    save may run collective ops); the chief saves under a temporary name in the target folder
    and renames it into place (through ``tf.io.gfile``, so ``filepath`` may be a URL; where
    the file system has no atomic rename it is a copy), the others into a private temporary
    folder that is removed. tf_keras's TensorFlow-format weights (a path without ``.h5``) are
    several files: those are written in place on the chief, not renamed.

    Example:
        >>> import tfplace.callbacks
        >>> ckpt = tfplace.callbacks.ModelCheckpoint("/tmp/run1/epoch{epoch}.keras")
        >>> ckpt.filepath
        '/tmp/run1/epoch{epoch}.keras'
    """

    _keras_base = "ModelCheckpoint"
    #: (path Keras writes, path to rename it to on the chief, private folder to remove)
    _tfplace_move: tuple[str, str | None, str | None] | None = None

    @classmethod
    def _check_base(cls, base: type) -> None:
        """Refuse a Keras ``ModelCheckpoint`` without the two hooks overridden below."""
        _tf.check_checkpoint_hooks(base)

    # The two hooks (_tf.CHECKPOINT_HOOKS) of Keras's class this one overrides, checked above.

    def _get_file_path(self, epoch: Any, batch: Any, logs: Any) -> str:
        real: str = super()._get_file_path(epoch, batch, logs)  # type: ignore[misc]
        url = "://" in real
        name = posixpath.basename(real) if url else os.path.basename(real)
        if not is_writer(self.model):
            private = tempfile.mkdtemp(prefix="tfplace-checkpoint-")
            self._tfplace_move = (os.path.join(private, name), None, private)
        elif name.endswith((".keras", ".h5")):
            folder = (posixpath.dirname(real) if url else os.path.dirname(real)) or "."
            temporary = join(folder, f".tmp-{os.getpid()}-{name}")
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
                if final is not None and _tf.gfile_exists(written):
                    _tf.gfile_rename(written, final, overwrite=True)
        finally:
            if self._tfplace_move is not None:
                written, final, private = self._tfplace_move
                if private is not None:
                    shutil.rmtree(private, ignore_errors=True)
                elif final is not None:
                    _tf.gfile_remove(written)
