"""The per-library load check, on fake ``site-packages/nvidia/*/lib`` folders.

No CUDA library exists on a CPU machine, so the folders are made here: a working library is a
copy of a real shared object of this Python (an extension module, renamed to the CUDA soname);
a broken one is a text file under the soname. The child process loads them exactly as it would
load the real ones.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from tfplace.doctor import _cuda_libs
from tfplace.doctor._cuda_libs import (
    check_libraries,
    sonames,
    tensorflow_site,
    wheel_cuda_major,
    wheel_for,
)

pytestmark = [
    pytest.mark.pure,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="TensorFlow loads CUDA libraries on Linux only"
    ),
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu-host"
#: Where each library lives in the CUDA 12 wheels (site-packages/nvidia/<folder>/lib).
FOLDERS = {
    "cudart": "cuda_runtime",
    "cublasLt": "cublas",
    "cublas": "cublas",
    "cufft": "cufft",
    "cusparse": "cusparse",
    "cusolver": "cusolver",
    "cudnn": "cudnn",
    "nccl": "nccl",
}


def real_shared_object() -> Path:
    """A loadable ELF shared object of this Python (an extension module)."""
    for name in ("_ctypes", "_json", "_struct", "_decimal", "select"):
        path = getattr(importlib.import_module(name), "__file__", None)
        if path and ".so" in path:
            return Path(path)
    pytest.skip("this Python has no extension module in a shared object")


def fake_site(tmp_path: Path, *, leave_out: str = "", broken: str = "") -> Path:
    """site-packages with the CUDA 12 wheels' folders, each library a loadable copy, except
    ``leave_out`` (absent) and ``broken`` (a file that is not a library)."""
    site = tmp_path / "site-packages"
    for lib, soname in sonames("12.5.1", "9"):
        folder = site / "nvidia" / FOLDERS[lib] / "lib"
        folder.mkdir(parents=True, exist_ok=True)
        if lib == leave_out:
            continue
        if lib == broken:
            (folder / soname).write_text("not a shared library\n")
        else:
            shutil.copy(real_shared_object(), folder / soname)
    return site


def only_folders(**kw: object) -> dict[str, object]:
    """Arguments that make the check see nothing but the folders the test made."""
    return {"loader_fallback": False, "env": {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": ""}, **kw}


def test_sonames_per_cuda_major() -> None:
    assert sonames("12.5.1", "9") == [
        ("cudart", "libcudart.so.12"),
        ("cublasLt", "libcublasLt.so.12"),
        ("cublas", "libcublas.so.12"),
        ("cufft", "libcufft.so.11"),
        ("cusparse", "libcusparse.so.12"),
        ("cusolver", "libcusolver.so.11"),
        ("cudnn", "libcudnn.so.9"),
        ("nccl", "libnccl.so.2"),
    ]
    assert dict(sonames("13.0", "9"))["cufft"] == "libcufft.so.12"
    assert sonames("10.1", "7") == [] and sonames(None, None) == []


def test_all_libraries_load_from_the_wheel_folders(tmp_path: Path) -> None:
    site = fake_site(tmp_path)
    checks = check_libraries("12.5.1", "9", site=site, **only_folders())  # type: ignore[arg-type]
    assert [c.soname for c in checks] == [s for _, s in sonames("12.5.1", "9")]
    assert all(c.ok and c.fix == "" for c in checks), [c for c in checks if not c.ok]
    assert all(c.path and c.path.startswith(str(site / "nvidia")) for c in checks)


def test_missing_cublaslt_is_named_with_its_wheel(tmp_path: Path) -> None:
    site = fake_site(tmp_path, leave_out="cublasLt")
    cu13 = site / "nvidia" / "cu13" / "lib"  # a CUDA 13 wheel's library next to them
    cu13.mkdir(parents=True)
    shutil.copy(real_shared_object(), cu13 / "libcublasLt.so.13")
    checks = check_libraries(
        "12.5.1",
        "9",
        tf_version="2.21.0",
        site=site,
        **only_folders(),  # type: ignore[arg-type]
    )
    failed = [c for c in checks if not c.ok]
    assert [c.soname for c in failed] == ["libcublasLt.so.12"]
    (bad,) = failed
    assert bad.path is None
    assert str(site / "nvidia" / "cublas" / "lib") in bad.searched
    assert bad.other_majors == (str(cu13 / "libcublasLt.so.13"),)
    assert "pip install nvidia-cublas-cu12" in bad.fix
    assert 'pip install "tensorflow[and-cuda]==2.21.0"' in bad.fix
    assert "another major version" in bad.fix


def test_broken_library_file_is_named_with_its_path(tmp_path: Path) -> None:
    site = fake_site(tmp_path, broken="cublas")
    checks = {c.library: c for c in check_libraries("12.5.1", "9", site=site, **only_folders())}  # type: ignore[arg-type]
    bad = checks["cublas"]
    assert not bad.ok
    assert bad.path == str(site / "nvidia" / "cublas" / "lib" / "libcublas.so.12")
    assert bad.error and ("ELF" in bad.error or "too short" in bad.error), bad.error
    assert "pip install --force-reinstall nvidia-cublas-cu12" in bad.fix
    assert checks["cublasLt"].ok  # the other file of the same wheel folder loads


def test_ld_library_path_comes_first_and_the_fix_says_so(tmp_path: Path) -> None:
    site = fake_site(tmp_path)  # a working cuBLAS in the wheel folder ...
    shadow = tmp_path / "old-cuda"  # ... shadowed by a broken one through LD_LIBRARY_PATH
    shadow.mkdir()
    (shadow / "libcublas.so.12").write_text("stale\n")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(shadow)}
    checks = {
        c.library: c
        for c in check_libraries("12.5.1", "9", site=site, env=env, loader_fallback=False)
    }
    bad = checks["cublas"]
    assert bad.path == str(shadow / "libcublas.so.12")
    assert bad.searched[0] == str(shadow)
    assert f"remove {shadow} from LD_LIBRARY_PATH" in bad.fix


def test_missing_dependency_names_the_dependency_wheel() -> None:
    result = {
        "library": "cusparse",
        "soname": "libcusparse.so.12",
        "path": "/site/nvidia/cusparse/lib/libcusparse.so.12",
        "error": "libnvJitLink.so.12: cannot open shared object file: No such file or directory",
        "others": [],
    }
    fix = _cuda_libs._fix(result, 12, "2.21.0", [])
    assert "needs libnvJitLink.so.12" in fix and "pip install nvidia-nvjitlink-cu12" in fix


def test_loader_cache_is_asked_last(tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("the loaded path is read from /proc/self/maps")
    (check,) = check_libraries("12.5.1", "9", site=tmp_path, libraries=[("m", "libm.so.6")])
    # libm is part of glibc: the loader finds it in its cache, not in a wheel folder
    assert check.ok and check.path and Path(check.path).name.startswith("libm")


def test_wheel_majors_of_the_captured_host() -> None:
    doc = json.loads((FIXTURES / "h100-no-tensorflow-doctor.json").read_text())
    majors = {n: wheel_cuda_major(n, v) for n, v in doc["tensorflow"]["distributions"].items()}
    assert majors.pop("nvidia-ml-py") is None  # NVML's binding is no CUDA library
    assert set(majors.values()) == {13}, majors  # every CUDA wheel there is CUDA 13's
    assert wheel_cuda_major("nvidia-cudnn-cu12", "9.3.0.75") == 12
    assert wheel_cuda_major("tensorflow", "2.21.0") is None
    assert wheel_for("cusolver", 12) == "nvidia-cusolver-cu12"


def test_this_machines_tensorflow_is_checked_as_its_build_says() -> None:
    """Any machine: the check covers exactly the libraries this TensorFlow's build opens."""
    import tfplace

    tf = tfplace.inventory().tensorflow
    assert tf is not None
    site = tensorflow_site()
    assert site is not None and (site / "tensorflow").is_dir()
    if not tf.is_cuda_build:
        pytest.skip(f"this TensorFlow ({tf.version}) is a CPU-only build: it opens no CUDA library")
    wanted = sonames(tf.cuda_version, tf.cudnn_version)
    assert wanted  # a CUDA build opens CUDA's libraries
    checks = check_libraries(tf.cuda_version, tf.cudnn_version, libraries=wanted)
    assert [c.soname for c in checks] == [s for _, s in wanted]
    assert all(c.ok or c.fix for c in checks)  # every failure says what to do
    if tfplace.inventory().visible_gpus:  # TensorFlow can use the GPU only if all of them load
        assert all(c.ok for c in checks), [(c.soname, c.fix) for c in checks if not c.ok]


def test_a_failing_child_says_why_and_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A child that dies before its report (here: a sitecustomize that exits) used to leave
    # "Expecting value: line 1 column 1" and nothing of what the child said; its stderr is
    # captured and its last line is now part of the error, never on this process's stderr.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nsys.stderr.write('child: cannot start here\\n')\n"
        "sys.stderr.flush()\nos._exit(3)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    (check,) = check_libraries(
        "12.5.1", "9", site=tmp_path, libraries=[("m", "libm.so.6")], env=env
    )
    assert not check.ok
    assert (check.error or "").startswith("the check itself failed: ")
    assert "the child said: child: cannot start here" in (check.error or "")
    assert "cannot start here" not in capfd.readouterr().err
