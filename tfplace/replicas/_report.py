"""The replica check's report: what :func:`~tfplace.compare_replicas` found, as frozen data."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "Cause",
    "ModelFacts",
    "ReplicaReport",
    "StepRow",
    "Verdict",
]

#: Default tolerances. Measured on the fixed examples: 1 vs 2 and 1 vs 4 replicas differ by at
#: most ~1e-6 relative after 5 SGD steps (float32 sums in another order); the broken ones by
#: 1e-2 and more. ``rtol=1e-4, atol=1e-5`` sits between with a wide margin on both sides.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


Verdict = Literal["SAME", "DIFFERENT", "NOT FINITE", "COULD NOT CHECK"]


@dataclass(frozen=True)
class ModelFacts:
    """What the model itself says about its replica-sensitive parts.

    Attributes:
        unsynced_batchnorm: BatchNormalization layers that normalize per replica.
        random_layers: layers that draw random numbers in training (Dropout, ...).
        dtype_policy: the model's dtype policy.
        jit_compile: compiled with ``jit_compile=True``.
        optimizer: the optimizer's class name.
        loss_scaling: the optimizer scales the loss (mixed precision).
        random_calls: random draws written in the training step (``keras.random.normal``).
    """

    unsynced_batchnorm: tuple[str, ...]
    random_layers: tuple[str, ...]
    dtype_policy: str
    jit_compile: bool
    optimizer: str
    loss_scaling: bool
    random_calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cause:
    """One likely cause: its key in the catalogue (``a`` ... ``h``, ``n``, ``s``, ``x``; ``-``
    for "no cause found"), what it is, the evidence seen here, the fix, and a score (0-1) that
    ranks the causes."""

    key: str
    title: str
    evidence: str
    fix: str
    score: float


@dataclass(frozen=True)
class StepRow:
    """One step side by side.

    Attributes:
        step: the step (from 0).
        loss_one / loss_many: the loss logged on 1 and on N replicas (NaN: none logged).
        worst_variable / worst_gap: the variable that differs most after the step, and its gap
            in units of the tolerance (> 1: outside it).
        same_batch: the step's global batch held the same examples on both runs.
        update_ratio: the N-replica update projected on the one-replica update (1: the same
            size; 2: twice it), over all trainable variables.
        update_cosine: the cosine between the two updates (1: the same direction).
        update_gap: ``||dN - d1||`` in units of its tolerance (> 1: the updates part).
        metrics_one / metrics_many: every value the model logs after the step.
    """

    step: int
    loss_one: float
    loss_many: float
    worst_variable: str
    worst_gap: float
    same_batch: bool
    update_ratio: float = math.nan
    update_cosine: float = math.nan
    update_gap: float = 0.0
    metrics_one: dict[str, float] = field(default_factory=dict)
    metrics_many: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaReport:
    """What :func:`compare_replicas` found.

    Attributes:
        same: the training is the same on 1 and N replicas: every variable within the
            tolerance and every update within ``update_rtol`` of the one-replica update after
            every step, every step's global batch with the same examples, nothing non-finite.
            A logged value that alone differs is a note, not a difference.
        replicas: N.
        steps: the steps asked for.
        rtol / atol: the tolerance (``|a - b| <= atol + rtol * |b|``).
        mode: ``"model.fit"`` or ``"custom train_step"``.
        first_step / first_variable: where the runs part first (None when they agree).
        differing_variables: every variable outside the tolerance at that step.
        rows: per step, the losses, logged values, the worst variable and the updates.
        causes: likely causes, most likely first (:class:`Cause`).
        facts: what the model says (BatchNormalization, random layers, dtype policy, XLA).
        notes: other remarks (a failed run, an input that ran out, a logged value).
        seconds: the whole check; train_seconds: the two trainings (1 replica, N replicas).
        devices: the N devices; the one-replica run used the first (with workers, /CPU:0 of
            the calling process).
        workers: how many local worker processes ran the N replicas (0: one process).
        verdict: ``"SAME"``, ``"DIFFERENT"``, ``"NOT FINITE"`` (NaN or inf in a run) or
            ``"COULD NOT CHECK"`` (no step ran).
        update_rtol: the tolerance of the updates, relative to the one-replica update.
        tolerance: where the tolerance comes from (the default for float32 on CPUs, for TF32,
            float16 or bfloat16, or given).
        batch_sizes: the global batch of the first step on 1 and on N replicas.
    """

    same: bool
    replicas: int
    steps: int
    rtol: float
    atol: float
    mode: str
    first_step: int | None
    first_variable: str | None
    differing_variables: tuple[str, ...]
    rows: tuple[StepRow, ...]
    causes: tuple[Cause, ...]
    facts: ModelFacts
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    train_seconds: tuple[float, float] = (0.0, 0.0)
    devices: tuple[str, ...] = field(default=())
    workers: int = 0
    verdict: Verdict = "SAME"
    update_rtol: float = 0.01
    tolerance: str = ""
    batch_sizes: tuple[int, int] = (0, 0)

    @property
    def losses_one(self) -> tuple[float, ...]:
        """The loss of every step on one replica."""
        return tuple(r.loss_one for r in self.rows)

    @property
    def losses_many(self) -> tuple[float, ...]:
        """The loss of every step on N replicas."""
        return tuple(r.loss_many for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (with ``losses_one`` / ``losses_many``)."""
        out = asdict(self)
        out["losses_one"] = list(self.losses_one)
        out["losses_many"] = list(self.losses_many)
        return out

    def _head(self) -> str:
        n = self.replicas
        how = f"{self.mode}, rtol={self.rtol:g}, atol={self.atol:g}"
        how += f", updates within {self.update_rtol:g}"
        if self.workers:
            how = f"{self.mode}, {self.workers} local workers" + how[len(self.mode) :]
        if self.verdict == "SAME":
            return f"SAME: 1 and {n} replicas agree for {len(self.rows)} steps ({how})"
        if self.verdict == "COULD NOT CHECK":
            return f"COULD NOT CHECK: 1 vs {n} replicas ({how})"
        where = f"at step {self.first_step}"
        if self.first_variable:
            where += f", first in variable {self.first_variable}"
        if self.verdict == "NOT FINITE":
            return f"NOT FINITE: NaN or inf {where} (1 vs {n} replicas; {how})"
        return f"DIFFERENT: 1 and {n} replicas part {where} ({how})"

    def _table(self) -> list[str]:
        n = self.replicas
        names = [k for k in (self.rows[0].metrics_one if self.rows else {}) if k != "loss"]
        has_loss = any(math.isfinite(r.loss_one) or math.isfinite(r.loss_many) for r in self.rows)
        shown = (["loss"] if has_loss else []) + names[:2]
        head = f"{'step':>4}  "
        for name in shown:
            head += f"{(name + ' 1'):>12}  {(name + f' {n}'):>12}  "
        lines = [head + f"{'batch':>5}  {'update':>7}  worst variable (gap/tolerance)"]
        for r in self.rows:
            line = f"{r.step:>4}  "
            for name in shown:
                one = r.loss_one if name == "loss" else r.metrics_one.get(name, math.nan)
                many = r.loss_many if name == "loss" else r.metrics_many.get(name, math.nan)
                line += f"{one:>12.7g}  {many:>12.7g}  "
            ratio = f"x{r.update_ratio:.3g}" if math.isfinite(r.update_ratio) else "-"
            line += f"{'same' if r.same_batch else 'DIFF':>5}  {ratio:>7}  "
            lines.append(line + f"{r.worst_variable} ({r.worst_gap:.3g})")
        if not shown and self.rows:
            lines.append("(the model logs no value: only the variables are compared)")
        return lines

    def __str__(self) -> str:
        lines = [self._head()]
        if self.tolerance:
            lines.append(f"tolerance: {self.tolerance}")
        lines.append("")
        if self.rows:
            lines += self._table()
        if self.causes:
            lines += ["", "likely causes, most likely first:"]
            for i, c in enumerate(self.causes, 1):
                lines += [
                    f"  {i}. [{c.key}] {c.title}",
                    f"     seen: {c.evidence}",
                    f"     fix:  {c.fix}",
                ]
        if self.notes:
            lines += ["", *(f"note: {note}" for note in self.notes)]
        return "\n".join(lines)
