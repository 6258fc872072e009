"""configure_gpus / configure_cpus: GPU rules on a fake tf.config, CPU rules for real."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from fakes import FakeGPUMachine
from helpers import run_json

import tfplace
from tfplace._decide.devices import (
    CPUFacts,
    GPUFacts,
    choose_gpus,
    cpu_changes,
    gpu_changes,
    gpu_fallback,
)
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
    cpu = tfplace.configure_cpus(3, virtual_devices=2, dry_run=True, backend=m)
    assert [c.setting for c in cpu.changes] == ["intra-op threads", "virtual CPU devices"]
    assert (cpu.intra_op_threads, cpu.virtual_devices, cpu.changed) == (3, 2, False)
    assert m.calls == ["split 0 [100]", "split 1 [200]"]  # the CPU dry run applied nothing


def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(tfplace.AlreadyInitializedError) as info:
        call()
    return str(info.value)


def test_a_dry_run_after_start_up_raises_the_refusal_of_the_real_call() -> None:
    # A dry run answers what the real call would do; after start-up that is a refusal, the same
    # exception with the same text, and nothing is applied.
    m = FakeGPUMachine(n=2)
    m.started = True
    dry = refusal(lambda: tfplace.configure_gpus(memory_growth=True, dry_run=True, backend=m))
    real = refusal(lambda: tfplace.configure_gpus(memory_growth=True, backend=m))
    assert dry == real and "memory growth False -> True" in dry
    dry_cpu = refusal(lambda: tfplace.configure_cpus(3, virtual_devices=2, dry_run=True, backend=m))
    real_cpu = refusal(lambda: tfplace.configure_cpus(3, virtual_devices=2, backend=m))
    assert dry_cpu == real_cpu and "virtual CPU devices 1 -> 2" in dry_cpu
    assert m.calls == []
    # What is already in force is no change: the dry run answers it, also after start-up.
    same = tfplace.configure_cpus(None, virtual_devices=1, dry_run=True, backend=m)
    assert (same.changes, same.changed, same.virtual_devices) == ((), False, 1)
    assert tfplace.configure_gpus(memory_growth=False, dry_run=True, backend=m).changes == ()


@pytest.mark.slow
def test_dry_run_after_start_up_refuses_like_the_real_call_in_a_fresh_process() -> None:
    out = run_json(
        """
        import json, tfplace, tensorflow as tf
        tfplace.configure_cpus(2, inter_op_threads=1, virtual_devices=3)
        tf.constant(1.0)                                   # the runtime starts
        refused = {}
        for dry in (True, False):
            try:
                tfplace.configure_cpus(2, virtual_devices=4, dry_run=dry)
            except tfplace.AlreadyInitializedError as err:
                refused[str(dry)] = str(err)
        same = tfplace.configure_cpus(2, inter_op_threads=1, virtual_devices=3, dry_run=True)
        now = tfplace.configure_cpus(None)                 # reads back what is in force
        print(json.dumps({"refused": refused, "same": [list(same.changes), same.changed],
                          "now": [now.intra_op_threads, now.inter_op_threads,
                                  now.virtual_devices],
                          "logical": len(tf.config.list_logical_devices("CPU"))}))
        """,
        cpu_only=True,
    )
    assert set(out["refused"]) == {"True", "False"}
    assert out["refused"]["True"] == out["refused"]["False"]
    assert "virtual CPU devices 3 -> 4" in out["refused"]["True"]
    assert out["same"] == [[], False]
    assert out["now"] == [2, 1, 3] and out["logical"] == 3


def test_configure_cpus_reads_back_what_is_in_force() -> None:
    class IgnoresCPUSplit(FakeGPUMachine):  # a backend that drops the CPU split silently
        def set_split(self, device: Any, limits: list[int | None]) -> None:
            if device.device_type != "CPU":
                super().set_split(device, limits)

    m = IgnoresCPUSplit()
    cfg = tfplace.configure_cpus(None, virtual_devices=2, backend=m)
    assert cfg.virtual_devices == 1  # read back, not the 2 that was asked for
    assert [c.setting for c in cfg.changes] == ["virtual CPU devices"]
    honest = tfplace.configure_cpus(None, virtual_devices=2, backend=FakeGPUMachine())
    assert honest.virtual_devices == 2


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


POLICY = "Pass strict=True to make this an error."


def test_gpus_asked_for_where_there_is_none_warn_and_continue_on_the_cpu() -> None:
    # The one fallback policy (on_gpu's): warn and carry on without the GPU.
    none = FakeGPUMachine(n=0)
    with pytest.warns(tfplace.DeviceFallbackWarning, match=r"no GPU is visible") as caught:
        cfg = tfplace.configure_gpus(visible=[0], backend=none)
    assert cfg == tfplace.GPUConfig((), None, None, changed=False)
    (warning,) = caught
    assert str(warning.message) == (
        "configure_gpus(visible=[0]): no GPU is visible to TensorFlow here "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); nothing "
        f"configured, TensorFlow runs on the CPU. {POLICY}"
    )
    assert warning.filename == __file__  # points at the caller's line
    with pytest.warns(tfplace.DeviceFallbackWarning, match=r"count=2"):
        tfplace.configure_gpus(visible="auto", count=2, backend=none)
    with pytest.warns(tfplace.DeviceFallbackWarning):
        assert tfplace.configure_gpus(visible=[0], dry_run=True, backend=none).visible == ()
    assert none.calls == []
    # what a script asks on any machine stays a clean, silent no-op where there is no GPU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tfplace.configure_gpus(memory_growth=True, backend=none).visible == ()
        assert tfplace.configure_gpus(visible=[], backend=none).visible == ()
        assert tfplace.configure_gpus(visible="auto", backend=none).visible == ()


def test_strict_gpu_request_without_gpus_raises() -> None:
    none = FakeGPUMachine(n=0)
    with pytest.raises(tfplace.DeviceNotFoundError) as info:
        tfplace.configure_gpus(visible=[0], strict=True, backend=none)
    msg = str(info.value)
    assert msg.startswith("configure_gpus(visible=[0], strict=True): no GPU is visible")
    assert "tfplace doctor" in msg and "strict=False" in msg
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"count=2, strict=True"):
        tfplace.configure_gpus(visible="auto", count=2, strict=True, backend=none)
    with pytest.raises(TypeError, match="strict"):
        tfplace.configure_gpus(visible=[0], strict=cast(bool, "yes"), backend=none)


@pytest.mark.parametrize("strict", [False, True])
def test_a_gpu_index_that_does_not_exist_on_a_gpu_machine_still_raises(strict: bool) -> None:
    m = FakeGPUMachine(n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a wrong index is an error, never a fallback
        with pytest.raises(tfplace.DeviceNotFoundError, match=r"GPU\(s\) \[5\] do not exist"):
            tfplace.configure_gpus(visible=[0, 5], strict=strict, backend=m)
    assert m.calls == []


def test_one_fallback_policy_for_on_gpu_and_configure_gpus() -> None:
    kwargs = {"strict_call": "x(strict=True)", "fix": "Fix it.", "instead": "on the CPU"}
    assert (
        gpu_fallback("x()", "no GPU", strict=False, **kwargs)
        == f"x(): no GPU; on the CPU. {POLICY}"
    )
    with pytest.raises(tfplace.DeviceNotFoundError, match=r"^x\(strict=True\): no GPU\. Fix it\.$"):
        gpu_fallback("x()", "no GPU", strict=True, **kwargs)


@pytest.mark.slow
def test_one_script_runs_on_a_machine_without_gpus() -> None:
    # TensorFlow's GPU guide guards set_visible_devices with `if gpus:`; with tfplace the same
    # lines run unguarded, and configure_gpus and on_gpu fall back the same way.
    out = run_json(
        """
        import json, warnings, tfplace
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = tfplace.configure_gpus(visible=[0], memory_growth=True)
            with tfplace.on_gpu() as name:
                pass
        try:
            tfplace.configure_gpus(visible=[0], strict=True)
        except tfplace.DeviceNotFoundError as err:
            strict = str(err)
        else:
            strict = "no error"
        print(json.dumps({"visible": list(cfg.visible), "name": name, "strict": strict,
                          "warnings": [[w.category.__name__, str(w.message)] for w in caught]}))
        """,
        cpu_only=True,
    )
    assert out["visible"] == [] and out["name"] == "/CPU:0"
    assert [w[0] for w in out["warnings"]] == ["DeviceFallbackWarning"] * 2
    assert out["warnings"][0][1].startswith("configure_gpus(visible=[0]): no GPU is visible")
    assert all(w[1].endswith(POLICY) for w in out["warnings"])
    assert out["strict"].startswith("configure_gpus(visible=[0], strict=True): no GPU")


def test_configs_print_as_readable_text() -> None:
    m = FakeGPUMachine(n=2)
    growth = tfplace.configure_gpus(memory_growth=True, backend=m)
    assert str(growth) == (
        "GPUs 0, 1: memory growth on, no memory limit\n"
        "  changed: memory growth False -> True (memory_growth=True was requested)"
    )
    m.started = True
    assert str(tfplace.configure_gpus(memory_growth=True, backend=m)) == (
        "GPUs 0, 1: memory growth on, no memory limit\n  no change"
    )
    dry = tfplace.configure_gpus(
        visible=[1], memory_limit_mb=4096, dry_run=True, backend=FakeGPUMachine()
    )
    assert str(dry) == (
        "GPUs 1: memory growth not set, memory limit 4096 MB\n"
        "  would change (dry run): visible GPUs [0, 1] -> [1] (visible=[1] was requested)\n"
        "  would change (dry run): memory limits (MB) [None] -> [4096] "
        "(memory_limit_mb=4096 was requested)"
    )
    split = tfplace.configure_gpus(
        logical_gpus=2, memory_limit_mb=[1024, 2048], backend=FakeGPUMachine()
    )
    assert str(split).splitlines()[0] == (
        "GPUs 0, 1: memory growth not set, each split into 2 logical GPUs of 1024, 2048 MB"
    )
    assert (
        str(tfplace.configure_gpus(backend=FakeGPUMachine(n=0)))
        == "GPUs: none visible\n  no change"
    )
    cpu = tfplace.configure_cpus(4, inter_op_threads=2, virtual_devices=2, backend=FakeGPUMachine())
    assert str(cpu) == (
        "CPU: 4 intra-op / 2 inter-op threads, 2 CPU devices\n"
        "  changed: intra-op threads default -> 4 (was requested)\n"
        "  changed: inter-op threads default -> 2 (was requested)\n"
        "  changed: virtual CPU devices 1 -> 2 (virtual_devices=2 was requested)"
    )
    assert str(tfplace.configure_cpus(None, backend=FakeGPUMachine())) == (
        "CPU: default intra-op / default inter-op threads, 1 CPU device\n  no change"
    )
    # JSON-ready, like every report
    data = json.loads(json.dumps({"gpu": dry.to_dict(), "cpu": cpu.to_dict()}))
    assert data["gpu"]["visible"] == [1] and data["gpu"]["changes"][0]["setting"] == "visible GPUs"
    assert data["cpu"]["virtual_devices"] == 2 and len(data["cpu"]["changes"]) == 3


def test_the_configuration_page_shows_the_printed_text() -> None:
    # docs/configuration.md shows print(configure_gpus(...)) / print(configure_cpus(...)) as
    # they print on the machines named there; the blocks must match what the code prints.
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    m = FakeGPUMachine(n=2)
    gpu = str(tfplace.configure_gpus(memory_growth=True, backend=m))
    with use_inventory(fake_inventory(cores=2)):
        cpu = str(tfplace.configure_cpus("auto", virtual_devices=2, backend=FakeGPUMachine()))
    for text in (gpu, cpu):
        assert "\n".join(f"# {line}" for line in text.splitlines()) in page, text
