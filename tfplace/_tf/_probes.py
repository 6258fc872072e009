"""The TensorFlow and Keras internals tfplace relies on, and what it says when one changed.

A few features need an attribute or a method that TensorFlow or Keras keeps private (the
number of workers of a multi-worker strategy, the epoch ``fit`` starts at, ``fit``'s train
function, ...). Each is reached through a named function of the seam that looks for it first
(a feature probe). Where it is missing or changed, as it may be in a release tfplace was not
tested with, tfplace says so ONCE per process, with a :class:`~tfplace.errors.TfplaceWarning`
naming the internal, the versions tested and found, what is off and what still works, and
carries on without the feature (or, where going on would be wrong, raises before training).
Never an ``AttributeError`` deep inside ``fit``.

:data:`INTERNALS` lists them all, each with what is off without it and what still works;
the tests run every probe on the tested releases (no warning) and on a stand-in that lacks
the internal (the warning, once, and the feature off).
"""

from __future__ import annotations

import sys
import threading
import warnings
from dataclasses import dataclass

from tfplace.errors import TfplaceWarning

__all__ = [
    "INTERNALS",
    "TESTED_VERSIONS",
    "Internal",
    "installed_versions",
    "internal_missing",
    "internal_text",
    "tested_versions",
]

#: The releases tfplace is tested with (CI), named in every message about a changed internal.
#: ``pyproject.toml`` declares these as the lowest versions it installs (a test checks).
TESTED_VERSIONS: dict[str, str] = {"tensorflow": "2.21", "keras": "3.15", "tf_keras": "2.21"}
_LABELS = {"tensorflow": "TensorFlow", "keras": "Keras", "tf_keras": "tf_keras"}


@dataclass(frozen=True)
class Internal:
    """One private TensorFlow/Keras attribute tfplace relies on.

    Attributes:
        name: the attribute as code reaches it (``strategy.extended._num_workers``).
        feature: the tfplace feature that uses it.
        off: what does not work without it.
        works: what still works.
    """

    name: str
    feature: str
    off: str
    works: str


#: Every internal, by key. The seam's probing functions name theirs by these keys.
INTERNALS: dict[str, Internal] = {
    "num_workers": Internal(
        "strategy.extended._num_workers",
        "counting the workers of a MultiWorkerMirroredStrategy",
        "nothing: the count is read from the strategy's cluster resolver instead",
        "everything",
    ),
    "initial_epoch": Internal(
        "model._initial_epoch (Keras 3) / model._training_state (tf_keras)",
        "tfplace.callbacks.BackupAndRestore resuming at the saved epoch",
        "resuming at the saved epoch: fit starts at its initial_epoch argument",
        "backups are saved and restored (weights, optimizer state); pass "
        "fit(initial_epoch=<the epoch the log line names>) yourself to resume at it",
    ),
    "train_function": Internal(
        "model.train_function (replaced while fit runs)",
        "tfplace.callbacks.BackupAndRestore skipping the batches a restored backup had "
        "trained (save_freq=<int>, preemption)",
        "resuming mid-epoch: a restored run trains its epoch again from the first batch",
        "backups, restores at epoch boundaries, preemption saves",
    ),
    "checkpoint_hooks": Internal(
        "ModelCheckpoint._get_file_path and ModelCheckpoint._save_model",
        "tfplace.callbacks.ModelCheckpoint (only the chief writes, atomically)",
        "tfplace.callbacks.ModelCheckpoint",
        "keras.callbacks.ModelCheckpoint inside tfplace.worker_save_path(...), and "
        "tfplace.callbacks.BackupAndRestore",
    ),
    "stock_callbacks": Internal(
        "keras.callbacks.ModelCheckpoint / BackupAndRestore.on_train_begin (wrapped while a "
        "multi-worker strategy exists)",
        "the warning about Keras's own ModelCheckpoint/BackupAndRestore under several workers",
        "that warning",
        "training; tfplace.callbacks.ModelCheckpoint and BackupAndRestore",
    ),
    "flatten_layers": Internal(
        "model._flatten_layers",
        "autotune's reading of whether every layer supports XLA (supports_jit)",
        "nothing: the layers are walked through model.layers instead",
        "everything",
    ),
    "dataset_inputs": Internal(
        "tf.data.Dataset._inputs",
        "prepare_dataset(shard_policy='auto') seeing which files a pipeline reads",
        "the FILE auto-shard policy: every pipeline is sharded by element (DATA), which is "
        "correct but reads every file on every worker",
        "everything else; prepare_dataset(shard_policy='file') still asks for FILE",
    ),
    "collective_instance_keys": Internal(
        "CollectiveReplicaLauncher._prefer_unique_instance_key",
        "steps_per_execution > 1 under tfplace's multi-worker strategy (keras#19246)",
        "steps_per_execution > 1 with several workers: fit, evaluate and predict fail with "
        "'You must feed a value for placeholder tensor'",
        "steps_per_execution=1 (the default); one worker",
    ),
    "collective_key_base": Internal(
        "tf.distribute.MirroredStrategy._collective_key_base",
        "several MirroredStrategy objects of different sizes in one process (tensorflow#61314)",
        "collective keys of their own per strategy: a second strategy of another size in the "
        "same process may abort the process's collectives",
        "one strategy per process",
    ),
}

_said: set[str] = set()
_said_lock = threading.Lock()


def installed_versions() -> str:
    """The TensorFlow and Keras releases loaded in this process, as one phrase.

    Example:
        >>> "TensorFlow" in installed_versions()
        True
    """
    found = []
    for module, label in _LABELS.items():
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None) if loaded is not None else None
        if version:
            found.append(f"{label} {version}")
    return ", ".join(found) or "TensorFlow not loaded yet"


def tested_versions() -> str:
    """The releases tfplace is tested with, as one phrase.

    Example:
        >>> tested_versions()
        'TensorFlow 2.21, Keras 3.15, tf_keras 2.21'
    """
    return ", ".join(f"{_LABELS[name]} {v}" for name, v in TESTED_VERSIONS.items())


def internal_text(key: str, found: str) -> str:
    """The message about internal ``key``: which, versions tested and found, what is off.

    Args:
        key: a key of :data:`INTERNALS`.
        found: what the probe found instead (``"no attribute _num_workers"``).
    """
    internal = INTERNALS[key]
    return (
        f"tfplace relies on {internal.name} for {internal.feature}, and this installation "
        f"({installed_versions()}) has changed it: {found}. tfplace is tested with "
        f"{tested_versions()}. Off: {internal.off}. Still works: {internal.works}. Fix: "
        "install the tested releases (see the README), or report this, with the versions, to "
        "the tfplace project."
    )


def internal_missing(key: str, found: str, *, stacklevel: int = 3) -> bool:
    """Warn, once per process and internal, that internal ``key`` is missing or changed.

    Args:
        key: a key of :data:`INTERNALS`.
        found: what the probe found instead.
        stacklevel: the frame the warning points at.

    Returns:
        True when this call warned, False when the warning was already given.

    Warns:
        TfplaceWarning: the first time for ``key`` in this process.
    """
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    warnings.warn(internal_text(key, found), TfplaceWarning, stacklevel=stacklevel)
    return True


def _forget_warnings() -> None:
    """Let every internal warn again (for tests)."""
    with _said_lock:
        _said.clear()
