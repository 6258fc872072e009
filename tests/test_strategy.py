"""pick_strategy for real on CPUs: each kind, and Keras model.fit under each."""

from __future__ import annotations

import dataclasses
import logging
from typing import get_args

import numpy as np
import pytest
import tensorflow as tf
from helpers import run_fresh, run_json, run_workers

import tfplace
from tfplace import _tf
from tfplace._decide.strategy import REDUCTIONS, CrossDeviceOps
from tfplace._strategy import build_strategy
from tfplace.testing import fake_inventory

pytestmark = pytest.mark.tf


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


def _built_reduction(strategy: tf.distribute.Strategy) -> str | None:
    """The reduction name of a built strategy, read back from TensorFlow's objects."""
    ops = getattr(strategy.extended, "_cross_device_ops", None)
    if isinstance(strategy, tf.distribute.MirroredStrategy) and ops is not None:
        by_class = {cls: name for name, cls in _tf.MIRRORED_REDUCTIONS.items()}
        return by_class[type(ops).__name__]
    return None


# These tests run on whatever this machine has (CPU box, GPU workstation): each expectation is
# what tfplace.plan() reports for the detected hardware, and the check is that pick_strategy
# builds exactly that.


def test_auto_builds_what_plan_reports(caplog: pytest.LogCaptureFixture) -> None:
    expected = tfplace.plan()
    with caplog.at_level(logging.INFO, logger="tfplace"):
        s = tfplace.pick_strategy()
    assert expected.summary() in caplog.text
    assert s.num_replicas_in_sync == expected.num_replicas_in_sync
    if expected.kind == "default":
        assert s is tf.distribute.get_strategy()
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_one_device() -> None:
    device = tfplace.plan("one_device").devices[0]
    s = tfplace.pick_strategy("one_device")
    assert isinstance(s, tf.distribute.OneDeviceStrategy)
    assert s.extended.worker_devices[0].endswith(device.lstrip("/"))
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_mirrored_on_this_machine() -> None:
    expected = tfplace.plan("mirrored")
    s = tfplace.pick_strategy("mirrored")
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert s.num_replicas_in_sync == expected.num_replicas_in_sync
    inv = tfplace.inventory()  # and what the hardware implies: every GPU, else every CPU device
    assert s.num_replicas_in_sync == (inv.logical_gpu_count or inv.cpu.logical_devices)
    assert _built_reduction(s) == expected.cross_device_ops
    losses = fit_small_model(s)
    assert losses[-1] < losses[0]


def test_mirrored_with_explicit_devices_and_ops() -> None:
    s = tfplace.pick_strategy(devices=["/CPU:0", "/CPU:1"], cross_device_ops="hierarchical_copy")
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert isinstance(s.extended._cross_device_ops, tf.distribute.HierarchicalCopyAllReduce)
    assert [d.rsplit("/", 1)[-1] for d in s.extended.worker_devices] == [
        "device:CPU:0",
        "device:CPU:1",
    ]


def test_the_reduction_mapping_covers_exactly_the_plan_table() -> None:
    assert set(_tf.MIRRORED_REDUCTIONS) == set(REDUCTIONS["mirrored"])
    assert set(_tf.COLLECTIVE_IMPLEMENTATIONS) == set(REDUCTIONS["multi_worker"])
    for name in _tf.MIRRORED_REDUCTIONS.values():
        assert hasattr(tf.distribute, name)
    for name in _tf.COLLECTIVE_IMPLEMENTATIONS.values():
        assert hasattr(tf.distribute.experimental.CommunicationImplementation, name)


