"""on_cpu / on_gpu / on_device, for real on this process's two virtual CPUs."""

from __future__ import annotations

import threading
import warnings

import pytest
import tensorflow as tf

import tfplace


def device_of(t: tf.Tensor) -> str:
    return str(t.device).rsplit("/", 1)[-1]  # "device:CPU:1"


def test_on_cpu_places_ops() -> None:
    with tfplace.on_cpu(1) as name:
        x = tf.ones((2, 2)) * 2.0
    assert name == "/CPU:1"
    assert device_of(x) == "device:CPU:1"


def test_scopes_nest_and_restore() -> None:
    with tfplace.on_cpu(1):
        with tfplace.on_cpu(0):
            inner = tf.ones(()) + 1.0
        outer = tf.ones(()) + 1.0
    assert device_of(inner) == "device:CPU:0"
    assert device_of(outer) == "device:CPU:1"


def test_exception_restores_the_previous_device() -> None:
    with tfplace.on_cpu(1):
        with pytest.raises(KeyError), tfplace.on_cpu(0):
            raise KeyError("boom")
        after = tf.ones(()) + 1.0
    assert device_of(after) == "device:CPU:1"


def test_decorator_applies_at_call_time() -> None:
    @tfplace.on_cpu(1)
    def make() -> tf.Tensor:
        return tf.ones(()) * 3.0

    assert make.__name__ == "make"
    assert device_of(make()) == "device:CPU:1"
    with tfplace.on_cpu(0):
        assert device_of(make()) == "device:CPU:1"


def test_works_inside_tf_function() -> None:
    @tf.function  # type: ignore[untyped-decorator]
    def f(x: tf.Tensor) -> tf.Tensor:
        with tfplace.on_cpu(1):
            y = x * 2.0
        return y

    concrete = f.get_concrete_function(tf.TensorSpec((), tf.float32))
    mul = [op for op in concrete.graph.get_operations() if op.type == "Mul"]
    assert mul and mul[0].device.endswith("CPU:1")
    assert float(f(tf.constant(2.0))) == 4.0


def test_on_device_accepts_any_name() -> None:
    with tfplace.on_device("/device:CPU:1"):
        x = tf.zeros(()) + 1.0
    assert device_of(x) == "device:CPU:1"
    assert repr(tfplace.on_device("/CPU:0")) == "on_device('/CPU:0')"


def test_missing_cpu_index_is_device_not_found() -> None:
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"virtual_devices=N"), tfplace.on_cpu(5):
        pass


def test_on_gpu_strict_without_gpu_raises_with_visible_devices_and_fix() -> None:
    with pytest.raises(tfplace.DeviceNotFoundError) as info, tfplace.on_gpu(0, strict=True):
        pass
    msg = str(info.value)
    assert "no GPU is visible" in msg
    assert "/CPU:0, /CPU:1" in msg
    assert "strict=False" in msg


def test_on_gpu_non_strict_falls_back_to_cpu_with_a_warning() -> None:
    with (
        pytest.warns(tfplace.DeviceFallbackWarning, match=r"running on /CPU:0 instead"),
        tfplace.on_gpu() as name,
    ):
        x = tf.ones(()) + 1.0
    assert name == "/CPU:0"
    assert device_of(x) == "device:CPU:0"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: tfplace.on_gpu(-1), ValueError),
        (lambda: tfplace.on_gpu("0"), TypeError),  # type: ignore[arg-type]
        (lambda: tfplace.on_gpu(True), TypeError),
        (lambda: tfplace.on_gpu(0, strict=1), TypeError),  # type: ignore[arg-type]
        (lambda: tfplace.on_cpu(1.0), TypeError),  # type: ignore[arg-type]
        (lambda: tfplace.on_device(0), TypeError),  # type: ignore[arg-type]
        (lambda: tfplace.on_cpu()(42), TypeError),  # type: ignore[type-var]
    ],
)
def test_bad_arguments(make: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()  # type: ignore[operator]


def test_threads_keep_their_own_placement() -> None:
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        seen = []
        with tfplace.on_cpu(i % 2):
            barrier.wait()
            for _ in range(20):
                with tfplace.on_cpu((i + 1) % 2):
                    seen.append(device_of(tf.ones(()) + 1.0))
                seen.append(device_of(tf.ones(()) + 1.0))
        results[i] = seen

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        inner, outer = f"device:CPU:{(i + 1) % 2}", f"device:CPU:{i % 2}"
        assert results[i] == [inner, outer] * 20, i


def test_same_scope_object_reused_and_nested() -> None:
    scope = tfplace.on_cpu(1)
    with scope, scope:
        x = tf.ones(()) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = tf.ones(()) + 1.0
    assert device_of(x) == "device:CPU:1"
    assert device_of(y) == "device:CPU:0"


def test_fast_path_leaves_the_same_state_as_tf_device_and_mixes_with_it() -> None:
    from tensorflow.python.eager import context

    ctx = context.context()
    before = (ctx.device_name, ctx.device_spec)
    for _ in range(3):  # first pass fills TensorFlow's parsing cache, later ones hit it
        with tf.device("/CPU:1"):
            raw_inside = ctx.device_name
        with tfplace.on_cpu(1):
            ours_inside = ctx.device_name
            with tf.device("/CPU:0"):
                mixed = device_of(tf.ones(()) + 1.0)
            back = device_of(tf.ones(()) + 1.0)
        assert ours_inside == raw_inside
        assert (mixed, back) == ("device:CPU:0", "device:CPU:1")
        assert (ctx.device_name, ctx.device_spec) == before


def test_unplaceable_op_without_soft_placement_is_device_not_found() -> None:
    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)
    try:
        with (
            pytest.raises(tfplace.DeviceNotFoundError, match=r"on_cpu\(\)") as info,
            tfplace.on_device("/GPU:0"),
        ):
            tf.ones(()) + 1.0
        assert "Could not satisfy device specification" in str(info.value)
        assert isinstance(info.value.__cause__, tf.errors.InvalidArgumentError)
    finally:
        tf.config.set_soft_device_placement(previous)
    assert tf.config.get_soft_device_placement() is previous


def test_tfplace_never_calls_set_log_device_placement() -> None:
    # After start-up, set_log_device_placement(False) silently turns soft placement off while
    # get_soft_device_placement() still says True (FAILURES A9); tfplace never calls it.
    from pathlib import Path

    src = Path(tfplace.__file__).parent
    assert not [p for p in src.glob("*.py") if "set_log_device_placement" in p.read_text()]
