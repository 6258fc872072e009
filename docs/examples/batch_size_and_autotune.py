"""Back off the batch size on out-of-memory, and measure where this model trains fastest."""

import numpy as np

import tfplace

tfplace.configure_cpus(virtual_devices=2)  # so autotune has a mirrored candidate on a CPU

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

x = np.random.default_rng(0).normal(size=(1024, 16)).astype("float32")
y = x.sum(axis=1, keepdims=True)


def build_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(64, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


@tfplace.find_batch_size(start=1024)
def train(batch_size: int) -> float:
    if batch_size > 512:  # pretend larger batches do not fit: a real OOM from TensorFlow
        tf.zeros((batch_size, 2**40))
    model = build_model()
    return model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0).history["loss"][-1]


train()
print("batch size that fits:", train.batch_size)

report = tfplace.autotune(build_model, tf.data.Dataset.from_tensor_slices((x, y)).batch(64))
print(report.to_text())
print("fastest:", report.best.name)
