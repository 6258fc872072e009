"""prepare_dataset and global_batch_size: nothing lost or repeated, under 1, 2 replicas and
two workers; the shard policy fits the source."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import run_workers

import tfplace
from tfplace._data import shard_policy_for

pytestmark = pytest.mark.tf

N = 100
TWO_CPUS = ["/CPU:0", "/CPU:1"]  # the tfplace plugin splits the CPU in two on every machine


def ids_seen(strategy: tf.distribute.Strategy, ds: tf.data.Dataset) -> list[int]:
    seen: list[int] = []
    for batch in strategy.experimental_distribute_dataset(ds):
        for part in strategy.experimental_local_results(batch):
            seen += [int(v) // 10 for v in part.numpy().ravel()]
    return seen


def test_global_batch_size() -> None:
    two = tfplace.pick_strategy("mirrored", devices=TWO_CPUS)
    assert two.num_replicas_in_sync == 2
    assert tfplace.global_batch_size(32, two) == 64
    # mirrored over the GPUs where there are any, else over the virtual CPUs: what plan() says
    mirrored = tfplace.pick_strategy("mirrored")
    replicas = tfplace.plan("mirrored").num_replicas_in_sync
    assert mirrored.num_replicas_in_sync == replicas
    inv = tfplace.inventory()  # and what the hardware implies: every GPU, else every CPU device
    assert replicas == (inv.logical_gpu_count or inv.cpu.logical_devices)
    assert tfplace.global_batch_size(32, mirrored) == 32 * replicas
    assert tfplace.global_batch_size(32) == 32  # no strategy in force: one replica
    with two.scope():
        assert tfplace.global_batch_size(32) == 64  # by default, the strategy in force
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            tfplace.global_batch_size(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Strategy"):
        tfplace.global_batch_size(8, object())


@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_no_element_lost_or_repeated(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    strategy = tfplace.pick_strategy(kind)
    with caplog.at_level(logging.INFO, logger="tfplace"):
        ds = tfplace.prepare_dataset(
            tf.data.Dataset.range(N),
            batch_size=8,
            strategy=strategy,
            preprocess=lambda x: x * 10,
            shuffle=N,
            seed=3,
        )
    seen = ids_seen(strategy, ds)
    assert sorted(seen) == list(range(N))
    assert seen != list(range(N))  # shuffled
    replicas = strategy.num_replicas_in_sync
    assert f"global batch {8 * replicas} (8 per replica)" in caplog.text
    assert "auto-shard DATA" in caplog.text


def test_options_cache_drop_remainder_deterministic(tmp_path: Path) -> None:
    strategy = tfplace.pick_strategy("mirrored", devices=TWO_CPUS)  # global batch 2 x 8
    ds = tfplace.prepare_dataset(
        tf.data.Dataset.range(N),
        batch_size=8,
        strategy=strategy,
        preprocess=lambda x: x * 10,
        cache=str(tmp_path / "cache"),
        drop_remainder=True,
        deterministic=True,
    )
    batches = [b.numpy() for b in ds]
    assert all(b.shape == (16,) for b in batches)
    assert len(batches) == N // 16
    flat = np.concatenate(batches) // 10
    assert list(flat) == list(range(16 * (N // 16)))  # deterministic order, no shuffle
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cache")]  # cache written
    assert ds.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.DATA
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"preprocess": 3}, TypeError),
        ({"shuffle": 0}, ValueError),
        ({"shuffle": True}, ValueError),
        ({"cache": 1}, TypeError),
        ({"shard_policy": "hash"}, ValueError),
        ({"prefetch": 0}, ValueError),
        ({"drop_remainder": "yes"}, TypeError),
        ({"deterministic": 1}, TypeError),
        ({"repeat": "yes"}, TypeError),
        ({"batch_size": 0}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {"batch_size": 4, **kwargs}
    (name,) = kwargs  # the error names the bad argument
    with pytest.raises(error, match=rf"^{name} must be"):
        tfplace.prepare_dataset(tf.data.Dataset.range(4), **args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tf\.data\.Dataset"):
        tfplace.prepare_dataset([1, 2, 3], 4)


def test_repeat_keeps_one_iterator_and_says_the_steps_per_epoch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``repeat=True``: batches forever (so Keras keeps one distributed iterator for the whole
    fit), and the log gives the ``steps_per_epoch`` to pass; without it the size stays finite."""
    raw = tf.data.Dataset.range(100)
    assert int(tfplace.prepare_dataset(raw, 32).cardinality()) == 4
    with caplog.at_level(logging.INFO, logger="tfplace"):
        ds = tfplace.prepare_dataset(raw, 32, repeat=True)
    assert int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    assert "pass steps_per_epoch=4 to fit" in caplog.text
    first_two_epochs = [int(b.shape[0]) for b in ds.take(8)]
    assert first_two_epochs == [32, 32, 32, 4] * 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfplace"):
        tfplace.prepare_dataset(raw.filter(lambda x: x >= 0), 32, repeat=True)
    assert "size of one epoch is unknown" in caplog.text


