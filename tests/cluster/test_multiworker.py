"""Keras 3 model.fit across two local worker processes equals one process with 2 replicas."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CPU_ONLY_ENV, QUIET_ENV, run_json, run_workers

pytestmark = pytest.mark.tf

TRAIN = """
import json, os
import numpy as np
import tfplace
if os.environ.get("TF_CONFIG"):
    strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
else:
    tfplace.configure_cpus(virtual_devices=2)
    strategy = tfplace.pick_strategy("mirrored")
import tensorflow as tf

keras = tf.keras  # Keras 3, or tf_keras under TF_USE_LEGACY_KERAS=1
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
evaluation = model.evaluate(x, y, batch_size=16, verbose=0)
prediction = model.predict(x, batch_size=16, verbose=0)
children = sum(
    len(open(f"/proc/self/task/{t}/children").read().split()) for t in os.listdir("/proc/self/task")
)
print(json.dumps({
    "children": children,
    "keras": keras.__name__,
    "kind": type(strategy).__name__,
    "replicas": strategy.num_replicas_in_sync,
    "loss": history.history["loss"],
    "mae": history.history["mae"],
    "evaluate": evaluation,
    "predict_rows": int(prediction.shape[0]),
    "predict_sum": float(prediction.sum()),
    "weights": [w.ravel().tolist() for w in model.get_weights()],
}))
"""


def close(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(abs(a - b) <= 1e-4 * max(1.0, abs(b)))


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_two_workers_match_one_process_with_two_replicas(flavour: str) -> None:
    env = {"TF_USE_LEGACY_KERAS": "1" if flavour == "tf_keras" else "0"}
    if flavour == "tf_keras":
        pytest.importorskip("tf_keras")
    # The comparison is about the strategies, not the hardware: every process runs on the CPU
    # (two workers on one GPU host would share its GPU, which NCCL refuses).
    single = run_json(TRAIN, env={"TF_CONFIG": None, **env}, cpu_only=True)
    workers = run_workers(TRAIN, extra_env={**env, **CPU_ONLY_ENV})
    assert single["replicas"] == 2
    assert single["keras"].startswith("tf_keras" if flavour == "tf_keras" else "keras")
    for w in workers:
        assert w["children"] == 0  # the start-up watchdog process is gone
        assert w["keras"] == single["keras"]
        assert w["kind"] == "KerasMultiWorkerMirroredStrategy"
        assert w["replicas"] == 2
        assert w["loss"][-1] < w["loss"][0]
        for key in ("loss", "mae", "evaluate", "weights"):
            assert close(w[key], single[key]), (key, w[key], single[key])
        assert w["predict_rows"] == single["predict_rows"] == 96
        assert close(w["predict_sum"], single["predict_sum"])


def test_is_chief_and_worker_save_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tfplace
    from tfplace._facts.cluster.spec import from_mapping

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)  # in case the suite runs under srun
    assert tfplace.is_chief() is True  # no cluster: the only process is the chief
    cluster = {"worker": ["a:1", "b:1"], "chief": ["c:1"]}
    chief = from_mapping({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    worker = from_mapping({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert tfplace.is_chief(chief) is True
    assert tfplace.is_chief(worker) is False
    target = tmp_path / "model.keras"
    with tfplace.worker_save_path(target, chief) as p:
        assert p == str(target)
    with tfplace.worker_save_path(target, worker) as p:
        assert p != str(target)
        assert p.endswith("model.keras")
        private = os.path.dirname(p)
        assert os.path.isdir(private)
        open(p, "w").close()
    assert not os.path.exists(private)  # removed afterwards
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"index": 1, "type": "worker"}}),
    )
    assert tfplace.is_chief() is False
    with pytest.raises(TypeError):
        tfplace.is_chief({"worker": []})  # type: ignore[arg-type]
    with pytest.raises(TypeError), tfplace.worker_save_path(3):  # type: ignore[arg-type]
        pass


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/run1/model.keras", "ram://run1/ckpt/model.keras", "gs://bucket/model.keras"],
)
def test_worker_save_path_keeps_urls_as_written(url: str) -> None:
    """A URL is never collapsed by Path() (gs://bucket -> gs:/bucket, a local folder): the
    chief gets it exactly; another worker a local private file of the same name."""
    import tfplace
    from tfplace._facts.cluster.spec import from_mapping

    cluster = {"worker": ["a:1", "b:1"]}
    chief = from_mapping({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    other = from_mapping({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    with tfplace.worker_save_path(url, chief) as p:
        assert p == url
    with tfplace.worker_save_path(url, other) as p:
        assert "://" not in p and os.path.basename(p) == "model.keras"
        private = os.path.dirname(p)
        assert os.path.isdir(private)
    assert not os.path.exists(private)


def test_a_model_saved_through_worker_save_path_lands_at_the_ram_url(tmp_path: Any) -> None:
    """The chief saves a Keras model to a ram:// URL and loads it back from there."""
    import tensorflow as tf

    import tfplace
    from tfplace._facts.cluster.spec import from_mapping

    keras = pytest.importorskip("keras")
    chief = from_mapping(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    url = "ram://tfplace-test/run1/model.weights.h5"
    tf.io.gfile.makedirs("ram://tfplace-test/run1")
    with tfplace.worker_save_path(url, chief) as p:
        model.save_weights(p)
    assert tf.io.gfile.exists(url)
    assert not (tmp_path / "ram:").exists() and not os.path.exists("ram:")
    tf.io.gfile.rmtree("ram://tfplace-test")


def test_is_chief_and_worker_save_path_read_the_environment_only(tmp_path: Any) -> None:
    """No TensorFlow import and no installed-package scan: a fresh process that forbids the
    scan still answers from TF_CONFIG, then from SLURM variables."""
    tf_config = json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    )
    result = run_json(
        f"""
        import json, os, sys
        from importlib import metadata

        def no_scan(*args, **kwargs):
            raise AssertionError("is_chief/worker_save_path scanned the installed packages")

        metadata.distributions = metadata.distribution = metadata.version = no_scan
        import tfplace

        answers = [tfplace.is_chief()]
        with tfplace.worker_save_path({str(tmp_path / "m.keras")!r}) as path:
            answers.append(path)
        del os.environ["TF_CONFIG"]
        os.environ.update(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_JOB_NODELIST="n[1-2]")
        answers.append(tfplace.is_chief())
        with tfplace.worker_save_path({str(tmp_path / "m.keras")!r}) as path:
            answers.append(path)
        loaded = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
        print(json.dumps({{"answers": answers, "loaded": loaded}}))
        """,
        env={"TF_CONFIG": tf_config, "SLURM_PROCID": None, "SLURM_JOB_NODELIST": None},
    )
    worker_1, private, slurm_0, real = result["answers"]
    assert worker_1 is False
    assert private != str(tmp_path / "m.keras") and private.endswith("m.keras")
    assert slurm_0 is True
    assert real == str(tmp_path / "m.keras")
    assert result["loaded"] == []


PAGE = Path(__file__).resolve().parents[2] / "docs" / "multi-worker.md"
LAUNCH = "tfplace launch -n 2 docs/examples/multi_worker_train.py /tmp/out"


def page_commands() -> list[tuple[str, list[str]]]:
    """Every ``tfplace`` command in the page's bash blocks, with the output the page shows
    after it (``$ command`` lines are followed by their output; ``# or: command`` lines are
    alternatives). The SLURM batch script needs a SLURM cluster and is not run."""
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S):
        prompted = block.startswith("$ ")
        for line in block.splitlines():
            command = line.removeprefix("# or: ").removeprefix("$ ")
            if command.startswith(("tfplace ", "python -m tfplace ")):
                found.append((command, []))
            elif prompted and found and line.strip():
                found[-1][1].append(line)
    return found


