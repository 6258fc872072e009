"""The doctor's rules: a pure function from an :class:`~tfplace.Inventory` to findings.

Each rule reads facts only (no TensorFlow call, no environment read) and returns one
:class:`Finding` (severity, what, why, fix, troubleshooting link) or None. :data:`RULES` lists
them in report order; :func:`findings` applies them all.

Example:
    >>> from tfplace.testing import fake_inventory
    >>> [f.id for f in findings(fake_inventory(env={"CUDA_VISIBLE_DEVICES": "-1"}))]
    ['B7', 'B2', 'G2']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from tfplace._decide.precision import cc_text, parse_arch, slow_policy
from tfplace._decide.strategy import cluster_of
from tfplace._decide.threads import auto_threads
from tfplace._facts.inventory import GPUInfo, Inventory
from tfplace._facts.nvidia import (
    CUDA_MAJOR_MIN_DRIVER,
    cuda_for_driver,
    driver_at_least,
    min_driver,
)
from tfplace.doctor._cuda_libs import LibCheck, wheel_cuda_major
from tfplace.errors import TfplaceError

__all__ = [
    "GPU_BUILD_CUDA_MAJOR",
    "RULES",
    "Finding",
    "Rule",
    "Severity",
    "coverage",
    "findings",
    "install_line",
    "library_findings",
    "most_severe_first",
]

Severity = Literal["error", "warning", "info"]

_DOCS = "troubleshooting.md"
#: The CUDA major version of the Linux GPU builds ``tfplace[gpu]`` installs
#: (``tensorflow[and-cuda]``: CUDA 12 from TensorFlow 2.15 through 2.21), used to judge CUDA
#: wheels when TensorFlow is absent or a CPU-only build.
GPU_BUILD_CUDA_MAJOR = 12
_FLAVOURS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-rocm",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "intel-tensorflow",
    "tf-nightly",
    "tf-nightly-cpu",
    "tf-nightly-gpu",
)


@dataclass(frozen=True)
class Finding:
    """One thing the doctor noticed.

    Attributes:
        id: the troubleshooting entry, e.g. ``"B7"``.
        severity: ``"error"`` (TensorFlow cannot work as intended), ``"warning"`` (it works,
            but not as well as it could) or ``"info"``.
        what: what was found.
        why: why it matters.
        fix: what to do.
    """

    id: str
    severity: Severity
    what: str
    why: str
    fix: str

    @property
    def doc(self) -> str:
        """The troubleshooting entry for this finding (relative link in the docs)."""
        return f"{_DOCS}#{self.id.lower()}"

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dictionary."""
        return {**asdict(self), "doc": self.doc}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)[:2]
    return tuple(int(p) for p in parts)


def _cuda_build(inv: Inventory) -> bool:
    return inv.tensorflow is not None and inv.tensorflow.is_cuda_build


def _tf_distributions(inv: Inventory) -> list[str]:
    """The installed distributions that provide the ``tensorflow`` package."""
    return [name for name, _ in inv.packages if name in _FLAVOURS]


def _nvidia_wheels(inv: Inventory) -> list[str]:
    return [name for name, _ in inv.packages if name.startswith("nvidia-")]


def _driver_gpus(inv: Inventory) -> tuple[GPUInfo, ...]:
    """Every GPU the NVIDIA driver sees, else the ones TensorFlow lists."""
    return inv.nvidia.gpus or inv.gpus


def _gpu_here(inv: Inventory) -> bool:
    return bool(_driver_gpus(inv)) or inv.nvidia_driver is not None


def _gpu_words(g: GPUInfo) -> str:
    """``NVIDIA H100 80GB HBM3 (81559 MiB, compute capability 9.0)``."""
    facts = [f"{g.memory_mb} MiB"] if g.memory_mb else []
    if g.compute_capability:
        facts.append(f"compute capability {cc_text(g.compute_capability)}")
    return f"{g.name or 'GPU'}" + (f" ({', '.join(facts)})" if facts else "")


def _driver_words(inv: Inventory) -> str:
    """``580.159.04; it sees GPU 0: NVIDIA H100 ...``, or the raw version line."""
    nv = inv.nvidia
    words = nv.driver_version or inv.nvidia_driver or "unknown version"
    return words + (f"; it sees {_gpus_words(nv.gpus)}" if nv.gpus else "")


def _gpus_words(gpus: tuple[GPUInfo, ...]) -> str:
    return "; ".join(f"GPU {g.index}: {_gpu_words(g)}" for g in gpus)


