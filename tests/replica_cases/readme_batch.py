# mypy: ignore-errors
# (code as guides and users write it: untyped on purpose)
"""The README's batch rule: the global batch sized from the strategy,
``tfplace.global_batch_size(32, strategy)`` (32 examples per replica), with ``model.fit``.

The check compares both runs at the N-replica global batch (it tells ``data()`` the replica
count of the run it compares with); the training is right: SAME, with a note that data() scales
the global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from _data import FEATURES, arrays

import tfplace


def build() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy):
    x, y = arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.batch(tfplace.global_batch_size(32, strategy))  # 32 per replica
