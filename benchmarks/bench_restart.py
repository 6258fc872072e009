"""The time from a worker's death to the restarted group running again, with
``launch(max_restarts=1)`` (what ``tfplace launch --max-restarts 1`` runs).

Two workloads, each run ``BENCH_ROUNDS`` times (default 3), median shown with every round:

- ``python``: two plain Python workers (no TensorFlow). Worker 1 SIGKILLs itself on the first
  attempt; the figure is the launcher's own cost: noticing the death, stopping the other
  worker (it dies of SIGTERM at once), new ports, and starting both workers again, until both
  restarted workers have printed their first line.
- ``keras``: two CPU workers training a small Keras model under tfplace's multi-worker
  strategy with ``tfplace.callbacks.BackupAndRestore``; worker 1 SIGKILLs itself in the third
  of five epochs on the first attempt. Phases: death to restart decision (the surviving
  worker has to be stopped: its SIGTERM handler, the backup callback's preemption handling,
  meets a dead peer, so it ends when its collective aborts or when the grace period ends),
  then restart to the first training step of the new attempt (Python and TensorFlow start,
  the cluster forms, the backup is restored). ``BENCH_GRACE`` sets the grace period
  (default 5 s, the launcher's default).

Times are wall-clock (``time.time()``) stamps printed by the workers and the launcher's log
record of the restart, all on this machine. Run: ``python benchmarks/bench_restart.py``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tfplace.cluster._launch import launch

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
GRACE = float(os.environ.get("BENCH_GRACE", "5"))
ENV = {
    **os.environ,
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "-1",
    "PYTHONUNBUFFERED": "1",
}

PYTHON = """
import os, signal, sys, time
print("up", time.time(), flush=True)
if os.environ["TFPLACE_RESTART_COUNT"] == "0":
    if os.environ["TFPLACE_WORKER_INDEX"] == "1":
        time.sleep(0.5)
        print("dying", time.time(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
"""

KERAS = """
import os, signal, tempfile, time
import numpy as np
import tfplace
import tfplace.callbacks
strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
import keras
count = os.environ["TFPLACE_RESTART_COUNT"]
dies = count == "0" and os.environ["TFPLACE_WORKER_INDEX"] == "1"
rng = np.random.default_rng(0)
x = rng.normal(size=(2048, 32)).astype("float32")
y = x[:, :1] * 2.0
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")

class Stamp(keras.callbacks.Callback):
    first = True
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if Stamp.first:
            Stamp.first = False
            print("step", count, time.time(), flush=True)
        if dies and self.epoch == 2 and batch == 3:
            print("dying", time.time(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

backup = tfplace.callbacks.BackupAndRestore(os.environ["BACKUP"])
model.fit(x, y, batch_size=64, epochs=5, verbose=0, shuffle=False, callbacks=[backup, Stamp()])
"""


class _Stamps(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.restarts: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "restarting all" in record.getMessage():
            self.restarts.append(record.created)


def one(code: str, folder: Path) -> dict[str, float]:
    path = folder / "worker.py"
    path.write_text(textwrap.dedent(code))
    stamps = _Stamps()
    log = logging.getLogger("tfplace")
    log.addHandler(stamps)
    out = io.StringIO()
    try:
        result = launch(
            [sys.executable, str(path)],
            2,
            env={**ENV, "BACKUP": str(folder / "backup")},
            out=out,
            grace_seconds=GRACE,
            max_restarts=1,
        )
    finally:
        log.removeHandler(stamps)
    text = out.getvalue()
    if result.returncode != 0 or result.attempts != 2 or len(stamps.restarts) != 1:
        raise SystemExit(f"unexpected run: {result}\n{text[-4000:]}")
    died = float(re.findall(r"\] dying (\S+)", text)[0])
    restart = stamps.restarts[0]
    if code is PYTHON:  # both restarted workers have printed their first line
        ups = [float(t) for t in re.findall(r"\] up (\S+)", text)]
        again = max(t for t in ups if t > restart)
    else:  # the first training step of the restarted group
        again = min(float(t) for t in re.findall(r"\] step 1 (\S+)", text))
    return {"stop": restart - died, "start": again - restart, "total": again - died}


def show(name: str, runs: list[dict[str, float]]) -> None:
    for key in ("stop", "start", "total"):
        values = [r[key] for r in runs]
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:6} {key:5}  median {statistics.median(values):6.2f} s   ({each})")


def main() -> None:
    print(f"death -> running again with launch(max_restarts=1), {ROUNDS} rounds, grace {GRACE:g} s")
    print("  stop: death -> restart decision; start: restart -> group running; total: both")
    for name, code in (("python", PYTHON), ("keras", KERAS)):
        runs = []
        for _ in range(ROUNDS):
            with tempfile.TemporaryDirectory() as folder:
                runs.append(one(code, Path(folder)))
            time.sleep(0.5)
        show(name, runs)


if __name__ == "__main__":
    main()
