"""tfplace doctor: each rule on synthetic machines, and end to end on this one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_GPU_ENV, CPU_ONLY_ENV, QUIET_ENV, run_fresh, run_json

import tfplace
from tfplace import _tf
from tfplace._decide.devices import auto_cpu_changes
from tfplace._decide.precision import BFLOAT16_MIN_CC, FLOAT16_MIN_CC, choose_precision
from tfplace._decide.threads import auto_threads
from tfplace._facts.inventory import GPUInfo, Inventory, merge_gpus
from tfplace._facts.nvidia import from_nvml, parse_driver_version, parse_query_gpu
from tfplace.doctor import (
    DoctorReport,
    Finding,
    _cuda_libs,
    _report,
    diagnose,
    explain_error,
    findings,
)
from tfplace.doctor._cuda_libs import LibCheck
from tfplace.doctor._explain import KNOWN_ERRORS
from tfplace.doctor._quiet import captured, log_message, tf_lines
from tfplace.doctor._report import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_VERIFY_FAILED,
    SCHEMA_VERSION,
    env_block,
    startup_findings,
)
from tfplace.doctor._rules import RULES, coverage, install_line, library_findings
from tfplace.doctor._verify import VerifyResult, verify
from tfplace.testing import fake_inventory

pytestmark = pytest.mark.pure


ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu-host"


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
    assert 'pip install "tfplace[gpu]"' in f.fix  # what to install on a GPU machine
    assert f.severity == "info"  # no GPU on this fake machine: nothing is lost
    with_driver = ids(fake_inventory(nvidia_driver="NVRM 550"))["B2"]
    assert with_driver.severity == "warning"
    # the H100 of the captured host, under a tensorflow-cpu: one line, naming the GPU
    h100 = h100_inventory(tf_version="2.21.0")
    f = ids(h100)["B2"]
    assert f.severity == "warning"
    assert "NVIDIA H100 80GB HBM3 (81559 MiB, compute capability 9.0)" in f.why
    assert f.fix == 'pip uninstall -y tensorflow-cpu && pip install "tfplace[gpu]"'


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


def test_gpu_not_registered_names_the_gpu_the_driver_sees() -> None:
    h200 = GPUInfo(0, "NVIDIA H200", (9, 0), 143771, visible=False)
    inv = fake_inventory(
        cuda_build=True,
        nvidia_gpus=[h200],
        packages={"tensorflow": "2.21.0", "tensorboard": "2.20.0", "nvidia-cublas-cu12": "12"},
    )
    f = ids(inv)["B3"]
    assert "580.159.04; it sees GPU 0: NVIDIA H200 (143771 MiB, compute capability 9.0)" in f.what
    assert "B10" in f.fix  # the library check names the library


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


# ---------------------------------------------- machines built from the captured GPU hosts


def h100_inventory(tf_version: str | None = None, **kw: Any) -> Inventory:
    """Host A of tests/fixtures/gpu-host: its NVML values (through a fake pynvml), packages and
    environment from its doctor JSON; TensorFlow absent unless ``tf_version`` (then CPU-only,
    as TensorFlow lists no GPU)."""
    facts_dir = str(Path(__file__).parents[1] / "facts")
    if facts_dir not in sys.path:  # when tests/facts/ is not collected in this run
        sys.path.insert(0, facts_dir)
    from test_nvidia import FakeNVML

    doc = json.loads((FIXTURES / "h100-no-tensorflow-doctor.json").read_text())
    facts = from_nvml(FakeNVML())
    assert facts is not None
    _, seen = merge_gpus((), facts, {})
    packages = dict(doc["tensorflow"]["distributions"])
    if tf_version:
        packages["tensorflow-cpu"] = tf_version
    return fake_inventory(
        gpus=0,
        tf_version=tf_version,
        packages=packages,
        env=doc["env"],
        nvidia_driver=doc["devices"]["nvidia_driver"],
        driver_version=facts.driver_version,
        cuda_driver_version=facts.cuda_driver_version,
        nvidia_gpus=seen,
        **kw,
    )


def h200_inventory(**kw: Any) -> Inventory:
    """Host B: GPU TensorFlow 2.21 (CUDA 12.5.1, sm_60..sm_89 + compute_90) and one H200, from
    its doctor JSON."""
    doc = json.loads((FIXTURES / "h200-tf-gpu-doctor-verify.json").read_text())
    build = doc["tensorflow"]["build"]
    gpus = tuple(
        GPUInfo(g["index"], g["name"], tuple(g["compute_capability"]), 143771)
        for g in doc["devices"]["gpus"]
    )
    inv = fake_inventory(
        gpus=gpus,
        tf_version=doc["tensorflow"]["version"],
        packages={**doc["tensorflow"]["distributions"], "tensorboard": "2.20.0"},
        env={**doc["env"], "TF_ENABLE_ONEDNN_OPTS": "0"},
        nvidia_driver=doc["devices"]["nvidia_driver"],
        **kw,
    )
    assert inv.tensorflow is not None
    tf = inv.tensorflow.__class__(
        version=doc["tensorflow"]["version"],
        is_cuda_build=build["cuda"],
        cuda_version=build["cuda_version"],
        cudnn_version=build["cudnn_version"],
        compute_capabilities=tuple(build["compute_capabilities"]),
    )
    return dataclasses.replace(inv, tensorflow=tf)


def test_h100_without_tensorflow_names_the_gpu_and_one_install_line() -> None:
    inv = h100_inventory()
    found = ids(inv)
    b0 = found["B0"]
    assert "GPU 0: NVIDIA H100 80GB HBM3 (81559 MiB, compute capability 9.0)" in b0.what
    assert b0.fix == 'pip install "tfplace[gpu]"'  # one line, not a menu of three
    text = diagnose(inv).to_text()
    assert "580.159.04, supports CUDA 13.0 (read through nvml)" in text
    assert "NVIDIA H100 80GB HBM3, compute 9.0, 81559 MiB (81079 free)" in text
    assert "(not visible to TensorFlow)" in text
    assert "NVRM version" not in text.split("NVIDIA driver", 1)[1].splitlines()[0]


def test_install_line_follows_the_machine() -> None:
    assert install_line(h100_inventory()) == 'pip install "tfplace[gpu]"'
    assert install_line(fake_inventory(tf_version=None)) == 'pip install "tfplace[cpu]"'
    assert install_line(fake_inventory(platform="win32")) == 'pip install "tfplace[tensorflow]"'


def test_rule_cuda_wheels_of_another_major() -> None:
    # host A's real packages: only CUDA 13 wheels (PyTorch's), no TensorFlow
    f = ids(h100_inventory())["B11"]
    assert f.severity == "warning"
    assert "CUDA 13 wheels" in f.what and "nvidia-cublas 13.1.0.3" in f.what
    assert "nvidia-cudnn-cu13 9.19.0.56" in f.what and "nvidia-ml-py" not in f.what
    assert "libcublas.so.12" in f.why
    assert 'pip install "tfplace[gpu]" installs the CUDA 12 wheels' in f.fix
    # host B: a CUDA 12.5 TensorFlow with the same CUDA 13 wheels
    # host B: a CUDA 12.5 TensorFlow with the same CUDA 13 wheels; it found its CUDA 12
    # libraries elsewhere (LD_LIBRARY_PATH) and lists the H200: the wheels are only a note
    f = ids(h200_inventory())["B11"]
    assert "TensorFlow 2.21.0 (CUDA 12.5.1)" in f.why
    assert f.severity == "info" and "Nothing to remove" in f.fix
    # the same build listing no GPU: the CUDA 12 set is what is missing
    f = ids(dataclasses.replace(h200_inventory(), gpus=()))["B11"]
    assert f.severity == "warning"
    assert 'pip install "tensorflow[and-cuda]==2.21.0"' in f.fix
    # with the CUDA 12 wheels next to them, the others are only worth a note
    both = fake_inventory(
        gpus=1, packages={"tensorflow": "2.21.0", "nvidia-cublas-cu12": "12.5.3.2",
                          "nvidia-cublas": "13.1.0.3", "tensorboard": "2.20.0"}
    )  # fmt: skip
    assert ids(both)["B11"].severity == "info"
    assert "B11" not in ids(fake_inventory(gpus=1, packages={"nvidia-cublas-cu12": "12.5"}))


def test_rule_ptx_only_architecture_on_the_h200() -> None:
    inv = h200_inventory()
    f = ids(inv)["B8"]
    assert f.severity == "info"
    assert "covered only by PTX" in f.what and "no sm_90 machine code" in f.what
    assert "CUDA_CACHE_MAXSIZE" in f.fix
    assert "B6" not in ids(inv)  # driver 580.159.04 (CUDA 13.0) serves a CUDA 12.5.1 build
    # the same build on an Ampere card has machine code: nothing to say
    ampere = fake_inventory(gpus=1, compute_capability=(8, 6))
    assert "B8" not in ids(ampere)


@pytest.mark.parametrize(
    ("cc", "expected"),
    [((6, 1), "sass"), ((7, 5), "sass"), ((8, 9), "sass"), ((9, 0), "ptx"), ((12, 0), "ptx"),
     ((5, 2), "none")],
)  # fmt: skip
def test_build_coverage(cc: tuple[int, int], expected: str) -> None:
    assert coverage(cc, ("sm_60", "sm_70", "sm_80", "sm_89", "compute_90")) == expected
    assert coverage(cc, ("sm_60",)) == ("sass" if cc[0] == 6 else "none")


def test_rule_gpu_older_than_every_architecture() -> None:
    f = ids(fake_inventory(gpus=1, compute_capability=(5, 2)))["B8"]
    assert f.severity == "warning" and "no machine code or PTX" in f.what


def test_rule_driver_too_old_from_the_old_driver_variant() -> None:
    line = (FIXTURES / "variant-old-driver-proc-driver-nvidia.txt").read_text()
    driver = parse_driver_version(line)
    assert driver == "470.82.01"
    f = ids(h200_inventory(driver_version=driver))["B6"]  # CUDA 11.4 from NVIDIA's table
    assert f.severity == "error"
    assert "supports CUDA 11.4" in f.what and "CUDA 12.5.1" in f.what
    assert "525.60.13" in f.why  # CUDA 12.x minimum (minor version compatibility)
    assert "555.42.06" in f.fix  # CUDA 12.5 Update 1's own minimum
    # newer than the major's minimum, older than the build's release: a warning (PTX JIT)
    f = ids(h200_inventory(driver_version="550.54.15"))["B6"]
    assert f.severity == "warning" and "CUDA_ERROR_UNSUPPORTED_PTX_VERSION" in f.why


def test_rule_mig_mode_from_the_mig_variant() -> None:
    gpus, _ = parse_query_gpu((FIXTURES / "variant-mig-query-gpu.csv").read_text())
    inv = fake_inventory(gpus=1, mig_gpus=[g.index for g in gpus if g.mig])
    f = ids(inv)["B12"]
    assert "GPU 0 is in MIG mode" in f.what and "CUDA_VISIBLE_DEVICES=MIG-" in f.fix


def test_rule_tensorboard_missing() -> None:
    f = ids(fake_inventory(packages={"tensorflow-cpu": "2.21.0"}))["G4"]
    assert "tensorflow-cpu 2.21.0 does not install it" in f.what
    assert "TBNotInstalledError" in f.why
    assert "G4" not in ids(fake_inventory())  # tensorboard installed


@pytest.mark.slow
def test_tensorboard_finding_matches_what_keras_does_here() -> None:
    """On this machine: G4 fires exactly when the TensorBoard callback would fail."""
    from helpers import run_fresh

    proc = run_fresh(
        """
        import tempfile, numpy as np, keras
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile("sgd", "mse")
        try:
            m.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(tempfile.mkdtemp())])
            print("trained")
        except Exception as err:
            print(type(err).__name__)
        """,
        cpu_only=True,
    )
    outcome = proc.stdout.strip().splitlines()[-1]
    fires = "G4" in ids(tfplace.inventory())
    assert outcome == ("TBNotInstalledError" if fires else "trained"), proc.stdout


def test_library_check_failures_become_findings() -> None:
    bad = LibCheck(
        "cublasLt",
        "libcublasLt.so.12",
        False,
        error="libcublasLt.so.12: cannot open shared object file: No such file or directory",
        searched=("/site/nvidia/cublas/lib",),
        fix="pip install nvidia-cublas-cu12",
    )
    good = LibCheck("cudart", "libcudart.so.12", True, path="/site/nvidia/cuda_runtime/lib/x")
    inv = h200_inventory()
    (f,) = library_findings(inv, (good, bad))
    assert f.id == "B10" and f.severity == "error"
    assert "libcublasLt.so.12" in f.what and "/site/nvidia/cublas/lib" in f.why
    assert f.fix == "pip install nvidia-cublas-cu12"
    report = diagnose(inv, libraries=[good, bad])
    assert report.findings[0] == f and report.exit_code == EXIT_ERROR
    data = report.to_dict()
    assert [c["soname"] for c in data["cuda_libraries"]] == ["libcudart.so.12", "libcublasLt.so.12"]
    assert "CUDA libs     1/2 load; failing: libcublasLt.so.12" in report.to_text()
    assert diagnose(inv).to_dict()["cuda_libraries"] is None


def test_diagnose_runs_the_library_check_as_the_cli_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, only the CLI ran the check; diagnose() never produced B10.
    calls: list[tuple[str | None, str | None]] = []
    bad = LibCheck("cudnn", "libcudnn.so.9", False, error="not found", fix="pip install x")

    def check(cuda: str | None, cudnn: str | None, **kw: object) -> tuple[LibCheck, ...]:
        calls.append((cuda, cudnn))
        return (bad,)

    inv = h200_inventory()
    monkeypatch.setattr(_report, "this_machine", lambda: (inv, ()))
    monkeypatch.setattr(_cuda_libs, "check_libraries", check)
    report = diagnose()  # this machine, as `tfplace doctor` reports it
    assert calls == [("12.5.1", "9")] and report.libraries == (bad,)
    assert report.findings[0].id == "B10" and report.exit_code == EXIT_ERROR
    assert diagnose(check_libraries=False).libraries is None
    assert len(calls) == 1
    # an inventory passed in may be another machine's: checked only when asked
    assert diagnose(inv).libraries is None and len(calls) == 1
    assert diagnose(inv, check_libraries=True).libraries == (bad,) and len(calls) == 2
    # results given are used as they are, never checked twice (the CLI passes its own)
    assert diagnose(libraries=()).libraries == () and len(calls) == 2
    # no check for a CPU-only build or off Linux
    monkeypatch.setattr(_report, "this_machine", lambda: (fake_inventory(), ()))
    assert diagnose().libraries is None and len(calls) == 2


def test_the_report_prints_as_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    # Before, print(report) showed the dataclass repr.
    report = diagnose(fake_inventory(gpus=2))
    assert str(report) == report.to_text() and str(report).startswith("tfplace doctor\n")
    print(report)
    assert capsys.readouterr().out == report.to_text() + "\n"
    assert repr(report).startswith("DoctorReport(")


ONEDNN = (
    "I0000 00:00:1796397737.785497    1165 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results."
)
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def test_tensorflow_lines_are_told_from_python_lines() -> None:
    feature = "I0000 00:00:1.887318    1165 cpu_feature_guard.cc:227] This binary is optimized."
    lines = [
        BANNER,
        ONEDNN,
        feature,
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild.",
        "/x/y.py:74: UserWarning: careful",
        "  self.data_adapter = ...",
        "WARNING:tfplace:a log record",
    ]
    ours, rest = tf_lines(lines)
    assert ours == lines[1:4]
    assert rest == lines[4:]


def test_captured_keeps_tensorflow_lines_and_passes_the_rest_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with captured() as lines:
        os.write(2, f"{BANNER}\n{ONEDNN}\n".encode())
        print("a line of the user's", file=sys.stderr)
    assert lines == [ONEDNN]
    err = capfd.readouterr().err
    assert "a line of the user's" in err and "oneDNN" not in err and "absl" not in err


def test_captured_passes_a_line_through_while_the_block_still_runs(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Not held back until the block ends: the user sees it before TensorFlow's import ends."""
    seen = ""
    with captured() as lines:
        os.write(2, f"{ONEDNN}\nsomething the user must see\n".encode())
        deadline = time.monotonic() + 10
        while "something the user must see" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen += capfd.readouterr().err
    assert "something the user must see" in seen and "oneDNN" not in seen
    assert lines == [ONEDNN]