@pytest.mark.parametrize("reduction", [None, *get_args(CrossDeviceOps)])
@pytest.mark.parametrize("kind", ["default", "one_device", "mirrored"])
def test_every_kind_and_reduction_is_built_as_planned_or_refused(
    kind: str, reduction: str | None
) -> None:
    """pick_strategy builds exactly what plan() reports, or both refuse the same request."""
    refusal: str | None = None
    try:
        expected = tfplace.plan(kind, cross_device_ops=reduction)
    except ValueError as err:
        refusal = str(err)
    if refusal is not None:
        assert reduction is not None  # only an explicit reduction may be refused
        with pytest.raises(ValueError, match="cross_device_ops") as again:
            tfplace.pick_strategy(kind, cross_device_ops=reduction)
        assert str(again.value) == refusal
        return
    s = tfplace.pick_strategy(kind, cross_device_ops=reduction)
    if reduction is not None:
        assert expected.cross_device_ops == reduction
    else:
        assert expected.cross_device_ops in (*REDUCTIONS[expected.kind], None)
    assert _built_reduction(s) == expected.cross_device_ops
    assert s.num_replicas_in_sync == expected.num_replicas_in_sync
    if kind == "default":
        assert s is tf.distribute.get_strategy()
    else:
        devices = [d.rsplit("device:", 1)[-1] for d in s.extended.worker_devices]
        assert devices == [d.lstrip("/") for d in expected.devices]


def test_a_plan_whose_reduction_does_not_fit_its_kind_is_not_built() -> None:
    bad = dataclasses.replace(tfplace.plan("mirrored"), cross_device_ops="ring")
    with pytest.raises(ValueError, match="cannot be built"):
        build_strategy(bad)
    # a hand-made plan that names no reduction is refused too: nothing is filled in silently
    unnamed = dataclasses.replace(tfplace.plan("mirrored"), cross_device_ops=None)
    with pytest.raises(ValueError, match="takes cross_device_ops in"):
        build_strategy(unnamed)
    one = dataclasses.replace(tfplace.plan("one_device"), cross_device_ops="nccl")
    with pytest.raises(ValueError, match="takes cross_device_ops None"):
        build_strategy(one)


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="auto, default, one_device, mirrored, multi_worker, tpu"):
        tfplace.pick_strategy("horovod")


@pytest.mark.parametrize("timeout", [0, -1, "10", True])
def test_bad_timeout(timeout: object) -> None:
    with pytest.raises(ValueError, match="communication_timeout"):
        tfplace.pick_strategy(communication_timeout=timeout)  # type: ignore[arg-type]


def test_a_synthetic_inventory_drives_the_decision_not_the_real_machine() -> None:
    p = tfplace.plan(inventory=fake_inventory(gpus=2))
    assert (p.kind, p.devices) == ("mirrored", ("/GPU:0", "/GPU:1"))
    real = tfplace.plan()
    assert real.devices == tfplace.plan(inventory=tfplace.inventory()).devices


def test_the_same_request_returns_the_same_strategy_in_one_process() -> None:
    first = tfplace.pick_strategy("mirrored")
    assert tfplace.pick_strategy("mirrored") is first
    assert tfplace.pick_strategy(devices=["/CPU:0", "/CPU:1"]) is first  # plans the same
    other = tfplace.pick_strategy("one_device", devices=["/CPU:1"])
    assert other is not first  # a local strategy of another kind is simply built
    assert tfplace.pick_strategy("one_device", devices=["/CPU:1"]) is other


def test_none_means_auto() -> None:
    s = tfplace.pick_strategy(None)
    assert s.num_replicas_in_sync == tfplace.plan("auto").num_replicas_in_sync
    assert tfplace.plan(None) == tfplace.plan()


def test_every_reason_is_logged_and_a_fallback_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inv = fake_inventory()  # one CPU device: mirrored falls back to one replica
    expected = tfplace.plan("mirrored", inventory=inv)
    assert len(expected.reasons) >= 3 and expected.fallbacks
    with caplog.at_level(logging.INFO, logger="tfplace"):
        tfplace.pick_strategy("mirrored", inventory=inv)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for reason in expected.reasons:
        assert any(reason in line for line in infos), (reason, infos)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"tfplace: pick_strategy('mirrored'): {expected.fallbacks[0]}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfplace"):
        tfplace.pick_strategy("one_device", devices=["/CPU:0"])  # what was asked: no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_multi_worker_without_a_cluster_is_a_logged_fallback() -> None:
    proc = run_fresh(
        """
        import logging, tfplace
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        tfplace.pick_strategy("multi_worker", communication_timeout=30)
        """,
        env={"TF_CONFIG": None, "SLURM_PROCID": None, "SLURM_NTASKS": None},
    )
    assert (
        "WARNING tfplace: pick_strategy('multi_worker'): multi_worker was asked for, but no "
        "cluster is configured: this process trains alone, as a one-worker cluster"
    ) in proc.stderr, proc.stderr
    assert "INFO tfplace:   - gRPC ring collectives" in proc.stderr


