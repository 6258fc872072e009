"""The Keras and ``tf.data`` calls of the replica check (``tfplace.replicas``).

Not a thin seam like the rest of the package: these helpers hold a little logic of the check
(a callback class, a layer walk), kept here because every line of it calls Keras or
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tfplace._tf._core import keras_of, load, load_keras
from tfplace._tf._keras import clear_keras_session, keras_policy, set_keras_policy

__all__ = [
    "fit_steps",
    "fresh_keras_names",
    "keras_random_seed",
    "layer_kinds",
    "replica_arrays",
]


#: Keras layers whose output is random in training: they draw other numbers per replica.
_RANDOM_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomCrop",
    "RandomContrast",
)


def keras_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``: Python's, NumPy's and TensorFlow's seeds."""
    load_keras(stacklevel=3).utils.set_random_seed(seed)


def fresh_keras_names() -> None:
    """Reset Keras's name counters (``clear_session``), keeping the global dtype policy, so
    two builds of one model name their variables alike (``sequential/dense/kernel``)."""
    policy = keras_policy()
    clear_keras_session()
    set_keras_policy(policy)


def layer_kinds(model: Any) -> list[tuple[str, str]]:
    """``(name, kind)`` of every layer of ``model``, nested ones included; kind is
    ``"batchnorm"`` (not synchronized across replicas), ``"random"`` or ``"other"``."""
    keras = keras_of(model)
    random = tuple(getattr(keras.layers, n) for n in _RANDOM_LAYERS if hasattr(keras.layers, n))
    found: list[tuple[str, str]] = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        synced = getattr(layer, "synchronized", False) or "Sync" in type(layer).__name__
        if isinstance(layer, keras.layers.BatchNormalization) and not synced:
            found.append((layer.name, "batchnorm"))
        elif random and isinstance(layer, random):
            found.append((layer.name, "random"))
        else:
            found.append((layer.name, "other"))
        stack.extend(getattr(layer, "layers", []))
    return found


def replica_arrays(strategy: Any, element: Any) -> list[list[Any]]:
    """Per component of one input element, its per-replica values as NumPy arrays (one entry
    when the element is a plain, undistributed value)."""
    tf = load()
    out: list[list[Any]] = []
    for part in tf.nest.flatten(element, expand_composites=False):
        local = strategy.experimental_local_results(part)
        out.append([tf.convert_to_tensor(v).numpy() for v in local])
    return out


def fit_steps(model: Any, data: Any, steps: int, after_step: Callable[[float], None]) -> None:
    """``model.fit(data)`` for ``steps`` steps; ``after_step(loss)`` after each, with that
    step's loss alone (the metrics are reset before every step)."""
    base: Any = keras_of(model).callbacks.Callback

    class _Steps(base):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            model.reset_metrics()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            after_step(float((logs or {}).get("loss", float("nan"))))

    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[_Steps()])
