"""Per enter+exit cost of tfplace's device scopes vs a raw ``tf.device``, side by side.

Run: ``python benchmarks/bench_placement.py``. Prints the ratio of medians (goal: <= 1.05).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

import tfplace

N = 20_000
ROUNDS = 15


def raw_cpu() -> None:
    for _ in range(N):
        with tf.device("/CPU:0"):
            pass


def ours_cpu() -> None:
    for _ in range(N):
        with tfplace.on_cpu():
            pass


def ours_device() -> None:
    for _ in range(N):
        with tfplace.on_device("/CPU:0"):
            pass


def per_call_us(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / N * 1e6


def main() -> None:
    tf.constant(0.0)  # start the runtime outside the timed region
    for fn in (raw_cpu, ours_cpu, ours_device):
        fn()  # warm up caches
    samples: dict[str, list[float]] = {"raw": [], "on_cpu": [], "on_device": []}
    for _ in range(ROUNDS):  # interleaved, so machine noise hits all alike
        samples["raw"].append(per_call_us(raw_cpu))
        samples["on_cpu"].append(per_call_us(ours_cpu))
        samples["on_device"].append(per_call_us(ours_device))
    raw = statistics.median(samples["raw"])
    print(f"tf.device('/CPU:0')        {raw:7.3f} us per enter+exit (median of {ROUNDS})")
    for name in ("on_cpu", "on_device"):
        med = statistics.median(samples[name])
        print(f"tfplace.{name + '()':<18} {med:7.3f} us   ratio to raw: {med / raw:5.3f}")


if __name__ == "__main__":
    main()
