"""One training of the replica check, in this process or in a worker: the model built under a
strategy, the input recorded as the replicas receive it, the steps trained and recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfplace import _tf
from tfplace.replicas._judge import Arrays, Run
from tfplace.replicas._report import ModelFacts

TrainStep = Callable[[Any, Any, Any], Any]


def sorted_rows(array: np.ndarray) -> np.ndarray:
    flat = (
        np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
        if array.ndim
        else (np.asarray(array, dtype=np.float64).reshape(1, 1))
    )
    if flat.shape[1] == 0:
        return flat
    order = np.lexsort(flat.T[::-1])
    return flat[order]


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
    path = getattr(variable, "path", None)  # Keras 3: "sequential/dense/kernel"
    return str(path if path else variable.name)


def read_weights(model: Any) -> Arrays:
    return [np.array(v.numpy(), dtype=np.float64) for v in model.weights]


def write_weights(model: Any, values: Arrays) -> None:
    for variable, value in zip(model.weights, values, strict=True):
        dtype = variable.dtype
        variable.assign(value.astype(np.dtype(str(getattr(dtype, "name", dtype)))))


def model_facts(model: Any) -> ModelFacts:
    """What ``model`` says about its replica-sensitive parts (layers, policy, XLA)."""
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
    )


def record_input(
    strategy: Any, data: Callable[[Any], Any], steps: int, *, as_fit_sees_it: bool = False
) -> list[list[list[np.ndarray]]]:
    """Per step (at most ``steps``), per input component, the arrays of this process's
    replicas, as ``data(strategy)`` gives them. ``as_fit_sees_it``: a plain ``tf.data.Dataset``
    is read through ``strategy.experimental_distribute_dataset``, as ``model.fit`` reads it (so
    a worker records its own share, after auto-sharding)."""
    source = data(strategy)
    if as_fit_sees_it and _tf.is_dataset(source):
        source = strategy.experimental_distribute_dataset(source)
    out: list[list[list[np.ndarray]]] = []
    for seen, element in enumerate(source, 1):
        out.append(_tf.replica_arrays(strategy, element))
        if seen == steps:
            break
    return out


def train(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
) -> Run:
    n = int(strategy.num_replicas_in_sync)
    run = Run([], [read_weights(model)], [], [], [])
    for local in record_input(strategy, data, steps):  # the input as the user's pipeline makes it
        run.batches.append([sorted_rows(np.concatenate(parts, axis=0)) for parts in local])
        run.duplicated.append(
            n > 1
            and all(len(parts) == n for parts in local)
            and all(all(np.array_equal(p, parts[0]) for p in parts[1:]) for parts in local)
        )
        run.undistributed.append(n > 1 and all(len(parts) == 1 for parts in local))
    train_steps(strategy, model, data, min(steps, len(run.batches)), train_step, seed, run)
    return run


def train_steps(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
    run: Run,
) -> None:
    """Train ``steps`` steps, appending each step's loss and variables to ``run``; a failure is
    raised on one replica and recorded in ``run.error`` on several (a cause in itself)."""
    n = int(strategy.num_replicas_in_sync)
    _tf.keras_random_seed(seed)
    began = time.perf_counter()
    try:
        if train_step is None:

            def after_step(loss: float) -> None:
                run.losses.append(loss)
                run.weights.append(read_weights(model))

            _tf.fit_steps(model, data(strategy), steps, after_step)
        else:
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None and not getattr(optimizer, "built", True):
                with strategy.scope():  # its variables, made under the strategy
                    optimizer.build(model.trainable_variables)
            iterator = iter(data(strategy))
            for _ in range(steps):
                element = next(iterator)
                with strategy.scope():
                    loss = train_step(strategy, model, element)
                local = strategy.experimental_local_results(loss)
                run.losses.append(float(sum(float(np.asarray(v)) for v in local)))
                run.weights.append(read_weights(model))
    except Exception as err:  # re-raised for 1 replica; reported for N (a cause in itself)
        if n == 1:
            raise
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(("File ", "Detected at", "[["))]
        run.error = f"{type(err).__name__}: {' '.join(useful[-3:])[:400]}"
    run.seconds = time.perf_counter() - began
