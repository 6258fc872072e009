"""SLURM: the parser against SLURM's documented values, and Keras training under a real srun/sbatch.

The real tests start one single-node SLURM (munged + slurmctld + slurmd, all state in a
temporary directory, see ``slurm_cluster.py``) for the module, and stop it afterwards by PID
file, checking that nothing of it is left running. They are skipped, saying why, where the
SLURM programs are absent or the suite does not run as root; ``.ci/run`` installs them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_json, skip_or_fail
from slurm_cluster import SlurmCluster, missing_binaries

import tfplace
from tfplace._decide.strategy import cluster_of
from tfplace._facts.cluster.env import from_env
from tfplace._facts.cluster.slurm import (
    _PORT_BLOCK,
    _PORT_BLOCKS,
    parse_slurm,
    reserved_ports,
    slurm_port,
    step_ports,
    task_nodes,
)
from tfplace._strategy import build_strategy
from tfplace.cluster._launch import free_ports
from tfplace.errors import ClusterConfigError, TfplaceWarning
from tfplace.testing import fake_inventory

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ the parser (pure, fast)


def step(**variables: str) -> dict[str, str]:
    """A task's environment under srun: job and step ids, plus the given variables."""
    return {"SLURM_JOB_ID": "5000", "SLURM_STEP_ID": "0", **variables}


def addresses(env: dict[str, str], port: int = 2000) -> tuple[str, ...]:
    spec = parse_slurm(env, port=port)
    assert spec is not None
    return spec.addresses("worker")


def test_documented_tasks_per_node_form_with_block_and_cyclic_placement() -> None:
    # srun(1): SLURM_TASKS_PER_NODE=2(x3),1 "indicates that the first three nodes will each
    # execute two tasks and the fourth node will execute one task"; with the node list
    # gpu[01-03,07] those are gpu01, gpu02, gpu03 and gpu07.
    env = step(
        SLURM_PROCID="0",
        SLURM_STEP_NUM_TASKS="7",
        SLURM_STEP_NODELIST="gpu[01-03,07]",
        SLURM_STEP_TASKS_PER_NODE="2(x3),1",
    )
    block = ("gpu01:2000", "gpu01:2001", "gpu02:2000", "gpu02:2001", "gpu03:2000", "gpu03:2001")
    assert addresses(env) == (*block, "gpu07:2000")
    assert addresses({**env, "SLURM_DISTRIBUTION": "block"}) == (*block, "gpu07:2000")
    # cyclic: "consecutive tasks are distributed over consecutive nodes (in a round-robin
    # fashion)", among the nodes that still have tasks to get.
    cyclic = addresses({**env, "SLURM_DISTRIBUTION": "cyclic"})
    assert cyclic == (
        "gpu01:2000",
        "gpu02:2000",
        "gpu03:2000",
        "gpu07:2000",
        "gpu01:2001",
        "gpu02:2001",
        "gpu03:2001",
    )
    # the second and third levels (after ":") place CPUs, not tasks; ",Pack" neither
    assert addresses({**env, "SLURM_DISTRIBUTION": "cyclic:block,Pack"}) == cyclic
    assert addresses({**env, "SLURM_DISTRIBUTION": "*:cyclic"}) == (*block, "gpu07:2000")


def test_the_man_pages_three_node_examples() -> None:
    # srun(1) -m: "an allocation of three nodes each with two cpus. A four-task block
    # distribution request will distribute those tasks to the nodes with tasks one and two on
    # the first node, task three on the second node, and task four on the third node"; a
    # cyclic one puts "tasks one and four on the first node, task two on the second node, and
    # task three on the third node".
    assert task_nodes([2, 1, 1], chunk=4) == [0, 0, 1, 2]
    assert task_nodes([2, 1, 1], chunk=1) == [0, 1, 2, 0]
    env = step(
        SLURM_PROCID="3",
        SLURM_STEP_NUM_TASKS="4",
        SLURM_STEP_NODELIST="n[1-3]",
        SLURM_STEP_TASKS_PER_NODE="2,1(x2)",
        SLURM_DISTRIBUTION="cyclic",
    )
    spec = parse_slurm(env, port=2000)
    assert spec is not None
    assert spec.addresses("worker") == ("n1:2000", "n2:2000", "n3:2000", "n1:2001")
    assert spec.address == "n1:2001"  # task four shares the first node with task one


