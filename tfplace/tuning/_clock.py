"""The one step clock of ``autotune`` and ``diagnose_training``.

Both time training the same way: ONE ``model.fit`` call of ``warmup + steps`` steps, a
callback marking the end of each step (after reading one of the step's results, so the step
has finished), and the clock running from the end of the last warm-up step to the end of the
last step. ``fit``'s own set-up (the data adapter, the distributed iterator, a shuffle buffer
filling, the first trace) falls before the clock starts, so every candidate and every phase
is timed on the same footing. The input pipeline alone is timed the same way: from the end
of the warm-up batches to the end of the last batch of one iterator.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["time_input", "time_steps"]


def _step_marks(keras: Any) -> Any:
    """A callback recording the time at the start of training and at the end of each step."""

    class StepClock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[float] = []

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if not self.marks:  # the first step starts: fit's set-up is behind us
                self.marks.append(time.perf_counter())

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            for value in (logs or {}).values():  # the step's results: it has finished
                float(value)
                break
            self.marks.append(time.perf_counter())

    return StepClock()


def time_steps(keras: Any, model: Any, data: Any, warmup: int, steps: int) -> float:
    """Seconds per training step of ``model.fit`` on ``data`` (repeated), after ``warmup``.

    One ``fit`` call of ``warmup + steps`` steps; the clock runs from the end of the last
    warm-up step (with ``warmup=0``, from the start of the first step, so it includes the
    first trace) to the end of the last step.

    Args:
        keras: the Keras package the model comes from.
        model: a compiled model.
        data: a dataset long enough for ``warmup + steps`` steps (repeated).
        warmup: untimed steps first.
        steps: timed steps (>= 1).

    Returns:
        Seconds per timed step.
    """
    clock = _step_marks(keras)
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    marks = clock.marks  # marks[0]: first step starts; marks[i]: step i-1 ends
    if len(marks) < warmup + steps + 1:
        raise RuntimeError(
            f"the step clock saw {len(marks) - 1} of {warmup + steps} steps: the dataset "
            "ran out (it is repeated, so it must yield at least one batch)"
        )
    return float((marks[warmup + steps] - marks[warmup]) / steps)


def time_input(dataset: Any, warmup: int, steps: int) -> float:
    """Seconds per batch of iterating ``dataset`` alone, after ``warmup`` batches.

    Args:
        dataset: what to iterate (a distributed dataset under a strategy), long enough.
        warmup: untimed batches first (the iterator's creation and first fills).
        steps: timed batches (>= 1).

    Returns:
        Seconds per timed batch.
    """
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return (time.perf_counter() - start) / steps
