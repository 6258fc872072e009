"""A multi-worker Keras fit of the tiny job for the multi-host tests: one JSON line per task."""

from __future__ import annotations

import json
import os
import socket

import tensorflow as tf
import tiny

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import tfplace  # noqa: E402

strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
predicted = tfplace.parse_slurm(os.environ)  # what tfplace reads from srun's variables

model, history = tiny.fit(strategy)
resolver = strategy.cluster_resolver
print(
    json.dumps(
        {
            "host": socket.gethostname(),
            "procid": os.environ.get("SLURM_PROCID"),
            **tiny.report(strategy, model, history),
            "cluster": resolver.cluster_spec().as_dict() if resolver is not None else {},
            "predicted": list(predicted.addresses("worker")) if predicted is not None else None,
            "task_index": predicted.task_index if predicted is not None else None,
        }
    ),
    flush=True,
)
