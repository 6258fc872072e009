"""The replica check's report: what :func:`~tfplace.compare_replicas` found, as frozen data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "Cause", "ModelFacts", "ReplicaReport", "StepRow"]

#: Default tolerances. Measured on the fixed examples: 1 vs 2 and 1 vs 4 replicas differ by at
#: most ~1e-6 relative after 5 SGD steps (float32 sums in another order); the broken ones by
#: 1e-2 and more. ``rtol=1e-4, atol=1e-5`` sits between with a wide margin on both sides.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


@dataclass(frozen=True)
class ModelFacts:
    """What the model itself says about its replica-sensitive parts."""

    unsynced_batchnorm: tuple[str, ...]
    random_layers: tuple[str, ...]
    dtype_policy: str
    jit_compile: bool
    optimizer: str
    loss_scaling: bool


@dataclass(frozen=True)
class Cause:
    """One likely cause: its key in the catalogue (``a`` ... ``h``, ``x``), what it is, the
    evidence seen here, the fix, and a score (0-1) that ranks the causes."""

    key: str
    title: str
    evidence: str
    fix: str
    score: float


@dataclass(frozen=True)
class StepRow:
    """One step side by side: the loss on 1 and on N replicas, the variable that differs most
    after the step and its gap in units of the tolerance (> 1: outside it), and whether the
    global batch of the step held the same examples."""

    step: int
    loss_one: float
    loss_many: float
    worst_variable: str
    worst_gap: float
    same_batch: bool


@dataclass(frozen=True)
class ReplicaReport:
    """What :func:`compare_replicas` found.

    Attributes:
        same: 1 and N replicas agree within the tolerance for every step and variable, and
            every step's global batch holds the same examples on both.
        replicas: N.
        steps: the steps asked for.
        rtol / atol: the tolerance (``|a - b| <= atol + rtol * |b|``).
        mode: ``"model.fit"`` or ``"custom train_step"``.
        first_step / first_variable: where the runs part first (None when they agree).
        differing_variables: every variable outside the tolerance at that step.
        rows: per step, the losses and the worst variable (:class:`StepRow`).
        causes: likely causes, most likely first (:class:`Cause`).
        facts: what the model says (BatchNormalization, random layers, dtype policy, XLA).
        notes: other remarks (a failed run, an input that ran out).
        seconds: the whole check; train_seconds: the two trainings (1 replica, N replicas).
        devices: the N devices; the one-replica run used the first (with workers, /CPU:0 of
            the calling process).
        workers: how many local worker processes ran the N replicas (0: one process).
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

    def __str__(self) -> str:
        n = self.replicas
        tol = f"rtol={self.rtol:g}, atol={self.atol:g}"
        if self.workers:
            tol = f"{self.workers} local workers, {tol}"
        if self.same:
            head = f"SAME: 1 and {n} replicas agree for {self.steps} steps ({self.mode}, {tol})"
        else:
            where = f"at step {self.first_step}"
            if self.first_variable:
                where += f", first in variable {self.first_variable}"
            head = f"DIFFERENT: 1 and {n} replicas part {where} ({self.mode}, {tol})"
        lines = [head, ""]
        lines.append(
            f"{'step':>4}  {'loss 1 replica':>15}  {f'loss {n} replicas':>15}  "
            f"{'batch':>5}  worst variable (gap/tolerance)"
        )
        for r in self.rows:
            lines.append(
                f"{r.step:>4}  {r.loss_one:>15.7g}  {r.loss_many:>15.7g}  "
                f"{'same' if r.same_batch else 'DIFF':>5}  {r.worst_variable} ({r.worst_gap:.3g})"
            )
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
