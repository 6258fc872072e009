"""Cause (d): BatchNormalization normalizes over each replica's share of the batch.

synchronized=True (tf_keras: SyncBatchNormalization) all-reduces the batch statistics, so the
layer sees the global batch whatever the replica count.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import global_batches, model, run

CASES: dict[str, dict[str, Any]] = {
    "broken": {"build": lambda: model(batchnorm=True), "data": global_batches},
    "fixed": {"build": lambda: model(batchnorm=True, synchronized=True), "data": global_batches},
}

if __name__ == "__main__":
    sys.exit(run("d", CASES))
