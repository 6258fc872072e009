"""``launch(max_restarts=...)`` / ``tfplace launch --max-restarts``: which failures restart the
whole group, with what, and that nothing is left behind on any path.

The fast tests use small Python workers (no TensorFlow). Each worker starts a child of its own
(to check that a worker's whole process group goes), reports its attempt, ports and pids, and
then does what the test asked for *this worker on this attempt*: ``INDEX@COUNT=ACTION`` on its
command line, where COUNT is ``TFPLACE_RESTART_COUNT`` or ``*`` and ACTION is ``kill`` (SIGKILL
itself), ``sleep`` (until stopped), ``ignore`` (ignore SIGTERM, then sleep) or an exit code.
A worker with no instruction exits 0. A worker that fails first waits until every worker of its
attempt has reported, so that every pid of every attempt is known to the test.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET_ENV, stop_launcher, wait_gone

from tfplace.cluster._core import Failure, Restart, RestartPolicy
from tfplace.cluster._launch import LaunchResult, launch
from tfplace.cluster._restarts import RESTART_COUNT_ENV, RESTART_EXIT_CODE

pytestmark = pytest.mark.slow

WORKER = """
import json, os, signal, subprocess, sys, time
count = os.environ["TFPLACE_RESTART_COUNT"]
index = os.environ["TFPLACE_WORKER_INDEX"]
workers = json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]
todo = dict(arg.split("=") for arg in sys.argv[1:])
action = todo.get(f"{index}@{count}", todo.get(f"{index}@*", "0"))
if action == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("started", json.dumps({"count": int(count), "index": int(index), "workers": workers,
                             "pids": [os.getpid(), child.pid]}), flush=True)
marks = os.environ["MARKS"]
open(os.path.join(marks, f"{count}-{index}"), "w").close()
if action in ("sleep", "ignore"):
    time.sleep(120)
if action != "0":  # a failure: first wait until every worker of this attempt has reported
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(
        [m for m in os.listdir(marks) if m.startswith(count + "-")]
    ) < len(workers):
        time.sleep(0.01)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(action))