def test_plane_distribution_places_blocks_round_robin() -> None:
    # "plane": "the tasks are distributed in blocks of size <size>"; "the number of tasks
    # distributed to each node is the same as for cyclic distribution".
    assert task_nodes([4, 4], chunk=2) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert task_nodes([3, 1], chunk=2) == [0, 0, 1, 0]
    env = step(
        SLURM_PROCID="2",
        SLURM_STEP_NUM_TASKS="4",
        SLURM_STEP_NODELIST="a,b",
        SLURM_STEP_TASKS_PER_NODE="3,1",
        SLURM_DISTRIBUTION="plane=2",
    )
    assert addresses(env) == ("a:2000", "a:2001", "b:2000", "a:2002")
    planesize = {**env, "SLURM_DISTRIBUTION": "plane", "SLURM_DIST_PLANESIZE": "2"}
    assert addresses(planesize) == addresses(env)


@pytest.mark.parametrize(
    ("distribution", "message"),
    [
        ("arbitrary", "SLURM_HOSTFILE"),
        ("plane", "plane size"),
        ("zigzag", "expected block, cyclic"),
    ],
)
def test_distributions_tfplace_cannot_place_are_clear_errors(
    distribution: str, message: str
) -> None:
    env = step(
        SLURM_PROCID="0",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_NODELIST="n[1-2]",
        SLURM_STEP_TASKS_PER_NODE="1(x2)",
        SLURM_DISTRIBUTION=distribution,
    )
    with pytest.raises(ClusterConfigError, match=f"SLURM: SLURM_DISTRIBUTION: .*{message}"):
        parse_slurm(env)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("login1,cn[8-10]", ["login1", "cn8", "cn9", "cn10"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("a[009-011]b", ["a009b", "a010b", "a011b"]),
    ],
)
def test_node_lists(nodelist: str, hosts: list[str]) -> None:
    env = step(
        SLURM_PROCID="0",
        SLURM_STEP_NUM_TASKS=str(len(hosts)),
        SLURM_STEP_NODELIST=nodelist,
        SLURM_STEP_TASKS_PER_NODE=f"1(x{len(hosts)})",
    )
    assert addresses(env) == tuple(f"{h}:2000" for h in hosts)


@pytest.mark.parametrize("nodelist", ["n[1-2", "n]1[", "n[1-2]]", "n[x]"])
def test_malformed_node_lists_name_the_variable(nodelist: str) -> None:
    env = step(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST=nodelist)
    with pytest.raises(ClusterConfigError, match="SLURM: SLURM_STEP_NODELIST"):
        parse_slurm(env)


def test_step_variables_win_over_the_jobs() -> None:
    # a step may use part of the job: 2 of the job's 4 tasks, on its second node only
    env = step(
        SLURM_PROCID="1",
        SLURM_NTASKS="4",
        SLURM_JOB_NODELIST="n[1-2]",
        SLURM_TASKS_PER_NODE="2(x2)",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_NODELIST="n2",
        SLURM_STEP_TASKS_PER_NODE="2",
    )
    assert addresses(env) == ("n2:2000", "n2:2001")


def test_every_task_of_a_step_derives_the_same_cluster() -> None:
    # no task talks to another to agree on the ports: they all read the same job and step
    base = step(SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="n[1-2]")
    base["SLURM_STEP_TASKS_PER_NODE"] = "2(x2)"
    specs = [parse_slurm({**base, "SLURM_PROCID": str(i)}) for i in range(4)]
    assert all(s is not None for s in specs)
    clusters = {s.jobs for s in specs if s is not None}
    assert len(clusters) == 1
    assert [s.task_index for s in specs if s is not None] == [0, 1, 2, 3]
    first = slurm_port(base)
    assert specs[0] is not None
    assert specs[0].addresses("worker") == (
        f"n1:{first}",
        f"n1:{first + 1}",
        f"n2:{first}",
        f"n2:{first + 1}",
    )


def test_derived_ports_differ_between_nearby_jobs_and_steps_and_stay_in_range() -> None:
    ports = {
        slurm_port({"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": str(s)})
        for job in range(90_000, 90_040)
        for s in range(4)
    }
    assert len(ports) == 40 * 4  # no two of these steps share a block
    starts = sorted(ports)
    assert all(b - a >= 32 for a, b in itertools.pairwise(starts))  # 32 tasks/node
    for job in ("1", "4294967295", "12345_7", "abc"):  # array-job ids are not always numbers
        for env in ({"SLURM_JOB_ID": job}, {"SLURM_JOBID": job, "SLURM_STEPID": "3"}):
            assert 10_000 <= slurm_port(env) <= 32_768 - 32  # below Linux's ephemeral ports


