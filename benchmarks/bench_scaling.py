"""Scaling across workers: one process x 2 cores vs 2 simulated hosts x 1 core, side by side.

What a user needs to predict how their model scales over tfplace's multi-worker strategy:

1. steps/s of three models, in one process with 2 cores (``taskset``) and as 2 workers on 2
   simulated hosts with 1 core each (the hostfile launcher over ssh, each host's sshd and so
   its workers pinned to its core), at several ``steps_per_execution``:
   - ``cnn``: the CNN of ``bench_multihost.py`` (28x28x1, 3 conv layers, global batch 128),
     whose step is mostly per-step overhead on one core;
   - ``big``: a conv net on 64x64x3 images (4 conv layers of 32-64 channels, ~60k
     parameters, global batch 64), whose step is mostly convolution;
   - ``empty``: one Dense(10) on one feature, global batch 2: the strategy's fixed cost per
     step, all overhead and no compute.
2. The all-reduce between the two hosts: seconds per all-reduce of 1, 8 and 32 MB of float32
   (``strategy.reduce`` of a per-replica tensor inside a ``tf.function``), and the cost per
   MB from the slope.

A model's expected ratio is then about ``t1 / (t1 / 2 + fixed + size_MB * per_MB)`` per step,
with ``t1`` its step time in one process (the Performance page, "Predicting how a model
scales across workers", has the figures of a run).

Each figure is the median of ``BENCH_ROUNDS`` rounds (3 by default); run it on an idle
machine. Needs root (network namespaces) and OpenSSH's sshd; reuses the tests' ``SshHosts``.
Run: ``python benchmarks/bench_scaling.py``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]

from sim_hosts import SimulatedHosts, unavailable  # noqa: E402
from test_multihost_launch import SshHosts, unavailable_here  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", "TF_USE_LEGACY_KERAS": "0"}

#: model -> (input shape, layers as Python source, global batch, timed steps)
MODELS: dict[str, tuple[tuple[int, ...], str, int, int]] = {
    "cnn": (
        (28, 28, 1),
        "Conv2D(16, 3, activation='relu'), Conv2D(32, 3, activation='relu'), "
        "Conv2D(32, 3, activation='relu'), GlobalAveragePooling2D(), Dense(10)",
        128,
        96,
    ),
    "big": (
        (64, 64, 3),
        "Conv2D(32, 3, activation='relu'), Conv2D(32, 3, activation='relu'), MaxPooling2D(), "
        "Conv2D(64, 3, activation='relu'), Conv2D(64, 3, activation='relu'), "
        "GlobalAveragePooling2D(), Dense(10)",
        64,
        32,
    ),
    "empty": ((1,), "Dense(10)", 2, 320),
}

TRAIN = """
import json, os, time
import numpy as np
import tfplace
strategy = tfplace.pick_strategy()
import keras
from keras.layers import *
shape, batch, steps = {shape}, {batch}, {steps}
spe = int(os.environ["BENCH_SPE"])
warm = 4 * spe  # steps before the clock starts: tracing and the first all-reduces
rng = np.random.default_rng(0)
n = (steps + warm) * batch
x = rng.normal(size=(n, *shape)).astype("float32")
y = rng.integers(0, 10, size=(n,))
with strategy.scope():
    model = keras.Sequential([keras.Input(shape), {layers}])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=spe)
class Clock(keras.callbacks.Callback):  # Keras calls it once per execution, with its last step
    seen = []
    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((batch, time.perf_counter()))
model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[Clock()])
(b0, t0), (b1, t1) = next(s for s in Clock.seen if s[0] >= warm - 1), Clock.seen[-1]
print("RESULT", json.dumps({{"steps_per_second": (b1 - b0) / (t1 - t0)}}), flush=True)
"""

ALLREDUCE = """
import json, time
import tfplace
strategy = tfplace.pick_strategy()
import tensorflow as tf
out = {}
for mb in (1, 8, 32):
    n = mb * 2**20 // 4
    value = tf.ones((n,))
    @tf.function
    def reduce_once():
        per_replica = strategy.run(lambda: value * 1.0)
        return strategy.reduce("SUM", per_replica, axis=None)[0]
    for _ in range(3):
        reduce_once().numpy()
    t0 = time.perf_counter()
    for _ in range(10):
        reduce_once().numpy()
    out[mb] = (time.perf_counter() - t0) / 10
