"""autotune's own overhead, its cost per candidate, and eager vs graph vs XLA per placement.

1. ``autotune`` vs the same measurements written by hand: both build a model per candidate
   in its strategy's scope, train a warm-up, then time the same number of steps; the ratio is
   what autotune's bookkeeping costs.
2. Cost per candidate: the wall time of ``autotune(..., jit_compile=(False, True))`` divided
   by its candidates, against the timed steps alone (what the candidate's figure is made of).
3. Per placement, steps/s of the same model run eagerly (``run_eagerly=True``), as a graph
   (``jit_compile=False``) and compiled by XLA (``jit_compile=True``), interleaved.

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

from tfplace.tuning._autotune import available_candidates  # noqa: E402

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


def per_candidate() -> None:
    report = tfplace.autotune(build, data(), steps=STEPS, warmup=WARMUP)  # warm caches once
    walls, timed, count = [], [], 0
    for _ in range(3):
        t = time.perf_counter()
        report = tfplace.autotune(
            build, data(), steps=STEPS, warmup=WARMUP, jit_compile=(False, True)
        )
        walls.append(time.perf_counter() - t)
        count = len(report.results) + len(report.failed)
        timed.append(sum(STEPS / m.steps_per_second for m in report.results))
    wall, steps_s = statistics.median(walls), statistics.median(timed)
    print(report.to_text())
    print(
        f"autotune over XLA: {count} candidates, {wall:6.2f} s, {wall / count:5.2f} s per "
        f"candidate; timed steps {steps_s:5.2f} s -> {wall / steps_s:4.1f}x the timed steps "
        f"({len(report.failed)} failed, their cost included)"
    )


def eager_graph_xla() -> None:
    ds = data().repeat()
    modes = {
        "eager": {"run_eagerly": True},
        "graph": {"jit_compile": False},
        "XLA": {"jit_compile": True},
    }
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):
        for cand in available_candidates():
            devices = list(cand.devices or []) or None
            for mode, kwargs in modes.items():
                strategy = tfplace.pick_strategy(cand.kind, devices=devices)
                with strategy.scope():
                    m = build()
                    m.compile(optimizer="adam", loss="mse", **kwargs)
                try:
                    m.fit(ds, steps_per_epoch=WARMUP, epochs=1, verbose=0)
                    t = time.perf_counter()
                    m.fit(ds, steps_per_epoch=STEPS, epochs=1, verbose=0)
                    rate = STEPS / (time.perf_counter() - t)
                except Exception as err:  # XLA over virtual CPUs fails; say so
                    print(f"{cand.name} {mode}: failed: {type(err).__name__}")
                    rate = float("nan")
                rates.setdefault((cand.name, mode), []).append(rate)
    for cand in available_candidates():
        graph = statistics.median(rates[(cand.name, "graph")])
        row = "   ".join(
            f"{mode} {statistics.median(rates[(cand.name, mode)]):7.1f} steps/s "
            f"({statistics.median(rates[(cand.name, mode)]) / graph:4.2f}x)"
            for mode in modes
        )
        print(f"{cand.name:<16} {row}")


def main() -> None:
    print(f"model 32-128-1, batch 64, {STEPS} timed steps after {WARMUP}")
    eager_graph_xla()
    per_candidate()
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
