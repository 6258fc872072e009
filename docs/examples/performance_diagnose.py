"""Is training input-bound or compute-bound? One call measures it, and can write a trace."""

import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import tfplace

x = np.random.default_rng(0).normal(size=(512, 32)).astype("float32")
y = x.sum(axis=1, keepdims=True)


def slow_parse(batch: np.ndarray) -> np.ndarray:
    time.sleep(0.01)  # stands in for decoding, augmentation, a remote read ...
    return batch


def parse(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    out = tf.numpy_function(slow_parse, [xb], tf.float32)
    out.set_shape(xb.shape)
    return out, yb


def build_model(width: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(width, "relu"),
            keras.layers.Dense(width, "relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


strategy = tfplace.pick_strategy()  # whatever this machine has; any strategy works
with strategy.scope():
    small, large = build_model(16), build_model(2048)

# 1. A slow input pipeline feeding a small model: input-bound.
slow_input = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).map(parse)
print(tfplace.diagnose_training(small, slow_input, steps=10).to_text())

# 2. A large model on batches already in memory: compute-bound, and a profiler trace of it.
in_memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
trace_dir = tempfile.mkdtemp(prefix="tfplace-trace-")
report = tfplace.diagnose_training(large, in_memory, steps=10, profile_dir=trace_dir)
print()
print(report.to_text())
print(report.to_dict()["bound"], round(report.ratio, 1))
