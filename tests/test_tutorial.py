"""TensorFlow's multi-worker Keras tutorial, fault-tolerance part, on 2 real CPU workers.

docs/examples/tutorial_fault_tolerance.py is the tutorial
(https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras, "Fault tolerance")
with one backup folder shared by both workers, as the tutorial writes it, and tfplace's
one-line change ``tf.keras.callbacks.BackupAndRestore`` -> ``tfplace.callbacks.BackupAndRestore``.
The test runs it through ``tfplace.launch(..., max_restarts=1)`` with a small driver that
adds a callback: worker 1 SIGKILLs itself in the second epoch, on the first attempt only
(``TFPLACE_RESTART_COUNT=0``).

Not tested here: the same script with Keras's own callback. Both workers write the same files
in the shared folder, and the first backup failed in 10 of 10 runs on a 2-core machine,
with ``BlockingIOError: ... unable to lock file`` (6) or ``FileExistsError: ... backup`` (4).
Which error, and whether the writes collide at all, depends on how the two processes' writes
interleave: a race, so no assertion about it could be relied on.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CPU_ONLY_ENV, QUIET_ENV, wait_gone

from tfplace.cluster._launch import LaunchResult, launch

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "tutorial_fault_tolerance.py"

# Runs the example's main() in a worker. KILL=1: worker 1 kills itself at the 4th batch of the
# second epoch (epoch index 1) when TFPLACE_RESTART_COUNT is 0.
DRIVER = """
import importlib.util, json, os, signal, sys

spec = importlib.util.spec_from_file_location("tutorial", os.environ["EXAMPLE"])
tutorial = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tutorial)
count = int(os.environ["TFPLACE_RESTART_COUNT"])
dies = os.environ["KILL"] == "1" and count == 0 and os.environ["TFPLACE_WORKER_INDEX"] == "1"
print("pid", os.getpid(), flush=True)

def weights(model):
    return json.dumps([w.ravel().tolist() for w in model.get_weights()])

class Die(tutorial.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        print("start", count, weights(self.model), flush=True)  # after any restore
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        print("epoch", count, epoch, flush=True)
    def on_train_batch_end(self, batch, logs=None):
        if dies and self.epoch == 1 and batch == 3:
            os.kill(os.getpid(), signal.SIGKILL)

model = tutorial.main(os.environ["BACKUP"], epochs=3, extra_callbacks=[Die()])
print("weights", weights(model), flush=True)
"""


def cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def run_tutorial(tmp_path: Path, name: str, *, kill: bool) -> tuple[LaunchResult, str]:
    """Launch the tutorial as 2 CPU workers with ``max_restarts=1``; return the result and the
    launch output. Checks that no process of the launch is left afterwards."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    token = f"tfplace-tutorial-test-{name}-{os.getpid()}"
    env = {
        **os.environ,
        **QUIET_ENV,
        **CPU_ONLY_ENV,
        "TF_USE_LEGACY_KERAS": "0",
        "EXAMPLE": str(EXAMPLE),
        "KILL": "1" if kill else "0",
        "BACKUP": str(tmp_path / name / "backup"),  # one folder for both workers
    }
    env.pop("TF_CONFIG", None)
    out = io.StringIO()
    result = launch(
        [sys.executable, str(driver), token],
        2,
        env=env,
        out=out,
        grace_seconds=10,
        max_restarts=1,
    )
    text = out.getvalue()
    pids = [int(p) for p in re.findall(r"\] pid (\d+)", text)]
    assert pids, text[-3000:]
    assert wait_gone(pids) == [], text[-3000:]
    assert not [p for p in os.listdir("/proc") if p.isdigit() and token.encode() in cmdline(p)]
    return result, text


def epochs(text: str, worker: int) -> list[tuple[int, int]]:
    """(attempt, epoch) for each epoch ``worker`` began."""
    found = re.findall(rf"\[worker {worker}\] epoch (\d) (\d)", text)
    return [(int(c), int(e)) for c, e in found]


def final_weights(text: str, what: str = "weights") -> dict[int, list[Any]]:
    """Each worker's weights as printed after ``fit`` (``what="start 0"``: when the first
    attempt's ``fit`` began)."""
    found = re.findall(rf"\[worker (\d)\] {what} (.*)", text)
    return {int(i): [np.array(w) for w in json.loads(ws)] for i, ws in found}


@pytest.mark.slow
def test_the_tutorial_with_the_one_line_change_resumes_after_a_killed_worker(
    tmp_path: Path,
) -> None:
    reference, ref_text = run_tutorial(tmp_path, "reference", kill=False)
    assert reference.returncode == 0 and reference.attempts == 1, ref_text[-3000:]
    expected = final_weights(ref_text)
    assert sorted(expected) == [0, 1]

    result, text = run_tutorial(tmp_path, "killed", kill=True)
    assert result.returncode == 0, text[-3000:]
    assert result.attempts == 2  # killed once, restarted once
    assert "[tfplace launch] worker 1 exited with code 137; stopping the others" in text
    for worker in (0, 1):
        # Killed in the second epoch; the restart resumed there from the backup of the first,
        # and did not train the first epoch again.
        assert epochs(text, worker) == [(0, 0), (0, 1), (1, 1), (1, 2)], text[-3000:]
    got = final_weights(text)
    assert sorted(got) == [0, 1]
    for worker in (0, 1):
        for a, b in zip(got[worker], expected[0], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # The comparison means something: training moved the weights by much more than 1e-5.
    initial = final_weights(ref_text, "start 0")[0]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, expected[0], strict=True))
    assert moved > 0.01
    assert not (tmp_path / "killed" / "backup").exists()  # removed at the end of fit
