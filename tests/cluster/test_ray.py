"""Ray Train: pick_strategy() reads the TF_CONFIG Ray writes, and Ray's TF_USE_LEGACY_KERAS=1.

Ray's ``TensorflowTrainer`` sets ``TF_CONFIG`` and ``TF_USE_LEGACY_KERAS=1`` in every worker
(``ray/train/tensorflow/config.py``). Without tf_keras installed, TensorFlow's ``tf.keras`` then
raises ``ImportError`` once and ``RecursionError`` after that; tfplace must not go through it.
The legacy-Keras tests need no Ray: they set the variable themselves in a fresh process and hide
tf_keras there (``sys.modules["tf_keras"] = None`` makes ``import tf_keras`` fail as if it were
not installed). The engine test runs ``docs/examples/ray_train.py`` on a local Ray instance
(two CPUs, loopback only) and checks that nothing of Ray is left running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import CPU_ONLY_ENV, QUIET_ENV, processes_named, run_json, skip_or_fail

from tfplace._facts.cluster.spec import parse_tf_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY_EXAMPLE = ROOT / "docs" / "examples" / "ray_train.py"

#: Makes ``import NAME`` raise ImportError in the child, as when the package is not installed.
HIDE = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n"


# ----------------------------------------------------------------------------- legacy Keras


@pytest.mark.slow
def test_legacy_keras_variable_without_tf_keras_uses_keras3_with_a_warning() -> None:
    out = run_json(
        HIDE.format(names=["tf_keras"])
        + """
import json, warnings
from pathlib import Path
import tensorflow as tf
import keras
import tfplace
from tfplace import _tf

# What TensorFlow itself does in this state (proves the simulation): tf.keras fails, then
# fails differently on every later use.
tf_errors = []
for _ in range(2):
    try:
        tf.keras.Model
    except BaseException as err:
        tf_errors.append(type(err).__name__)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = _tf.load_keras()
    second = _tf.load_keras()
    policy = tfplace.configure_precision("float32")
print(json.dumps({
    "tf_errors": tf_errors,
    "modules": [first.__name__, second.__name__],
    "is_keras3": first is keras and second is keras,
    "policy": policy,
    "keras_policy": keras.config.dtype_policy().name,
    "warnings": [(w.category.__name__, str(w.message), Path(w.filename).name)
                 for w in caught if "TF_USE_LEGACY_KERAS" in str(w.message)],
}))
""",
        env={"TF_USE_LEGACY_KERAS": "1"},
        cpu_only=True,
    )
    assert out["tf_errors"] == ["ImportError", "RecursionError"]  # TensorFlow's own behaviour
    assert out["modules"] == ["keras", "keras"] and out["is_keras3"]
    assert out["policy"] == out["keras_policy"] == "float32"
    assert len(out["warnings"]) == 3  # each of the three calls says it
    category, message, filename = out["warnings"][-1]
    assert category == "TfplaceWarning"
    assert "TF_USE_LEGACY_KERAS=1" in message and "Keras 3" in message
    assert 'pip install "tf-keras"' in message and "Ray" in message
    assert filename == "<string>"  # configure_precision's warning points at the caller's line


@pytest.mark.slow
def test_legacy_keras_variable_without_any_keras_says_what_to_install() -> None:
    out = run_json(
        HIDE.format(names=["tf_keras", "keras"])
        + """
import json
from tfplace import _tf
messages = []
for _ in range(2):  # the second call fails the same way: no RecursionError
    try:
        _tf.load_keras()
    except ImportError as err:
        messages.append(str(err))
print(json.dumps(messages))
""",
        env={"TF_USE_LEGACY_KERAS": "true"},
        cpu_only=True,
    )
    assert len(out) == 2 and out[0] == out[1]
    assert "TF_USE_LEGACY_KERAS=true" in out[0]
    assert 'pip install "tf-keras"' in out[0] and 'pip install "keras>=3"' in out[0]


@pytest.mark.slow
def test_load_keras_follows_the_variable_at_call_time() -> None:
    pytest.importorskip("tf_keras")
    out = run_json(
        """
