"""Tuning: measure what runs fastest here, and say why training is slow.

- :func:`autotune` measures placements, XLA and precision on the user's model;
- :func:`find_batch_size` backs off from out-of-memory to the largest batch that fits;
- :func:`diagnose_training` says whether training is input-bound or compute-bound;
- :func:`auto_jit_compile` is the XLA rule Keras applies, as a pure function.

The same functions are at the top level (``tfplace.autotune``); this package adds
:func:`auto_jit_compile`.

Example:
    >>> from tfplace.testing import fake_inventory
    >>> auto_jit_compile("mirrored", fake_inventory(gpus=2))[0]
    False
"""

from __future__ import annotations

from tfplace.tuning._autotune import AutotuneReport, auto_jit_compile, autotune, find_batch_size
from tfplace.tuning._diagnose import TrainingDiagnosis, diagnose_training

__all__ = [
    "AutotuneReport",
    "TrainingDiagnosis",
    "auto_jit_compile",
    "autotune",
    "diagnose_training",
    "find_batch_size",
]
