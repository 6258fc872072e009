"""GPU facts from the NVIDIA driver, without TensorFlow.

:func:`nvidia_facts` asks, in this order and stopping at the first that answers:

1. **NVML** through the optional ``pynvml`` module (the ``nvidia-ml-py`` distribution, which the
   ``tfplace[gpu]`` extra installs): name, UUID, PCI bus id, total/free memory, utilization,
   compute capability, MIG mode and compute processes of every GPU, the driver version and the
   CUDA version the driver supports;
2. **nvidia-smi**: ``--query-gpu=... --format=csv,noheader,nounits`` for the GPUs, and the
   plain table for the CUDA version and the processes (a short timeout on each call);
3. **/proc/driver/nvidia**: the driver version and each GPU's model, UUID and bus location.

None of these starts TensorFlow's runtime or CUDA; NVML is the driver's management library.
The parsers are pure functions of the text each source prints, tested against output captured
on real hosts (``tests/fixtures/gpu-host/``).

Example:
    >>> parse_driver_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
    ...                      "580.159.04  Release Build  (nixbld@)")
    '580.159.04'
    >>> cuda_for_driver("580.159.04"), min_driver("12.5.1")
    ('13.0', '555.42.06')
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

__all__ = [
    "CUDA_MAJOR_MIN_DRIVER",
    "CUDA_MIN_DRIVER",
    "QUERY_FIELDS",
    "NvidiaFacts",
    "NvidiaGPU",
    "cuda_for_driver",
    "driver_at_least",
    "from_nvml",
    "from_proc",
    "from_smi",
    "min_driver",
    "normalize_bus_id",
    "nvidia_facts",
    "parse_driver_version",
    "parse_proc",
    "parse_query_gpu",
    "parse_smi_table",
]

Source = Literal["nvml", "nvidia-smi", "proc", "none"]

#: The fields asked from ``nvidia-smi --query-gpu`` (``compute_cap`` needs driver 510 or newer).
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "compute_cap",
    "driver_version",
    "mig.mode.current",
)
#: What every driver answers, for the retry when a field above is unknown to an old driver.
_BASIC_FIELDS = (*QUERY_FIELDS[:8], "driver_version")

#: Minimum Linux driver of each CUDA toolkit release (NVIDIA CUDA Toolkit Release Notes,
#: table "CUDA Toolkit and Corresponding Driver Versions", GA releases and updates;
#: https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/). A driver at or above the value
#: supports that CUDA version completely, including JIT compilation of its PTX.
CUDA_MIN_DRIVER: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((11, 0, 0), "450.36.06"),
    ((11, 1, 0), "455.23.05"),
    ((11, 2, 0), "460.27.03"),
    ((11, 3, 0), "465.19.01"),
    ((11, 4, 0), "470.42.01"),
    ((11, 5, 0), "495.29.05"),
    ((11, 6, 0), "510.39.01"),
    ((11, 7, 0), "515.43.04"),
    ((11, 8, 0), "520.61.05"),
    ((12, 0, 0), "525.60.13"),
    ((12, 0, 1), "525.85.12"),
    ((12, 1, 0), "530.30.02"),
    ((12, 2, 0), "535.54.03"),
    ((12, 2, 1), "535.86.09"),
    ((12, 2, 2), "535.104.05"),
    ((12, 3, 0), "545.23.06"),
    ((12, 3, 1), "545.23.08"),
    ((12, 4, 0), "550.54.14"),
    ((12, 4, 1), "550.54.15"),
    ((12, 5, 0), "555.42.02"),
    ((12, 5, 1), "555.42.06"),
    ((12, 6, 0), "560.28.03"),
    ((12, 6, 1), "560.35.03"),
    ((12, 6, 3), "560.35.05"),
    ((12, 8, 0), "570.26"),
    ((12, 8, 1), "570.124.06"),
    ((12, 9, 0), "575.51.03"),
    ((12, 9, 1), "575.57.08"),
    ((13, 0, 0), "580.65.06"),
)
#: Minimum Linux driver for CUDA minor version compatibility: a program built with any CUDA
#: X.y runs on a driver at or above this (same release notes, table "CUDA Toolkit and Minimum
#: Required Driver Version for CUDA Minor Version Compatibility"), except where it needs a
#: newer driver's features, notably JIT compilation of PTX newer than the driver.
CUDA_MAJOR_MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


@dataclass(frozen=True)
class NvidiaGPU:
    """One GPU as the NVIDIA driver reports it (index: NVML / nvidia-smi order, PCI order).

    Attributes:
        index: the driver's index (``nvidia-smi -i``), PCI bus order.
        name: the model, e.g. ``"NVIDIA H100 80GB HBM3"``.
        uuid: ``"GPU-..."``.
        pci_bus_id: ``"0000:00:06.0"`` (lower case, 4-digit domain, as CUDA writes it).
        memory_mb: total memory in MiB.
        memory_free_mb: free memory in MiB.
        utilization_percent: GPU utilization over the driver's last sample period.
        compute_capability: ``(major, minor)``.
        processes: compute processes, each ``"pid name used_mb"``.
        mig: whether MIG mode is on.
    """

    index: int
    name: str = ""
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_mb: int | None = None
    memory_free_mb: int | None = None
    utilization_percent: int | None = None
    compute_capability: tuple[int, int] | None = None
    processes: tuple[str, ...] = ()
    mig: bool = False


@dataclass(frozen=True)
class NvidiaFacts:
    """What the driver says: where it was read, versions, and the GPUs."""

    source: Source = "none"
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[NvidiaGPU, ...] = ()


# ------------------------------------------------------------------------- small parsers


def parse_driver_version(text: str | None) -> str | None:
    """The driver version (``"580.159.04"``) in a line such as ``/proc/driver/nvidia/version``.

    Example:
        >>> parse_driver_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14")
        '550.54.14'
    """
    if not text:
        return None
    m = re.search(r"(?<![\w.])(\d+\.\d+(?:\.\d+)?)(?![\w.])", text.strip().splitlines()[0])
    return m.group(1) if m else None


def _vtuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def driver_at_least(driver: str, minimum: str) -> bool:
    """Whether driver version ``driver`` is ``minimum`` or newer (numeric, part by part).

    Example:
        >>> driver_at_least("580.159.04", "555.42.06"), driver_at_least("550.54", "555.42.06")
        (True, False)
    """
    return _vtuple(driver) >= _vtuple(minimum)


def min_driver(cuda_version: str) -> str | None:
    """The minimum Linux driver for a CUDA version (``"12.5.1"`` or ``"12.5"``), or None.

    The entry for the exact release, else the newest entry not newer than it in the same
    major version (:data:`CUDA_MIN_DRIVER`).

    Example:
        >>> min_driver("12.5"), min_driver("12.7"), min_driver("10.1")
        ('555.42.02', '560.35.05', None)
    """
    parts = (*_vtuple(cuda_version), 0, 0, 0)[:3]
    best = None
    for key, drv in CUDA_MIN_DRIVER:
        if key[0] == parts[0] and key <= parts:
            best = drv
    return best


def cuda_for_driver(driver: str | None) -> str | None:
    """The newest CUDA ``major.minor`` a driver version supports (from :data:`CUDA_MIN_DRIVER`).

    Used when the driver was read from ``/proc`` (NVML and nvidia-smi say it themselves).

    Example:
        >>> cuda_for_driver("535.104.05"), cuda_for_driver("400.1")
        ('12.2', None)
    """
    if not driver:
        return None
    best = None
    for key, drv in CUDA_MIN_DRIVER:
        if driver_at_least(driver, drv):
            best = f"{key[0]}.{key[1]}"
    return best


def normalize_bus_id(bus_id: str | bytes | None) -> str | None:
    """A PCI bus id as CUDA and ``/proc`` write it: ``"00000000:00:06.0"`` -> ``"0000:00:06.0"``.

    Example:
        >>> normalize_bus_id("00000000:3B:00.0")
        '0000:3b:00.0'
    """
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode(errors="replace")
    if not bus_id or not bus_id.strip():
        return None
    text = bus_id.strip().lower().rstrip("\x00")
    domain, sep, rest = text.partition(":")
    if not sep or ":" not in rest:
        return text
    return f"{domain[-4:].rjust(4, '0')}:{rest}"


def _int(text: str) -> int | None:
    m = re.match(r"\s*\[?(\d+)", text)
    return int(m.group(1)) if m else None


def _cc(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------- nvidia-smi


def parse_query_gpu(
    text: str, fields: Sequence[str] = QUERY_FIELDS
) -> tuple[tuple[NvidiaGPU, ...], str | None]:
    """Parse ``nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]`` output.

    A header line (``--format=csv``) names the fields and overrides ``fields``; units
    (``81559 MiB``, ``0 %``) and ``[N/A]`` values are understood.

    Returns:
        The GPUs and the driver version (None when not asked).

    Example:
        >>> gpus, driver = parse_query_gpu("0, Tesla T4, 15360, 7.5, 535.104.05",
        ...                                ["index", "name", "memory.total", "compute_cap",
        ...                                 "driver_version"])
        >>> gpus[0].memory_mb, gpus[0].compute_capability, driver
        (15360, (7, 5), '535.104.05')
    """
    names = list(fields)
    gpus: list[NvidiaGPU] = []
    driver: str | None = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if not line.strip():
            continue
        if cells[0] == "index" or cells[0].startswith("index "):
            names = [c.split(" [", 1)[0].strip() for c in cells]
            continue
        row = dict(zip(names, cells, strict=False))
        index = _int(row.get("index", ""))
        if index is None:
            continue
        total = _int(row.get("memory.total", ""))
        used = _int(row.get("memory.used", ""))
        free = _int(row.get("memory.free", ""))
        if free is None and total is not None and used is not None:
            free = total - used
        driver = driver or (row.get("driver_version") or None)
        gpus.append(
            NvidiaGPU(
                index=index,
                name=row.get("name", ""),
                uuid=row.get("uuid") or None,
                pci_bus_id=normalize_bus_id(row.get("pci.bus_id")),
                memory_mb=total,
                memory_free_mb=free,
                utilization_percent=_int(row.get("utilization.gpu", "")),
                compute_capability=_cc(row.get("compute_cap", "")),
                mig=row.get("mig.mode.current", "").lower() == "enabled",
            )
        )
    return tuple(gpus), driver


_TABLE_HEADER = re.compile(r"Driver Version:\s*([\d.]+).*?CUDA Version:\s*([\d.]+)")
_PROCESS_ROW = re.compile(r"^\|\s+(\d+)\s+(?:\S+\s+\S+\s+)?(\d+)\s+(\S+)\s+(.+?)\s+(\d+)MiB\s*\|$")


def parse_smi_table(text: str) -> tuple[str | None, str | None, dict[int, tuple[str, ...]]]:
    """Parse the plain ``nvidia-smi`` table: driver version, CUDA version, processes per GPU.

    Returns:
        ``(driver_version, cuda_version, {gpu index: ("pid name used_mb", ...)})``.

    Example:
        >>> parse_smi_table("| NVIDIA-SMI 580.159.04  Driver Version: 580.159.04  "
        ...                 "CUDA Version: 13.0 |")[:2]
        ('580.159.04', '13.0')
    """
    driver = cuda = None
    if m := _TABLE_HEADER.search(text):
        driver, cuda = m.group(1), m.group(2)
    procs: dict[int, list[str]] = {}
    in_processes = False
    for line in text.splitlines():
        if "Processes:" in line:
            in_processes = True
            continue
        if in_processes and (m := _PROCESS_ROW.match(line.strip())):
            gpu, pid, _kind, name, used = m.groups()
            procs.setdefault(int(gpu), []).append(f"{pid} {name.rsplit('/', 1)[-1]} {used}")
    return driver, cuda, {k: tuple(v) for k, v in procs.items()}


Runner = Callable[[Sequence[str]], "str | None"]


def _run(args: Sequence[str], timeout: float = 3.0) -> str | None:
    """Run a command; its stdout, or None when it is missing, fails or times out."""
    try:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def from_smi(run: Runner | None = None) -> NvidiaFacts | None:
    """The facts through ``nvidia-smi``, or None when it is missing or fails.

    Args:
        run: runs a command and returns its stdout or None (tests pass captured output).
    """
    if run is None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None
        run = lambda args: _run([exe, *args[1:]])  # noqa: E731
    fields: Sequence[str] = QUERY_FIELDS
    out = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if out is None:  # an old driver rejects compute_cap / mig.mode.current: ask for less
        fields = _BASIC_FIELDS
        q = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        out = run(q)
    if out is None:
        return None
    gpus, driver = parse_query_gpu(out, fields)
    table = run(["nvidia-smi"]) or ""
    table_driver, cuda, procs = parse_smi_table(table)
    gpus = tuple(NvidiaGPU(**{**g.__dict__, "processes": procs.get(g.index, ())}) for g in gpus)
    driver = driver or table_driver
    return NvidiaFacts("nvidia-smi", driver, cuda or cuda_for_driver(driver), gpus)


# ------------------------------------------------------------------------- /proc


def parse_proc(version: str, informations: Sequence[str]) -> NvidiaFacts:
    """Facts from ``/proc/driver/nvidia/version`` and each ``gpus/*/information`` text.

    The CUDA version is inferred from the driver version (:func:`cuda_for_driver`); memory,
    utilization and compute capability are not in ``/proc``.

    Example:
        >>> info = "Model: \\t NVIDIA H100 80GB HBM3\\nBus Location: \\t 0000:00:06.0\\n"
        >>> facts = parse_proc("NVRM version: NVIDIA UNIX Kernel Module  580.159.04", [info])
        >>> facts.gpus[0].name, facts.gpus[0].pci_bus_id, facts.cuda_driver_version
        ('NVIDIA H100 80GB HBM3', '0000:00:06.0', '13.0')
    """
    driver = parse_driver_version(version)
    rows: list[dict[str, str]] = []
    for text in informations:
        row = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                row[key.strip()] = value.strip()
        rows.append(row)
    rows.sort(key=lambda r: r.get("Bus Location", ""))  # the driver's index is PCI order
    gpus = tuple(
        NvidiaGPU(
            index=int(r["Device Minor"]) if r.get("Device Minor", "").isdigit() else i,
            name=r.get("Model", ""),
            uuid=r.get("GPU UUID") or None,
            pci_bus_id=normalize_bus_id(r.get("Bus Location")),
        )
        for i, r in enumerate(rows)
    )
    gpus = tuple(NvidiaGPU(**{**g.__dict__, "index": i}) for i, g in enumerate(gpus))
    return NvidiaFacts("proc", driver, cuda_for_driver(driver), gpus)


def from_proc(root: Path = Path("/proc/driver/nvidia")) -> NvidiaFacts | None:
    """The facts from ``/proc/driver/nvidia``, or None when no NVIDIA driver is loaded."""
    try:
        version = (root / "version").read_text()
    except OSError:
        return None
    infos = []
    for path in sorted((root / "gpus").glob("*/information")):
        with contextlib.suppress(OSError):
            infos.append(path.read_text())
    return parse_proc(version, infos)


