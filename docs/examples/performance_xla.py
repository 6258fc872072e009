"""Graph mode with and without XLA, per placement, next to what jit_compile="auto" does."""

import numpy as np

import tfplace

tfplace.configure_cpus(virtual_devices=2)  # so a CPU-only machine has a mirrored placement too

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

x = np.random.default_rng(0).normal(size=(2048, 32)).astype("float32")
y = x.sum(axis=1, keepdims=True)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)


def build_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(256, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


# Every placement here, each with XLA off and on, in float32 and in the policy
# configure_precision() would choose (the same policy on a CPU: measured once).
report = tfplace.autotune(
    build_model, ds, jit_compile=(False, True), precision=("float32", "auto"), steps=20
)
print(report.to_text())
for placement, speedup in report.xla_speedups().items():
    print(f"XLA on {placement}: {speedup:.2f}x the steps/s without it")

best = report.best
print("best:", best.name, best.compile_kwargs, best.precision)
with report.strategy.scope():  # train with the winner's settings
    tfplace.configure_precision(best.precision)
    model = build_model()
    model.compile(optimizer="adam", loss="mse", **best.compile_kwargs)
model.fit(ds, epochs=1, verbose=0)
tfplace.configure_precision("float32")
