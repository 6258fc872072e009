"""``diagnose_training``: where the time of a training step goes, input or compute.

One run measures, side by side, the three figures that answer "is this run input-bound or
compute-bound, and by how much?":

- **input alone**: the dataset iterated as ``model.fit`` iterates it (distributed over the
  replicas under a strategy), with no training;
- **step alone**: ``model.fit`` on ONE batch of that dataset, cached and repeated, so no
  input work is left;
- **together**: ``model.fit`` on the dataset itself.

The verdict compares the first two; the third shows how well they overlap. Advice is a pure
function of those figures and the machine (:func:`advise`), so its hardware-dependent branches
are tested on synthetic inventories. Optionally a TensorBoard profiler trace of the same three
phases is written (a separate pass, so the timings are not taken under the profiler).

Not to be confused with :func:`tfplace.doctor.diagnose`, which checks the installation
(drivers, CUDA, visible devices) without training anything.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from tfplace import _tf
from tfplace.tuning._autotune import _model_policy, keras_of, policy_name
from tfplace.tuning._clock import clock_steps, time_input, time_steps

if TYPE_CHECKING:
    from tfplace._facts.inventory import Inventory

__all__ = ["TrainingDiagnosis", "advise", "diagnose_training", "profile_viewer"]

log = logging.getLogger("tfplace")

#: Below this ratio of the slower to the faster side, input and compute are called balanced
#: in the text (the verdict still names the slower side).
BALANCED = 1.25
#: Training alone and input alone overlap badly when running both together costs more than
#: this share of running them one after the other.
POOR_OVERLAP = 0.9


@dataclass(frozen=True)
class TrainingDiagnosis:
    """What :func:`diagnose_training` measured, its verdict and advice.

    Attributes:
        input_ms: milliseconds per batch for the input pipeline alone.
        step_ms: milliseconds per training step on one cached batch (no input work).
        together_ms: milliseconds per training step on the real dataset.
        bound: ``"input"`` when the pipeline alone is slower than the step alone, else
            ``"compute"``.
        ratio: the slower of the two over the faster (>= 1): how much the bound side costs.
        input_wait: the share of a real step spent waiting for input,
            ``max(0, together - step) / together``.
        overlap: ``max(input, step) / together``: 1 when input and compute overlap fully,
            about ``max / (input + step)`` when they run one after the other.
        steps, warmup: measured and untimed steps per phase.
        strategy: the class of the model's strategy; ``replicas`` and ``workers`` its size.
        jit_compile, precision: how the model's step is compiled and its dtype policy.
        advice: what would help, most useful first.
        profile_dir: the folder to open with TensorBoard, when a trace was written.
        profile_viewer: how to open it (or what to install first).

    ``print(report)`` prints :meth:`to_text`; :meth:`to_dict` is the same as plain data.
    """

    input_ms: float
    step_ms: float
    together_ms: float
    bound: Literal["input", "compute"]
    ratio: float
    input_wait: float
    overlap: float
    steps: int
    warmup: int
    strategy: str
    replicas: int
    workers: int
    jit_compile: bool
    precision: str
    advice: tuple[str, ...]
    profile_dir: str | None = None
    profile_viewer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        data = asdict(self)
        data["advice"] = list(self.advice)
        return data

    def __str__(self) -> str:
        """The readable report, :meth:`to_text` (``print(report)`` shows it)."""
        return self.to_text()

    def to_text(self) -> str:
        """The figures, the verdict and the advice, as lines of text."""
        if self.ratio < BALANCED:
            verdict = f"{self.bound}-bound, nearly balanced ({self.ratio:.2f}x)"
        else:
            other = "training step" if self.bound == "input" else "input pipeline"
            verdict = f"{self.bound}-bound: {self.ratio:.2f}x slower than the {other}"
        lines = [
            f"input pipeline alone   {self.input_ms:9.2f} ms/batch",
            f"training step alone    {self.step_ms:9.2f} ms/step   (one cached batch)",
            f"both together          {self.together_ms:9.2f} ms/step   "
            f"(waiting for input {self.input_wait:.0%}, overlap {self.overlap:.2f})",
            f"verdict                {verdict}",
            f"measured               {self.steps} steps after {self.warmup} warm-up, "
            f"{self.strategy} ({self.replicas} replica(s), {self.workers} worker(s)), "
            f"jit_compile={self.jit_compile}, {self.precision}",
        ]
        lines += [f"- {item}" for item in self.advice]
        if self.profile_dir is not None:
            lines.append(f"trace: {self.profile_dir}")
            lines.append(f"open it: {self.profile_viewer}")
        return "\n".join(lines)


def advise(
    *,
    bound: str,
    ratio: float,
    overlap: float,
    step_ms: float,
    jit_compile: bool,
    precision: str,
    replicas: int,
    workers: int,
    inv: Inventory,
) -> tuple[str, ...]:
    """What would help, from the measured figures and the machine. Pure.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> advise(bound="input", ratio=3.0, overlap=0.6, step_ms=5.0, jit_compile=False,
        ...        precision="float32", replicas=1, workers=1, inv=fake_inventory())[0][:40]
        'The input pipeline is the bottleneck: pr'
    """
    from tfplace._decide.precision import choose_precision

    out: list[str] = []
    if bound == "input":
        out.append(
            "The input pipeline is the bottleneck: prepare it with tfplace.prepare_dataset "
            "(parallel map, cache, prefetch), move per-example work out of the training loop "
            "or cache its result; a faster device will not help until the input keeps up."
        )
        if overlap < POOR_OVERLAP:
            out.append(
                f"Input and training hardly overlap (overlap {overlap:.2f}): add "
                "dataset.prefetch(tf.data.AUTOTUNE) at the end (prepare_dataset does)."
            )
        if not inv.visible_gpus and replicas > 1:
            out.append(
                "On a CPU the input pipeline and the replicas share the same cores: fewer "
                "replicas (pick_strategy('default')) leave more cores to the input."
            )
        return tuple(out)
    if not jit_compile:
        out.append(
            "Compile the step with XLA: model.compile(..., jit_compile=True); measure it "
            "first with tfplace.autotune(build_model, ds, jit_compile=(False, True))."
        )
    if step_ms < 10.0:
        out.append(
            f"A step takes {step_ms:.1f} ms, so per-step overhead weighs: a larger batch per "
            "replica (tfplace.find_batch_size finds the largest that fits) or "
            "model.compile(..., steps_per_execution=N)."
        )
    auto_policy, why = choose_precision(inv)
    if precision == "float32" and auto_policy != "float32":
        out.append(
            f"Mixed precision: tfplace.configure_precision() would choose {auto_policy} "
            f"({why}); set it before building the model."
        )
    gpus = len(inv.visible_gpus)
    if gpus > replicas * max(workers, 1) or (gpus and replicas == 1 and gpus > 1):
        out.append(
            f"Another placement: {gpus} GPUs are visible and the model runs {replicas} "
            "replica(s); compare placements with tfplace.autotune(build_model, ds)."
        )
    elif not gpus and replicas == 1:
        out.append(
            "Another placement: on a CPU-only machine, compare the CPU with a mirrored "
            "strategy over virtual CPUs using tfplace.autotune (configure_cpus("
            "virtual_devices=N) first); a GPU is the larger step."
        )
    if ratio < BALANCED:
        out.append(
            "Input and compute are nearly balanced: speeding up one side alone gains at most "
            f"{ratio:.2f}x; keep the input pipeline in step (prepare_dataset)."
        )
    return tuple(out)


def profile_viewer(folder: str) -> str:
    """How to open a profiler trace in ``folder``, or what to install first.

    The trace (``plugins/profile/<run>/<host>.xplane.pb``) is written by TensorFlow itself;
    viewing it needs TensorBoard and its profile plugin.

    Example:
        >>> profile_viewer("logs/profile").startswith(("tensorboard --logdir", "pip install"))
        True
    """
    command = f"tensorboard --logdir {folder}  (then the Profile tab)"
    missing = [
        pip
        for module, pip in (
            ("tensorboard", "tensorboard"),
            ("tensorboard_plugin_profile", "tensorboard-plugin-profile"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        return f"pip install {' '.join(missing)}, then {command}"
    return command


def diagnose_training(
    model: Any,
    dataset: Any,
    *,
    steps: int = 20,
    warmup: int = 2,
    profile_dir: str | os.PathLike[str] | None = None,
    profile_steps: int = 5,
) -> TrainingDiagnosis:
    """Measure whether training ``model`` on ``dataset`` is input-bound or compute-bound.

    Three phases of ``warmup`` untimed then ``steps`` timed steps each, in one run: the input
    pipeline alone (iterated as ``fit`` iterates it, distributed under the model's strategy),
    the training step on one batch of ``dataset`` cached and repeated, and ``model.fit`` on
    ``dataset`` itself. The model must be compiled, and built inside the strategy it trains
    under (any strategy tfplace builds, one worker or several: under a multi-worker strategy
    every worker calls this, as it calls ``fit``). It trains for real — ``2 * (warmup +
    steps)`` steps — and puts the model's weights back afterwards, with the optimizer's
    variables that existed before (a model that never trained keeps the optimizer slots
    its first steps created).

    With ``profile_dir``, a TensorBoard profiler trace of the three phases
    (``profile_steps`` steps each, step-annotated) is written there in a separate pass after
    the timings; several workers each write their own ``worker-<i>`` subfolder.

    Not :func:`tfplace.doctor.diagnose`, which checks the installation without training.

    Args:
        model: a compiled Keras model (Keras 3 or tf_keras).
        dataset: a batched ``tf.data.Dataset`` as given to ``fit`` (repeated as needed).
        steps: timed steps per phase.
        warmup: untimed steps per phase first (tracing, XLA compilation, caches).
        profile_dir: where to write a profiler trace (None: no trace).
        profile_steps: steps per phase in the trace.

    Returns:
        A :class:`TrainingDiagnosis`: figures, verdict, advice, and the trace folder.

    Raises:
        ValueError / TypeError: bad arguments, an uncompiled model, an empty dataset.

    Example:
        The figures depend on the machine and the model (skipped under doctest):

        >>> report = tfplace.diagnose_training(model, ds, steps=20)  # doctest: +SKIP
        >>> report.bound, round(report.ratio, 1)  # doctest: +SKIP
        ('input', 3.4)
        >>> print(report)  # doctest: +SKIP
    """
    _check_arguments(model, dataset, steps, warmup, profile_dir, profile_steps)
    strategy = model.distribute_strategy
    log.info(
        "diagnose_training: timing input alone, step alone and both, %d+%d steps each "
        "(%s, %d replica(s))",
        warmup,
        steps,
        _strategy_name(strategy),
        strategy.num_replicas_in_sync,
    )
    if _first_batch_missing(dataset):
        raise ValueError("dataset is empty: diagnose_training needs at least one batch")
    folder = os.fspath(profile_dir) if profile_dir is not None else None
    input_s, step_s, together_s, folder = _measure_phases(
        model, dataset, warmup, steps, folder, profile_steps
    )
    report = _report(model, input_s, step_s, together_s, steps, warmup, folder)
    log.info(
        "diagnose_training: %s-bound %.2fx (input %.2f ms, step %.2f ms, both %.2f ms)",
        report.bound,
        report.ratio,
        report.input_ms,
        report.step_ms,
        report.together_ms,
    )
    return report


def _check_arguments(
    model: Any,
    dataset: Any,
    steps: int,
    warmup: int,
    profile_dir: str | os.PathLike[str] | None,
    profile_steps: int,
) -> None:
    """Raise ValueError / TypeError for a bad argument, before anything runs."""
    for name, value, low in (
        ("steps", steps, 1),
        ("warmup", warmup, 1),
        ("profile_steps", profile_steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, found {value!r}")
    if profile_dir is not None and not isinstance(profile_dir, str | os.PathLike):
        raise TypeError(f"profile_dir must be a path or None, found {profile_dir!r}")
    if not callable(getattr(model, "fit", None)):
        raise TypeError(f"model must be a Keras model, found {model!r}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise ValueError(
            "diagnose_training needs a compiled model: call model.compile(optimizer=..., "
            "loss=...) first"
        )
    if not _tf.is_dataset(dataset):
        raise TypeError(f"dataset must be a batched tf.data.Dataset, found {dataset!r}")


def _measure_phases(
    model: Any,
    dataset: Any,
    warmup: int,
    steps: int,
    profile_dir: str | None,
    profile_steps: int,
) -> tuple[float, float, float, str | None]:
    """Seconds per batch of input alone, step alone and both together (the shared step
    clock), then the optional trace; the model's state is put back afterwards."""
    strategy = model.distribute_strategy
    data = dataset.repeat()
    # every worker times the same cached batch; nothing to shard
    one = dataset.take(1).cache().repeat().with_options(_tf.shard_options("off"))
    saved = _snapshot(model)
    try:
        keras = keras_of(model)
        input_s = time_input(_distributed(data, strategy), warmup, steps)
        # whole executions: Keras reports one batch end per steps_per_execution steps
        fit_warmup, fit_steps = clock_steps(warmup, steps, _tf.steps_per_execution(model))
        step_s = time_steps(keras, model, one, fit_warmup, fit_steps)
        together_s = time_steps(keras, model, data, fit_warmup, fit_steps)
        folder = None
        if profile_dir is not None:
            folder = _profile(keras, model, data, one, strategy, profile_dir, profile_steps)
    finally:
        _restore(saved)
    return input_s, step_s, together_s, folder


def _report(
    model: Any,
    input_s: float,
    step_s: float,
    together_s: float,
    steps: int,
    warmup: int,
    folder: str | None,
) -> TrainingDiagnosis:
    """The verdict and advice from the three timings (seconds per step) and the model."""
    from tfplace._facts.inventory import inventory as gather

    strategy = model.distribute_strategy
    replicas = int(strategy.num_replicas_in_sync)
    workers = _workers(strategy)
    bound: Literal["input", "compute"] = "input" if input_s > step_s else "compute"
    ratio = max(input_s, step_s) / max(min(input_s, step_s), 1e-9)
    overlap = min(1.0, max(input_s, step_s) / together_s)
    jit = bool(getattr(model, "jit_compile", False))
    precision = _model_policy(model) or policy_name(keras_of(model))
    advice = advise(
        bound=bound,
        ratio=ratio,
        overlap=overlap,
        step_ms=step_s * 1000,
        jit_compile=jit,
        precision=precision,
        replicas=replicas,
        workers=workers,
        inv=gather(),
    )
    return TrainingDiagnosis(
        input_ms=input_s * 1000,
        step_ms=step_s * 1000,
        together_ms=together_s * 1000,
        bound=bound,
        ratio=ratio,
        input_wait=max(0.0, together_s - step_s) / together_s,
        overlap=overlap,
        steps=steps,
        warmup=warmup,
        strategy=_strategy_name(strategy),
        replicas=replicas,
        workers=workers,
        jit_compile=jit,
        precision=precision,
        advice=advice,
        profile_dir=folder,
        profile_viewer=profile_viewer(folder) if folder is not None else None,
    )


# ----------------------------------------------------------------------------- the phases


def _strategy_name(strategy: Any) -> str:
    name = type(strategy).__name__
    return "default strategy" if name.startswith("_Default") else name


def _workers(strategy: Any) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = getattr(resolver, "cluster_spec", None)
    if resolver is None or spec is None:
        return 1
    jobs = spec().as_dict()
    return max(1, sum(len(jobs.get(job, ())) for job in ("chief", "worker")))


def _task_id(strategy: Any) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    task = getattr(resolver, "task_id", None)
    return int(task) if isinstance(task, int) else 0


def _distributed(data: Any, strategy: Any) -> Any:
    """The dataset as ``fit`` iterates it: split over the replicas and moved to their devices
    (TensorFlow's default strategy hands the dataset back as it is)."""
    return strategy.experimental_distribute_dataset(data)


def _first_batch_missing(dataset: Any) -> bool:
    for _ in dataset.take(1):
        return False
    return True


@contextmanager
def _profiling(folder: str) -> Iterator[None]:
    _tf.profiler_start(folder)
    try:
        yield
    finally:
        _tf.profiler_stop()


def _step_marks(keras: Any) -> Any:
    """A callback marking each training step for the profiler's step-time view."""
    trace = _tf.profile_trace()

    class StepMarks(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.open: Any = None

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.open = trace("train", step_num=batch, _r=1)
            self.open.__enter__()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if self.open is not None:
                self.open.__exit__(None, None, None)
                self.open = None

    return StepMarks()


def _profile(
    keras: Any, model: Any, data: Any, one: Any, strategy: Any, folder: str, steps: int
) -> str:
    """Trace the three phases into ``folder`` (a worker's own subfolder when several)."""
    if _workers(strategy) > 1:
        folder = os.path.join(folder, f"worker-{_task_id(strategy)}")
    os.makedirs(folder, exist_ok=True)
    trace = _tf.profile_trace()
    log.info(
        "diagnose_training: writing a profiler trace of %d steps per phase to %s", steps, folder
    )
    with _profiling(folder):
        with trace("tfplace: input alone"):
            it = iter(_distributed(data, strategy))
            for _ in range(steps):
                next(it)
        with trace("tfplace: step alone (one cached batch)"):
            model.fit(
                one, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_step_marks(keras)]
            )
        with trace("tfplace: input and step together"):
            model.fit(
                data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_step_marks(keras)]
            )
    return folder


# ----------------------------------------------------------------------------- state


def _snapshot(model: Any) -> list[tuple[Any, Any]]:
    """The model's weights and its optimizer's variables, with their values now."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    variables += list(getattr(optimizer, "variables", ()) or ())
    return [(v, v.numpy()) for v in variables]


def _restore(saved: list[tuple[Any, Any]]) -> None:
    for variable, value in saved:
        if tuple(variable.shape) == value.shape:
            variable.assign(value)
