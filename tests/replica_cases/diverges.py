# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""Trainings that reach NaN/inf, and one that has no batch to train on.

``build_diverging``: SGD at a learning rate that overflows within a few steps, on 1 and on N
replicas alike: NOT FINITE (never SAME). ``data_empty``: zero steps: could not check.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from _data import FEATURES, arrays


def build_diverging() -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e4), loss="mse")
    return model


def build() -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy):
    x, y = arrays()
    return tf.data.Dataset.from_tensor_slices((x * 100, y * 1e4)).batch(32)


def data_empty(strategy):
    x, y = arrays()
    return tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(32)


def data_plain(strategy):
    x, y = arrays()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
