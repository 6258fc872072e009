"""A multi-worker Keras fit for the multi-host tests: prints one JSON line per task."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import tfplace  # noqa: E402

strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
predicted = tfplace.parse_slurm(os.environ)  # what tfplace reads from srun's variables

import keras  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(96, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
resolver = strategy.cluster_resolver
print(
    json.dumps(
        {
            "host": socket.gethostname(),
            "procid": os.environ.get("SLURM_PROCID"),
            "kind": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync,
            "cluster": resolver.cluster_spec().as_dict() if resolver is not None else {},
            "predicted": list(predicted.addresses("worker")) if predicted is not None else None,
            "task_index": predicted.task_index if predicted is not None else None,
            "loss": history.history["loss"],
            "weights": [w.ravel().tolist() for w in model.get_weights()],
        }
    ),
    flush=True,
)
