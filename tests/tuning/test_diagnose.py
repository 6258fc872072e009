"""diagnose_training: real CPU runs told apart (input-bound vs compute-bound), under the default
strategy, a 2-virtual-CPU mirrored strategy and two workers; advice on synthetic machines; the
profiler trace; the Performance page's examples.

Every in-process model here runs on the CPU (mirrored over the plugin's two virtual CPUs, or
the default strategy pinned to ``/CPU:0``), so the verdicts hold on any machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import CPU_ONLY_ENV, QUIET_ENV, run_json, run_workers

import tfplace
from tfplace.testing import fake_inventory, use_inventory
from tfplace.tuning._clock import time_input, time_steps
from tfplace.tuning._diagnose import TrainingDiagnosis, advise, profile_viewer

pytestmark = pytest.mark.tf


ROOT = Path(__file__).resolve().parents[2]
SLEEP_S = 0.05  # per batch: a pipeline that is slow whatever the machine, and its load


def _slow(x: np.ndarray) -> np.ndarray:
    time.sleep(SLEEP_S)
    return x


def slow_map(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    out = tf.numpy_function(_slow, [x], tf.float32)
    out.set_shape(x.shape)
    return out, y


def data(slow: bool) -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(32)
    return ds.map(slow_map) if slow else ds  # already in memory


def small() -> keras.Model:
    """A step of well under a millisecond."""
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def big() -> keras.Model:
    """Two 1536-wide layers on 16 inputs: many times the work of reading a cached batch."""
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(1536, "relu"),
            keras.layers.Dense(1536, "relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture
def on_cpu0() -> Iterator[None]:
    with tf.device("/CPU:0"):  # the default strategy, pinned: the same on a GPU host
        yield


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.usefixtures("on_cpu0")
def test_input_bound_and_compute_bound_are_told_apart(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tfplace"):
        slow = tfplace.diagnose_training(small(), data(slow=True), steps=6)
        heavy = tfplace.diagnose_training(big(), data(slow=False), steps=6)
    assert slow.bound == "input" and slow.ratio > 2
    assert slow.input_ms >= SLEEP_S * 1000 * 0.9  # the sleep is in the input's figure
    assert slow.together_ms >= SLEEP_S * 1000 * 0.9 > slow.step_ms
    assert slow.input_wait > 0.5  # most of a real step waits for the input
    assert "prepare_dataset" in slow.advice[0]
    assert heavy.bound == "compute" and heavy.ratio > 2
    assert heavy.step_ms > heavy.input_ms
    assert any("jit_compile=True" in a for a in heavy.advice)  # XLA is off: suggested
    for report in (slow, heavy):
        assert report.strategy == "default strategy"
        assert (report.replicas, report.workers, report.steps, report.warmup) == (1, 1, 6, 2)
        assert (report.jit_compile, report.precision) == (False, "float32")
        assert report.ratio == pytest.approx(
            max(report.input_ms, report.step_ms) / min(report.input_ms, report.step_ms)
        )
        assert 0 < report.overlap <= 1 and 0 <= report.input_wait < 1
        assert report.profile_dir is None and report.profile_viewer is None
    assert "verdict                input-bound:" in slow.to_text()
    assert "verdict                compute-bound:" in heavy.to_text()
    assert slow.to_dict()["bound"] == "input" and heavy.to_dict()["advice"] == list(heavy.advice)
    assert caplog.text.count("diagnose_training: timing input alone") == 2  # long work: said
    assert "diagnose_training: input-bound" in caplog.text


@pytest.mark.slow
def test_under_a_mirrored_strategy_over_two_virtual_cpus(tmp_path: Path) -> None:
    strategy = tfplace.pick_strategy("mirrored", devices=["/CPU:0", "/CPU:1"])
    with strategy.scope():
        heavy, light = big(), small()
    report = tfplace.diagnose_training(heavy, data(slow=False), steps=4)
    assert (report.strategy, report.replicas, report.workers) == ("MirroredStrategy", 2, 1)
    assert report.bound == "compute"
    slow = tfplace.diagnose_training(light, data(slow=True), steps=4, profile_dir=tmp_path)
    assert slow.bound == "input" and slow.replicas == 2
    assert slow.profile_dir == str(tmp_path)
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))  # TensorBoard's layout


@pytest.mark.slow
@pytest.mark.usefixtures("on_cpu0")
def test_the_model_is_put_back_and_the_trace_says_how_to_open_it(tmp_path: Path) -> None:
    model = big()
    model.fit(data(slow=False), epochs=1, verbose=0)  # optimizer slots exist
    before = [w.copy() for w in model.get_weights()]
    slots = [v.numpy().copy() for v in model.optimizer.variables]
    report = tfplace.diagnose_training(
        model, data(slow=False), steps=2, warmup=1, profile_dir=tmp_path / "trace", profile_steps=2
    )
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(
        np.array_equal(a, v.numpy()) for a, v in zip(slots, model.optimizer.variables, strict=True)
    )
    traces = list((tmp_path / "trace").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert report.profile_dir == str(tmp_path / "trace")
    missing = [
        name
        for name, module in (
            ("tensorboard", "tensorboard"),
            ("tensorboard-plugin-profile", "tensorboard_plugin_profile"),
        )
        if importlib.util.find_spec(module) is None
    ]
    viewer = report.profile_viewer or ""
    assert viewer.endswith(f"tensorboard --logdir {tmp_path / 'trace'}  (then the Profile tab)")
    assert viewer.startswith(f"pip install {' '.join(missing)}") == bool(missing)
    assert viewer == profile_viewer(str(tmp_path / "trace"))
    assert f"trace: {tmp_path / 'trace'}" in report.to_text()


@pytest.mark.slow
@pytest.mark.usefixtures("on_cpu0")
def test_advice_follows_the_machine_it_is_told_about() -> None:
    # The measured run is real; the hardware the advice reads is a synthetic 2-GPU Ampere box.
    with use_inventory(fake_inventory(gpus=2, compute_capability=(8, 0))):
        report = tfplace.diagnose_training(big(), data(slow=False), steps=3)
    assert report.bound == "compute"
    text = "\n".join(report.advice)
    assert "configure_precision() would choose mixed_bfloat16" in text
    assert "2 GPUs are visible and the model runs 1 replica(s)" in text


def test_bad_arguments() -> None:
    ds = data(slow=False)
    for kwargs, name in (({"steps": 0}, "steps"), ({"warmup": 0}, "warmup")):
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            tfplace.diagnose_training(small(), ds, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="profile_dir"):
        tfplace.diagnose_training(small(), ds, profile_dir=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a Keras model"):
        tfplace.diagnose_training("model", ds)
    uncompiled = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled model"):
        tfplace.diagnose_training(uncompiled, ds)
    with pytest.raises(TypeError, match=r"tf\.data\.Dataset"):
        tfplace.diagnose_training(small(), [1, 2])
    with pytest.raises(ValueError, match="dataset is empty"):
        tfplace.diagnose_training(small(), ds.take(0), steps=1, warmup=1)


def test_the_report_prints_as_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    # Before, print(report) showed the dataclass repr; the docs show the verdict text.
    report = TrainingDiagnosis(
        input_ms=10.5,
        step_ms=0.7,
        together_ms=10.5,
        bound="input",
        ratio=15.0,
        input_wait=0.93,
        overlap=1.0,
        steps=20,
        warmup=2,
        strategy="default strategy",
        replicas=1,
        workers=1,
        jit_compile=False,
        precision="float32",
        advice=("prepare the input",),
    )
    assert str(report) == report.to_text()
    print(report)
    out = capsys.readouterr().out
    assert out.startswith("input pipeline alone") and "verdict                input-bound" in out
    assert repr(report).startswith("TrainingDiagnosis(")


def test_the_clock_leaves_out_the_set_up_of_fit() -> None:
    # the shared step clock: a 1 s start of the pipeline (every new iterator) is not counted
    def wait(i: np.ndarray) -> np.ndarray:
        if i == 0:
            time.sleep(1.0)
        return i

    index = tf.data.Dataset.range(64).map(lambda i: tf.numpy_function(wait, [i], tf.int64))
    slow_start = tf.data.Dataset.zip((index, data(slow=False).repeat())).map(lambda _, xy: xy)
    model = small()
    assert time_steps(keras, model, slow_start, 1, 5) < 0.1
    assert time_input(slow_start, 1, 5) < 0.1
    assert time_steps(keras, model, slow_start, 0, 5) > 0.15  # no warm-up: it is the first step


def test_the_clock_counts_executions_times_their_steps() -> None:
    """With steps_per_execution=3 Keras reports one batch end per 3 steps: the clock counts
    the steps, not the batch ends (it said 'saw 3 of 6 steps: the dataset ran out')."""
    model = small()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=3)
    seconds = time_steps(keras, model, data(slow=False).repeat(), 3, 6)
    assert 0 < seconds < 0.5
    with pytest.raises(RuntimeError, match="no execution end after the 4 warm-up steps"):
        time_steps(keras, model, data(slow=False).repeat(), 4, 2)  # not whole executions


def test_the_clock_rounds_to_whole_executions() -> None:
    from tfplace.tuning._clock import clock_steps

    assert clock_steps(3, 20, 1) == (3, 20)
    assert clock_steps(0, 5, 4) == (0, 8)
    assert clock_steps(5, 1, 4) == (8, 4)


def test_diagnose_training_runs_a_model_with_several_steps_per_execution() -> None:
    model = small()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    report = tfplace.diagnose_training(model, data(slow=False), steps=8, warmup=4)
    assert report.step_ms > 0 and report.together_ms > 0


# ----------------------------------------------------------------------------- advice (pure)


def advice_for(**kwargs: object) -> str:
    args: dict[str, object] = {
        "bound": "compute",
        "ratio": 4.0,
        "overlap": 1.0,
        "step_ms": 50.0,
        "jit_compile": False,
        "precision": "float32",
        "replicas": 1,
        "workers": 1,
        "inv": fake_inventory(),
    }
    args.update(kwargs)
    return "\n".join(advise(**args))  # type: ignore[arg-type]


def test_advice_input_bound() -> None:
    text = advice_for(bound="input", overlap=0.5)
    assert "prepare_dataset" in text and "prefetch" in text
    assert "jit_compile" not in text  # compute advice is beside the point
    assert "prefetch(tf.data.AUTOTUNE)" not in advice_for(bound="input", overlap=0.99)
    assert "share the same cores" in advice_for(bound="input", replicas=2)
    assert "share the same cores" not in advice_for(bound="input", replicas=2, inv=gpu(2))


def gpu(n: int, cc: tuple[int, int] = (8, 0)) -> object:
    return fake_inventory(gpus=n, compute_capability=cc)


@pytest.mark.parametrize(
    ("kwargs", "present", "absent"),
    [
        ({}, ["jit_compile=True", "CPU-only machine"], ["Mixed precision", "per-step overhead"]),
        ({"jit_compile": True}, [], ["jit_compile=True"]),
        ({"step_ms": 2.0}, ["A step takes 2.0 ms", "find_batch_size"], []),
        ({"inv": gpu(1)}, ["would choose mixed_bfloat16"], ["Another placement"]),
        ({"inv": gpu(1, (7, 5))}, ["would choose mixed_float16"], []),
        ({"inv": gpu(1, (6, 1))}, [], ["Mixed precision"]),
        ({"inv": gpu(1), "precision": "mixed_bfloat16"}, [], ["Mixed precision"]),
        ({"inv": gpu(4), "replicas": 1}, ["4 GPUs are visible and the model runs 1"], []),
        ({"inv": gpu(4), "replicas": 4}, [], ["Another placement"]),
        ({"inv": gpu(4), "replicas": 2, "workers": 2}, [], ["Another placement"]),
        ({"ratio": 1.1}, ["nearly balanced"], []),
    ],
)
def test_advice_compute_bound(
    kwargs: dict[str, object], present: list[str], absent: list[str]
) -> None:
    text = advice_for(**kwargs)
    for item in present:
        assert item in text
    for item in absent:
        assert item not in text


# ----------------------------------------------------------------------------- other Kerases


@pytest.mark.slow
def test_under_tf_keras() -> None:
    pytest.importorskip("tf_keras")
    out = run_json(
        """
        import json
        import numpy as np
        import tensorflow as tf
        import tf_keras
        import tfplace

        x = np.ones((256, 16), "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(32)
        model = tf_keras.Sequential([tf_keras.Input((16,)),
                                     tf_keras.layers.Dense(1536, "relu"),
                                     tf_keras.layers.Dense(1536, "relu"),
                                     tf_keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        before = [w.tolist() for w in model.get_weights()[-1:]]
        r = tfplace.diagnose_training(model, ds, steps=4)
        print(json.dumps({"bound": r.bound, "precision": r.precision,
                          "same": before == [w.tolist() for w in model.get_weights()[-1:]]}))
        """,
        env={"TF_USE_LEGACY_KERAS": "1"},
        cpu_only=True,
    )
    assert out == {"bound": "compute", "precision": "float32", "same": True}


@pytest.mark.slow
def test_two_workers(tmp_path: Path) -> None:
    code = f"""
        import json
        import numpy as np
        import tensorflow as tf
        import tfplace

        strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
        keras = tf.keras
        x = np.ones((256, 16), "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(32)
        with strategy.scope():
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1536, "relu"),
                                      keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse")
        r = tfplace.diagnose_training(model, ds, steps=3, profile_dir={str(tmp_path)!r},
                                      profile_steps=2)
        print(json.dumps([r.workers, r.replicas, r.profile_dir, r.input_ms > 0]))
        """
    results = run_workers(code, extra_env=CPU_ONLY_ENV)
    assert sorted(r[2] for r in results) == [str(tmp_path / "worker-0"), str(tmp_path / "worker-1")]
    assert [r[:2] + r[3:] for r in results] == [[2, 2, True], [2, 2, True]]
    for i in range(2):
        assert list((tmp_path / f"worker-{i}").glob("plugins/profile/*/*.xplane.pb"))


# ----------------------------------------------------------------------------- the docs


PERFORMANCE_EXAMPLES = sorted((ROOT / "docs" / "examples").glob("performance_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", PERFORMANCE_EXAMPLES, ids=[p.stem for p in PERFORMANCE_EXAMPLES])
def test_performance_examples_run_and_print_their_reports(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **QUIET_ENV, **CPU_ONLY_ENV},
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert f"docs/examples/{script.name}" in page  # the page shows it
    expected = {
        "performance_xla": ['jit_compile="auto" on', "steps/s", "best:"],
        "performance_diagnose": ["verdict", "input-bound", "compute-bound", "trace:"],
    }[script.stem]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout)


def test_the_performance_page_has_examples() -> None:
    assert [p.stem for p in PERFORMANCE_EXAMPLES] == ["performance_diagnose", "performance_xla"]