# ------------------------------------------------------------------------- NVML


def from_nvml(nvml: Any) -> NvidiaFacts | None:
    """The facts through an NVML binding (the ``pynvml`` module), or None when NVML fails.

    Each per-GPU value that NVML cannot give (a MIG device, a permission) is left None.
    """
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...: no NVML here
        return None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = None
        with contextlib.suppress(Exception):
            getter = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None)
            code = int((getter or nvml.nvmlSystemGetCudaDriverVersion)())
            cuda = f"{code // 1000}.{code % 1000 // 10}"
        gpus = [_nvml_gpu(nvml, i) for i in range(int(nvml.nvmlDeviceGetCount()))]
        return NvidiaFacts("nvml", driver, cuda or cuda_for_driver(driver), tuple(gpus))
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _nvml_gpu(nvml: Any, index: int) -> NvidiaGPU:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = _try(lambda: nvml.nvmlDeviceGetMemoryInfo(h))
    util = _try(lambda: nvml.nvmlDeviceGetUtilizationRates(h))
    cc = _try(lambda: nvml.nvmlDeviceGetCudaComputeCapability(h))
    pci = _try(lambda: nvml.nvmlDeviceGetPciInfo(h))
    mig = _try(lambda: nvml.nvmlDeviceGetMigMode(h))
    procs = []
    for p in _try(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h)) or ():
        pid = p.pid
        name = _try(lambda: _text(nvml.nvmlSystemGetProcessName(pid))) or "?"  # noqa: B023
        used = p.usedGpuMemory // 2**20 if p.usedGpuMemory is not None else "?"
        procs.append(f"{p.pid} {name.rsplit('/', 1)[-1]} {used}")
    return NvidiaGPU(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(h)),
        uuid=_try(lambda: _text(nvml.nvmlDeviceGetUUID(h))),
        pci_bus_id=normalize_bus_id(pci.busId) if pci is not None else None,
        memory_mb=mem.total // 2**20 if mem is not None else None,
        memory_free_mb=mem.free // 2**20 if mem is not None else None,
        utilization_percent=int(util.gpu) if util is not None else None,
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        processes=tuple(procs),
        mig=bool(mig and mig[0] == 1),
    )


