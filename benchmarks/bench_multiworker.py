"""Training throughput of one process vs two local workers at the same global batch, and the
launcher's own start-up cost. Side by side in one run; prints ratios.

Run: ``python benchmarks/bench_multiworker.py``.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from tfplace._launch import launch

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
STEPS = 200
GLOBAL_BATCH = 256

TRAIN = f"""
import json, os, time
import numpy as np
import tfplace
strategy = tfplace.pick_strategy()
import keras
x = np.random.default_rng(0).normal(size=({STEPS} * {GLOBAL_BATCH}, 64)).astype("float32")
y = x[:, :1] * 2.0
with strategy.scope():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, "relu"),
                              keras.layers.Dense(256, "relu"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
model.fit(x[: 20 * {GLOBAL_BATCH}], y[: 20 * {GLOBAL_BATCH}], batch_size={GLOBAL_BATCH},
          epochs=1, verbose=0)  # warm-up: tracing and the first collectives
t = time.perf_counter()
model.fit(x, y, batch_size={GLOBAL_BATCH}, epochs=1, verbose=0)
print("RESULT", json.dumps({{"steps_per_second": {STEPS} / (time.perf_counter() - t)}}))
"""


def one_process(path: str) -> float:
    out = subprocess.run(
        [sys.executable, path], capture_output=True, text=True, env=ENV, check=True
    ).stdout
    return float(json.loads(out.split("RESULT", 1)[1])["steps_per_second"])


def two_workers(path: str) -> float:
    out = io.StringIO()
    rates: list[float] = []

    def on_line(_worker: int, line: str) -> None:
        if line.startswith("RESULT "):
            rates.append(float(json.loads(line.removeprefix("RESULT "))["steps_per_second"]))

    result = launch([sys.executable, path], 2, env=ENV, out=out, on_line=on_line)
    assert result.returncode == 0 and len(rates) == 2, out.getvalue()
    return min(rates)  # synchronous training: the slowest worker sets the pace


def launcher_overhead(noop: str) -> tuple[float, float]:
    direct, launched = [], []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, noop], check=True)
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        launch([sys.executable, noop], 1, out=io.StringIO())
        launched.append(time.perf_counter() - t)
    return statistics.median(direct), statistics.median(launched)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(TRAIN))
        noop = os.path.join(tmp, "noop.py")
        with open(noop, "w") as f:
            f.write("pass\n")
        single, multi = [], []
        for _ in range(2):  # interleaved
            single.append(one_process(path))
            multi.append(two_workers(path))
        d, lch = launcher_overhead(noop)
    s, m = statistics.median(single), statistics.median(multi)
    print(f"global batch {GLOBAL_BATCH}, {STEPS} steps, MLP 64-256-256-1, {os.cpu_count()} cores")
    print(f"1 process            {s:7.1f} steps/s")
    print(f"2 local workers      {m:7.1f} steps/s   ratio to 1 process: {m / s:5.2f}")
    print(f"python noop.py       {d * 1000:7.1f} ms")
    print(f"tfplace launch -n 1  {lch * 1000:7.1f} ms   overhead: {(lch - d) * 1000:5.1f} ms")


if __name__ == "__main__":
    main()
