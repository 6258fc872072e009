"""Cost of deciding: ``plan()`` on a given inventory vs collecting the real inventory.

Run: ``python benchmarks/bench_plan.py``.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfplace
from tfplace.testing import fake_inventory

N = 2_000


def main() -> None:
    tfplace.inventory()  # import TensorFlow once, outside the timed region
    inv8 = fake_inventory(gpus=8)
    decide, gather = [], []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(N):
            tfplace.plan(inventory=inv8)
        decide.append((time.perf_counter() - t) / N * 1e6)
        t = time.perf_counter()
        for _ in range(20):
            tfplace.inventory()
        gather.append((time.perf_counter() - t) / 20 * 1e6)
    d, g = statistics.median(decide), statistics.median(gather)
    print(f"plan(inventory=8 GPUs)   {d:9.1f} us")
    print(f"inventory() (real)       {g:9.1f} us   plan is {g / d:5.0f}x cheaper than the facts")


if __name__ == "__main__":
    main()
