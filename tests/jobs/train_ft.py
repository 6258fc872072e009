"""Fault-tolerant Keras fit: BackupAndRestore in a shared folder, a slow step to kill it in.

Usage: python train_ft.py OUT_DIR. EXAMPLES (256) and BATCH (16, the global batch) size the
data. Prints a JSON "start" line when fit begins and a JSON
"done" line with the final weights. STEP_SLEEP (seconds per batch) makes a run long enough
to interrupt; it does not change the arithmetic.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

import tensorflow as tf
import tiny

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import tfplace  # noqa: E402
import tfplace.callbacks  # noqa: E402

strategy = tfplace.pick_strategy(startup_timeout=120)

import keras  # noqa: E402

out_dir = sys.argv[1]
# The global batch stays the same whatever the worker count (each replica takes its share), so a
# run that goes on with fewer workers computes the same thing; it must divide by every count.
examples, global_batch = int(os.environ.get("EXAMPLES", "256")), int(os.environ.get("BATCH", "16"))
x, y = tiny.data(examples)
model = tiny.build(strategy, learning_rate=0.02)

pause = float(os.environ.get("STEP_SLEEP", "0"))
info = {
    "host": socket.gethostname(),
    "procid": os.environ.get("SLURM_PROCID"),
    "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
}


class Progress(keras.callbacks.Callback):  # type: ignore[misc]
    """Counts the batches this process really trains; sleeps after each."""

    batches = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        print(json.dumps({"event": "start", "time": time.time(), **info}), flush=True)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if logs and "loss" in logs:  # a batch BackupAndRestore skips on resuming has no loss
            Progress.batches += 1
        if pause:
            time.sleep(pause)


backup = tfplace.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"), save_freq=4)
try:
    history = model.fit(
        x,
        y,
        batch_size=global_batch,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[backup, Progress()],
    )
except BaseException as err:  # e.g. a peer lost: note when, then fail as before
    print(
        json.dumps({"event": "error", "time": time.time(), "error": str(err)[-400:], **info}),
        flush=True,
    )
    raise
print(
    json.dumps(
        {
            "event": "done",
            "time": time.time(),
            "batches": Progress.batches,
            "step_sleep": pause,
            "weights": tiny.weights(model),
            **info,
        }
    ),
    flush=True,
)
