"""One training of the replica check, in this process or in a worker: the model built under a
strategy, the input recorded as the replicas receive it, the steps trained and recorded."""

from __future__ import annotations

import gc
import inspect
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfplace import _tf
from tfplace.replicas._judge import Hints
from tfplace.replicas._records import Run, Snapshots, batch_record
from tfplace.replicas._report import ModelFacts

__all__ = [
    "Reference",
    "TrainStep",
    "build_model",
    "model_facts",
    "record_input",
    "sized_for",
    "start_from",
    "train",
    "train_reference",
    "train_steps",
    "variable_name",
    "weight_values",
    "write_weights",
]

TrainStep = Callable[[Any, Any, Any], Any]
Local = list[list[np.ndarray]]  # per input component, the arrays of this process's replicas


def build_model(strategy: Any, build: Callable[[], Any], seed: int) -> Any:
    """``build()`` under the strategy, seeded, with Keras's name counters reset first."""
    _tf.keras_random_seed(seed)
    _tf.fresh_keras_names()
    with strategy.scope():
        model = build()
        if not getattr(model, "weights", None):
            raise ValueError(
                "build() returned a model without weights: start it with a keras.Input so "
                "that it is built when it is made"
            )
    return model


def variable_name(variable: Any) -> str:
    """A variable's path in the model (Keras 3: ``sequential/dense/kernel``)."""
    path = getattr(variable, "path", None)
    return str(path if path else variable.name)


def weight_values(model: Any) -> Iterator[np.ndarray]:
    """The model's variables, one at a time, in their own dtype (no copy of the whole model)."""
    for variable in model.weights:
        yield np.asarray(variable.numpy())


def write_weights(model: Any, values: Iterable[np.ndarray]) -> None:
    """Assign ``values`` to the model's variables, in order, each in the variable's dtype."""
    for variable, value in zip(model.weights, values, strict=True):
        dtype = variable.dtype
        variable.assign(np.asarray(value).astype(np.dtype(str(getattr(dtype, "name", dtype)))))


#: A call that draws random numbers: other numbers on each replica for its share of the batch.
_RANDOM_CALL = re.compile(
    r"\b(?:tf\.random|keras\.random|random_ops|np\.random|numpy\.random)\.(?!stateless)(\w+)\("
)


def _sources(fn: Any, depth: int = 2) -> list[str]:
    """The source of ``fn`` and of the functions it closes over (a step's inner
    ``replica_step``), ``depth`` levels down."""
    fn = getattr(fn, "python_function", fn)  # a tf.function: the Python function it wraps
    try:
        found = [inspect.getsource(fn)]
    except (OSError, TypeError):
        return []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if depth > 0 and callable(inner) and not isinstance(inner, type):
            found += _sources(inner, depth - 1)
    return found


def random_calls(model: Any, train_step: TrainStep | None) -> tuple[str, ...]:
    """Random draws written in the training step: the user's ``train_step``, and a
    ``train_step`` override on the model's class (Keras's own is not read)."""
    sources = _sources(train_step) if train_step is not None else []
    for klass in type(model).__mro__:
        if "train_step" in vars(klass) and not klass.__module__.startswith(("keras", "tf_keras")):
            sources += _sources(vars(klass)["train_step"])
            break
    found: list[str] = []
    for source in sources:
        for match in _RANDOM_CALL.finditer(source):
            call = match.group(0)[:-1]
            if call not in found:
                found.append(call)
    return tuple(found)


def model_facts(model: Any, train_step: TrainStep | None = None) -> ModelFacts:
    """What ``model`` says about its replica-sensitive parts (layers, policy, XLA, draws)."""
    kinds = _tf.layer_kinds(model)
    policy = getattr(model, "dtype_policy", None)
    optimizer = getattr(model, "optimizer", None)
    optimizer_name = type(optimizer).__name__ if optimizer is not None else ""
    return ModelFacts(
        unsynced_batchnorm=tuple(n for n, k in kinds if k == "batchnorm"),
        random_layers=tuple(n for n, k in kinds if k == "random"),
        dtype_policy=str(getattr(policy, "name", policy)) if policy is not None else "float32",
        jit_compile=getattr(model, "jit_compile", False) is True,
        optimizer=optimizer_name,
        loss_scaling="LossScale" in optimizer_name,
        random_calls=random_calls(model, train_step),
    )


