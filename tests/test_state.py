"""Concurrency and state: configuration applies once, nothing changes behind the user's back."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from fakes import FakeGPUMachine
from helpers import run_json

import tfplace
from tfplace.testing import fake_inventory, use_inventory

pytestmark = pytest.mark.tf


@pytest.mark.slow
def test_configure_cpus_from_eight_threads_at_start_up_applies_once() -> None:
    out = run_json(
        """
        import json, threading, tfplace
        barrier = threading.Barrier(8)
        results = []
        def go():
            barrier.wait()
            results.append(tfplace.configure_cpus(2, inter_op_threads=1, virtual_devices=3))
        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        import tensorflow as tf
        print(json.dumps({
            "changed": sum(r.changed for r in results),
            "configs": sorted({(r.intra_op_threads, r.inter_op_threads, r.virtual_devices)
                               for r in results}),
            "logical": len(tf.config.list_logical_devices("CPU")),
        }))
        """
    )
    assert out["changed"] == 1
    assert out["configs"] == [[2, 1, 3]]
    assert out["logical"] == 3


def test_configure_gpus_from_eight_threads_applies_once() -> None:
    machine = FakeGPUMachine(n=4)
    barrier = threading.Barrier(8)
    results: list[tfplace.GPUConfig] = []

    def go() -> None:
        barrier.wait()
        results.append(tfplace.configure_gpus(memory_growth=True, backend=machine))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert machine.calls == [f"growth {i} True" for i in range(4)]
    assert sum(r.changed for r in results) == 1


def snapshot() -> dict[str, Any]:
    return {
        "env": dict(os.environ),
        "policy": keras.config.dtype_policy().name,
        "soft": tf.config.get_soft_device_placement(),
        "eager": tf.config.functions_run_eagerly(),
        "threads": (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ),
        "cpus": len(tf.config.list_logical_devices("CPU")),
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "visible_gpus": [d.name for d in tf.config.get_visible_devices("GPU")],
        "gpu_growth": [
            tf.config.experimental.get_memory_growth(d)
            for d in tf.config.list_physical_devices("GPU")
        ],
        "strategy": tf.distribute.get_strategy(),
        "signals": (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)),
        "device": tf.constant(0.0).device,
        "cwd": os.getcwd(),
    }


@pytest.mark.slow
def test_public_functions_leave_no_state_behind(tmp_path: Path) -> None:
    before = snapshot()
    inv = tfplace.inventory()
    tfplace.plan()
    tfplace.parse_tf_config(
        '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'
    )
    tfplace.tf_configs(["h1", "h2"])
    from tfplace.doctor import diagnose

    diagnose(inv, run_verify=True)
    with use_inventory(fake_inventory(gpus=8)):
        tfplace.plan()
    with tfplace.on_cpu(1):
        tf.ones(())
    tfplace.on_cpu(1)(lambda: tf.ones(()))()
    for kind in ("default", "one_device", "mirrored"):
        strategy = tfplace.pick_strategy(kind)
        pairs = tf.data.Dataset.range(8).map(lambda x: (tf.cast([x], "float32"),) * 2)
        ds = tfplace.prepare_dataset(pairs, 2, strategy=strategy)
        with strategy.scope():
            model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
            model.compile("sgd", "mse")
        model.fit(ds, verbose=0)
    tfplace.global_batch_size(4)
    tfplace.is_chief()
    with tfplace.worker_save_path(tmp_path / "m.keras") as path:
        Path(path).write_text("x")
    tfplace.memory_info("CPU:0")
    with tfplace.track_memory("CPU:0"):
        tf.ones(())
    tfplace.find_batch_size(start=4)(lambda batch_size: batch_size)()
    # The CPU split in force (the plugin's, 2 by default), asked for again: a no-op.
    tfplace.configure_cpus(threads=None, virtual_devices=before["cpus"])
    in_force = tfplace.configure_gpus()  # no arguments: reports, changes nothing
    assert not in_force.changed
    # The settings in force again (growth where the session gave it, nothing without a GPU).
    again = tfplace.configure_gpus(memory_growth=in_force.memory_growth)
    assert not again.changed
    assert again.visible == in_force.visible
    with open(os.devnull, "w") as devnull:
        result = tfplace.launch([sys.executable, "-c", "print('hi')"], 2, out=devnull)
    assert result.returncode == 0
    np.testing.assert_equal(tf.ones(()).numpy(), 1.0)
    after = snapshot()
    assert after == before
