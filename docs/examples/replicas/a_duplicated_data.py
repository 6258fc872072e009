"""Cause (a): every replica reads the same examples.

broken_plain_batch: a custom loop hands plain (undistributed) batches to strategy.run, so every
    replica trains on the whole global batch.
broken_unsharded: one input pipeline per replica that does not shard by the input context, so
    every replica reads the same examples.
fixed: strategy.experimental_distribute_dataset splits every global batch between the replicas.
fixed_sharded: the per-replica pipelines shard by input_context.
"""

from __future__ import annotations

import sys
from typing import Any

import tensorflow as tf
from _common import GLOBAL_BATCH, custom_step, dataset_with_ids, distributed_batches, model, run


def plain_batches(strategy: Any) -> Any:
    return dataset_with_ids().batch(GLOBAL_BATCH)  # BUG: not distributed


def _per_replica(strategy: Any) -> tf.distribute.InputOptions | None:
    """One input pipeline per replica (MirroredStrategy; OneDeviceStrategy has one anyway)."""
    if strategy.num_replicas_in_sync == 1:
        return None
    mode = tf.distribute.InputReplicationMode.PER_REPLICA
    return tf.distribute.InputOptions(experimental_replication_mode=mode)


def unsharded_pipelines(strategy: Any) -> Any:
    def per_replica(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        size = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        return dataset_with_ids().batch(size)  # BUG: no .shard(ctx.num_input_pipelines, ...)

    return strategy.distribute_datasets_from_function(per_replica, _per_replica(strategy))


def sharded_pipelines(strategy: Any) -> Any:
    def per_replica(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        size = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        shards = dataset_with_ids().batch(size)  # consecutive slices of each global batch
        return shards.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

    return strategy.distribute_datasets_from_function(per_replica, _per_replica(strategy))


CASES: dict[str, dict[str, Any]] = {
    "broken_plain_batch": {"build": model, "data": plain_batches, "train_step": custom_step()},
    "broken_unsharded": {"build": model, "data": unsharded_pipelines, "train_step": custom_step()},
    "fixed": {"build": model, "data": distributed_batches, "train_step": custom_step()},
    "fixed_sharded": {"build": model, "data": sharded_pipelines, "train_step": custom_step()},
}

if __name__ == "__main__":
    sys.exit(run("a", CASES))
