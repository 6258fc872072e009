"""Cause (c): a custom loop averages the loss over the replica's batch.

The replicas' gradients are SUMMED, so each replica's loss must be its share of the global
average: sum(per-example loss) / GLOBAL batch (tf.nn.compute_average_loss). reduce_mean over
the replica's own batch makes the update N times too large (with SGD; Adam mostly hides it).

``python c_loss_average.py --workers`` checks it with 2 local workers instead of 2 and 4
replicas in this process.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import custom_step, distributed_batches, model, run

#: Top-level names, so that local workers (compare_replicas(workers=True)) can import them.
replica_mean_step = custom_step(average="replica")
global_average_step = custom_step(average="global")

CASES: dict[str, dict[str, Any]] = {
    "broken": {"build": model, "data": distributed_batches, "train_step": replica_mean_step},
    "fixed": {"build": model, "data": distributed_batches, "train_step": global_average_step},
}

if __name__ == "__main__":
    workers = "--workers" in sys.argv
    sys.exit(run("c", CASES, replicas=(2,) if workers else (2, 4), workers=workers))