def write_records(tmp_path: Path, files: int) -> list[str]:
    paths = []
    for f in range(files):
        path = str(tmp_path / f"part-{f}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(5):
                writer.write(f"{f}-{i}".encode())
        paths.append(path)
    return paths


def test_shard_policy_fits_the_source(tmp_path: Path) -> None:
    paths = write_records(tmp_path, 4)
    assert shard_policy_for(tf.data.Dataset.range(10))[0] == "data"
    assert shard_policy_for(tf.data.Dataset.from_tensor_slices(np.ones((4, 2))))[0] == "data"
    assert shard_policy_for(tf.data.TFRecordDataset(paths).map(lambda x: x))[0] == "file"
    assert shard_policy_for(tf.data.TFRecordDataset(paths[:1]))[0] == "data"
    listed = tf.data.Dataset.from_tensor_slices(paths).interleave(tf.data.TFRecordDataset)
    policy, why = shard_policy_for(listed)
    assert policy == "file"
    assert "4 files" in why
    ds = tfplace.prepare_dataset(tf.data.TFRecordDataset(paths), 2)
    assert ds.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.FILE
    )


MULTI = """
import json, os, tempfile
import tfplace
strategy = tfplace.pick_strategy(communication_timeout=60)
import tensorflow as tf

# One TFRecord file with 100 records (each worker writes its own copy, as if on shared disk,
# in its own temporary directory, removed at the end).
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "only.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(100):
            writer.write(str(i).encode())
    source = tf.data.TFRecordDataset([path]).map(lambda s: tf.strings.to_number(s, tf.int64))
    if os.environ["USE_PREPARE"] == "1":
        ds = tfplace.prepare_dataset(source, 8, strategy=strategy, preprocess=lambda x: x * 10)
    else:
        ds = source.map(lambda x: x * 10).batch(16)
    seen = []
    try:
        for batch in strategy.experimental_distribute_dataset(ds):
            for part in strategy.experimental_local_results(batch):
                seen += [int(v) // 10 for v in part.numpy().ravel()]
    except Exception as err:
        print(json.dumps({"error": str(err).splitlines()[0]}))
    else:
        print(json.dumps({"seen": seen}))
"""


@pytest.mark.slow
def test_two_workers_split_the_data_without_loss_or_repeats() -> None:
    # About sharding, not devices: the workers run on the CPU (two workers sharing one GPU
    # would need NCCL between processes on the same device).
    cpu = {"CUDA_VISIBLE_DEVICES": "-1"}
    prepared = run_workers(MULTI, extra_env={**cpu, "USE_PREPARE": "1"})
    raw = run_workers(MULTI, extra_env={**cpu, "USE_PREPARE": "0"})
    first, second = prepared[0]["seen"], prepared[1]["seen"]
    assert first and second
    assert sorted(first + second) == list(range(100))
    # TensorFlow's AUTO policy tries FILE sharding on the one file and fails (FAILURES E3);
    # prepare_dataset chose DATA because there are fewer files than workers.
    assert "Could not apply FILE based sharding" in raw[0]["error"]