import json, os, warnings
warnings.filterwarnings("error", ".*TF_USE_LEGACY_KERAS")  # neither case may say it
import tensorflow as tf
import keras, tf_keras
import tfplace
from tfplace import _tf

modern = _tf.load_keras()
same_as_tf = modern.Model is tf.keras.Model  # tf.keras resolves to Keras 3 here
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # what Ray does in each worker, after start-up
legacy = _tf.load_keras()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", tfplace.TfplaceWarning)  # "slow on a CPU": true, not tested
    tfplace.configure_precision("mixed_bfloat16")
print(json.dumps({
    "modern": modern.__name__, "same_as_tf": same_as_tf, "legacy": legacy.__name__,
    "tf_keras_policy": tf_keras.mixed_precision.global_policy().name,
}))
""",
        env={"TF_USE_LEGACY_KERAS": None},
        cpu_only=True,
    )
    assert out["modern"] == "keras" and out["same_as_tf"]
    assert out["legacy"] == "tf_keras"
    assert out["tf_keras_policy"] == "mixed_bfloat16"


# ----------------------------------------------------------------------------- Ray Train


def _ray_daemons(ray_tmp: str) -> set[int]:
    """PIDs of Ray's node daemons (``raylet``, ``gcs_server``) started with ``RAY_TMPDIR``
    set to ``ray_tmp``: this test's, not those of a Ray another test runs at the same time
    (under pytest-xdist, tests/cluster/test_multihost_ray.py)."""
    mine = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = set()
    for proc in processes_named("raylet", "gcs_server"):
        with contextlib.suppress(OSError):  # the process ended while we looked
            if mine in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads Ray's processes from /proc")
def test_ray_train_two_workers_train_through_pick_strategy_and_agree(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is None:
        skip_or_fail('Ray is not installed: pip install "ray[train]" (the test extra has it)')
    # CPU only on any machine (Ray workers inherit it): one replica per worker. Ray's session
    # files go to a short private directory (its sockets must fit in 107 bytes), removed after.
    ray_tmp = tempfile.mkdtemp(prefix="tfp-ray-")
    env = {
        **os.environ,
        **QUIET_ENV,
        **CPU_ONLY_ENV,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
    }
    proc = subprocess.Popen(
        [sys.executable, str(RAY_EXAMPLE), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ray's processes join it, so a stuck run is stopped whole
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the Ray example did not finish in 240 s:\n{err[-3000:]}")
    finally:
        left = _ray_daemons(ray_tmp)
        for pid in left:  # started by this test: stop them before failing
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-5000:]
    assert not left, f"Ray daemons still running after the example: {sorted(left)}"
    assert "workers end with the same weights: True" in out

    results = [json.loads((tmp_path / f"worker{rank}.json").read_text()) for rank in range(2)]
    for rank, result in enumerate(results):
        spec = parse_tf_config(result["tf_config"])  # what Ray wrote for this worker
        assert spec is not None and spec.num_workers == 2
        assert (spec.task_type, spec.task_index) == ("worker", rank) == ("worker", result["rank"])
        assert all(a.startswith("127.0.0.1:") for a in spec.addresses("worker")), spec
        assert result["multi_worker"]  # pick_strategy built the cluster from Ray's TF_CONFIG
        assert result["local_replicas"] == 1  # the CPU: GPUs are hidden from this run
        assert result["replicas"] == 2  # so two replicas in sync means two workers
        assert result["losses"][-1] < result["losses"][0]  # it trained
    assert results[0]["losses"] == pytest.approx(results[1]["losses"], rel=1e-6)
    for w0, w1 in zip(results[0]["weights"], results[1]["weights"], strict=True):
        np.testing.assert_allclose(np.array(w0), np.array(w1), rtol=0, atol=1e-6)
