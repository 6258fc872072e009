"""Training throughput of one process vs two local workers at the same global batch, and the
launcher's own start-up cost. Side by side in one run; prints ratios.

Two workers run three ways: without core shares (``TF_NUM_INTRAOP_THREADS=0`` and
``TF_NUM_INTEROP_THREADS=0``: TensorFlow's defaults, every worker sizes its pools to the whole
machine), with the launcher's shares (the default), and with the shares plus each worker pinned
to its own cores (``os.sched_setaffinity`` at the top of the script), to weigh affinity too.

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

from tfplace.cluster._launch import launch

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
STEPS = 200
GLOBAL_BATCH = 256
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

TRAIN = f"""
import json, os, time
if os.environ.get("BENCH_PIN"):  # pin before TensorFlow starts its threads
    cores = sorted(os.sched_getaffinity(0))
    n = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
    share = max(1, len(cores) // n)
    i = int(os.environ["TFPLACE_WORKER_INDEX"])
    os.sched_setaffinity(0, cores[(i * share) % len(cores):][:share])
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


NO_SHARES = {"TF_NUM_INTRAOP_THREADS": "0", "TF_NUM_INTEROP_THREADS": "0"}
VARIANTS = {
    "2 workers, no shares": NO_SHARES,
    "2 workers, shares": {},
    "2 workers, shares+pin": {"BENCH_PIN": "1"},
}


def two_workers(path: str, extra: dict[str, str]) -> float:
    out = io.StringIO()
    rates: list[float] = []

    def on_line(_worker: int, line: str) -> None:
        if line.startswith("RESULT "):
            rates.append(float(json.loads(line.removeprefix("RESULT "))["steps_per_second"]))

    result = launch([sys.executable, path], 2, env={**ENV, **extra}, out=out, on_line=on_line)
    assert result.returncode == 0 and len(rates) == 2, out.getvalue()
    return min(rates)  # synchronous training: the slowest worker sets the pace


def launcher_overhead(noop: str) -> tuple[float, float, float]:
    direct, private, shared = [], [], []
    for _ in range(7):
        t = time.perf_counter()
        subprocess.run([sys.executable, noop], check=True)
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        launch([sys.executable, noop], 1, out=io.StringIO())
        private.append(time.perf_counter() - t)
        t = time.perf_counter()
        launch([sys.executable, noop], 1, out=io.StringIO(), network="host")
        shared.append(time.perf_counter() - t)
    return statistics.median(direct), statistics.median(private), statistics.median(shared)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(TRAIN))
        noop = os.path.join(tmp, "noop.py")
        with open(noop, "w") as f:
            f.write("pass\n")
        rates: dict[str, list[float]] = {"1 process": [], **{k: [] for k in VARIANTS}}
        for _ in range(ROUNDS):  # interleaved
            rates["1 process"].append(one_process(path))
            for name, extra in VARIANTS.items():
                rates[name].append(two_workers(path, extra))
        d, private, shared = launcher_overhead(noop)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base, unshared = med["1 process"], med["2 workers, no shares"]
    print(f"global batch {GLOBAL_BATCH}, {STEPS} steps, MLP 64-256-256-1, {os.cpu_count()} cores,")
    print(f"median of {ROUNDS} interleaved rounds (steps/s of the slowest worker)")
    print(f"{'':24} {'steps/s':>8} {'/1 process':>11} {'/no shares':>11}   (each round)")
    for name, rate in med.items():
        rounds = " ".join(f"{r:.0f}" for r in rates[name])
        print(f"{name:24} {rate:8.1f} {rate / base:11.2f} {rate / unshared:11.2f}   ({rounds})")
    print(f"python noop.py                          {d * 1000:7.1f} ms")
    print(
        f"launch -n 1 noop.py (private network)   {private * 1000:7.1f} ms   "
        f"overhead: {(private - d) * 1000:5.1f} ms"
    )
    print(
        f"launch -n 1 noop.py (network='host')    {shared * 1000:7.1f} ms   "
        f"overhead: {(shared - d) * 1000:5.1f} ms"
    )


if __name__ == "__main__":
    main()
