"""Cost of one replica check against the plain training it replays, in time and in memory.

Two parts:

- ``time`` (the default before ``--sizes``): seconds per ``compare_replicas`` call for a small
  model and the ratio to the plain training it replays (build + ``model.fit`` of the same
  steps on N replicas), side by side in one run (medians of 3 after a warm-up); and one check
  with the N replicas as 2 local worker processes (``workers=True``).
- ``--sizes small medium large``: MLPs of ~0.4M, ~19M and ~71M parameters, 1 vs 2 virtual
  CPUs, 5 steps of 32 examples. Each measurement runs in a fresh process, so its peak RSS
  (``ru_maxrss``) is its own: the plain training (build + fit on 2 replicas) and the check.
  Printed: peak RSS of each, the check's extra memory in units of the weights (float32), and
  the time ratio.

Run: python benchmarks/bench_replicas.py            (the time part)
     python benchmarks/bench_replicas.py --sizes small medium
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

STEPS = 5
#: name -> (features, hidden width, hidden layers)
SIZES = {"small": (256, 512, 2), "medium": (1024, 2048, 5), "large": (1024, 4096, 5)}


def _setup() -> Any:
    import tfplace

    tfplace.configure_cpus(threads=None, virtual_devices=4)
    return tfplace


def mlp(features: int, width: int, layers: int) -> Any:
    import keras

    stack: list[Any] = [keras.Input((features,))]
    stack += [keras.layers.Dense(width, activation="relu") for _ in range(layers)]
    net = keras.Sequential([*stack, keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return net


def dataset(features: int) -> Any:
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(7).normal(size=(32 * STEPS, features)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(32)


# ------------------------------------------------------------------------ time, small model


def build() -> Any:
    return mlp(8, 16, 1)


def data(strategy: Any) -> Any:
    return dataset(8)


def plain(n: int) -> float:
    tfplace = _setup()
    devices = [f"/CPU:{i}" for i in range(n)]
    strategy = tfplace.pick_strategy("mirrored", devices=devices, cross_device_ops="reduce_to_one")
    began = time.perf_counter()
    with strategy.scope():
        net = build()
    net.fit(data(strategy), epochs=1, steps_per_epoch=STEPS, verbose=0)
    return time.perf_counter() - began


def check(n: int, *, workers: bool = False) -> float:
    tfplace = _setup()
    began = time.perf_counter()
    report = tfplace.compare_replicas(build, data, replicas=n, steps=STEPS, workers=workers)
    assert report.same, report
    return time.perf_counter() - began


def time_part() -> None:
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
    w = statistics.median(check(2, workers=True) for _ in range(3))
    print(f"1 vs 2 local workers, {STEPS} steps: check {w:.2f} s", flush=True)


# ------------------------------------------------------------------------ memory, by size


def child(kind: str, size: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    tfplace = _setup()
    features, width, layers = SIZES[size]
    began = time.perf_counter()
    if kind == "plain":
        strategy = tfplace.pick_strategy(
            "mirrored", devices=["/CPU:0", "/CPU:1"], cross_device_ops="reduce_to_one"
        )
        with strategy.scope():
            net = mlp(features, width, layers)
        params = net.count_params()
        net.fit(dataset(features), epochs=1, steps_per_epoch=STEPS, verbose=0)
    else:
        report = tfplace.compare_replicas(
            lambda: mlp(features, width, layers),
            lambda strategy: dataset(features),
            replicas=2,
            steps=STEPS,
        )
        assert report.same, report
        params = features * width + width + (layers - 1) * (width * width + width) + width + 1
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print("RESULT " + json.dumps({"params": params, "seconds": seconds, "peak": peak}))


def measure(kind: str, size: str) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, size],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    found: dict[str, float] = json.loads(line[7:])
    return found


def sizes_part(sizes: list[str]) -> None:
    print(
        f"{'size':>8} {'params':>8} {'plain GB':>9} {'check GB':>9} {'extra/weights':>13} "
        f"{'plain s':>8} {'check s':>8} {'ratio':>6}"
    )
    for size in sizes:
        p, c = measure("plain", size), measure("check", size)
        weights = p["params"] * 4
        extra = (c["peak"] - p["peak"]) / weights
        print(
            f"{size:>8} {p['params'] / 1e6:>7.1f}M {p['peak'] / 1e9:>9.2f} {c['peak'] / 1e9:>9.2f} "
            f"{extra:>12.1f}x {p['seconds']:>8.1f} {c['seconds']:>8.1f} "
            f"{c['seconds'] / p['seconds']:>5.1f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    elif args.sizes:
        sizes_part(args.sizes)
    else:
        time_part()


if __name__ == "__main__":
    main()
