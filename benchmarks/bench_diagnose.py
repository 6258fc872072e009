"""diagnose_training's own cost: its whole run against the steps it reports on.

The diagnosis times ``steps`` steps in each of three phases (input alone, step alone on one
cached batch, both together). Everything else it does — warm-up steps, ``fit`` set-up, the
cached batch, putting the weights back — is its overhead. Measured side by side, interleaved,
in one process, for an input-bound and a compute-bound case:

- measured: the time of the timed steps, from the report (``steps * (input + step + both)``);
- diagnosis: the wall time of ``diagnose_training``;
- fit: ``model.fit`` for the same number of steps on the same dataset (what a user would
  otherwise run to get one of the three figures).

Run: ``python benchmarks/bench_diagnose.py``.
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

STEPS = int(os.environ.get("BENCH_STEPS", "20"))
ROUNDS = 5


def _slow(x: np.ndarray) -> np.ndarray:
    time.sleep(0.01)
    return x


def slow_map(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    out = tf.numpy_function(_slow, [x], tf.float32)
    out.set_shape(x.shape)
    return out, y


def dataset(slow: bool) -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(4096, 32)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(64)
    return ds.map(slow_map) if slow else ds


def model(width: int) -> keras.Model:
    m = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(width, "relu"),
            keras.layers.Dense(width, "relu"),
            keras.layers.Dense(1),
        ]
    )
    m.compile(optimizer="adam", loss="mse")
    return m


def main() -> None:
    cases = {
        "input-bound": (model(16), dataset(True)),
        "compute-bound": (model(1024), dataset(False)),
    }
    print(f"{STEPS} timed steps per phase, 2 warm-up; median of {ROUNDS} interleaved rounds")
    for name, (m, ds) in cases.items():
        m.fit(ds.repeat(), steps_per_epoch=3, epochs=1, verbose=0)  # tracing done once
        wall, measured, fit = [], [], []
        verdict = ""
        for _ in range(ROUNDS):
            t = time.perf_counter()
            report = tfplace.diagnose_training(m, ds, steps=STEPS)
            wall.append(time.perf_counter() - t)
            measured.append(STEPS * (report.input_ms + report.step_ms + report.together_ms) / 1000)
            verdict = f"{report.bound}-bound {report.ratio:.1f}x"
            t = time.perf_counter()
            m.fit(ds.repeat(), steps_per_epoch=STEPS, epochs=1, verbose=0)
            fit.append(time.perf_counter() - t)
        w, s, f = (statistics.median(v) for v in (wall, measured, fit))
        print(
            f"{name:<14} measured {s:6.3f} s   diagnosis {w:6.3f} s   overhead (extra/measured) "
            f"{(w - s) / s:4.2f}   diagnosis / one fit of {STEPS} steps {w / f:4.2f}   ({verdict})"
        )


if __name__ == "__main__":
    main()