def windows(jobs: range, steps: range, tasks: int = 1) -> dict[tuple[int, int], range]:
    """The ports each (job, step) derives for ``tasks`` tasks on a node."""
    out = {}
    for job in jobs:
        for s in steps:
            env = {"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": str(s)}
            first = slurm_port(env, tasks_per_node=tasks)
            out[job, s] = range(first, first + tasks)
    return out


def overlapping(found: dict[tuple[int, int], range]) -> list[tuple[Any, Any]]:
    spans = sorted((w.start, w.stop, key) for key, w in found.items())
    return [(a[2], b[2]) for a, b in itertools.pairwise(spans) if b[0] < a[1]]


def test_many_steps_of_nearby_jobs_never_share_ports() -> None:
    # before: blocks 16 * job + step, so step 16 of a job was step 0 of the next job
    assert slurm_port({"SLURM_JOB_ID": "700", "SLURM_STEP_ID": "16"}) != slurm_port(
        {"SLURM_JOB_ID": "701", "SLURM_STEP_ID": "0"}
    )
    # 64 steps of each of 11 consecutive jobs, 32 tasks a node: 704 blocks, no two alike
    found = windows(range(5000, 5011), range(64), tasks=32)
    assert overlapping(found) == []
    # one job's steps never share a block, however many (up to the 711 blocks)
    assert overlapping(windows(range(77, 78), range(_PORT_BLOCKS))) == []
    assert all(w.start >= 10_000 and w.stop <= 32_768 for w in found.values())


def test_the_docs_claim_only_what_derived_ports_hold() -> None:
    """Jobs far apart can derive the same ports (1000 and 1711 at step 0, 711 blocks apart):
    the README and the Clusters page say so and name the check that catches it (issue 26.8)."""
    first = [slurm_port({"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0"}) for job in ("1000", "1711")]
    assert first[0] == first[1]
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    clusters = (root / "docs" / "clusters.md").read_text()
    assert "cannot collide between" not in readme
    assert "jobs far apart can\n  derive the same ones" in readme
    assert "Jobs far apart can\nstill land on the same ports by chance" in clusters


def test_more_than_32_tasks_on_a_node_get_distinct_ports_in_range() -> None:
    env = step(
        SLURM_PROCID="39",
        SLURM_STEP_NUM_TASKS="40",
        SLURM_STEP_NODELIST="n1",
        SLURM_STEP_TASKS_PER_NODE="40",
    )
    spec = parse_slurm(env)
    assert spec is not None
    ports = [int(a.rpartition(":")[2]) for a in spec.addresses("worker")]
    assert len(set(ports)) == 40 and ports == list(range(ports[0], ports[0] + 40))
    assert ports[0] == slurm_port(env, tasks_per_node=40)
    # a wide step stays in range wherever its job puts it, and lands on whole blocks
    for job in range(0, 5000, 7):
        for tasks in (33, 64, 100, 1000):
            first = slurm_port({"SLURM_JOB_ID": str(job)}, tasks_per_node=tasks)
            assert (
                first >= 10_000 and first + tasks <= 32_768 and (first - 10_000) % _PORT_BLOCK == 0
            )
    # a wide step of one job does not reach the first 63 steps of the next jobs
    wide = windows(range(900, 901), range(1), tasks=64)
    assert overlapping({**wide, **windows(range(901, 905), range(63), tasks=32)}) == []


