"""The per-library load check: which CUDA library TensorFlow cannot load, from where, and the fix.

TensorFlow's ``Cannot dlopen some GPU libraries`` does not say which library failed. This module
loads each library a CUDA build of TensorFlow opens (cudart, cuBLAS, cuBLASLt, cuFFT, cuSOLVER,
cuSPARSE, cuDNN and NCCL on Linux, under the sonames of the build's CUDA major version) the way
the dynamic loader finds it for TensorFlow, in a **child process** (``ctypes.CDLL``), so nothing
is loaded into the caller:

1. the folders of ``LD_LIBRARY_PATH``: TensorFlow's libraries carry their search folders as
   ``DT_RUNPATH``, which the loader reads after ``LD_LIBRARY_PATH``;
2. the CUDA wheels' folders next to the ``tensorflow`` package, ``site-packages/nvidia/*/lib``
   (the ``$ORIGIN/../nvidia/*/lib`` entries of that run path);
3. the loader's own cache and system folders (``ldconfig -p``).

The first file found is the one loaded, as the loader does. :func:`sonames` and
:func:`wheel_cuda_major` are pure; :func:`check_libraries` runs the child.

Example:
    >>> [s for _, s in sonames("12.5.1", "9")][:4]
    ['libcudart.so.12', 'libcublasLt.so.12', 'libcublas.so.12', 'libcufft.so.11']
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CUDA_WHEEL_BASES",
    "LibCheck",
    "check_libraries",
    "sonames",
    "tensorflow_site",
    "wheel_cuda_major",
    "wheel_for",
]

#: ``(library, wheel base name, {CUDA major: soname})``, in the order they are loaded. cuDNN
#: and NCCL have their own versions (see :func:`sonames`).
_LIBRARIES: tuple[tuple[str, str, dict[int, str]], ...] = (
    ("cudart", "cuda-runtime", {11: "libcudart.so.11.0", 12: "libcudart.so.12", 13: "libcudart.so.13"}),  # noqa: E501
    ("cublasLt", "cublas", {11: "libcublasLt.so.11", 12: "libcublasLt.so.12", 13: "libcublasLt.so.13"}),  # noqa: E501
    ("cublas", "cublas", {11: "libcublas.so.11", 12: "libcublas.so.12", 13: "libcublas.so.13"}),
    ("cufft", "cufft", {11: "libcufft.so.10", 12: "libcufft.so.11", 13: "libcufft.so.12"}),
    ("cusparse", "cusparse", {11: "libcusparse.so.11", 12: "libcusparse.so.12", 13: "libcusparse.so.12"}),  # noqa: E501
    ("cusolver", "cusolver", {11: "libcusolver.so.11", 12: "libcusolver.so.11", 13: "libcusolver.so.12"}),  # noqa: E501
)  # fmt: skip

#: Library-name prefix of a dependency -> the wheel base that ships it.
_DEPENDENCY_WHEELS: tuple[tuple[str, str], ...] = (
    ("libnvJitLink", "nvjitlink"),
    ("libcudart", "cuda-runtime"),
    ("libcublas", "cublas"),
    ("libcusparse", "cusparse"),
    ("libcufft", "cufft"),
    ("libcudnn", "cudnn"),
    ("libnccl", "nccl"),
    ("libnvrtc", "cuda-nvrtc"),
    ("libcupti", "cuda-cupti"),
    ("libcurand", "curand"),
)

#: Base names (``nvidia-<base>[-cuNN]``) of the CUDA component wheels.
CUDA_WHEEL_BASES: frozenset[str] = frozenset(
    {
        "cublas",
        "cuda-runtime",
        "cuda-nvrtc",
        "cuda-cupti",
        "cuda-nvcc",
        "nvjitlink",
        "nvtx",
        "cufft",
        "curand",
        "cusolver",
        "cusparse",
        "cusparselt",
        "cufile",
        "cudnn",
        "nccl",
        "nvshmem",
    }
)
#: Wheels whose own major version is the CUDA major version they belong to.
_VERSION_IS_CUDA = frozenset(
    {"cublas", "cuda-runtime", "cuda-nvrtc", "cuda-cupti", "cuda-nvcc", "nvjitlink", "nvtx"}
)


@dataclass(frozen=True)
class LibCheck:
    """The result of loading one CUDA library.

    Attributes:
        library: ``"cublas"``, ``"cudnn"``, ...
        soname: the file name TensorFlow opens, e.g. ``"libcublas.so.12"``.
        ok: whether it loaded.
        path: the file it loaded from, or the file that failed to load; None when none was
            found.
        error: the loader's message when it failed.
        searched: the folders looked in before the loader's cache, in order.
        other_majors: files of the same library for another CUDA major found in those
            folders (e.g. ``.../nvidia/cu13/lib/libcublas.so.13``): present, but not used.
        fix: what to do when it failed; empty when it loaded.
    """

    library: str
    soname: str
    ok: bool
    path: str | None = None
    error: str | None = None
    searched: tuple[str, ...] = ()
    other_majors: tuple[str, ...] = ()
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["searched"] = list(self.searched)
        data["other_majors"] = list(self.other_majors)
        return data


def _major(version: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def sonames(
    cuda_version: str | None, cudnn_version: str | None, *, nccl: bool = True
) -> list[tuple[str, str]]:
    """``(library, soname)`` for each CUDA library a TensorFlow build with these versions opens.

    Args:
        cuda_version: the build's CUDA version (``get_build_info()["cuda_version"]``).
        cudnn_version: the build's cuDNN version (``"9"``).
        nccl: include NCCL (Linux builds use it for multi-GPU all-reduce).

    Returns:
        The list in load order; empty for an unknown CUDA major.

    Example:
        >>> sonames("12.5.1", "9")[-2:]
        [('cudnn', 'libcudnn.so.9'), ('nccl', 'libnccl.so.2')]
    """
    major = _major(cuda_version)
    if major is None or major not in _LIBRARIES[0][2]:
        return []
    found = [(lib, names[major]) for lib, _, names in _LIBRARIES]
    if (cudnn := _major(cudnn_version)) is not None:
        found.append(("cudnn", f"libcudnn.so.{cudnn}"))
    if nccl:
        found.append(("nccl", "libnccl.so.2"))
    return found


def wheel_for(library: str, cuda_major: int) -> str:
    """The pip distribution that ships ``library`` for a CUDA major version.

    Example:
        >>> wheel_for("cublasLt", 12), wheel_for("cudart", 12), wheel_for("nccl", 12)
        ('nvidia-cublas-cu12', 'nvidia-cuda-runtime-cu12', 'nvidia-nccl-cu12')
    """
    base = {lib: b for lib, b, _ in _LIBRARIES}.get(library, library)
    return f"nvidia-{base}-cu{cuda_major}"


def wheel_cuda_major(name: str, version: str) -> int | None:
    """The CUDA major version a ``nvidia-*`` distribution belongs to, or None if not a CUDA one.

    ``-cuNN`` names say it; from CUDA 13 on NVIDIA also publishes the toolkit components
    without the suffix (``nvidia-cublas 13.1.0.3``): their version's major is the CUDA major for
    the components versioned with CUDA, and 13 for the others (cuFFT 12.0 is CUDA 13's).

    Example:
        >>> wheel_cuda_major("nvidia-cudnn-cu13", "9.19"), wheel_cuda_major("nvidia-cublas", "13.1")
        (13, 13)
        >>> wheel_cuda_major("nvidia-cufft-cu12", "11.2.3.61")
        12
        >>> wheel_cuda_major("nvidia-cufft", "12.0.0.61"), wheel_cuda_major("nvidia-ml-py", "13.6")
        (13, None)
    """
    name = name.lower().replace("_", "-")
    if not name.startswith("nvidia-"):
        return None
    base = name[len("nvidia-") :]
    m = re.fullmatch(r"(.+)-cu(\d+)", base)
    if m:
        return int(m.group(2)) if m.group(1) in CUDA_WHEEL_BASES else None
    if base not in CUDA_WHEEL_BASES:
        return None
    return _major(version) if base in _VERSION_IS_CUDA else 13


def tensorflow_site() -> Path | None:
    """The folder holding the ``tensorflow`` package (``site-packages``), without importing it."""
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


#: The child: loads each library as the loader would for TensorFlow and reports as JSON.
_CHILD = r"""
import ctypes, json, os, sys
wanted, wheel_dirs, fallback = json.loads(sys.argv[1])
env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
folders = env_dirs + [d for d in wheel_dirs if d not in env_dirs]
def loaded_from(soname):
    stem = soname.split(".so")[0] + ".so"
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if "/" in line else ""
                if os.path.basename(path).startswith(stem):
                    return path
    except OSError:
        pass
    return None
out = []
for lib, soname in wanted:
    path = next((p for p in (os.path.join(d, soname) for d in folders) if os.path.exists(p)), None)
    stem = soname.split(".so")[0] + ".so."
    others = sorted(os.path.join(d, n) for d in folders if os.path.isdir(d) for n in os.listdir(d)
                    if n.startswith(stem) and n != soname and n.count(".") == soname.count("."))
    res = {"library": lib, "soname": soname, "path": path, "others": others, "searched": folders}
    if path is None and not fallback:
        res.update(ok=False, error="not found in " + (":".join(folders) or "no folder"))
    else:
        try:
            ctypes.CDLL(path or soname, mode=ctypes.RTLD_GLOBAL)
            res.update(ok=True, error=None, path=path or loaded_from(soname))
        except OSError as err:
            res.update(ok=False, error=str(err))
    out.append(res)
print(json.dumps(out))
"""


def _wheel_dirs(site: Path | None) -> list[str]:
    if site is None:
        return []
    return sorted(str(p) for p in (site / "nvidia").glob("*/lib") if p.is_dir())


def _fix(
    res: Mapping[str, Any], cuda_major: int, tf_version: str | None, env_dirs: Sequence[str]
) -> str:
    lib, soname, path, error = res["library"], res["soname"], res["path"], res["error"] or ""
    wheel = wheel_for(lib, cuda_major)
    whole = f'pip install "tensorflow[and-cuda]=={tf_version}"' if tf_version else wheel
    missing = re.search(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object file", error)
    if missing and missing.group(1) != soname:
        dep = missing.group(1)
        base = next((b for prefix, b in _DEPENDENCY_WHEELS if dep.startswith(prefix)), None)
        dep_wheel = f"nvidia-{base}-cu{cuda_major}" if base else dep
        return (
            f"{soname} was found ({path}) but needs {dep}, which the loader cannot find: "
            f"pip install {dep_wheel} (or {whole} for the whole matching set)."
        )
    if path is not None:
        where = os.path.dirname(path)
        via_env = where in env_dirs
        return f"{path} exists but does not load ({error.strip()}). " + (
            f"It is found through LD_LIBRARY_PATH: remove {where} from LD_LIBRARY_PATH, or "
            "put a working copy there."
            if via_env
            else f"Reinstall it: pip install --force-reinstall {wheel}."
        )
    others = res.get("others") or []
    extra = (
        f" Only {', '.join(others)} is there: a CUDA wheel of another major version, which this "
        "TensorFlow does not load."
        if others
        else ""
    )
    return (
        f"{soname} is not installed where TensorFlow looks: pip install {wheel} (or {whole})."
        + extra
    )


def check_libraries(
    cuda_version: str | None,
    cudnn_version: str | None,
    *,
    tf_version: str | None = None,
    site: Path | None = None,
    libraries: Sequence[tuple[str, str]] | None = None,
    loader_fallback: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[LibCheck, ...]:
    """Load each CUDA library a TensorFlow build opens, in a child process; report each.

    Args:
        cuda_version: the build's CUDA version, e.g. ``"12.5.1"``.
        cudnn_version: the build's cuDNN version, e.g. ``"9"``.
        tf_version: TensorFlow's version, for the ``tensorflow[and-cuda]==...`` fix.
        site: the folder holding the ``tensorflow`` package; its ``nvidia/*/lib`` folders are
            searched (default: where ``tensorflow`` is installed, found without importing it).
        libraries: ``(library, soname)`` pairs to check instead of :func:`sonames`'s.
        loader_fallback: also ask the loader's cache and system folders when no folder has the
            file (tests turn this off to describe only the folders they made).
        env: the child's environment (default: this process's); ``LD_LIBRARY_PATH`` counts.
        timeout: seconds before the child is given up.

    Returns:
        One :class:`LibCheck` per library, in load order.

    Example:
        >>> # Skipped: the answer depends on the machine (libm.so.6 exists on glibc Linux only).
        >>> check_libraries("12.5.1", "9", libraries=[("m", "libm.so.6")])[0].ok  # doctest: +SKIP
        True
    """
    wanted = list(libraries) if libraries is not None else sonames(cuda_version, cudnn_version)
    major = _major(cuda_version) or 12
    site = site if site is not None else tensorflow_site()
    payload = json.dumps([wanted, _wheel_dirs(site), loader_fallback])
    child_env = dict(env) if env is not None else dict(os.environ)
    env_dirs = [d for d in child_env.get("LD_LIBRARY_PATH", "").split(":") if d]
    stderr = ""
    try:
        # the child's stderr is captured: a library's own start-up lines never reach the
        # terminal, and when the child fails, its last line says why
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, payload],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=child_env,
        )
        stderr = proc.stderr
        results = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        last = (stderr.strip().splitlines() or [""])[-1][:300]
        why = f"{err}; the child said: {last}" if last else str(err)
        return tuple(
            LibCheck(lib, soname, False, error=f"the check itself failed: {why}")
            for lib, soname in wanted
        )
    return tuple(
        LibCheck(
            library=r["library"],
            soname=r["soname"],
            ok=bool(r["ok"]),
            path=r["path"],
            error=r["error"],
            searched=tuple(r["searched"]),
            other_majors=tuple(r["others"]),
            fix="" if r["ok"] else _fix(r, major, tf_version, env_dirs),
        )
        for r in results
    )
