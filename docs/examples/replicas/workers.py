"""Causes (b), (d) to (g) across workers: the one-process examples, written for N workers.

Run with 2 local workers: ``python docs/examples/replicas/workers.py`` (the check starts
them; the one-replica run stays in this process). The workers import ``build`` and ``data`` again,
so each is a top-level function here, and a pipeline per worker also shards by its input
pipeline (each worker reads its own examples, as in ``a_workers.py``).

CASES_B, broken / fixed: each worker's pipeline batched by the global / the per-replica size.
CASES_D, broken / fixed: BatchNormalization per replica / synchronized across workers.
CASES_E, broken / fixed: Dropout draws its mask per replica / no dropout during the check.
CASES_F, broken / fixed: mixed_float16 checked at float32's tolerance (stated) / under float32.
CASES_G, broken / fixed: jit_compile=True / "auto" (Keras turns XLA off under tf.distribute).
"""

from __future__ import annotations

import sys
from typing import Any

import tensorflow as tf
from _common import GLOBAL_BATCH, dataset, global_batches, model, run


def global_size_per_worker(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        mine = dataset().shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return mine.batch(GLOBAL_BATCH)  # BUG: this is the global size

    return strategy.distribute_datasets_from_function(per_worker)


def per_replica_size_per_worker(strategy: Any) -> Any:
    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        mine = dataset().shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return mine.batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH))

    return strategy.distribute_datasets_from_function(per_worker)


def batchnorm_per_replica() -> Any:
    return model(batchnorm=True)


def batchnorm_synchronized() -> Any:
    return model(batchnorm=True, synchronized=True)


def with_dropout() -> Any:
    return model(dropout=0.3)


def without_dropout() -> Any:
    return model(dropout=0.0)


def mixed_float16() -> Any:
    return model(policy="mixed_float16")


def float32() -> Any:
    return model(policy="float32")


def xla() -> Any:
    return model(jit_compile=True)


def xla_auto() -> Any:
    return model(jit_compile="auto")


CASES_B: dict[str, dict[str, Any]] = {
    "broken": {"build": model, "data": global_size_per_worker},
    "fixed": {"build": model, "data": per_replica_size_per_worker},
}
CASES_D: dict[str, dict[str, Any]] = {
    "broken": {"build": batchnorm_per_replica, "data": global_batches},
    "fixed": {"build": batchnorm_synchronized, "data": global_batches},
}
CASES_E: dict[str, dict[str, Any]] = {
    "broken": {"build": with_dropout, "data": global_batches},
    "fixed": {"build": without_dropout, "data": global_batches},
}
CASES_F: dict[str, dict[str, Any]] = {
    "broken": {"build": mixed_float16, "data": global_batches, "rtol": 1e-4, "atol": 1e-5},
    "fixed": {"build": float32, "data": global_batches},
}
CASES_G: dict[str, dict[str, Any]] = {
    "broken": {"build": xla, "data": global_batches},
    "fixed": {"build": xla_auto, "data": global_batches},
}

if __name__ == "__main__":
    failed = [
        run(cause, cases, replicas=(2,), workers=True)
        for cause, cases in zip("bdefg", (CASES_B, CASES_D, CASES_E, CASES_F, CASES_G), strict=True)
    ]
    sys.exit(max(failed))