def test_ports_slurm_reserved_for_the_step_come_before_derived_ones() -> None:
    env = step(
        SLURM_PROCID="3",
        SLURM_STEP_NUM_TASKS="4",
        SLURM_STEP_NODELIST="n[1-2]",
        SLURM_STEP_TASKS_PER_NODE="2(x2)",
        SLURM_STEP_RESV_PORTS="12000,12005-12006",
    )
    assert reserved_ports(env) == (12000, 12005, 12006)
    assert addresses(env, port=None) == ("n1:12000", "n1:12005", "n2:12000", "n2:12005")  # type: ignore[arg-type]
    assert step_ports(env, 3000, 2) == (3000, 3001)  # an explicit port still wins
    assert step_ports({**env, "TFPLACE_PORT": "4000"}, None, 2) == (4000, 4001)
    with pytest.raises(ClusterConfigError, match=r"SLURM_STEP_RESV_PORTS.*--resv-ports=3"):
        parse_slurm({**env, "SLURM_STEP_RESV_PORTS": "12000", "SLURM_STEP_TASKS_PER_NODE": "3,1"})
    for bad in ("12000-11000", "x", "70000", "1-2-3"):
        with pytest.raises(ClusterConfigError, match="SLURM_STEP_RESV_PORTS: cannot read"):
            reserved_ports({"SLURM_STEP_RESV_PORTS": bad})


def test_a_port_in_use_on_this_node_is_refused_before_tensorflow_with_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        slurm = step(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="n[1-2]")
        decision = tfplace.plan(inventory=fake_inventory(slurm=slurm), port=port)
        assert decision.kind == "multi_worker" and decision.cluster is not None
        with pytest.raises(ClusterConfigError, match=f"port {port}.*listens there already") as e:
            build_strategy(decision)
    assert "--resv-ports" in str(e.value) and "TFPLACE_PORT" in str(e.value)


def test_explicit_port_argument_then_environment_variable_then_derived() -> None:
    env = step(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="n[1-2]")
    derived = slurm_port(env)
    assert addresses(env, port=3000) == ("n1:3000", "n2:3000")
    from_var = {**env, "TFPLACE_PORT": "4000"}
    assert from_env(from_var) is not None
    assert from_env(from_var).addresses("worker") == ("n1:4000", "n2:4000")  # type: ignore[union-attr]
    assert parse_slurm(from_var, port=3000).addresses("worker")[0] == "n1:3000"  # type: ignore[union-attr]
    spec = parse_slurm(env)
    assert spec is not None and spec.addresses("worker") == (f"n1:{derived}", f"n2:{derived}")
    with pytest.raises(ClusterConfigError, match=r"TFPLACE_PORT.*1 to 65535.*'99999'"):
        parse_slurm({**env, "TFPLACE_PORT": "99999"})
    for bad in (0, 70000, True, "2000"):
        with pytest.raises(ValueError, match="port must be an integer"):
            parse_slurm(env, port=bad)  # type: ignore[arg-type]
    crowded = {**env, "SLURM_STEP_NODELIST": "n1", "SLURM_STEP_TASKS_PER_NODE": "2"}
    with pytest.raises(ClusterConfigError, match="beyond 65535"):
        parse_slurm(crowded, port=65535)


def test_the_plan_and_pick_strategy_take_the_port() -> None:
    slurm = step(SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="n[1-2]")
    inv = fake_inventory(slurm=slurm, env={"TFPLACE_PORT": "4100"})
    spec = cluster_of(inv)
    assert spec is not None and spec.address == "n2:4100"
    chosen = cluster_of(inv, port=4200)
    assert chosen is not None and chosen.address == "n2:4200"
    plain = cluster_of(fake_inventory(slurm=slurm))
    assert plain is not None and plain.address == f"n2:{slurm_port(slurm)}"
    with pytest.raises(ValueError, match="port must be an integer"):
        tfplace.pick_strategy(port=0, inventory=inv)