def run_page_command(command: str, out_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command of the page from the repository root, as a user would type it. The
    program is this environment's ``tfplace`` script or Python; ``/tmp/out`` becomes
    ``out_dir`` (a folder that does not exist yet, as on a fresh machine) so that parallel
    runs and the user's own /tmp/out are left alone."""
    argv = shlex.split(command)
    bin_dir = Path(sys.executable).parent
    program = {"tfplace": bin_dir / "tfplace", "python": Path(sys.executable)}[argv[0]]
    assert program.exists(), f"{program} is missing: install tfplace (pip install -e .)"
    if out_dir is not None:
        argv = [str(out_dir) if a == "/tmp/out" else a for a in argv]
    return subprocess.run(
        [str(program), *argv[1:]],
        cwd=PAGE.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **QUIET_ENV, **CPU_ONLY_ENV},  # "2 replicas": one CPU each
    )


def test_the_page_shows_the_commands_these_tests_run() -> None:
    commands = [c for c, _ in page_commands()]
    assert LAUNCH in commands
    assert f"python -m {LAUNCH}" in commands
    assert "tfplace tf-config node1 node2 --port 2222" in commands


def test_the_pages_tf_config_command_prints_what_the_page_shows() -> None:
    for command, shown in page_commands():
        if " tf-config " in f" {command} ":
            assert shown, f"the page shows no output for {command!r}"
            proc = run_page_command(command)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.splitlines() == shown


