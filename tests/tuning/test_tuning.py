"""Precision, memory, find_batch_size and autotune.

In-process tests run on whatever this machine has (the plugin's two virtual CPUs, and any
GPUs): their expectations come from TensorFlow's logical devices or tfplace's inventory.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_json

import tfplace
from tfplace import _tf
from tfplace._decide.precision import choose_precision
from tfplace._facts.inventory import GPUInfo, Inventory
from tfplace.testing import fake_inventory
from tfplace.tuning._autotune import (
    Candidate,
    auto_jit_compile,
    available_candidates,
    expand_candidates,
)

pytestmark = pytest.mark.tf


def logical_count(kind: str) -> int:
    return len(tf.config.list_logical_devices(kind))


@pytest.fixture
def restore_policy() -> Iterator[None]:
    before = keras.config.dtype_policy().name
    yield
    keras.config.set_dtype_policy(before)


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("inv", "policy", "because"),
    [
        (fake_inventory(), "float32", "no GPU"),
        (fake_inventory(gpus=2, compute_capability=(6, 1)), "float32", "6.1"),
        (fake_inventory(gpus=2, compute_capability=(7, 5)), "mixed_float16", "7.5"),
        (fake_inventory(gpus=2, compute_capability=(8, 0)), "mixed_bfloat16", "lowest 8.0"),
        (
            fake_inventory(gpus=(GPUInfo(0, "a", (8, 6)), GPUInfo(1, "b", (7, 0)))),
            "mixed_float16",
            "lowest compute capability 7.0",  # the slowest GPU decides
        ),
        (fake_inventory(gpus=(GPUInfo(0, "a", None),)), "float32", "unknown"),
        (fake_inventory(tpu=True), "mixed_bfloat16", "TPU"),
    ],
)
def test_choose_precision(inv: Inventory, policy: str, because: str) -> None:
    chosen, why = choose_precision(inv)
    assert chosen == policy
    assert because in why


@pytest.mark.usefixtures("restore_policy")
def test_configure_precision_auto_follows_the_detected_hardware(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # float32 on a CPU-only machine, mixed_bfloat16 on an H200: what the inventory implies.
    expected, why = choose_precision(tfplace.inventory())
    with caplog.at_level(logging.INFO, logger="tfplace"):
        assert tfplace.configure_precision() == expected
    assert keras.config.dtype_policy().name == expected
    assert f"configure_precision: {expected}: {why}" in caplog.text


@pytest.mark.usefixtures("restore_policy")
def test_configure_precision_follows_the_hardware_it_is_told_about() -> None:
    assert tfplace.configure_precision(inventory=fake_inventory(gpus=1, compute_capability=(7, 0)))
    assert keras.config.dtype_policy().name == "mixed_float16"


@pytest.mark.usefixtures("restore_policy")
@pytest.mark.parametrize(
    ("inv", "policy", "match"),
    [
        (fake_inventory(), "mixed_float16", "Tensor Cores"),
        (fake_inventory(gpus=1, compute_capability=(6, 1)), "mixed_float16", "Tensor Cores"),
        (fake_inventory(), "mixed_bfloat16", "bfloat16"),
        (fake_inventory(gpus=2, compute_capability=(7, 5)), "mixed_bfloat16", "bfloat16"),
    ],
)
def test_slow_explicit_policy_warns_and_says_why(inv: Inventory, policy: str, match: str) -> None:
    with pytest.warns(tfplace.TfplaceWarning, match=match):
        assert tfplace.configure_precision(policy, inventory=inv) == policy
    assert keras.config.dtype_policy().name == policy


@pytest.mark.usefixtures("restore_policy")
@pytest.mark.parametrize(
    ("inv", "policy"),
    [
        (fake_inventory(gpus=1, compute_capability=(7, 0)), "mixed_float16"),
        (fake_inventory(gpus=1, compute_capability=(8, 0)), "mixed_bfloat16"),
        (fake_inventory(tpu=True), "mixed_bfloat16"),
        (fake_inventory(), "float32"),
    ],
)
def test_fast_explicit_policy_does_not_warn(inv: Inventory, policy: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tfplace.configure_precision(policy, inventory=inv) == policy
    assert keras.config.dtype_policy().name == policy


def test_bad_policy() -> None:
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        tfplace.configure_precision("half")


@pytest.mark.slow
def test_configure_precision_under_tf_keras() -> None:
    pytest.importorskip("tf_keras")
    out = run_json(
        """
        import json, tfplace
        from tfplace.testing import fake_inventory
        p = tfplace.configure_precision(inventory=fake_inventory(gpus=1, compute_capability=(7, 5)))
        import tensorflow as tf
        print(json.dumps([p, tf.keras.mixed_precision.global_policy().name]))
        """,
        env={"TF_USE_LEGACY_KERAS": "1"},
    )
    assert out == ["mixed_float16", "mixed_float16"]


# ----------------------------------------------------------------------------- memory


def check_track_memory(device: str) -> None:
    """track_memory(device) sees a 64 MB tensor placed on ``device`` and freed in the block.

    Where the device's allocator keeps no statistics (TensorFlow 2.21's default CPU allocator)
    both read zeros and the block still runs.
    """
    info = tfplace.memory_info(device)
    assert info.device == device
    assert 0.0 <= info.current_mb <= info.peak_mb
    if _tf.memory_stats(device) is None:
        with tfplace.track_memory(device) as mem:
            with tf.device(device):
                block = tf.ones((1024, 1024, 16))
            del block
        assert (info.peak_mb, mem.peak_mb, mem.current_mb) == (0.0, 0.0, 0.0)
        return
    with tfplace.track_memory(f"/device:{device}") as mem:
        assert mem.peak_mb == 0.0  # filled in when the block ends
        with tf.device(device):
            block = tf.ones((1024, 1024, 16))  # 64 MB of float32
        assert block.device.endswith(device)
        del block
    assert mem.device == device
    assert mem.peak_mb >= 64.0
    assert 0.0 <= mem.current_mb < mem.peak_mb


def test_memory_info_and_track_memory_on_cpu() -> None:
    check_track_memory("CPU:0")


@pytest.mark.slow
def test_track_memory_on_a_cpu_allocator_with_statistics() -> None:
    """With TF_CPU_ALLOCATOR_USE_BFC=true the CPU allocator keeps statistics: a 64 MB peak."""
    peak, current = run_json(
        "import json, tensorflow as tf, tfplace\n"
        "with tfplace.track_memory('CPU:0') as mem:\n"
        "    block = tf.ones((1024, 1024, 16)); del block\n"
        "print(json.dumps([mem.peak_mb, mem.current_mb]))",
        env={"TF_CPU_ALLOCATOR_USE_BFC": "true"},
    )
    assert peak >= 64.0 and 0.0 <= current < peak


def test_memory_info_and_track_memory_on_each_gpu() -> None:
    gpus = logical_count("GPU")
    if not gpus:
        pytest.skip("no GPU is visible")
    for i in range(gpus):
        check_track_memory(f"GPU:{i}")


def test_memory_info_bad_device() -> None:
    absent = f"GPU:{logical_count('GPU')}"  # one past the last GPU (GPU:0 without any)
    with pytest.raises(tfplace.DeviceNotFoundError, match="no such device") as info:
        tfplace.memory_info(absent)
    assert absent in str(info.value) and "CPU:0" in str(info.value)  # says what exists
    with pytest.raises(tfplace.DeviceNotFoundError, match="no such device"):
        tfplace.track_memory(f"CPU:{logical_count('CPU')}").__enter__()
    with pytest.raises(TypeError):
        tfplace.memory_info(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- batch size


def allocate(batch_size: int) -> int:
    if batch_size > 64:
        tf.zeros((batch_size, 2**40))  # a real ResourceExhaustedError on any machine
    return batch_size


@pytest.mark.slow
def test_find_batch_size_backs_off_on_real_oom(caplog: pytest.LogCaptureFixture) -> None:
    # One real out-of-memory error (TensorFlow's CPU allocator retries ~10 s before it).
    train = tfplace.find_batch_size(start=128)(allocate)
    with caplog.at_level(logging.WARNING, logger="tfplace"):
        assert train() == 64
    assert train.batch_size == 64  # type: ignore[attr-defined]
    assert "batch_size=128 ran out of memory; retrying with 64" in caplog.text


@pytest.mark.slow
def test_find_batch_size_halves_until_it_fits() -> None:
    tried: list[int] = []

    @tfplace.find_batch_size(start=1000, factor=0.5, minimum=3)
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 100:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return batch_size

    assert train() == 62
    assert tried == [1000, 500, 250, 125, 62]


def test_find_batch_size_other_errors_propagate_at_once() -> None:
    calls: list[int] = []

    @tfplace.find_batch_size(start=100)
    def broken(batch_size: int) -> None:
        calls.append(batch_size)
        raise KeyError("not memory")

    with pytest.raises(KeyError):
        broken()
    assert calls == [100]


@pytest.mark.slow
def test_find_batch_size_gives_up_clearly() -> None:
    @tfplace.find_batch_size(start=8, minimum=2)
    def never(batch_size: int) -> None:
        raise tf.errors.ResourceExhaustedError(None, None, f"OOM at {batch_size}")

    with pytest.raises(tfplace.BatchSizeError, match="even at batch_size=2") as info:
        never()
    assert isinstance(info.value.__cause__, tf.errors.ResourceExhaustedError)


def test_find_batch_size_bad_arguments() -> None:
    for kwargs, name in (
        ({"start": 0}, "start"),
        ({"start": 4, "factor": 1.0}, "factor"),
        ({"start": 4, "minimum": 5}, "minimum"),
    ):
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            tfplace.find_batch_size(**kwargs)
    with pytest.raises(TypeError, match="batch_size"):
        tfplace.find_batch_size(start=4)(lambda x: x)
    wrapped = tfplace.find_batch_size(start=4)(allocate)
    with pytest.raises(TypeError, match="passes batch_size itself"):
        wrapped(batch_size=3)


# ----------------------------------------------------------------------------- autotune


def build_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def dataset() -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(32)


def test_available_candidates_on_this_machine() -> None:
    # Each GPU, mirrored over the GPUs when several, the CPU, and mirrored over the virtual
    # CPUs only when there is no GPU: on a CPU-only machine ["CPU:0", "mirrored 2xCPU"].
    gpus, cpus = logical_count("GPU"), logical_count("CPU")
    expected = [f"GPU:{i}" for i in range(gpus)]
    expected += [f"mirrored {gpus}xGPU"] if gpus > 1 else []
    expected += ["CPU:0"]
    expected += [f"mirrored {cpus}xCPU"] if not gpus and cpus > 1 else []
    assert [c.name for c in available_candidates()] == expected


@pytest.mark.slow
def test_available_candidates_on_a_cpu_only_machine() -> None:
    out = run_json(
        """
        import json, tfplace
        from tfplace.tuning._autotune import available_candidates
        tfplace.configure_cpus(threads=None, virtual_devices=3)
        print(json.dumps([[c.name, c.kind, c.devices] for c in available_candidates()]))
        """,
        cpu_only=True,
    )
    assert out == [
        ["CPU:0", "one_device", ["/CPU:0"]],
        ["mirrored 3xCPU", "mirrored", ["/CPU:0", "/CPU:1", "/CPU:2"]],
    ]


@pytest.mark.slow
def test_autotune_measures_every_candidate_and_returns_the_best() -> None:
    candidates = available_candidates()
    report = tfplace.autotune(build_model, dataset(), steps=5, warmup=1)
    replicas = {m.name: m.replicas for m in report.results}
    assert replicas == {
        c.name: len(c.devices) if c.devices else logical_count("GPU") for c in candidates
    }
    rates = [m.steps_per_second for m in report.results]
    assert rates == sorted(rates, reverse=True)
    assert all(r > 0 for r in rates)
    assert report.best.steps_per_second == max(rates)
    table = report.to_text().split("\n\n")[0].splitlines()  # one row each, fastest first
    assert [row.split("  ")[0].strip() for row in table] == [m.name for m in report.results]
    assert table[0].endswith("1.00x") and all("steps/s" in row for row in table)
    assert report.strategy.num_replicas_in_sync == report.best.replicas
    with report.strategy.scope():
        model = build_model()
    model.fit(dataset(), epochs=1, verbose=0)  # the strategy is ready to use
    assert "steps/s" in report.to_text()


@pytest.mark.slow
def test_autotune_explicit_candidates_and_bad_arguments() -> None:
    only = [Candidate("cpu", "one_device", ("/CPU:1",))]
    report = tfplace.autotune(build_model, dataset(), candidates=only, steps=2, warmup=0)
    assert [m.name for m in report.results] == ["cpu"]
    with pytest.raises(TypeError, match="build_model must be callable"):
        tfplace.autotune(3, dataset())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        tfplace.autotune(build_model, dataset(), steps=0)
    with pytest.raises(TypeError, match="dataset"):
        tfplace.autotune(build_model, [1, 2])
    with pytest.raises(ValueError, match="no candidates"):
        tfplace.autotune(build_model, dataset(), candidates=[])


class NoXLA(keras.layers.Layer):  # type: ignore[misc]
    """Identity with a string op inside: XLA has no kernel for AsString on any device."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        chars = tf.strings.length(tf.strings.as_string(x))
        return x + 0.0 * tf.cast(chars, x.dtype)


