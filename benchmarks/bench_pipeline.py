"""Epoch time of a naive input pipeline vs ``prepare_dataset``, against the ideal.

The preprocessing is CPU-bound (float matrix work per example) and costs about as much as a
training step. The training step stands in for an accelerator: a small model plus a fixed
"device time" per step during which the host CPU is free (a sleeping ``tf.py_function``), as
when a GPU runs the step. Measured side by side, interleaved, in one process:

- P: the prepared pipeline alone (drained in C++, no training);
- T: training alone on batches already in memory;
- ideal = max(P, T): perfect overlap of input work and training;
- naive: ``map(preprocess)`` then ``batch``, no parallelism, no prefetch (tf.data's own
  map parallelization and prefetch injection are turned off for it);
- prepared: ``tfplace.prepare_dataset(..., preprocess=...)``.

Run: ``python benchmarks/bench_pipeline.py``. Goal: prepared within 1.15x of the ideal.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import tfplace

EXAMPLES = 8192
BATCH = 64
WORK = int(os.environ.get("BENCH_WORK", "80"))  # 16x16 matmul rounds per example
DEVICE_MS = float(os.environ.get("BENCH_DEVICE_MS", "6"))  # accelerator time per step


def preprocess(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    m = tf.reshape(x, (16, 16))  # small ops: one thread each, so a parallel map scales
    for _ in range(WORK):
        m = tf.tanh(tf.linalg.matmul(m, m) * 0.05)
    return tf.reshape(m, (256,)), y


def _device_time() -> np.float32:
    time.sleep(DEVICE_MS / 1000)  # the host waits, as for a GPU kernel
    return np.float32(0.0)


class DeviceTime(keras.layers.Layer):  # type: ignore[misc]
    """Adds a fixed accelerator time to every step, leaving the host CPU free."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        waited = tf.py_function(_device_time, [], tf.float32)
        waited.set_shape(())
        return x + 0.0 * waited

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


def source() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, 256)).astype("float32")
    y = rng.normal(size=(EXAMPLES, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y))


def model() -> keras.Model:
    m = keras.Sequential(
        [keras.Input((256,)), keras.layers.Dense(64, "relu"), DeviceTime(), keras.layers.Dense(1)]
    )
    m.compile(optimizer="adam", loss="mse")
    return m


def epoch(m: keras.Model, ds: tf.data.Dataset) -> float:
    t = time.perf_counter()
    m.fit(ds, epochs=1, verbose=0)
    return time.perf_counter() - t


@tf.autograph.experimental.do_not_convert  # type: ignore[untyped-decorator]
def _count(n: tf.Tensor, _: object) -> tf.Tensor:
    return n + 1


def drain(ds: tf.data.Dataset) -> float:
    t = time.perf_counter()
    ds.reduce(np.int64(0), _count).numpy()  # drained in C++, as fit does
    return time.perf_counter() - t


def main() -> None:
    # Truly naive: tf.data would otherwise parallelize the map and inject a prefetch itself.
    plain = tf.data.Options()
    plain.experimental_optimization.map_parallelization = False
    plain.experimental_optimization.inject_prefetch = False
    naive = source().map(preprocess).batch(BATCH).with_options(plain)
    prepared = tfplace.prepare_dataset(source(), BATCH, preprocess=preprocess)
    in_memory = prepared.cache()
    m = model()
    m.fit(in_memory, epochs=1, verbose=0)  # warm-up: tracing, cache filled
    samples: dict[str, list[float]] = {"P1": [], "P": [], "T": [], "naive": [], "prepared": []}
    for _ in range(5):  # interleaved rounds
        samples["P1"].append(drain(naive))
        samples["P"].append(drain(prepared))
        samples["T"].append(epoch(m, in_memory))
        samples["naive"].append(epoch(m, naive))
        samples["prepared"].append(epoch(m, prepared))
    med = {k: statistics.median(v) for k, v in samples.items()}
    ideal = max(med["P"], med["T"])
    steps = EXAMPLES // BATCH
    print(
        f"{EXAMPLES} examples, batch {BATCH} ({steps} steps), {os.cpu_count()} cores, "
        f"work {WORK}, device time {DEVICE_MS:g} ms/step"
    )
    print(f"preprocessing, serial     {med['P1']:6.2f} s   (the naive pipeline drained alone)")
    print(f"preprocessing alone (P)   {med['P']:6.2f} s   (the prepared pipeline drained alone)")
    print(f"training alone (T)        {med['T']:6.2f} s")
    print(f"ideal max(P, T)           {ideal:6.2f} s")
    print(
        f"naive pipeline            {med['naive']:6.2f} s   ratio to ideal "
        f"{med['naive'] / ideal:4.2f}"
    )
    print(
        f"prepare_dataset           {med['prepared']:6.2f} s   ratio to ideal "
        f"{med['prepared'] / ideal:4.2f}   (goal <= 1.15)"
    )


if __name__ == "__main__":
    main()