def record_input(
    strategy: Any,
    data: Callable[[Any], Any],
    steps: int,
    seed: int,
    *,
    as_fit_sees_it: bool = False,
    given: Any = None,
) -> list[Local]:
    """Per step (at most ``steps``), per input component, the arrays of this process's
    replicas, as ``data(strategy)`` gives them after the check's seed.

    Args:
        as_fit_sees_it: a plain ``tf.data.Dataset`` is read through
            ``strategy.experimental_distribute_dataset``, as ``model.fit`` reads it (so a
            worker records its own share, after auto-sharding).
        given: the object passed to ``data`` instead of ``strategy`` (see :func:`sized_for`).
    """
    _tf.keras_random_seed(seed)
    source = data(strategy if given is None else given)
    if as_fit_sees_it and _tf.is_dataset(source):
        source = strategy.experimental_distribute_dataset(source)
    out: list[Local] = []
    for seen, element in enumerate(source, 1):
        out.append(_tf.replica_arrays(strategy, element))
        if seen == steps:
            break
    return out


class _ReplicaCount:
    """A strategy that says it has ``n`` replicas: everything else is the real one's."""

    def __init__(self, strategy: Any, n: int) -> None:
        self._strategy = strategy
        self.num_replicas_in_sync = n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)


def sized_for(
    strategy: Any, data: Callable[[Any], Any], replicas: int, seed: int
) -> tuple[Any, tuple[int, int]]:
    """What the one-replica run passes to ``data()`` so that it gets the N-replica global batch.

    A ``data()`` that sizes its global batch from the strategy it is given
    (``global_batch_size(32, strategy)``, ``32 * strategy.num_replicas_in_sync``) makes 32 for
    one replica and 64 for two: two trainings that cannot be compared. The check compares at
    the N-replica global batch: when the first batch from ``data()`` grows with the replica
    count it is told, the one-replica run is given a stand-in whose ``num_replicas_in_sync``
    is N (every other attribute is the real strategy's).

    Returns:
        ``(stand-in or None, (size for 1 replica, size for N))``: None when the size does not
        follow the count (or the stand-in cannot be used).
    """

    def first_size(given: Any) -> int:
        local = record_input(strategy, data, 1, seed, given=given)
        return int(local[0][0][0].shape[0]) if local and local[0] and local[0][0] else 0

    own = first_size(None)
    stand_in = _ReplicaCount(strategy, replicas)
    try:
        told = first_size(stand_in)
    except Exception:  # data() cannot take the stand-in: compare as it is
        return None, (own, own)
    return (stand_in if told != own and told > 0 else None), (own, told)


def train(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
    run: Run,
    *,
    given: Any = None,
    reread: bool = False,
) -> Run:
    """Record the input as the replicas receive it, then train on it (:func:`train_steps`).

    Args:
        run: the record to fill (its ``snapshots`` decide where the variables go).
        given: passed to ``data`` instead of the strategy (see :func:`sized_for`).
        reread: read the input twice, with the same seed before each read, and say in
            ``run.reread`` whether it gave other batches (a shuffle the seed does not fix).
    """
    n = int(strategy.num_replicas_in_sync)
    recorded = [
        batch_record(local, n) for local in record_input(strategy, data, steps, seed, given=given)
    ]
    run.batches = recorded
    if reread:
        again = [
            batch_record(local, n)
            for local in record_input(strategy, data, steps, seed, given=given)
        ]
        run.reread = [b.digest for b in again] != [b.digest for b in recorded]
    run.keep(weight_values(model))
    bound = data if given is None else (lambda _strategy: data(given))
    if recorded:  # no batch: nothing to train (the judge says it could not check)
        train_steps(strategy, model, bound, min(steps, len(recorded)), train_step, seed, run)
    return run


def _logged(model: Any) -> dict[str, float]:
    """The values the model logs after a step (``loss``, ``mae``, ``d_loss``, ...)."""
    try:
        results = model.get_metrics_result()
    except Exception:  # a model without compiled metrics, or another Keras
        return {}
    out: dict[str, float] = {}
    for name, value in dict(results).items():
        try:
            out[str(name)] = float(np.asarray(value))
        except (TypeError, ValueError):  # not a scalar: not shown
            continue
    return out