@pytest.mark.slow
def test_a_fatal_message_before_an_abort_inside_the_capture_is_printed(tmp_path: Path) -> None:
    """TensorFlow aborting during the import (a CHECK failure): its message reaches stderr,
    with the start-up lines filed so far, and no temporary file is left."""
    code = f"""
        import os
        from tfplace.doctor._quiet import captured
        with captured():
            os.write(2, {ONEDNN!r}.encode() + b"\\n")
            os.write(2, b"F0000 00:00:1.5  7 env.cc:12] Check failed: a CPU instruction\\n")
            os.write(2, b"a plain line before the end\\n")
            os.abort()
    """
    proc = run_fresh(code, env={"TMPDIR": str(tmp_path)}, check=False)
    assert proc.returncode == -signal.SIGABRT, proc
    assert "Check failed: a CPU instruction" in proc.stderr
    assert "a plain line before the end" in proc.stderr
    assert "oneDNN custom operations" in proc.stderr  # nothing is lost
    deadline = time.monotonic() + 10
    while list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []


def test_known_startup_lines_become_findings() -> None:
    dlopen = "W0000 00:00:1.5  7 gpu_device.cc:2365] Cannot dlopen some GPU libraries. Please..."
    found = startup_findings([ONEDNN, dlopen, dlopen])
    assert [(f.id, f.severity) for f in found] == [("B3", "warning")]
    assert found[0].what.startswith("TensorFlow logged: Cannot dlopen some GPU libraries")
    report = dataclasses.replace(diagnose(fake_inventory()), startup_log=(ONEDNN,))
    assert report.to_dict()["startup_log"] == [ONEDNN]


