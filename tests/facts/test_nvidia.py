"""GPU facts without TensorFlow: NVML, nvidia-smi and /proc parsers against output captured on
real H100/H200 hosts (tests/fixtures/gpu-host, README there), and the merge into the inventory.

Everything GPU here is checked through those fixtures: this suite runs on CPU-only machines.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import QUIET_ENV

from tfplace._facts import nvidia as _nvidia
from tfplace._facts.inventory import GPUInfo, Inventory, cuda_enumeration, merge_gpus
from tfplace._facts.nvidia import (
    NvidiaFacts,
    NvidiaGPU,
    cuda_for_driver,
    driver_at_least,
    from_nvml,
    from_proc,
    from_smi,
    min_driver,
    nvidia_facts,
    parse_driver_version,
    parse_proc,
    parse_query_gpu,
    parse_smi_table,
)

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu-host"
H100 = "NVIDIA H100 80GB HBM3"
H100_UUID = "GPU-faf8474b-e3c4-f810-d437-4cbf515bfd11"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ------------------------------------------------------------------ captured NVML values


def nvml_values() -> tuple[str, int, list[list[str]]]:
    """h100-nvml.txt: ``== nvml driver D cuda C`` then ``gpu i NAME (maj, min) total used util
    busid uuid`` per GPU."""
    lines = fixture("h100-nvml.txt").splitlines()
    head = lines[0].split()
    driver, cuda = head[head.index("driver") + 1], int(head[head.index("cuda") + 1])
    gpus = []
    for line in lines[1:]:
        before, _, after = line.partition(" (")
        cc, _, rest = after.partition(") ")
        index, name = before.split(" ", 2)[1:]
        gpus.append([index, name, *cc.split(", "), *rest.split()])
    return driver, cuda, gpus


class FakeNVML:
    """A stand-in for the ``pynvml`` module serving the values captured on the H100 host."""

    class NVMLError(Exception):
        pass

    def __init__(self, *, fail_init: bool = False, mig: bool = False, procs: bool = False):
        self.driver, self.cuda, self.gpus = nvml_values()
        self.fail_init, self.mig, self.procs = fail_init, mig, procs
        self.calls: list[str] = []

    def nvmlInit(self) -> None:  # noqa: N802
        self.calls.append("init")
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> list[str]:  # noqa: N802
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: list[str]) -> bytes:  # noqa: N802
        return h[1].encode()  # old nvidia-ml-py versions return bytes

    def nvmlDeviceGetUUID(self, h: list[str]) -> str:  # noqa: N802
        return h[8]

    def nvmlDeviceGetCudaComputeCapability(self, h: list[str]) -> tuple[int, int]:  # noqa: N802
        return int(h[2]), int(h[3])

    def nvmlDeviceGetMemoryInfo(self, h: list[str]) -> SimpleNamespace:  # noqa: N802
        total, used = int(h[4]) * 2**20, int(h[5]) * 2**20
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: list[str]) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=int(h[6]), memory=0)

    def nvmlDeviceGetPciInfo(self, h: list[str]) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(busId=h[7].encode())

    def nvmlDeviceGetMigMode(self, h: list[str]) -> tuple[int, int]:  # noqa: N802
        if not self.mig:
            raise self.NVMLError("Not Supported")
        return (1, 1)

    def nvmlDeviceGetComputeRunningProcesses(self, h: list[str]) -> list[SimpleNamespace]:  # noqa: N802
        return [SimpleNamespace(pid=4242, usedGpuMemory=1024 * 2**20)] if self.procs else []

    def nvmlSystemGetProcessName(self, pid: int) -> str:  # noqa: N802
        return "/usr/bin/python3"


def test_nvml_facts_from_the_captured_h100_values() -> None:
    nvml = FakeNVML(procs=True)
    facts = from_nvml(nvml)
    assert facts is not None
    assert facts.source == "nvml"
    assert facts.driver_version == "580.159.04"
    assert facts.cuda_driver_version == "13.0"  # 13000 from nvmlSystemGetCudaDriverVersion_v2
    (gpu,) = facts.gpus
    assert gpu.name == H100 and gpu.uuid == H100_UUID
    assert gpu.compute_capability == (9, 0)
    assert gpu.memory_mb == 81559 and gpu.memory_free_mb == 81559 - 480
    assert gpu.utilization_percent == 0
    assert gpu.pci_bus_id == "0000:00:06.0"  # NVML's 8-digit domain, as CUDA writes it
    assert gpu.processes == ("4242 python3 1024",)
    assert gpu.mig is False
    assert nvml.calls == ["init", "shutdown"]  # NVML is released again


def test_nvml_that_cannot_start_falls_through_to_nvidia_smi(tmp_path: Path) -> None:
    def run(args: Sequence[str]) -> str | None:
        if any(a.startswith("--query-gpu") for a in args):
            return fixture("h100-query-gpu.csv")
        return fixture("h100-nvidia-smi.txt")

    facts = nvidia_facts(nvml=FakeNVML(fail_init=True), run=run, proc_root=tmp_path)
    assert facts.source == "nvidia-smi"
    assert facts.gpus[0].name == H100


@pytest.mark.slow
def test_fake_pynvml_module_is_used_by_a_fresh_inventory(tmp_path: Path) -> None:
    """The import path: a ``pynvml`` module on sys.path (here a fake) feeds inventory()."""
    here = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    (tmp_path / "pynvml.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path[:0] = {here!r}
            from test_nvidia import FakeNVML
            _fake = FakeNVML()
            def __getattr__(name):
                return getattr(_fake, name)
            """
        )
    )
    code = textwrap.dedent(
        """
        import json
        from tfplace._facts.inventory import inventory
        inv = inventory()
        print(json.dumps(inv.to_dict()["nvidia"]))
        """
    )
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    env["CUDA_VISIBLE_DEVICES"] = "-1"  # TensorFlow (if any) lists no GPU on any machine
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    nvidia = json.loads(proc.stdout.strip().splitlines()[-1])
    assert nvidia["gpu_source"] == "nvml"
    assert nvidia["driver_version"] == "580.159.04"
    assert nvidia["cuda_driver_version"] == "13.0"
    (gpu,) = nvidia["gpus"]
    assert (gpu["name"], gpu["memory_mb"], gpu["uuid"]) == (H100, 81559, H100_UUID)
    assert gpu["visible"] is False  # CUDA_VISIBLE_DEVICES=-1: TensorFlow does not list it


