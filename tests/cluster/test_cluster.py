"""TF_CONFIG and SLURM parsing: every malformed input is a ClusterConfigError."""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import tfplace
from tfplace._facts.cluster.env import from_env
from tfplace._facts.cluster.slurm import parse_slurm
from tfplace._facts.cluster.spec import ClusterSpec, check_host, parse_tf_config
from tfplace.errors import ClusterConfigError, TfplaceWarning

pytestmark = pytest.mark.pure


def tfc(cluster: Any, task: Any = None) -> str:
    doc: dict[str, Any] = {"cluster": cluster}
    doc["task"] = task if task is not None else {"type": "worker", "index": 0}
    return json.dumps(doc)


def test_valid_config() -> None:
    spec = parse_tf_config(
        tfc({"worker": ["w0:2222", "w1:2222"], "chief": ["c:2222"]}, {"type": "worker", "index": 1})
    )
    assert spec is not None
    assert spec.jobs[0] == ("chief", ("c:2222",))  # stable order: chief first
    assert spec.num_workers == 3
    assert spec.address == "w1:2222"
    assert not spec.is_chief
    assert json.loads(spec.to_tf_config())["task"] == {"type": "worker", "index": 1}


def test_worker_zero_is_chief_without_a_chief_task() -> None:
    spec = parse_tf_config(tfc({"worker": ["a:1", "b:1"]}))
    assert spec is not None and spec.is_chief


def test_empty_or_unset_means_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_tf_config("") is None
    assert parse_tf_config("   ") is None
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert parse_tf_config() is None
    monkeypatch.setenv("TF_CONFIG", tfc({"worker": ["a:1"]}))
    spec = parse_tf_config()
    assert spec is not None and spec.num_workers == 1


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("{nope", "JSON"),
        ("[1, 2]", "top level"),
        ('{"task": {"type": "worker"}}', "cluster"),
        ('{"cluster": {"worker": ["a:1"]}}', "task"),
        (tfc({}), "cluster"),
        (tfc({"worker": "a:1"}), "cluster.worker"),
        (tfc({"worker": {"0": "a:1"}}), "cluster.worker"),
        (tfc({"worker": []}), "cluster.worker"),
        (tfc({"worker": ["a"]}), "cluster.worker[0]"),
        (tfc({"worker": ["a:"]}), "cluster.worker[0]"),
        (tfc({"worker": ["a:99999"]}), "cluster.worker[0]"),
        (tfc({"worker": ["a b:1"]}), "cluster.worker[0]"),
        (tfc({"worker": [12]}), "cluster.worker[0]"),
        (tfc({"worker": ["a:1", "a:1"]}), "cluster.worker[1]"),
        (tfc({"ps": ["a:1"]}, {"type": "ps", "index": 0}), "cluster"),
        (tfc({"chief": ["a:1", "b:1"]}, {"type": "chief"}), "cluster.chief"),
        (tfc({"worker": ["a:1"]}, "worker"), "task"),
        (tfc({"worker": ["a:1"]}, {"type": "chief", "index": 0}), "task.type"),
        (tfc({"worker": ["a:1"]}, {"type": 1, "index": 0}), "task.type"),
        (tfc({"worker": ["a:1"]}, {"type": "worker", "index": 1}), "task.index"),
        (tfc({"worker": ["a:1"]}, {"type": "worker", "index": -1}), "task.index"),
        (tfc({"worker": ["a:1"]}, {"type": "worker", "index": "x"}), "task.index"),
        (tfc({"worker": ["a:1"]}, {"type": "worker", "index": True}), "task.index"),
        (tfc({"worker": ["a:1"]}, {"type": "worker", "index": 0.5}), "task.index"),
    ],
)
def test_malformed_values_name_tf_config_and_the_field(value: str, field: str) -> None:
    with pytest.raises(ClusterConfigError) as info:
        parse_tf_config(value)
    assert str(info.value).startswith(f"TF_CONFIG: {field}:")