TWO_WORKER_REUSE = """
import json, tfplace
from tfplace.errors import AlreadyInitializedError
first = tfplace.pick_strategy(communication_timeout=60)
again = tfplace.pick_strategy(communication_timeout=60)
explicit = tfplace.pick_strategy("multi_worker", communication_timeout=60)
try:
    tfplace.pick_strategy("multi_worker", communication_timeout=30)
    refused = None
except AlreadyInitializedError as err:
    refused = str(err)
print(json.dumps({"kind": type(first).__name__, "same": again is first,
                  "explicit_same": explicit is first, "refused": refused}))
"""


@pytest.mark.slow
def test_a_second_pick_strategy_on_two_workers_returns_the_first_or_says_why_not() -> None:
    results = run_workers(TWO_WORKER_REUSE, extra_env={"CUDA_VISIBLE_DEVICES": "-1"})
    for out in results:
        assert out["kind"] == "KerasMultiWorkerMirroredStrategy"
        assert out["same"] and out["explicit_same"]
        refused = out["refused"]
        assert refused is not None
        assert "already built" in refused and "multi_worker on /CPU:0 (2 replica(s)" in refused
        assert "communication_timeout=60" in refused and "communication_timeout=30" in refused
        assert "call pick_strategy() again with the same arguments" in refused


def test_multi_worker_after_start_is_already_initialized() -> None:
    tf.constant(1.0)  # the runtime of this test process has started
    with pytest.raises(tfplace.AlreadyInitializedError, match=r"configure.*pick_strategy"):
        tfplace.pick_strategy("multi_worker")


@pytest.mark.slow
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
                          "local": len(tfplace.plan("multi_worker").devices),
                          "loss": h.history["loss"][-1]}))
        """,
        env={"TF_CONFIG": None, "SLURM_PROCID": None, "SLURM_NTASKS": None},
    )
    assert out["type"] == "KerasMultiWorkerMirroredStrategy"
    assert out["replicas"] == out["local"]  # one worker: its own devices only


@pytest.mark.slow
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
        cpu_only=True,
    )
    assert out["keras"].startswith("tf_keras")
    assert out["flavour"] == "tf_keras"
    assert out["replicas"] == 2
    assert out["losses"][-1] < out["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("reduction", [None, *get_args(CrossDeviceOps)])
def test_multi_worker_reductions_are_built_as_planned_or_refused(reduction: str | None) -> None:
    """The multi-worker half of the walk: each build needs a fresh runtime, so a child."""
    refusal: str | None = None
    try:
        expected = tfplace.plan("multi_worker", cross_device_ops=reduction)
    except ValueError as err:
        refusal = str(err)
    if refusal is not None:
        assert reduction is not None
        with pytest.raises(ValueError, match="cross_device_ops") as again:
            tfplace.pick_strategy("multi_worker", cross_device_ops=reduction)  # refused first
        assert str(again.value) == refusal
        return
    out = run_json(
        f"""
        import json, tfplace
        s = tfplace.pick_strategy("multi_worker", cross_device_ops={reduction!r})
        impl = s.extended._communication_options.implementation
        print(json.dumps({{"impl": impl.name, "replicas": s.num_replicas_in_sync}}))
        """,
        env={"TF_CONFIG": None},
    )
    assert expected.cross_device_ops is not None
    assert out["impl"] == _tf.COLLECTIVE_IMPLEMENTATIONS[expected.cross_device_ops]
    assert out["replicas"] == expected.num_replicas_in_sync
