"""Cost of ``tfplace doctor`` (without --verify) vs importing TensorFlow, side by side.

Run: ``python benchmarks/bench_doctor.py``. Goal: not much more than the import.
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


if __name__ == "__main__":
    main()
