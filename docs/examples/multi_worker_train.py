"""Train one Keras model on every worker of a cluster (run with `tfplace launch -n 2 ...`).

The same file runs alone (one process), under `tfplace launch` (local workers), on machines
with TF_CONFIG set, or in a multi-task SLURM step.
"""

import os
import sys
import tempfile

import numpy as np

import tfplace

strategy = tfplace.pick_strategy()  # before any model or tensor: multi-worker needs that

import keras  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(1024, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)

with strategy.scope():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")

global_batch = 32 * strategy.num_replicas_in_sync
history = model.fit(x, y, batch_size=global_batch, epochs=3, verbose=0)

# Every worker saves (the strategy needs all of them); only the chief writes the real file.
out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
os.makedirs(out_dir, exist_ok=True)  # e.g. /tmp/out on a fresh machine
with tfplace.worker_save_path(os.path.join(out_dir, "model.keras")) as path:
    model.save(path)

role = "chief" if tfplace.is_chief() else "worker"
loss = history.history["loss"][-1]
print(f"{role}: {strategy.num_replicas_in_sync} replicas, final loss {loss:.4f}")
