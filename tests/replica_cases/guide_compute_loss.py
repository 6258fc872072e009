# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""The Keras guide "Customizing what happens in fit()": a ``train_step`` override that calls
``self.compute_loss`` and feeds the loss tracker that value, with and without
``sample_weight``.

Under a strategy Keras's ``compute_loss`` returns the loss scaled by 1/N (the gradients summed
over replicas are then right), and the tracker records that scaled value: the weights and the
updates agree, the logged ``loss`` is 1/N of the one-replica value. The math: the training is
the SAME; only the logged loss differs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from _data import FEATURES, arrays


class CustomModel(keras.Model):
    def train_step(self, data):
        if len(data) == 3:
            x, y, sample_weight = data
        else:
            sample_weight = None
            x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)
        self.optimizer.apply(gradients, trainable_vars)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}


def build() -> keras.Model:
    inputs = keras.Input(shape=(FEATURES,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(inputs))
    model = CustomModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    return model


def data(strategy):
    x, y = arrays()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def data_weighted(strategy):
    x, y = arrays()
    sw = np.random.default_rng(5).random((len(x), 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(32)