def _import_nvml() -> ModuleType | None:
    import importlib

    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


# ------------------------------------------------------------------------- all together


_PROC = Path("/proc/driver/nvidia")
_cache: tuple[float, NvidiaFacts] | None = None


def nvidia_facts(
    *,
    nvml: Any = None,
    run: Runner | None = None,
    proc_root: Path = _PROC,
    max_age: float = 5.0,
) -> NvidiaFacts:
    """What the NVIDIA driver says about this machine: NVML, else nvidia-smi, else ``/proc``.

    The answer from the real sources is reused for ``max_age`` seconds: ``inventory()`` runs
    many times while a program configures itself, and ``nvmlInit`` or an ``nvidia-smi`` start
    can take long on a host without the persistence daemon.

    Args:
        nvml: an NVML binding to use instead of importing ``pynvml`` (tests pass a fake).
        run: the command runner for nvidia-smi (tests pass captured output).
        proc_root: where the driver's ``/proc`` files are.
        max_age: seconds a previous answer of the real sources stays good (0: ask again, e.g.
            for free memory right now).

    Returns:
        The facts; ``source="none"`` (and no GPU) when no source answers: no NVIDIA driver.

    Example:
        >>> nvidia_facts().source in ("nvml", "nvidia-smi", "proc", "none")
        True
    """
    global _cache
    real = nvml is None and run is None and proc_root == _PROC
    if real and _cache is not None and time.monotonic() - _cache[0] < max_age:
        return _cache[1]
    facts = _ask(nvml, run, proc_root)
    if real:
        _cache = (time.monotonic(), facts)
    return facts


def _ask(nvml: Any, run: Runner | None, proc_root: Path) -> NvidiaFacts:
    module = nvml if nvml is not None else _import_nvml()
    if module is not None and (facts := from_nvml(module)) is not None:
        return facts
    if (facts := from_smi(run)) is not None:
        return facts
    return from_proc(proc_root) or NvidiaFacts()
