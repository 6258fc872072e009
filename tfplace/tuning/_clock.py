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

from tfplace import _tf

__all__ = ["clock_steps", "time_input", "time_steps"]


def _step_marks(keras: Any) -> Any:
    """A callback recording ``(time, steps done)`` at the start of training and at the end
    of each execution (one per ``steps_per_execution`` steps)."""

    class StepClock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[tuple[float, int]] = []

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if not self.marks:  # the first step starts: fit's set-up is behind us
                self.marks.append((time.perf_counter(), 0))

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            for value in (logs or {}).values():  # the execution's results: it has finished
                float(value)
                break
            # Keras calls this once per execution with the index of its LAST step (Keras 3's
            # end_step, tf_keras's step + step_increment): batch + 1 steps are done.
            self.marks.append((time.perf_counter(), int(batch) + 1))

    return StepClock()


def clock_steps(warmup: int, steps: int, per_execution: int) -> tuple[int, int]:
    """``(warmup, steps)`` rounded up to whole executions of ``per_execution`` steps, so the
    clock starts and stops where Keras reports (at least one timed execution). Pure.

    Example:
        >>> clock_steps(3, 20, 1), clock_steps(3, 20, 4), clock_steps(3, 20, 16)
        ((3, 20), (4, 20), (16, 32))
    """
    per = max(1, per_execution)
    return -(-warmup // per) * per, max(1, -(-steps // per)) * per


def time_steps(keras: Any, model: Any, data: Any, warmup: int, steps: int) -> float:
    """Seconds per training step of ``model.fit`` on ``data`` (repeated), after ``warmup``.

    One ``fit`` call of ``warmup + steps`` steps; the clock runs from the end of the last
    warm-up step (with ``warmup=0``, from the start of the first step, so it includes the
    first trace) to the end of the last step. Keras reports the end of each *execution* (one
    per ``steps_per_execution`` steps), so the clock counts executions times their steps;
    ``warmup`` and ``steps`` should be whole executions (:func:`clock_steps`).

    Args:
        keras: the Keras package the model comes from.
        model: a compiled model.
        data: a dataset long enough for ``warmup + steps`` steps (repeated).
        warmup: untimed steps first.
        steps: timed steps (>= 1).

    Returns:
        Seconds per timed step.

    Raises:
        RuntimeError: fewer steps ran than asked (the dataset ran out), or no execution ended
            after the warm-up.
    """
    clock = _step_marks(keras)
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    marks = clock.marks  # marks[0]: (start of the first step, 0); then (end, steps done)
    done = marks[-1][1] if marks else 0
    if done < warmup + steps:
        raise RuntimeError(
            f"the step clock saw {done} of {warmup + steps} steps: the dataset ran out (it is "
            "repeated, so it must yield at least one batch)"
        )
    start = next((t, n) for t, n in marks if n >= warmup)
    end = marks[-1]
    if end[1] <= start[1]:
        raise RuntimeError(
            f"the step clock saw no execution end after the {warmup} warm-up steps (steps per "
            f"execution: {_tf.steps_per_execution(model)}); ask for warm-up and timed steps "
            "in whole executions"
        )
    return float((end[0] - start[0]) / (end[1] - start[1]))


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