# ------------------------------------------------------------------ nvidia-smi


def test_query_gpu_csv_with_header_and_units() -> None:
    gpus, driver = parse_query_gpu(fixture("h100-query-gpu.csv"))
    assert driver == "580.159.04"
    (gpu,) = gpus
    assert (gpu.index, gpu.name, gpu.uuid) == (0, H100, H100_UUID)
    assert gpu.memory_mb == 81559
    assert gpu.memory_free_mb == 81559  # no memory.free column: total - used (0 MiB)
    assert gpu.utilization_percent == 0
    assert gpu.compute_capability == (9, 0)
    assert gpu.pci_bus_id == "0000:00:06.0"


def test_query_gpu_noheader_nounits_as_tfplace_asks() -> None:
    # The captured row, in the form tfplace asks for: no header, no units, tfplace's fields.
    index, name, uuid = fixture("h100-query-gpu.csv").splitlines()[1].split(", ")[:3]
    row = ", ".join(
        [index, name, uuid, "00000000:00:06.0", "81559", "0", "81079", "0", "9.0", "580.159.04"]
    )
    gpus, driver = parse_query_gpu(row)
    assert gpus[0].memory_free_mb == 81079 and driver == "580.159.04"


def test_mig_mode_in_query_output() -> None:
    gpus, _ = parse_query_gpu(fixture("variant-mig-query-gpu.csv"))
    assert gpus[0].mig is True
    assert parse_query_gpu(fixture("h100-query-gpu.csv"))[0][0].mig is False


def test_smi_table_header_and_processes() -> None:
    driver, cuda, procs = parse_smi_table(fixture("h100-nvidia-smi.txt"))
    assert (driver, cuda, procs) == ("580.159.04", "13.0", {})  # "No running processes found"
    _, _, procs = parse_smi_table(fixture("variant-processes-nvidia-smi.txt"))
    assert procs == {0: ("4242117 python3 71680",)}