def build_no_xla_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), NoXLA(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


CPU0 = Candidate("CPU:0", "one_device", ("/CPU:0",))


@pytest.mark.slow
def test_autotune_over_xla_reports_a_failing_compilation_and_ranks_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The string op trains in graph mode and fails only when XLA compiles the step.
    with caplog.at_level(logging.WARNING, logger="tfplace"):
        report = tfplace.autotune(
            build_no_xla_model, dataset(), candidates=[CPU0], jit_compile=(False, True), steps=2
        )
    assert [(m.name, m.jit_compile) for m in report.results] == [("CPU:0 xla=off", False)]
    assert [(m.name, m.steps_per_second) for m in report.failed] == [("CPU:0 xla=on", 0.0)]
    error = report.failed[0].error or ""
    assert error.startswith("InvalidArgumentError") and "AsString" in error
    assert report.best.compile_kwargs == {"jit_compile": False}
    assert "CPU:0 xla=on failed and is skipped" in caplog.text
    text = report.to_text()
    assert "CPU:0 xla=on" in text and "failed: InvalidArgumentError" in text
    assert report.to_dict()["failed"][0]["error"] == error
    assert report.xla_speedups() == {}  # nothing to compare: XLA never ran


@pytest.mark.slow
def test_autotune_when_every_candidate_fails_raises_the_first_error() -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="AsString"):
        tfplace.autotune(
            build_no_xla_model, dataset(), candidates=[CPU0], jit_compile=(True,), steps=1
        )


