"""Ray Train across simulated hosts: one TensorflowTrainer worker per host, through tfplace.

Usage: ``python ray_hosts.py OUT_DIR`` connects to the Ray cluster at ``RAY_ADDRESS``, trains on
two workers that Ray must put on two different nodes (``STRICT_SPREAD``), and each worker writes
``OUT_DIR/worker<rank>.json``. ``python ray_hosts.py OUT_DIR --reference`` runs the same
training function in this process, without Ray or a cluster, and writes
``OUT_DIR/reference.json``: the result the workers must equal.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any


def train_func(config: dict[str, Any]) -> None:
    """Train a small model through ``tfplace.pick_strategy()``; write what it learned."""
    # Ray sets TF_USE_LEGACY_KERAS=1 in every worker; this code uses Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import numpy as np

    import tfplace

    strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)

    import keras

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
    rank = int(config.get("rank", -1))
    if rank < 0:  # under Ray: its rank for this worker
        import ray.train

        rank = ray.train.get_context().get_world_rank()
    result = {
        "rank": rank,
        "host": socket.gethostname(),
        "tf_config": os.environ.get("TF_CONFIG", ""),
        "kind": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "loss": history.history["loss"],
        "weights": [w.ravel().tolist() for w in model.get_weights()],
    }
    name = config.get("name") or f"worker{rank}.json"
    with open(os.path.join(config["out_dir"], name), "w") as f:
        json.dump(result, f)


def main(out_dir: str) -> None:
    """Run ``train_func`` on two Ray workers, one per node of the cluster at RAY_ADDRESS."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    ray.init(address=os.environ["RAY_ADDRESS"])
    try:
        trainer = TensorflowTrainer(
            train_func,
            train_loop_config={"out_dir": out_dir},
            scaling_config=ScalingConfig(
                num_workers=2,
                resources_per_worker={"CPU": 1},
                placement_strategy="STRICT_SPREAD",  # never two workers on one node
            ),
            # Ray Train's own files go to storage every node sees (here the shared file system).
            run_config=RunConfig(storage_path=os.path.join(out_dir, "ray_results")),
        )
        trainer.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    target = os.path.abspath(sys.argv[1])
    if "--reference" in sys.argv[2:]:
        train_func({"out_dir": target, "rank": 0, "name": "reference.json"})
    else:
        main(target)
