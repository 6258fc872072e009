"""configure_gpus / configure_cpus: GPU rules on a fake tf.config, CPU rules for real."""

from __future__ import annotations

import dataclasses
import re

import pytest
from fakes import FakeGPUMachine
from helpers import run_json

import tfplace
from tfplace._decide.devices import CPUFacts, GPUFacts, choose_gpus, cpu_changes, gpu_changes
from tfplace._decide.strategy import decide
from tfplace._decide.threads import auto_threads
from tfplace._facts.inventory import GPUInfo
from tfplace.testing import fake_inventory, use_inventory

pytestmark = pytest.mark.tf


def test_growth_is_set_on_every_visible_gpu() -> None:
    m = FakeGPUMachine(n=3)
    cfg = tfplace.configure_gpus(memory_growth=True, backend=m)
    assert m.calls == ["growth 0 True", "growth 1 True", "growth 2 True"]
    assert cfg == tfplace.GPUConfig((0, 1, 2), True, None, changed=True)


def test_same_settings_twice_is_a_no_op_also_after_start() -> None:
    m = FakeGPUMachine()
    tfplace.configure_gpus(memory_growth=True, backend=m)
    m.started = True
    m.calls.clear()
    cfg = tfplace.configure_gpus(memory_growth=True, backend=m)
    assert m.calls == []
    assert cfg.changed is False and cfg.memory_growth is True


def test_different_settings_after_start_raise_already_initialized() -> None:
    m = FakeGPUMachine()
    tfplace.configure_gpus(memory_growth=True, backend=m)
    m.started = True
    with pytest.raises(tfplace.AlreadyInitializedError) as info:
        tfplace.configure_gpus(memory_growth=False, backend=m)
    msg = str(info.value)
    assert "memory growth True -> False" in msg
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in msg
    assert "restart" in msg


def test_tensorflow_start_up_error_is_translated_and_chained() -> None:
    class Racing(FakeGPUMachine):  # the runtime starts between our check and our call
        def runtime_started(self) -> bool:
            return False

    r = Racing()
    r.started = True
    with pytest.raises(tfplace.AlreadyInitializedError) as info:
        tfplace.configure_gpus(memory_growth=True, backend=r)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "cannot be modified after being initialized" in str(info.value)
    assert r.calls == []  # nothing was half-applied


def test_memory_limit_one_number_or_one_per_gpu() -> None:
    m = FakeGPUMachine()
    cfg = tfplace.configure_gpus(memory_limit_mb=1024, backend=m)
    assert m.calls == ["split 0 [1024]", "split 1 [1024]"]
    assert cfg.memory_limit_mb == (1024, 1024)
    m2 = FakeGPUMachine()
    assert tfplace.configure_gpus(memory_limit_mb=[512, 2048], backend=m2).memory_limit_mb == (
        512,
        2048,
    )
    with pytest.raises(ValueError, match="one per visible GPU"):
        tfplace.configure_gpus(memory_limit_mb=[1, 2, 3], backend=FakeGPUMachine())


def test_visible_hides_the_others_and_limits_follow_visible() -> None:
    m = FakeGPUMachine(n=4)
    cfg = tfplace.configure_gpus(visible=[1, 3], memory_limit_mb=[100, 200], backend=m)
    assert m.calls[0] == "visible ['1', '3']"
    assert cfg.visible == (1, 3)
    assert cfg.memory_limit_mb == (100, 200)
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"GPU\(s\) \[7\] do not exist"):
        tfplace.configure_gpus(visible=[7], backend=FakeGPUMachine())