def _scalar(value: Any, strategy: Any) -> float:
    local = strategy.experimental_local_results(value)
    return float(sum(float(np.asarray(v)) for v in local))


def train_steps(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
    run: Run,
) -> None:
    """Train ``steps`` steps, appending each step's loss, logged values and variables to
    ``run``; a failure is raised on one replica and recorded in ``run.error`` on several (a
    cause in itself)."""
    n = int(strategy.num_replicas_in_sync)
    began = time.perf_counter()
    try:
        if train_step is None:

            def after_step(loss: float) -> None:
                logged = _logged(model)
                run.losses.append(logged.get("loss", loss))
                run.metrics.append(logged)
                run.keep(weight_values(model))

            _tf.keras_random_seed(seed)
            _tf.fit_steps(model, data(strategy), steps, after_step)
        else:
            _tf.keras_random_seed(seed)
            iterator = iter(data(strategy))
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None and not getattr(optimizer, "built", True):
                with strategy.scope():  # its variables, made under the strategy
                    optimizer.build(model.trainable_variables)
            for _ in range(steps):
                element = next(iterator)
                with strategy.scope():
                    out = train_step(strategy, model, element)
                if isinstance(out, dict):
                    logged = {str(k): _scalar(v, strategy) for k, v in out.items()}
                else:
                    logged = {"loss": _scalar(out, strategy)}
                run.losses.append(logged.get("loss", float("nan")))
                run.metrics.append(logged)
                run.keep(weight_values(model))
    except Exception as err:  # re-raised for 1 replica; reported for N (a cause in itself)
        if n == 1:
            raise
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(("File ", "Detected at", "[["))]
        run.error = f"{type(err).__name__}: {' '.join(useful[-3:])[:400]}"
    run.seconds = time.perf_counter() - began


#: Weights (bytes) above which the one-replica model is collected at once, before the
#: N-replica model is built (Keras models hold reference cycles: without a collection they
#: would stay in memory beside the N-replica run until Python's next full collection).
_COLLECT_ABOVE = 64 * 2**20


@dataclass
class Reference:
    """The one-replica run and what the check learned building it."""

    run: Run
    names: list[str]
    trainable: list[bool]
    facts: ModelFacts
    hints: Hints


def train_reference(
    strategy: Any,
    build: Callable[[], Any],
    data: Callable[[Any], Any],
    train_step: TrainStep | None,
    *,
    steps: int,
    seed: int,
    replicas: int,
    path: Path,
) -> Reference:
    """Build and train the one-replica model, its variables going to ``path``; the model is
    dropped on return, so the N-replica run does not train beside it."""
    policy = _tf.keras_policy()
    try:  # build() may set a global dtype policy: the caller gets theirs back
        model = build_model(strategy, build, seed)
    finally:
        _tf.set_keras_policy(policy)
    names = [variable_name(v) for v in model.weights]
    trainable_ids = {id(v) for v in model.trainable_weights}
    trainable = [id(v) in trainable_ids for v in model.weights]
    facts = model_facts(model, train_step)
    given, (own, told) = sized_for(strategy, data, replicas, seed)
    run = Run(snapshots=Snapshots(path))
    train(strategy, model, data, steps, train_step, seed, run, given=given, reread=True)
    hints = Hints(own, told if given is not None else own)
    del model
    if run.snapshots.snapshot_bytes > _COLLECT_ABOVE:  # a full collection costs ~0.4 s
        gc.collect()
    return Reference(run, names, trainable, facts, hints)


def start_from(model: Any, reference: Reference) -> None:
    """Give ``model`` the one-replica run's initial variables (its snapshot 0).

    Raises:
        ValueError: ``build()`` made other variables this time.
    """
    shapes = [shape for _, shape in reference.run.snapshots.layout]
    found = [tuple(v.shape) for v in model.weights]
    if shapes != found:
        raise ValueError(
            "build() made different variables under the two strategies: expected "
            f"{list(zip(reference.names, shapes, strict=False))}, found "
            f"{[(variable_name(v), s) for v, s in zip(model.weights, found, strict=False)]}. "
            "Fix: build the same model whatever the strategy"
        )
    snapshots = reference.run.snapshots
    write_weights(model, (snapshots.read(0, j) for j in range(snapshots.variables)))
