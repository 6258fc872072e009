"""The cost of a backup per epoch: ``fit`` with ``tfplace.callbacks.BackupAndRestore`` as a
ratio to ``fit`` without it, one process, on the CPU.

Each round trains the same model twice in one fresh process, without and then with a backup
after every epoch (and once more with ``save_freq`` batches), alternating the order between
rounds so that warm-up favours neither. A backup writes the weights and the optimizer state
(about 3x the parameters: Adam's two moments) to a temporary folder and renames it.

Run: ``python benchmarks/bench_fault_tolerance.py`` (``BENCH_ROUNDS`` sets the rounds).
The time from a worker's death to training again after a restart is measured by
``benchmarks/bench_restart.py`` (``launch(max_restarts=1)``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

TRAIN = """
import json, sys, tempfile, time
import numpy as np
import tfplace.callbacks
import keras
order = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(16384, 64)).astype("float32")
y = x[:, :1] * 2.0
def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                          keras.layers.Dense(512, activation="relu"), keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    return m
def timed(callbacks):
    m = model()
    m.fit(x, y, batch_size=256, epochs=1, verbose=0)  # compile and warm up outside the timing
    start = time.perf_counter()
    m.fit(x, y, batch_size=256, epochs=4, verbose=0, callbacks=callbacks)
    return (time.perf_counter() - start) / 4, m.count_params()
results = {}
for name in (["plain", "epoch", "steps"] if order == "a" else ["steps", "epoch", "plain"]):
    folder = tempfile.mkdtemp()
    callbacks = {
        "plain": [],
        "epoch": [tfplace.callbacks.BackupAndRestore(folder + "/b")],
        "steps": [tfplace.callbacks.BackupAndRestore(folder + "/b", save_freq=16)],
    }[name]
    results[name], params = timed(callbacks)
results["params"] = params
print(json.dumps(results))
"""


def main() -> None:
    rounds = []
    for i in range(ROUNDS):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(TRAIN), "a" if i % 2 == 0 else "b"],
            capture_output=True,
            text=True,
            env=ENV,
            check=True,
        )
        rounds.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    plain = statistics.median(r["plain"] for r in rounds)
    epoch = statistics.median(r["epoch"] for r in rounds)
    steps = statistics.median(r["steps"] for r in rounds)
    print(f"model: {rounds[0]['params']} parameters, 64 steps per epoch, {ROUNDS} rounds (median)")
    print(f"epoch without backup:           {plain * 1000:8.1f} ms")
    print(f"epoch with a backup per epoch:  {epoch * 1000:8.1f} ms  ratio {epoch / plain:.3f}")
    print(f"epoch with a backup / 16 steps: {steps * 1000:8.1f} ms  ratio {steps / plain:.3f}")


if __name__ == "__main__":
    main()
