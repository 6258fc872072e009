"""Shared toy data for the replica cases: a small regression problem, fixed by a seed."""

from __future__ import annotations

import numpy as np

EXAMPLES = 512
FEATURES = 8


def arrays(seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, 1)).astype("float32")
    return x, (x @ w + 0.1 * rng.normal(size=(EXAMPLES, 1))).astype("float32")
