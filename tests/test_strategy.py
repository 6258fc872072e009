"""pick_strategy for real on CPUs: each kind, and Keras model.fit under each."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from helpers import run_json

import tfplace
from tfplace.testing import fake_inventory


def fit_small_model(strategy: tf.distribute.Strategy) -> list[float]:
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    losses: list[float] = history.history["loss"]
    return losses


def test_default_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tfplace"):
        s = tfplace.pick_strategy()
    assert s is tf.distribute.get_strategy()
    assert "default on /CPU:0" in caplog.text
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


def test_one_device() -> None:
    s = tfplace.pick_strategy("one_device")
    assert isinstance(s, tf.distribute.OneDeviceStrategy)
    assert s.extended.worker_devices[0].endswith("CPU:0")
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


def test_mirrored_over_virtual_cpus() -> None:
    s = tfplace.pick_strategy("mirrored")
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert s.num_replicas_in_sync == 2
    assert isinstance(s.extended._cross_device_ops, tf.distribute.ReductionToOneDevice)
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


def test_mirrored_with_explicit_devices_and_ops() -> None:
    s = tfplace.pick_strategy(devices=["/CPU:0", "/CPU:1"], cross_device_ops="hierarchical_copy")
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert isinstance(s.extended._cross_device_ops, tf.distribute.HierarchicalCopyAllReduce)


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="auto, default, one_device, mirrored, multi_worker, tpu"):
        tfplace.pick_strategy("horovod")


@pytest.mark.parametrize("timeout", [0, -1, "10", True])
def test_bad_timeout(timeout: object) -> None:
    with pytest.raises(ValueError, match="communication_timeout"):
        tfplace.pick_strategy(communication_timeout=timeout)  # type: ignore[arg-type]


def test_synthetic_inventory_decides_but_real_devices_run() -> None:
    # A fake 2-GPU inventory asks for /GPU:0 and /GPU:1, which this machine cannot build:
    # decisions come from the inventory, construction from TensorFlow.
    p = tfplace.plan(inventory=fake_inventory(gpus=2))
    assert p.devices == ("/GPU:0", "/GPU:1")


def test_multi_worker_after_start_is_already_initialized() -> None:
    tf.constant(1.0)  # the runtime of this test process has started
    with pytest.raises(tfplace.AlreadyInitializedError, match=r"configure.*pick_strategy"):
        tfplace.pick_strategy("multi_worker")


def test_multi_worker_without_cluster_trains_alone_in_a_fresh_process() -> None:
    out = run_json(
        """
        import json, numpy as np, keras, tfplace
        s = tfplace.pick_strategy("multi_worker", communication_timeout=30)
        x = np.ones((32, 2), "float32"); y = np.ones((32, 1), "float32")
        with s.scope():
            m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            m.compile("sgd", "mse")
        h = m.fit(x, y, batch_size=8, epochs=1, verbose=0)
        print(json.dumps({"type": type(s).__name__, "replicas": s.num_replicas_in_sync,
                          "loss": h.history["loss"][-1]}))
        """,
        env={"TF_CONFIG": None},
    )
    assert out["type"] == "CollectiveAllReduceStrategy" or "MultiWorker" in out["type"]
    assert out["replicas"] == 1


def test_tf_keras_fit_under_mirrored_in_a_fresh_process() -> None:
    pytest.importorskip("tf_keras")
    out = run_json(
        """
        import json, numpy as np, tfplace
        tfplace.configure_cpus(virtual_devices=2)
        import tensorflow as tf
        s = tfplace.pick_strategy("mirrored")
        x = np.ones((32, 2), "float32"); y = np.ones((32, 1), "float32")
        with s.scope():
            m = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
            m.compile("sgd", "mse")
        h = m.fit(x, y, batch_size=8, epochs=2, verbose=0)
        print(json.dumps({"keras": tf.keras.__name__, "replicas": s.num_replicas_in_sync,
                          "flavour": tfplace.inventory().keras.flavour,
                          "losses": h.history["loss"]}))
        """,
        env={"TF_USE_LEGACY_KERAS": "1"},
    )
    assert out["keras"].startswith("tf_keras")
    assert out["flavour"] == "tf_keras"
    assert out["replicas"] == 2
    assert out["losses"][-1] < out["losses"][0]
