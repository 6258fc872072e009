"""Ray Train with a worker range across simulated hosts: a lost node, and the group goes on.

``python ray_elastic.py OUT_DIR`` asks ``TensorflowTrainer`` for 2 to 3 workers
(``ScalingConfig(num_workers=(2, 3))``, Ray Train's elastic form) with a few restarts allowed.
Each worker trains the tiny job through ``tfplace.pick_strategy()`` from the ``TF_CONFIG`` Ray
writes, at a fixed global batch of 24 (whole shares on 2 or 3 workers), with a
``tfplace.callbacks.BackupAndRestore`` in ``OUT_DIR/backup`` (storage every host sees). The
first attempt's steps are slowed so that a node can be lost mid-training; every attempt writes
``OUT_DIR/start-<attempt>-<rank>.json`` when its fit begins and the last one
``OUT_DIR/done-<rank>.json``. ``--reference`` trains the same alone, without Ray.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

#: This folder: the job library ``tiny.py`` lies here, on the file system every node shares.
JOBS = os.path.dirname(os.path.abspath(__file__))
GLOBAL_BATCH = 24
EXAMPLES = 240


def train_func(config: dict[str, Any]) -> None:
    """One worker: resume from the shared backup if there is one, train, write the result."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)  # Ray sets it; this code uses Keras 3
    sys.path.insert(0, config["jobs"])
    import keras
    import tiny

    import tfplace
    import tfplace.callbacks

    out_dir = config["out_dir"]
    if config.get("reference"):
        rank, size = 0, 1
    else:
        import ray.train

        context = ray.train.get_context()
        rank, size = context.get_world_rank(), context.get_world_size()
    # read before the workers meet in pick_strategy, so that no worker of this attempt has
    # written its start file yet
    attempt = len([f for f in os.listdir(out_dir) if f.startswith("start-") and "-0." in f])
    resumed = os.path.isdir(os.path.join(out_dir, "backup"))
    strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
    pause = 0.0 if resumed or config.get("reference") else float(config["step_sleep"])
    x, y = tiny.data(EXAMPLES)
    model = tiny.build(strategy, learning_rate=0.02)
    trained = [0]

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            name = f"start-{attempt}-{rank}.json"
            with open(os.path.join(out_dir, name), "w") as f:
                json.dump({"size": size, "host": socket.gethostname(), "time": time.time()}, f)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if logs and "loss" in logs:  # batches a resumed run skips have no loss
                trained[0] += 1
            time.sleep(pause)

    backup = tfplace.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"), save_freq=4)
    model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[backup, Progress()],
    )
    result = {
        "rank": rank,
        "size": size,
        "attempt": attempt,
        "host": socket.gethostname(),
        "batches": trained[0],
        "replicas": strategy.num_replicas_in_sync,
        "weights": tiny.weights(model),
    }
    with open(os.path.join(out_dir, config.get("name") or f"done-{rank}.json"), "w") as f:
        json.dump(result, f)


def main(out_dir: str, step_sleep: str) -> None:
    """Run ``train_func`` on 2 to 3 Ray workers of the cluster at RAY_ADDRESS."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    ray.init(address=os.environ["RAY_ADDRESS"])
    try:
        trainer = TensorflowTrainer(
            train_func,
            train_loop_config={"out_dir": out_dir, "jobs": JOBS, "step_sleep": step_sleep},
            scaling_config=ScalingConfig(
                num_workers=(2, 3),  # type: ignore[arg-type]  # Ray 2.60 takes a range
                resources_per_worker={"CPU": 1},
                placement_strategy="STRICT_SPREAD",
            ),
            run_config=RunConfig(
                storage_path=os.path.join(out_dir, "ray_results"),
                failure_config=FailureConfig(max_failures=3),
            ),
        )
        trainer.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    target = os.path.abspath(sys.argv[1])
    if "--reference" in sys.argv[2:]:
        train_func({"out_dir": target, "jobs": JOBS, "reference": True, "name": "reference.json"})
    else:
        main(target, os.environ.get("STEP_SLEEP", "0.3"))
