"""Cause (g): XLA (jit_compile=True) under MirroredStrategy.

With Keras 3 and TensorFlow 2.21 on virtual CPUs, an explicit jit_compile=True makes the
multi-replica fit fail at its first step (XLA compiles one replica's step that reads variables
placed on other devices). jit_compile="auto", Keras 3's default, turns XLA off under
tf.distribute.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import global_batches, model, run

CASES: dict[str, dict[str, Any]] = {
    "broken": {"build": lambda: model(jit_compile=True), "data": global_batches},
    "fixed": {"build": lambda: model(jit_compile="auto"), "data": global_batches},
}

if __name__ == "__main__":
    sys.exit(run("g", CASES))