@pytest.mark.slow
@pytest.mark.parametrize("command", [LAUNCH, f"python -m {LAUNCH}"])
def test_the_pages_launch_command_works_on_a_fresh_machine(command: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"  # does not exist yet, like /tmp/out on a fresh machine
    proc = run_page_command(command, out_dir)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[worker 0] chief: 2 replicas" in proc.stdout
    assert "[worker 1] worker: 2 replicas" in proc.stdout
    assert os.listdir(out_dir) == ["model.keras"]  # only the chief wrote there


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_fails_clearly_instead_of_hanging() -> None:
    import time

    from helpers import run_fresh

    from tfplace._facts.cluster.spec import ClusterSpec
    from tfplace.cluster._launch import free_ports

    mine, missing = free_ports(2)
    config = ClusterSpec.local([mine, missing]).for_task(0).to_tf_config()
    start = time.monotonic()
    proc = run_fresh(
        """
        import tfplace
        tfplace.pick_strategy(startup_timeout=5)
        print("built")  # must never happen: worker 1 does not exist
        """,
        env={"TF_CONFIG": config},
        check=False,
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert proc.returncode == -9
    assert "built" not in proc.stdout
    assert f"Nothing listens at 127.0.0.1:{missing}" in proc.stderr
    assert "not every worker joined within 5 s" in proc.stderr


def test_compare_replica_counts() -> None:
    from tfplace.cluster._multiworker import compare_replica_counts
    from tfplace.errors import ClusterConfigError

    compare_replica_counts({"worker 0": 2, "worker 1": 2}, "TF_CONFIG")
    with pytest.raises(ClusterConfigError, match=r"worker 0: 2, worker 1: 1.*group_size"):
        compare_replica_counts({"worker 0": 2, "worker 1": 1}, "TF_CONFIG")


@pytest.mark.slow
def test_workers_with_different_replica_counts_stop_before_training() -> None:
    from helpers import run_cluster

    # Worker 1 pretends to have two local replicas (as with a second GPU); the counts are
    # exchanged for real through TensorFlow's coordination service.
    code = """
    import json, os, tfplace, tfplace.cluster._multiworker as mw
    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
        mw._local_replicas = lambda strategy: 2
    try:
        tfplace.pick_strategy(communication_timeout=30, startup_timeout=120)
    except tfplace.ClusterConfigError as err:
        print("refused:", err)
        raise SystemExit(3)
    print("built")
    """
    done = run_cluster(code, extra_env=CPU_ONLY_ENV)  # worker 0 has exactly 1 replica
    for proc in done:
        assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
        assert "replicas per worker differ (worker 0: 1, worker 1: 2)" in proc.stdout


@pytest.mark.slow
def test_a_failed_replica_count_publish_is_a_warning_that_reaches_the_peer_in_seconds() -> None:
    """Worker 1 cannot publish its replica count (injected through the seam): it says so at
    WARNING and reports it; worker 0, waiting for that count with a 120 s timeout, learns of
    it within seconds and says so too. Before, both errors went to log.debug, and worker 0
    waited the whole timeout."""
    import time

    from helpers import run_cluster

    code = """
    import json, os, time
    from tfplace import _tf
    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
        real = _tf.coordination_context

        class Failing:
            def __init__(self, ctx):
                self.ctx = ctx
            def __getattr__(self, name):
                return getattr(self.ctx, name)
            def set_config_key_value(self, key, value):
                if key.startswith("tfplace/replicas/worker"):
                    raise RuntimeError("injected failure")
                return self.ctx.set_config_key_value(key, value)

        _tf.coordination_context = lambda: Failing(real())
    import tfplace
    tfplace.pick_strategy(communication_timeout=120, startup_timeout=120)
    start = time.monotonic()
    print("built")
    """
    start = time.monotonic()
    done = run_cluster(code, extra_env=CPU_ONLY_ENV, timeout=150)
    elapsed = time.monotonic() - start
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "built" in proc.stdout
        assert "worker 1 could not publish its replica count (tfplace/replicas/worker/1: " in (
            proc.stderr
        )
        assert "the workers go on without comparing replica counts" in proc.stderr
    assert elapsed < 90  # not the 120 s timeout


STOCK = """
import json, os, tempfile, warnings
import numpy as np
import tfplace, tfplace.callbacks
strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
import keras

x = np.zeros((16, 2), "float32")
y = np.zeros((16, 1), "float32")
with strategy.scope():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
me = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
private = tempfile.mkdtemp()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    stock = keras.callbacks.ModelCheckpoint(os.path.join(private, "m.keras"))
    ours = tfplace.callbacks.ModelCheckpoint(os.path.join(private, "o{epoch}.keras"))
    for _ in range(2):  # flagged once per process, not once per fit
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[stock, ours])
texts = [
    f"{w.category.__name__}: {w.message}"
    for w in caught
    if issubclass(w.category, tfplace.TfplaceWarning)
]
print(json.dumps(texts))
"""


@pytest.mark.slow
def test_a_stock_keras_checkpoint_on_two_workers_is_flagged_once_naming_the_replacement() -> None:
    for texts in run_workers(STOCK, extra_env={**CPU_ONLY_ENV, "TF_USE_LEGACY_KERAS": "0"}):
        assert len(texts) == 1, texts  # the stock one, once; tfplace's own is not flagged
        assert texts[0].startswith("StockCallbackWarning: keras.callbacks.ModelCheckpoint")
        assert "tfplace.callbacks.ModelCheckpoint" in texts[0]


# ------------------------------------- Keras's stock callbacks: any strategy, undone, precise


@pytest.fixture
def stock_check(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in for a multi-worker strategy the user built (2 workers, 2 replicas), and a
    clean slate of the stock-callback check before and after."""
    from tfplace import _tf
    from tfplace.cluster import _stock

    keras = pytest.importorskip("keras")
    if _tf.load_keras().__name__ != "keras":
        pytest.skip("the check is for Keras 3's callbacks (tf_keras's write per worker)")

    class UserStrategy:
        num_replicas_in_sync = 2

    monkeypatch.setattr(
        _tf, "strategy_num_workers", lambda s: 2 if isinstance(s, UserStrategy) else 1
    )
    _stock.unwatch_all()
    originals = {
        name: dict(vars(getattr(keras.callbacks, name)))
        for name in ("ModelCheckpoint", "BackupAndRestore")
    }
    yield UserStrategy
    _stock.unwatch_all()
    for name, before in originals.items():
        assert dict(vars(getattr(keras.callbacks, name))) == before, name


def fit_begins(callback: Any, strategy: Any) -> None:
    """What fit does with a callback before training: set_model, then on_train_begin."""
    from types import SimpleNamespace

    callback.set_model(SimpleNamespace(distribute_strategy=strategy, built=True))
    callback.on_train_begin()


def test_a_multi_worker_strategy_the_user_built_is_covered(stock_check: Any, tmp_path: Any) -> None:
    """The user's own MultiWorkerMirroredStrategy, seen by tfplace.global_batch_size: Keras's
    stock ModelCheckpoint is flagged (before, only tfplace's own strategy installed the
    check)."""
    import keras

    import tfplace
    from tfplace.cluster._multiworker import StockCallbackWarning

    strategy = stock_check()
    assert tfplace.global_batch_size(4, strategy) == 8
    stock = keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))
    with pytest.warns(StockCallbackWarning, match=r"Fix: use tfplace\.callbacks\.ModelCheckpoint"):
        fit_begins(stock, strategy)


def test_a_tfplace_callback_beside_a_stock_one_installs_the_check(
    stock_check: Any, tmp_path: Any
) -> None:
    import keras

    import tfplace.callbacks
    from tfplace.cluster import _stock

    strategy = stock_check()
    assert not _stock.is_watching()
    ours = tfplace.callbacks.ModelCheckpoint(str(tmp_path / "o.keras"))
    ours.set_model(type("Model", (), {"distribute_strategy": strategy})())
    assert _stock.is_watching()
    with pytest.warns(_stock.StockCallbackWarning, match="keras.callbacks.BackupAndRestore"):
        fit_begins(keras.callbacks.BackupAndRestore(str(tmp_path / "b")), strategy)


def test_the_wrapping_is_undone_once_said_and_once_the_strategies_are_gone(
    stock_check: Any, tmp_path: Any
) -> None:
    import gc

    import keras

    from tfplace.cluster import _stock

    checkpoint, backup = keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore
    own = vars(backup)["on_train_begin"]
    strategy = stock_check()
    _stock.watch(strategy)
    assert "on_train_begin" in vars(checkpoint) and vars(backup)["on_train_begin"] is not own
    with pytest.warns(_stock.StockCallbackWarning):
        fit_begins(checkpoint(str(tmp_path / "m.keras")), strategy)
    assert "on_train_begin" not in vars(checkpoint)  # said once: Keras's own class again
    assert vars(backup)["on_train_begin"] is not own  # still watched while the strategy lives
    del strategy
    gc.collect()
    assert vars(backup)["on_train_begin"] is own  # no strategy left: put back
    assert not _stock.is_watching()


def test_only_the_stock_writing_is_flagged(stock_check: Any, tmp_path: Any) -> None:
    """A subclass that writes its own way (it overrides Keras's file hooks, e.g. a path per
    worker) is not flagged, nor is a strategy of one worker; a subclass that only adds
    behaviour still writes as Keras does and is."""
    import warnings

    import keras

    from tfplace import _tf
    from tfplace.cluster import _stock

    class PerWorker(keras.callbacks.ModelCheckpoint):  # type: ignore[misc]
        def _get_file_path(self, epoch: Any, batch: Any, logs: Any) -> str:
            path: str = super()._get_file_path(epoch, batch, logs)
            return path + ".worker-1"

    class Logging(keras.callbacks.ModelCheckpoint):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            super().on_epoch_end(epoch, logs)

    one_worker = _tf.current_strategy()
    strategy = stock_check()
    _stock.watch(strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_begins(PerWorker(str(tmp_path / "p.keras")), strategy)
        fit_begins(keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")), one_worker)
    with pytest.warns(_stock.StockCallbackWarning):
        fit_begins(Logging(str(tmp_path / "l.keras")), strategy)
    _stock.unwatch_all()
    _stock.watch(one_worker)
    assert not _stock.is_watching()


SPE = """
import json, os
import numpy as np
import tfplace
strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
import tensorflow as tf

keras = tf.keras  # Keras 3, or tf_keras under TF_USE_LEGACY_KERAS=1
x = np.random.default_rng(0).normal(size=(80, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 5 batches: 4 + 1 at spe=4
runs = {}
for spe in (1, 4):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
        )
        model.compile("sgd", "mse", metrics=["mae"], steps_per_execution=spe)
    history = model.fit(data, epochs=2, verbose=0)
    evaluated = model.evaluate(data, verbose=0)
    predicted = model.predict(tf.data.Dataset.from_tensor_slices(x).batch(16), verbose=0)
    runs[spe] = {
        "loss": history.history["loss"],
        "evaluate": [float(v) for v in np.ravel(evaluated)],
        "predict": predicted.ravel().tolist(),
        "weights": [w.ravel().tolist() for w in model.get_weights()],
    }
print(json.dumps({"keras": keras.__name__, "runs": runs}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_steps_per_execution_trains_like_one_step_per_execution_on_two_workers(
    flavour: str,
) -> None:
    """keras#19246: steps_per_execution=4 under tfplace's multi-worker strategy failed with
    'You must feed a value for placeholder tensor ...while/cond/Placeholder' in fit,
    evaluate and predict. Now each gives what steps_per_execution=1 gives (rtol 1e-6), with
    an epoch that is not a multiple of 4 batches."""
    if flavour == "tf_keras":
        pytest.importorskip("tf_keras")
    env = {**CPU_ONLY_ENV, "TF_USE_LEGACY_KERAS": "1" if flavour == "tf_keras" else "0"}
    for worker in run_workers(SPE, extra_env=env, timeout=300):
        assert worker["keras"].startswith("tf_keras") == (flavour == "tf_keras")
        one, four = worker["runs"]["1"], worker["runs"]["4"]
        for key in ("loss", "evaluate", "predict"):
            np.testing.assert_allclose(four[key], one[key], rtol=1e-6, err_msg=key)
        for a, b in zip(four["weights"], one["weights"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