def test_smi_source_combines_query_and_table(tmp_path: Path) -> None:
    asked: list[list[str]] = []

    def run(args: Sequence[str]) -> str | None:
        asked.append(list(args))
        if any(a.startswith("--query-gpu") for a in args):
            return fixture("h100-query-gpu.csv")
        return fixture("variant-processes-nvidia-smi.txt")

    facts = from_smi(run)
    assert facts is not None and facts.source == "nvidia-smi"
    assert facts.cuda_driver_version == "13.0"
    assert facts.gpus[0].processes == ("4242117 python3 71680",)
    assert "--format=csv,noheader,nounits" in asked[0]


def test_old_driver_without_compute_cap_gets_the_basic_query() -> None:
    def run(args: Sequence[str]) -> str | None:
        query = next((a for a in args if a.startswith("--query-gpu=")), None)
        if query and "compute_cap" in query:
            return None  # 'Field "compute_cap" is not a valid field to query.'
        if query:
            real = fixture("h100-query-gpu.csv").splitlines()[1].split(", ")
            return ", ".join([*real[:3], real[8], "81559", "0", "81079", "0", real[7]])
        return None

    facts = from_smi(run)
    assert facts is not None
    assert facts.gpus[0].compute_capability is None and facts.gpus[0].memory_mb == 81559
    assert facts.cuda_driver_version == "13.0"  # no table: from NVIDIA's driver table


# ------------------------------------------------------------------ /proc


def proc_tree(root: Path, text: str) -> Path:
    """Lay out the captured /proc/driver/nvidia text as the driver's files."""
    version, listing, info = text.split("\n", 2)[0], "", ""
    rest = text.split("\n")[2:]
    listing, info = rest[0], "\n".join(rest[1:])
    (root / "version").parent.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text(version + "\n")
    (root / "gpus" / listing).mkdir(parents=True)
    (root / "gpus" / listing / "information").write_text(info)
    return root


def test_proc_files_as_captured(tmp_path: Path) -> None:
    facts = from_proc(proc_tree(tmp_path / "nvidia", fixture("h100-proc-driver-nvidia.txt")))
    assert facts is not None and facts.source == "proc"
    assert facts.driver_version == "580.159.04"
    assert facts.cuda_driver_version == "13.0"  # inferred through NVIDIA's driver table
    (gpu,) = facts.gpus
    assert (gpu.name, gpu.uuid, gpu.pci_bus_id) == (H100, H100_UUID, "0000:00:06.0")
    assert gpu.memory_mb is None and gpu.compute_capability is None  # not in /proc


def test_old_driver_variant(tmp_path: Path) -> None:
    text = fixture("variant-old-driver-proc-driver-nvidia.txt")
    facts = from_proc(proc_tree(tmp_path / "nvidia", text))
    assert facts is not None
    assert facts.driver_version == "470.82.01"
    assert facts.cuda_driver_version == "11.4"


def test_no_gpu_machine(tmp_path: Path) -> None:
    facts = nvidia_facts(nvml=FakeNVML(fail_init=True), run=lambda a: None, proc_root=tmp_path)
    assert facts == NvidiaFacts()
    assert facts.source == "none" and facts.gpus == ()


def test_parse_proc_orders_by_bus_location() -> None:
    info = fixture("h100-proc-driver-nvidia.txt").split("0000:00:06.0\n", 1)[1]
    second = info.replace("0000:00:06.0", "0000:00:05.0").replace("Device Minor: \t 0", "")
    facts = parse_proc("NVRM version: x  580.159.04", [info, second])
    assert [g.pci_bus_id for g in facts.gpus] == ["0000:00:05.0", "0000:00:06.0"]
    assert [g.index for g in facts.gpus] == [0, 1]


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("line", "version"),
    [
        (fixture("h100-proc-driver-nvidia.txt"), "580.159.04"),
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15 UTC",
            "535.104.05",
        ),
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module", None),
        ("", None),
    ],
)
def test_driver_version_parsing(line: str, version: str | None) -> None:
    assert parse_driver_version(line) == version