def test_the_real_inventory_carries_tfplace_port(monkeypatch: pytest.MonkeyPatch) -> None:
    slurm = step(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="n[1-2]")
    for key, value in {**slurm, "TFPLACE_PORT": "4300"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    spec = cluster_of(tfplace.inventory())
    assert spec is not None and spec.address == "n1:4300"


def test_the_batch_script_of_a_multi_task_job_trains_alone_and_says_use_srun() -> None:
    # What sbatch -n2 gives the batch script (seen on a real slurmd): task 0 of the job,
    # no SLURM_STEP_* variable at all.
    batch = {
        "SLURM_JOB_ID": "31",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "vm",
        "SLURM_TASKS_PER_NODE": "2",
    }
    with pytest.warns(TfplaceWarning, match=r"batch script of job 31.*2 tasks.*srun python"):
        assert parse_slurm(batch) is None
    with pytest.warns(TfplaceWarning, match="srun"):
        assert tfplace.plan(inventory=fake_inventory(slurm=batch)).kind != "multi_worker"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_task = {**batch, "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1"}
        assert parse_slurm(one_task) is None  # a one-task job: nothing to start, no warning
        salloc_shell = {k: v for k, v in batch.items() if k != "SLURM_PROCID"}
        assert parse_slurm(salloc_shell) is None
    # the same job's srun step is a cluster
    srun_task = {**batch, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    srun_task.update(SLURM_STEP_NODELIST="vm", SLURM_STEP_TASKS_PER_NODE="2")
    spec = parse_slurm(srun_task)
    assert spec is not None and spec.num_workers == 2


# ------------------------------------------------------------- a real SLURM on this machine


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A single-node SLURM for this module; nothing of it is left running afterwards."""
    missing = missing_binaries()
    if missing:
        skip_or_fail(
            f"SLURM is not installed (missing {', '.join(missing)}); "
            "apt-get install slurm-wlm (CI's .ci/run does)"
        )
    if os.geteuid() != 0:
        skip_or_fail("starting slurmd needs root (CI runs as root)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        print(f"\nSLURM set-up: {cluster.setup_seconds:.2f} s", file=sys.stderr)
        yield cluster
    finally:
        left = cluster.stop()
    assert left == [], f"processes left running after the SLURM tests: {left}"


TRAIN = """
import json, os, time
import tfplace
if os.environ.get("REFERENCE") == "1":  # one process, 2 replicas on 2 virtual CPUs
    tfplace.configure_cpus(virtual_devices=2)
    strategy = tfplace.pick_strategy("mirrored")
else:
    port = os.environ.get("TEST_PORT")
    strategy = tfplace.pick_strategy(
        communication_timeout=60, startup_timeout=120, port=int(port) if port else None
    )
resolver = strategy.cluster_resolver
cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
meet = os.environ.get("TEST_MEET")
if meet:  # every worker of every job is up (its server bound) before any of them trains
    me = f"{os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_PROCID']}"
    open(os.path.join(meet, me), "w").close()
    deadline = time.time() + 90
    while len(os.listdir(meet)) < int(os.environ["TEST_MEET_COUNT"]) and time.time() < deadline:
        time.sleep(0.1)
import tiny  # tests/jobs/tiny.py, copied next to this script

model, history = tiny.fit(strategy)
print(json.dumps({
    **tiny.report(strategy, model, history),
    "cluster": cluster,
    "met": len(os.listdir(meet)) if meet else None,
    "procid": os.environ.get("SLURM_PROCID"),
}))
"""
#: The tests' one tiny job library, which TRAIN imports.
TINY = ROOT / "tests" / "jobs" / "tiny.py"


def write_train(folder: Path) -> None:
    """TRAIN as ``train.py`` in ``folder``, with the job library beside it."""
    (folder / "train.py").write_text(TRAIN)
    shutil.copy(TINY, folder)


#: Every SLURM test process sees no GPU, so that the workers' replicas are CPUs on any machine.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def job_env(**extra: str) -> dict[str, str]:
    """The environment a job inherits: this interpreter first on PATH, CPU only."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {"PATH": path, "PYTHONPATH": str(ROOT), **CPU_ONLY, **extra}


def last_json(path: Path) -> Any:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    assert lines, f"no result in {path}:\n{path.read_text()}"
    return json.loads(lines[-1])


def close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return bool(abs(a - b) <= tol * max(1.0, abs(b)))


def worker_ports(result: dict[str, Any]) -> list[int]:
    return [int(a.rpartition(":")[2]) for a in result["cluster"]["worker"]]


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free on this machine now."""
    for _ in range(50):
        port = free_ports(1)[0]
        with socket.socket() as s:
            try:
                s.bind(("", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports found")


@pytest.mark.slow
def test_srun_two_tasks_train_exactly_like_one_process_with_two_replicas(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    write_train(tmp_path)
    port = two_free_ports()
    proc = slurm.run(
        ["srun", "-n2", "-o", "out-%t.txt", "-e", "err-%t.txt", "python", "train.py"],
        env=job_env(TEST_PORT=str(port)),
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    errors = "".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("err-*.txt")))
    assert proc.returncode == 0, f"{proc.stderr}\n{errors}"
    workers = [last_json(tmp_path / f"out-{i}.txt") for i in range(2)]
    single = run_json(
        TRAIN,
        cpu_only=True,
        env={"REFERENCE": "1", "PYTHONPATH": str(TINY.parent), **dict.fromkeys(_SLURM_VARS)},
    )
    assert single["replicas"] == 2
    for i, w in enumerate(workers):
        assert w["procid"] == str(i)
        assert w["kind"] == "KerasMultiWorkerMirroredStrategy"
        assert w["replicas"] == 2
        assert worker_ports(w) == [port, port + 1]  # pick_strategy(port=...) was used
        assert w["loss"][-1] < w["loss"][0]
        assert close(w["loss"], single["loss"]), (w["loss"], single["loss"])
        assert close(w["weights"], single["weights"])


#: Variables a test process may inherit when the suite itself runs inside SLURM.
_SLURM_VARS = tuple(k for k in os.environ if k.startswith("SLURM_"))


@pytest.mark.slow
def test_the_batch_script_without_srun_trains_alone_within_seconds(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    write_train(tmp_path)
    (tmp_path / "job.sh").write_text("#!/bin/bash\npython train.py\n")
    start = time.monotonic()
    job = slurm.submit(
        ["-n2", "-o", "out.txt", "-e", "err.txt", "job.sh"], cwd=tmp_path, env=job_env()
    )
    state = slurm.wait(job, timeout=240)
    elapsed = time.monotonic() - start
    err = (tmp_path / "err.txt").read_text()
    assert state == ("COMPLETED", "0:0"), f"{state}\n{err[-3000:]}"
    # before: it built a 2-worker cluster and waited for a second worker that never starts,
    # until the start-up watchdog killed it (120 s here, 900 s by default)
    assert elapsed < 90, elapsed
    result = last_json(tmp_path / "out.txt")
    assert result["kind"] != "KerasMultiWorkerMirroredStrategy"
    assert result["cluster"] == {}
    assert result["loss"][-1] < result["loss"][0]  # it trained, alone
    assert re.search(r"TfplaceWarning: SLURM: .*batch script of job \d+.*srun python", err), err


@pytest.mark.slow
def test_two_jobs_on_one_node_at_the_same_time_both_train(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    write_train(tmp_path)
    (tmp_path / "job.sh").write_text(
        "#!/bin/bash\nsrun -o out-%j-%t.txt -e err-%j-%t.txt python train.py\n"
    )
    meet = tmp_path / "meet"
    meet.mkdir()
    env = job_env(TEST_MEET=str(meet), TEST_MEET_COUNT="4")
    job_ids = [slurm.submit(["-n2", "job.sh"], cwd=tmp_path, env=env) for _ in range(2)]
    states = [slurm.wait(job) for job in job_ids]
    errors = "".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("err-*.txt")))
    assert states == [("COMPLETED", "0:0")] * 2, f"{states}\n{errors}"
    results = {
        job: [last_json(tmp_path / f"out-{job}-{t}.txt") for t in range(2)] for job in job_ids
    }
    ports = {}
    for job, workers in results.items():
        for w in workers:
            assert w["met"] == 4  # all four workers were up at the same time
            assert w["replicas"] == 2 and w["loss"][-1] < w["loss"][0]
            assert close(w["weights"], workers[0]["weights"])
        ports[job] = worker_ports(workers[0])
        env_of_job = {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0"}
        first = slurm_port(env_of_job)
        assert ports[job] == [first, first + 1]  # derived from the job and step ids
    first_job, second_job = job_ids
    assert not set(ports[first_job]) & set(ports[second_job])


def clusters_page_sbatch_template() -> str:
    """The bash block of the "## SLURM" section of docs/clusters.md marked as the template."""
    page = (ROOT / "docs" / "clusters.md").read_text()
    section = page.split("\n## SLURM\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    templates = [b for b in blocks if b.startswith("#!/bin/bash\n#SBATCH")]
    assert len(templates) == 1, "the SLURM section shows one sbatch template"
    return str(templates[0])


@pytest.mark.slow
def test_the_docs_sbatch_template_runs_as_written(slurm: SlurmCluster, tmp_path: Path) -> None:
    template = clusters_page_sbatch_template()
    (tmp_path / "train.sbatch").write_text(template)
    shutil.copy(ROOT / "docs" / "examples" / "multi_worker_train.py", tmp_path / "train.py")
    job = slurm.submit(["train.sbatch"], cwd=tmp_path, env=job_env())
    state = slurm.wait(job)
    outputs = {p.name: p.read_text() for p in tmp_path.glob("*.out")}
    assert state == ("COMPLETED", "0:0"), f"{state}\n{outputs}"
    text = (tmp_path / f"train-{job}.out").read_text()
    assert sorted(re.findall(r"^(chief|worker): 2 replicas, final loss", text, re.M)) == [
        "chief",
        "worker",
    ], text
    assert (tmp_path / "out" / "model.keras").is_file()


PORT_PROBE = """
import json, os, socket, sys, time
from tfplace._facts.cluster.slurm import parse_slurm

spec = parse_slurm(os.environ)
port = int(spec.address.rpartition(":")[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:  # listen as TensorFlow's server would, on every interface
    server.bind(("", port))
    server.listen()
    bound = True
except OSError as err:
    bound = str(err)
meet = os.environ["TEST_MEET"]
me = "{}.{}.{}".format(os.environ["SLURM_JOB_ID"], os.environ["SLURM_STEP_ID"],
                       os.environ["SLURM_PROCID"])
with open(os.path.join(meet, me + ".tmp"), "w") as f:
    json.dump({"task": me, "port": port, "bound": bound, "workers": spec.num_workers}, f)
os.rename(os.path.join(meet, me + ".tmp"), os.path.join(meet, me))
def arrived():
    return len([n for n in os.listdir(meet) if not n.endswith(".tmp")])

deadline = time.time() + 120  # hold the port until every task of every job holds its own
while arrived() < int(os.environ["TEST_COUNT"]) and time.time() < deadline:
    time.sleep(0.1)
print("met", arrived(), flush=True)
"""


def outputs_full(folder: Path) -> str:
    """Everything the jobs of a test wrote to their ``out-*.txt`` files."""
    return "".join(p.read_text() for p in sorted(folder.glob("out-*.txt")))


@pytest.mark.slow
def test_two_jobs_with_many_steps_and_a_wide_step_all_hold_their_ports_at_once(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Two jobs submitted one after the other (consecutive ids), each running 20 two-task
    steps at the same time, and a third job with one 40-task step on the node: every task
    binds the port tfplace derives for it while all the others hold theirs. Before, step 16
    of the first job had the ports of step 0 of the second."""
    (tmp_path / "probe.py").write_text(PORT_PROBE)
    steps = 20
    (tmp_path / "steps.sh").write_text(
        "#!/bin/bash\n"
        f"for s in $(seq 1 {steps}); do srun --overlap -n2 python probe.py & done\nwait\n"
    )
    (tmp_path / "wide.sh").write_text("#!/bin/bash\nsrun --overlap -O -n40 python probe.py\n")
    meet = tmp_path / "meet"
    meet.mkdir()
    count = 2 * steps * 2 + 40
    env = job_env(TEST_MEET=str(meet), TEST_COUNT=str(count))
    jobs = [  # -O: one CPU per job, so that the three jobs run side by side on any machine
        slurm.submit(["-n2", "-O", "-o", f"out-{i}.txt", "steps.sh"], cwd=tmp_path, env=env)
        for i in range(2)
    ]
    jobs.append(
        slurm.submit(["-n40", "-O", "-o", "out-wide.txt", "wide.sh"], cwd=tmp_path, env=env)
    )
    states = [slurm.wait(job, timeout=300) for job in jobs]
    outputs = "".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("out-*.txt")))
    assert states == [("COMPLETED", "0:0")] * 3, f"{states}\n{outputs}"
    reports = [json.loads(p.read_text()) for p in meet.iterdir() if not p.name.endswith(".tmp")]
    assert len(reports) == count, outputs
    met = [int(n) for n in re.findall(r"^met (\d+)$", outputs_full(tmp_path), re.M)]
    assert met == [count] * count  # every task held its port while all the others held theirs
    failed = [r for r in reports if r["bound"] is not True]
    assert failed == [], failed  # no task found its port taken by another job or step
    ports = [r["port"] for r in reports]
    assert len(set(ports)) == count  # one port per task, over all three jobs
    wide = sorted(r["port"] for r in reports if r["task"].startswith(f"{jobs[2]}."))
    assert len(wide) == 40 and wide == list(range(wide[0], wide[0] + 40))
    assert all(10_000 <= p < 32_768 for p in ports)
