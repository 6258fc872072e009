"""Train one Keras 3 model on two Ray Train workers through tfplace.pick_strategy().

Ray's TensorflowTrainer writes TF_CONFIG in each worker; pick_strategy() reads it and builds the
multi-worker strategy. Here Ray runs on this machine only (two CPUs, loopback, no dashboard);
on a real Ray cluster, connect with ray.init(address="auto") instead.
Run: python ray_train.py [OUT_DIR]  (each worker writes what it learned to OUT_DIR).
"""

import json
import os
import sys
import tempfile

import numpy as np

# Ray on this machine only: Ray's processes, and the TF_CONFIG addresses it writes, stay on
# 127.0.0.1 (Ray's local-only mode). Leave this line out on a real Ray cluster.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray
from ray.train import ScalingConfig
from ray.train.tensorflow import TensorflowTrainer


def train_func(config: dict) -> None:
    # Ray sets TF_USE_LEGACY_KERAS=1 in every worker; this code uses Keras 3 (import keras), so
    # drop it before anything loads Keras, and tf.keras, tfplace and the model all mean Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)

    import tfplace

    strategy = tfplace.pick_strategy()  # reads the TF_CONFIG Ray set for this worker

    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    global_batch = 32 * strategy.num_replicas_in_sync
    history = model.fit(x, y, batch_size=global_batch, epochs=3, verbose=0)

    rank = ray.train.get_context().get_world_rank()
    result = {
        "rank": rank,
        "tf_config": os.environ["TF_CONFIG"],
        "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "replicas": strategy.num_replicas_in_sync,
        "local_replicas": len(strategy.extended.worker_devices),
        "losses": history.history["loss"],
        "weights": [w.tolist() for w in model.get_weights()],
    }
    with open(os.path.join(config["out_dir"], f"worker{rank}.json"), "w") as f:
        json.dump(result, f)


def main(out_dir: str) -> bool:
    """Train on two local Ray workers; True when both end with the same weights."""
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        trainer = TensorflowTrainer(
            train_func,
            train_loop_config={"out_dir": out_dir},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        )
        trainer.fit()
    finally:
        ray.shutdown()

    results = []
    for rank in range(2):
        with open(os.path.join(out_dir, f"worker{rank}.json")) as f:
            results.append(json.load(f))
    same = all(r["weights"] == results[0]["weights"] for r in results)
    print(f"{len(results)} workers, {results[0]['replicas']} replicas in sync")
    print("final losses:", [round(r["losses"][-1], 4) for r in results])
    print("workers end with the same weights:", same)
    return same


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.makedirs(sys.argv[1], exist_ok=True)
        ok = main(os.path.abspath(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ok = main(tmp)
    sys.exit(0 if ok else 1)