@pytest.mark.slow
def test_diagnose_from_python_prints_no_startup_lines_and_keeps_them() -> None:
    code = """
        import json, sys
        from tfplace.doctor import diagnose
        report = diagnose(check_libraries=True)
        text = str(report)
        assert text.startswith("tfplace doctor"), text
        print(json.dumps([list(report.startup_log), "tensorflow" in sys.modules]))
        """
    proc = run_fresh(code)
    assert proc.returncode == 0, proc.stderr
    log, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert imported  # the inventory imported TensorFlow, yet nothing reached stderr
    assert "absl" not in proc.stderr and not tf_lines(proc.stderr.splitlines())[0], proc.stderr
    # what a plain import prints here (TensorFlow 2.21 on x86_64: the CPU-instructions line;
    # older releases also oneDNN's) is what the report keeps
    plain = run_fresh("import tensorflow").stderr
    expected = [log_message(line) for line in tf_lines(plain.splitlines())[0] if "] " in line]
    assert [log_message(line) for line in log if "] " in line] == expected, (log, plain)


@pytest.mark.slow
def test_the_library_check_does_not_start_tensorflow_here() -> None:
    code = """
        import json, sys
        from tfplace.doctor import diagnose
        from tfplace.testing import fake_inventory
        report = diagnose(fake_inventory(gpus=1), check_libraries=True)
        print(json.dumps([len(report.libraries), "tensorflow" in sys.modules]))
        """
    assert run_json(code) == [8, False]


