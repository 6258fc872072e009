# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""A fine-tuning step whose gradient is N times too large on N replicas.

The per-replica loss is ``tf.reduce_mean`` over the replica's own batch (not
``compute_average_loss``), the gradients are summed over replicas by ``apply_gradients``, so
on 2 replicas each update is twice the one-replica update. The loss the step returns is
averaged over replicas (``strategy.reduce("MEAN")``), so it looks right; the learning rate is a
fine-tuning one (SGD 1e-6), so the weights barely move. The math: every update is 2x: DIFFERENT,
cause (c).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from _data import FEATURES, arrays

GLOBAL_BATCH = 32


def build() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
    return model


def data(strategy):
    x, y = arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    return strategy.experimental_distribute_dataset(ds)


@tf.function
def train_step(strategy, model, batch):
    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    per_replica = strategy.run(replica_step, args=batch)
    return strategy.reduce("MEAN", per_replica, axis=None)