child.kill()
child.wait()
"""


@dataclass
class Run:
    result: LaunchResult
    starts: list[dict[str, Any]]  # the "started" reports, in order
    text: str  # everything the launcher wrote to ``out``
    log: str  # the "tfplace" log records

    def counts(self, index: int) -> list[int]:
        return [int(s["count"]) for s in self.starts if s["index"] == index]

    def pids(self) -> list[int]:
        return [int(p) for s in self.starts for p in s["pids"]]


def run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, *todo: str, workers: int = 2, **kwargs: object
) -> Run:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(WORKER))
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    starts: list[dict[str, Any]] = []

    def on_line(index: int, line: str) -> None:
        if line.startswith("started "):
            starts.append(json.loads(line.removeprefix("started ")))

    out = io.StringIO()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfplace"):
        result = launch(
            [sys.executable, str(path), *todo],
            workers,
            env={**os.environ, **QUIET_ENV, "MARKS": str(marks)},
            out=out,
            on_line=on_line,
            grace_seconds=2,
            **kwargs,  # type: ignore[arg-type]
        )
    done = Run(result, starts, out.getvalue(), caplog.text)
    assert done.pids() and wait_gone(done.pids()) == [], "a process was left behind"
    return done


def test_a_worker_killed_on_the_first_attempt_is_restarted_with_new_ports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done = run(tmp_path, caplog, "1@0=kill", "0@0=sleep", max_restarts=2)
    assert done.result.returncode == 0, done.text
    assert done.result.attempts == 2
    assert done.result.worker_codes == (0, 0) and done.result.failed_worker is None
    # Every worker of both attempts ran, and was told which attempt it belongs to.
    assert done.counts(0) == [0, 1] and done.counts(1) == [0, 1]
    clusters = {int(s["count"]): s["workers"] for s in done.starts}
    assert len(clusters) == 2 and clusters[0] != clusters[1]  # new ports on the restart
    assert all(s["workers"] == clusters[s["count"]] for s in done.starts)
    assert len(done.pids()) == 8  # 2 attempts x 2 workers x (worker + its child)
    # The restart is logged with its cause and what the workers get.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "worker 1 was killed by SIGKILL (exit code 137) on attempt 1" in warnings[0]
    assert f"restart 1 of 2, {RESTART_COUNT_ENV}=1" in warnings[0]
    assert "[tfplace launch] worker 1 exited with code 137; stopping the others" in done.text
    assert "[tfplace launch] restarting all 2 workers on new ports (restart 1 of 2" in done.text


def test_the_restart_exit_code_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    done = run(tmp_path, caplog, f"0@0={RESTART_EXIT_CODE}", "1@0=sleep", max_restarts=1)
    assert done.result.returncode == 0, done.text
    assert done.result.attempts == 2
    assert done.counts(0) == [0, 1] and done.counts(1) == [0, 1]
    assert f"worker 0 exited with the restart exit code {RESTART_EXIT_CODE}" in done.log


@pytest.mark.slow
def test_exit_1_is_permanent_unless_restart_on_any(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done = run(tmp_path, caplog, "1@0=1", "0@0=sleep", max_restarts=3)
    assert done.result.returncode == 1
    assert done.result.attempts == 1 and done.result.failed_worker == 1
    assert done.counts(0) == [0] and done.counts(1) == [0]  # not started again
    assert "worker 1 exited with code 1 on attempt 1; not restarting: exit code 1 is a " in done.log
    assert "permanent failure" in done.log and "restart_on='any'" in done.log
    assert "[tfplace launch] not restarting: exit code 1 is a permanent failure" in done.text

    again = run(tmp_path, caplog, "1@0=1", "0@0=sleep", max_restarts=3, restart_on="any")
    assert again.result.returncode == 0, again.text
    assert again.result.attempts == 2
    assert again.counts(1) == [0, 1]
    assert "worker 1 exited with code 1 on attempt 1; restarting all 2 workers" in again.log


def test_when_restarts_are_exhausted_the_last_failure_ends_the_launch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Worker 0 fails on every attempt, with a different retryable code on the last one.
    done = run(tmp_path, caplog, "0@0=kill", "0@1=kill", "0@2=143", "1@*=sleep", max_restarts=2)
    assert done.result.returncode == RESTART_EXIT_CODE  # the last failure's code
    assert done.result.attempts == 3 and done.result.failed_worker == 0
    assert done.counts(0) == [0, 1, 2] and done.counts(1) == [0, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [("restart 1 of 2" in w, "restart 2 of 2" in w) for w in warnings[:2]] == [
        (True, False),
        (False, True),
    ]
    assert warnings[2] == (
        f"tfplace launch: worker 0 exited with the restart exit code {RESTART_EXIT_CODE} on "
        "attempt 3; not restarting: restarts exhausted: 3 attempts (1 start + 2 restarts). "
        f"Exit code {RESTART_EXIT_CODE}"
    )
    assert "[tfplace launch] not restarting: restarts exhausted: 3 attempts" in done.text
    assert len(done.pids()) == 12


def test_without_max_restarts_nothing_is_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done = run(tmp_path, caplog, "1@0=kill", "0@0=sleep")
    assert done.result.returncode == 137 and done.result.attempts == 1
    assert done.counts(0) == [0] and done.counts(1) == [0]
    assert "restart" not in done.text and "restart" not in done.log  # today's launch, unchanged


@pytest.mark.pure
@pytest.mark.parametrize(
    ("limit", "on", "returncode", "attempt", "decision", "reason"),
    [
        (0, "retryable", -9, 1, Restart.NOT_ASKED, ""),  # no restarts asked for: nothing to say
        (2, "retryable", -9, 1, Restart.RESTART, ""),
        (2, "retryable", RESTART_EXIT_CODE, 2, Restart.RESTART, ""),
        (2, "retryable", 137, 3, Restart.EXHAUSTED, "restarts exhausted: 3 attempts"),
        (2, "retryable", 1, 1, Restart.PERMANENT, "exit code 1 is a permanent failure"),
        (2, "any", 1, 1, Restart.RESTART, ""),
        (1, "any", 1, 2, Restart.EXHAUSTED, "(1 start + 1 restarts)"),
    ],
)
def test_the_restart_verdict_is_typed(
    limit: int,
    on: str,
    returncode: int,
    attempt: int,
    decision: Restart,
    reason: str,
) -> None:
    verdict = RestartPolicy(limit, on).verdict(Failure.of(returncode), attempt)
    assert verdict.decision is decision
    assert verdict.restart is (decision is Restart.RESTART)
    assert reason in verdict.reason and bool(verdict.reason) is bool(reason)


def test_bad_restart_arguments() -> None:
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="max_restarts must be an int >= 0"):
            launch([sys.executable, "-c", "pass"], 1, max_restarts=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="restart_on must be one of"):
        launch([sys.executable, "-c", "pass"], 1, restart_on="never")
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "launch", "-n", "1", "--max-restarts", "-1", "x.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "--max-restarts must be >= 0" in proc.stderr


# ------------------------------------------------------------------ the command line


def cli(tmp_path: Path, *args: str, grace: float = 2) -> subprocess.Popen[str]:
    """Start ``tfplace launch -n 2 --grace GRACE ARGS`` in its own session: a test's
    ``finally`` passes it to :func:`helpers.stop_launcher`, so a failing test leaves nothing."""
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(WORKER))
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "tfplace", "launch", "-n", "2", "--grace", str(grace), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **QUIET_ENV, "MARKS": str(marks)},
        start_new_session=True,
    )


def started_pids(text: str) -> list[int]:
    """Every pid (workers and their children) that the workers reported in ``text``."""
    return [int(p) for s in started(text) for p in s["pids"]]


def started(text: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"\] started (.*)", text)]


def test_the_command_line_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.py")
    proc = cli(tmp_path, "--max-restarts", "1", path, "1@0=kill", "0@0=sleep")
    out = ""
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert sorted((s["index"], s["count"]) for s in started(out)) == [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
        ]
        assert "[tfplace launch] restarting all 2 workers on new ports (restart 1 of 1" in out
        # The WARNING reaches the terminal too (stderr, merged here), with the cause.
        assert "worker 1 was killed by SIGKILL (exit code 137) on attempt 1" in out
        pids = started_pids(out)
        assert len(pids) == 8 and wait_gone(pids) == []
    finally:
        stop_launcher(proc, started_pids(out))  # only matters when an assertion above failed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_everything_and_is_not_restarted(
    tmp_path: Path, sig: int
) -> None:
    path = str(tmp_path / "worker.py")
    proc = cli(
        tmp_path, "--max-restarts", "3", "--restart-on", "any", path, "0@*=sleep", "1@*=sleep"
    )
    assert proc.stdout is not None
    seen = out = ""
    try:
        while len(started(seen)) < 2:
            line = proc.stdout.readline()
            assert line, f"launcher ended early:\n{seen}"
            seen += line
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        out = seen + out
        assert proc.returncode == 128 + sig, out
        assert f"received signal {sig}; stopping the workers" in out
        assert "restarting" not in out
        assert [s["count"] for s in started(out)] == [0, 0]  # no second attempt started
        pids = started_pids(out)
        assert len(pids) == 4 and wait_gone(pids) == []
    finally:
        stop_launcher(proc, started_pids(seen + out))  # only when an assertion above failed


@pytest.mark.slow
def test_a_signal_while_a_failed_group_is_stopping_prevents_the_restart(tmp_path: Path) -> None:
    """Worker 1 dies; worker 0 ignores SIGTERM, so stopping it takes the grace period. A
    SIGTERM to the launcher in that window: no restart, the worker's failure is reported.

    The window is a 10 s grace period so that the signal surely lands in it on a loaded
    machine. The test takes that long: the launcher's signal only sets a flag, and worker 0
    (ignoring SIGTERM) is SIGKILLed at the end of the grace period."""
    path = str(tmp_path / "worker.py")
    proc = cli(tmp_path, "--max-restarts", "3", path, "1@0=kill", "0@*=ignore", grace=10)
    assert proc.stdout is not None
    seen = out = ""
    try:
        while "stopping the others" not in seen:
            line = proc.stdout.readline()
            assert line, f"launcher ended early:\n{seen}"
            seen += line
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        out = seen + out
        assert proc.returncode == 137, out
        assert f"[tfplace launch] received signal {signal.SIGTERM}; not restarting" in out
        assert "restarting all" not in out
        assert [s["count"] for s in started(out)] == [0, 0]
        pids = started_pids(out)
        assert len(pids) == 4 and wait_gone(pids) == []
    finally:
        stop_launcher(proc, started_pids(seen + out))  # only when an assertion above failed


# ------------------------------------------------------------------ kill and resume (TensorFlow)

# 64 samples, global batch 16: 4 steps an epoch, 5 epochs. Data, order and seeds are fixed, so
# every start sees the same batches. On the first attempt only (TFPLACE_RESTART_COUNT=0) worker
# 1 SIGKILLs itself at the second batch of the third epoch, when KILL=1.
TRAIN = """
import json, os, signal, sys
import numpy as np
import tfplace
import tfplace.callbacks
strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
import keras