def test_env_block_for_bug_reports() -> None:
    block = env_block(h100_inventory()).splitlines()
    assert block[0] == f"- tfplace: {tfplace.__version__}"
    assert "- TensorFlow: not installed" in block
    assert "- NVIDIA driver: 580.159.04, supports CUDA 13.0 (read through nvml)" in block
    gpus = next(line for line in block if line.startswith("- GPUs:"))
    assert "not visible to TensorFlow: NVIDIA H100 80GB HBM3, compute 9.0, 81559 MiB" in gpus
    assert len(block) == 9


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


#: For each rule, a synthetic machine (and requested precision) on which it must fire.
TRIGGERS: dict[str, tuple[Inventory, str | None]] = {
    "_tensorflow_missing": (fake_inventory(tf_version=None), None),
    "_keras_missing": (fake_inventory(keras="missing"), None),
    "_conflicting": (fake_inventory(packages={"tensorflow": "2", "tf-nightly": "2"}), None),
    "_windows": (fake_inventory(platform="win32"), None),
    "_cpu_only_build": (fake_inventory(), None),
    "_cvd": (fake_inventory(env={"CUDA_VISIBLE_DEVICES": "-1"}), None),
    "_gpu_not_found": (fake_inventory(cuda_build=True, nvidia_driver=None), None),
    "_driver_too_old": (fake_inventory(gpus=1, driver_version="470.82.01"), None),
    "_other_major_wheels": (
        fake_inventory(gpus=1, packages={"tensorflow": "2.21.0", "nvidia-cublas": "13.1.0.3"}),
        None,
    ),
    "_gpu_newer": (fake_inventory(gpus=(GPUInfo(0, "g", (12, 0)),)), None),
    "_mig": (fake_inventory(gpus=1, mig_gpus=[0]), None),
    "_tensorboard_missing": (fake_inventory(packages={"tensorflow-cpu": "2.21.0"}), None),
    "_slow_precision": (fake_inventory(), "mixed_float16"),
    "_tf_config": (fake_inventory(tf_config="[]"), None),
    "_quota": (fake_inventory(cores=64, quota_cores=2), None),
    "_eager": (fake_inventory(functions_run_eagerly=True), None),
    "_onednn": (fake_inventory(), None),
}
#: A machine where nothing is wrong and nothing needs saying, with a policy it runs fast.
HEALTHY = (fake_inventory(gpus=2, env={"TF_ENABLE_ONEDNN_OPTS": "0"}), "mixed_bfloat16")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_every_rule_fires_on_its_machine_and_is_silent_on_a_healthy_one(
    rule: Callable[[Inventory, str | None], Finding | None],
) -> None:
    assert rule.__name__ in TRIGGERS, f"add a synthetic machine on which {rule.__name__} fires"
    inv, precision = TRIGGERS[rule.__name__]
    fired = rule(inv, precision)
    assert fired is not None
    assert fired.what and fired.why and fired.fix
    assert fired in findings(inv, precision=precision)  # findings() applies every rule
    assert rule(*HEALTHY) is None