print("RESULT", json.dumps(out), flush=True)
"""

LAUNCHER = """
import json, sys
import tfplace
a = json.loads(sys.argv[1])
result = tfplace.launch(a["command"], None, hosts=a["hosts"], ssh=a["ssh"], forward=a["forward"])
sys.exit(result.returncode)
"""


def script(folder: Path, model: str) -> Path:
    """The training script of ``model``."""
    shape, layers, batch, steps = MODELS[model]
    path = folder / f"{model}.py"
    path.write_text(
        textwrap.dedent(TRAIN).format(shape=shape, layers=layers, batch=batch, steps=steps)
    )
    return path


def one_process(path: Path, spe: int) -> dict[str, Any]:
    """RESULT of ``path`` in one process on cores 0 and 1."""
    proc = subprocess.run(
        ["taskset", "-c", "0,1", sys.executable, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV, "BENCH_SPE": str(spe)},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return dict(json.loads(proc.stdout.split("RESULT ", 1)[1]))


def two_hosts(c: SshHosts, path: Path, spe: int) -> list[dict[str, Any]]:
    """Each worker's RESULT of ``path`` as 2 workers, one per simulated host."""
    extra = {"BENCH_SPE": str(spe)}
    args = {
        "command": [sys.executable, str(path)],
        "hosts": ",".join(h.name for h in c.hosts),
        "ssh": c.ssh,
        "forward": sorted(extra),
    }
    proc = c.hosts[0].run(
        [sys.executable, "-c", LAUNCHER, json.dumps(args)],
        env={**os.environ, **ENV, **extra},
        cwd=path.parent,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(out[-2000:])
    return [json.loads(r) for r in re.findall(r"RESULT (.*)", out)]


def main() -> None:
    reason = unavailable_here() or unavailable()
    if reason:
        print(f"bench_scaling: skipped: {reason}")
        return
    if len(os.sched_getaffinity(0)) < 2:
        print("bench_scaling: needs 2 cores")
        return
    runs = [("cnn", 1), ("cnn", 4), ("cnn", 16), ("big", 1), ("big", 4), ("empty", 1)]
    one: dict[tuple[str, int], list[float]] = {}
    two: dict[tuple[str, int], list[float]] = {}
    failed: dict[tuple[str, int], str] = {}
    reduce_s: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {m: script(folder, m) for m in MODELS}
        allreduce = folder / "allreduce.py"
        allreduce.write_text(textwrap.dedent(ALLREDUCE))
        (folder / "ssh").mkdir(mode=0o700)
        with SimulatedHosts(2) as hosts:
            c = SshHosts(hosts, folder / "ssh", cores={0: [0], 1: [1]})
            try:
                c.start()
                for _ in range(ROUNDS):
                    for model, spe in runs:
                        try:
                            rate = one_process(paths[model], spe)["steps_per_second"]
                            one.setdefault((model, spe), []).append(rate)
                            # the group goes at its slowest worker's pace
                            rates = [r["steps_per_second"] for r in two_hosts(c, paths[model], spe)]
                            two.setdefault((model, spe), []).append(min(rates))
                        except RuntimeError as err:
                            failed[(model, spe)] = str(err).strip().splitlines()[-1][:200]
                    for result in two_hosts(c, allreduce, 1)[:1]:
                        for mb, seconds in result.items():
                            reduce_s.setdefault(mb, []).append(seconds)
            finally:
                c.stop()
        left = hosts.leftovers()
    print(f"{ROUNDS} round(s), medians; steps/s: 1 process x 2 cores | 2 hosts x 1 core | ratio")
    for model, spe in runs:
        if (model, spe) in failed and (model, spe) not in two:
            print(f"  {model:<6} steps_per_execution={spe:<3} failed: {failed[(model, spe)]}")
            continue
        a, b = statistics.median(one[(model, spe)]), statistics.median(two[(model, spe)])
        print(f"  {model:<6} steps_per_execution={spe:<3} {a:8.1f} | {b:8.1f} | {b / a:5.2f}x")
    if ("empty", 1) in two:
        fixed_one = 1 / statistics.median(one[("empty", 1)])
        fixed_two = 1 / statistics.median(two[("empty", 1)])
        print(
            f"fixed cost per step (empty step): {fixed_one * 1e3:.2f} ms in one process, "
            f"{fixed_two * 1e3:.2f} ms across 2 hosts"
        )
    if reduce_s:
        med = {int(mb): statistics.median(v) for mb, v in reduce_s.items()}
        per_mb = (med[32] - med[1]) / 31
        shown = ", ".join(f"{mb} MB {s * 1e3:.1f} ms" for mb, s in sorted(med.items()))
        print(f"all-reduce between 2 hosts: {shown}; {per_mb * 1e3:.2f} ms per MB")
    print("leftovers:", left or "none")


if __name__ == "__main__":
    main()
