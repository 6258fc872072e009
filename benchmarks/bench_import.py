"""Time ``import tfplace`` in fresh interpreters, against a bare interpreter start.

Run: ``python benchmarks/bench_import.py``. Goal: the import itself at most 20 ms with
compiled bytecode (the package is byte-compiled first, as an installed wheel would be), and no
TensorFlow or tfplace submodule loaded by it: public names resolve lazily (PEP 562).
"""

from __future__ import annotations

import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 15


def run(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    import tfplace

    compileall.compile_dir(Path(tfplace.__file__).parent, quiet=1)
    bare, with_tfplace, inside = [], [], []
    probe = (
        "import time, sys; t = time.perf_counter(); import tfplace; "
        "print((time.perf_counter() - t) * 1000); assert 'tensorflow' not in sys.modules; "
        "assert not [m for m in sys.modules if m.startswith('tfplace.')]"
    )
    for _ in range(ROUNDS):
        bare.append(run("pass"))
        with_tfplace.append(run("import tfplace"))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        inside.append(float(out.stdout))
    b, w, i = (statistics.median(x) for x in (bare, with_tfplace, inside))
    print(f"python -c pass                {b:7.1f} ms (median of {ROUNDS})")
    print(f"python -c 'import tfplace'    {w:7.1f} ms   ratio {w / b:4.2f}")
    print(
        f"import tfplace, timed inside  {i:7.1f} ms   (goal <= 20 ms; no TensorFlow, no submodule)"
    )


if __name__ == "__main__":
    main()
