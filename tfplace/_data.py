"""Input pipelines: the global batch size and ``prepare_dataset``.

Preprocessing belongs on the CPU and must overlap with the device's work: ``prepare_dataset``
runs ``preprocess`` as a parallel ``map`` (tf.data runs its functions on the host CPU), batches
with the GLOBAL batch size of the strategy, picks the auto-shard policy that fits the source,
and prefetches, so the next batch is ready when the device asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from tfplace import _tf
from tfplace.cluster._stock import watch as watch_stock_callbacks

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["global_batch_size", "prepare_dataset", "shard_policy_for"]

log = logging.getLogger("tfplace")

ShardPolicy = Literal["auto", "data", "file", "off"]
_READERS = ("TFRecordDataset", "TextLineDataset", "FixedLengthRecordDataset")
_FILE_FANOUT = ("Interleave", "FlatMap")


def _replicas(strategy: Any) -> int:
    if strategy is None:
        strategy = _tf.current_strategy()
    n = getattr(strategy, "num_replicas_in_sync", None)
    if not isinstance(n, int) or n < 1:
        raise TypeError(f"strategy must be a tf.distribute.Strategy, found {strategy!r}")
    watch_stock_callbacks(strategy)  # a multi-worker strategy the user built, too
    return n


def global_batch_size(batch_size: int, strategy: Any = None) -> int:
    """The batch size to batch a dataset with: ``batch_size`` per replica times the replicas.

    Under any strategy Keras splits each batch across the replicas, so a dataset batched
    with the per-replica size trains with a smaller batch than intended (FAILURES E2).

    Args:
        batch_size: examples per replica.
        strategy: the strategy; by default the current one (``tf.distribute.get_strategy()``).

    Example:
        Outside any strategy scope the default strategy has one replica; under a
        ``MirroredStrategy`` over two GPUs the same call gives 64.

        >>> tfplace.global_batch_size(32)
        32
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (per replica), found {batch_size!r}")
    return batch_size * _replicas(strategy)


def _walk(dataset: Any) -> list[Any]:
    seen, stack, out = set(), [dataset], []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(_tf.dataset_inputs(node))
    return out


def shard_policy_for(dataset: Any, num_workers: int = 2) -> tuple[str, str]:
    """Choose the auto-shard policy for ``dataset``: ``("file" | "data", reason)``.

    FILE when the pipeline reads files (TFRecord, text lines, fixed-length records, or an
    interleave over a list of file names) and there are at least ``num_workers`` files, so
    each worker reads its own files; DATA otherwise (in-memory tensors, generators, too few
    files), so each worker keeps its share of the elements and none is read twice.

    Example:
        >>> import tensorflow as tf
        >>> from tfplace._data import shard_policy_for
        >>> policy, reason = shard_policy_for(tf.data.Dataset.range(100), num_workers=2)
        >>> policy  # in-memory elements, no files: each worker keeps its share of them
        'data'
    """
    nodes = _walk(dataset)
    names = [type(n).__name__ for n in nodes]
    readers = [n for n in nodes if any(r in type(n).__name__ for r in _READERS)]
    fanout = [n for n in nodes if any(f in type(n).__name__ for f in _FILE_FANOUT)]
    files = -1
    for node in readers + fanout:
        for source in _walk(node)[1:]:
            if "TensorSlice" in type(source).__name__:
                spec = getattr(source, "element_spec", None)
                if getattr(getattr(spec, "dtype", None), "name", "") == "string":
                    files = max(files, int(source.cardinality()))
    if readers or fanout:
        if files >= num_workers:
            return "file", f"the pipeline reads {files} files, at least one per worker"
        if files > 0:
            return "data", (
                f"the pipeline reads only {files} file(s) for {num_workers} workers, so "
                "elements are split instead"
            )
    source = names[-1] if names else "unknown"
    return "data", f"the source ({source}) is not a set of files: elements are split"