def test_index_as_digit_string_is_accepted() -> None:
    spec = parse_tf_config(tfc({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": "1"}))
    assert spec is not None and spec.task_index == 1


def test_ipv6_addresses() -> None:
    spec = parse_tf_config(tfc({"worker": ["[fd00::1]:2222", "[fe80::1]:2222"]}))
    assert spec is not None and spec.num_workers == 2


def test_localhost_in_a_multi_host_cluster_warns() -> None:
    with pytest.warns(TfplaceWarning, match="spans several hosts"):
        parse_tf_config(tfc({"worker": ["localhost:1", "node2:1"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_tf_config(tfc({"worker": ["localhost:1", "localhost:2"]}))  # one host: fine


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["cluster", "task", "worker", "chief", "ps", "type", "index", "evaluator"]
            )
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_raises_cluster_config_error(value: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfplaceWarning)
        with contextlib.suppress(ClusterConfigError):
            parse_tf_config(json.dumps(value))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_cluster_config_error(value: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfplaceWarning)
        with contextlib.suppress(ClusterConfigError):
            parse_tf_config(value)


# ------------------------------------------------------------------------------- SLURM

SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "42",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_GPUS_ON_NODE": "2",
}


def test_slurm_two_nodes_two_tasks_each() -> None:
    spec = parse_slurm(SLURM_TWO_NODES, port=8888)
    assert spec is not None
    assert spec.addresses("worker") == ("gpu07:8888", "gpu07:8889", "gpu08:8888", "gpu08:8889")
    assert spec.task_index == 1
    assert spec.gpus_per_worker == 1
    assert spec.source == "SLURM"


def test_slurm_cpu_only_nodes_work() -> None:
    # TensorFlow's SlurmClusterResolver(gpus_per_node=0) fails here with
    # "range() arg 3 must not be zero" (TF#56894).
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "3",
        "SLURM_JOB_NODELIST": "cpu1,cpu2,cpu3",
        "SLURM_TASKS_PER_NODE": "1(x3)",
    }
    spec = parse_slurm(env, port=2000)
    assert spec is not None
    assert spec.addresses("worker") == ("cpu1:2000", "cpu2:2000", "cpu3:2000")
    assert spec.gpus_per_worker is None  # SLURM names no GPUs: nothing to check
    assert spec.is_chief
    zero = parse_slurm({**env, "SLURM_GPUS_ON_NODE": "0"})
    assert zero is not None and zero.gpus_per_worker == 0


def test_slurm_uneven_tasks_and_ranges() -> None:
    env = {
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "3",
        "SLURM_JOB_NODELIST": "n[1,3-4]",
        "SLURM_TASKS_PER_NODE": "1,1,1",
    }
    spec = parse_slurm(env)
    assert spec is not None and spec.address == "n4:8888"


def test_slurm_single_task_or_no_slurm_is_no_cluster() -> None:
    assert parse_slurm({}) is None
    assert parse_slurm({**SLURM_TWO_NODES, "SLURM_NTASKS": "1"}) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"SLURM_PROCID": "x"}, "SLURM_PROCID"),
        ({"SLURM_PROCID": "9"}, "SLURM_PROCID"),
        ({"SLURM_TASKS_PER_NODE": "3(x2)"}, "SLURM_TASKS_PER_NODE"),
        ({"SLURM_TASKS_PER_NODE": "two"}, "SLURM_TASKS_PER_NODE"),
        ({"SLURM_JOB_NODELIST": "n[a-b]"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_NTASKS": "many"}, "SLURM_NTASKS"),
    ],
)
def test_slurm_errors_name_the_variable(change: dict[str, str], field: str) -> None:
    with pytest.raises(ClusterConfigError, match=f"SLURM: {field}"):
        parse_slurm({**SLURM_TWO_NODES, **change})


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(SLURM_TWO_NODES), "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS"]),
        st.text(alphabet="0123456789,-[]()xabn:", max_size=12),
    )
)
def test_any_slurm_environment_parses_or_raises_cluster_config_error(env: dict[str, str]) -> None:
    with contextlib.suppress(ClusterConfigError):
        parse_slurm(env)


def test_public_names() -> None:
    assert tfplace.parse_tf_config is parse_tf_config
    assert tfplace.parse_slurm is parse_slurm


def test_mapping_with_a_non_string_task_type_name() -> None:
    from tfplace._facts.cluster.spec import from_mapping

    with pytest.raises(ClusterConfigError, match="task type names must be strings"):
        from_mapping({"cluster": {1: ["a:1"]}, "task": {"type": "worker"}})


def test_slurm_huge_ranges_and_bad_ports_are_refused() -> None:
    env = {**SLURM_TWO_NODES, "SLURM_JOB_NODELIST": "n[1-999999]"}
    with pytest.raises(ClusterConfigError, match="too large"):
        parse_slurm(env)
    with pytest.raises(ValueError, match="port"):
        parse_slurm(SLURM_TWO_NODES, port=0)


# ------------------------------------------------------------------- hosts and ClusterSpec


@pytest.mark.parametrize(
    ("host", "written"),
    [
        ("10.0.0.2", "10.0.0.2"),
        ("fd00::2", "[fd00::2]"),
        ("[fd00::2]", "[fd00::2]"),
        ("::1", "[::1]"),
        ("node-2", "node-2"),
        ("node-2.example.org", "node-2.example.org"),
        ("worker-0.train.svc.cluster.local.", "worker-0.train.svc.cluster.local."),
    ],
)
def test_valid_hosts_are_written_as_in_an_address(host: str, written: str) -> None:
    assert check_host(host) == written


@pytest.mark.parametrize(
    "host",
    [
        "bad host",
        "",
        "-node",
        "node-",
        "999.1.2.3",
        "1.2.3",
        "a..b",
        "x" * 64,
        "nöde",
        "[10.0.0.2]",
        "[node]",
        "grpc://node",
        "node:2222",
        2222,
        None,
    ],
)
def test_invalid_hosts_say_expected_found_and_fix(host: object) -> None:
    with pytest.raises(ClusterConfigError) as info:
        check_host(host, "somewhere", "hosts[3]")
    message = str(info.value)
    assert message.startswith("somewhere: hosts[3]: ")
    assert repr(host) in message
    assert "expected" in message
    if isinstance(host, str) and host:
        assert "Fix:" in message