class Sleep(keras.layers.Layer):  # type: ignore[misc]
    """Identity that sleeps ``seconds`` inside every training step."""

    def __init__(self, seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def call(self, x: tf.Tensor) -> tf.Tensor:
        def sleep(a: np.ndarray) -> np.ndarray:
            time.sleep(self.seconds)
            return a

        return tf.ensure_shape(tf.numpy_function(sleep, [x], x.dtype), x.shape)


def test_a_slowed_candidate_ranks_last_and_a_strategy_that_cannot_be_built_fails_alone() -> None:
    # The first model built sleeps 100 ms per step; the others are the same model without
    # the sleep. Before, a candidate whose strategy could not be built (a device that does
    # not exist) aborted the whole run with DeviceNotFoundError.
    built = itertools.count()

    def build() -> keras.Model:
        first = next(built) == 0
        layers = [Sleep(0.1)] if first else []
        model = keras.Sequential([keras.Input((8,)), *layers, keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    candidates = [
        Candidate("slowed", "one_device", ("/CPU:0",)),
        Candidate("missing", "one_device", ("/CPU:9",)),
        Candidate("plain", "one_device", ("/CPU:0",)),
    ]
    report = tfplace.autotune(build, dataset(), candidates=candidates, steps=5, warmup=1)
    assert [m.name for m in report.results] == ["plain", "slowed"]
    slowed = report.results[-1]
    assert slowed.steps_per_second < 1 / 0.1  # the sleep is inside the timed steps
    assert report.best.steps_per_second > 2 * slowed.steps_per_second
    ((missing),) = report.failed
    assert missing.name == "missing" and missing.replicas == 0
    assert (missing.error or "").startswith("DeviceNotFoundError") and "/CPU:9" in (
        missing.error or ""
    )
    assert "missing" in str(report) and "failed: DeviceNotFoundError" in str(report)


def slow_first_batch(seconds: float) -> tf.data.Dataset:
    """``dataset()`` whose first batch takes ``seconds``, every time an iterator starts."""

    def wait(i: np.ndarray) -> np.ndarray:
        if i == 0:
            time.sleep(seconds)
        return i

    index = tf.data.Dataset.range(8).map(lambda i: tf.numpy_function(wait, [i], tf.int64))
    return tf.data.Dataset.zip((index, dataset())).map(lambda _, xy: xy)


def test_autotune_times_steps_not_the_set_up_of_fit() -> None:
    # Before, the timed fit started a new iterator, so a pipeline's start (here 1 s, as a
    # shuffle buffer filling or a remote file opening) was counted in 5 steps: under 5
    # steps/s. The shared clock starts after the warm-up step.
    report = tfplace.autotune(
        build_model, slow_first_batch(1.0), candidates=[CPU0], steps=5, warmup=1
    )
    # 5 steps of a tiny model on a loaded machine: well above 6 steps/s; with the 1 s start
    # in the timed steps, under 5
    assert report.best.steps_per_second > 6


def test_the_report_prints_as_its_table() -> None:
    report = tfplace.autotune(build_model, dataset(), candidates=[CPU0], steps=2, warmup=1)
    assert str(report) == report.to_text() and str(report).startswith("CPU:0")
    assert "steps/s" in str(report) and "AutotuneReport(" in repr(report)


@pytest.mark.slow
def test_autotune_over_xla_and_precision_measures_each_setting() -> None:
    inv = tfplace.inventory()
    policy = choose_precision(inv)[0]  # float32 here on a CPU; mixed_* on a recent GPU
    report = tfplace.autotune(
        build_model,
        dataset(),
        candidates=[CPU0],
        jit_compile=(False, True),
        precision=("float32", "auto"),
        steps=3,
        warmup=1,
    )
    assert report.failed == ()
    settings = {(m.jit_compile, m.precision) for m in report.results}
    assert settings == {(j, p) for j in (False, True) for p in {"float32", policy}}
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    best = report.best
    assert best.compile_kwargs == {"jit_compile": best.jit_compile}
    speedups = report.xla_speedups()
    assert set(speedups) == {"one_device /CPU:0"} and speedups["one_device /CPU:0"] > 0
    # What Keras's "auto" would do: off on any machine (only CPUs here, or, with a GPU,
    # because the model is built under a strategy); the reason follows the machine.
    reason = auto_jit_compile("one_device", inv)[1]
    auto = {(m.auto_jit_compile, m.auto_jit_reason) for m in report.results}
    assert auto == {(False, reason)}
    assert f"XLA off ({reason})" in report.to_text()
    assert f"measured XLA on/off: {speedups['one_device /CPU:0']:.2f}x" in report.to_text()


@pytest.mark.parametrize(
    ("kind", "inv", "on", "because"),
    [
        ("default", fake_inventory(), False, "only CPUs"),
        ("default", fake_inventory(gpus=1), True, "accelerator"),
        ("default", fake_inventory(tpu=True), True, "accelerator"),
        ("one_device", fake_inventory(gpus=1), False, "strategy (one_device)"),
        ("mirrored", fake_inventory(gpus=2), False, "strategy (mirrored)"),
        ("multi_worker", fake_inventory(gpus=1), False, "strategy (multi_worker)"),
        ("default", fake_inventory(gpus=1, keras="tf_keras"), False, "tf_keras"),
        ("default", fake_inventory(gpus=1, platform="darwin"), True, "accelerator"),
    ],
)
def test_auto_jit_compile_mirrors_keras(kind: str, inv: Inventory, on: bool, because: str) -> None:
    assert auto_jit_compile(kind, inv)[0] is on
    assert because in auto_jit_compile(kind, inv)[1]


def test_auto_jit_compile_layers_and_apple_silicon() -> None:
    gpu = fake_inventory(gpus=1)
    assert auto_jit_compile("default", gpu, model_supports_jit=False) == (
        False,
        "a layer of this model does not support XLA (supports_jit=False)",
    )
    assert auto_jit_compile("default", gpu, keras="tf_keras")[0] is False
    from dataclasses import replace

    apple = replace(gpu, platform="darwin", machine="arm64")
    assert auto_jit_compile("default", apple) == (
        False,
        "Keras turns XLA off on Apple-silicon GPUs",
    )


@pytest.mark.parametrize("kind", ["default", "one_device", "mirrored"])
def test_auto_jit_compile_agrees_with_keras_on_this_machine(kind: str) -> None:
    # Keras itself resolves jit_compile="auto" at compile time; the pure rule must agree,
    # whatever this machine has (off everywhere on a CPU-only box; on for "default" on a GPU).
    strategy = tfplace.pick_strategy(kind)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", jit_compile="auto")
    assert model.jit_compile is auto_jit_compile(kind, tfplace.inventory())[0]


def test_expand_candidates() -> None:
    cpu = fake_inventory()
    same = expand_candidates([CPU0], precision=("float32", "auto"), inventory=cpu)
    assert [(c.name, c.precision) for c in same] == [("CPU:0", "float32")]  # auto is float32
    both = expand_candidates([CPU0], jit_compile=(False, True))
    assert [(c.name, c.jit_compile, c.precision) for c in both] == [
        ("CPU:0 xla=off", False, None),
        ("CPU:0 xla=on", True, None),
    ]
    gpu = fake_inventory(gpus=1, compute_capability=(7, 5))
    mixed = expand_candidates([CPU0], precision=("auto",), inventory=gpu)
    assert [c.precision for c in mixed] == ["mixed_float16"]
    assert expand_candidates([CPU0]) == [CPU0]
    with pytest.raises(TypeError, match="jit_compile must be"):
        expand_candidates([CPU0], jit_compile=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"precision must be .*\('float32',\)"):
        expand_candidates([CPU0], precision="float32")
    with pytest.raises(ValueError, match="unknown precision policy 'half'"):
        expand_candidates([CPU0], precision=("half",))


@pytest.mark.slow
def test_autotune_over_xla_under_tf_keras() -> None:
    pytest.importorskip("tf_keras")
    out = run_json(
        """
        import json
        import numpy as np
        import tensorflow as tf
        import tf_keras
        import tfplace
        from tfplace.tuning._autotune import Candidate

        class NoXLA(tf_keras.layers.Layer):
            def call(self, x):
                return x + 0.0 * tf.cast(tf.strings.length(tf.strings.as_string(x)), x.dtype)

        def build(no_xla):
            layers = [NoXLA()] if no_xla else []
            m = tf_keras.Sequential([tf_keras.Input((8,)), *layers, tf_keras.layers.Dense(1)])
            m.compile(optimizer="sgd", loss="mse")
            return m

        x = np.ones((64, 8), "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(16)
        cpu = [Candidate("CPU:0", "one_device", ("/CPU:0",))]
        out = {}
        for no_xla in (False, True):
            r = tfplace.autotune(lambda: build(no_xla), ds, candidates=cpu,
                                 jit_compile=(False, True), steps=2, warmup=1)
            out[str(no_xla)] = {
                "ok": [[m.name, m.jit_compile, m.auto_jit_compile] for m in r.results],
                "failed": [[m.name, "AsString" in m.error] for m in r.failed],
                "reason": r.results[0].auto_jit_reason,
            }
        print(json.dumps(out))
        """,
        env={"TF_USE_LEGACY_KERAS": "1"},
        cpu_only=True,
    )
    assert sorted(out["False"]["ok"]) == [
        ["CPU:0 xla=off", False, False],
        ["CPU:0 xla=on", True, False],
    ]
    assert out["False"]["failed"] == []
    assert out["True"]["ok"] == [["CPU:0 xla=off", False, False]]
    assert out["True"]["failed"] == [["CPU:0 xla=on", True]]
    assert "tf_keras" in out["True"]["reason"]


def test_scale_loss_custom_loop() -> None:
    # Keras 3 replaced get_scaled_loss (K#19479) with scale_loss + apply; docs/precision.md.
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    assert not hasattr(opt, "get_scaled_loss")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    before = [w.numpy().copy() for w in model.trainable_variables]
    x, y = tf.ones((4, 2)), tf.zeros((4, 1))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2) + 1.0
        scaled = opt.scale_loss(loss)
    assert float(scaled) > float(loss)  # dynamic loss scaling multiplies the loss
    grads = tape.gradient(scaled, model.trainable_variables)
    opt.apply(grads, model.trainable_variables)
    after = [w.numpy() for w in model.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(after, before, strict=True))


# ------------------------------------------------------------------ steps_per_execution


def test_expand_candidates_crosses_steps_per_execution() -> None:
    cpu = [Candidate("CPU:0", "one_device", ("/CPU:0",))]
    cands = expand_candidates(cpu, jit_compile=(False,), steps_per_execution=(1, 4, 16))
    assert [c.name for c in cands] == ["CPU:0 spe=1", "CPU:0 spe=4", "CPU:0 spe=16"]
    assert [c.steps_per_execution for c in cands] == [1, 4, 16]
    assert expand_candidates(cpu)[0].steps_per_execution is None  # as build_model compiled
    for bad in (4, (0, 4), (1.5,), (True,)):
        with pytest.raises(TypeError, match="steps_per_execution must be a sequence of ints"):
            expand_candidates(cpu, steps_per_execution=bad)  # type: ignore[arg-type]


def test_autotune_tries_steps_per_execution_and_reports_the_gain() -> None:
    cpu = [Candidate("CPU:0", "one_device", ("/CPU:0",))]
    report = tfplace.autotune(
        build_model, dataset(), candidates=cpu, steps=8, warmup=2, steps_per_execution=(1, 4)
    )
    assert report.failed == ()
    by_spe = {m.steps_per_execution: m for m in report.results}
    assert set(by_spe) == {1, 4} and all(m.steps_per_second > 0 for m in by_spe.values())
    assert by_spe[4].compile_kwargs["steps_per_execution"] == 4
    assert "steps_per_execution" not in by_spe[1].compile_kwargs
    ((place, (best, gain)),) = report.steps_per_execution_gains().items()
    assert place == "one_device /CPU:0" and best in (1, 4) and gain >= 1.0
    assert f"steps_per_execution on one_device /CPU:0: best {best}" in report.to_text()
    assert report.to_dict()["steps_per_execution_gains"][place]["best"] == best


def test_autotune_times_a_model_compiled_with_several_steps_per_execution() -> None:
    """The step clock saw one batch end per execution and said 'the dataset ran out': every
    candidate of a model compiled with steps_per_execution=3 failed."""

    def build() -> keras.Model:
        model = build_model()
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=3)
        return model

    cpu = [Candidate("CPU:0", "one_device", ("/CPU:0",))]
    report = tfplace.autotune(build, dataset(), candidates=cpu, steps=6, warmup=3)
    assert report.failed == () and report.best.steps_per_execution == 3
    assert report.best.steps_per_second > 0