def test_growth_and_limit_together_rejected_before_tensorflow() -> None:
    m = FakeGPUMachine()
    with pytest.raises(ValueError, match="exclude each other"):
        tfplace.configure_gpus(memory_growth=True, memory_limit_mb=100, backend=m)
    assert m.calls == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"memory_growth": "yes"}, TypeError),
        ({"memory_limit_mb": 0}, ValueError),
        ({"memory_limit_mb": -5}, ValueError),
        ({"memory_limit_mb": 1.5}, TypeError),
        ({"memory_limit_mb": True}, TypeError),
        ({"memory_limit_mb": []}, ValueError),
        ({"memory_limit_mb": "100"}, TypeError),
        ({"visible": 0}, TypeError),
        ({"visible": "0"}, TypeError),
        ({"visible": [-1]}, ValueError),
        ({"visible": [0, 0]}, ValueError),
    ],
)
def test_configure_gpus_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    m = FakeGPUMachine()
    with pytest.raises(error, match=re.escape(next(iter(kwargs)))):  # names the argument
        tfplace.configure_gpus(**kwargs, backend=m)  # type: ignore[arg-type]
    assert m.calls == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"threads": "max"}, TypeError),
        ({"threads": 0}, ValueError),
        ({"inter_op_threads": -1}, ValueError),
        ({"virtual_devices": 0}, ValueError),
        ({"virtual_devices": 2.0}, TypeError),
    ],
)
def test_configure_cpus_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    m = FakeGPUMachine()
    with pytest.raises(error, match=re.escape(next(iter(kwargs)))):  # names the argument
        tfplace.configure_cpus(**kwargs, backend=m)  # type: ignore[arg-type]
    assert m.calls == []


def test_configure_cpus_on_fake_machine_rules() -> None:
    m = FakeGPUMachine()
    cfg = tfplace.configure_cpus(4, inter_op_threads=2, virtual_devices=3, backend=m)
    assert (cfg.intra_op_threads, cfg.inter_op_threads, cfg.virtual_devices) == (4, 2, 3)
    m.started = True
    again = tfplace.configure_cpus(4, inter_op_threads=2, virtual_devices=3, backend=m)
    assert again.changed is False
    with pytest.raises(tfplace.AlreadyInitializedError, match="TF_NUM_INTRAOP_THREADS"):
        tfplace.configure_cpus(5, backend=m)


def test_auto_threads_follow_usable_cores() -> None:
    assert auto_threads(4) == (4, 4)
    assert auto_threads(0) == (1, 1)


@pytest.mark.slow
def test_real_cpu_configuration_in_a_fresh_process() -> None:
    out = run_json(
        """
        import json, tfplace, tensorflow as tf
        first = tfplace.configure_cpus(2, inter_op_threads=1, virtual_devices=3)
        gpu = tfplace.configure_gpus(memory_growth=True)      # GPUs hidden: returns cleanly
        x = tf.constant(1.0)                                   # the runtime starts
        again = tfplace.configure_cpus(2, inter_op_threads=1, virtual_devices=3)
        errors = []
        for kwargs in ({"virtual_devices": 4}, {"threads": 3, "virtual_devices": 3}):
            try:
                tfplace.configure_cpus(**kwargs)
            except tfplace.AlreadyInitializedError as err:
                errors.append(str(err))
        print(json.dumps({
            "first": [first.intra_op_threads, first.inter_op_threads, first.virtual_devices,
                      first.changed],
            "again_changed": again.changed,
            "gpu": [list(gpu.visible), gpu.changed],
            "logical": len(tf.config.list_logical_devices("CPU")),
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "errors": errors,
        }))
        """,
        cpu_only=True,
    )
    assert out["first"] == [2, 1, 3, True]
    assert out["again_changed"] is False
    assert out["gpu"] == [[], False]
    assert out["logical"] == 3
    assert out["intra"] == 2
    assert len(out["errors"]) == 2
    assert "virtual CPU devices 3 -> 4" in out["errors"][0]
    assert "intra-op threads 2 -> 3" in out["errors"][1]


@pytest.mark.slow
def test_auto_threads_respect_an_explicit_environment_variable() -> None:
    out = run_json(
        """
        import json, tfplace
        cfg = tfplace.configure_cpus("auto")
        print(json.dumps([cfg.intra_op_threads, cfg.inter_op_threads]))
        """,
        env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": None},
    )
    # intra left to TensorFlow (which reads TF_NUM_INTRAOP_THREADS); inter sized by "auto".
    assert out[0] == 0
    assert out[1] == auto_threads(tfplace.inventory().cpu.usable_cores)[1]


def test_visible_devices_after_start_name_cuda_visible_devices() -> None:
    m = FakeGPUMachine(n=2)
    m.started = True
    with pytest.raises(tfplace.AlreadyInitializedError, match="CUDA_VISIBLE_DEVICES") as info:
        tfplace.configure_gpus(visible=[0], backend=m)
    assert "visible GPUs [0, 1] -> [0]" in str(info.value)


