"""Inventory: CPU quota reading, Keras flavour, never starting the runtime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fakes import FakeGPUMachine
from helpers import run_json

import tfplace
from tfplace._facts.inventory import CPUInfo, cpu_quota
from tfplace.testing import fake_inventory, use_inventory

pytestmark = pytest.mark.pure


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "400000 100000\n")
    assert cpu_quota(tmp_path, tmp_path / "none") == 4.0


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cpu_quota(tmp_path, tmp_path / "none") is None


def test_cgroup_v2_nested_smallest_limit_wins(tmp_path: Path) -> None:
    write(tmp_path / "proc_cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    write(tmp_path / "kubepods/pod1/cpu.max", "150000 100000\n")
    write(tmp_path / "kubepods/cpu.max", "800000 100000\n")
    assert cpu_quota(tmp_path, tmp_path / "proc_cgroup") == 1.5


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    write(tmp_path / "cpu/cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cpu/cpu.cfs_period_us", "100000\n")
    assert cpu_quota(tmp_path, tmp_path / "none") == 2.0
    write(tmp_path / "cpu/cpu.cfs_quota_us", "-1\n")
    assert cpu_quota(tmp_path, tmp_path / "none") is None


def test_garbage_cgroup_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "lots\n")
    assert cpu_quota(tmp_path, tmp_path / "none") is None
    assert cpu_quota(tmp_path / "missing", tmp_path / "none") is None


@pytest.mark.parametrize(
    ("affinity", "quota", "usable"),
    [(64, 4.0, 4), (64, 1.5, 1), (64, 0.2, 1), (2, 8.0, 2), (8, None, 8)],
)
def test_usable_cores_from_quota_and_affinity(
    affinity: int, quota: float | None, usable: int
) -> None:
    assert CPUInfo(host_cores=64, affinity_cores=affinity, quota_cores=quota).usable_cores == usable


def test_quota_drives_configure_cpus_auto_through_the_inventory() -> None:
    # A 4-core quota on a 64-core host: "auto" applies 4 + 4 threads, not TensorFlow's 64.
    machine = FakeGPUMachine(n=0)
    with use_inventory(fake_inventory(cores=64, quota_cores=4.0)):
        cfg = tfplace.configure_cpus("auto", backend=machine)
    assert (cfg.intra_op_threads, cfg.inter_op_threads) == (4, 4)
    assert machine.calls == ["intra 4", "inter 4"]
    # A thread count set through the environment is left to TensorFlow.
    machine = FakeGPUMachine(n=0)
    inv = fake_inventory(cores=64, quota_cores=4.0, env={"TF_NUM_INTRAOP_THREADS": "2"})
    with use_inventory(inv):
        tfplace.configure_cpus("auto", backend=machine)
    assert machine.calls == ["inter 4"]


# The child's own decision must not depend on a cluster, TPU or Keras flavour in the caller's env.
PLAIN_ENV: dict[str, str | None] = {
    "TF_CONFIG": None,
    "TPU_NAME": None,
    "COLAB_TPU_ADDR": None,
    "TF_USE_LEGACY_KERAS": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("cpu_only", [False, True], ids=["this-machine", "gpus-hidden"])
def test_real_inventory_does_not_start_the_runtime(cpu_only: bool) -> None:
    out = run_json(
        """
        import json, tfplace
        from tfplace import _tf
        inv = tfplace.inventory()
        p = tfplace.plan()
        import tensorflow as tf
        started = _tf.runtime_started()  # importing TensorFlow does not start it either
        print(json.dumps({"started": started, "inv_started": inv.runtime_started,
                          "cpu": inv.cpu.host_cores, "tf": inv.tensorflow.version,
                          "tf_real": tf.__version__, "keras": inv.keras.flavour,
                          "gpus": len(inv.visible_gpus), "kind": p.kind,
                          "devices": list(p.devices), "reasons": list(p.reasons),
                          "physical_gpus": len(tf.config.list_physical_devices("GPU")),
                          "pkgs": [n for n, _ in inv.packages]}))
        """,
        env=PLAIN_ENV,
        cpu_only=cpu_only,
    )
    assert out["started"] is False
    assert out["inv_started"] is False
    assert out["cpu"] >= 1
    assert out["tf"] == out["tf_real"]
    assert out["keras"] == "keras3"
    assert out["gpus"] == out["physical_gpus"]  # what TensorFlow itself lists
    # What the detected GPUs imply (no TPU or cluster in the child's environment).
    gpus = out["gpus"]
    assert out["kind"] == ("default" if gpus == 0 else "one_device" if gpus == 1 else "mirrored")
    assert out["devices"][0] == ("/GPU:0" if gpus else "/CPU:0")
    if cpu_only:
        assert gpus == 0
        assert any("CUDA_VISIBLE_DEVICES='-1'" in r for r in out["reasons"]), out["reasons"]
    assert any(n.startswith("tensorflow") for n in out["pkgs"])


@pytest.mark.slow
def test_inventory_sees_virtual_cpus_and_runtime_state() -> None:
    out = run_json(
        """
        import json, tfplace
        tfplace.configure_cpus(virtual_devices=3)
        before = tfplace.inventory()
        import tensorflow as tf
        tf.constant(1.0)
        after = tfplace.inventory()
        print(json.dumps([before.cpu.logical_devices, before.runtime_started,
                          after.cpu.logical_devices, after.runtime_started]))
        """
    )
    assert out == [3, False, 3, True]


def test_environment_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_GPU_ALLOCATOR", "cuda_malloc_async")
    inv = tfplace.inventory()
    assert inv.env_value("TF_GPU_ALLOCATOR") == "cuda_malloc_async"
    assert inv.env_value("NOT_A_VARIABLE") is None
    data = json.loads(json.dumps(inv.to_dict()))
    assert data["env"]["TF_GPU_ALLOCATOR"] == "cuda_malloc_async"
    assert data["cpu"]["usable_cores"] >= 1


@pytest.mark.slow
def test_keras_flavour_follows_tf_use_legacy_keras() -> None:
    assert fake_inventory(keras="tf_keras").keras.flavour == "tf_keras"
    out = run_json(
        """
        import json, tfplace
        print(json.dumps(tfplace.inventory().keras.flavour))
        """,
        env={"TF_USE_LEGACY_KERAS": "1"},
    )
    # tf_keras when it is installed; "missing" (Keras 2 requested but absent) otherwise.
    assert out == ("tf_keras" if importlib.util.find_spec("tf_keras") else "missing")


def test_tpu_hint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    inv = tfplace.inventory()
    assert inv.tpu.present and inv.tpu.name == "my-tpu"
    assert tfplace.plan(inventory=inv).kind == "tpu"
