"""Cost of one replica check: seconds per ``compare_replicas`` call for a small model, and the
ratio to the plain training it replays (build + ``model.fit`` of the same steps on N
replicas), measured side by side in one run (medians of 3 after a warm-up); and one check with
the N replicas as 2 local worker processes (``workers=True``: two TensorFlow start-ups more).

Run: python benchmarks/bench_replicas.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import tfplace

tfplace.configure_cpus(threads=None, virtual_devices=4)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS = 5
x = np.random.default_rng(7).normal(size=(1024, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)


def build() -> Any:
    net = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return net


def data(strategy: Any) -> Any:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def plain(n: int) -> float:
    devices = [f"/CPU:{i}" for i in range(n)]
    strategy = tfplace.pick_strategy("mirrored", devices=devices, cross_device_ops="reduce_to_one")
    began = time.perf_counter()
    with strategy.scope():
        net = build()
    net.fit(data(strategy), epochs=1, steps_per_epoch=STEPS, verbose=0)
    return time.perf_counter() - began


def check(n: int) -> float:
    began = time.perf_counter()
    assert tfplace.compare_replicas(build, data, replicas=n, steps=STEPS).same
    return time.perf_counter() - began


def check_on_workers() -> float:
    began = time.perf_counter()
    assert tfplace.compare_replicas(build, data, replicas=2, steps=STEPS, workers=True).same
    return time.perf_counter() - began


def main() -> None:
    for n in (2, 4):
        plain(n)
        check(n)  # warm-up: imports, first traces
        p = statistics.median(plain(n) for _ in range(3))
        c = statistics.median(check(n) for _ in range(3))
        print(
            f"1 vs {n} replicas, {STEPS} steps: check {c:.2f} s, plain training {p:.2f} s, "
            f"overhead ratio {c / p:.1f}x",
            flush=True,
        )
    w = statistics.median(check_on_workers() for _ in range(3))
    print(f"1 vs 2 local workers, {STEPS} steps: check {w:.2f} s", flush=True)


if __name__ == "__main__":
    main()
