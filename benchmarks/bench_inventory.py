"""Cost of the inventory's GPU facts (``tfplace._facts.nvidia.nvidia_facts``) by source.

Run: ``python benchmarks/bench_inventory.py``. Budget: on a machine without an NVIDIA driver the
GPU facts add well under a millisecond to ``inventory()``; with NVML a few milliseconds; through
nvidia-smi about two process starts (each call has a 3 s timeout).

Rows:

- ``this machine``: whatever answers here (on a CPU machine: no pynvml, no nvidia-smi, no
  ``/proc/driver/nvidia``, so this is the absent path);
- ``nvml (fake module)``: the NVML path with a fake ``pynvml`` serving the values captured on an
  H100 host: tfplace's own cost, not NVML's (``nvmlInit`` itself costs milliseconds on a GPU host);
- ``nvidia-smi (fake executable)``: a script on PATH that prints the captured output: the two
  process starts, not the driver queries a real nvidia-smi makes;
- ``/proc (captured files)``: the files of the H100 host laid out in a temporary folder;
- ``inventory()`` with and without the GPU facts (TensorFlow imported, as in real use; the
  facts are reused for 5 s, so repeated calls mostly pay the reuse).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu-host"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter() - t) / repeat)
    return statistics.median(samples)


def fake_smi(folder: Path) -> None:
    """An ``nvidia-smi`` that prints the captured query CSV or table, as the real one would."""
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu=*) '
        f"sed 1d '{FIXTURES / 'h100-query-gpu.csv'}' | sed 's/ MiB//g; s/ %//g' ;; "
        f"*) cat '{FIXTURES / 'h100-nvidia-smi.txt'}' ;; esac\n"
    )
    script.chmod(0o755)


def proc_tree(root: Path) -> Path:
    text = (FIXTURES / "h100-proc-driver-nvidia.txt").read_text().split("\n")
    (root / "gpus" / text[2]).mkdir(parents=True)
    (root / "version").write_text(text[0] + "\n")
    (root / "gpus" / text[2] / "information").write_text("\n".join(text[3:]))
    return root


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import importlib

    fake_nvml = importlib.import_module("test_nvidia").FakeNVML  # tests/ is on sys.path

    import tfplace
    from tfplace._facts import inventory as _inventory, nvidia as _nvidia

    here = _nvidia.nvidia_facts()
    asked = median_seconds(lambda: _nvidia.nvidia_facts(max_age=0), 200)
    rows = [(f"this machine ({here.source})", asked)]
    rows.append(("this machine, reused answer", median_seconds(_nvidia.nvidia_facts, 2000)))
    nvml = fake_nvml()
    rows.append(("nvml (fake module)", median_seconds(lambda: _nvidia.from_nvml(nvml), 2000)))
    with tempfile.TemporaryDirectory() as tmp:
        fake_smi(Path(tmp))
        saved = os.environ["PATH"]
        os.environ["PATH"] = f"{tmp}{os.pathsep}{saved}"
        try:
            facts = _nvidia.from_smi()
            assert facts is not None and facts.gpus, "the fake nvidia-smi did not answer"
            rows.append(("nvidia-smi (fake executable)", median_seconds(_nvidia.from_smi, 20)))
        finally:
            os.environ["PATH"] = saved
        root = proc_tree(Path(tmp) / "proc")
        proc_cost = median_seconds(lambda: _nvidia.from_proc(root), 2000)
        rows.append(("/proc (captured files)", proc_cost))

    tfplace.inventory()  # import TensorFlow once, as real use has it
    with_facts = median_seconds(tfplace.inventory, 50)
    real = _nvidia.nvidia_facts
    _nvidia.nvidia_facts = lambda **_: _nvidia.NvidiaFacts()
    try:
        without = median_seconds(_inventory.inventory, 50)
    finally:
        _nvidia.nvidia_facts = real
    for name, seconds in rows:
        print(f"{name:32s} {seconds * 1e3:8.3f} ms")
    print(f"{'inventory() with GPU facts':32s} {with_facts * 1e3:8.3f} ms")
    print(f"{'inventory() without GPU facts':32s} {without * 1e3:8.3f} ms")
    print(f"{'GPU facts add':32s} {(with_facts - without) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