def install_line(inv: Inventory) -> str:
    """The one pip command that installs TensorFlow right for this machine.

    ``tfplace[gpu]`` (``tensorflow[and-cuda]`` with its CUDA 12 wheels, and NVML) on Linux with
    an NVIDIA GPU or driver, ``tfplace[cpu]`` (``tensorflow-cpu``) on Linux without one, and
    ``tfplace[tensorflow]`` elsewhere (macOS, Windows: the plain ``tensorflow`` wheel).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> install_line(fake_inventory(gpus=1)), install_line(fake_inventory(platform="darwin"))
        ('pip install "tfplace[gpu]"', 'pip install "tfplace[tensorflow]"')
    """
    if inv.platform.startswith("linux"):
        extra = "gpu" if _gpu_here(inv) else "cpu"
        return f'pip install "tfplace[{extra}]"'
    return 'pip install "tfplace[tensorflow]"'


# ------------------------------------------------------------------------------ rules


def _tensorflow_missing(inv: Inventory, _p: str | None) -> Finding | None:
    if inv.tensorflow is not None:
        return None
    gpus = _driver_gpus(inv)
    here = f" The NVIDIA driver sees {_gpus_words(gpus)}." if gpus else ""
    line = install_line(inv)
    return Finding(
        "B0",
        "error",
        "TensorFlow is not installed (import tensorflow failed)." + here,
        "Nothing can run without it."
        + (
            " tfplace[gpu] installs TensorFlow with the CUDA libraries it loads "
            "(tensorflow[and-cuda]) and NVML for the GPU facts."
            if "[gpu]" in line
            else ""
        ),
        line,
    )


def _conflicting(inv: Inventory, _p: str | None) -> Finding | None:
    installed = _tf_distributions(inv)
    if len(installed) < 2:
        return None
    return Finding(
        "B2",
        "error",
        f"Several TensorFlow distributions are installed: {', '.join(installed)}.",
        "They install the same 'tensorflow' package directory; whichever was installed last "
        "silently wins, and a CPU-only one hides the GPUs.",
        f"Uninstall all of them (pip uninstall {' '.join(installed)}), then install one: "
        '"tensorflow[and-cuda]" for NVIDIA GPUs, "tensorflow-cpu" for CPUs.',
    )


