"""on_cpu / on_gpu / on_device, for real on this process's two virtual CPUs (and its GPUs).

The tfplace pytest plugin splits the CPU into two devices before TensorFlow starts. Whatever
GPUs the machine has stay visible: expectations about GPUs are computed from TensorFlow's own
list of logical devices, and the no-GPU behaviour is also checked in a fresh CPU-only process.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf
from helpers import run_json

import tfplace

pytestmark = pytest.mark.tf


def device_of(t: tf.Tensor) -> str:
    return str(t.device).rsplit("/", 1)[-1]  # "device:CPU:1"


def logical(kind: str) -> list[str]:
    """This process's logical devices of ``kind``, as on_* names: ["/GPU:0", ...]."""
    return [f"/{kind}:{i}" for i in range(len(tf.config.list_logical_devices(kind)))]


@pytest.fixture(autouse=True, scope="module")
def _two_cpu_devices() -> None:
    cpus = logical("CPU")
    assert len(cpus) >= 2, (
        f"these tests place ops on /CPU:1, but this process has {cpus}; expected the tfplace "
        "pytest plugin to split the CPU (tfplace_virtual_cpus = 2) before TensorFlow started"
    )


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
    missing = len(logical("CPU"))  # one past the last CPU device
    with (
        pytest.raises(tfplace.DeviceNotFoundError, match=r"virtual_devices=N") as info,
        tfplace.on_cpu(missing),
    ):
        pass
    assert f"only {missing} CPU device(s) exist" in str(info.value)


def test_on_gpu_places_ops_on_each_visible_gpu() -> None:
    gpus = logical("GPU")
    if not gpus:
        pytest.skip("no GPU is visible; the fallback is tested below")
    for index, gpu in enumerate(gpus):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning for a GPU that exists
            with tfplace.on_gpu(index, strict=True) as name:
                x = tf.ones(()) + 1.0
        assert name == gpu
        assert device_of(x) == f"device:GPU:{index}"


def test_on_gpu_strict_past_the_last_gpu_raises_with_visible_devices_and_fix() -> None:
    gpus = logical("GPU")
    missing = len(gpus)  # GPU:0 on a CPU-only machine, GPU:n with n GPUs
    with pytest.raises(tfplace.DeviceNotFoundError) as info, tfplace.on_gpu(missing, strict=True):
        pass
    msg = str(info.value)
    assert f"visible devices: {', '.join(gpus + logical('CPU'))}" in msg
    if gpus:  # a wrong index: no fallback to suggest
        assert f"GPU(s) [{missing}] do not exist" in msg and "strict=False" not in msg
    else:
        assert "no GPU is visible" in msg and f"on_gpu({missing}, strict=False)" in msg


def test_on_gpu_non_strict_past_the_last_gpu_falls_back_to_cpu_with_a_warning() -> None:
    missing = len(logical("GPU"))
    if missing:  # the machine has GPUs: a wrong index raises whatever strict says
        with (
            pytest.raises(tfplace.DeviceNotFoundError, match="do not exist"),
            tfplace.on_gpu(missing),
        ):
            pass
        return
    with (
        pytest.warns(tfplace.DeviceFallbackWarning, match=r"running on /CPU:0 instead"),
        tfplace.on_gpu(missing) as name,
    ):
        x = tf.ones(()) + 1.0
    assert name == "/CPU:0"
    assert device_of(x) == "device:CPU:0"


@pytest.mark.slow
def test_on_gpu_without_any_gpu_in_a_cpu_only_process() -> None:
    # What a CPU-only machine sees, checked on every machine: the GPUs are hidden in the child.
    out = run_json(
        """
        import json, warnings, tfplace
        tfplace.configure_cpus(threads=None, virtual_devices=2)
        try:
            with tfplace.on_gpu(strict=True):
                pass
        except tfplace.DeviceNotFoundError as err:
            strict = str(err)
        else:
            strict = "no error"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with tfplace.on_gpu() as name:
                import tensorflow as tf
                device = (tf.ones(()) + 1.0).device
        print(json.dumps({"strict": strict, "name": name, "device": device,
                          "warnings": [str(w.message) for w in caught
                                       if issubclass(w.category, tfplace.DeviceFallbackWarning)]}))
        """,
        cpu_only=True,
    )
    assert "on_gpu(0, strict=True): no GPU is visible" in out["strict"]
    assert "(visible devices: /CPU:0, /CPU:1)" in out["strict"]
    assert "tfplace doctor" in out["strict"] and "on_gpu(0, strict=False)" in out["strict"]
    assert out["name"] == "/CPU:0"
    assert out["device"].endswith("device:CPU:0")
    assert out["warnings"] == [
        "on_gpu(0): no GPU is visible; running on /CPU:0 instead. "
        "Pass strict=True to make this an error."
    ]


def wrong(value: object) -> Any:
    """``value``, typed so that the wrong-type calls below need no ``type: ignore``."""
    return value


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: tfplace.on_gpu(-1), ValueError, r"on_gpu\(index\) must be >= 0, found -1"),
        (lambda: tfplace.on_gpu(wrong("0")), TypeError, r"on_gpu\(index\) takes an int"),
        (lambda: tfplace.on_gpu(True), TypeError, r"on_gpu\(index\) takes an int"),
        (lambda: tfplace.on_gpu(0, strict=wrong(1)), TypeError, r"strict=\.\.\.\) takes True"),
        (lambda: tfplace.on_cpu(wrong(1.0)), TypeError, r"on_cpu\(index\) takes an int"),
        (lambda: tfplace.on_device(wrong(0)), TypeError, r"on_device\(name\) takes a device"),
        (lambda: tfplace.on_cpu()(wrong(42)), TypeError, r"decorates a callable, found 42"),
    ],
)
def test_bad_arguments(make: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


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
    default = device_of(tf.ones(()) + 1.0)  # GPU:0 where there is a GPU, else CPU:0
    assert default != "device:CPU:1"
    scope = tfplace.on_cpu(1)
    with scope, scope:
        x = tf.ones(()) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = tf.ones(()) + 1.0
    assert device_of(x) == "device:CPU:1"
    assert device_of(y) == default


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
    absent = f"/GPU:{len(logical('GPU'))}"  # a GPU this process does not have
    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)
    try:
        with (
            pytest.raises(tfplace.DeviceNotFoundError, match=r"on_cpu\(\)") as info,
            tfplace.on_device(absent),
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
    src = Path(tfplace.__file__).parent
    sources = list(src.rglob("*.py"))
    assert src / "_placement.py" in sources
    assert not [p for p in sources if "set_log_device_placement" in p.read_text()]
