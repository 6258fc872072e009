"""The tests' tiny training job, written once: its data, its model, and what a worker reports.

The SLURM, Ray and multi-host jobs (``train.py``, ``train_ft.py``, ``ray_hosts.py`` and the
script of ``tests/cluster/test_slurm.py``) all train this model, so that their results can be
compared with each other and with one process. A job imports it from its own folder (tests
copy it next to a job they copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The linear target every job learns.
TARGET = np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")


def data(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of 4 features (seed 0) and their targets."""
    x = np.random.default_rng(0).normal(size=(n, 4)).astype("float32")
    return x, x @ TARGET


def build(strategy: Any, learning_rate: float = 0.05) -> Any:
    """A 4-8-1 MLP (seed 1) compiled with SGD under ``strategy``'s scope."""
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def fit(strategy: Any, *, epochs: int = 3, n: int = 96) -> tuple[Any, Any]:
    """Build and train on :func:`data` in batches of 16, unshuffled; the model and history."""
    model = build(strategy)
    x, y = data(n)
    history = model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    return model, history


def weights(model: Any) -> list[list[float]]:
    """The model's weights as plain lists, for a JSON line."""
    return [w.ravel().tolist() for w in model.get_weights()]


def report(strategy: Any, model: Any, history: Any) -> dict[str, Any]:
    """What every job prints: the strategy, its replicas, the losses and the weights."""
    return {
        "kind": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "loss": history.history["loss"],
        "weights": weights(model),
    }
