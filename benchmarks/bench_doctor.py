"""Cost of ``tfplace doctor`` (without --verify) vs importing TensorFlow, side by side.

Run: ``python benchmarks/bench_doctor.py``. Goal: not much more than the import. The last line
times the doctor's pure part alone (rules, plan and the ``--json`` document for a synthetic
8-GPU machine, in this process): it should be well under a millisecond.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

ROUNDS = 7
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(args, env=ENV, check=False, capture_output=True)
    return time.perf_counter() - t


def pure_seconds(repeat: int = 2000) -> float:
    """Median seconds of ``diagnose(...).to_dict()`` on a synthetic machine (no TensorFlow)."""
    from tfplace.doctor import diagnose
    from tfplace.testing import fake_inventory

    inv = fake_inventory(gpus=8, quota_cores=4.0, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeat):
            diagnose(inv, precision="mixed_float16").to_dict()
        samples.append((time.perf_counter() - t) / repeat)
    return statistics.median(samples)


def main() -> None:
    base, doctor, verify = [], [], []
    for _ in range(ROUNDS):  # interleaved, so load changes hit both
        base.append(timed([sys.executable, "-c", "import tensorflow"]))
        doctor.append(timed([sys.executable, "-m", "tfplace", "doctor"]))
        verify.append(timed([sys.executable, "-m", "tfplace", "doctor", "--verify"]))
    b, d, v = (statistics.median(x) for x in (base, doctor, verify))
    print(f"python -c 'import tensorflow'   {b:6.2f} s (median of {ROUNDS})")
    print(f"tfplace doctor                  {d:6.2f} s   ratio {d / b:4.2f}")
    print(f"tfplace doctor --verify         {v:6.2f} s   ratio {v / b:4.2f}")
    print(f"rules + plan + report (pure)    {pure_seconds() * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
