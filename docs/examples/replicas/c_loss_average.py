"""Cause (c): a custom loop averages the loss over the replica's batch.

The replicas' gradients are SUMMED, so each replica's loss must be its share of the global
average: sum(per-example loss) / GLOBAL batch (tf.nn.compute_average_loss). reduce_mean over
the replica's own batch makes the update N times too large (with SGD; Adam mostly hides it).
"""

from __future__ import annotations

import sys
from typing import Any

from _common import custom_step, distributed_batches, model, run

CASES: dict[str, dict[str, Any]] = {
    "broken": {
        "build": model,
        "data": distributed_batches,
        "train_step": custom_step(average="replica"),
    },
    "fixed": {
        "build": model,
        "data": distributed_batches,
        "train_step": custom_step(average="global"),
    },
}

if __name__ == "__main__":
    sys.exit(run("c", CASES))