def test_gpu_changes_is_pure_and_says_why() -> None:
    facts = GPUFacts((0, 1, 2), (0, 1, 2), (False,) * 3, (None,) * 3, runtime_started=True)
    plan = gpu_changes(facts, visible=[2, 0], memory_limit_mb=512)
    assert plan.visible == (2, 0) and plan.memory_limit_mb == (512, 512)
    assert [(c.setting, c.before, c.after) for c in plan.changes] == [
        ("visible GPUs", [0, 1, 2], [2, 0]),
        ("memory limits (MB)", [None, None], [512, 512]),
    ]
    assert all("was requested" in c.reason for c in plan.changes)
    # Facts already as asked: no change, whatever the runtime state.
    done = GPUFacts((0,), (0,), (True,), (None,), runtime_started=True)
    assert gpu_changes(done, memory_growth=True).changes == ()
    assert gpu_changes(GPUFacts((), (), (), (), False), memory_growth=True).changes == ()


def test_cpu_changes_is_pure() -> None:
    facts = CPUFacts(2, 2, 1, runtime_started=False)
    plan = cpu_changes(facts, 2, 1, 2)
    assert [str(c) for c in plan.changes] == [
        "inter-op threads 2 -> 1 (was requested)",
        "virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)",
    ]
    assert (plan.intra_op_threads, plan.inter_op_threads, plan.virtual_devices) == (None, 1, 2)


def test_dry_run_shows_the_change_set_without_applying_it() -> None:
    m = FakeGPUMachine(n=2)
    dry = tfplace.configure_gpus(memory_limit_mb=[100, 200], dry_run=True, backend=m)
    assert m.calls == []
    assert dry.changed is False and dry.memory_limit_mb == (100, 200)
    assert [c.setting for c in dry.changes] == ["memory limits (MB)"]
    real = tfplace.configure_gpus(memory_limit_mb=[100, 200], backend=m)
    assert real == dataclasses.replace(dry, changed=True)
    assert real.changes == dry.changes
    assert m.calls == ["split 0 [100]", "split 1 [200]"]
    # After start-up a dry run still answers (what would change); applying it raises.
    m.started = True
    cpu = tfplace.configure_cpus(3, virtual_devices=2, dry_run=True, backend=m)
    assert [c.setting for c in cpu.changes] == ["intra-op threads", "virtual CPU devices"]
    with pytest.raises(tfplace.AlreadyInitializedError):
        tfplace.configure_cpus(3, virtual_devices=2, backend=m)


def test_configure_applies_exactly_its_change_set() -> None:
    m = FakeGPUMachine(n=3)
    cfg = tfplace.configure_gpus(memory_growth=True, visible=[0, 2], backend=m)
    assert [c.setting for c in cfg.changes] == ["visible GPUs", "memory growth"]
    assert m.calls == ["visible ['0', '2']", "growth 0 True", "growth 2 True"]


def test_logical_gpus_split_each_visible_gpu() -> None:
    m = FakeGPUMachine(n=2)
    cfg = tfplace.configure_gpus(logical_gpus=2, memory_limit_mb=1024, backend=m)
    assert m.calls == ["split 0 [1024, 1024]", "split 1 [1024, 1024]"]
    assert (cfg.logical_gpus, cfg.memory_limit_mb) == (2, (1024, 1024))
    assert [c.setting for c in cfg.changes] == ["logical GPUs (MB each)"]
    m.started = True
    again = tfplace.configure_gpus(logical_gpus=2, memory_limit_mb=1024, backend=m)
    assert again.changed is False and again.logical_gpus == 2
    with pytest.raises(tfplace.AlreadyInitializedError, match="logical GPUs"):
        tfplace.configure_gpus(logical_gpus=3, memory_limit_mb=1024, backend=m)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logical_gpus": 2}, "needs memory_limit_mb"),
        ({"logical_gpus": 2, "memory_growth": True}, "exclude each other"),
        ({"logical_gpus": 0, "memory_limit_mb": 10}, "logical_gpus must be >= 1"),
        ({"count": 1}, "visible='auto'"),
        ({"visible": [0], "min_free_mb": 10}, "visible='auto'"),
        ({"visible": "all"}, "list of GPU indices or 'auto'"),
        ({"visible": "auto", "count": 0}, "count must be >= 1"),
    ],
)
def test_logical_and_auto_arguments_are_checked_first(
    kwargs: dict[str, object], match: str
) -> None:
    m = FakeGPUMachine()
    with pytest.raises((ValueError, TypeError), match=match):
        tfplace.configure_gpus(**kwargs, backend=m)  # type: ignore[arg-type]
    assert m.calls == []