def test_driver_table() -> None:
    assert min_driver("12.5.1") == "555.42.06"
    assert min_driver("12.5") == "555.42.02"
    assert min_driver("13.0") == "580.65.06"
    assert cuda_for_driver("555.42.06") == "12.5"
    assert cuda_for_driver("555.42.01") == "12.4"
    assert driver_at_least("570.124.06", "570.26") and not driver_at_least("525.60", "525.60.13")
    # the table is ordered: each release needs at least the driver of the one before
    drivers = [d for _, d in _nvidia.CUDA_MIN_DRIVER]
    assert all(driver_at_least(b, a) for a, b in itertools.pairwise(drivers))


# ------------------------------------------------------------------ merge with TensorFlow


def two_cards() -> NvidiaFacts:
    """The captured H100 and a second card (an edited copy) on another bus."""
    gpus, driver = parse_query_gpu(fixture("h100-query-gpu.csv"))
    other = NvidiaGPU(
        index=1,
        name="NVIDIA H200",
        uuid="GPU-00000000-0000-0000-0000-000000000001",
        pci_bus_id="0000:00:07.0",
        memory_mb=143771,
        memory_free_mb=1000,
        compute_capability=(9, 0),
    )
    return NvidiaFacts("nvidia-smi", driver, "13.0", (gpus[0], other))


@pytest.mark.parametrize(
    ("cvd", "tf_names", "matched"),
    [
        (None, [H100, "NVIDIA H200"], [0, 1]),
        ("1", ["NVIDIA H200"], [1]),
        ("1,0", ["NVIDIA H200", H100], [1, 0]),
        ("GPU-00000000", ["NVIDIA H200"], [1]),
        # FASTEST_FIRST (CUDA's default order) may number the H200 first: names decide
        (None, ["NVIDIA H200", H100], [1, 0]),
    ],
)
def test_tensorflow_gpus_matched_in_cuda_order(
    cvd: str | None, tf_names: list[str], matched: list[int]
) -> None:
    tf_gpus = tuple(GPUInfo(i, name, (9, 0)) for i, name in enumerate(tf_names))
    env = {"CUDA_VISIBLE_DEVICES": cvd} if cvd is not None else {}
    merged, seen = merge_gpus(tf_gpus, two_cards(), env)
    by_uuid = {g.uuid: g.index for g in two_cards().gpus}
    assert [by_uuid[g.uuid] for g in merged] == matched
    assert [g.index for g in merged] == list(range(len(tf_names)))  # TensorFlow's indexes kept
    assert merged[0].memory_mb in (81559, 143771)
    assert {g.index for g in seen if g.visible} == set(matched)


# A mixed-model host for CUDA_DEVICE_ORDER, built from the captures (nothing here is new GPU
# output): the captured H100 row of h100-query-gpu.csv as is, and three edited copies of it.
# The H200 takes the name, memory and compute capability of the H200 host's captures
# (h200-tf-gpu-doctor.txt, README: 143,771 MiB, compute 9.0) and the load of the
# variant-processes edit (71690 MiB used, 97 %); a second H100 with another UUID and bus; and an
# older model (an edit: compute 8.0) on the lowest bus, so that CUDA's two orders differ.
H200 = "NVIDIA H200"
OLDER = "NVIDIA A100-SXM4-80GB"


def mixed_host_csv() -> str:
    header, h100 = fixture("h100-query-gpu.csv").splitlines()[:2]
    cells = h100.split(", ")  # index, name, uuid, total, used, util, cc, driver, bus

    def edit(index: int, **changes: str) -> str:
        row = dict(zip(["index", "name", "uuid", "total", "used", "util", "cc", "driver", "bus"],
                       cells, strict=True))  # fmt: skip
        row.update(index=str(index), **changes)
        return ", ".join(row.values())

    return "\n".join(
        [
            header,
            edit(0, name=OLDER, uuid="GPU-a100a100-0000-0000-0000-000000000000",
                 used="1024 MiB", util="3 %", cc="8.0", bus="00000000:00:05.0"),
            edit(1),  # the captured H100, unchanged but for its index on this host
            edit(2, name=H200, uuid="GPU-42000000-0000-0000-0000-000000000002",
                 total="143771 MiB", used="71690 MiB", util="97 %", bus="00000000:00:07.0"),
            edit(3, uuid="GPU-faf8474b-0000-0000-0000-000000000003", used="40000 MiB",
                 util="50 %", bus="00000000:00:08.0"),
        ]
    )  # fmt: skip


