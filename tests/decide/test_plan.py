"""Decisions over synthetic inventories: no TensorFlow involved."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tfplace
from tfplace._decide.strategy import PRIORITY, REDUCTIONS, decide
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace._facts.inventory import GPUInfo
from tfplace.testing import fake_inventory, use_inventory

pytestmark = pytest.mark.pure


TWO_WORKERS = {
    "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
    "task": {"type": "worker", "index": 1},
}


def test_zero_gpus_uses_the_default_strategy_on_the_cpu() -> None:
    p = decide(fake_inventory(gpus=0))
    assert p.kind == "default"
    assert p.devices == ("/CPU:0",)
    assert p.num_replicas_in_sync == 1
    assert "CPU-only build" in " ".join(p.reasons)


def test_one_gpu_uses_one_device_on_it() -> None:
    p = decide(fake_inventory(gpus=1))
    assert (p.kind, p.devices, p.cross_device_ops) == ("one_device", ("/GPU:0",), None)


@pytest.mark.parametrize("n", [2, 8])
def test_several_gpus_mirror_with_nccl_on_linux(n: int) -> None:
    p = decide(fake_inventory(gpus=n))
    assert p.kind == "mirrored"
    assert p.devices == tuple(f"/GPU:{i}" for i in range(n))
    assert p.cross_device_ops == "nccl"
    assert p.num_replicas_in_sync == n


def test_windows_has_no_nccl_so_hierarchical_copy() -> None:
    p = decide(fake_inventory(gpus=2, platform="win32"))
    assert p.cross_device_ops == "hierarchical_copy"
    assert "NCCL is not available on win32" in " ".join(p.reasons)


@pytest.mark.parametrize("value", ["", "-1"])
def test_gpus_hidden_by_cuda_visible_devices_are_named_as_the_cause(value: str) -> None:
    inv = fake_inventory(gpus=0, cuda_build=True, env={"CUDA_VISIBLE_DEVICES": value})
    p = decide(inv)
    assert p.kind == "default"
    assert f"CUDA_VISIBLE_DEVICES={value!r}" in " ".join(p.reasons)


def test_gpus_hidden_by_configure_gpus_are_not_used() -> None:
    gpus = (GPUInfo(0, "A", (8, 0), visible=False), GPUInfo(1, "B", (8, 0), visible=True))
    p = decide(fake_inventory(gpus=gpus))
    # The one visible GPU is logical /GPU:0, whatever its physical index.
    assert (p.kind, p.devices) == ("one_device", ("/GPU:0",))


def test_tpu_wins_over_everything() -> None:
    p = decide(fake_inventory(gpus=8, tpu=True, tf_config=TWO_WORKERS))
    assert p.kind == "tpu"


def test_kind_tpu_without_a_tpu_is_device_not_found() -> None:
    with pytest.raises(tfplace.DeviceNotFoundError, match="no TPU"):
        decide(fake_inventory(), "tpu")


def test_tf_config_cluster_means_multi_worker() -> None:
    p = decide(fake_inventory(gpus=2, tf_config=TWO_WORKERS))
    assert p.kind == "multi_worker"
    assert p.num_replicas_in_sync == 4
    assert p.cross_device_ops == "nccl"
    assert p.cluster is not None and p.cluster.task_index == 1


def test_multi_worker_on_cpus_uses_ring() -> None:
    p = decide(fake_inventory(tf_config=TWO_WORKERS))
    assert (p.kind, p.cross_device_ops, p.num_replicas_in_sync) == ("multi_worker", "ring", 2)


def test_slurm_allocation_means_multi_worker() -> None:
    slurm = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_TASKS_PER_NODE": "1(x2)",
    }
    p = decide(fake_inventory(slurm=slurm))
    assert p.kind == "multi_worker"
    assert p.cluster is not None
    assert p.cluster.addresses("worker") == ("node01:8888", "node02:8888")


def test_multi_worker_without_a_cluster_says_it_trains_alone() -> None:
    p = decide(fake_inventory(), "multi_worker")
    assert p.num_replicas_in_sync == 1
    assert "trains alone" in " ".join(p.reasons)


def test_one_worker_tf_config_is_not_a_cluster() -> None:
    one = {"cluster": {"worker": ["10.0.0.1:2222"]}, "task": {"type": "worker", "index": 0}}
    assert decide(fake_inventory(gpus=1, tf_config=one)).kind == "one_device"


def test_ps_cluster_with_keras3_is_a_clear_error_but_tf_keras_is_allowed() -> None:
    ps = {
        "cluster": {"worker": ["a:1", "b:1"], "ps": ["c:1"]},
        "task": {"type": "worker", "index": 0},
    }
    with pytest.raises(tfplace.ClusterConfigError, match=r"parameter-server.*tf_keras"):
        decide(fake_inventory(tf_config=ps, keras="keras3"))
    assert decide(fake_inventory(tf_config=ps, keras="tf_keras")).kind == "multi_worker"


def test_malformed_tf_config_is_a_cluster_config_error() -> None:
    with pytest.raises(tfplace.ClusterConfigError, match="TF_CONFIG"):
        decide(fake_inventory(tf_config="{not json"))


def test_mirrored_on_cpu_mirrors_over_virtual_devices() -> None:
    p = decide(fake_inventory(virtual_cpus=3), "mirrored")
    assert p.devices == ("/CPU:0", "/CPU:1", "/CPU:2")
    assert p.cross_device_ops == "reduce_to_one"
    assert p.num_replicas_in_sync == 3


def test_mirrored_on_one_cpu_explains_how_to_split() -> None:
    p = decide(fake_inventory(), "mirrored")
    assert p.num_replicas_in_sync == 1
    assert "configure_cpus(virtual_devices=N)" in " ".join(p.reasons)


def test_auto_on_cpu_with_virtual_devices_stays_default_and_says_how_to_mirror() -> None:
    p = decide(fake_inventory(virtual_cpus=2))
    assert p.kind == "default"
    assert "pick_strategy('mirrored')" in " ".join(p.reasons)


def test_explicit_devices() -> None:
    p = decide(fake_inventory(gpus=4), devices=["GPU:1", "/device:GPU:3"])
    assert (p.kind, p.devices) == ("mirrored", ("/GPU:1", "/GPU:3"))
    assert decide(fake_inventory(gpus=4), "one_device", devices=["/gpu:2"]).devices == ("/GPU:2",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "gpu"}, ValueError, "expected one of auto, default, one_device"),
        ({"kind": 3}, ValueError, "unknown strategy kind"),
        ({"devices": "/GPU:0"}, TypeError, "list of device names"),
        ({"devices": []}, ValueError, "empty"),
        ({"devices": ["/GPU:9"]}, tfplace.DeviceNotFoundError, "visible devices: /GPU:0"),
        ({"devices": ["/CPU:1"]}, tfplace.DeviceNotFoundError, "virtual_devices"),
        ({"devices": ["gpu zero"]}, ValueError, "cannot read the device name"),
        ({"devices": [0]}, TypeError, "strings"),
        ({"devices": ["/GPU:0", "GPU:0"]}, ValueError, "twice"),
        ({"kind": "default", "devices": ["/GPU:0"]}, ValueError, "only apply"),
        ({"kind": "one_device", "devices": ["/GPU:0", "/CPU:0"]}, ValueError, "exactly one"),
        ({"cross_device_ops": "fast"}, ValueError, "unknown cross_device_ops"),
        ({"cluster": {"worker": []}}, TypeError, "ClusterSpec"),
    ],
)
def test_bad_requests(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    kind = kwargs.pop("kind", "auto")
    with pytest.raises(error, match=match):
        decide(fake_inventory(gpus=1), kind, **kwargs)  # type: ignore[arg-type]


def test_cross_device_ops_override() -> None:
    p = decide(fake_inventory(gpus=2), cross_device_ops="reduce_to_one")
    assert p.cross_device_ops == "reduce_to_one"
    assert "cross_device_ops='reduce_to_one' was requested" in p.reasons


def test_a_requested_reduction_is_kept_with_one_replica_too() -> None:
    # It used to be dropped silently when there was one replica.
    p = decide(fake_inventory(), "mirrored", cross_device_ops="hierarchical_copy")
    assert (p.num_replicas_in_sync, p.cross_device_ops) == (1, "hierarchical_copy")


@pytest.mark.parametrize(
    ("inv_kwargs", "kind", "ops", "match"),
    [
        ({"gpus": 2}, "mirrored", "ring", r"'ring' is for 'multi_worker'"),
        ({"gpus": 2}, "mirrored", "auto", "takes one of nccl, hierarchical_copy, reduce_to_one"),
        ({"tf_config": TWO_WORKERS}, "auto", "hierarchical_copy", "is for 'mirrored'"),
        ({"tf_config": TWO_WORKERS}, "auto", "reduce_to_one", "takes one of ring, nccl, auto"),
        ({"gpus": 1}, "auto", "nccl", "one_device' strategy, which runs one replica"),
        ({}, "default", "ring", "takes no cross_device_ops"),
        ({"virtual_cpus": 2}, "mirrored", "nccl", "needs GPU replicas and NCCL"),
        ({"gpus": 2, "platform": "win32"}, "mirrored", "nccl", "no NCCL on this platform"),
        ({"tf_config": TWO_WORKERS}, "auto", "nccl", "needs GPU replicas"),
    ],
)
def test_reductions_a_kind_cannot_build_are_refused(
    inv_kwargs: dict[str, object], kind: str, ops: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        decide(fake_inventory(**inv_kwargs), kind, cross_device_ops=ops)  # type: ignore[arg-type]


def test_every_plan_has_a_reduction_of_its_kind_or_none() -> None:
    invs = [fake_inventory(gpus=n) for n in (0, 1, 2)] + [fake_inventory(tf_config=TWO_WORKERS)]
    for inv in invs:
        for kind in ("auto", "default", "one_device", "mirrored", "multi_worker"):
            p = decide(inv, kind)
            if REDUCTIONS[p.kind]:
                assert p.cross_device_ops in REDUCTIONS[p.kind], (kind, p)
            else:
                assert p.cross_device_ops is None, (kind, p)


def test_tpu_plan_carries_the_address_and_needs_a_fresh_runtime() -> None:
    p = decide(fake_inventory(tpu=True))
    assert p.kind == "tpu" and p.devices == () and p.needs_fresh_runtime
    assert p.tpu_address == "fake-tpu" == p.to_dict()["tpu_address"]
    assert "the TPU 'fake-tpu'" in p.summary()
    assert decide(fake_inventory(gpus=2)).needs_fresh_runtime is False
    assert decide(fake_inventory(tf_config=TWO_WORKERS)).needs_fresh_runtime is True


def test_explicit_cluster_argument_beats_the_environment() -> None:
    spec = ClusterSpec(
        jobs=(("worker", ("h1:1", "h2:1", "h3:1")),),
        task_type="worker",
        task_index=2,
        source="argument",
    )
    p = decide(fake_inventory(tf_config=TWO_WORKERS), cluster=spec)
    assert p.num_replicas_in_sync == 3


def test_plan_reads_the_substituted_inventory() -> None:
    with use_inventory(fake_inventory(gpus=2)):
        assert tfplace.plan().kind == "mirrored"
    with pytest.raises(TypeError):
        tfplace.plan(inventory={"gpus": 2})  # type: ignore[arg-type]


def test_plan_to_dict_is_json() -> None:
    p = decide(fake_inventory(tf_config=TWO_WORKERS))
    data = json.loads(json.dumps(p.to_dict()))
    assert data["kind"] == "multi_worker"
    assert data["cluster"]["task"] == {"type": "worker", "index": 1}
    assert "multi_worker on /CPU:0 (2 replica(s), ring reduction)" in p.summary()


def test_priority_table_order_and_docs_agree() -> None:
    assert [r.kind for r in PRIORITY] == [
        "tpu",
        "multi_worker",
        "mirrored",
        "one_device",
        "default",
    ]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "strategies.md").read_text()
    rows = re.findall(r"^\| (\d) \| `(\w+)` \| (.+?) \|", doc, flags=re.M)
    assert [(int(n), k, c) for n, k, c in rows] == [
        (i + 1, r.kind, r.condition) for i, r in enumerate(PRIORITY)
    ]


def test_replica_counts_must_agree_across_slurm_tasks() -> None:
    slurm = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "gpu[1-2]",
        "SLURM_TASKS_PER_NODE": "1(x2)",
        "SLURM_GPUS_ON_NODE": "4",
    }
    assert decide(fake_inventory(gpus=4, slurm=slurm)).num_replicas_in_sync == 8
    with pytest.raises(tfplace.ClusterConfigError, match="group_size") as info:
        decide(fake_inventory(gpus=2, slurm=slurm))
    assert "each task 4 GPU(s) but this worker sees 2" in str(info.value)
    cpu_only = {k: v for k, v in slurm.items() if k != "SLURM_GPUS_ON_NODE"}
    assert decide(fake_inventory(slurm=cpu_only)).num_replicas_in_sync == 2


def test_an_explicit_port_reaches_the_planned_slurm_cluster() -> None:
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_TASKS_PER_NODE": "1(x2)",
    }
    p = decide(fake_inventory(slurm=slurm), port=4200)
    assert p.cluster is not None and p.cluster.address == "n2:4200"
    assert tfplace.plan(inventory=fake_inventory(slurm=slurm), port=4200) == p
    with pytest.raises(ValueError, match="port must be an integer"):
        decide(fake_inventory(slurm=slurm), port=0)


def test_none_means_auto_wherever_a_kind_is_taken() -> None:
    inv = fake_inventory(gpus=2)
    assert decide(inv, None) == decide(inv, "auto")
    assert tfplace.plan(None, inventory=inv) == tfplace.plan(inventory=inv)
    with pytest.raises(ValueError, match="unknown strategy kind 'none'"):
        decide(inv, "none")  # only None itself, not a string that looks like it


def test_a_fallback_from_the_request_is_named_in_the_plan() -> None:
    alone = decide(fake_inventory(), "multi_worker")
    assert alone.fallbacks == (
        "multi_worker was asked for, but no cluster is configured: this process trains "
        "alone, as a one-worker cluster",
    )
    one = decide(fake_inventory(), "mirrored")  # one CPU device, no GPU
    assert len(one.fallbacks) == 1 and "one replica" in one.fallbacks[0]
    assert one.to_dict()["fallbacks"] == list(one.fallbacks)
    # what was asked is what is given: no fallback
    assert decide(fake_inventory(tf_config=TWO_WORKERS), "multi_worker").fallbacks == ()
    assert decide(fake_inventory(virtual_cpus=2), "mirrored").fallbacks == ()
    assert decide(fake_inventory(), "auto").fallbacks == ()
    assert decide(fake_inventory(), "mirrored", devices=["/CPU:0"]).fallbacks == ()


def test_a_plan_prints_as_its_summary_then_each_reason() -> None:
    p = decide(fake_inventory(), "multi_worker")
    text = str(p)
    lines = text.splitlines()
    assert lines[0] == p.summary()
    assert lines[1:-1] == [f"  - {r}" for r in p.reasons[1:]]
    assert lines[-1] == f"  fallback: {p.fallbacks[0]}"
    assert "Plan(" not in text
    assert str(decide(fake_inventory(gpus=2))).count("\n") == 2  # three reasons, no fallback
