"""Facts about this machine and process, as frozen dataclasses.

:func:`inventory` is the one place that reads environment variables for decisions and asks
TensorFlow what is here. (A few actions read a variable at the moment they hand it on: the
launcher building workers' environments, the CUDA library check and ``_tf.load_keras``, which
must see what the loader and TensorFlow see then.) It only uses calls that do NOT start
TensorFlow's runtime (``list_physical_devices``, ``get_device_details``, ``get_build_info``,
the ``get_*`` configuration getters); it never calls ``list_logical_devices`` before the
runtime has started for another reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tfplace import _tf
from tfplace._facts import nvidia as _nvidia

__all__ = [
    "ENV_VARS",
    "CPUInfo",
    "ClusterEnv",
    "GPUInfo",
    "Inventory",
    "KerasInfo",
    "NvidiaInfo",
    "TFInfo",
    "TPUInfo",
    "cpu_quota",
    "cuda_enumeration",
    "inventory",
    "merge_gpus",
    "use_inventory",
]

#: Environment variables that change how TensorFlow uses the hardware.
ENV_VARS: tuple[str, ...] = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "TF_CONFIG",
    "TFPLACE_PORT",
    "TF_USE_LEGACY_KERAS",
    "KERAS_BACKEND",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_CPP_MAX_VLOG_LEVEL",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "TF_XLA_FLAGS",
    "XLA_FLAGS",
    "TF_DETERMINISTIC_OPS",
    "NVIDIA_TF32_OVERRIDE",
    "LD_LIBRARY_PATH",
    "TPU_NAME",
    "COLAB_TPU_ADDR",
    "TPU_ACCELERATOR_TYPE",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_JOB_NODELIST",
    "SLURM_STEP_NODELIST",
    "SLURM_TASKS_PER_NODE",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_GPUS_ON_NODE",
    "SLURM_GPUS_PER_NODE",
)

_TPU_ENV = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")
_PACKAGE_PREFIXES = (
    "tensorflow",
    "tf-",
    "tf_",
    "keras",
    "nvidia-",
    "libtpu",
    "tensorrt",
    "tensorboard",
)


@dataclass(frozen=True)
class GPUInfo:
    """One physical GPU.

    In :attr:`Inventory.gpus` these are TensorFlow's GPUs, with the NVIDIA driver's facts
    (NVML, nvidia-smi or ``/proc``) merged in; in :attr:`NvidiaInfo.gpus` every GPU the driver
    sees, whether or not TensorFlow does.

    Attributes:
        index: TensorFlow's physical index (``/physical_device:GPU:<index>``); in
            :attr:`NvidiaInfo.gpus`, the driver's index (``nvidia-smi -i``, PCI order).
        name: the device model, e.g. ``"NVIDIA A100-SXM4-40GB"``.
        compute_capability: ``(major, minor)`` when known.
        memory_mb: total memory in MiB when known (from the driver; TensorFlow does not say).
        visible: in :attr:`Inventory.gpus`, False when hidden by ``configure_gpus(visible=...)``;
            in :attr:`NvidiaInfo.gpus`, whether TensorFlow lists this GPU.
        uuid: the driver's ``GPU-...`` identifier.
        pci_bus_id: ``"0000:00:06.0"`` (lower case, 4-digit domain, as CUDA writes it).
        memory_free_mb: free memory in MiB when the facts were read.
        utilization_percent: GPU utilization (0-100) when the facts were read.
        processes: compute processes on this GPU, each ``"pid name used_mb"``.
        logical: how many logical GPUs TensorFlow makes of this one (``configure_gpus(
            logical_gpus=N)``); 1 when it is not split.
    """

    index: int
    name: str = ""
    compute_capability: tuple[int, int] | None = None
    memory_mb: int | None = None
    visible: bool = True
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_free_mb: int | None = None
    utilization_percent: int | None = None
    processes: tuple[str, ...] = ()
    logical: int = 1


GPUSource = Literal["nvml", "nvidia-smi", "proc", "tensorflow", "none"]


@dataclass(frozen=True)
class NvidiaInfo:
    """What the NVIDIA driver says, read without TensorFlow (``tfplace._facts.nvidia``).

    Attributes:
        driver_version: e.g. ``"580.159.04"``; None without an NVIDIA driver.
        cuda_driver_version: the newest CUDA the driver supports, e.g. ``"13.0"``.
        gpu_source: where the GPU facts came from: ``"nvml"``, ``"nvidia-smi"``, ``"proc"``,
            ``"tensorflow"`` (TensorFlow lists GPUs, the driver could not be asked) or
            ``"none"``.
        gpus: every GPU the driver sees, in its order; ``visible`` says whether TensorFlow
            lists it (False for all of them when TensorFlow is absent or a CPU-only build).
        mig_gpus: driver indexes of the GPUs in MIG mode.
    """

    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpu_source: GPUSource = "none"
    gpus: tuple[GPUInfo, ...] = ()
    mig_gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class CPUInfo:
    """CPU capacity of this process.

    Attributes:
        host_cores: logical cores of the host (``os.cpu_count()``).
        affinity_cores: cores this process may run on (``sched_getaffinity``).
        quota_cores: the cgroup CPU quota in cores (``cpu.max`` or CFS quota), None if unlimited.
        logical_devices: CPU devices TensorFlow has or will have (virtual devices split it).
        intra_op_threads: configured intra-op threads (0 = TensorFlow's default).
        inter_op_threads: configured inter-op threads (0 = TensorFlow's default).
    """

    host_cores: int
    affinity_cores: int
    quota_cores: float | None = None
    logical_devices: int = 1
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    @property
    def usable_cores(self) -> int:
        """Cores this process can keep busy: affinity, capped by the quota (rounded down)."""
        cores = self.affinity_cores
        if self.quota_cores is not None:
            cores = min(cores, max(1, math.floor(self.quota_cores)))
        return max(1, cores)


@dataclass(frozen=True)
class TPUInfo:
    """Hints that a TPU is attached (environment variables, ``/dev/accel*``)."""

    hints: tuple[str, ...] = ()
    name: str | None = None

    @property
    def present(self) -> bool:
        """Whether any hint says a TPU is there."""
        return bool(self.hints)


@dataclass(frozen=True)
class ClusterEnv:
    """The raw cluster environment: TF_CONFIG text and SLURM variables (not yet validated)."""

    tf_config: str | None = None
    slurm: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TFInfo:
    """The installed TensorFlow and what it was built with."""

    version: str
    is_cuda_build: bool = False
    is_rocm_build: bool = False
    cuda_version: str | None = None
    cudnn_version: str | None = None
    compute_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class KerasInfo:
    """Which Keras ``tf.keras`` resolves to: Keras 3 (``"keras3"``) or ``"tf_keras"``."""

    flavour: Literal["keras3", "tf_keras", "missing"]
    version: str | None = None


@dataclass(frozen=True)
class Inventory:
    """Everything tfplace's decisions read. Build synthetic ones with :mod:`tfplace.testing`."""

    python: str
    platform: str
    machine: str
    tensorflow: TFInfo | None
    keras: KerasInfo
    gpus: tuple[GPUInfo, ...]
    cpu: CPUInfo
    tpu: TPUInfo = field(default_factory=TPUInfo)
    cluster: ClusterEnv = field(default_factory=ClusterEnv)
    env: tuple[tuple[str, str], ...] = ()
    packages: tuple[tuple[str, str], ...] = ()
    runtime_started: bool = False
    soft_placement: bool | None = None
    functions_run_eagerly: bool | None = None
    nvidia_driver: str | None = None
    nvidia: NvidiaInfo = field(default_factory=NvidiaInfo)

    @property
    def visible_gpus(self) -> tuple[GPUInfo, ...]:
        """GPUs TensorFlow will use, in logical order (``/GPU:0`` is the first of these)."""
        return tuple(g for g in self.gpus if g.visible)

    def env_value(self, name: str) -> str | None:
        """The value of a recorded environment variable, or None when unset."""
        for key, value in self.env:
            if key == name:
                return value
        return None

    @property
    def gpus_hidden_by_env(self) -> bool:
        """Whether ``CUDA_VISIBLE_DEVICES`` is empty or ``-1``, hiding every GPU."""
        cvd = self.env_value("CUDA_VISIBLE_DEVICES")
        return cvd is not None and cvd.strip() in ("", "-1")

    @property
    def logical_gpu_count(self) -> int:
        """How many ``/GPU:i`` devices TensorFlow shows: visible GPUs, each counted as the
        logical GPUs it is split into."""
        return sum(max(1, g.logical) for g in self.visible_gpus)

    @property
    def gpus_shared(self) -> bool:
        """Whether some visible GPU is split into several logical GPUs (they share one card)."""
        return any(g.logical > 1 for g in self.visible_gpus)

    @property
    def local_device_names(self) -> tuple[str, ...]:
        """Logical device names: ``/GPU:i`` for (logical) visible GPUs, then ``/CPU:i``."""
        return tuple(f"/GPU:{i}" for i in range(self.logical_gpu_count)) + tuple(
            f"/CPU:{i}" for i in range(self.cpu.logical_devices)
        )

    @property
    def has_nccl(self) -> bool:
        """Whether TensorFlow's NCCL all-reduce exists here (Linux CUDA builds only)."""
        return self.platform.startswith("linux") and (
            self.tensorflow is not None and self.tensorflow.is_cuda_build
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every fact."""
        data = asdict(self)
        data["env"] = dict(self.env)
        data["packages"] = dict(self.packages)
        data["cluster"]["slurm"] = dict(self.cluster.slurm)
        data["cpu"]["usable_cores"] = self.cpu.usable_cores
        return data


# --------------------------------------------------------------------------- CPU facts


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path | None = None) -> float | None:
    """The cgroup CPU quota of this process in cores, or None when unlimited or unknown.

    Reads cgroup v2 ``cpu.max`` (``"400000 100000"`` is 4 cores) and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, along this process's cgroup path (from
    ``/proc/self/cgroup``) and its parents. The smallest limit on the path wins, as the kernel
    enforces.
    """
    limits: list[float] = []
    v2_rel, v1_rel = "", ""
    proc_cgroup = proc_cgroup or Path("/proc/self/cgroup")
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2_rel = parts[2].strip().lstrip("/")
            elif "cpu" in parts[1].split(","):
                v1_rel = parts[2].strip().lstrip("/")
    for directory in _along(root, v2_rel):
        with contextlib.suppress(OSError, ValueError):
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            if quota != "max" and float(period or 100000) > 0:
                limits.append(float(quota) / float(period or 100000))
    for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        for directory in _along(mount, v1_rel):
            with contextlib.suppress(OSError, ValueError):
                quota_us = int((directory / "cpu.cfs_quota_us").read_text())
                period_us = int((directory / "cpu.cfs_period_us").read_text())
                if quota_us > 0 and period_us > 0:
                    limits.append(quota_us / period_us)
    return min(limits) if limits else None


def _along(root: Path, rel: str) -> list[Path]:
    """``root/rel``, then each parent directory up to ``root``."""
    return [root / rel, *(root / p for p in _parents(rel))] + ([root] if rel else [])


def _parents(rel: str) -> Iterator[str]:
    parts = rel.split("/")
    for i in range(len(parts) - 1, 0, -1):
        yield "/".join(parts[:i])


def _affinity() -> int:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        with contextlib.suppress(OSError):
            return len(getaffinity(0))
    return os.cpu_count() or 1


# --------------------------------------------------------------------------- other facts


def _packages() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(_PACKAGE_PREFIXES):
            found[name] = dist.version
    return tuple(sorted(found.items()))


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _keras_info(env: Mapping[str, str]) -> KerasInfo:
    # TensorFlow's own test: tf.keras is tf_keras when TF_USE_LEGACY_KERAS is one of these.
    if env.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1"):
        version = _version("tf-keras") or _version("tf_keras")
        return KerasInfo("tf_keras" if version else "missing", version)
    version = _version("keras")
    major = version.split(".")[0] if version else ""
    if not major.isdigit() or int(major) < 3:
        return KerasInfo("missing", version)
    return KerasInfo("keras3", version)


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version line, or None when no driver is loaded."""
    with contextlib.suppress(OSError):
        text = Path("/proc/driver/nvidia/version").read_text()
        return text.splitlines()[0].strip() if text.strip() else "unknown version"
    return None


def cuda_enumeration(facts: _nvidia.NvidiaFacts, env: Mapping[str, str]) -> list[_nvidia.NvidiaGPU]:
    """The driver's GPUs in the order CUDA numbers them, before ``CUDA_VISIBLE_DEVICES``.

    The rule, from the CUDA C++ Programming Guide ("CUDA Environment Variables"):
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` orders devices by PCI bus id, ascending;
    ``FASTEST_FIRST``, the default, makes CUDA "guess which device is fastest using a simple
    heuristic" and number it first. The heuristic is not specified; in practice (and as
    implemented here) it ranks by compute capability, highest first, with ties in PCI order.
    CUDA also breaks ties between different models of one compute capability by their size (SM
    count), which the driver facts read here do not give: :func:`merge_gpus` then confirms each
    pair by the model's name. Any value other than ``PCI_BUS_ID`` is CUDA's default. When some
    GPU's compute capability is unknown (the ``/proc`` source), the speed order cannot be
    worked out and PCI order is returned (names confirm the pairs then too).

    Example:
        >>> from tfplace._facts.nvidia import NvidiaFacts, NvidiaGPU
        >>> slow = NvidiaGPU(0, "old", pci_bus_id="0000:00:05.0", compute_capability=(8, 0))
        >>> fast = NvidiaGPU(1, "new", pci_bus_id="0000:00:06.0", compute_capability=(9, 0))
        >>> facts = NvidiaFacts("nvml", gpus=(slow, fast))
        >>> [g.name for g in cuda_enumeration(facts, {})]
        ['new', 'old']
        >>> [g.name for g in cuda_enumeration(facts, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})]
        ['old', 'new']
    """
    pci = sorted(facts.gpus, key=lambda g: (g.pci_bus_id is None, g.pci_bus_id or "", g.index))
    if (env.get("CUDA_DEVICE_ORDER") or "").strip().upper() == "PCI_BUS_ID":
        return pci
    if any(g.compute_capability is None for g in pci):
        return pci
    # a stable sort: GPUs of one compute capability keep their PCI order
    return sorted(pci, key=lambda g: [-v for v in g.compute_capability or ()])


def _cuda_order(facts: _nvidia.NvidiaFacts, env: Mapping[str, str]) -> list[_nvidia.NvidiaGPU]:
    """The driver's GPUs in the order CUDA numbers them after ``CUDA_VISIBLE_DEVICES``.

    Entries are indexes into CUDA's enumeration (:func:`cuda_enumeration`, which follows
    ``CUDA_DEVICE_ORDER``) or ``GPU-`` UUID prefixes; like CUDA, the list stops at the first
    entry that names no GPU (a ``MIG-`` entry is not mapped to its parent).
    """
    enumerated = cuda_enumeration(facts, env)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return enumerated
    order: list[_nvidia.NvidiaGPU] = []
    for entry in (e.strip() for e in cvd.split(",")):
        found = [
            g
            for n, g in enumerate(enumerated)
            if (entry.isdigit() and n == int(entry))
            or (entry.startswith("GPU-") and (g.uuid or "").startswith(entry))
        ]
        if len(found) != 1 or found[0] in order:
            break
        order.append(found[0])
    return order


def merge_gpus(
    tf_gpus: tuple[GPUInfo, ...], facts: _nvidia.NvidiaFacts, env: Mapping[str, str]
) -> tuple[tuple[GPUInfo, ...], tuple[GPUInfo, ...]]:
    """Match TensorFlow's GPUs to the driver's and merge the driver's facts into them.

    TensorFlow's physical GPU ``i`` is CUDA's device ``i``: the ``i``-th GPU after
    ``CUDA_VISIBLE_DEVICES``, whose indexes count in CUDA's order as ``CUDA_DEVICE_ORDER``
    sets it (:func:`cuda_enumeration`: PCI order, or CUDA's default ``FASTEST_FIRST``). The
    model names must agree; when they do not (two models whose speed order the driver's facts
    cannot tell), the first unmatched driver GPU with the same name is taken. TensorFlow does
    not report PCI bus ids before its runtime starts, so the order is the only link.

    Returns:
        ``(TensorFlow's GPUs with the driver's facts, every driver GPU with visible = matched)``.
    """
    order = _cuda_order(facts, env)
    used: set[int] = set()
    merged = []
    for pos, g in enumerate(tf_gpus):
        nv = order[pos] if pos < len(order) else None
        if nv is None or nv.index in used or (g.name and nv.name and nv.name != g.name):
            nv = next(
                (c for c in order if c.index not in used and (not g.name or c.name == g.name)),
                None,
            )
        if nv is None:
            merged.append(g)
            continue
        used.add(nv.index)
        merged.append(
            replace(
                g,
                name=g.name or nv.name,
                compute_capability=g.compute_capability or nv.compute_capability,
                **_driver_facts(nv),
            )
        )
    driver_gpus = tuple(
        GPUInfo(
            nv.index,
            nv.name,
            nv.compute_capability,
            visible=nv.index in used,
            **_driver_facts(nv),
        )
        for nv in facts.gpus
    )
    return tuple(merged), driver_gpus


def _driver_facts(nv: _nvidia.NvidiaGPU) -> dict[str, Any]:
    """The GPUInfo fields only the driver knows, taken from its record of one GPU."""
    return {
        "memory_mb": nv.memory_mb,
        "uuid": nv.uuid,
        "pci_bus_id": nv.pci_bus_id,
        "memory_free_mb": nv.memory_free_mb,
        "utilization_percent": nv.utilization_percent,
        "processes": nv.processes,
    }


def _nvidia_info(
    tf_gpus: tuple[GPUInfo, ...], env: Mapping[str, str]
) -> tuple[tuple[GPUInfo, ...], NvidiaInfo]:
    facts = _nvidia.nvidia_facts()
    gpus, driver_gpus = merge_gpus(tf_gpus, facts, env)
    source: GPUSource = facts.source
    if source == "none" and tf_gpus:
        source = "tensorflow"
    info = NvidiaInfo(
        driver_version=facts.driver_version,
        cuda_driver_version=facts.cuda_driver_version,
        gpu_source=source,
        gpus=driver_gpus,
        mig_gpus=tuple(g.index for g in facts.gpus if g.mig),
    )
    return gpus, info


def _tpu_info(env: Mapping[str, str]) -> TPUInfo:
    hints = [f"{k}={env[k]}" for k in _TPU_ENV if env.get(k)]
    with contextlib.suppress(OSError):
        hints += sorted(str(p) for p in Path("/dev").glob("accel[0-9]*"))
    return TPUInfo(hints=tuple(hints), name=env.get("TPU_NAME") or env.get("COLAB_TPU_ADDR"))


def _tf_facts() -> tuple[TFInfo | None, tuple[GPUInfo, ...], dict[str, Any]]:
    try:
        seam = _tf.TFConfig()
    except ImportError:
        return None, (), {}
    build = seam.build_info()
    info = TFInfo(
        version=str(seam.tf.__version__),
        is_cuda_build=bool(build.get("is_cuda_build", False)),
        is_rocm_build=bool(build.get("is_rocm_build", False)),
        cuda_version=build.get("cuda_version"),
        cudnn_version=build.get("cudnn_version"),
        compute_capabilities=tuple(build.get("cuda_compute_capabilities", ()) or ()),
    )
    physical = seam.gpus()
    visible = {d.name for d in seam.get_visible("GPU")}
    gpus = []
    for i, dev in enumerate(physical):
        details = seam.gpu_details(dev)
        cc = details.get("compute_capability")
        index = int(dev.name.rsplit(":", 1)[-1]) if dev.name[-1:].isdigit() else i
        split = seam.get_split(dev)
        gpus.append(
            GPUInfo(
                index=index,
                name=str(details.get("device_name", "")),
                compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
                memory_mb=None,
                visible=dev.name in visible,
                logical=len(split) if split else 1,
            )
        )
    intra, inter = seam.get_threads()
    extra = {
        "logical_cpus": _tf.cpu_device_count(seam),
        "intra": intra,
        "inter": inter,
        "soft_placement": seam.soft_placement(),
        "eager": seam.functions_run_eagerly(),
        "started": seam.runtime_started(),
    }
    return info, tuple(gpus), extra


_override_lock = threading.Lock()
_override: Inventory | None = None


def inventory() -> Inventory:
    """Collect the facts about this machine and process without starting TensorFlow's runtime.

    Returns the substituted inventory while :func:`use_inventory` is active (tests).

    Example:
        >>> inv = tfplace.inventory()
        >>> len(inv.visible_gpus), inv.cpu.usable_cores  # doctest: +SKIP
        (0, 2)
    """
    if _override is not None:
        return _override
    import platform

    env = os.environ
    tf_info, tf_gpus, extra = _tf_facts()
    gpus, nvidia = _nvidia_info(tf_gpus, env)
    cpu = CPUInfo(
        host_cores=os.cpu_count() or 1,
        affinity_cores=_affinity(),
        quota_cores=cpu_quota(),
        logical_devices=int(extra.get("logical_cpus", 1)),
        intra_op_threads=int(extra.get("intra", 0)),
        inter_op_threads=int(extra.get("inter", 0)),
    )
    slurm = tuple((k, env[k]) for k in sorted(env) if k.startswith("SLURM_"))
    return Inventory(
        python=platform.python_version(),
        platform=sys.platform,
        machine=platform.machine(),
        tensorflow=tf_info,
        keras=_keras_info(env),
        gpus=gpus,
        cpu=cpu,
        tpu=_tpu_info(env),
        cluster=ClusterEnv(tf_config=env.get("TF_CONFIG"), slurm=slurm),
        env=tuple((k, env[k]) for k in ENV_VARS if k in env),
        packages=_packages(),
        runtime_started=bool(extra.get("started", False)),
        soft_placement=extra.get("soft_placement"),
        functions_run_eagerly=extra.get("eager"),
        nvidia_driver=_nvidia_driver(),
        nvidia=nvidia,
    )


@contextlib.contextmanager
def use_inventory(inv: Inventory) -> Iterator[Inventory]:
    """Make :func:`inventory` return ``inv`` inside the block (for tests of device logic).

    Decisions (``plan``, ``pick_strategy``'s choice, doctor findings) then see ``inv``;
    TensorFlow itself still runs on the real machine.

    The substitution is process-wide, on purpose: threads that TensorFlow or ``tf.data``
    start see it too (a ``contextvars`` value would not reach them). Blocks nest; do not
    overlap them from several threads.
    """
    global _override
    if not isinstance(inv, Inventory):
        raise TypeError(f"use_inventory expects an Inventory, found {type(inv).__name__}")
    with _override_lock:
        previous, _override = _override, inv
    try:
        yield inv
    finally:
        with _override_lock:
            _override = previous
