"""tfplace.callbacks on two real worker processes (CPU, loopback) and in one process.

A run is interrupted (a worker SIGKILLed mid-training, or preempted with SIGTERM), the whole
group is started again by the test, as ``tfplace launch --max-restarts`` or a scheduler
would, and the final weights must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import CHILD_GPU_ENV, CPU_ONLY_ENV, QUIET_ENV

from tfplace._facts.cluster.spec import ClusterSpec
from tfplace.cluster._launch import free_ports
from tfplace.cluster._restarts import RESTART_EXIT_CODE

pytestmark = pytest.mark.tf

# 64 samples, global batch 16: 4 steps per epoch, 5 epochs. The data, its order and the seeds
# are fixed, so every start sees the same batches.
TRAIN = """
import json, os, signal, sys
import numpy as np
import tfplace
import tfplace.callbacks
if os.environ.get("TF_CONFIG"):
    strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
else:
    strategy = None
import tensorflow as tf

keras = tf.keras  # Keras 3, or tf_keras under TF_USE_LEGACY_KERAS=1
out = os.environ["OUT"]
freq = os.environ.get("FREQ", "epoch")
freq = freq if freq == "epoch" else int(freq)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
scope = strategy.scope() if strategy is not None else tf.name_scope("one")
with scope:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
me = int(json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"])
if me == 1 and os.environ.get("INJECT"):  # worker 1's publishes of these keys fail
    from tfplace import _tf
    real = _tf.coordination_context

    class Failing:
        def __init__(self, ctx):
            self.ctx = ctx
        def __getattr__(self, name):
            return getattr(self.ctx, name)
        def set_config_key_value(self, key, value):
            if any(part in key for part in os.environ["INJECT"].split(",")):
                raise RuntimeError(f"injected failure for {key}")
            return self.ctx.set_config_key_value(key, value)

    _tf.coordination_context = lambda: Failing(real())

class Interrupt(keras.callbacks.Callback):
    # Worker FAIL_TASK kills itself (FAIL_SIGNAL) at its FAIL_AT-th batch end.
    ends = 0
    def on_train_batch_end(self, batch, logs=None):
        Interrupt.ends += 1
        fail_at = int(os.environ.get("FAIL_AT", "0"))
        if me == int(os.environ.get("FAIL_TASK", "-1")) and Interrupt.ends == fail_at:
            os.kill(os.getpid(), getattr(signal, os.environ["FAIL_SIGNAL"]))

callbacks = [Interrupt()]
if os.environ.get("MODE") == "checkpoint":
    saver = tfplace.callbacks.ModelCheckpoint(os.path.join(out, "ckpt", "e{epoch}.keras"))
else:
    folder = "backup" if not os.environ.get("APART") else f"backup-of-{me}"  # not shared
    grace = float(os.environ.get("GRACE", "65"))
    saver = tfplace.callbacks.BackupAndRestore(
        os.path.join(out, folder), save_freq=freq, shared_grace=grace
    )
callbacks.insert(0, saver)
model.fit(x, y, batch_size=16, epochs=5, verbose=0, shuffle=False, callbacks=callbacks)
loaded = None
if os.environ.get("MODE") == "checkpoint":
    tfplace.barrier(timeout=60)  # the chief has renamed its last file into place
    again = keras.models.load_model(os.path.join(out, "ckpt", "e5.keras"))
    loaded = [w.ravel().tolist() for w in again.get_weights()]
print(json.dumps({
    "keras": keras.__name__,
    "weights": [w.ravel().tolist() for w in model.get_weights()],
    "loaded": loaded,
}))
"""


def run_group(
    out: Path, n: int, env: dict[str, str], timeout: float = 300, settle: float = 60
) -> list[tuple[int, str, str]]:
    """Start ``n`` workers (``n`` = 1: one plain process); when one fails, give the others up
    to ``settle`` seconds to end on their own (preemption: they save and exit too), then stop
    them (as a launcher does); return each one's (exit code, stdout, stderr). The workers
    write their output to files beside ``out`` (a pipe nobody reads could fill and block
    them). Checks that no process of the group is left afterwards."""
    token = f"tfplace-test-{uuid.uuid4().hex}"
    logs = out.parent / f"logs-{token[-8:]}"
    logs.mkdir()
    cluster = ClusterSpec.local(free_ports(n)) if n > 1 else None
    procs = []
    try:
        for i in range(n):
            full = {**os.environ, **QUIET_ENV, **CHILD_GPU_ENV, **CPU_ONLY_ENV, **env}
            full["OUT"] = str(out)
            full.pop("TF_CONFIG", None)
            if cluster is not None:
                full["TF_CONFIG"] = cluster.for_task(i).to_tf_config()
            with (logs / f"{i}.out").open("w") as stdout, (logs / f"{i}.err").open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", textwrap.dedent(TRAIN), token],
                        env=full,
                        stdout=stdout,
                        stderr=err,
                    )
                )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                deadline = min(deadline, time.monotonic() + settle)
                while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.2)
                break
            assert time.monotonic() < deadline, "the group did not finish in time"
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    results = [
        (p.returncode, (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text())
        for i, p in enumerate(procs)
    ]
    assert not [
        pid for pid in os.listdir("/proc") if pid.isdigit() and token.encode() in _cmdline(pid)
    ], "a worker process was left behind"
    return results


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def finished(results: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, f"worker {i} exited {code}:\n{stderr[-3000:]}"
    return [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]


def assert_same_weights(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(np.array(u), np.array(v), atol=1e-5, rtol=0)


_reference: dict[tuple[int, str], Any] = {}


def reference(tmp_path: Path, n: int, flavour_env: dict[str, str]) -> Any:
    """The final weights of an uninterrupted run (computed once per group size and Keras)."""
    key = (n, flavour_env["TF_USE_LEGACY_KERAS"])
    if key not in _reference:
        out = tmp_path / "reference"
        out.mkdir()
        runs = finished(run_group(out, n, flavour_env))
        for run in runs[1:]:
            assert_same_weights(run["weights"], runs[0]["weights"])
        assert not (out / "backup").exists()  # delete_checkpoint=True removed it
        _reference[key] = runs[0]["weights"]
    return _reference[key]


def flavour(name: str) -> dict[str, str]:
    if name == "tf_keras":
        pytest.importorskip("tf_keras")
    return {"TF_USE_LEGACY_KERAS": "1" if name == "tf_keras" else "0"}


def prepare_run(tmp_path: Path, n: int, keras_flavour: str) -> tuple[dict[str, str], Any, Path]:
    """The flavour's environment, an uninterrupted run's final weights for ``n`` workers, and
    an empty folder for the run under test."""
    env = flavour(keras_flavour)
    expected = reference(tmp_path, n, env)
    out = tmp_path / "run"
    out.mkdir()
    return env, expected, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keras_flavour", "freq"), [("keras3", "epoch"), ("keras3", "3"), ("tf_keras", "3")]
)
def test_killed_worker_group_restarts_from_the_last_backup(
    tmp_path: Path, keras_flavour: str, freq: str
) -> None:
    """Worker 1 is SIGKILLed at its 10th batch end (epoch 3 of 5, 4 batches an epoch);
    the group is stopped and started again with the same backup_dir (one folder shared by
    both workers, the set-up that fails with Keras's own callback). With save_freq=3 the
    last backup is mid-epoch (after batch 9 = epoch 3, batch 1), so the restart skips that
    epoch's first batch. The final weights equal an uninterrupted run's."""
    env, expected, out = prepare_run(tmp_path, 2, keras_flavour)
    first = run_group(
        out,
        2,
        {**env, "FREQ": freq, "FAIL_TASK": "1", "FAIL_AT": "10", "FAIL_SIGNAL": "SIGKILL"},
        settle=10,  # worker 0's fate after its peer's death is not asserted: no need to wait
    )
    assert first[1][0] == -signal.SIGKILL
    backups = sorted((out / "backup").glob("backup-*"))
    assert len(backups) == 1  # the newest only: older ones are removed once it is complete
    state = json.loads((backups[0] / "state.json").read_text())
    assert state == (
        {"epoch": 2, "batch": -1, "save": 1}
        if freq == "epoch"
        else {"epoch": 2, "batch": 0, "save": 2}
    ) | {"workers": 2, "replicas": 2, "steps_per_epoch": 4}  # what the math depends on
    second = finished(run_group(out, 2, {**env, "FREQ": freq}))
    for run in second:
        assert run["keras"].startswith("tf_keras" if keras_flavour == "tf_keras" else "keras")
        assert_same_weights(run["weights"], expected)
    assert not (out / "backup").exists()


@pytest.mark.slow
def test_sigterm_saves_a_backup_on_every_worker_and_exits_with_the_restart_code(
    tmp_path: Path,
) -> None:
    """SIGTERM to worker 1 only (as Kubernetes sends to one pod): both workers agree on a
    step, the chief writes the backup, both exit 143, and the next start resumes to the
    same final weights as an uninterrupted run."""
    env, expected, out = prepare_run(tmp_path, 2, "keras3")
    first = run_group(out, 2, {**env, "FAIL_TASK": "1", "FAIL_AT": "6", "FAIL_SIGNAL": "SIGTERM"})
    assert [code for code, _, _ in first] == [RESTART_EXIT_CODE] * 2, [e[-2000:] for *_, e in first]
    backups = sorted((out / "backup").glob("backup-*"))
    assert len(backups) == 1
    state = json.loads((backups[0] / "state.json").read_text())
    assert state["epoch"] == 1 and state["batch"] >= 1  # mid-epoch 2, after the signal
    second = finished(run_group(out, 2, env))
    for run in second:
        assert_same_weights(run["weights"], expected)


@pytest.mark.slow
def test_model_checkpoint_on_two_workers_only_the_chief_writes(tmp_path: Path) -> None:
    """Both workers save into one shared folder (Keras's own callback fails there with
    FileExistsError or 'unable to lock file'): only the chief's files exist, nothing
    temporary is left (the workers' TMPDIR is checked too), and the files load."""
    out = tmp_path / "run"
    out.mkdir()
    private = tmp_path / "tmpdir"
    private.mkdir()
    runs = finished(
        run_group(out, 2, {**flavour("keras3"), "MODE": "checkpoint", "TMPDIR": str(private)})
    )
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == [f"e{i}.keras" for i in range(1, 6)]
    assert list(private.iterdir()) == []
    for run in runs:
        assert_same_weights(run["loaded"], run["weights"])


@pytest.mark.slow
def test_one_process_resumes_mid_epoch(tmp_path: Path) -> None:
    env, expected, out = prepare_run(tmp_path, 1, "keras3")
    ((code, _, _),) = run_group(
        out, 1, {**env, "FREQ": "3", "FAIL_TASK": "0", "FAIL_AT": "10", "FAIL_SIGNAL": "SIGKILL"}
    )
    assert code == -signal.SIGKILL
    (run,) = finished(run_group(out, 1, {**env, "FREQ": "3"}))
    assert_same_weights(run["weights"], expected)


@pytest.mark.slow
def test_one_process_sigterm_saves_and_exits_with_the_restart_code(tmp_path: Path) -> None:
    env, expected, out = prepare_run(tmp_path, 1, "keras3")
    run = {**env, "FAIL_TASK": "0", "FAIL_AT": "6", "FAIL_SIGNAL": "SIGTERM"}
    ((code, _, stderr),) = run_group(out, 1, run)
    assert code == RESTART_EXIT_CODE, stderr[-2000:]
    state = json.loads(next((out / "backup").glob("backup-*/state.json")).read_text())
    assert {k: state[k] for k in ("epoch", "batch", "save")} == {"epoch": 1, "batch": 2, "save": 1}
    assert (state["workers"], state["replicas"]) == (1, 1)  # saved at the next batch end
    (resumed,) = finished(run_group(out, 1, env))
    assert_same_weights(resumed["weights"], expected)


def test_arguments_are_checked_before_training() -> None:
    import tfplace.callbacks

    with pytest.raises(ValueError, match="save_freq"):
        tfplace.callbacks.BackupAndRestore("/tmp/x", save_freq=0)
    with pytest.raises(ValueError, match="backup_dir"):
        tfplace.callbacks.BackupAndRestore("")
    backup = tfplace.callbacks.BackupAndRestore("/tmp/x", save_freq=5)
    keras = pytest.importorskip("keras")
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        assert isinstance(backup, keras.callbacks.Callback)
    assert isinstance(backup, tfplace.callbacks.BackupAndRestore)


@pytest.mark.slow
def test_backup_folders_that_are_not_shared_stop_every_worker_naming_the_folder(
    tmp_path: Path,
) -> None:
    """Each worker has its own backup folder (as with a local path on each machine): the
    first save is checked, and every worker stops within seconds saying the folder must be
    shared. The next start finds the chief's backup, which worker 1 does not see: every
    worker stops again, before training, instead of resuming at different epochs."""
    out = tmp_path / "run"
    out.mkdir()
    env = {**flavour("keras3"), "APART": "1", "GRACE": "2"}
    for attempt in ("first save", "restore"):
        start = time.monotonic()
        results = run_group(out, 2, env, settle=30)
        assert time.monotonic() - start < 90, attempt
        for code, _, stderr in results:
            assert code == 1, (attempt, stderr[-2000:])
            assert "ClusterConfigError" in stderr, stderr[-2000:]
            assert "backup_dir must be shared storage" in stderr
            assert str(out / "backup-of-0") in stderr  # the chief's folder is named
        seen = "which the chief just wrote" if attempt == "first save" else "the chief restores"
        assert seen in results[0][2]
    assert [p.name for p in (out / "backup-of-0").iterdir()] == ["backup-00000000"]
    assert not (out / "backup-of-1").exists()  # worker 1 never writes the real place


@pytest.mark.slow
@pytest.mark.parametrize("inject", ["/stop/", "tfplace/preempt/1,error"])
def test_a_failed_preemption_publish_is_a_warning_not_a_long_wait(
    tmp_path: Path, inject: str
) -> None:
    """Worker 1 gets SIGTERM and cannot publish its stop proposal. With the error key
    working, it reports the proposal there and both workers save at the agreed step and exit
    143; when it cannot announce the preemption nor report it, it exits 143 at once without
    a backup. Either way every failure is a WARNING naming the key, and nobody waits the
    600 s timeout."""
    out = tmp_path / "run"
    out.mkdir()
    env = {**flavour("keras3"), "FAIL_TASK": "1", "FAIL_AT": "6", "FAIL_SIGNAL": "SIGTERM"}
    start = time.monotonic()
    results = run_group(out, 2, {**env, "INJECT": inject}, settle=30)
    assert time.monotonic() - start < 120
    (_, _, chief), (code, _, worker) = results
    assert code == RESTART_EXIT_CODE, worker[-2000:]
    if inject == "/stop/":
        assert (
            "worker/1 could not publish its stop proposal (tfplace/preempt/1/stop/worker/1"
            in worker
        )
        assert "worker/1 could not publish its stop proposal" in chief  # the peer learned it
        assert results[0][0] == RESTART_EXIT_CODE
        state = json.loads(next((out / "backup").glob("backup-*/state.json")).read_text())
        assert state["epoch"] == 1 and state["batch"] >= 1  # the preemption backup
    else:
        assert "worker/1 could not announce its preemption (tfplace/preempt/1: " in worker
        assert "could not report it either" in worker
        assert "without a new backup" in worker


@pytest.mark.slow
def test_ram_and_local_backup_dirs_go_through_gfile(tmp_path: Path) -> None:
    """backup_dir and ModelCheckpoint paths on TensorFlow's in-memory file system: the
    backups are written, found and restored there, and nothing appears on the local disk
    (no ram: folder in the working directory); a local path works the same."""
    code = """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras
    import tfplace.callbacks

    gfile = tf.io.gfile
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(1, keepdims=True)

    def make():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("adam", "mse")
        return model

    found = {}
    for root in ("ram://tfplace-test", os.path.abspath("local")):
        first = tfplace.callbacks.BackupAndRestore(
            root + "/backup", save_freq=3, delete_checkpoint=False
        )
        make().fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[first])
        names = sorted(n.rstrip("/") for n in gfile.listdir(root + "/backup"))
        state = json.loads(gfile.GFile(root + "/backup/" + names[-1] + "/state.json").read())
        second = tfplace.callbacks.BackupAndRestore(root + "/backup", save_freq=3)
        history = make().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[second])
        gfile.makedirs(root + "/ckpt")
        saver = tfplace.callbacks.ModelCheckpoint(root + "/ckpt/e{epoch}.keras")
        make().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[saver])
        found["ram" if root.startswith("ram:") else "local"] = {
            "names": names,
            "state": state,
            "epochs": len(history.history["loss"]),
            "left": gfile.exists(root + "/backup"),
            "ckpt": gfile.listdir(root + "/ckpt"),
        }
    print(json.dumps({"found": found, "cwd": sorted(os.listdir("."))}))
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **QUIET_ENV, **CPU_ONLY_ENV, "TF_USE_LEGACY_KERAS": "0"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cwd"] == ["local"]  # nothing else: no ram: folder
    assert set(result["found"]) == {"ram", "local"}
    for run in result["found"].values():
        assert run["names"] == ["backup-00000001"]  # 8 batches, a backup every 3: the 2nd
        assert run["state"] == {
            "epoch": 1,
            "batch": 1,
            "save": 1,
            "workers": 1,
            "replicas": 1,
            "steps_per_epoch": 4,
        }
        assert run["epochs"] == 2  # resumed in epoch 2 of 3
        assert run["left"] is False  # delete_checkpoint removed the folder
        assert run["ckpt"] == ["e1.keras"]  # renamed into place, no temporary left


# ---------------------------------------------- the backup agreement never waits silently


class FakeCoordination:
    """The coordination service's key-value calls, in memory, shared by worker threads."""

    def __init__(self) -> None:
        import threading

        self.values: dict[str, str] = {}
        self.changed = threading.Condition()

    def set_config_key_value(self, key: str, value: str) -> None:
        import tensorflow as tf

        with self.changed:
            if key in self.values:
                raise tf.errors.AlreadyExistsError(None, None, f"{key} exists")
            self.values[key] = value
            self.changed.notify_all()

    def get_config_key_value(self, key: str, timeout_ms: int) -> str:
        import tensorflow as tf

        with self.changed:
            if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
                raise tf.errors.DeadlineExceededError(None, None, f"{key} not set")
            return self.values[key]


def worker_model(index: int, workers: int) -> Any:
    from types import SimpleNamespace

    jobs = {"worker": [f"h{i}:1" for i in range(workers)]}
    resolver = SimpleNamespace(
        task_type="worker",
        task_id=index,
        cluster_spec=lambda: SimpleNamespace(as_dict=lambda: jobs),
    )
    return SimpleNamespace(distribute_strategy=SimpleNamespace(cluster_resolver=resolver))


class FlakyStore:
    """A BackupStore whose file access fails (``fail``), or whose backup 0 appears only
    ``late`` seconds after the start (a network file system's cache)."""

    def __init__(self, fail: bool = False, late: float = 0.0) -> None:
        self.root = "/data/run1/backup"
        self.fail = fail
        self.since = time.monotonic() + late

    def _check(self) -> None:
        if self.fail:
            raise PermissionError(13, "Permission denied", self.root)

    def latest(self) -> int | None:
        self._check()
        return 0 if time.monotonic() >= self.since else None

    def is_complete(self, number: int) -> bool:
        self._check()
        return time.monotonic() >= self.since

    def numbers(self) -> list[int]:
        return [0] if self.is_complete(0) else []


def agree_in_threads(
    monkeypatch: pytest.MonkeyPatch, stores: list[Any], grace: float = 1.0
) -> tuple[list[Any], float]:
    """Every worker runs agree_on_restore in a thread on one fake coordination service;
    returns each one's result (or exception) and the seconds until all were done."""
    import threading

    from tfplace import _tf
    from tfplace.callbacks._shared import agree_on_restore

    ctx = FakeCoordination()
    monkeypatch.setattr(_tf, "coordination_context", lambda: ctx)
    results: list[Any] = [None] * len(stores)

    def run(i: int) -> None:
        try:
            results[i] = agree_on_restore(
                worker_model(i, len(stores)), stores[i], "tfplace/backup/1/restore", 60, grace
            )
        except Exception as err:
            results[i] = err

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70)
    return results, time.monotonic() - start


def test_a_worker_that_cannot_read_the_backups_stops_every_worker_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 2's file access raises: it publishes the failure as its verdict, and every
    worker raises the same ClusterConfigError naming it, instead of waiting 60 s."""
    from tfplace.errors import ClusterConfigError

    results, took = agree_in_threads(monkeypatch, [FlakyStore(), FlakyStore(), FlakyStore(True)])
    assert took < 10
    for result in results:
        assert isinstance(result, ClusterConfigError), results
        assert "worker/2 could not read '/data/run1/backup'" in str(result)
        assert "Permission denied" in str(result) and "permissions" in str(result)
        assert "shared storage" not in str(result) and "acdirmax" not in str(result)


def test_a_chief_that_cannot_read_the_backups_stops_the_others_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tfplace.errors import ClusterConfigError

    results, took = agree_in_threads(monkeypatch, [FlakyStore(True), FlakyStore()])
    assert took < 10
    for result in results:
        assert isinstance(result, ClusterConfigError), results
        assert "worker/0 could not read" in str(result)


def test_a_backup_that_appears_late_is_found_within_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chief sees backup 0 at once; worker 1's view lags by 1.5 s (an NFS attribute
    cache): a 5 s grace finds it, a 0.5 s grace calls the folder not shared and names the
    NFS cache settings."""
    from tfplace.errors import ClusterConfigError

    results, _ = agree_in_threads(monkeypatch, [FlakyStore(), FlakyStore(late=1.5)], grace=5.0)
    assert results == [0, 0]
    results, _ = agree_in_threads(monkeypatch, [FlakyStore(), FlakyStore(late=30)], grace=0.5)
    for result in results:
        assert isinstance(result, ClusterConfigError), results
        text = str(result)
        assert "worker/1 does not see backup-00000000" in text and "looked for 0.5 s" in text
        assert "acdirmax" in text and "actimeo" in text and "lookupcache" in text
        assert "shared_grace" in text


def test_the_default_grace_outlasts_nfs_attribute_caching() -> None:
    import tfplace.callbacks
    from tfplace.callbacks._shared import DEFAULT_GRACE_S

    assert DEFAULT_GRACE_S > 60  # Linux NFS: acdirmax is 60 s by default
    assert tfplace.callbacks.BackupAndRestore("/tmp/x").shared_grace == DEFAULT_GRACE_S
    assert tfplace.callbacks.BackupAndRestore("/tmp/x", shared_grace=2).shared_grace == 2.0
    with pytest.raises(ValueError, match="shared_grace"):
        tfplace.callbacks.BackupAndRestore("/tmp/x", shared_grace=-1)


# ------------------------------------------------------ another worker count (issue 27.4)


class _Stop(keras.callbacks.Callback):  # type: ignore[misc]
    """Ends fit with an error at the ``at``-th batch end (a lost worker, in one process)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.ends = at, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.ends += 1
        if self.ends == self.at:
            raise RuntimeError("stopped here")


def _fit(folder: Path, batch: int, *extra: Any, **options: Any) -> Any:
    import tfplace.callbacks

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
    backup = tfplace.callbacks.BackupAndRestore(
        str(folder), save_freq=2, preemption=False, **options
    )
    model.fit(x, x[:, :1], batch_size=batch, epochs=2, verbose=0, shuffle=False,
              callbacks=[backup, *extra])  # fmt: skip
    return model


def test_a_backup_records_what_the_math_depends_on_and_refuses_another_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RuntimeError, match="stopped here"):
        _fit(tmp_path, 8, _Stop(4), global_batch=8)
    state = json.loads(next(tmp_path.glob("backup-*/state.json")).read_text())
    assert state["workers"] == 1 and state["replicas"] == 1
    assert (state["steps_per_epoch"], state["global_batch"]) == (6, 8)
    # the batch scaled with the worker count: refused, naming both and the fix
    with pytest.raises(ValueError, match="another global batch") as info:
        _fit(tmp_path, 16, global_batch=16)
    message = str(info.value)
    assert "global batch 8 then, 16 now" in message and "steps per epoch 6 then, 3 now" in message
    assert "allow_new_batch=True" in message
    # without global_batch, the steps per epoch tell it
    with pytest.raises(ValueError, match="steps per epoch 6 then, 3 now"):
        _fit(tmp_path, 16)
    # allowed: it resumes, and says so
    with caplog.at_level(logging.WARNING, logger="tfplace"):
        _fit(tmp_path, 16, allow_new_batch=True)
    assert "with other steps per epoch (steps per epoch 6 then, 3 now)" in caplog.text


def test_a_global_batch_that_does_not_divide_over_the_replicas_is_refused(tmp_path: Path) -> None:
    import tfplace.callbacks

    strategy = tfplace.pick_strategy("mirrored")  # the suite's 2 virtual CPUs
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), "mse")
    backup = tfplace.callbacks.BackupAndRestore(str(tmp_path), preemption=False, global_batch=15)
    # as fit calls it (in one process Keras itself fails at such a batch before the
    # callbacks start; across workers TensorFlow rebatches it into unequal shares)
    callback: keras.callbacks.Callback = backup
    callback.set_model(model)
    callback.set_params({"verbose": 0, "epochs": 1, "steps": 2})
    with pytest.raises(ValueError, match="does not divide over 2 replicas") as info:
        backup.on_train_begin()
    assert "14 or 16" in str(info.value) and "1, 3, 5, 15" in str(info.value)
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError, match="global_batch"):
        tfplace.callbacks.BackupAndRestore(str(tmp_path), global_batch=0)


def _fit_spe(folder: Path, *extra: Any) -> Any:
    import tfplace.callbacks

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=4)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")  # 10 steps an epoch
    backup = tfplace.callbacks.BackupAndRestore(str(folder), save_freq=4, preemption=False)
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, shuffle=False,
              callbacks=[backup, *extra])  # fmt: skip
    return model


def test_resuming_after_a_partial_last_execution_skips_only_the_epochs_rest(
    tmp_path: Path,
) -> None:
    """steps_per_execution=4 over 10 steps: Keras reports the last, partial execution as step
    11; the resumed fit skips the 10 steps of that epoch, not 12 (which ran the input out, with
    Keras's warning), and ends with an uninterrupted run's weights."""
    expected = _fit_spe(tmp_path / "whole").get_weights()
    with pytest.raises(RuntimeError, match="stopped here"):
        _fit_spe(tmp_path / "run", _Stop(3))  # the 3rd execution of epoch 0 saved, then stop
    state = json.loads(next((tmp_path / "run").glob("backup-*/state.json")).read_text())
    assert (state["epoch"], state["batch"]) == (0, 11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit_spe(tmp_path / "run")
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    for got, want in zip(resumed.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_launchers_global_batch_is_the_backups_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under tfplace launch --global-batch B, BackupAndRestore checks B without being told."""
    import tfplace.callbacks

    monkeypatch.setenv("TFPLACE_GLOBAL_BATCH", "96")
    assert tfplace.callbacks.BackupAndRestore("/tmp/x").global_batch == 96
    assert tfplace.callbacks.BackupAndRestore("/tmp/x", global_batch=32).global_batch == 32
    monkeypatch.setenv("TFPLACE_GLOBAL_BATCH", "many")
    with pytest.raises(ValueError, match="TFPLACE_GLOBAL_BATCH='many'"):
        tfplace.callbacks.BackupAndRestore("/tmp/x")