@pytest.mark.parametrize(
    ("address", "hint"),
    [
        ("fd00::1:2222", '"[fd00::1]:2222"'),  # IPv6 without brackets is ambiguous
        ("grpc://node:2222", '"node:2222"'),
        ("[10.0.0.1]:2222", "IPv6 address inside the brackets"),
        ("bad host:2222", "found 'bad host'"),
        ("node:0", "port from 1 to 65535"),
        ("node:65536", "port from 1 to 65535"),
    ],
)
def test_tf_config_addresses_are_validated_with_a_fix(address: str, hint: str) -> None:
    with pytest.raises(ClusterConfigError, match=r"^TF_CONFIG: cluster\.worker\[0\]: ") as info:
        parse_tf_config(tfc({"worker": [address]}))
    assert hint in str(info.value)


def test_ports_are_compared_as_numbers_for_duplicates() -> None:
    with pytest.raises(ClusterConfigError, match="duplicate"):
        parse_tf_config(tfc({"worker": ["a:2222", "a:02222"]}))
    spec = parse_tf_config(tfc({"worker": ["[fd00::1]:1", "[fd00::1]:65535"]}))
    assert spec is not None and spec.addresses("worker") == ("[fd00::1]:1", "[fd00::1]:65535")


def test_cluster_from_hosts_and_every_task_of_it() -> None:
    spec = ClusterSpec.from_hosts(["node1", "node2:3000", "fd00::2", "[fd00::3]:4000"], port=5)
    assert spec.addresses("worker") == ("node1:5", "node2:3000", "[fd00::2]:5", "[fd00::3]:4000")
    assert (spec.task_type, spec.task_index, spec.source) == ("worker", 0, "host list")
    tasks = [spec.for_task(i) for i in range(spec.num_workers)]
    assert [t.address for t in tasks] == list(spec.addresses("worker"))
    assert [t.is_chief for t in tasks] == [True, False, False, False]
    again = [parse_tf_config(t.to_tf_config()) for t in tasks]
    assert again == [replace(t, source="TF_CONFIG") for t in tasks]  # round trip


def test_from_hosts_refuses_bad_input_with_the_entry_named() -> None:
    with pytest.raises(ClusterConfigError, match=r"^host list: hosts\[1\]: found 'bad host'"):
        ClusterSpec.from_hosts(["node1", "bad host"])
    with pytest.raises(ClusterConfigError, match=r"^host list: port: .* found 0"):
        ClusterSpec.from_hosts(["node1"], port=0)
    with pytest.raises(ClusterConfigError, match=r"^host list: port: .* found True"):
        ClusterSpec.from_hosts(["node1"], port=True)
    with pytest.raises(ValueError, match="non-empty list of hosts"):
        ClusterSpec.from_hosts("node1")
    with pytest.raises(TypeError, match=r"hosts\[0\]"):
        ClusterSpec.from_hosts([7])  # type: ignore[list-item]


def test_local_cluster_on_one_host() -> None:
    spec = ClusterSpec.local([2222, 2223], host="::1")
    assert spec.addresses("worker") == ("[::1]:2222", "[::1]:2223")
    assert spec.source == "tfplace launch"
    with pytest.raises(ClusterConfigError, match=r"^tfplace launch: host: found 'bad host'"):
        ClusterSpec.local([2222], host="bad host")
    with pytest.raises(ClusterConfigError, match=r"ports\[1\]: expected a port .* 70000"):
        ClusterSpec.local([2222, 70000])
    with pytest.raises(ClusterConfigError, match="duplicate"):
        ClusterSpec.local([2222, 2222])


def test_for_task_refuses_a_task_the_cluster_lacks() -> None:
    spec = ClusterSpec.from_hosts(["a", "b"])
    with pytest.raises(ClusterConfigError, match=r"task\.index: 2 is out of range"):
        spec.for_task(2)
    with pytest.raises(ClusterConfigError, match=r"task\.type: 'chief' is not in the cluster"):
        spec.for_task(0, "chief")


def test_from_env_prefers_tf_config_then_slurm() -> None:
    two = tfc({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1})
    slurm = {**SLURM_TWO_NODES, "SLURM_PROCID": "0"}
    from_tf = from_env({**slurm, "TF_CONFIG": two})
    assert from_tf is not None and (from_tf.source, from_tf.task_index) == ("TF_CONFIG", 1)
    blank = from_env({**slurm, "TF_CONFIG": "  "})  # an empty TF_CONFIG does not hide SLURM
    assert blank is not None and (blank.source, blank.task_index) == ("SLURM", 0)
    assert from_env({}) is None
    with pytest.raises(ClusterConfigError, match=r"^TF_CONFIG: JSON"):
        from_env({"TF_CONFIG": "{"})
