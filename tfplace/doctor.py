"""``tfplace doctor``: what TensorFlow can use here, why a GPU is not used, and how to fix it.

:func:`findings` is a pure rule engine from an :class:`~tfplace.Inventory` to a list
of :class:`Finding` (severity, what, why, fix, doc link); :func:`verify` actually runs a matmul
and a convolution on each device; :class:`DoctorReport` is the report as data (``to_dict``,
the ``--json`` schema) and as text. Printing happens in ``__main__``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tfplace._inventory import Inventory
from tfplace._plan import Plan, cluster_of, decide
from tfplace.config import auto_threads
from tfplace.errors import TfplaceError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_VERIFY_FAILED",
    "RULES",
    "SCHEMA_VERSION",
    "DoctorReport",
    "Finding",
    "VerifyResult",
    "diagnose",
    "explain_error",
    "findings",
    "verify",
]

Severity = Literal["error", "warning", "info"]

#: Exit codes of ``tfplace doctor``.
EXIT_OK = 0  #: no error finding (warnings and information allowed), verification passed
EXIT_ERROR = 1  #: at least one finding has severity "error"
EXIT_VERIFY_FAILED = 3  #: ``--verify`` failed on at least one device
#: Version of the ``--json`` document; bumped only on incompatible changes.
SCHEMA_VERSION = 1

_DOCS = "troubleshooting.md"
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
        return {
            "id": self.id,
            "severity": self.severity,
            "what": self.what,
            "why": self.why,
            "fix": self.fix,
            "doc": self.doc,
        }


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)[:2]
    return tuple(int(p) for p in parts)


def _cuda_build(inv: Inventory) -> bool:
    return inv.tensorflow is not None and inv.tensorflow.is_cuda_build


def _nvidia_wheels(inv: Inventory) -> list[str]:
    return [name for name, _ in inv.packages if name.startswith("nvidia-")]


# ------------------------------------------------------------------------------ rules


def _tensorflow_missing(inv: Inventory, _p: str | None) -> Finding | None:
    if inv.tensorflow is not None:
        return None
    return Finding(
        "B0",
        "error",
        "TensorFlow is not installed (import tensorflow failed).",
        "Nothing can run without it.",
        'pip install "tfplace[cpu]" (CPU-only), "tfplace[gpu]" (Linux with NVIDIA GPUs) '
        'or "tfplace[tensorflow]".',
    )


def _conflicting(inv: Inventory, _p: str | None) -> Finding | None:
    installed = [name for name, _ in inv.packages if name in _FLAVOURS]
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
    gpu_here = inv.nvidia_driver is not None
    return Finding(
        "B2",
        "warning" if gpu_here else "info",
        f"This TensorFlow {tf.version} is a CPU-only build (is_built_with_cuda() is False).",
        "It cannot use a GPU"
        + (", and an NVIDIA driver is loaded on this machine." if gpu_here else ".")
        + (" It is usually 'tensorflow-cpu', or 'tensorflow' on a platform without GPU builds."),
        "For NVIDIA GPUs on Linux: pip uninstall tensorflow-cpu, then pip install "
        '"tensorflow[and-cuda]" (or "tfplace[gpu]"). On a machine without a GPU nothing needs '
        "to change.",
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
            f"NVIDIA driver loaded ({inv.nvidia_driver}) and the CUDA wheels are installed "
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
            "TF_CPP_MAX_VLOG_LEVEL=3 to see which library fails to load.",
        )
    return Finding(
        "B4",
        "warning",
        f"NVIDIA driver loaded ({inv.nvidia_driver}), but TensorFlow registered no GPU and "
        "no CUDA wheels are installed.",
        f"This TensorFlow needs CUDA {tf.cuda_version} and cuDNN {tf.cudnn_version} libraries "
        "('Could not load dynamic library libcudnn.so...').",
        'pip install "tensorflow[and-cuda]" to get matching libraries, or install that CUDA '
        "and cuDNN and add their lib directories to LD_LIBRARY_PATH; run with "
        "TF_CPP_MAX_VLOG_LEVEL=3 to see which library fails to load.",
    )


def _sm(code: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)", code.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _gpu_newer(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is None or not tf.compute_capabilities:
        return None
    built = [cc for cc in (_sm(c) for c in tf.compute_capabilities) if cc]
    if not built:
        return None
    newest = max(built)
    newer = [g for g in inv.visible_gpus if g.compute_capability and g.compute_capability > newest]
    if not newer:
        return None
    g = newer[0]
    cc = ".".join(map(str, g.compute_capability or ()))
    return Finding(
        "B8",
        "warning",
        f"GPU {g.index} ({g.name or 'GPU'}) has compute capability {cc}; this TensorFlow was "
        f"built for up to {newest[0]}.{newest[1]} ({', '.join(tf.compute_capabilities)}).",
        "TensorFlow then JIT-compiles its kernels from PTX at start-up, which can take up to "
        "30 minutes, and may fail for some kernels (TF#62320).",
        "Use a newer TensorFlow built for this GPU; meanwhile keep the JIT cache between runs "
        "(CUDA_CACHE_MAXSIZE=4294967296) so the compilation happens once.",
    )


def _slow_precision(inv: Inventory, precision: str | None) -> Finding | None:
    if precision is None or precision == "float32":
        return None
    gpus = inv.visible_gpus
    ccs = [g.compute_capability for g in gpus if g.compute_capability]
    if precision == "mixed_float16":
        if gpus and ccs and min(ccs) >= (7, 0):
            return None
        where = f"GPUs with compute capability {min(ccs)[0]}.{min(ccs)[1]}" if ccs else "the CPU"
        return Finding(
            "H1",
            "warning",
            f"mixed_float16 was requested, but training would run on {where}.",
            "float16 is only fast on Tensor Cores (compute capability 7.0 and newer); elsewhere "
            "it is slower than float32 (4x on a GTX 1660 Ti, 60x on a CPU, TF#44191).",
            'Use configure_precision("auto"), which picks float32 here.',
        )
    if precision == "mixed_bfloat16":
        if inv.tpu.present or (gpus and ccs and min(ccs) >= (8, 0)):
            return None
        return Finding(
            "H1",
            "warning",
            "mixed_bfloat16 was requested on hardware without fast bfloat16 (a GPU older than "
            "compute capability 8.0, or a CPU).",
            "bfloat16 is fast on TPUs and Ampere (8.0) or newer GPUs; elsewhere it is emulated "
            "and slower than float32.",
            'Use configure_precision("auto").',
        )
    return None


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


#: Every rule, in report order. Each is ``(inventory, requested precision) -> Finding | None``.
RULES: tuple[Callable[[Inventory, str | None], Finding | None], ...] = (
    _tensorflow_missing,
    _keras_missing,
    _conflicting,
    _windows,
    _cpu_only_build,
    _cvd,
    _gpu_not_found,
    _gpu_newer,
    _slow_precision,
    _tf_config,
    _quota,
    _eager,
    _onednn,
)

_ORDER = {"error": 0, "warning": 1, "info": 2}


def findings(inv: Inventory, *, precision: str | None = None) -> list[Finding]:
    """Apply every rule to ``inv``; most severe first. Pure: no TensorFlow call.

    Args:
        inv: the facts.
        precision: a Keras dtype policy the user intends to use (checked for hardware that
            would make it slow), e.g. ``"mixed_float16"``.
    """
    found = [f for rule in RULES if (f := rule(inv, precision)) is not None]
    return sorted(found, key=lambda f: _ORDER[f.severity])


# ------------------------------------------------------------------------------ errors

_KNOWN_ERRORS: tuple[tuple[str, str, str, str], ...] = (
    (
        r"DNN library initialization failed|Loaded runtime CuDNN library",
        "B5",
        "cuDNN failed to initialize: the cuDNN that was loaded does not match the one this "
        "TensorFlow was built with (TF#60913), or the GPU ran out of memory while starting it.",
        "Install the cuDNN this build expects (pip install --force-reinstall "
        '"tensorflow[and-cuda]"), and remove other cuDNN copies from LD_LIBRARY_PATH.',
    ),
    (
        r"CUDA driver version is insufficient|failed call to cuInit|CUDA_ERROR_NO_DEVICE",
        "B6",
        "The NVIDIA driver is missing, too old for this TensorFlow's CUDA, or sees no device.",
        "Update the NVIDIA driver to one that supports this CUDA version (nvidia-smi shows "
        "the highest CUDA version the driver supports).",
    ),
    (
        r"Cannot dlopen some GPU libraries",
        "B3",
        "TensorFlow could not load the CUDA libraries, so it registered no GPU.",
        'pip install --force-reinstall "tensorflow[and-cuda]"; unset LD_LIBRARY_PATH; run '
        "with TF_CPP_MAX_VLOG_LEVEL=3 to see which library.",
    ),
    (
        r"Could not load dynamic library",
        "B4",
        "A CUDA library (named in the message) could not be loaded.",
        "Install the matching CUDA/cuDNN or tensorflow[and-cuda]; check LD_LIBRARY_PATH.",
    ),
    (
        r"OOM when allocating|RESOURCE_EXHAUSTED|CUDA_ERROR_OUT_OF_MEMORY",
        "D2",
        "The device ran out of memory.",
        "Lower the batch size, enable memory growth (configure_gpus(memory_growth=True)) so "
        "processes can share the GPU, and set TF_GPU_ALLOCATOR=cuda_malloc_async before "
        "import to reduce fragmentation.",
    ),
    (
        r"cannot be modified after (being )?initiali[sz]ed",
        "A1",
        "A device or thread setting was changed after TensorFlow's runtime started.",
        "Call tfplace.configure_gpus / configure_cpus first, before any tensor or model.",
    ),
    (
        r"Attempt to convert a value \(PerReplica",
        "F1",
        "Keras 3 model.fit under a plain MultiWorkerMirroredStrategy.",
        "Create the strategy with tfplace.pick_strategy().",
    ),
    (
        r"Collective has timed out|Collective ops is aborted",
        "F5",
        "A multi-worker collective gave up waiting: a peer died or is unreachable.",
        "Check the other workers' logs; every worker in TF_CONFIG must be running.",
    ),
)


def explain_error(error: BaseException | str) -> Finding | None:
    """Map a TensorFlow error (or its text) to a finding with the fix, if it is a known one.

    Example:
        >>> explain_error("Failed call to cuInit: CUDA_ERROR_NO_DEVICE").id
        'B6'
    """
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for pattern, fid, why, fix in _KNOWN_ERRORS:
        if re.search(pattern, text, flags=re.IGNORECASE):
            first = text.strip().splitlines()[0][:300] if text.strip() else text
            return Finding(fid, "error", first, why, fix)
    return None


# ------------------------------------------------------------------------------ verify


@dataclass(frozen=True)
class VerifyResult:
    """A real matmul and convolution on one device."""

    device: str
    ok: bool
    seconds: float
    error: str | None = None
    finding: Finding | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "device": self.device,
            "ok": self.ok,
            "seconds": round(self.seconds, 6),
            "error": self.error,
            "finding": self.finding.to_dict() if self.finding else None,
        }


def verify() -> list[VerifyResult]:
    """Run a 256x256 matmul and a 3x3 convolution on every visible device, with timings.

    A cuDNN mismatch passes every detection check and only fails at the first convolution;
    this finds it. Starts TensorFlow's runtime.
    """
    from tfplace import _tf

    tf = _tf.load()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices += [d.name for d in tf.config.list_logical_devices("CPU")][:1]
    results = []
    for name in devices:
        start = time.perf_counter()
        try:
            with tf.device(name):
                a = tf.random.stateless_normal((256, 256), seed=(1, 2))
                product = tf.linalg.matmul(a, a)
                image = tf.random.stateless_normal((2, 32, 32, 3), seed=(3, 4))
                kernel = tf.random.stateless_normal((3, 3, 3, 8), seed=(5, 6))
                conv = tf.nn.conv2d(image, kernel, strides=1, padding="SAME")
                total = float(tf.reduce_sum(product)) + float(tf.reduce_sum(conv))
            if total != total:  # NaN: the kernels ran but computed garbage
                raise ArithmeticError("the result is NaN")
            results.append(VerifyResult(name, True, time.perf_counter() - start))
        except Exception as err:  # every failure is reported, none stops the others
            results.append(
                VerifyResult(
                    name,
                    False,
                    time.perf_counter() - start,
                    f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}",
                    explain_error(err),
                )
            )
    return results


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class DoctorReport:
    """The doctor's report: facts, the automatic plan, findings, optional verification."""

    inventory: Inventory
    plan: Plan | None
    plan_error: str | None
    findings: tuple[Finding, ...]
    verify: tuple[VerifyResult, ...] | None = field(default=None)

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_VERIFY_FAILED`, :data:`EXIT_ERROR` or :data:`EXIT_OK`."""
        if self.verify is not None and not all(r.ok for r in self.verify):
            return EXIT_VERIFY_FAILED
        if any(f.severity == "error" for f in self.findings):
            return EXIT_ERROR
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema in docs/doctor.md)."""
        from tfplace import __version__

        inv = self.inventory
        tf = inv.tensorflow
        intra, inter = auto_threads(inv.cpu.usable_cores)
        return {
            "schema_version": SCHEMA_VERSION,
            "tfplace": __version__,
            "platform": {"system": inv.platform, "machine": inv.machine, "python": inv.python},
            "tensorflow": {
                "installed": tf is not None,
                "version": tf.version if tf else None,
                "build": {
                    "cuda": tf.is_cuda_build,
                    "rocm": tf.is_rocm_build,
                    "cuda_version": tf.cuda_version,
                    "cudnn_version": tf.cudnn_version,
                    "compute_capabilities": list(tf.compute_capabilities),
                }
                if tf
                else None,
                "distributions": dict(inv.packages),
                "runtime_started": inv.runtime_started,
                "functions_run_eagerly": inv.functions_run_eagerly,
            },
            "keras": {"flavour": inv.keras.flavour, "version": inv.keras.version},
            "devices": {
                "gpus": [
                    {
                        "index": g.index,
                        "name": g.name,
                        "compute_capability": list(g.compute_capability)
                        if g.compute_capability
                        else None,
                        "memory_mb": g.memory_mb,
                        "visible": g.visible,
                    }
                    for g in inv.gpus
                ],
                "logical_cpus": inv.cpu.logical_devices,
                "tpu": {"present": inv.tpu.present, "hints": list(inv.tpu.hints)},
                "nvidia_driver": inv.nvidia_driver,
            },
            "cpu": {
                "host_cores": inv.cpu.host_cores,
                "affinity_cores": inv.cpu.affinity_cores,
                "quota_cores": inv.cpu.quota_cores,
                "usable_cores": inv.cpu.usable_cores,
                "intra_op_threads": inv.cpu.intra_op_threads,
                "inter_op_threads": inv.cpu.inter_op_threads,
                "auto_threads": {"intra_op": intra, "inter_op": inter},
            },
            "env": dict(inv.env),
            "strategy": self.plan.to_dict() if self.plan else {"error": self.plan_error},
            "findings": [f.to_dict() for f in self.findings],
            "verify": [r.to_dict() for r in self.verify] if self.verify is not None else None,
            "exit_code": self.exit_code,
        }

    def to_text(self) -> str:
        """The human-readable report."""
        inv = self.inventory
        tf = inv.tensorflow
        if tf:
            kind = (
                "CUDA build"
                if tf.is_cuda_build
                else "ROCm build"
                if tf.is_rocm_build
                else ("CPU-only build")
            )
            extra = (
                f", CUDA {tf.cuda_version}, cuDNN {tf.cudnn_version}, for "
                f"{' '.join(tf.compute_capabilities)}"
                if tf.is_cuda_build
                else ""
            )
            tf_line = f"{tf.version} ({kind}{extra})"
        else:
            tf_line = "not installed"
        lines = [
            "tfplace doctor",
            f"  Python        {inv.python} on {inv.platform} ({inv.machine})",
            f"  TensorFlow    {tf_line}",
            f"  Keras         {inv.keras.flavour} {inv.keras.version or ''}".rstrip(),
            "  Packages      "
            + (", ".join(f"{n} {v}" for n, v in inv.packages) or "no tensorflow* distribution"),
            f"  Runtime       {'started' if inv.runtime_started else 'not started'}",
            f"  NVIDIA driver {inv.nvidia_driver or 'none'}",
        ]
        if inv.gpus:
            for g in inv.gpus:
                cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
                mem = f", {g.memory_mb} MB" if g.memory_mb else ""
                hidden = "" if g.visible else " (hidden)"
                lines.append(f"  GPU {g.index:<10}{g.name or 'GPU'}, compute {cc}{mem}{hidden}")
        else:
            lines.append("  GPUs          none visible to TensorFlow")
        if inv.tpu.present:
            lines.append(f"  TPU           {', '.join(inv.tpu.hints)}")
        cpu = inv.cpu
        quota = f"{cpu.quota_cores:g}" if cpu.quota_cores is not None else "none"
        intra, inter = auto_threads(cpu.usable_cores)
        lines.append(
            f"  CPU           {cpu.host_cores} host cores, {cpu.affinity_cores} in affinity, "
            f"quota {quota} -> {cpu.usable_cores} usable"
        )
        lines.append(
            f'                configure_cpus("auto") -> {intra} intra-op / {inter} inter-op '
            f"threads; {cpu.logical_devices} CPU device(s)"
        )
        lines.append("  Environment   " + ("" if inv.env else "none of the relevant variables"))
        lines += [f"    {k}={v}" for k, v in inv.env]
        if self.plan is not None:
            lines.append(f"  Strategy      {self.plan.summary()}")
            lines += [f"                - {r}" for r in self.plan.reasons[1:]]
        else:
            lines.append(f"  Strategy      cannot decide: {self.plan_error}")
        if self.verify is not None:
            lines.append("  Verify        matmul 256x256 + conv 3x3 on each device")
            for r in self.verify:
                status = "ok  " if r.ok else "FAIL"
                lines.append(f"    {status} {r.device}  {r.seconds * 1000:.1f} ms")
                if r.error:
                    lines.append(f"         {r.error}")
                    if r.finding:
                        lines.append(f"         fix: {r.finding.fix}")
        lines.append(f"Findings ({len(self.findings)})" if self.findings else "Findings: none")
        for f in self.findings:
            lines.append(f"  [{f.severity}] {f.id}: {f.what}")
            lines.append(f"      why: {f.why}")
            lines.append(f"      fix: {f.fix}")
            lines.append(f"      see: docs/{f.doc}")
        return "\n".join(lines)


def diagnose(
    inv: Inventory, *, precision: str | None = None, run_verify: bool = False
) -> DoctorReport:
    """Build the doctor's report for ``inv`` (verification, if asked, runs for real)."""
    try:
        plan, plan_error = decide(inv), None
    except TfplaceError as err:
        plan, plan_error = None, str(err)
    results = tuple(verify()) if run_verify else None
    return DoctorReport(inv, plan, plan_error, tuple(findings(inv, precision=precision)), results)