def prepare_dataset(
    dataset: tf.data.Dataset,
    batch_size: int,
    *,
    strategy: Any = None,
    preprocess: Callable[..., Any] | None = None,
    shuffle: int | None = None,
    seed: int | None = None,
    cache: bool | str = False,
    drop_remainder: bool = False,
    deterministic: bool | None = None,
    shard_policy: ShardPolicy = "auto",
    prefetch: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Turn a dataset of examples into one ready for ``model.fit`` under ``strategy``.

    The pipeline: ``map(preprocess, parallel, on the CPU)`` -> ``cache`` -> ``shuffle`` ->
    ``batch(global batch size)`` -> ``prefetch``, with the auto-shard policy that fits the
    source.

    Args:
        dataset: unbatched examples.
        batch_size: examples PER REPLICA; the dataset is batched with
            :func:`global_batch_size`.
        strategy: the strategy the model trains under (default: the current one).
        preprocess: a function applied to each example, as a parallel ``map``
            (``num_parallel_calls=AUTOTUNE``).
        shuffle: a shuffle buffer size (None: no shuffling).
        seed: the shuffle seed (for reproducible order).
        cache: True caches preprocessed examples in memory, a string caches to that file.
            Do not cache after random augmentation.
        drop_remainder: drop the last partial batch (needed for static shapes on TPUs).
        deterministic: keep element order in the parallel map (None: tf.data's default,
            which is deterministic unless ``tf.data.Options.deterministic`` says otherwise).
        shard_policy: ``"auto"`` (see :func:`shard_policy_for`), ``"data"``, ``"file"`` or
            ``"off"``, for multi-worker training.
        prefetch: batches to prefetch (None: AUTOTUNE).
        repeat: repeat the batches forever; then pass ``steps_per_epoch`` to ``fit`` (the log
            line gives it when the dataset's size is known). Under a distribution strategy this
            keeps one distributed iterator for the whole ``fit``: with a finite dataset and no
            ``steps_per_epoch``, Keras 3 builds a new one at every epoch boundary, which costs
            0.1 s to several seconds per epoch on 2 virtual CPUs (``docs/data.md``).

    Returns:
        The prepared ``tf.data.Dataset``.

    Raises:
        ValueError / TypeError: bad arguments (checked before TensorFlow is touched).

    Example:
        Under the default strategy (one replica) the global batch is the per-replica one:

        >>> import tensorflow as tf
        >>> raw = tf.data.Dataset.range(100)
        >>> ds = tfplace.prepare_dataset(raw, 32, preprocess=lambda x: x * 2, shuffle=100, seed=0)
        >>> [int(batch.shape[0]) for batch in ds]
        [32, 32, 32, 4]
        >>> sorted(int(x) for batch in ds for x in batch) == list(range(0, 200, 2))
        True
    """
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"preprocess must be callable, found {preprocess!r}")
    if shuffle is not None and (
        isinstance(shuffle, bool) or not isinstance(shuffle, int) or shuffle < 1
    ):
        raise ValueError(f"shuffle must be a positive buffer size or None, found {shuffle!r}")
    if not isinstance(cache, bool | str):
        raise TypeError(f"cache must be True, False or a file path, found {cache!r}")
    if shard_policy not in ("auto", "data", "file", "off"):
        raise ValueError(
            f"shard_policy must be 'auto', 'data', 'file' or 'off', found {shard_policy!r}"
        )
    if prefetch is not None and (
        isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1
    ):
        raise ValueError(f"prefetch must be a positive int or None, found {prefetch!r}")
    for name, flag in (("drop_remainder", drop_remainder), ("repeat", repeat)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, found {flag!r}")
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True, False or None, found {deterministic!r}")
    global_batch = global_batch_size(batch_size, strategy)
    if not _tf.is_dataset(dataset):
        raise TypeError(f"dataset must be a tf.data.Dataset, found {type(dataset).__name__}")
    autotune = _tf.data_autotune()
    if shard_policy == "auto":
        workers = _tf.strategy_num_workers(
            strategy if strategy is not None else _tf.current_strategy()
        )
        policy, why = shard_policy_for(dataset, max(2, workers))
    else:
        policy, why = shard_policy, "requested"
    ds = dataset
    if preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=autotune, deterministic=deterministic)
    if cache is not False:
        ds = ds.cache("" if cache is True else cache)
    if shuffle is not None:
        ds = ds.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(global_batch, drop_remainder=drop_remainder)
    steps = int(ds.cardinality())  # batches per epoch; < 0: infinite or unknown
    if repeat:
        ds = ds.repeat()
        if steps > 0:
            log.info(
                "prepare_dataset: repeated; pass steps_per_epoch=%d to fit (one distributed "
                "iterator for the whole fit instead of one per epoch)",
                steps,
            )
        else:
            log.info(
                "prepare_dataset: repeated; the size of one epoch is unknown, so pass "
                "steps_per_epoch=ceil(examples / global batch) to fit"
            )
    ds = ds.prefetch(autotune if prefetch is None else prefetch)
    ds = ds.with_options(_tf.shard_options(policy))
    log.info(
        "prepare_dataset: global batch %d (%d per replica), auto-shard %s: %s",
        global_batch,
        batch_size,
        policy.upper(),
        why,
    )
    return ds
