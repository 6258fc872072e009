"""The judgement: two recorded runs compared step by step, variable by variable. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tfplace.replicas._causes import Evidence, rank
from tfplace.replicas._report import ModelFacts, ReplicaReport, StepRow

__all__ = ["Arrays", "Run", "judge"]

Arrays = list[np.ndarray]


@dataclass
class Run:
    """What one training recorded: the loss per step, every variable before and after every
    step, each step's global batch, and how the input reached the replicas."""

    losses: list[float]
    weights: list[Arrays]  # [0] before training, [k + 1] after step k
    batches: list[Arrays]  # per step: each input component's global batch, rows sorted
    duplicated: list[bool]  # per step: every replica got the very same examples
    undistributed: list[bool]  # per step: a plain (not per-replica) value reached the step
    seconds: float = 0.0
    error: str | None = None  # the training failed: its exception, in one line


def _gap(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> float:
    """Largest |a-b| / (atol + rtol|b|): > 1 means outside the tolerance."""
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    denom = atol + rtol * np.abs(b)
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            denom > 0, diff / np.where(denom > 0, denom, 1.0), np.where(diff > 0, np.inf, 0.0)
        )
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    return math.inf if not np.all(np.isfinite(a)) and np.any(np.isfinite(b)) else worst


def _same_batch(a: Arrays | None, b: Arrays | None, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        x.shape == y.shape and _gap(x, y, 0.0, 0.0) <= 1.0 for x, y in zip(a, b, strict=True)
    )


def judge(
    one: Run,
    many: Run,
    *,
    names: list[str],
    trainable: list[bool],
    facts: ModelFacts,
    replicas: int,
    steps: int,
    rtol: float,
    atol: float,
    custom: bool,
) -> ReplicaReport:
    """Compare two recorded runs and rank the likely causes of any difference. Pure."""
    n = replicas
    rows: list[StepRow] = []
    first_step: int | None = None
    first_variable: str | None = None
    differing: tuple[str, ...] = ()
    for k in range(min(len(one.losses), len(many.losses))):
        gaps = [
            _gap(b, a, rtol, atol)
            for a, b in zip(one.weights[k + 1], many.weights[k + 1], strict=True)
        ]
        worst = int(np.argmax(gaps)) if gaps else 0
        batch_a = one.batches[k] if k < len(one.batches) else None
        batch_b = many.batches[k] if k < len(many.batches) else None
        rows.append(
            StepRow(
                k,
                one.losses[k],
                many.losses[k],
                names[worst] if names else "",
                gaps[worst] if gaps else 0.0,
                _same_batch(batch_a, batch_b, 0, 0),
            )
        )
        loss_gap = _gap(np.array([many.losses[k]]), np.array([one.losses[k]]), rtol, atol)
        if first_step is None and (loss_gap > 1.0 or (gaps and gaps[worst] > 1.0)):
            first_step = k
            if gaps and gaps[worst] > 1.0:
                first_variable = names[worst]
                differing = tuple(nm for nm, g in zip(names, gaps, strict=True) if g > 1.0)
    # other examples in a global batch: another training, even where the numbers agree (a
    # duplicated batch averages to the same loss and gradient as the batch it repeats)
    batch_step = next((r.step for r in rows if not r.same_batch), None)
    data_only = batch_step is not None and (first_step is None or batch_step < first_step)
    if data_only:
        first_step, first_variable, differing = batch_step, None, ()
    if many.error is not None and first_step is None:
        first_step = len(rows)
    same = first_step is None and len(rows) == min(steps, len(one.losses))
    evidence = collect_evidence(one, many, rows, trainable, n, first_step, rtol, atol)
    causes = rank(evidence, facts, n, custom, same, first_variable, differing, many.error)
    notes: list[str] = []
    if many.error is not None:
        notes.append(f"training on {n} replicas failed at step {first_step}: {many.error}")
    if data_only and batch_step is not None:
        row = rows[batch_step]
        agree = row.worst_gap <= 1.0 and (
            _gap(np.array([row.loss_many]), np.array([row.loss_one]), rtol, atol) <= 1.0
        )
        notes.append(
            f"the global batch of step {batch_step} holds other examples on {n} replicas than "
            "on one: the runs train on different data"
            + (" (loss and weights agree at that step all the same)" if agree else "")
        )
    if len(rows) < steps and many.error is None:
        notes.append(f"only {len(rows)} of {steps} steps ran: the input ran out")
    if evidence.grad_ratio is not None and not same:
        notes.append(
            f"first update on {n} replicas is {evidence.grad_ratio:.3g}x the update "
            "on 1 replica (projected over all trainable weights)"
        )
    return ReplicaReport(
        same=same,
        replicas=n,
        steps=steps,
        rtol=rtol,
        atol=atol,
        mode="custom train_step" if custom else "model.fit",
        first_step=first_step,
        first_variable=first_variable,
        differing_variables=differing,
        rows=tuple(rows),
        causes=tuple(causes),
        facts=facts,
        notes=tuple(notes),
    )


def collect_evidence(
    one: Run,
    many: Run,
    rows: list[StepRow],
    trainable: list[bool],
    n: int,
    first_step: int | None,
    rtol: float,
    atol: float,
) -> Evidence:
    batch_differs = next((r.step for r in rows if not r.same_batch), None)
    size_one = one.batches[0][0].shape[0] if one.batches and one.batches[0] else 0
    size_many = many.batches[0][0].shape[0] if many.batches and many.batches[0] else 0
    l1 = rows[0].loss_one if rows else math.nan
    ln = rows[0].loss_many if rows else math.nan
    ratio = ln / l1 if l1 not in (0.0,) and math.isfinite(l1) else math.nan
    loss0 = bool(rows) and _gap(np.array([ln]), np.array([l1]), rtol, atol) > 1.0
    grad_ratio = None
    skipped = False
    if first_step is not None and first_step + 1 < min(len(many.weights), len(one.weights)):
        k = first_step
        d1 = _flat_delta(one.weights[k], one.weights[k + 1], trainable)
        dn = _flat_delta(many.weights[k], many.weights[k + 1], trainable)
        norm1 = float(d1 @ d1)
        if norm1 > 0:
            grad_ratio = float(dn @ d1) / norm1
        skipped = (norm1 == 0.0) != (float(dn @ dn) == 0.0)
    worst = max((r.worst_gap for r in rows), default=0.0)
    loss_worst = max(
        (_gap(np.array([r.loss_many]), np.array([r.loss_one]), rtol, atol) for r in rows),
        default=0.0,
    )
    small = max(worst, loss_worst) < 1000.0  # within 1000x the tolerance: rounding-sized
    return Evidence(
        batch_differs,
        (size_one, size_many),
        any(many.duplicated),
        any(many.undistributed),
        ratio,
        loss0,
        grad_ratio,
        skipped,
        small,
    )


def _flat_delta(before: Arrays, after: Arrays, trainable: list[bool]) -> np.ndarray:
    parts = [(b - a).ravel() for a, b, t in zip(before, after, trainable, strict=True) if t]
    return np.concatenate(parts) if parts else np.zeros(0)
