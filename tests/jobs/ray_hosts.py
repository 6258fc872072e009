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

#: This folder: the job library ``tiny.py`` lies here, on the file system every node shares.
JOBS = os.path.dirname(os.path.abspath(__file__))


def train_func(config: dict[str, Any]) -> None:
    """Train a small model through ``tfplace.pick_strategy()``; write what it learned."""
    # Ray sets TF_USE_LEGACY_KERAS=1 in every worker; this code uses Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    sys.path.insert(0, config["jobs"])  # this folder, where every node finds tiny.py
    import tiny

    import tfplace

    strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
    model, history = tiny.fit(strategy)
    rank = int(config.get("rank", -1))
    if rank < 0:  # under Ray: its rank for this worker
        import ray.train

        rank = ray.train.get_context().get_world_rank()
    result = {
        "rank": rank,
        "host": socket.gethostname(),
        "tf_config": os.environ.get("TF_CONFIG", ""),
        **tiny.report(strategy, model, history),
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
            train_loop_config={"out_dir": out_dir, "jobs": JOBS},
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
        train_func({"out_dir": target, "rank": 0, "name": "reference.json", "jobs": JOBS})
    else:
        main(target)
