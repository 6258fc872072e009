"""tfplace doctor: each rule on synthetic machines, and end to end on this one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET_ENV

from tfplace._inventory import GPUInfo, Inventory
from tfplace.doctor import (
    _KNOWN_ERRORS,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_VERIFY_FAILED,
    RULES,
    DoctorReport,
    Finding,
    VerifyResult,
    diagnose,
    explain_error,
    findings,
    verify,
)
from tfplace.testing import fake_inventory

ROOT = Path(__file__).parents[1]


def ids(inv: Inventory, precision: str | None = None) -> dict[str, Finding]:
    found: dict[str, Finding] = {}
    for f in findings(inv, precision=precision):  # most severe first; keep it per id
        found.setdefault(f.id, f)
    return found


def test_healthy_gpu_machine_has_no_warnings() -> None:
    found = findings(fake_inventory(gpus=2, env={"TF_ENABLE_ONEDNN_OPTS": "0"}))
    assert found == []


def test_rule_tensorflow_missing() -> None:
    f = ids(fake_inventory(tf_version=None))["B0"]
    assert f.severity == "error"
    assert 'pip install "tfplace[cpu]"' in f.fix


def test_rule_native_windows() -> None:
    f = ids(fake_inventory(platform="win32"))["B1"]
    assert "WSL2" in f.fix
    assert "B1" not in ids(fake_inventory(platform="win32", tf_version="2.10.1"))


def test_rule_cpu_only_build() -> None:
    f = ids(fake_inventory())["B2"]
    assert "CPU-only build" in f.what
    assert "tensorflow[and-cuda]" in f.fix
    assert f.severity == "info"  # no GPU on this fake machine: nothing is lost
    with_driver = ids(fake_inventory(nvidia_driver="NVRM 550"))["B2"]
    assert with_driver.severity == "warning"


def test_rule_conflicting_distributions() -> None:
    inv = fake_inventory(packages={"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"})
    f = ids(inv)["B2"]
    assert f.severity == "error"
    assert "pip uninstall tensorflow tensorflow-cpu" in f.fix
    ok = fake_inventory(packages={"tensorflow": "2.21.0", "tensorflow-io-gcs-filesystem": "0.37"})
    assert not [x for x in findings(ok) if x.id == "B2" and x.severity == "error"]


def test_rule_cuda_visible_devices() -> None:
    for value in ("", "-1"):
        f = ids(fake_inventory(cuda_build=True, env={"CUDA_VISIBLE_DEVICES": value}))["B7"]
        assert f"CUDA_VISIBLE_DEVICES={value!r}" in f.what
    assert "B7" not in ids(fake_inventory(gpus=1, env={"CUDA_VISIBLE_DEVICES": "0"}))


def test_rule_nvidia_wheels_not_loaded() -> None:
    inv = fake_inventory(
        cuda_build=True,
        nvidia_driver="NVRM 550",
        packages={"tensorflow": "2.21.0", "nvidia-cudnn-cu12": "9.3", "nvidia-cublas-cu12": "12"},
    )
    f = ids(inv)["B3"]
    assert "nvidia-cudnn-cu12" in f.what
    assert "TF_CPP_MAX_VLOG_LEVEL=3" in f.fix


def test_rule_cuda_libraries_missing() -> None:
    inv = fake_inventory(cuda_build=True, nvidia_driver="NVRM 550", packages={"tensorflow": "2"})
    f = ids(inv)["B4"]
    assert "CUDA 12.5.1 and cuDNN 9" in f.why


def test_rule_no_driver() -> None:
    f = ids(fake_inventory(cuda_build=True, nvidia_driver=None))["B6"]
    assert f.severity == "info"


def test_rule_gpu_newer_than_build() -> None:
    newer = (GPUInfo(0, "Future GPU", (10, 0)),)
    f = ids(fake_inventory(gpus=newer))["B8"]
    assert "compute capability 10.0" in f.what
    assert "9.0" in f.what
    assert "B8" not in ids(fake_inventory(gpus=1, compute_capability=(8, 9)))


def test_rule_slow_precision() -> None:
    assert "H1" in ids(fake_inventory(), precision="mixed_float16")
    old = fake_inventory(gpus=1, compute_capability=(6, 1))
    assert "6.1" in ids(old, precision="mixed_float16")["H1"].what
    assert "H1" not in ids(
        fake_inventory(gpus=1, compute_capability=(7, 5)), precision="mixed_float16"
    )
    assert "H1" in ids(
        fake_inventory(gpus=1, compute_capability=(7, 5)), precision="mixed_bfloat16"
    )
    assert "H1" not in ids(fake_inventory(tpu=True), precision="mixed_bfloat16")
    assert "H1" not in ids(fake_inventory(), precision="float32")


def test_rule_cpu_quota() -> None:
    f = ids(fake_inventory(cores=64, quota_cores=4.0))["G1"]
    assert "4 CPU cores" in f.what
    assert "TF_NUM_INTRAOP_THREADS=4" in f.fix
    assert "G1" not in ids(fake_inventory(cores=8, quota_cores=6.0))


def test_rule_onednn() -> None:
    assert ids(fake_inventory())["G2"].severity == "info"
    assert "G2" not in ids(fake_inventory(env={"TF_ENABLE_ONEDNN_OPTS": "0"}))


def test_rule_eager_forced() -> None:
    assert "G3" in ids(fake_inventory(functions_run_eagerly=True))


def test_rule_invalid_tf_config() -> None:
    f = ids(fake_inventory(tf_config='{"cluster": {}, "task": {}}'))["F3"]
    assert f.severity == "error"
    assert "TF_CONFIG: cluster" in f.what


def test_rule_keras_missing() -> None:
    inv = fake_inventory(keras="missing", env={"TF_USE_LEGACY_KERAS": "1"})
    assert "tf-keras" in ids(inv)["B9"].fix


@pytest.mark.parametrize(
    ("text", "fid"),
    [
        ("Could not create cudnn handle: DNN library initialization failed", "B5"),
        ("Loaded runtime CuDNN library: 8.1.0 but source was compiled with: 8.6.0", "B5"),
        ("failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device", "B6"),
        ("CUDA driver version is insufficient for CUDA runtime version", "B6"),
        ("Cannot dlopen some GPU libraries. Skipping registering GPU devices...", "B3"),
        ("Could not load dynamic library 'libcudnn.so.8'", "B4"),
        ("OOM when allocating tensor with shape[1024,1024] by allocator GPU_0_bfc", "D2"),
        ("Physical devices cannot be modified after being initialized", "A1"),
        ("Attempt to convert a value (PerReplica:{0: 1}) with an unsupported type", "F1"),
        ("Collective has timed out during execution.", "F5"),
    ],
)
def test_explain_known_errors(text: str, fid: str) -> None:
    f = explain_error(RuntimeError(text))
    assert f is not None and f.id == fid
    assert f.fix
    assert explain_error("something else entirely") is None


def test_every_finding_links_to_an_existing_troubleshooting_anchor() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    anchors = set(re.findall(r'<span id="([a-z]\d+)">', text))
    produced = {
        f.id.lower()
        for inv in (
            fake_inventory(tf_version=None),
            fake_inventory(
                platform="win32",
                cores=64,
                quota_cores=2,
                functions_run_eagerly=True,
                packages={"tensorflow": "1", "tf-nightly": "2"},
            ),
            fake_inventory(cuda_build=True, nvidia_driver=None, env={"CUDA_VISIBLE_DEVICES": "-1"}),
            fake_inventory(cuda_build=True, nvidia_driver="x", packages={"nvidia-cudnn-cu12": "9"}),
            fake_inventory(cuda_build=True, nvidia_driver="x", packages={}),
            fake_inventory(gpus=(GPUInfo(0, "g", (12, 0)),), tf_config="[]"),
            fake_inventory(keras="missing", env={"TF_USE_LEGACY_KERAS": "1"}),
        )
        for f in findings(inv, precision="mixed_float16")
    }
    produced |= {x[1].lower() for x in _KNOWN_ERRORS}
    assert len(produced) >= 17
    assert produced <= anchors, produced - anchors
    doc = (ROOT / "docs" / "doctor.md").read_text()
    for fid in produced:
        assert f"troubleshooting.md#{fid}" in doc, fid
    assert len(RULES) == 13


def test_exit_codes() -> None:
    inv = fake_inventory()
    ok = DoctorReport(inv, None, None, (), None)
    assert ok.exit_code == EXIT_OK
    err = DoctorReport(inv, None, None, (Finding("B0", "error", "", "", ""),), None)
    assert err.exit_code == EXIT_ERROR
    failed = DoctorReport(inv, None, None, (), (VerifyResult("/GPU:0", False, 0.1, "x"),))
    assert failed.exit_code == EXIT_VERIFY_FAILED


def test_verify_runs_on_every_device() -> None:
    results = verify()
    assert [r.device.rsplit("/", 1)[-1] for r in results] == ["device:CPU:0"]
    assert all(r.ok and r.seconds > 0 and r.error is None for r in results)


def run_doctor(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tfplace", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **QUIET_ENV, **(env or {})},
    )


SCHEMA: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "tfplace": str,
    "platform": dict,
    "tensorflow": dict,
    "keras": dict,
    "devices": dict,
    "cpu": dict,
    "env": dict,
    "strategy": dict,
    "findings": list,
    "verify": (list, type(None)),
    "exit_code": int,
}


def check_schema(data: dict[str, Any]) -> None:
    assert set(data) == set(SCHEMA)
    for key, kind in SCHEMA.items():
        assert isinstance(data[key], kind), key
    assert set(data["platform"]) == {"system", "machine", "python"}
    assert {"installed", "version", "build", "distributions", "runtime_started"} <= set(
        data["tensorflow"]
    )
    assert set(data["devices"]) == {"gpus", "logical_cpus", "tpu", "nvidia_driver"}
    for f in data["findings"]:
        assert set(f) == {"id", "severity", "what", "why", "fix", "doc"}
        assert f["severity"] in ("error", "warning", "info")


def test_doctor_on_this_cpu_only_machine() -> None:
    proc = run_doctor("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "CPU-only build" in proc.stdout
    assert 'pip install "tensorflow[and-cuda]"' in proc.stdout
    plain = run_doctor()
    assert plain.stdout.splitlines()[0] == "tfplace doctor"


def test_doctor_names_cuda_visible_devices_end_to_end() -> None:
    proc = run_doctor("doctor", "--json", env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    check_schema(data)
    b7 = [f for f in data["findings"] if f["id"] == "B7"]
    assert b7 and "CUDA_VISIBLE_DEVICES='-1'" in b7[0]["what"]
    assert data["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert data["tensorflow"]["build"]["cuda"] is False


def test_doctor_verify_and_json_end_to_end() -> None:
    proc = run_doctor("--json", "--verify")
    data = json.loads(proc.stdout)
    check_schema(data)
    assert data["verify"][0]["ok"] is True
    assert proc.returncode == data["exit_code"] == 0


def test_doctor_error_finding_sets_exit_code() -> None:
    proc = run_doctor("doctor", env={"TF_CONFIG": '{"cluster": 3}'})
    assert proc.returncode == EXIT_ERROR
    assert "[error] F3" in proc.stdout


def test_doctor_sees_a_real_cgroup_quota() -> None:
    group = Path(f"/sys/fs/cgroup/cpu/tfplace-test-{os.getpid()}")
    try:
        group.mkdir()
        (group / "cpu.cfs_quota_us").write_text("50000")  # half a core
    except OSError as err:
        pytest.skip(f"cannot create a cgroup v1 CPU group here: {err}")
    try:
        proc = run_doctor(
            "--json",
            prefix=["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"],
        )
        data = json.loads(proc.stdout)
        assert data["cpu"]["quota_cores"] == 0.5
        assert data["cpu"]["usable_cores"] == 1
        host = data["cpu"]["host_cores"]
        if host >= 2:
            assert any(f["id"] == "G1" for f in data["findings"])
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def test_diagnose_is_pure_for_a_synthetic_machine() -> None:
    report = diagnose(fake_inventory(gpus=8, platform="win32"))
    assert report.plan is not None and report.plan.cross_device_ops == "hierarchical_copy"
    text = report.to_text()
    assert "GPU 0" in text and "[warning] B1" in text
    assert report.to_dict()["strategy"]["kind"] == "mirrored"
