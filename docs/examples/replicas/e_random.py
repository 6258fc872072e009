"""Cause (e): random ops draw other numbers on N replicas.

broken_dropout: Dropout masks are drawn per replica, so they differ from the one-replica mask.
broken_noise: a custom loop adds tf.random.normal input noise.
fixed_dropout_off: the same model checked with dropout off, which the check can compare; the
    random part itself cannot match across replica counts.
fixed_stateless_noise: noise drawn from each example's id (a stateless RNG), the same whatever
    replica holds the example.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import custom_step, distributed_batches, global_batches, model, run

CASES: dict[str, dict[str, Any]] = {
    "broken_dropout": {"build": lambda: model(dropout=0.3), "data": global_batches},
    "broken_noise": {
        "build": model,
        "data": distributed_batches,
        "train_step": custom_step(noise="stateful"),
    },
    "fixed_dropout_off": {"build": lambda: model(dropout=0.0), "data": global_batches},
    "fixed_stateless_noise": {
        "build": model,
        "data": distributed_batches,
        "train_step": custom_step(noise="stateless"),
    },
}

if __name__ == "__main__":
    sys.exit(run("e", CASES))
