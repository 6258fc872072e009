"""Measured choices: ``find_batch_size`` (out-of-memory back-off) and ``autotune`` (placement).

For small models or datasets, CPU-GPU transfers can make the CPU faster than the GPU, so the
right device depends on the model: ``autotune`` measures instead of guessing.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tfplace import _tf
from tfplace.errors import BatchSizeError

__all__ = [
    "AutotuneReport",
    "Candidate",
    "Measurement",
    "autotune",
    "available_candidates",
    "find_batch_size",
]

log = logging.getLogger("tfplace")
R = TypeVar("R")


def _clear_session() -> None:
    try:
        keras = _tf.load_keras()
        keras.backend.clear_session()
    except Exception as err:  # clearing is best effort; the retry still happens
        log.debug("clear_session failed: %s", err)
    gc.collect()


def find_batch_size(
    start: int, *, factor: float = 0.5, minimum: int = 1
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a function taking ``batch_size``: on out-of-memory, retry with a smaller one.

    The decorated function is called with ``batch_size=start``; when it raises
    ``tf.errors.ResourceExhaustedError`` (or an error whose text is TensorFlow's OOM message),
    the Keras session is cleared, the batch size is multiplied by ``factor`` (rounded down)
    and the call is retried. Any other error propagates at once. The batch size that worked
    is kept on the wrapper as ``.batch_size``; each retry is logged.

    Args:
        start: the first batch size to try.
        factor: how much to shrink after an OOM (0 < factor < 1).
        minimum: the smallest batch size to try.

    Raises:
        BatchSizeError: even ``minimum`` ran out of memory (chained to the last OOM).

    Example:
        Here an error with TensorFlow's OOM text stands in for a model that does not fit:

        >>> @tfplace.find_batch_size(start=1024)
        ... def train(batch_size):
        ...     if batch_size > 256:
        ...         raise RuntimeError(f"OOM when allocating tensor with shape[{batch_size},4096]")
        ...     return f"trained with batch_size={batch_size}"
        >>> train()
        'trained with batch_size=256'
        >>> train.batch_size
        256
    """
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(f"start must be a positive int, found {start!r}")
    if not isinstance(factor, float | int) or not 0 < factor < 1:
        raise ValueError(f"factor must be between 0 and 1, found {factor!r}")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= start:
        raise ValueError(f"minimum must be an int from 1 to start ({start}), found {minimum!r}")

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        if not callable(func):
            raise TypeError(f"find_batch_size decorates a function, found {func!r}")
        if "batch_size" not in inspect.signature(func).parameters:
            raise TypeError(f"{func.__name__} must take a 'batch_size' argument")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if "batch_size" in kwargs:
                raise TypeError("find_batch_size passes batch_size itself; do not pass it")
            size = start
            while True:
                try:
                    result = func(*args, batch_size=size, **kwargs)
                except Exception as err:
                    if not _tf.is_resource_exhausted(err):
                        raise
                    if size <= minimum:
                        raise BatchSizeError(
                            f"{func.__name__}: out of memory even at batch_size={size} "
                            f"(started at {start}). Use a smaller model or input, enable "
                            "configure_gpus(memory_growth=True), or set "
                            "TF_GPU_ALLOCATOR=cuda_malloc_async before importing TensorFlow."
                        ) from err
                    smaller = max(minimum, int(size * factor))
                    if smaller == size:
                        smaller = size - 1
                    log.warning(
                        "find_batch_size: batch_size=%d ran out of memory; retrying with %d",
                        size,
                        smaller,
                    )
                    del err
                    _clear_session()
                    size = smaller
                    continue
                wrapper.batch_size = size  # type: ignore[attr-defined]
                return result

        wrapper.batch_size = None  # type: ignore[attr-defined]
        return wrapper

    return decorate


# ------------------------------------------------------------------------------ autotune


@dataclass(frozen=True)
class Candidate:
    """A placement to measure: a strategy kind and its devices."""

    name: str
    kind: str
    devices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Measurement:
    """One measured candidate."""

    name: str
    kind: str
    devices: tuple[str, ...] | None
    steps_per_second: float
    replicas: int


