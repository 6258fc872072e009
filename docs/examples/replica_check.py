"""Is my distributed training right? Compare 1 and N replicas of your own model and input."""

import tfplace

tfplace.configure_cpus(threads=None, virtual_devices=4)  # first: before TensorFlow starts

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 32
x = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)


def build(synchronized: bool = False) -> keras.Model:  # called once per strategy, in its scope
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(synchronized=synchronized),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy: tf.distribute.Strategy) -> tf.data.Dataset:  # as your training reads it
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


report = tfplace.compare_replicas(build, data, replicas=2, steps=5)
print(report)  # DIFFERENT ... [d] BatchNormalization statistics computed per replica
assert not report.same and report.causes[0].key == "d"

fixed = tfplace.compare_replicas(lambda: build(synchronized=True), data, replicas=4)
print(fixed)  # SAME: 1 and 4 replicas agree for 5 steps
assert fixed.same