def _cpu_only_build(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is None or tf.is_cuda_build or tf.is_rocm_build:
        return None
    gpu_here = _gpu_here(inv)
    gpus = _driver_gpus(inv)
    seen = (
        f", and the NVIDIA driver sees {_gpus_words(gpus)}."
        if gpus
        else ", and an NVIDIA driver is loaded on this machine."
    )
    installed = _tf_distributions(inv) or ["tensorflow-cpu"]
    line = f"pip uninstall -y {' '.join(installed)} && {install_line(inv)}"
    return Finding(
        "B2",
        "warning" if gpu_here else "info",
        f"This TensorFlow {tf.version} is a CPU-only build (is_built_with_cuda() is False).",
        "It cannot use a GPU"
        + (seen if gpu_here else ".")
        + (" It is usually 'tensorflow-cpu', or 'tensorflow' on a platform without GPU builds."),
        line
        if gpu_here and inv.platform.startswith("linux")
        else "Nothing needs to change on a machine without a GPU. On Linux with an NVIDIA GPU: "
        'pip install "tfplace[gpu]" (it installs "tensorflow[and-cuda]").',
    )


def _windows(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is None or inv.platform != "win32" or _version_tuple(tf.version) < (2, 11):
        return None
    return Finding(
        "B1",
        "warning",
        f"Native Windows with TensorFlow {tf.version}.",
        "TensorFlow publishes no GPU builds for native Windows after 2.10 (TF#60156), so it "
        "runs on the CPU only.",
        'Use WSL2 (pip install "tensorflow[and-cuda]" inside it), or TensorFlow 2.10 with '
        "CUDA 11.2 / cuDNN 8.1, or the DirectML plugin.",
    )


def _cvd(inv: Inventory, _p: str | None) -> Finding | None:
    if not inv.gpus_hidden_by_env:
        return None
    value = inv.env_value("CUDA_VISIBLE_DEVICES")
    return Finding(
        "B7",
        "warning",
        f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU from TensorFlow.",
        "CUDA reads the variable when TensorFlow starts; no GPU can be used in this process.",
        "Unset it, or list the GPUs to use (CUDA_VISIBLE_DEVICES=0,1), before TensorFlow is "
        "imported.",
    )


def _gpu_not_found(inv: Inventory, _p: str | None) -> Finding | None:
    if not _cuda_build(inv) or inv.gpus or inv.gpus_hidden_by_env or inv.platform != "linux":
        return None
    tf = inv.tensorflow
    assert tf is not None
    if inv.nvidia_driver is None:
        return Finding(
            "B6",
            "info",
            "No NVIDIA driver is loaded (no /proc/driver/nvidia/version).",
            "This is a CUDA build of TensorFlow, but the machine shows no NVIDIA GPU, so it "
            "runs on the CPU.",
            "Nothing to do on a machine without a GPU. Otherwise install the NVIDIA driver "
            "(nvidia-smi must work) and check that the container was started with GPU access "
            "(docker --gpus all).",
        )
    wheels = _nvidia_wheels(inv)
    if wheels:
        return Finding(
            "B3",
            "warning",
            f"NVIDIA driver loaded ({_driver_words(inv)}) and the CUDA wheels are installed "
            f"({', '.join(wheels[:3])}{', ...' if len(wheels) > 3 else ''}), but TensorFlow "
            "registered no GPU.",
            "TensorFlow could not load the CUDA libraries from the wheels ('Cannot dlopen some "
            "GPU libraries ... Skipping registering GPU devices', TF#63362), usually because "
            "LD_LIBRARY_PATH points at other CUDA libraries or the wheel versions do not match "
            "this TensorFlow.",
            'Reinstall with pip install --force-reinstall "tensorflow[and-cuda]=='
            + tf.version
            + "\" so the nvidia-* wheels match, unset LD_LIBRARY_PATH (or put the wheels' "
            "site-packages/nvidia/*/lib directories first), and run with "
            "TF_CPP_MAX_VLOG_LEVEL=3 to see which library fails to load (tfplace doctor's "
            "library check names it: B10).",
        )
    return Finding(
        "B4",
        "warning",
        f"NVIDIA driver loaded ({_driver_words(inv)}), but TensorFlow registered no GPU and "
        "no CUDA wheels are installed.",
        f"This TensorFlow needs CUDA {tf.cuda_version} and cuDNN {tf.cudnn_version} libraries "
        "('Could not load dynamic library libcudnn.so...').",
        'pip install "tensorflow[and-cuda]" to get matching libraries, or install that CUDA '
        "and cuDNN and add their lib directories to LD_LIBRARY_PATH; run with "
        "TF_CPP_MAX_VLOG_LEVEL=3 to see which library fails to load.",
    )


def coverage(cc: tuple[int, int], archs: tuple[str, ...]) -> str:
    """How a build's architectures cover a GPU: ``"sass"``, ``"ptx"`` or ``"none"``.

    Machine code (``sm_XY``) runs on GPUs of the same major version and an equal or higher
    minor one; PTX (``compute_XY``) is compiled by the driver for any GPU at or above XY (CUDA
    C Programming Guide, "Binary Compatibility" and "PTX Compatibility").

    Example:
        >>> archs = ("sm_60", "sm_70", "sm_80", "sm_89", "compute_90")
        >>> coverage((8, 6), archs), coverage((9, 0), archs), coverage((5, 2), archs)
        ('sass', 'ptx', 'none')
    """
    sass = [a for c in archs if c.startswith("sm_") and (a := parse_arch(c))]
    ptx = [a for c in archs if c.startswith("compute_") and (a := parse_arch(c))]
    if any(a[0] == cc[0] and a <= cc for a in sass):
        return "sass"
    if any(a <= cc for a in ptx):
        return "ptx"
    return "none"


_CACHE_FIX = (
    "Keep the driver's JIT cache between runs and large enough for TensorFlow's kernels: "
    "CUDA_CACHE_MAXSIZE=4294967296 (4 GiB, the largest allowed; the default is smaller), and "
    "a CUDA_CACHE_PATH that outlives the container (default ~/.nv/ComputeCache)."
)


def _gpu_newer(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is None or not tf.compute_capabilities:
        return None
    archs = tuple(tf.compute_capabilities)
    built = [cc for cc in (parse_arch(c) for c in archs) if cc]
    if not built:
        return None
    newest = max(built)
    judged = [
        (g, cc, coverage(cc, archs)) for g in inv.visible_gpus if (cc := g.compute_capability)
    ]
    for g, cc, cov in judged:
        if cov == "none":
            return Finding(
                "B8",
                "warning",
                f"GPU {g.index} ({g.name or 'GPU'}) has compute capability {cc_text(cc)}; this "
                f"TensorFlow carries no machine code or PTX that can run on it "
                f"({', '.join(archs)}).",
                "TensorFlow ignores the GPU (or fails with 'no kernel image is available for "
                "execution on the device').",
                "Use a TensorFlow build that lists this compute capability, or another GPU.",
            )
    for g, cc, cov in judged:
        if cov == "ptx" and cc > newest:
            return Finding(
                "B8",
                "warning",
                f"GPU {g.index} ({g.name or 'GPU'}) has compute capability "
                f"{cc_text(cc)}; this TensorFlow was built for up to "
                f"{cc_text(newest)} ({', '.join(archs)}).",
                "TensorFlow then JIT-compiles its kernels from PTX at start-up, which can take "
                "up to 30 minutes, and may fail for some kernels (TF#62320).",
                "Use a newer TensorFlow built for this GPU; meanwhile "
                + _CACHE_FIX[0].lower()
                + _CACHE_FIX[1:],
            )
    for g, cc, cov in judged:
        if cov == "ptx":
            return Finding(
                "B8",
                "info",
                f"GPU {g.index} ({g.name or 'GPU'}, compute capability {cc_text(cc)}) is "
                f"covered only by PTX in this build ({', '.join(archs)}): there is no "
                f"sm_{cc[0]}{cc[1]} machine code.",
                "The driver compiles every kernel from PTX on its first use: the first run of "
                "each model is slow (minutes), later runs read the compiled kernels from the "
                "driver's JIT cache if it is large enough to keep them.",
                _CACHE_FIX,
            )
    return None


def _driver_too_old(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    driver = inv.nvidia.driver_version
    if tf is None or not tf.is_cuda_build or not tf.cuda_version or driver is None:
        return None
    need = _version_tuple(tf.cuda_version)
    supported = inv.nvidia.cuda_driver_version or cuda_for_driver(driver)
    have = _version_tuple(supported or "")
    full = min_driver(tf.cuda_version)
    major_min = CUDA_MAJOR_MIN_DRIVER.get(need[0])
    source = "NVIDIA CUDA Toolkit Release Notes, driver tables"
    too_old_major = (have and have[0] < need[0]) or (
        major_min is not None and not driver_at_least(driver, major_min)
    )
    if too_old_major:
        return Finding(
            "B6",
            "error",
            f"NVIDIA driver {driver} supports CUDA {supported or 'older than ' + str(need[0])}; "
            f"this TensorFlow {tf.version} was built with CUDA {tf.cuda_version}.",
            f"CUDA {need[0]}.x programs need driver {major_min} or newer ({source}); with an "
            "older one TensorFlow fails with 'CUDA driver version is insufficient for CUDA "
            "runtime version' and uses no GPU.",
            f"Install NVIDIA driver {full or major_min} or newer (then nvidia-smi shows CUDA "
            f"Version {need[0]}.{need[1]} or higher), or a TensorFlow built for CUDA "
            f"{have[0] if have else 'your driver'}.",
        )
    if have and have < need[:2] and full is not None:
        return Finding(
            "B6",
            "warning",
            f"NVIDIA driver {driver} supports CUDA {supported}; this TensorFlow {tf.version} "
            f"was built with CUDA {tf.cuda_version}, which wants driver {full} or newer.",
            "CUDA minor version compatibility lets it run, but PTX newer than the driver "
            "cannot be JIT-compiled (CUDA_ERROR_UNSUPPORTED_PTX_VERSION): GPUs covered only "
            f"by PTX, and XLA without ptxas, fail ({source}).",
            f"Install NVIDIA driver {full} or newer.",
        )
    return None


def _other_major_wheels(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is not None and tf.is_cuda_build and tf.cuda_version:
        need = _version_tuple(tf.cuda_version)[0]
        whose = f"This TensorFlow {tf.version} (CUDA {tf.cuda_version})"
    elif inv.platform.startswith("linux") and _gpu_here(inv):
        need, whose = GPU_BUILD_CUDA_MAJOR, 'The TensorFlow that "tfplace[gpu]" installs'
    else:
        return None
    majors = {n: wheel_cuda_major(n, v) for n, v in inv.packages}
    other = [f"{n} {v}" for n, v in inv.packages if majors[n] is not None and majors[n] != need]
    if not other:
        return None
    # served anyway: wheels of the right major, or TensorFlow found its libraries elsewhere
    right = [n for n, m in majors.items() if m == need] or (tf is not None and bool(inv.gpus))
    found = sorted({m for m in majors.values() if m is not None and m != need})
    if tf is not None and tf.is_cuda_build:
        install = f'pip install "tensorflow[and-cuda]=={tf.version}"'
    else:
        install = install_line(inv)
    return Finding(
        "B11",
        "info" if right else "warning",
        f"CUDA {'/'.join(map(str, found))} wheels are installed ({', '.join(other)}); they do "
        "not serve TensorFlow.",
        f"{whose} loads CUDA {need} libraries (libcudart.so.{need}, libcublas.so.{need}, "
        f"...); wheels of another CUDA major carry other sonames, so TensorFlow never opens "
        "them (they usually belong to PyTorch or another framework).",
        (
            "Nothing to remove: keep them for the framework that uses them."
            if right
            else f"{install} installs the CUDA {need} wheels (nvidia-*-cu{need}) next to them; "
            "the two sets have different sonames and coexist."
        ),
    )


def _mig(inv: Inventory, _p: str | None) -> Finding | None:
    if not inv.nvidia.mig_gpus:
        return None
    which = ", ".join(str(i) for i in inv.nvidia.mig_gpus)
    return Finding(
        "B12",
        "info",
        f"GPU {which} is in MIG mode (Multi-Instance GPU).",
        "A CUDA process sees one MIG instance per GPU, with that instance's memory and "
        "compute, not the whole card (NVIDIA MIG User Guide, 'CUDA Device Enumeration'); "
        "the GPU totals shown here are the card's.",
        "Choose the instance before TensorFlow starts: CUDA_VISIBLE_DEVICES=MIG-<uuid> (nvidia-smi "
        "-L lists them); run one process per instance for several.",
    )


def _tensorboard_missing(inv: Inventory, _p: str | None) -> Finding | None:
    if inv.tensorflow is None or any(n == "tensorboard" for n, _ in inv.packages):
        return None
    dist = next((f"{n} {v}" for n, v in inv.packages if n in _FLAVOURS), "this TensorFlow")
    return Finding(
        "G4",
        "info",
        f"TensorBoard is not installed ({dist} does not install it).",
        "Keras's TensorBoard callback (keras.callbacks.TensorBoard) fails at the start of "
        "fit with TBNotInstalledError; training without it is unaffected.",
        "pip install tensorboard, if you use the TensorBoard callback or tf.summary.",
    )


def _slow_precision(inv: Inventory, precision: str | None) -> Finding | None:
    if precision is None:
        return None
    slow = slow_policy(precision, inv.visible_gpus, tpu=inv.tpu.present)
    return Finding("H1", "warning", slow.what, slow.why, slow.fix) if slow else None


def _quota(inv: Inventory, _p: str | None) -> Finding | None:
    cpu = inv.cpu
    if cpu.quota_cores is None or cpu.quota_cores >= 0.5 * cpu.host_cores:
        return None
    if cpu.intra_op_threads and cpu.intra_op_threads <= cpu.usable_cores:
        return None
    intra, inter = auto_threads(cpu.usable_cores)
    return Finding(
        "G1",
        "warning",
        f"This process may use {cpu.quota_cores:g} CPU cores (cgroup quota) on a "
        f"{cpu.host_cores}-core host, but TensorFlow sizes its thread pools for "
        f"{cpu.host_cores} cores.",
        "Far more threads than cores get throttled by the quota: training is slower and "
        "latency jumps.",
        f'Call tfplace.configure_cpus("auto") before TensorFlow starts ({intra} intra-op / '
        f"{inter} inter-op threads here), or set TF_NUM_INTRAOP_THREADS={intra} and "
        f"TF_NUM_INTEROP_THREADS={inter}.",
    )


def _onednn(inv: Inventory, _p: str | None) -> Finding | None:
    if inv.tensorflow is None or inv.machine.lower() not in ("x86_64", "amd64"):
        return None
    if inv.env_value("TF_ENABLE_ONEDNN_OPTS") == "0":
        return None
    return Finding(
        "G2",
        "info",
        "oneDNN optimizations are on (TensorFlow's default on x86).",
        "TensorFlow logs 'oneDNN custom operations are on. You may see slightly different "
        "numerical results ...': CPU results can differ in the last bits between runs and "
        "machines.",
        "Nothing to do for speed. For bit-reproducible CPU results set "
        "TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported.",
    )


def _eager(inv: Inventory, _p: str | None) -> Finding | None:
    if not inv.functions_run_eagerly:
        return None
    return Finding(
        "G3",
        "warning",
        "tf.config.run_functions_eagerly(True) is in force: every tf.function runs eagerly.",
        "Graph execution lets TensorFlow fuse, place and schedule ops; eager execution of "
        "training steps is typically several times slower.",
        "Remove run_functions_eagerly(True) (and run_eagerly=True in compile) outside of "
        "debugging.",
    )


def _tf_config(inv: Inventory, _p: str | None) -> Finding | None:
    try:
        cluster_of(inv)
    except TfplaceError as err:
        return Finding(
            "F3",
            "error",
            f"The cluster description is invalid: {err}",
            "TensorFlow would fail or hang at start-up with it.",
            "Fix the named field (tfplace tf-config HOST ... prints a valid TF_CONFIG), or "
            "unset TF_CONFIG for single-machine training.",
        )
    return None


def _keras_missing(inv: Inventory, _p: str | None) -> Finding | None:
    if inv.tensorflow is None or inv.keras.flavour != "missing":
        return None
    legacy = inv.env_value("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
    return Finding(
        "B9",
        "error",
        "TF_USE_LEGACY_KERAS is set but tf_keras is not installed."
        if legacy
        else "Keras 3 is not installed.",
        "tf.keras cannot be imported.",
        f'pip install "tf-keras~={inv.tensorflow.version}"' if legacy else 'pip install "keras>=3"',
    )


#: A rule: ``(inventory, requested precision) -> Finding | None``.
Rule = Callable[[Inventory, str | None], Finding | None]

#: Every rule, in report order. ``docs/troubleshooting.md`` documents each finding's id.
RULES: tuple[Rule, ...] = (
    _tensorflow_missing,
    _keras_missing,
    _conflicting,
    _windows,
    _cpu_only_build,
    _cvd,
    _gpu_not_found,
    _driver_too_old,
    _other_major_wheels,
    _gpu_newer,
    _mig,
    _slow_precision,
    _tf_config,
    _quota,
    _eager,
    _tensorboard_missing,
    _onednn,
)

_ORDER = {"error": 0, "warning": 1, "info": 2}


def most_severe_first(found: Iterable[Finding]) -> list[Finding]:
    """``found`` with errors first, then warnings, then information; given order within each."""
    return sorted(found, key=lambda f: _ORDER[f.severity])


def findings(inv: Inventory, *, precision: str | None = None) -> list[Finding]:
    """Apply every rule to ``inv``; most severe first. Pure: no TensorFlow call.

    Args:
        inv: the facts.
        precision: a Keras dtype policy the user intends to use (checked for hardware that
            would make it slow), e.g. ``"mixed_float16"``.

    Returns:
        The findings, errors first, then warnings, then information; rule order within each.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> [f.id for f in findings(fake_inventory(gpus=1, compute_capability=(6, 1)),
        ...                         precision="mixed_float16")]
        ['H1', 'G2']
    """
    return most_severe_first(f for rule in RULES if (f := rule(inv, precision)) is not None)


def library_findings(inv: Inventory, checks: tuple[LibCheck, ...] | None) -> list[Finding]:
    """Findings from the per-library load check (:func:`tfplace.doctor._cuda_libs.check_libraries`).

    One error per library that does not load, naming the file, where it was looked for, the
    loader's message and the fix. Pure: the check ran before.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> bad = LibCheck("cublasLt", "libcublasLt.so.12", False, fix="pip install x")
        >>> [f.id for f in library_findings(fake_inventory(gpus=1), (bad,))]
        ['B10']
    """
    if not checks:
        return []
    tf = inv.tensorflow
    build = f"TensorFlow {tf.version} (CUDA {tf.cuda_version})" if tf else "TensorFlow"
    found = []
    for c in checks:
        if c.ok:
            continue
        where = f" ({c.path})" if c.path else ""
        looked = ", ".join(c.searched) if c.searched else "no wheel folder"
        found.append(
            Finding(
                "B10",
                "error",
                f"{c.soname}{where} does not load: {c.error or 'not found'}.",
                f"{build} opens {c.soname} when it starts; if it cannot, it logs 'Cannot "
                "dlopen some GPU libraries' and registers no GPU. Looked in LD_LIBRARY_PATH "
                f"and the CUDA wheels' folders ({looked}), then the loader's cache.",
                c.fix,
            )
        )
    return found
