"""Shared pieces of the cause examples: a toy regression problem, a small model, a custom step.

Importing this module splits the CPU into 4 virtual devices before TensorFlow starts, so every
example compares 1 vs 2 and 1 vs 4 replicas in one process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tfplace

tfplace.configure_cpus(threads=None, virtual_devices=4)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 32
FEATURES = 8
EXAMPLES = 1024


def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets and an example id per row (the ids seed the stateless-noise fix)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.normal(size=(EXAMPLES, 1))).astype("float32")
    return x, y, np.arange(EXAMPLES, dtype="int64")


def dataset() -> tf.data.Dataset:
    x, y, _ = arrays()
    return tf.data.Dataset.from_tensor_slices((x, y))


def dataset_with_ids() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(arrays())


def global_batches(strategy: Any) -> tf.data.Dataset:
    """The right input for model.fit: batches of the GLOBAL size; Keras splits them."""
    return dataset().batch(GLOBAL_BATCH)


def distributed_batches(strategy: Any) -> Any:
    """The right input for a custom loop: global batches, split by tf.distribute."""
    return strategy.experimental_distribute_dataset(dataset_with_ids().batch(GLOBAL_BATCH))


def model(
    *,
    batchnorm: bool = False,
    synchronized: bool = False,
    dropout: float = 0.0,
    jit_compile: bool | str = False,
    policy: str | None = None,
) -> keras.Model:
    """A small MLP compiled with plain SGD (SGD shows gradient-scale bugs; Adam hides them)."""
    if policy is not None:
        keras.mixed_precision.set_global_policy(policy)
    layers: list[Any] = [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(synchronized=synchronized))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(1, dtype="float32"))
    net = keras.Sequential(layers)
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit_compile)
    return net


def custom_step(*, average: str = "global", noise: str | None = None) -> Any:
    """One step of a custom training loop: ``train_step(strategy, model, batch) -> loss``.

    average: "global" divides the summed per-example loss by the GLOBAL batch
        (tf.nn.compute_average_loss, right); "replica" takes the mean over the replica's own
        batch (cause c).
    noise: None; "stateful" adds tf.random.normal input noise (other numbers per replica,
        cause e); "stateless" draws the noise from each example's id (the same on any count).
    """

    def replica_step(model: Any, x: Any, y: Any, ids: Any) -> Any:
        if noise == "stateful":
            x = x + tf.random.normal(tf.shape(x), stddev=0.1)
        elif noise == "stateless":
            step = tf.cast(model.optimizer.iterations, tf.int64)
            x = x + 0.1 * tf.map_fn(
                lambda i: tf.random.stateless_normal([FEATURES], seed=tf.stack([i, step])),
                ids,
                fn_output_signature=tf.float32,
            )
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
            if average == "global":
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            else:
                loss = tf.reduce_mean(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def train_step(strategy: Any, model: Any, batch: Any) -> Any:
        x, y, ids = batch
        per_replica = strategy.run(replica_step, args=(model, x, y, ids))
        return strategy.reduce("SUM", per_replica, axis=None)

    return tf.function(train_step)


def run(
    cause: str,
    cases: dict[str, dict[str, Any]],
    replicas: tuple[int, ...] = (2, 4),
    *,
    workers: bool = False,
) -> int:
    """Check every case 1 vs each replica count; print each report and a RESULT line.

    workers: the N replicas run as N local worker processes (compare_replicas(workers=True)).

    Returns 0 when every "fixed..." case agrees and every "broken..." one is flagged with
    ``cause`` first.
    """
    wrong = 0
    for name, options in cases.items():
        for n in replicas:
            report = tfplace.compare_replicas(replicas=n, workers=workers, **options)
            top = report.causes[0].key if report.causes else "-"
            print(f"=== cause {cause}: {name}, 1 vs {n} replicas ===\n{report}")
            print(f"RESULT {cause} {name} replicas={n} same={report.same} cause={top}", flush=True)
            if name.startswith("fixed"):
                wrong += not report.same
            else:
                wrong += report.same or top != cause
    return 1 if wrong else 0
