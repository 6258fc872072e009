"""The judgement: two recorded runs compared step by step, variable by variable. Pure NumPy.

Per step, on both runs, the judge reads each variable before and after the step (one variable
at a time, from the runs' snapshots) and keeps only sums: the largest gap of a variable after
the step in units of the tolerance, and for the trainable variables the update of each run
(``d1``, ``dN``), their dot product and the norm of their difference. An update is judged
relative to its own size, so a step N times too large is caught at any learning rate; a
variable or logged value that is NaN or inf is a verdict of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tfplace.replicas._causes import rank
from tfplace.replicas._evidence import Evidence, near
from tfplace.replicas._records import Run, Snapshots
from tfplace.replicas._report import ModelFacts, ReplicaReport, StepRow, Verdict
from tfplace.replicas._tolerance import Tolerance

__all__ = ["Hints", "StepCompare", "StepComparer", "compare_steps", "judge"]


@dataclass(frozen=True)
class StepCompare:
    """One step of both runs, reduced to what the judge reads."""

    worst_variable: str
    worst_gap: float
    differing: tuple[str, ...]
    nonfinite_one: tuple[str, ...]
    nonfinite_many: tuple[str, ...]
    norm_one: float  # ||d1||: the one-replica update, trainable variables
    norm_many: float  # ||dN||
    dot: float  # dN . d1
    error: float  # ||dN - d1||
    floor: float  # the part of ||dN - d1|| the variables' own rounding can make

    @property
    def ratio(self) -> float:
        """The N-replica update projected on the one-replica update."""
        return self.dot / self.norm_one**2 if self.norm_one > 0 else math.nan

    @property
    def cosine(self) -> float:
        """The cosine between the two updates."""
        both = self.norm_one * self.norm_many
        return self.dot / both if both > 0 else math.nan

    def update_gap(self, update_rtol: float) -> float:
        """``||dN - d1||`` in units of its tolerance (> 1: the updates part)."""
        allowed = update_rtol * self.norm_one + self.floor
        if allowed > 0:
            return self.error / allowed
        return math.inf if self.error > 0 else 0.0


def _gap(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> float:
    """Largest ``|a - b| / (atol + rtol |b|)`` over the values finite in both (> 1: outside)."""
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ratio = np.abs(a - b)
        denom = np.abs(b)
        denom *= rtol
        denom += atol
        ratio /= denom
        worst = float(ratio.max())
        if math.isfinite(worst):  # the fast way: every value finite, the tolerance > 0
            return worst
        diff = np.abs(a - b)
        ratio = np.where(denom > 0, ratio, np.where(diff > 0, np.inf, 0.0))
    finite = ratio[np.isfinite(a) & np.isfinite(b)]
    return float(finite.max()) if finite.size else 0.0


def _eps(dtype: np.dtype) -> float:
    try:
        return float(np.finfo(dtype).eps)
    except ValueError:  # an integer variable (a seed state): no rounding
        return 0.0


def _all_finite(values: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(values.sum(dtype=np.float64))):
            return True
    return bool(np.isfinite(values).all())


class StepComparer:
    """Compares the N-replica run with the one-replica run's snapshots as it trains, one step
    at a time: ``append`` takes the N-replica variables after each step (snapshot 0 first),
    one variable at a time, and keeps only the previous snapshot (float32) and the sums.

    Quacks like :class:`Snapshots` for the training (``append``, ``len``), so the N-replica
    variables never go to a file.
    """

    def __init__(
        self, one: Snapshots, *, names: Sequence[str], trainable: Sequence[bool], tol: Tolerance
    ) -> None:
        self.one = one
        self.names = list(names)
        self.trainable = list(trainable)
        self.tol = tol
        self.steps: list[StepCompare] = []
        self._eps = [_eps(np.dtype(dtype)) for dtype, _ in one.layout]
        self._previous: list[np.ndarray] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, arrays: Iterable[np.ndarray]) -> None:
        """The N-replica variables after the next step (the first call: before training)."""
        if self._count == 0:
            self._previous = [_narrow(np.asarray(a)) for a in arrays]
        elif self._count < len(self.one):
            self.steps.append(self._compare(self._count - 1, arrays))
        self._count += 1

    def _compare(self, k: int, arrays: Iterable[np.ndarray]) -> StepCompare:
        tol, names = self.tol, self.names
        gaps: list[float] = []
        bad_one: list[str] = []
        bad_many: list[str] = []
        s11 = snn = sn1 = sdd = sww = 0.0
        for j, value in enumerate(arrays):
            b1, b0 = _narrow(np.asarray(value)), self._previous[j]
            a1 = self.one.read(k + 1, j)
            gaps.append(_gap(b1, a1, tol.rtol, tol.atol))
            if not _all_finite(a1):
                bad_one.append(names[j])
            if not _all_finite(b1):
                bad_many.append(names[j])
            if self.trainable[j] and a1.shape == b1.shape == b0.shape:
                a0 = self.one.read(k, j)
                with np.errstate(invalid="ignore", over="ignore"):
                    d1 = (a1 - a0).ravel()
                    dn = (b1 - b0).ravel()
                    diff = dn - d1
                    w = a1.ravel()
                    s11 += float(np.dot(d1, d1))
                    snn += float(np.dot(dn, dn))
                    sn1 += float(np.dot(dn, d1))
                    sdd += float(np.dot(diff, diff))
                    sww += self._eps[j] ** 2 * float(np.dot(w, w))
            self._previous[j] = b1
        worst = int(np.argmax(gaps)) if gaps else 0
        return StepCompare(
            worst_variable=names[worst] if names else "",
            worst_gap=gaps[worst] if gaps else 0.0,
            differing=tuple(n for n, g in zip(names, gaps, strict=False) if g > 1.0),
            nonfinite_one=tuple(bad_one),
            nonfinite_many=tuple(bad_many),
            norm_one=math.sqrt(s11) if math.isfinite(s11) else math.inf,
            norm_many=math.sqrt(snn) if math.isfinite(snn) else math.inf,
            dot=sn1,
            error=math.sqrt(sdd) if math.isfinite(sdd) else math.inf,
            floor=4.0 * math.sqrt(sww) if math.isfinite(sww) else math.inf,
        )


def _narrow(value: np.ndarray) -> np.ndarray:
    """float32 for floats of 32 bits or fewer (exact), float64 otherwise."""
    wide = value.dtype.kind not in "fV" or value.dtype.itemsize > 4
    return value.astype(np.float64 if wide else np.float32)


def compare_steps(
    one: Snapshots,
    many: Snapshots,
    steps: int,
    *,
    names: Sequence[str],
    trainable: Sequence[bool],
    tol: Tolerance,
) -> list[StepCompare]:
    """Compare ``steps`` steps of two runs' recorded snapshots (the workers' file), through
    a :class:`StepComparer`."""
    comparer = StepComparer(one, names=names, trainable=trainable, tol=tol)
    for k in range(min(steps + 1, len(many))):
        comparer.append(many.read(k, j) for j in range(many.variables))
    return comparer.steps


@dataclass(frozen=True)
class Hints:
    """What the check learned besides the two runs: the global batch data() makes for one
    replica by itself and the one compared (it grows with the replica count it is told)."""

    own_batch: int = 0
    compared_batch: int = 0


def _finite(values: dict[str, float]) -> list[str]:
    return [k for k, v in values.items() if not math.isfinite(v)]


def _logged_notes(rows: list[StepRow], n: int, tol: Tolerance) -> list[str]:
    """Logged values that differ between the runs, named with their ratio."""
    notes: list[str] = []
    names = [k for k in (rows[0].metrics_one if rows else {}) if k in rows[0].metrics_many]
    for name in names:
        pairs = [
            (r.metrics_one[name], r.metrics_many[name])
            for r in rows
            if name in r.metrics_one and name in r.metrics_many
        ]
        off = [
            (a, b)
            for a, b in pairs
            if math.isfinite(a) and math.isfinite(b) and abs(b - a) > tol.atol + tol.rtol * abs(a)
        ]
        if not off:
            continue
        ratios = [b / a for a, b in off if a != 0]
        ratio = float(np.median(ratios)) if ratios else math.nan
        why = ""
        if near(ratio, 1 / n, 0.01):
            why = (
                f" = 1/{n}: the value logged is scaled by 1/N for the replicas (Keras's "
                "compute_loss under tf.distribute returns the loss divided by the replica "
                "count, right for the gradients; a tracker fed that value logs it 1/N too "
                f"small). Log the unscaled value (loss * strategy.num_replicas_in_sync)"
            )
        elif near(ratio, n, 0.01):
            why = (
                f" = {n}: the value logged is summed over the replicas where it should be "
                "averaged (strategy.reduce('SUM') of per-replica means)"
            )
        notes.append(
            f"the logged {name!r} differs at {len(off)} of {len(pairs)} steps "
            f"(on {n} replicas {ratio:.4g}x the one-replica value{why})"
        )
    only = sorted(set(rows[0].metrics_one) ^ set(rows[0].metrics_many)) if rows else []
    if only:
        notes.append(f"logged by one run only: {', '.join(only)}")
    return notes


def _verdict(
    rows: list[StepRow], compared: list[StepCompare], tol: Tolerance, many: Run
) -> tuple[Verdict, int | None, bool]:
    """The verdict, the first step it rests on, and whether that step's global batch held
    other examples (the numbers agreeing or not)."""
    differs = next(
        (
            r.step
            for r, c in zip(rows, compared, strict=True)
            if c.worst_gap > 1.0 or c.update_gap(tol.update_rtol) > 1.0 or not r.same_batch
        ),
        None,
    )
    nonfinite = next(
        (
            r.step
            for r, c in zip(rows, compared, strict=True)
            if c.nonfinite_one
            or c.nonfinite_many
            or _finite(r.metrics_one)
            or _finite(r.metrics_many)
        ),
        None,
    )
    if nonfinite is not None and (differs is None or nonfinite <= differs):
        return "NOT FINITE", nonfinite, False
    if differs is not None:
        return "DIFFERENT", differs, not rows[differs].same_batch
    if many.error is not None:
        return "DIFFERENT", len(rows), False
    return "SAME", None, False


def judge(
    one: Run,
    many: Run,
    compared: list[StepCompare],
    *,
    facts: ModelFacts,
    replicas: int,
    steps: int,
    tol: Tolerance,
    custom: bool,
    hints: Hints | None = None,
) -> ReplicaReport:
    """Judge two recorded runs from their step comparisons and rank the likely causes."""
    n = replicas
    hints = hints or Hints()
    count = min(len(compared), len(one.losses), len(many.losses))
    rows: list[StepRow] = []
    for k in range(count):
        c = compared[k]
        same_batch = (
            k < len(one.batches)
            and k < len(many.batches)
            and one.batches[k].digest == many.batches[k].digest
        )
        rows.append(
            StepRow(
                k,
                one.losses[k],
                many.losses[k],
                c.worst_variable,
                c.worst_gap,
                same_batch,
                c.ratio,
                c.cosine,
                c.update_gap(tol.update_rtol),
                dict(one.metrics[k]) if k < len(one.metrics) else {},
                dict(many.metrics[k]) if k < len(many.metrics) else {},
            )
        )
    notes: list[str] = []
    sizes = (
        one.batches[0].size if one.batches else 0,
        many.batches[0].size if many.batches else 0,
    )
    if hints.compared_batch and hints.own_batch != hints.compared_batch:
        notes.append(
            f"data() sizes the global batch from the replica count ({hints.own_batch} examples "
            f"for 1 replica, {hints.compared_batch} for {n}): the check compared both runs at "
            f"{hints.compared_batch}, the {n}-replica global batch"
        )
    if not rows and many.error is None:
        notes.append(
            f"no step ran: data(strategy) gave {len(one.batches)} batches on 1 replica and "
            f"{len(many.batches)} on {n}; nothing was compared"
        )
        verdict: Verdict = "COULD NOT CHECK"
        first_step, data_only = None, False
    else:
        verdict, first_step, data_only = _verdict(rows, compared[: len(rows)], tol, many)
    first_variable: str | None = None
    differing: tuple[str, ...] = ()
    if verdict in ("DIFFERENT", "NOT FINITE") and first_step is not None and first_step < count:
        c = compared[first_step]
        bad = c.nonfinite_many + tuple(v for v in c.nonfinite_one if v not in c.nonfinite_many)
        if verdict == "NOT FINITE" and bad:
            first_variable, differing = bad[0], bad
        elif c.differing:
            first_variable, differing = c.differing[0], c.differing
    if many.error is not None:
        notes.append(f"training on {n} replicas failed at step {count}: {many.error}")
    if data_only and first_step is not None:
        row = rows[first_step]
        agree = row.worst_gap <= 1.0 and row.update_gap <= 1.0
        notes.append(
            f"the global batch of step {first_step} holds other examples on {n} replicas than "
            "on one: the runs train on different data"
            + (" (loss and weights agree at that step all the same)" if agree else "")
        )
    if 0 < len(rows) < steps and many.error is None:
        notes.append(f"only {len(rows)} of {steps} steps ran: the input ran out")
    if rows and verdict == "SAME":
        notes += _logged_notes(rows, n, tol)
        if all(r.update_ratio != r.update_ratio for r in rows):  # NaN: no step moved
            notes.append("no step changed a trainable variable: only the forward pass agreed")
    evidence = _evidence(one, many, rows, compared, first_step, tol, sizes, verdict, custom)
    causes = rank(evidence, facts, n, custom, verdict, many.error)
    if evidence.grad_ratio is not None and verdict == "DIFFERENT":
        notes.append(
            f"the update of step {first_step} on {n} replicas is {evidence.grad_ratio:.3g}x "
            f"the one-replica update (cosine {evidence.update_cosine:.4g}, projected over all "
            "trainable weights)"
        )
    return ReplicaReport(
        same=verdict == "SAME",
        replicas=n,
        steps=steps,
        rtol=tol.rtol,
        atol=tol.atol,
        mode="custom train_step" if custom else "model.fit",
        first_step=first_step,
        first_variable=first_variable,
        differing_variables=differing,
        rows=tuple(rows),
        causes=tuple(causes),
        facts=facts,
        notes=tuple(notes),
        verdict=verdict,
        update_rtol=tol.update_rtol,
        tolerance=tol.source,
        batch_sizes=sizes,
    )


def _evidence(
    one: Run,
    many: Run,
    rows: list[StepRow],
    compared: list[StepCompare],
    first_step: int | None,
    tol: Tolerance,
    sizes: tuple[int, int],
    verdict: Verdict,
    custom: bool,
) -> Evidence:
    """What the causes read, from the rows and the first step where the runs part."""
    batch_differs = next((r.step for r in rows if not r.same_batch), None)
    l1 = rows[0].loss_one if rows else math.nan
    ln = rows[0].loss_many if rows else math.nan
    logged = math.isfinite(l1) and math.isfinite(ln)
    ratio = ln / l1 if logged and l1 != 0 else math.nan
    loss0 = logged and abs(ln - l1) > tol.atol + tol.rtol * abs(l1)
    update_ratio = update_cosine = None
    relative = math.nan
    skipped = False
    if first_step is not None and first_step < len(compared):
        c = compared[first_step]
        if c.norm_one > 0 and math.isfinite(c.norm_one):
            update_ratio, update_cosine = c.ratio, c.cosine
            relative = c.error / c.norm_one
        skipped = (c.norm_one == 0.0) != (c.norm_many == 0.0)
    step0 = compared[0].update_gap(tol.update_rtol) > 1.0 if compared else False
    worst = max((r.worst_gap for r in rows), default=0.0)
    rounding = (
        batch_differs is None
        and math.isfinite(relative)
        and relative <= 10 * tol.update_rtol
        and (update_cosine or 0.0) >= 0.99
        and worst < 1000.0
    )
    nonfinite = ""
    if verdict == "NOT FINITE" and first_step is not None and first_step < len(rows):
        c, r = compared[first_step], rows[first_step]
        in_one = bool(c.nonfinite_one or _finite(r.metrics_one))
        in_many = bool(c.nonfinite_many or _finite(r.metrics_many))
        nonfinite = "both" if in_one and in_many else ("one" if in_one else "many")
    return Evidence(
        batch_differs_at=batch_differs,
        batch_sizes=sizes,
        duplicated=any(b.duplicated for b in many.batches[: len(rows)]),
        undistributed=custom and any(b.undistributed for b in many.batches[: len(rows)]),
        loss0_ratio=ratio,
        loss0_differs=loss0,
        grad_ratio=update_ratio,
        skipped=skipped,
        small=rounding,
        update_cosine=update_cosine,
        update_relative=relative,
        step0_update_differs=step0 and batch_differs != 0,
        reread=bool(one.reread),
        nonfinite=nonfinite,
        first_step=first_step,
    )
