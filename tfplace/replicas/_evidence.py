"""What the judge saw, reduced to what the causes read. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tfplace.replicas._report import ModelFacts

__all__ = ["Context", "Evidence", "near"]


@dataclass(frozen=True)
class Evidence:
    """What the judge saw, as the causes read it.

    Attributes:
        batch_differs_at: the first step whose global batch held other examples.
        batch_sizes: the first global batch on 1 and on N replicas.
        duplicated: every replica received the very same examples (some step).
        undistributed: a plain (not per-replica) value reached the step.
        loss0_ratio / loss0_differs: the step-0 logged loss, N over 1, and whether it parts.
        grad_ratio / update_cosine / update_relative: at the first step where the runs part,
            the N-replica update projected on the one-replica one, their cosine, and
            ``||dN - d1|| / ||d1||``.
        skipped: one run applied no update where the other did.
        small: the gap is rounding-sized: same batches, the updates within 10x their
            tolerance and in the same direction.
        step0_update_differs: the very first update parts, with the same weights and batch.
        reread: the input gave other batches when read again with the same seed.
        nonfinite: ``"one"``, ``"many"`` or ``"both"``: which run reached NaN/inf first.
        first_step: the step where the runs part.
    """

    batch_differs_at: int | None
    batch_sizes: tuple[int, int]
    duplicated: bool
    undistributed: bool
    loss0_ratio: float
    loss0_differs: bool
    grad_ratio: float | None
    skipped: bool
    small: bool
    update_cosine: float | None = None
    update_relative: float = math.nan
    step0_update_differs: bool = False
    reread: bool = False
    nonfinite: str = ""
    first_step: int | None = None

    @property
    def batches_same(self) -> bool:
        """Every step's global batch held the same examples on both runs."""
        return self.batch_differs_at is None and not self.undistributed and not self.duplicated


def near(value: float | None, target: float, rel: float = 0.05) -> bool:
    """``value`` within ``rel`` (relative) of ``target``."""
    return value is not None and math.isfinite(value) and abs(value - target) <= rel * target


@dataclass(frozen=True)
class Context:
    """What a cause's finder reads besides the evidence."""

    ev: Evidence
    facts: ModelFacts
    n: int
    custom: bool
