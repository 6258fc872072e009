"""What ``autotune`` measures and reports: the candidates, one measurement each, the report
with its table, XLA's speed-ups and the gain of ``steps_per_execution``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["AutotuneReport", "Candidate", "Measurement", "error_summary"]


@dataclass(frozen=True)
class Candidate:
    """A setting to measure: a placement (strategy kind and devices) and how the step compiles.

    Attributes:
        name: the row's label in the report.
        kind: a strategy kind (:data:`tfplace.KINDS`), e.g. ``"one_device"``, ``"mirrored"``.
        devices: the strategy's devices (None: the kind's default).
        jit_compile: set ``model.jit_compile`` to this before training (None: leave what
            ``build_model`` compiled).
        precision: the Keras dtype policy in force while ``build_model`` runs (None: leave
            the global policy as it is).
        steps_per_execution: set ``model.steps_per_execution`` to this before training
            (None: leave what ``build_model`` compiled).
    """

    name: str
    kind: str
    devices: tuple[str, ...] | None = None
    jit_compile: bool | None = None
    precision: str | None = None
    steps_per_execution: int | None = None


@dataclass(frozen=True)
class Measurement:
    """One measured candidate (or one that failed: ``error`` set, ``steps_per_second`` 0).

    Attributes:
        jit_compile: whether the training step was compiled with XLA (read back from the
            model, so a model that Keras refused to compile with XLA says False).
        precision: the dtype policy the model was built with.
        auto_jit_compile: what ``compile(jit_compile="auto")`` would have chosen for this
            placement (see :func:`auto_jit_compile`), with ``auto_jit_reason``.
        error: why the candidate failed (its type and message), None when it trained.
        steps_per_execution: the steps each call of the train function ran (read back from
            the model).
    """

    name: str
    kind: str
    devices: tuple[str, ...] | None
    steps_per_second: float
    replicas: int
    jit_compile: bool | None = None
    precision: str | None = None
    auto_jit_compile: bool | None = None
    auto_jit_reason: str = ""
    error: str | None = None
    steps_per_execution: int | None = None

    @property
    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.compile`` that reproduce this candidate's step.

        Example:
            >>> Measurement("CPU:0", "one_device", None, 1.0, 1, jit_compile=True).compile_kwargs
            {'jit_compile': True}
        """
        found: dict[str, Any] = {}
        if self.jit_compile is not None:
            found["jit_compile"] = self.jit_compile
        if self.steps_per_execution is not None and self.steps_per_execution > 1:
            found["steps_per_execution"] = self.steps_per_execution
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        data = asdict(self)
        data["devices"] = list(self.devices) if self.devices is not None else None
        data["compile_kwargs"] = self.compile_kwargs
        return data


@dataclass(frozen=True)
class AutotuneReport:
    """What ``autotune`` measured: ``results`` best first, and the best ``strategy``.

    ``failed`` holds the candidates that could not train (a strategy that cannot be built,
    an XLA compilation error, out of memory, ...), each with its ``error``; they are never
    ranked. ``print(report)`` prints :meth:`to_text`.
    """

    results: tuple[Measurement, ...]
    strategy: Any
    failed: tuple[Measurement, ...] = ()

    @property
    def best(self) -> Measurement:
        """The fastest candidate: ``best.compile_kwargs``, ``best.precision`` and ``strategy``
        are the settings to train with."""
        return self.results[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); the strategy is named by its class."""
        return {
            "results": [m.to_dict() for m in self.results],
            "failed": [m.to_dict() for m in self.failed],
            "strategy": type(self.strategy).__name__,
            "xla_speedups": self.xla_speedups(),
            "steps_per_execution_gains": {
                place: {"best": best, "gain": gain}
                for place, (best, gain) in self.steps_per_execution_gains().items()
            },
        }

    def __str__(self) -> str:
        """The readable table, :meth:`to_text` (``print(report)`` shows it)."""
        return self.to_text()

    def to_text(self) -> str:
        """A small table, fastest first, with ratios to the best; then, after a blank line,
        the failed candidates and what ``jit_compile="auto"`` would choose per placement."""
        best = self.results[0].steps_per_second
        lines = [
            f"{m.name:<28} {m.steps_per_second:9.1f} steps/s   {m.steps_per_second / best:5.2f}x"
            for m in self.results
        ]
        notes = [f"{m.name:<28} failed: {error_summary(m.error or '')}" for m in self.failed]
        auto: dict[str, str] = {}
        for m in (*self.results, *self.failed):
            if m.auto_jit_compile is not None:
                place = _placement_name(m)
                auto.setdefault(
                    place, f"{'on' if m.auto_jit_compile else 'off'} ({m.auto_jit_reason})"
                )
        speedups = self.xla_speedups()
        for place, why in auto.items():
            measured = f"; measured XLA on/off: {speedups[place]:.2f}x" if place in speedups else ""
            notes.append(f'jit_compile="auto" on {place}: XLA {why}{measured}')
        for place, (spe, gain) in self.steps_per_execution_gains().items():
            notes.append(
                f"steps_per_execution on {place}: best {spe}, {gain:.2f}x the throughput of 1"
            )
        return "\n".join([*lines, "", *notes] if notes else lines)

    def steps_per_execution_gains(self) -> dict[str, tuple[int, float]]:
        """Per placement (same XLA setting and precision), the best ``steps_per_execution``
        measured and its throughput over ``steps_per_execution=1``, where both were
        measured: ``{"one_device /CPU:0": (16, 2.4)}``."""
        groups: dict[tuple[str, str | None, bool | None], dict[int, float]] = {}
        for m in self.results:
            key = (_placement_name(m), m.precision, m.jit_compile)
            groups.setdefault(key, {}).setdefault(m.steps_per_execution or 1, m.steps_per_second)
        out: dict[str, tuple[int, float]] = {}
        for (place, _, _), rates in groups.items():
            if 1 in rates and len(rates) > 1 and place not in out:
                best = max(rates, key=lambda spe: rates[spe])
                out[place] = (best, rates[best] / rates[1])
        return out

    def xla_speedups(self) -> dict[str, float]:
        """Per placement, XLA's throughput over graph mode without it (same precision),
        where both were measured: above 1 means XLA was faster."""
        rates: dict[tuple[str, str | None, bool | None], float] = {}
        for m in self.results:
            rates.setdefault((_placement_name(m), m.precision, m.jit_compile), m.steps_per_second)
        out: dict[str, float] = {}
        for (place, policy, jit), rate in rates.items():
            off = rates.get((place, policy, False))
            if jit and off:
                out.setdefault(place, rate / off)
        return out


def _placement_name(m: Measurement) -> str:
    return m.kind if m.devices is None else f"{m.kind} {','.join(m.devices)}"


def error_summary(text: str, width: int = 240) -> str:
    """One line out of an error text: its first line and its longest message line, shortened.

    TensorFlow's graph errors start with a generic line ("Graph execution error:"), then a
    Python stack, and say what went wrong further down; the longest line that is not a stack
    frame (``File "..."``) is the informative one.

    Example:
        >>> error_summary('Graph error:\\n  File "x.py", line 1\\nNo XLA kernel: AsString')
        'Graph error: | No XLA kernel: AsString'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    rest = [line for line in lines[1:40] if not line.startswith('File "')]
    detail = max(rest, key=len) if rest else ""
    summary = f"{lines[0]} | {detail}" if detail else lines[0]
    return summary if len(summary) <= width else summary[: width - 3] + "..."
