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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tfplace._hardware import cc_text, parse_arch, slow_policy
from tfplace._inventory import Inventory
from tfplace._plan import cluster_of
from tfplace.config import auto_threads
from tfplace.errors import TfplaceError

__all__ = ["RULES", "Finding", "Rule", "Severity", "findings"]

Severity = Literal["error", "warning", "info"]

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


def _gpu_newer(inv: Inventory, _p: str | None) -> Finding | None:
    tf = inv.tensorflow
    if tf is None or not tf.compute_capabilities:
        return None
    built = [cc for cc in (parse_arch(c) for c in tf.compute_capabilities) if cc]
    if not built:
        return None
    newest = max(built)
    newer = [(g, cc) for g in inv.visible_gpus if (cc := g.compute_capability) and cc > newest]
    if not newer:
        return None
    g, cc = newer[0]
    return Finding(
        "B8",
        "warning",
        f"GPU {g.index} ({g.name or 'GPU'}) has compute capability "
        f"{cc_text(cc)}; this TensorFlow was built for up to "
        f"{cc_text(newest)} ({', '.join(tf.compute_capabilities)}).",
        "TensorFlow then JIT-compiles its kernels from PTX at start-up, which can take up to "
        "30 minutes, and may fail for some kernels (TF#62320).",
        "Use a newer TensorFlow built for this GPU; meanwhile keep the JIT cache between runs "
        "(CUDA_CACHE_MAXSIZE=4294967296) so the compilation happens once.",
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

    Returns:
        The findings, errors first, then warnings, then information; rule order within each.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> [f.id for f in findings(fake_inventory(gpus=1, compute_capability=(6, 1)),
        ...                         precision="mixed_float16")]
        ['H1', 'G2']
    """
    found = [f for rule in RULES if (f := rule(inv, precision)) is not None]
    return sorted(found, key=lambda f: _ORDER[f.severity])