LOADED = (
    GPUInfo(0, "A", (9, 0), memory_mb=81559, memory_free_mb=2000, utilization_percent=97),
    GPUInfo(1, "A", (9, 0), memory_mb=81559, memory_free_mb=80000, utilization_percent=3),
    GPUInfo(2, "A", (9, 0), memory_mb=81559, memory_free_mb=80000, utilization_percent=0),
    GPUInfo(3, "A", (9, 0), memory_mb=81559, memory_free_mb=80000, utilization_percent=0),
)


def test_choose_gpus_prefers_free_memory_then_idle_then_the_lower_index() -> None:
    chosen, why = choose_gpus(LOADED, count=2)
    assert chosen == (2, 3)  # 1 is as free but busier; 2 and 3 tie and keep index order
    assert "GPU 2 (80000 MB free, 0 %)" in why and "not chosen: GPU 0 (2000 MB free" in why
    assert choose_gpus(LOADED, min_free_mb=50000)[0] == (1, 2, 3)
    assert choose_gpus(LOADED)[0] == (0, 1, 2, 3)
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"found 3 of the 4 GPU\(s\)"):
        choose_gpus(LOADED, count=4, min_free_mb=50000)
    unknown = [GPUInfo(0), GPUInfo(1)]
    assert choose_gpus(unknown, count=1)[0] == (0,)  # no load facts: index order
    with pytest.raises(tfplace.DeviceNotFoundError, match="nvidia-ml-py"):
        choose_gpus(unknown, min_free_mb=1)


def test_visible_auto_applies_the_choice_with_its_reason() -> None:
    m = FakeGPUMachine(n=4)
    with use_inventory(fake_inventory(gpus=LOADED)):
        cfg = tfplace.configure_gpus(visible="auto", count=1, memory_growth=True, backend=m)
    assert cfg.visible == (2,)
    assert m.calls == ["visible ['2']", "growth 2 True"]
    assert "least loaded" in cfg.changes[0].reason


def test_logical_gpus_are_counted_and_mirrored_without_nccl() -> None:
    inv = fake_inventory(gpus=(GPUInfo(0, "H200", (9, 0), logical=2),))
    assert inv.logical_gpu_count == 2 and inv.gpus_shared
    p = decide(inv)
    assert (p.kind, p.devices, p.cross_device_ops) == (
        "mirrored",
        ("/GPU:0", "/GPU:1"),
        "hierarchical_copy",
    )
    assert any("share a physical GPU" in r for r in p.reasons)
    with pytest.raises(ValueError, match="share a physical GPU"):
        decide(inv, cross_device_ops="nccl")
    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    mw = decide(fake_inventory(gpus=(GPUInfo(0, "H200", (9, 0), logical=2),), tf_config=two))
    assert (mw.cross_device_ops, mw.num_replicas_in_sync) == ("ring", 4)


def test_an_explicit_gpu_request_without_gpus_is_an_error_not_a_silent_no_op() -> None:
    none = FakeGPUMachine(n=0)
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"no GPU is visible.*tfplace doctor"):
        tfplace.configure_gpus(visible=[3], backend=none)
    with pytest.raises(tfplace.DeviceNotFoundError, match="count=2"):
        tfplace.configure_gpus(visible="auto", count=2, backend=none)
    # what a script asks on any machine stays a clean no-op where there is no GPU
    assert tfplace.configure_gpus(memory_growth=True, backend=none).visible == ()
    assert tfplace.configure_gpus(visible=[], backend=none).visible == ()
    assert tfplace.configure_gpus(visible="auto", backend=none).visible == ()