def mixed_host() -> NvidiaFacts:
    gpus, driver = parse_query_gpu(mixed_host_csv())
    return NvidiaFacts("nvidia-smi", driver, "13.0", gpus)


def test_mixed_host_fixture_keeps_the_captured_h100_row() -> None:
    captured = parse_query_gpu(fixture("h100-query-gpu.csv"))[0][0]
    gpus = mixed_host().gpus
    assert gpus[1] == dataclasses.replace(captured, index=1)
    assert [(g.name, g.compute_capability, g.pci_bus_id) for g in gpus] == [
        (OLDER, (8, 0), "0000:00:05.0"),
        (H100, (9, 0), "0000:00:06.0"),
        (H200, (9, 0), "0000:00:07.0"),
        (H100, (9, 0), "0000:00:08.0"),
    ]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("PCI_BUS_ID", [0, 1, 2, 3]),
        (None, [1, 2, 3, 0]),  # CUDA's default, FASTEST_FIRST: 9.0 before 8.0, ties by bus
        ("FASTEST_FIRST", [1, 2, 3, 0]),
        ("pci_bus_id", [0, 1, 2, 3]),
    ],
)
def test_cuda_enumeration_follows_cuda_device_order(order: str | None, expected: list[int]) -> None:
    env = {"CUDA_DEVICE_ORDER": order} if order is not None else {}
    assert [g.index for g in cuda_enumeration(mixed_host(), env)] == expected


def test_fastest_first_without_compute_capabilities_keeps_pci_order() -> None:
    # /proc gives no compute capability: the speed order is unknown, names confirm the pairs.
    facts = mixed_host()
    unknown = dataclasses.replace(
        facts, gpus=tuple(dataclasses.replace(g, compute_capability=None) for g in facts.gpus)
    )
    assert [g.index for g in cuda_enumeration(unknown, {})] == [0, 1, 2, 3]
    # The captured H100 and H200 alone: one compute capability, so both orders are PCI order.
    pair = dataclasses.replace(facts, gpus=facts.gpus[1:3])
    for env in ({}, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}):
        assert [g.name for g in cuda_enumeration(pair, env)] == [H100, H200]


@pytest.mark.parametrize(
    ("order", "cvd", "driver"),
    [
        # TensorFlow lists CUDA's devices in CUDA's order; `driver` is the driver index (PCI
        # order) whose facts must land on TensorFlow's GPU 0, 1, ...
        ("PCI_BUS_ID", None, [0, 1, 2, 3]),
        (None, None, [1, 2, 3, 0]),
        ("PCI_BUS_ID", "1,2", [1, 2]),
        (None, "1,2", [2, 3]),  # FASTEST_FIRST: CUDA's 1 and 2 are the H200 and the 2nd H100
        (None, "2,1", [3, 2]),
        ("PCI_BUS_ID", "3,0", [3, 0]),
        (None, "3,0", [0, 1]),
        (None, "0", [1]),
        ("PCI_BUS_ID", "0", [0]),
        (None, "GPU-42000000", [2]),  # a UUID prefix is the same card in either order
        ("PCI_BUS_ID", "GPU-42000000", [2]),
    ],
)
def test_mixed_host_facts_land_on_the_right_tensorflow_index(
    order: str | None, cvd: str | None, driver: list[int]
) -> None:
    facts = mixed_host()
    # What TensorFlow reports for each of its GPUs: the model and compute capability only.
    tf_gpus = tuple(
        GPUInfo(i, facts.gpus[d].name, facts.gpus[d].compute_capability)
        for i, d in enumerate(driver)
    )
    env = {k: v for k, v in {"CUDA_DEVICE_ORDER": order, "CUDA_VISIBLE_DEVICES": cvd}.items() if v}
    merged, seen = merge_gpus(tf_gpus, facts, env)
    assert [g.index for g in merged] == list(range(len(driver)))  # TensorFlow's indexes kept
    for g, d in zip(merged, driver, strict=True):
        nv = facts.gpus[d]
        got = (g.uuid, g.pci_bus_id, g.memory_mb, g.memory_free_mb, g.utilization_percent)
        assert got == (
            nv.uuid,
            nv.pci_bus_id,
            nv.memory_mb,
            nv.memory_free_mb,
            nv.utilization_percent,
        ), (g.index, d)
    assert sorted(g.index for g in seen if g.visible) == sorted(driver)


