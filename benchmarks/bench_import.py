"""Time ``import tfplace`` in fresh interpreters, against a bare interpreter start.

Run: ``python benchmarks/bench_import.py``. Goal: the import itself under 50 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

ROUNDS = 15


def run(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    bare, with_tfplace, inside = [], [], []
    probe = (
        "import time, sys; t = time.perf_counter(); import tfplace; "
        "print((time.perf_counter() - t) * 1000); assert 'tensorflow' not in sys.modules"
    )
    for _ in range(ROUNDS):
        bare.append(run("pass"))
        with_tfplace.append(run("import tfplace"))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        inside.append(float(out.stdout))
    b, w, i = (statistics.median(x) for x in (bare, with_tfplace, inside))
    print(f"python -c pass                {b:7.1f} ms (median of {ROUNDS})")
    print(f"python -c 'import tfplace'    {w:7.1f} ms   ratio {w / b:4.2f}")
    print(f"import tfplace, timed inside  {i:7.1f} ms   (goal < 50 ms; TensorFlow not imported)")


if __name__ == "__main__":
    main()