@dataclass(frozen=True)
class AutotuneReport:
    """What ``autotune`` measured: ``results`` best first, and the best ``strategy``."""

    results: tuple[Measurement, ...]
    strategy: Any

    @property
    def best(self) -> Measurement:
        """The fastest candidate."""
        return self.results[0]

    def to_text(self) -> str:
        """A small table, fastest first, with ratios to the best."""
        best = self.results[0].steps_per_second
        return "\n".join(
            f"{m.name:<28} {m.steps_per_second:9.1f} steps/s   {m.steps_per_second / best:5.2f}x"
            for m in self.results
        )


def available_candidates() -> list[Candidate]:
    """The placements available in this process: each GPU alone, mirrored over all GPUs,
    the CPU, and mirrored over the virtual CPUs when the CPU is split. Starts the runtime."""
    gpus = _tf.logical_device_names("GPU")
    cpus = _tf.logical_device_names("CPU")
    found = [Candidate(f"GPU:{i}", "one_device", (f"/GPU:{i}",)) for i in range(len(gpus))]
    if len(gpus) > 1:
        found.append(Candidate(f"mirrored {len(gpus)}xGPU", "mirrored", None))
    found.append(Candidate("CPU:0", "one_device", ("/CPU:0",)))
    if not gpus and len(cpus) > 1:
        found.append(
            Candidate(
                f"mirrored {len(cpus)}xCPU",
                "mirrored",
                tuple(f"/CPU:{i}" for i in range(len(cpus))),
            )
        )
    return found


def autotune(
    build_model: Callable[[], Any],
    dataset: Any,
    *,
    candidates: Sequence[Candidate] | None = None,
    steps: int = 20,
    warmup: int = 3,
) -> AutotuneReport:
    """Measure training throughput of ``build_model()`` on each placement; return the best.

    Each candidate builds a fresh model in its strategy's scope (``build_model`` must build
    AND compile it), trains ``warmup`` steps (tracing, first allocations), then ``steps``
    timed steps of ``model.fit`` on ``dataset`` (batched with the GLOBAL batch size; it is
    repeated as needed). Nothing is ranked without being measured.

    What it cannot measure: settings fixed at start-up (thread pools, virtual devices,
    memory growth) — comparing those needs a fresh process per candidate.

    Args:
        build_model: returns a compiled Keras model; called inside each strategy's scope.
        dataset: a batched ``tf.data.Dataset`` of ``(x, y)``.
        candidates: what to measure (default: :func:`available_candidates`).
        steps: timed training steps per candidate.
        warmup: untimed steps first.

    Returns:
        An :class:`AutotuneReport`; ``.results`` best first, ``.strategy`` ready to use.

    Example:
        The figures (and so the order) depend on the machine's CPUs and GPUs:

        >>> report = tfplace.autotune(build_model, ds)  # doctest: +SKIP
        >>> print(report.to_text())  # doctest: +SKIP
        CPU:0                            412.0 steps/s    1.00x
        GPU:0                            250.3 steps/s    0.61x
    """
    if not callable(build_model):
        raise TypeError(f"build_model must be callable, found {build_model!r}")
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, found {value!r}")
    tf = _tf.load()
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"dataset must be a batched tf.data.Dataset, found {dataset!r}")
    todo = list(candidates) if candidates is not None else available_candidates()
    if not todo:
        raise ValueError("no candidates to measure")
    from tfplace.strategy import pick_strategy

    data = dataset.repeat()
    measured: list[tuple[Measurement, Any]] = []
    for cand in todo:
        strategy = pick_strategy(cand.kind, devices=list(cand.devices) if cand.devices else None)
        with strategy.scope():
            model = build_model()
        if warmup:
            model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        rate = steps / (time.perf_counter() - start)
        log.info("autotune: %s: %.1f steps/s", cand.name, rate)
        measured.append(
            (
                Measurement(
                    cand.name, cand.kind, cand.devices, rate, strategy.num_replicas_in_sync
                ),
                strategy,
            )
        )
        del model
        if any("GPU" in d for d in cand.devices or ()) or "GPU" in cand.name:
            _clear_session()  # give the GPU memory back before the next candidate
    measured.sort(key=lambda pair: pair[0].steps_per_second, reverse=True)
    return AutotuneReport(tuple(m for m, _ in measured), measured[0][1])
