"""Precision, memory, find_batch_size and autotune.

In-process tests run on whatever this machine has (the plugin's two virtual CPUs, and any
GPUs): their expectations come from TensorFlow's logical devices or tfplace's inventory.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_json

import tfplace
from tfplace._inventory import GPUInfo, Inventory
from tfplace.precision import choose_precision
from tfplace.testing import fake_inventory
from tfplace.tuning import Candidate, available_candidates


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
    """track_memory(device) sees a 64 MB tensor placed on ``device`` and freed in the block."""
    info = tfplace.memory_info(device)
    assert info.device == device
    assert 0.0 <= info.current_mb <= info.peak_mb
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


def test_find_batch_size_backs_off_on_real_oom(caplog: pytest.LogCaptureFixture) -> None:
    # One real out-of-memory error (TensorFlow's CPU allocator retries ~10 s before it).
    train = tfplace.find_batch_size(start=128)(allocate)
    with caplog.at_level(logging.WARNING, logger="tfplace"):
        assert train() == 64
    assert train.batch_size == 64  # type: ignore[attr-defined]
    assert "batch_size=128 ran out of memory; retrying with 64" in caplog.text


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


def test_available_candidates_on_a_cpu_only_machine() -> None:
    out = run_json(
        """
        import json, tfplace
        from tfplace.tuning import available_candidates
        tfplace.configure_cpus(threads=None, virtual_devices=3)
        print(json.dumps([[c.name, c.kind, c.devices] for c in available_candidates()]))
        """,
        cpu_only=True,
    )
    assert out == [
        ["CPU:0", "one_device", ["/CPU:0"]],
        ["mirrored 3xCPU", "mirrored", ["/CPU:0", "/CPU:1", "/CPU:2"]],
    ]


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
    table = report.to_text().splitlines()  # one row per candidate, fastest first
    assert [row.split("  ")[0].strip() for row in table] == [m.name for m in report.results]
    assert table[0].endswith("1.00x") and all("steps/s" in row for row in table)
    assert report.strategy.num_replicas_in_sync == report.best.replicas
    with report.strategy.scope():
        model = build_model()
    model.fit(dataset(), epochs=1, verbose=0)  # the strategy is ready to use
    assert "steps/s" in report.to_text()


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
