"""Property tests: decisions are total, parsing and argument checks never misbehave."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tfplace
from tfplace import _tf
from tfplace._decide.strategy import KINDS, decide
from tfplace._facts.inventory import GPUInfo, Inventory
from tfplace.doctor import diagnose, findings
from tfplace.errors import ClusterConfigError, DeviceNotFoundError
from tfplace.testing import fake_inventory

pytestmark = pytest.mark.pure


EXAMPLES = 1000

cc = st.none() | st.tuples(st.integers(0, 12), st.integers(0, 9))
gpu_lists = st.lists(st.tuples(st.text(max_size=6), cc, st.booleans()), max_size=8).map(
    lambda items: [GPUInfo(i, n, c, visible=v) for i, (n, c, v) in enumerate(items)]
)
addresses = st.sampled_from(["a:1", "b:2", "localhost:3", "10.0.0.1:4", "x", "[::1]:5", "c:0"])
tf_configs = (
    st.none()
    | st.text(max_size=20)
    | st.fixed_dictionaries(
        {
            "cluster": st.dictionaries(
                st.sampled_from(["chief", "worker", "ps", "evaluator", "other"]),
                st.lists(addresses, min_size=0, max_size=3),
                max_size=3,
            ),
            "task": st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["chief", "worker", "ps", "nope"]),
                    "index": st.integers(-1, 3) | st.text(max_size=2),
                }
            ),
        }
    ).map(json.dumps)
)
slurms = st.none() | st.fixed_dictionaries(
    {
        "SLURM_PROCID": st.sampled_from(["0", "1", "3", "x"]),
        "SLURM_NTASKS": st.sampled_from(["1", "2", "4"]),
        "SLURM_JOB_NODELIST": st.sampled_from(["n[1-2]", "n1", "n[1-4]", "gpu[01-02]"]),
        "SLURM_TASKS_PER_NODE": st.sampled_from(["1(x2)", "2", "1,1", "2(x2)", "4"]),
    },
    optional={"SLURM_GPUS_ON_NODE": st.sampled_from(["0", "2", "4", "gpu:2"])},
)
envs = st.dictionaries(
    st.sampled_from(["CUDA_VISIBLE_DEVICES", "TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS"]),
    st.sampled_from(["", "-1", "0", "1", "0,1"]),
    max_size=3,
)


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    gpus: Any = draw(st.integers(0, 8) | gpu_lists)
    return fake_inventory(
        gpus=gpus,
        compute_capability=draw(cc),
        cores=draw(st.integers(1, 128)),
        quota_cores=draw(st.none() | st.floats(0.1, 128)),
        virtual_cpus=draw(st.integers(1, 8)),
        platform=draw(st.sampled_from(["linux", "win32", "darwin"])),
        cuda_build=draw(st.none() | st.booleans()),
        tf_version=draw(st.sampled_from([None, "2.10.1", "2.16.2", "2.21.0"])),
        keras=draw(st.sampled_from(["keras3", "tf_keras", "missing"])),
        tpu=draw(st.booleans()),
        tf_config=draw(tf_configs),
        slurm=draw(slurms),
        env=draw(envs),
        runtime_started=draw(st.booleans()),
        nvidia_driver=draw(st.sampled_from(["default", None, "NVRM 550"])),
        functions_run_eagerly=draw(st.booleans()),
    )


def local_names(inv: Inventory) -> set[str]:
    return {f"/GPU:{i}" for i in range(len(inv.visible_gpus))} | {
        f"/CPU:{i}" for i in range(inv.cpu.logical_devices)
    }


devices_requests = st.none() | st.lists(
    st.sampled_from(["/GPU:0", "/GPU:1", "GPU:7", "/CPU:0", "/CPU:1", "cpu:3", "bad"]),
    min_size=0,
    max_size=3,
)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), st.sampled_from(KINDS), devices_requests)
def test_plan_is_total(inv: Inventory, kind: str, devices: list[str] | None) -> None:
    try:
        p = decide(inv, kind, devices=devices)
    except (ValueError, TypeError, DeviceNotFoundError, ClusterConfigError) as err:
        message = str(err)
        if not message:
            raise AssertionError(f"{type(err).__name__} without a message") from err
        return
    assert p.reasons
    json.dumps(p.to_dict())
    if p.kind == "tpu":
        assert inv.tpu.present
        return
    assert p.devices
    assert set(p.devices) <= local_names(inv), (p.devices, local_names(inv))
    workers = p.cluster.num_workers if p.cluster is not None else 1
    assert p.num_replicas_in_sync == len(p.devices) * workers
    if p.num_replicas_in_sync > 1 and p.kind == "mirrored":
        assert p.cross_device_ops in ("nccl", "hierarchical_copy", "reduce_to_one")
    if p.cross_device_ops == "nccl":
        assert inv.platform == "linux"


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), st.sampled_from([None, "float32", "mixed_float16", "mixed_bfloat16"]))
def test_doctor_rules_are_total(inv: Inventory, precision: str | None) -> None:
    found = findings(inv, precision=precision)
    assert all(f.severity in ("error", "warning", "info") and f.what and f.fix for f in found)
    report = diagnose(inv, precision=precision)
    json.dumps(report.to_dict())
    assert report.to_text()
    assert report.exit_code in (0, 1)


# ------------------------------------------------------------ argument checks never touch TF


class TouchedTensorFlow(BaseException):
    """Raised if argument checking reached TensorFlow."""


@pytest.fixture
def no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every function of the TensorFlow seam (``tfplace._tf``) raise TouchedTensorFlow.

    Returns the names replaced. TensorFlow may already be imported in this process, so
    guarding ``load`` alone would miss helpers that reach TensorFlow another way.
    """
    replaced = []
    for name in _tf.__all__:
        if not callable(getattr(_tf, name)):
            continue  # constants and tables

        def refuse(*_args: Any, _name: str = name, **_kwargs: Any) -> None:
            raise TouchedTensorFlow(f"tfplace._tf.{_name} was called")

        monkeypatch.setattr(_tf, name, refuse)
        replaced.append(name)
    return replaced


