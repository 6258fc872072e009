"""Training that survives restarts: run it, stop it (SIGTERM, a killed worker), run it again.

Runs alone or as every worker of a cluster (`tfplace launch -n 2 ...`, TF_CONFIG, SLURM). The
backup folder must be readable by every worker (a shared file system) and belong to this run.
"""

import os
import sys
import tempfile

import numpy as np

import tfplace
import tfplace.callbacks

strategy = tfplace.pick_strategy()  # before any model or tensor: multi-worker needs that

import keras  # noqa: E402

out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()

# Deterministic input: same data, same order, same batch size on every start, so that a run
# resumed mid-epoch skips exactly the batches it had already trained on.
rng = np.random.default_rng(0)
x = rng.normal(size=(1024, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)

with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")

callbacks = [
    # Keras: keras.callbacks.BackupAndRestore(...) -- the one-line change:
    tfplace.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"), save_freq=8),
    tfplace.callbacks.ModelCheckpoint(os.path.join(out_dir, "model.keras")),
]
global_batch = 32 * strategy.num_replicas_in_sync
history = model.fit(
    x, y, batch_size=global_batch, epochs=3, shuffle=False, callbacks=callbacks, verbose=0
)

tfplace.barrier()  # the chief has written model.keras: now every worker may read it
restored = keras.models.load_model(os.path.join(out_dir, "model.keras"))
same = all(
    np.array_equal(a, b) for a, b in zip(model.get_weights(), restored.get_weights(), strict=True)
)
role = "chief" if tfplace.is_chief() else "worker"
print(f"{role}: final loss {history.history['loss'][-1]:.4f}, checkpoint loads: {same}")