count = int(os.environ["TFPLACE_RESTART_COUNT"])
index = int(os.environ["TFPLACE_WORKER_INDEX"])
dies = os.environ["KILL"] == "1" and count == 0 and index == 1
print("pid", os.getpid(), flush=True)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")

class Die(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        print("epoch", count, epoch, flush=True)
    def on_train_batch_end(self, batch, logs=None):
        if dies and self.epoch == 2 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

backup = tfplace.callbacks.BackupAndRestore(os.environ["BACKUP"])
model.fit(x, y, batch_size=16, epochs=5, verbose=0, shuffle=False, callbacks=[backup, Die()])
print("weights", json.dumps([w.ravel().tolist() for w in model.get_weights()]), flush=True)
"""


def train(tmp_path: Path, name: str, kill: bool, max_restarts: int) -> tuple[LaunchResult, str]:
    """One 2-worker launch of TRAIN on the CPU; returns its result and output. Checks that no
    process of it (found by a token on its command line) is left."""
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(TRAIN))
    token = f"tfplace-restart-test-{name}-{os.getpid()}"
    env = {
        **os.environ,
        **QUIET_ENV,
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_USE_LEGACY_KERAS": "0",
        "KILL": "1" if kill else "0",
        "BACKUP": str(tmp_path / name / "backup"),
    }
    out = io.StringIO()
    result = launch(
        [sys.executable, str(path), token],
        2,
        env=env,
        out=out,
        grace_seconds=10,
        max_restarts=max_restarts,
    )
    text = out.getvalue()
    pids = [int(p) for p in re.findall(r"\] pid (\d+)", text)]
    assert pids and wait_gone(pids) == [], text
    assert not [p for p in os.listdir("/proc") if p.isdigit() and token.encode() in cmdline(p)]
    return result, text


def cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def final_weights(text: str) -> dict[int, list[list[float]]]:
    found = re.findall(r"\[worker (\d)\] weights (.*)", text)
    return {int(i): json.loads(w) for i, w in found}


@pytest.mark.slow
def test_a_killed_worker_group_is_restarted_and_resumes_to_the_same_weights(
    tmp_path: Path,
) -> None:
    """Item 5 of issue 12 through the launcher: worker 1 is SIGKILLed in epoch 3 of 5 on the
    first attempt; ``launch(max_restarts=1)`` starts both workers again, they resume from the
    backup of epoch 2 (not from the start), and the final weights equal an uninterrupted run's."""
    reference, ref_text = train(tmp_path, "reference", kill=False, max_restarts=0)
    assert reference.returncode == 0 and reference.attempts == 1, ref_text[-3000:]
    expected = final_weights(ref_text)
    assert sorted(expected) == [0, 1]

    result, text = train(tmp_path, "killed", kill=True, max_restarts=1)
    assert result.returncode == 0, text[-3000:]
    assert result.attempts == 2
    assert "[tfplace launch] worker 1 exited with code 137; stopping the others" in text
    epochs = [(int(c), int(e)) for c, e in re.findall(r"\[worker 0\] epoch (\d) (\d)", text)]
    assert [e for c, e in epochs if c == 0] == [0, 1, 2]  # killed in the third epoch
    assert [e for c, e in epochs if c == 1] == [2, 3, 4]  # resumed there, not from the start
    got = final_weights(text)
    assert sorted(got) == [0, 1]
    for i in (0, 1):
        for a, b in zip(got[i], expected[0], strict=True):
            assert len(a) == len(b)
            assert max(abs(u - v) for u, v in zip(a, b, strict=True)) <= 1e-5
    assert not (tmp_path / "killed" / "backup").exists()  # removed at the end of fit
