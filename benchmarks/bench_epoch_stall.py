"""The first step of each epoch on 2 replicas: a finite dataset vs prepare_dataset(repeat=True).

A small convnet (MNIST-shaped random data, two Conv2D layers, global batch 64, 1000 examples,
3 epochs, validation each epoch: the shape of Keras's distributed-training guides) trains on
1 replica and on 2 replicas (``configure_cpus(virtual_devices=2)`` then
``pick_strategy("mirrored")``), each configuration in a fresh process, interleaved over
``BENCH_ROUNDS`` rounds; medians are printed side by side with their ratios.

- before: ``prepare_dataset(ds, 32)`` and ``fit(epochs=3)``. With a finite dataset and no
  ``steps_per_epoch``, Keras 3 builds a new distributed iterator at every epoch boundary (in
  ``EpochIterator``: one at the end of an epoch, one more at the start of the next); under a
  strategy each build starts per-device prefetch threads and traces a dozen small functions,
  and on 2 cores it competes with training: the first step of an epoch waits 0.1 s to seconds.
- after: ``prepare_dataset(ds, 32, repeat=True)`` and ``fit(epochs=3, steps_per_epoch=...)``:
  one distributed iterator for the whole ``fit``.

"epoch-2 first step" is on_epoch_begin(1) -> on_train_batch_end(0) of the second epoch: what a
progress bar shows as the first step of epoch 2.

Run: ``python benchmarks/bench_epoch_stall.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

CHILD = """
import json, math, sys, time
import numpy as np
import tfplace
replicas, repeat = int(sys.argv[1]), sys.argv[2] == "after"
if replicas > 1:
    tfplace.configure_cpus(virtual_devices=replicas)
    strategy = tfplace.pick_strategy("mirrored")
else:
    strategy = tfplace.pick_strategy("one_device")
import keras
import tensorflow as tf

rng = np.random.default_rng(0)
x = rng.random((1000, 28, 28, 1), dtype=np.float32)
y = rng.integers(0, 10, 1000)
per_replica = 64 // replicas
train = tfplace.prepare_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)), per_replica, strategy=strategy,
    shuffle=1000, seed=0, repeat=repeat,
)
val = tfplace.prepare_dataset(
    tf.data.Dataset.from_tensor_slices((x[:128], y[:128])), per_replica, strategy=strategy
)
with strategy.scope():
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class FirstStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begin, self.first = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = time.perf_counter()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.first[self.epoch] = time.perf_counter() - self.begin[self.epoch]


timer = FirstStep()
steps = math.ceil(1000 / 64) if repeat else None
start = time.perf_counter()
model.fit(train, epochs=3, steps_per_epoch=steps, validation_data=val, callbacks=[timer],
          verbose=0)
print(json.dumps({"fit": time.perf_counter() - start, "step": timer.first[1]}))
"""

CONFIGS = [(1, "before"), (2, "before"), (1, "after"), (2, "after")]


def run(replicas: int, phase: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(replicas), phase],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
        timeout=600,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["fit"]), float(result["step"])


def main() -> None:
    fit: dict[tuple[int, str], list[float]] = {c: [] for c in CONFIGS}
    step: dict[tuple[int, str], list[float]] = {c: [] for c in CONFIGS}
    for _ in range(ROUNDS):  # interleaved, so a busy moment hits every configuration
        for config in CONFIGS:
            f, s = run(*config)
            fit[config].append(f)
            step[config].append(s)
    med_f = {c: statistics.median(v) for c, v in fit.items()}
    med_s = {c: statistics.median(v) for c, v in step.items()}
    print(f"small convnet, global batch 64, 3 epochs + validation, {os.cpu_count()} cores, ")
    print(f"median of {ROUNDS} interleaved rounds (each round in brackets)")
    print(f"{'':22} {'fit s':>7} {'epoch-2 first step s':>21}")
    for replicas, phase in CONFIGS:
        name = f"{replicas} replica{'s' if replicas > 1 else ''}, {phase}"
        rounds_f = " ".join(f"{v:.2f}" for v in fit[(replicas, phase)])
        rounds_s = " ".join(f"{v:.3f}" for v in step[(replicas, phase)])
        print(
            f"{name:22} {med_f[(replicas, phase)]:7.2f} {med_s[(replicas, phase)]:21.3f}"
            f"   ({rounds_f} | {rounds_s})"
        )
    for phase in ("before", "after"):
        one, two = (1, phase), (2, phase)
        print(
            f"{phase:6}: 2 replicas / 1 replica: fit x{med_f[two] / med_f[one]:.2f}, "
            f"epoch-2 first step x{med_s[two] / med_s[one]:.1f}"
        )
    before, after = (2, "before"), (2, "after")
    print(
        f"2 replicas, after / before: fit x{med_f[after] / med_f[before]:.2f}, "
        f"epoch-2 first step x{med_s[after] / med_s[before]:.2f}"
    )


if __name__ == "__main__":
    main()
