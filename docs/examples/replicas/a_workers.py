"""Cause (a) across workers: every worker reads the same examples.

Run with 2 local workers: ``python docs/examples/replicas/a_workers.py`` (the check starts them;
the one-replica run stays in this process).

broken_no_autoshard: a dataset whose auto-sharding is turned off (AutoShardPolicy.OFF, common
    when the files cannot be split), so every worker reads the whole dataset.
broken_unsharded_pipelines: one pipeline per worker (distribute_datasets_from_function) that
    does not shard by the input context.
fixed: auto-sharding left on (tf.data shards an in-memory dataset by element, DATA).
fixed_sharded_pipelines: each worker's pipeline shards by input_context.
"""

from __future__ import annotations

import sys
from typing import Any

import tensorflow as tf
from _common import GLOBAL_BATCH, dataset, model, run


def no_autoshard(strategy: Any) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset().batch(GLOBAL_BATCH).with_options(options)  # BUG: every worker reads all


def autoshard(strategy: Any) -> tf.data.Dataset:
    return dataset().batch(GLOBAL_BATCH)


def unsharded_pipelines(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        size = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        return dataset().batch(size)  # BUG: no .shard(ctx.num_input_pipelines, ...)

    return strategy.distribute_datasets_from_function(per_worker)


def sharded_pipelines(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        size = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        mine = dataset().shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return mine.batch(size)  # global batch k: examples 32k .. 32k+31, as on one replica

    return strategy.distribute_datasets_from_function(per_worker)


CASES: dict[str, dict[str, Any]] = {
    "broken_no_autoshard": {"build": model, "data": no_autoshard},
    "broken_unsharded_pipelines": {"build": model, "data": unsharded_pipelines},
    "fixed": {"build": model, "data": autoshard},
    "fixed_sharded_pipelines": {"build": model, "data": sharded_pipelines},
}

if __name__ == "__main__":
    sys.exit(run("a", CASES, replicas=(2,), workers=True))