@pytest.mark.parametrize(
    "call",
    [
        lambda: tfplace.memory_info("CPU:0"),
        lambda: tfplace.global_batch_size(4),
        lambda: tfplace.pick_strategy("default", inventory=fake_inventory()),
    ],
    ids=["memory_info", "global_batch_size", "pick_strategy"],
)
def test_the_guard_catches_valid_calls_that_need_tensorflow(
    no_tensorflow: list[str], call: Callable[[], Any]
) -> None:
    assert "load" in no_tensorflow
    with pytest.raises(TouchedTensorFlow):
        call()


junk = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4), st.lists(st.none())
)
bad_counts = st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=3), st.booleans())
bad_index = st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3), st.booleans())

CALLS: list[tuple[str, Callable[[Any], Any], st.SearchStrategy[Any]]] = [
    (
        "configure_gpus(memory_growth)",
        lambda v: tfplace.configure_gpus(memory_growth=v),
        st.one_of(st.integers(), st.text(max_size=3), st.floats()),
    ),
    (
        "configure_gpus(memory_limit_mb)",
        lambda v: tfplace.configure_gpus(memory_limit_mb=v),
        bad_counts,
    ),
    (
        "configure_gpus(visible)",
        lambda v: tfplace.configure_gpus(visible=v),
        st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.lists(bad_index, min_size=1)),
    ),
    (
        "configure_cpus(threads)",
        lambda v: tfplace.configure_cpus(threads=v),
        bad_counts.filter(lambda v: v != "auto"),
    ),
    (
        "configure_cpus(virtual_devices)",
        lambda v: tfplace.configure_cpus(virtual_devices=v),
        bad_counts,
    ),
    ("on_gpu(index)", lambda v: tfplace.on_gpu(v), bad_index),
    ("on_cpu(index)", lambda v: tfplace.on_cpu(v), bad_index),
    (
        "on_device(name)",
        lambda v: tfplace.on_device(v),
        st.one_of(st.integers(), st.none(), st.floats()),
    ),
    (
        "plan(kind)",
        lambda v: tfplace.plan(v, inventory=fake_inventory()),
        junk.filter(lambda v: v is not None and v not in KINDS),  # None means "auto"
    ),
    (
        "pick_strategy(kind)",
        lambda v: tfplace.pick_strategy(v, inventory=fake_inventory()),
        junk.filter(lambda v: v is not None and v not in KINDS),  # None means "auto"
    ),
    (
        "pick_strategy(communication_timeout)",
        lambda v: tfplace.pick_strategy(communication_timeout=v, inventory=fake_inventory()),
        st.one_of(st.integers(max_value=0), st.text(max_size=2), st.booleans()),
    ),
    ("global_batch_size(batch_size)", lambda v: tfplace.global_batch_size(v), bad_counts),
    ("find_batch_size(start)", lambda v: tfplace.find_batch_size(v), bad_counts),
    ("launch(num_workers)", lambda v: tfplace.launch(["python"], v), bad_counts),
    (
        "tf_configs(hosts)",
        lambda v: tfplace.tf_configs(v),
        st.one_of(st.text(max_size=3), st.just([]), st.lists(st.integers(), min_size=1)),
    ),
    (
        "parse_tf_config(value)",
        lambda v: tfplace.parse_tf_config(v),
        st.text(min_size=1, max_size=30).filter(lambda v: v.strip() != ""),
    ),
    ("configure_precision(policy)", lambda v: tfplace.configure_precision(v), junk),
    (
        "memory_info(device)",
        lambda v: tfplace.memory_info(v),
        st.one_of(st.integers(), st.none(), st.just("")),
    ),
]


@pytest.mark.usefixtures("no_tensorflow")
@pytest.mark.parametrize(("name", "call", "values"), CALLS, ids=[c[0] for c in CALLS])
def test_bad_arguments_are_rejected_before_tensorflow(
    name: str, call: Callable[[Any], Any], values: st.SearchStrategy[Any]
) -> None:
    @settings(max_examples=60, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        with pytest.raises((ValueError, TypeError)):
            call(value)

    check()