def test_findings_are_most_severe_first() -> None:
    inv = fake_inventory(tf_config="[]", functions_run_eagerly=True)  # F3 error, G3 warning
    order = [f.severity for f in findings(inv)]
    assert order == sorted(order, key=["error", "warning", "info"].index)
    assert order[0] == "error" and "warning" in order and "info" in order


def produced_ids() -> set[str]:
    """Every finding id the rules (on their trigger machines) and the explainer can produce."""
    from_rules = {f.id for inv, p in TRIGGERS.values() for f in findings(inv, precision=p)}
    failed = LibCheck("cublas", "libcublas.so.12", False, error="x", fix="y")
    from_libraries = {f.id for f in library_findings(fake_inventory(gpus=1), (failed,))}
    return from_rules | from_libraries | {fid for _, fid, _, _ in KNOWN_ERRORS}


def test_every_finding_is_documented_in_troubleshooting_and_doctor_pages() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    anchors = set(re.findall(r'<span id="([a-z]\d+)">', text))
    produced = {fid.lower() for fid in produced_ids()}
    assert produced <= anchors, produced - anchors
    doc = (ROOT / "docs" / "doctor.md").read_text()
    listed = set(re.findall(r"\(troubleshooting\.md#([a-z]\d+)\)", doc))
    assert listed == produced  # the doctor page lists exactly what the doctor can say


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
    tf = _tf.load()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    assert [r.device for r in results[:-1]] == gpus  # every visible GPU, then one CPU
    assert results[-1].device.endswith("device:CPU:0")
    assert all(r.ok and r.seconds > 0 and r.error is None for r in results), results


