"""autotune's own overhead: ``autotune`` vs the same measurements written by hand.

Both build a model per candidate in its strategy's scope, train a warm-up, then time the
same number of steps; the ratio is what autotune's bookkeeping costs.
Run: ``python benchmarks/bench_autotune.py``.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfplace

tfplace.configure_cpus(virtual_devices=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfplace.tuning import available_candidates  # noqa: E402

STEPS, WARMUP = 40, 5


def build() -> keras.Model:
    m = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(128, "relu"), keras.layers.Dense(1)]
    )
    m.compile(optimizer="adam", loss="mse")
    return m


def data() -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(2048, 32)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(64)


def by_hand() -> float:
    t = time.perf_counter()
    ds = data().repeat()
    for cand in available_candidates():
        strategy = tfplace.pick_strategy(cand.kind, devices=list(cand.devices or []) or None)
        with strategy.scope():
            m = build()
        m.fit(ds, steps_per_epoch=WARMUP, epochs=1, verbose=0)
        m.fit(ds, steps_per_epoch=STEPS, epochs=1, verbose=0)
    return time.perf_counter() - t


def with_autotune() -> tuple[float, str]:
    t = time.perf_counter()
    report = tfplace.autotune(build, data(), steps=STEPS, warmup=WARMUP)
    return time.perf_counter() - t, report.to_text()


def main() -> None:
    hand, auto = [], []
    text = ""
    for _ in range(3):
        hand.append(by_hand())
        seconds, text = with_autotune()
        auto.append(seconds)
    h, a = statistics.median(hand), statistics.median(auto)
    print(text)
    print(f"by hand     {h:6.2f} s")
    print(f"autotune    {a:6.2f} s   ratio {a / h:4.2f}")


if __name__ == "__main__":
    main()
