"""``tf.data`` and ``tf.io.gfile``: datasets, and files on any file system TensorFlow knows
(local, ``gs://``, ``ram://``, ...)."""

from __future__ import annotations

from typing import Any

from tfplace._tf._core import load
from tfplace._tf._probes import internal_missing

__all__ = [
    "data_autotune",
    "dataset_inputs",
    "gfile_exists",
    "gfile_isdir",
    "gfile_listdir",
    "gfile_makedirs",
    "gfile_read_text",
    "gfile_remove",
    "gfile_rename",
    "gfile_rmtree",
    "gfile_write_text",
    "is_dataset",
    "shard_options",
]


def is_dataset(obj: object) -> bool:
    """Whether ``obj`` is a ``tf.data.Dataset``."""
    return isinstance(obj, load().data.Dataset)


def data_autotune() -> int:
    """``tf.data.AUTOTUNE``."""
    return int(load().data.AUTOTUNE)


def shard_options(policy: str) -> Any:
    """``tf.data.Options`` with the auto-shard policy ``"data"``, ``"file"`` or ``"off"``."""
    data = load().data
    options = data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        data.experimental.AutoShardPolicy, policy.upper()
    )
    return options


def gfile_exists(path: str) -> bool:
    """``tf.io.gfile.exists``: whether a file or folder exists."""
    return bool(load().io.gfile.exists(path))


def gfile_isdir(path: str) -> bool:
    """``tf.io.gfile.isdir``: whether ``path`` is a folder."""
    return bool(load().io.gfile.isdir(path))


def gfile_listdir(path: str) -> list[str]:
    """``tf.io.gfile.listdir``: the names in a folder (object stores may end folders in ``/``)."""
    return [str(name) for name in load().io.gfile.listdir(path)]


def gfile_makedirs(path: str) -> None:
    """``tf.io.gfile.makedirs``: create a folder and its parents (no error if it exists)."""
    load().io.gfile.makedirs(path)


def gfile_rename(source: str, target: str, overwrite: bool = False) -> None:
    """``tf.io.gfile.rename``: atomic on a local file system; object stores copy, then
    delete, object by object."""
    load().io.gfile.rename(source, target, overwrite=overwrite)


def gfile_rmtree(path: str) -> None:
    """``tf.io.gfile.rmtree``, and nothing when ``path`` is already gone."""
    gfile = load().io.gfile
    if gfile.exists(path):
        gfile.rmtree(path)


def gfile_remove(path: str) -> None:
    """``tf.io.gfile.remove``: delete one file, and nothing when it is already gone."""
    gfile = load().io.gfile
    if gfile.exists(path):
        gfile.remove(path)


def gfile_read_text(path: str) -> str:
    """The text of a file, through ``tf.io.gfile.GFile``."""
    with load().io.gfile.GFile(path, "r") as handle:
        return str(handle.read())


def gfile_write_text(path: str, text: str) -> None:
    """Write ``text`` to a file (replacing it), through ``tf.io.gfile.GFile``."""
    with load().io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def dataset_inputs(dataset: Any) -> list[Any]:
    """The datasets ``dataset`` reads from (``Dataset._inputs()``; none for a source).

    A dataset type that cannot list its inputs (it raises) has none to show. Where the
    internal is missing from ``tf.data.Dataset`` itself, says so once and returns none: the
    auto-shard choice then sees no files and shards by element.
    """
    inputs = getattr(dataset, "_inputs", None)
    if not callable(inputs):
        if is_dataset(dataset):
            internal_missing(
                "dataset_inputs", f"{type(dataset).__name__}._inputs is {inputs!r}, not a method"
            )
        return []
    try:
        return list(inputs())
    except Exception:  # a dataset type without inputs support
        return []
