"""Measured choices: ``find_batch_size`` (out-of-memory back-off) and ``autotune`` (placement,
XLA and precision).

For small models or datasets, CPU-GPU transfers can make the CPU faster than the GPU, so the
right device depends on the model: ``autotune`` measures instead of guessing.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from tfplace import _tf
from tfplace._precision import set_policy
from tfplace.errors import BatchSizeError
from tfplace.tuning._clock import clock_steps, time_steps
from tfplace.tuning._report import AutotuneReport, Candidate, Measurement, error_summary

if TYPE_CHECKING:
    from tfplace._facts.inventory import Inventory

__all__ = [
    "AutotuneReport",
    "Candidate",
    "Measurement",
    "auto_jit_compile",
    "autotune",
    "available_candidates",
    "error_summary",
    "expand_candidates",
    "find_batch_size",
    "keras_of",
    "model_supports_jit",
    "policy_name",
]

log = logging.getLogger("tfplace")
R = TypeVar("R")


def _clear_session() -> None:
    try:
        _tf.clear_keras_session()
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


def auto_jit_compile(
    kind: str,
    inv: Inventory,
    *,
    model_supports_jit: bool = True,
    keras: str | None = None,
) -> tuple[bool, str]:
    """What Keras's ``compile(jit_compile="auto")`` turns XLA to for a placement, and why. Pure.

    Mirrors Keras 3's ``Trainer._resolve_auto_jit_compile`` and ``model_supports_jit``
    (``keras/src/trainers/trainer.py``; the strategy test is in ``TensorFlowTrainer.__init__``,
    ``keras/src/backend/tensorflow/trainer.py``), checked against Keras 3.15:

    - off on a machine whose only *physical* devices are CPUs (any GPU counts, even one
      hidden from TensorFlow with ``set_visible_devices``);
    - off for a model built inside any ``tf.distribute`` strategy scope, OneDeviceStrategy
      included: only TensorFlow's default strategy (``pick_strategy("default")``) keeps it;
    - off on Apple-silicon GPUs, and when a layer says ``supports_jit = False``;
    - otherwise on. tf_keras has no ``"auto"``: its default is off.

    Args:
        kind: the strategy kind the model is built under.
        inv: the machine.
        model_supports_jit: whether every layer of the model supports XLA.
        keras: ``"keras3"`` or ``"tf_keras"``, the Keras the model comes from (default: the
            inventory's).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> auto_jit_compile("default", fake_inventory(gpus=1))[0]
        True
        >>> auto_jit_compile("one_device", fake_inventory(gpus=1))[0]
        False
    """
    if (keras or inv.keras.flavour) == "tf_keras":
        return False, "tf_keras has no jit_compile='auto'; its default is off"
    if not inv.gpus and not inv.tpu.present:
        return False, "Keras turns XLA off on a machine with only CPUs"
    if inv.platform == "darwin" and "arm" in inv.machine.lower() and inv.gpus:
        return False, "Keras turns XLA off on Apple-silicon GPUs"
    if kind != "default":
        return False, (
            f"Keras turns XLA off for a model built under a tf.distribute strategy ({kind})"
        )
    if not model_supports_jit:
        return False, "a layer of this model does not support XLA (supports_jit=False)"
    return True, "an accelerator is present and the model is built outside any strategy"


def model_supports_jit(model: Any) -> bool:
    """Whether every layer of ``model`` declares XLA support (Keras 3's ``supports_jit``)."""
    return all(getattr(layer, "supports_jit", True) for layer in _tf.flat_layers(model))


def keras_of(model: Any) -> ModuleType:
    """The Keras package a model comes from: ``keras`` (Keras 3) or ``tf_keras``."""
    return _tf.keras_of(model)


def policy_name(keras: ModuleType) -> str:
    """The global Keras dtype policy in force (Keras 3 or tf_keras)."""
    if hasattr(keras, "config") and hasattr(keras.config, "dtype_policy"):
        return str(keras.config.dtype_policy().name)
    return str(keras.mixed_precision.global_policy().name)


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


def expand_candidates(
    placements: Sequence[Candidate],
    *,
    jit_compile: Sequence[bool] | None = None,
    precision: Sequence[str] | None = None,
    inventory: Inventory | None = None,
    steps_per_execution: Sequence[int] | None = None,
) -> list[Candidate]:
    """Each placement crossed with each ``jit_compile`` setting, each precision policy and
    each ``steps_per_execution``.

    ``"auto"`` in ``precision`` stands for the policy :func:`tfplace.configure_precision`
    would choose (:func:`tfplace._decide.precision.choose_precision`), so ``("float32", "auto")`` is
    one policy on a CPU and two on a recent GPU. Names gain ``xla=on``/``xla=off``, the
    policy and ``spe=<n>`` when those vary.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> cands = expand_candidates(
        ...     [Candidate("GPU:0", "one_device", ("/GPU:0",))],
        ...     jit_compile=(False, True),
        ...     precision=("float32", "auto"),
        ...     inventory=fake_inventory(gpus=1, compute_capability=(8, 0)),
        ... )
        >>> [c.name for c in cands]  # doctest: +NORMALIZE_WHITESPACE
        ['GPU:0 xla=off float32', 'GPU:0 xla=off mixed_bfloat16',
         'GPU:0 xla=on float32', 'GPU:0 xla=on mixed_bfloat16']
    """
    jits: list[bool | None] = [None]
    if jit_compile is not None:
        if isinstance(jit_compile, bool) or not all(isinstance(j, bool) for j in jit_compile):
            raise TypeError(f"jit_compile must be a sequence of bools, found {jit_compile!r}")
        jits = list(dict.fromkeys(jit_compile)) or [None]
    policies: list[str | None] = [None]
    if precision is not None:
        if isinstance(precision, str):
            raise TypeError(
                f"precision must be a sequence of policy names, found {precision!r}; "
                f"use ({precision!r},)"
            )
        from tfplace._decide.precision import POLICIES, choose_precision

        resolved: list[str | None] = []
        for name in precision:
            if name == "auto":
                if inventory is None:
                    from tfplace._facts.inventory import inventory as gather

                    inventory = gather()
                name = choose_precision(inventory)[0]
            if name not in POLICIES:
                raise ValueError(
                    f"unknown precision policy {name!r}; expected 'auto' or one of "
                    f"{', '.join(POLICIES)}"
                )
            resolved.append(name)
        policies = list(dict.fromkeys(resolved)) or [None]
    spes: list[int | None] = [None]
    if steps_per_execution is not None:
        if isinstance(steps_per_execution, int) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in steps_per_execution
        ):
            raise TypeError(
                "steps_per_execution must be a sequence of ints >= 1, e.g. (1, 4, 16), found "
                f"{steps_per_execution!r}"
            )
        spes = list(dict.fromkeys(steps_per_execution)) or [None]
    out = []
    for place in placements:
        for jit in jits:
            for policy in policies:
                for spe in spes:
                    name = place.name
                    if jit is not None and len(jits) > 1:
                        name += f" xla={'on' if jit else 'off'}"
                    if policy is not None and len(policies) > 1:
                        name += f" {policy}"
                    if spe is not None and len(spes) > 1:
                        name += f" spe={spe}"
                    out.append(
                        replace(
                            place,
                            name=name,
                            jit_compile=place.jit_compile if jit is None else jit,
                            precision=place.precision if policy is None else policy,
                            steps_per_execution=(place.steps_per_execution if spe is None else spe),
                        )
                    )
    return out


def autotune(
    build_model: Callable[[], Any],
    dataset: Any,
    *,
    candidates: Sequence[Candidate] | None = None,
    steps: int = 20,
    warmup: int = 3,
    jit_compile: Sequence[bool] | None = None,
    precision: Sequence[str] | None = None,
    steps_per_execution: Sequence[int] | None = None,
) -> AutotuneReport:
    """Measure training throughput of ``build_model()`` on each candidate; return the best.

    Each candidate builds a fresh model in its strategy's scope (``build_model`` must build
    AND compile it), with the candidate's dtype policy in force, sets ``model.jit_compile``
    when the candidate says so, and runs ONE ``model.fit`` of ``warmup + steps`` steps on
    ``dataset`` (batched with the GLOBAL batch size; it is repeated as needed). The clock is
    the one :func:`tfplace.diagnose_training` uses: it runs from the end of the last warm-up step
    (tracing, XLA compilation, first allocations, ``fit``'s iterator and the dataset's
    distribution all fall before it) to the end of the last step. Nothing is ranked without
    being measured.

    A candidate that fails (its strategy cannot be built, an op XLA cannot compile, out of
    memory, ...) is recorded in ``report.failed`` with its error, logged, and skipped; only
    when every candidate fails is the first one's error raised. Each measurement also says what
    ``jit_compile="auto"`` would have chosen there (:func:`auto_jit_compile`).

    What it cannot measure: settings fixed at start-up (thread pools, virtual devices,
    memory growth) — comparing those needs a fresh process per candidate.

    Args:
        build_model: returns a compiled Keras model; called inside each strategy's scope.
        dataset: a batched ``tf.data.Dataset`` of ``(x, y)``.
        candidates: the placements to measure (default: :func:`available_candidates`).
        steps: timed training steps per candidate.
        warmup: untimed steps first (0: the first step, with its tracing, is timed).
        jit_compile: also vary XLA, e.g. ``(False, True)``: each placement is measured with
            each setting (default: as ``build_model`` compiled it).
        precision: also vary the dtype policy, e.g. ``("float32", "auto")``; ``"auto"`` is
            what :func:`tfplace.configure_precision` would choose (default: the global policy).
        steps_per_execution: also vary how many steps one call of the train function runs,
            e.g. ``(1, 4, 16)`` (default: as ``build_model`` compiled it). A small model's
            step is mostly per-step overhead, which this divides; the warm-up and the timed
            steps are rounded up to whole executions. The report's notes give the gain.

    Returns:
        An :class:`AutotuneReport`; ``.results`` best first, ``.strategy`` ready to use,
        ``.best.compile_kwargs`` and ``.best.precision`` the settings that won.

    Raises:
        ValueError / TypeError: bad arguments, checked before anything is measured.

    Example:
        The figures (and so the order) depend on the machine's CPUs and GPUs:

        >>> report = tfplace.autotune(build_model, ds, jit_compile=(False, True))  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
        CPU:0 xla=off                    412.0 steps/s    1.00x
        CPU:0 xla=on                     380.3 steps/s    0.92x
        jit_compile="auto" on one_device /CPU:0: XLA off (Keras turns XLA off on a machine ...)
    """
    if not callable(build_model):
        raise TypeError(f"build_model must be callable, found {build_model!r}")
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, found {value!r}")
    if not _tf.is_dataset(dataset):
        raise TypeError(f"dataset must be a batched tf.data.Dataset, found {dataset!r}")
    from tfplace._facts.inventory import inventory as gather

    inv = gather()
    placements = list(candidates) if candidates is not None else available_candidates()
    todo = expand_candidates(
        placements,
        jit_compile=jit_compile,
        precision=precision,
        inventory=inv,
        steps_per_execution=steps_per_execution,
    )
    if not todo:
        raise ValueError("no candidates to measure")
    log.info("autotune: measuring %d candidates, %d+%d steps each", len(todo), warmup, steps)

    data = dataset.repeat()
    measured: list[tuple[Measurement, Any]] = []
    failed: list[tuple[Measurement, BaseException]] = []
    for cand in todo:
        result, strategy, err = _measure(cand, build_model, data, steps, warmup, inv)
        if err is None:
            measured.append((result, strategy))
        else:
            failed.append((result, err))
    if not measured:
        raise failed[0][1]
    measured.sort(key=lambda pair: pair[0].steps_per_second, reverse=True)
    return AutotuneReport(
        tuple(m for m, _ in measured), measured[0][1], tuple(m for m, _ in failed)
    )


def _measure(
    cand: Candidate,
    build_model: Callable[[], Any],
    data: Any,
    steps: int,
    warmup: int,
    inv: Inventory,
) -> tuple[Measurement, Any, BaseException | None]:
    """Build, train and time one candidate. Any failure — building its strategy, building
    the model, training — is returned with the candidate's record, not raised."""
    from tfplace._strategy import pick_strategy

    strategy: Any = None
    model: Any = None
    facts: dict[str, Any] = {
        "precision": cand.precision,
        "jit_compile": cand.jit_compile,
        "steps_per_execution": cand.steps_per_execution,
    }
    rate = 0.0
    try:
        strategy = pick_strategy(cand.kind, devices=list(cand.devices) if cand.devices else None)
        keras = _tf.load_keras()
        model = _build(cand, build_model, strategy, keras)
        facts = _model_facts(cand, model, keras, inv)
        whole = clock_steps(warmup, steps, facts["steps_per_execution"])
        rate = 1.0 / time_steps(keras_of(model), model, data, *whole)
        facts["jit_compile"] = bool(model.jit_compile)
        error: BaseException | None = None
    except Exception as err:
        error = err
        if model is not None:
            facts["jit_compile"] = bool(getattr(model, "jit_compile", False))
    text = None
    if error is None:
        log.info("autotune: %s: %.1f steps/s", cand.name, rate)
    else:
        text = f"{type(error).__name__}: {error}"
        log.warning("autotune: %s failed and is skipped: %s", cand.name, error_summary(text))
    result = Measurement(
        cand.name,
        cand.kind,
        cand.devices,
        rate,
        int(strategy.num_replicas_in_sync) if strategy is not None else 0,
        error=text,
        **facts,
    )
    del model
    if error is not None or any("GPU" in d for d in cand.devices or ()) or "GPU" in cand.name:
        _clear_session()  # give the GPU memory back before the next candidate
    return result, strategy, error


def _build(cand: Candidate, build_model: Callable[[], Any], strategy: Any, keras: Any) -> Any:
    """``build_model()`` in the strategy's scope under the candidate's policy; the global
    policy is put back afterwards."""
    before = policy_name(keras)
    try:
        if cand.precision is not None:
            set_policy(keras, cand.precision)
        with strategy.scope():
            model = build_model()
    finally:
        set_policy(keras, before)
    if cand.jit_compile is not None:
        model.jit_compile = cand.jit_compile
    if cand.steps_per_execution is not None:
        model.steps_per_execution = cand.steps_per_execution  # settable in both Kerases
    return model


def _model_facts(cand: Candidate, model: Any, keras: Any, inv: Inventory) -> dict[str, Any]:
    """The model's policy and what ``jit_compile="auto"`` would choose for it here."""
    flavour = "tf_keras" if keras_of(model).__name__ == "tf_keras" else "keras3"
    auto, why = auto_jit_compile(
        cand.kind, inv, model_supports_jit=model_supports_jit(model), keras=flavour
    )
    return {
        "precision": cand.precision or _model_policy(model) or policy_name(keras),
        "jit_compile": bool(model.jit_compile),
        "auto_jit_compile": auto,
        "auto_jit_reason": why,
        "steps_per_execution": _tf.steps_per_execution(model),
    }


def _model_policy(model: Any) -> str | None:
    policy = getattr(model, "dtype_policy", None)
    name = getattr(policy, "name", None)
    return name if isinstance(name, str) else None