# ------------------------------------------------------------ shared hardware thresholds


#: Compute capabilities around each shared threshold (just below, at, above).
CCS = sorted({(m, n) for m in range(5, 11) for n in (0, 5)} | {FLOAT16_MIN_CC, BFLOAT16_MIN_CC})


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"{cc[0]}.{cc[1]}")
@pytest.mark.parametrize("tpu", [False, True], ids=["gpus", "gpus+tpu"])
def test_auto_precision_and_the_doctor_agree(cc: tuple[int, int], tpu: bool) -> None:
    inv = fake_inventory(gpus=2, compute_capability=cc, tpu=tpu)
    chosen, _ = choose_precision(inv)
    assert "H1" not in ids(inv, precision=chosen)  # auto never picks what the doctor calls slow
    ladder = ["float32", "mixed_float16", "mixed_bfloat16"]
    for faster in ladder[ladder.index(chosen) + 1 :]:  # what auto passed over is slow here
        assert "H1" in ids(inv, precision=faster), (cc, tpu, chosen, faster)


def test_unknown_compute_capability_is_neither_chosen_nor_trusted() -> None:
    inv = fake_inventory(gpus=(GPUInfo(0, "a", (8, 0)), GPUInfo(1, "b", None)))
    assert choose_precision(inv)[0] == "float32"
    assert "compute capability is unknown" in ids(inv, precision="mixed_float16")["H1"].what


# ------------------------------------------------------------ the report: one schema


