"""The command line, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHILD_GPU_ENV, CPU_ONLY_ENV, QUIET_ENV

import tfplace

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tfplace ARGS`` in a fresh process that allocates GPU memory on demand."""
    full = {**os.environ, **QUIET_ENV, **CHILD_GPU_ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tfplace", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_report_text() -> None:
    # Pinned to the CPU, so the strategy line is the same on a GPU host.
    proc = run_cli(env=CPU_ONLY_ENV)
    assert proc.returncode == (1 if "[error]" in proc.stdout else 0), proc.stderr
    tf = tfplace.inventory().tensorflow
    assert tf is not None, "the report test needs TensorFlow"
    build = "CUDA build" if tf.is_cuda_build else "ROCm build" if tf.is_rocm_build else "CPU-only"
    assert f"TensorFlow    {tf.version} ({build}" in proc.stdout
    assert "Strategy      default on /CPU:0" in proc.stdout


@pytest.mark.slow
def test_report_json_names_cuda_visible_devices() -> None:
    proc = run_cli("doctor", "--json", env=CPU_ONLY_ENV)
    data = json.loads(proc.stdout)
    assert proc.returncode == data["exit_code"], proc.stderr
    assert data["inventory"]["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert any("CUDA_VISIBLE_DEVICES='-1'" in r for r in data["plan"]["reasons"])


@pytest.mark.slow
def test_report_with_bad_tf_config_explains_instead_of_crashing() -> None:
    proc = run_cli(env={"TF_CONFIG": "{broken"})
    assert proc.returncode == 1  # an error finding (F3)
    assert "cannot decide: TF_CONFIG: JSON" in proc.stdout
    data = json.loads(run_cli("--json", env={"TF_CONFIG": "{broken"}).stdout)
    assert data["plan"] is None and data["plan_error"].startswith("TF_CONFIG: JSON")


def test_an_unknown_precision_policy_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "doctor", "--precision", "bogus"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "--precision" in proc.stderr and "mixed_float16" in proc.stderr


def test_a_bad_grace_is_a_usage_error_not_a_traceback() -> None:
    for grace in ("-1", "nan"):
        proc = subprocess.run(
            [sys.executable, "-m", "tfplace", "launch", "-n", "1", "--grace", grace, "x.py"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert "--grace must be a finite number" in proc.stderr
        assert "Traceback" not in proc.stderr


CHECK_SCRIPT = """
import numpy as np
import keras
import tensorflow as tf

BATCHNORM = {batchnorm}
x = np.random.default_rng(1).normal(size=(256, 4)).astype("float32")


def build():
    layers = [keras.Input((4,)), keras.layers.Dense(8)]
    if BATCHNORM:
        layers.append(keras.layers.BatchNormalization())
    model = keras.Sequential([*layers, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy):
    return tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1, keepdims=True))).batch(32)


if __name__ == "__main__":
    raise SystemExit("the check imports this script; its own training must not run")
"""


@pytest.mark.slow
def test_check_runs_a_scripts_replica_check_and_sets_the_exit_code(tmp_path: Path) -> None:
    broken = tmp_path / "train_bn.py"
    broken.write_text(CHECK_SCRIPT.format(batchnorm=True))
    proc = run_cli("check", "-n", "2", "--steps", "3", str(broken), env=CPU_ONLY_ENV)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("DIFFERENT: 1 and 2 replicas part at step 0")
    assert "[d] BatchNormalization statistics computed per replica" in proc.stdout
    fixed = tmp_path / "train.py"
    fixed.write_text(CHECK_SCRIPT.format(batchnorm=False))
    proc = run_cli("check", "-n", "2", "-n", "4", "--json", str(fixed), env=CPU_ONLY_ENV)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert [(r["replicas"], r["same"]) for r in reports] == [(2, True), (4, True)]


def test_check_of_a_script_without_build_says_what_it_needs(tmp_path: Path) -> None:
    script = tmp_path / "nothing.py"
    script.write_text("x = 1\n")
    proc = run_cli("check", str(script), env=CPU_ONLY_ENV)
    assert proc.returncode == 2
    assert "must define build()" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("check", "-n", "1", str(script))
    assert proc.returncode == 2 and "-n must be >= 2" in proc.stderr