def test_without_tensorflow_the_driver_gpus_are_listed_not_visible() -> None:
    merged, seen = merge_gpus((), two_cards(), {})
    assert merged == ()
    assert [(g.name, g.visible) for g in seen] == [(H100, False), ("NVIDIA H200", False)]


def test_unmatched_tensorflow_gpu_is_kept_as_tensorflow_reports_it() -> None:
    tf_gpu = GPUInfo(0, "Some Other GPU", (8, 0))
    merged, seen = merge_gpus((tf_gpu,), two_cards(), {"CUDA_VISIBLE_DEVICES": "MIG-abc"})
    assert merged == (tf_gpu,)
    assert not any(g.visible for g in seen)


def test_inventory_to_dict_has_the_new_fields() -> None:
    from tfplace.testing import fake_inventory

    gpu = GPUInfo(0, H100, (9, 0), 81559, uuid=H100_UUID, memory_free_mb=81079,
                  utilization_percent=3, processes=("1 python 10",))  # fmt: skip
    data = json.loads(json.dumps(fake_inventory(gpus=[gpu]).to_dict()))
    assert set(data["gpus"][0]) == {
        "index", "name", "compute_capability", "memory_mb", "visible", "uuid",
        "pci_bus_id", "memory_free_mb", "utilization_percent", "processes", "logical",
    }  # fmt: skip
    assert set(data["nvidia"]) == {
        "driver_version", "cuda_driver_version", "gpu_source", "gpus", "mig_gpus",
    }  # fmt: skip
    assert data["nvidia"]["gpu_source"] == "nvml" and data["nvidia_driver"].startswith("NVRM")


# ------------------------------------------------------------------ this machine, any machine


def test_this_machine_facts_are_consistent_and_fast() -> None:
    start = time.perf_counter()
    facts = nvidia_facts()
    seconds = time.perf_counter() - start
    assert facts.source in ("nvml", "nvidia-smi", "proc", "none")
    assert (facts.driver_version is None) == (facts.source == "none")
    assert seconds < 10  # each nvidia-smi call has a 3 s timeout; NVML and /proc are fast
    inv: Inventory = __import__("tfplace").inventory()
    assert inv.nvidia.gpu_source in ("nvml", "nvidia-smi", "proc", "tensorflow", "none")
    assert len(inv.nvidia.gpus) == len(facts.gpus)


def static_facts(facts: NvidiaFacts) -> NvidiaFacts:
    """``facts`` without what changes from one read to the next (free memory, utilization,
    processes), so two live reads of one machine compare equal."""
    gpus = tuple(
        dataclasses.replace(g, memory_free_mb=None, utilization_percent=None, processes=())
        for g in facts.gpus
    )
    return dataclasses.replace(facts, gpus=gpus)


def test_answer_is_reused_for_max_age_seconds() -> None:
    first = nvidia_facts(max_age=0)  # asked now
    assert nvidia_facts() is first  # within 5 s: the same answer, nothing asked
    again = nvidia_facts(max_age=0)
    assert again is not first  # asked again: same machine, same static facts
    assert static_facts(again) == static_facts(first)
    fake = nvidia_facts(nvml=FakeNVML())  # injected sources are never cached
    assert fake.source == "nvml" and nvidia_facts() is again


def test_nvml_values_fixture_shape() -> None:
    driver, cuda, gpus = nvml_values()
    assert (driver, cuda, len(gpus)) == ("580.159.04", 13000, 1)
    assert gpus[0][1] == H100