def test_report_json_is_the_inventory_and_the_plan_themselves() -> None:
    inv = fake_inventory(gpus=2, quota_cores=3.0, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    report = diagnose(inv, precision="mixed_float16")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["inventory"] == json.loads(json.dumps(inv.to_dict()))
    assert report.plan is not None
    assert data["plan"] == json.loads(json.dumps(report.plan.to_dict()))
    assert data["plan_error"] is None
    assert data["findings"] == [f.to_dict() for f in report.findings]
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["tfplace"] == tfplace.__version__
    assert data["exit_code"] == report.exit_code
    intra, inter = auto_threads(inv.cpu.usable_cores)  # what configure_cpus("auto") would set
    assert data["auto_threads"] == {"intra_op": intra, "inter_op": inter}
    assert data["configure_cpus_auto"] == [c.to_dict() for c in auto_cpu_changes(inv).changes]


def test_report_without_a_plan_says_why() -> None:
    data = diagnose(fake_inventory(tf_config='{"cluster": 3}')).to_dict()
    assert data["plan"] is None
    assert "TF_CONFIG" in data["plan_error"]
    assert data["exit_code"] == EXIT_ERROR


def documented_keys() -> set[str]:
    """The top-level keys in docs/doctor.md's table for the current schema version."""
    doc = (ROOT / "docs" / "doctor.md").read_text()
    title = f"## `--json` schema (version {SCHEMA_VERSION})"
    assert title in doc, f"docs/doctor.md must document schema version {SCHEMA_VERSION}"
    section = doc.split(title, 1)[1].split("\n#", 1)[0]  # up to the next heading
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def check_schema(data: dict[str, Any]) -> None:
    assert set(data) == documented_keys()
    assert data["schema_version"] == SCHEMA_VERSION
    assert isinstance(data["inventory"]["cpu"]["usable_cores"], int)
    assert isinstance(data["inventory"]["gpus"], list)
    assert (data["plan"] is None) != (data["plan_error"] is None)
    for f in data["findings"]:
        assert set(f) == {"id", "severity", "what", "why", "fix", "doc"}
        assert f["severity"] in ("error", "warning", "info")


def test_documented_schema_is_the_one_produced() -> None:
    check_schema(json.loads(json.dumps(diagnose(fake_inventory()).to_dict())))


def test_diagnose_is_pure_for_a_synthetic_machine() -> None:
    report = diagnose(fake_inventory(gpus=8, platform="win32"))
    assert report.plan is not None and report.plan.cross_device_ops == "hierarchical_copy"
    text = report.to_text()
    assert "GPU 0" in text and "[warning] B1" in text
    assert report.to_dict()["plan"]["kind"] == "mirrored"


# ------------------------------------------------------------ end to end on this machine


def run_doctor(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m tfplace ARGS`` in a fresh process that allocates GPU memory on demand."""
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tfplace", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **QUIET_ENV, **CHILD_GPU_ENV, **(env or {})},
    )


def build_words() -> str:
    """What the report calls the TensorFlow build installed here."""
    tf = tfplace.inventory().tensorflow
    assert tf is not None, "these end-to-end tests need TensorFlow"
    return (
        "CUDA build" if tf.is_cuda_build else "ROCm build" if tf.is_rocm_build else "CPU-only build"
    )


@pytest.mark.slow
def test_doctor_names_this_machines_build() -> None:
    proc = run_doctor("doctor")
    words = build_words()
    assert f"({words}" in proc.stdout
    if words == "CPU-only build":  # finding B2 says what to install for a GPU
        assert 'pip install "tfplace[gpu]"' in proc.stdout
    errors = "[error]" in proc.stdout
    assert proc.returncode == (EXIT_ERROR if errors else EXIT_OK), proc.stderr
    plain = run_doctor()
    assert plain.stdout.splitlines()[0] == "tfplace doctor"


@pytest.mark.slow
@pytest.mark.parametrize("args", [("doctor",), ("doctor", "--json"), ("doctor", "--env")])
def test_doctor_prints_no_tensorflow_startup_lines(args: tuple[str, ...]) -> None:
    proc = run_doctor(*args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode in (0, 1), proc.stderr
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, proc.stderr
    if args == ("doctor",):
        assert proc.stdout.startswith("tfplace doctor")


@pytest.mark.slow
def test_doctor_names_cuda_visible_devices_end_to_end() -> None:
    proc = run_doctor("doctor", "--json", env=CPU_ONLY_ENV)
    data = json.loads(proc.stdout)
    check_schema(data)
    assert proc.returncode == data["exit_code"], proc.stderr
    b7 = [f for f in data["findings"] if f["id"] == "B7"]
    assert b7 and "CUDA_VISIBLE_DEVICES='-1'" in b7[0]["what"]
    assert data["inventory"]["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert data["inventory"]["gpus"] == []  # CUDA hides every GPU before TensorFlow starts
    assert data["plan"]["devices"] == ["/CPU:0"]


@pytest.mark.slow
def test_doctor_verify_and_json_end_to_end() -> None:
    proc = run_doctor("--json", "--verify")
    data = json.loads(proc.stdout)
    check_schema(data)
    assert data["verify"] and all(r["ok"] for r in data["verify"]), data["verify"]
    devices = [r["device"].rsplit("/", 1)[-1] for r in data["verify"]]
    visible = [g for g in data["inventory"]["gpus"] if g["visible"]]
    assert devices == [f"device:GPU:{i}" for i in range(len(visible))] + ["device:CPU:0"]
    errors = any(f["severity"] == "error" for f in data["findings"])
    assert proc.returncode == data["exit_code"] == (EXIT_ERROR if errors else EXIT_OK)


@pytest.mark.slow
def test_doctor_env_block_end_to_end() -> None:
    proc = run_doctor("doctor", "--env")
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 9 and lines[0].startswith("- tfplace: ")
    # the same facts as this process sees (the child's environment has two more variables)
    assert lines[:8] == env_block(tfplace.inventory()).splitlines()[:8]
    tf = tfplace.inventory().tensorflow
    assert tf is not None and f"- TensorFlow: {tf.version}" in proc.stdout


@pytest.mark.slow
def test_doctor_error_finding_sets_exit_code() -> None:
    proc = run_doctor("doctor", env={"TF_CONFIG": '{"cluster": 3}'})
    assert proc.returncode == EXIT_ERROR
    assert "[error] F3" in proc.stdout


@pytest.mark.slow
def test_doctor_sees_a_real_cgroup_quota() -> None:
    group = Path(f"/sys/fs/cgroup/cpu/tfplace-test-{os.getpid()}")
    try:
        group.mkdir()
    except OSError as err:
        pytest.skip(f"cannot create a cgroup v1 CPU group here: {err}")
    try:
        (group / "cpu.cfs_quota_us").write_text("50000")  # half a core
    except OSError as err:
        with contextlib.suppress(OSError):
            group.rmdir()  # leave no empty group behind
        pytest.skip(f"cannot set a CPU quota on a cgroup v1 group here: {err}")
    try:
        proc = run_doctor(
            "--json",
            prefix=["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"],
        )
        cpu = json.loads(proc.stdout)["inventory"]["cpu"]
        assert cpu["quota_cores"] == 0.5
        assert cpu["usable_cores"] == 1
        if cpu["host_cores"] >= 2:
            assert any(f["id"] == "G1" for f in json.loads(proc.stdout)["findings"])
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def test_doctor_shows_the_cpu_change_set_without_applying_it() -> None:
    inv = fake_inventory(cores=2)
    report = diagnose(inv)
    assert [(c.setting, c.after) for c in report.cpu_changes] == [
        ("intra-op threads", 2),
        ("inter-op threads", 2),
    ]
    assert 'it would change: intra-op threads default -> 2 (threads="auto"' in report.to_text()
    done = fake_inventory(
        cores=2, env={"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2"}
    )
    assert diagnose(done).cpu_changes == ()
    assert "it would change: nothing (already in force)" in diagnose(done).to_text()


def test_verify_reports_an_error_without_a_message_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception with an empty message is reported like any other failure; it used to
    escape as IndexError and stop verification of the remaining devices."""
    from tfplace import _tf

    monkeypatch.setattr(_tf, "logical_device_names", lambda kind=None: [f"/{kind}:0"])
    calls = []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        raise RuntimeError("")

    monkeypatch.setattr(_tf, "device_check", failing)
    results = verify()
    assert [(r.device, r.ok, r.error) for r in results] == [
        ("/GPU:0", False, "RuntimeError: "),
        ("/CPU:0", False, "RuntimeError: "),
    ]
    assert len(calls) == 2
