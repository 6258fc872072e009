# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""The TensorFlow tutorial "Custom training with tf.distribute.Strategy", as written: a fixed
global batch, ``compute_average_loss``, ``strategy.reduce(SUM)``, and a dataset made once at
module level with an unseeded ``shuffle`` (a new order on every pass over it).

The training itself is right. What each run reads depends on the shuffle, which nothing seeds.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from _data import FEATURES, arrays

GLOBAL_BATCH_SIZE = 64
x, y = arrays()
train_dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(GLOBAL_BATCH_SIZE)
SEEDED = False


def build() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    return model


def data(strategy):
    ds = train_dataset
    if SEEDED:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=3)
        ds = ds.batch(GLOBAL_BATCH_SIZE)
    return strategy.experimental_distribute_dataset(ds)


@tf.function
def train_step(strategy, model, dist_inputs):
    def step(inputs):
        features, labels = inputs
        with tf.GradientTape() as tape:
            predictions = model(features, training=True)
            per_example_loss = tf.reduce_mean(tf.square(labels - predictions), axis=-1)
            loss = tf.nn.compute_average_loss(per_example_loss)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    per_replica_losses = strategy.run(step, args=(dist_inputs,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_losses, axis=None)
