"""Cause (b): the global batch size used where the per-replica one belongs.

Inside ``distribute_datasets_from_function`` the dataset is batched by the PER-REPLICA size;
batching by the global size makes each replica take a whole global batch, so the real global
batch grows with the replica count.
"""

from __future__ import annotations

import sys
from typing import Any

import tensorflow as tf
from _common import GLOBAL_BATCH, dataset, model, run


def global_size_per_replica(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset().batch(GLOBAL_BATCH)  # BUG: this is the global size

    return strategy.distribute_datasets_from_function(per_worker)


def per_replica_size(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset().batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH))

    return strategy.distribute_datasets_from_function(per_worker)


CASES: dict[str, dict[str, Any]] = {
    "broken": {"build": model, "data": global_size_per_replica},
    "fixed": {"build": model, "data": per_replica_size},
}

if __name__ == "__main__":
    sys.exit(run("b", CASES))
