"""The replica check: the cause catalogue (docs/examples/replicas) flagged with the right cause
and its fixes passing, 1 vs 2 and 1 vs 4 replicas on virtual CPUs; the report; strategies built
again and again in one process (tensorflow#61314).

Every scenario runs in a fresh interpreter (the CPU is split before TensorFlow starts, and a
collapsed collective poisons the process for good); the whole catalogue runs in ONE of them, to
pay TensorFlow's start-up once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import run_fresh

pytestmark = pytest.mark.slow

CATALOGUE = Path(__file__).parents[1] / "docs" / "examples" / "replicas"
SCRIPTS = {
    "a": "a_duplicated_data",
    "b": "b_batch_size",
    "c": "c_loss_average",
    "d": "d_batchnorm",
    "e": "e_random",
    "f": "f_mixed_precision",
    "g": "g_xla",
}


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    """Every case of every cause example, checked 1 vs 2 and 1 vs 4, one process per example.

    One process per example, not one for all: after a check whose input uses
    ``InputReplicationMode.PER_REPLICA`` (cause a), a later ``model.fit`` check in the same
    process saw the one-replica loss on N replicas (an open finding, see the report).
    """
    results: dict[str, Any] = {}
    for cause, name in SCRIPTS.items():
        proc = run_fresh(
            f"""
            import sys
            sys.path.insert(0, {str(CATALOGUE)!r})
            import {name}
            from _common import run
            sys.exit(run({cause!r}, {name}.CASES))
            """,
            timeout=400,
            check=False,
        )
        rows = re.findall(
            r"^RESULT (\w) (\S+) replicas=(\d+) same=(True|False) cause=(\S+)$", proc.stdout, re.M
        )
        results[cause] = [
            {"name": name, "n": int(n), "same": same == "True", "cause": top}
            for _, name, n, same, top in rows
        ]
        results[cause + "-code"] = proc.returncode
        results[cause + "-text"] = proc.stdout + proc.stderr[-2000:]
    return results


def _check_cause(catalogue: dict[str, Any], cause: str) -> None:
    rows = catalogue[cause]
    text = str(catalogue[cause + "-text"])
    assert {r["n"] for r in rows} == {2, 4}, text[-2000:]
    broken = [r for r in rows if r["name"].startswith("broken")]
    fixed = [r for r in rows if r["name"].startswith("fixed")]
    assert broken and fixed, text[-2000:]
    for r in broken:
        assert not r["same"] and r["cause"] == cause, (r, text[-3000:])
    for r in fixed:
        assert r["same"], (r, text[-3000:])
    assert catalogue[cause + "-code"] == 0, text[-2000:]  # the example's own verdict agrees


def test_cause_a_duplicated_data_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "a")


def test_cause_b_global_batch_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "b")


def test_cause_c_loss_averaged_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "c")


def test_cause_d_batchnorm_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "d")


def test_cause_e_random_ops_are_named_and_their_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "e")


def test_cause_f_mixed_precision_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "f")


def test_cause_g_xla_under_mirrored_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "g")


COLLAPSE = """
import sys
import tfplace
tfplace.configure_cpus(threads=None, virtual_devices=4)
import numpy as np
import keras
import tensorflow as tf
from tfplace import _tf

def fit_on(strategy):
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    with strategy.scope():
        net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                                keras.layers.BatchNormalization(synchronized=True),
                                keras.layers.Dense(1)])
        net.compile(optimizer="sgd", loss="mse")
    net.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)

def strategy(n, how):
    devices = [f"/CPU:{i}" for i in range(n)]
    if how == "plain":
        return tf.distribute.MirroredStrategy(devices)
    if how == "collective":
        return _tf.collective_mirrored_strategy(devices)
    return tfplace.pick_strategy("mirrored", devices=devices, cross_device_ops="reduce_to_one")

for how in sys.argv[1:]:
    for n in (2, 4, 2):
        fit_on(strategy(n, how))
        print(how, n, flush=True)
"""


def test_strategies_of_other_sizes_in_one_process_collapse_without_own_keys() -> None:
    """The failure the measures prevent (tensorflow#61314): plain strategies share group 1."""
    proc = run_fresh(f"import sys; sys.argv[1:] = ['plain']\n{COLLAPSE}", check=False)
    assert proc.returncode != 0
    assert proc.stdout.split() == ["plain", "2"]
    assert re.search(r"joining a group with size ?4, but that group has size 2", proc.stderr)


def test_the_strategies_the_check_builds_can_be_built_again_and_again() -> None:
    proc = run_fresh(f"import sys; sys.argv[1:] = ['collective', 'one_device']\n{COLLAPSE}")
    assert proc.stdout.split() == [
        *("collective", "2", "collective", "4", "collective", "2"),
        *("one_device", "2", "one_device", "4", "one_device", "2"),
    ]


def test_repeated_checks_in_one_process_report_and_assert() -> None:
    proc = run_fresh(
        """
        import json
        import tfplace
        tfplace.configure_cpus(threads=None, virtual_devices=4)
        import numpy as np
        import keras
        import tensorflow as tf
        from tfplace.testing import assert_same_training
        x = np.random.default_rng(1).normal(size=(256, 4)).astype("float32")
        y = x.sum(axis=1, keepdims=True)

        def data(strategy):
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

        def build(bn=False):
            layers = [keras.Input((4,)), keras.layers.Dense(8)]
            if bn:
                layers.append(keras.layers.BatchNormalization())
            net = keras.Sequential(layers + [keras.layers.Dense(1)])
            net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            return net

        same = [assert_same_training(build, data, replicas=n, steps=3, reduction=r).same
                for n, r in [(2, "collective"), (4, "collective"), (2, "one_device"),
                             (4, "one_device")]]
        bad = tfplace.compare_replicas(lambda: build(bn=True), data, replicas=2, steps=3)
        try:
            assert_same_training(lambda: build(bn=True), data, replicas=2, steps=3)
            raised = ""
        except AssertionError as err:
            raised = str(err)
        print(json.dumps({"same": same, "report": bad.to_dict(), "text": str(bad),
                          "raised": raised}))
        """
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] == [True, True, True, True]
    report = out["report"]
    assert report["same"] is False and report["first_step"] == 0 and report["replicas"] == 2
    assert report["causes"][0]["key"] == "d"
    assert len(report["losses_one"]) == len(report["rows"]) == 3
    assert report["first_variable"] in report["differing_variables"]
    assert out["text"].startswith("DIFFERENT: 1 and 2 replicas part at step 0")
    assert "[d] BatchNormalization statistics computed per replica" in out["text"]
    assert "BatchNormalization statistics computed per replica" in out["raised"]


def test_splits_the_cpu_itself_and_says_what_to_do_when_too_late() -> None:
    proc = run_fresh(
        """
        import numpy as np
        import keras
        import tensorflow as tf
        import tfplace
        x = np.ones((64, 2), "float32")

        def build():
            net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            net.compile(optimizer="sgd", loss="mse")
            return net

        def data(strategy):
            return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(12)

        r = tfplace.compare_replicas(build, data, replicas=3, steps=2)
        print(r.same, r.devices)
        try:
            tfplace.compare_replicas(build, data, replicas=4)
        except tfplace.AlreadyInitializedError as err:
            print(err)
        """,
        cpu_only=True,
    )
    assert "True ('/CPU:0', '/CPU:1', '/CPU:2')" in proc.stdout
    assert "needs 4 CPU devices" in proc.stdout and "started with 3" in proc.stdout
    assert "tfplace.configure_cpus(virtual_devices=4)" in proc.stdout
