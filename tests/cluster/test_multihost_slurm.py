"""tfplace under a real multi-node SLURM whose nodes are simulated hosts (namespaces).

Three hosts tfp-h0..2 on one private bridge (``tests/sim_hosts.py``); slurmctld and the client
commands on tfp-h0, a slurmd on each (``tests/slurm_multinode.py``); the jobs are the scripts
in ``tests/jobs/``. Skips, saying why, where that cannot be built (not root, no namespaces,
SLURM or munge missing), and fails instead under ``TFPLACE_REQUIRE_ENGINES=1`` (CI).

Measured figures are printed as ``MEASURED name: value`` lines (``pytest -s`` shows them).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import skip_or_fail
from sim_hosts import SimulatedHosts, unavailable
from slurm_multinode import MultiNodeSlurm, missing_binaries

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "tests" / "jobs"
DOCS = ROOT / "docs"
#: seconds without an answer before slurmctld declares a node DOWN (SLURM's default is 300)
SLURMD_TIMEOUT = 10
_REFERENCES: dict[str, dict[str, Any]] = {}


def record(key: str, value: Any) -> None:
    """Print a measured figure (shown with ``pytest -s``)."""
    print(f"\nMEASURED {key}: {value}", file=sys.stderr)


def job_env(**extra: str) -> dict[str, str]:
    """What a job inherits: this interpreter first on PATH, CPU only, one thread per pool."""
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
    }
    env.update(extra)
    return env


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]


def close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return bool(abs(a - b) <= tol * max(1.0, abs(b)))


def max_diff(a: Any, b: Any) -> float:
    if isinstance(a, list):
        return max((max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return float(abs(a - b))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNodeSlurm]:
    reason = unavailable()
    if reason:
        skip_or_fail(reason)
    missing = missing_binaries()
    if missing:
        skip_or_fail(f"SLURM/munge not installed (missing {', '.join(missing)})")
    root = tmp_path_factory.mktemp("slurm")
    # one folder that is node-local (like a node's /tmp), for the not-shared backup test
    hosts = SimulatedHosts(3, local=[root / "node-local"])
    slurm = MultiNodeSlurm(hosts, root, slurmd_timeout=SLURMD_TIMEOUT)
    left: list[str] = []
    try:
        hosts.start()
        record("hosts_up_s (3 hosts)", round(hosts.up_seconds, 3))
        slurm.start()
        record("slurm_start_s (munged+slurmctld+3 slurmd, all idle)", round(slurm.start_seconds, 3))
        yield slurm
    finally:
        left = slurm.stop()
        record("slurm_stop_s", round(slurm.stop_seconds, 3))
        hosts.close()
        record("hosts_down_s", round(hosts.down_seconds, 3))
    assert left == [], f"SLURM processes left: {left}"
    assert hosts.leftovers() == [], hosts.leftovers()


def reference(
    cluster: MultiNodeSlurm,
    script: str,
    cwd: Path,
    *args: str,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One process, no cluster (no SLURM variables): the result to compare with (computed
    once per script, arguments and ``extra`` environment)."""
    key = " ".join([script, *args, *sorted(f"{k}={v}" for k, v in (extra or {}).items())])
    if key in _REFERENCES:
        return _REFERENCES[key]
    env = {k: v for k, v in cluster.env(job_env(**(extra or {}))).items() if k != "SLURM_CONF"}
    proc = cluster.head.run(
        [sys.executable, str(JOBS / script), *args], env=env, cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = [
        json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")
    ][-1]
    _REFERENCES[key] = result
    return result


# ---------------------------------------------------------------------------------- a
@pytest.mark.parametrize("distribution", ["block", "cyclic"])
def test_srun_two_nodes_four_tasks_match_parse_slurm_and_one_process(
    cluster: MultiNodeSlurm, tmp_path: Path, distribution: str
) -> None:
    shutil.copy(JOBS / "train.py", tmp_path)
    shutil.copy(JOBS / "tiny.py", tmp_path)
    t0 = time.monotonic()
    proc = cluster.run(
        ["srun", "-N2", "-n4", f"--distribution={distribution}", "-o", "out-%t.txt",
         "-e", "err-%t.txt", "python", "train.py"],
        env=job_env(), cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    record(f"a_srun_N2_n4_{distribution}_s", round(time.monotonic() - t0, 2))
    errors = "".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("err-*.txt")))
    assert proc.returncode == 0, f"{proc.stderr}\n{errors}\n{cluster.logs()}"
    tasks = [json_lines(tmp_path / f"out-{i}.txt")[-1] for i in range(4)]
    hosts = [t["host"] for t in tasks]
    assert len(set(hosts)) == 2, hosts  # workers really on two hosts
    first, second = sorted(set(hosts))
    expected = {
        "block": [first, first, second, second],
        "cyclic": [first, second, first, second],
    }[distribution]
    assert hosts == expected, (distribution, hosts)
    for i, t in enumerate(tasks):
        assert t["procid"] == str(i) and t["task_index"] == i
        assert t["kind"] == "KerasMultiWorkerMirroredStrategy"
        assert t["replicas"] == 4
        # the cluster TensorFlow got is the one parse_slurm predicts, the same on every node
        assert t["cluster"]["worker"] == t["predicted"] == tasks[0]["predicted"]
        # ...and each task's own address names the host it really runs on
        assert t["predicted"][i].rpartition(":")[0] == t["host"]
    ports: dict[str, list[int]] = {}
    for address in tasks[0]["predicted"]:
        host, _, port = address.rpartition(":")
        ports.setdefault(host, []).append(int(port))
    base = min(min(p) for p in ports.values())
    assert all(p == [base, base + 1] for p in ports.values()), ports  # same ports per node

    single = reference(cluster, "train.py", tmp_path)
    assert single["kind"] != "KerasMultiWorkerMirroredStrategy" and single["replicas"] == 1
    tol = 1e-5  # relative (absolute below 1)
    record(
        f"a_{distribution}_max_abs_diff_vs_1proc",
        {"loss": max_diff(tasks[0]["loss"], single["loss"]),
         "weights": max_diff(tasks[0]["weights"], single["weights"])},
    )  # fmt: skip
    for t in tasks:
        assert t["loss"][-1] < t["loss"][0]
        assert close(t["loss"], single["loss"], tol), (t["loss"], single["loss"])
        assert close(t["weights"], single["weights"], tol)


# ---------------------------------------------------------------------------------- b
def docs_sbatch_template() -> str:
    page = (DOCS / "clusters.md").read_text()
    section = page.split("\n## SLURM\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    templates = [b for b in blocks if b.startswith("#!/bin/bash\n#SBATCH")]
    assert len(templates) == 1, "the SLURM section shows one sbatch template"
    return str(templates[0])


def test_docs_sbatch_template_across_two_nodes(cluster: MultiNodeSlurm, tmp_path: Path) -> None:
    # The page's template, plus the two lines it says a real cluster adds for one worker per
    # node (--nodes=2 --ntasks-per-node=1), inserted after its #SBATCH lines.
    lines = docs_sbatch_template().splitlines()
    last = max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))
    lines[last + 1 : last + 1] = ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1"]
    (tmp_path / "train.sbatch").write_text("\n".join(lines) + "\n")
    shutil.copy(DOCS / "examples" / "multi_worker_train.py", tmp_path / "train.py")
    t0 = time.monotonic()
    job = cluster.submit(["train.sbatch"], cwd=tmp_path, env=job_env())
    nodes = ""
    while not nodes and time.monotonic() - t0 < 30:
        fields = cluster.job(job)
        nodes = fields.get("NodeList", "") if fields.get("JobState") != "PENDING" else ""
        time.sleep(0.1)
    state = cluster.wait(job)
    record("b_sbatch_docs_template_s", round(time.monotonic() - t0, 2))
    text = (tmp_path / f"train-{job}.out").read_text()
    assert state == ("COMPLETED", "0:0"), f"{state}\n{text}\n{cluster.logs()}"
    hostnames = cluster.run(["scontrol", "show", "hostnames", nodes]).stdout.split()
    assert len(hostnames) == 2, nodes
    roles = sorted(re.findall(r"^(chief|worker): 2 replicas, final loss", text, re.M))
    assert roles == ["chief", "worker"], text
    assert (tmp_path / "out" / "model.keras").is_file()


# ---------------------------------------------------------------------------------- c
def test_backup_folder_not_shared_between_nodes_is_a_clear_error(
    cluster: MultiNodeSlurm, tmp_path: Path
) -> None:
    # backup_dir on a folder each node has its own copy of (a node's /tmp, local scratch):
    # the chief's first backup is invisible on the other node. Every worker must stop with
    # the error that says so, not hang in a collective.
    shutil.copy(JOBS / "train_ft.py", tmp_path)
    shutil.copy(JOBS / "tiny.py", tmp_path)
    out_dir = cluster.hosts.local[0] / tmp_path.name
    t0 = time.monotonic()
    proc = cluster.run(
        ["srun", "-N2", "-n2", "-o", "out-%t.txt", "-e", "err-%t.txt", "python", "train_ft.py",
         str(out_dir)],
        env=job_env(), cwd=tmp_path, timeout=240, check=False,
    )  # fmt: skip
    record("c_not_shared_backup_error_s", round(time.monotonic() - t0, 2))
    errors = [(tmp_path / f"err-{i}.txt").read_text(errors="replace") for i in range(2)]
    assert proc.returncode != 0, errors
    for text in errors:
        assert "ClusterConfigError" in text and "backup_dir must be shared storage" in text, text
    assert "which the chief just wrote" in "".join(errors)
    # the backup exists on the chief's node only: nothing reached the shared file system
    assert not out_dir.exists() or not any(out_dir.iterdir())


# ---------------------------------------------------------------------------------- d
FT_SCRIPT = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=job-%j.out
r=${SLURM_RESTART_COUNT:-0}
# the first run is slowed down so that it can be interrupted mid-training; the rerun is not
if [ "$r" != 0 ]; then export STEP_SLEEP=0; fi
srun -o out-r$r-%t.txt -e err-r$r-%t.txt python train_ft.py run
"""


def python_pids(cluster: MultiNodeSlurm, host: int, script: str) -> list[int]:
    found = []
    for pid in cluster.hosts[host].pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the training process itself, not srun (whose command line names the script too)
        if os.path.basename(argv[0]).startswith(b"python") and script.encode() in argv:
            found.append(pid)
    return found


def watch_until_gone(cluster: MultiNodeSlurm, host: int, t0: float, events: dict[str, Any]) -> None:
    """Note when the training processes on ``host`` are gone (polls /proc every 50 ms)."""
    deadline = t0 + 400
    while time.monotonic() < deadline and python_pids(cluster, host, "train_ft.py"):
        time.sleep(0.05)
    events["survivors_gone"] = time.monotonic() - t0


def srun_running(cluster: MultiNodeSlurm) -> bool:
    """Whether an srun runs on the head node (the job step's client)."""
    for pid in cluster.head.pids():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0) == b"srun":
            return True
    return False


def eligible_in(fields: dict[str, str]) -> float | None:
    """Seconds from now to the job's EligibleTime (None when SLURM gives none)."""
    try:
        when = datetime.datetime.fromisoformat(fields["EligibleTime"])
    except (KeyError, ValueError):
        return None
    return (when - datetime.datetime.now()).total_seconds()


def first_backup(cluster: MultiNodeSlurm, job: str, backup: Path) -> list[str]:
    """Wait for the job's first complete backup (``backup-N/state.json``; ``.tmp-backup-*``
    ones are still being written); the job's nodes then."""
    deadline = time.monotonic() + 180
    while not list(backup.glob("backup-*/state.json")):
        assert time.monotonic() < deadline, cluster.logs()
        assert cluster.job(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.1)
    nodes = cluster.job(job)["NodeList"]
    return list(cluster.run(["scontrol", "show", "hostnames", nodes]).stdout.split())


def test_lost_node_requeues_and_resumes_from_backup(
    cluster: MultiNodeSlurm, tmp_path: Path
) -> None:
    shutil.copy(JOBS / "train_ft.py", tmp_path)
    shutil.copy(JOBS / "tiny.py", tmp_path)
    (tmp_path / "train.sbatch").write_text(FT_SCRIPT)
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    single = reference(cluster, "train_ft.py", ref_dir, str(ref_dir))
    assert single["batches"] == 64

    t_submit = time.monotonic()
    job = cluster.submit(["train.sbatch"], cwd=tmp_path, env=job_env(STEP_SLEEP="0.2"))
    names = first_backup(cluster, job, tmp_path / "run" / "backup")  # kill mid-training
    index = {h.name: h.index for h in cluster.hosts}
    used = [index[n] for n in names]
    victim = max(used)  # never host 0: it runs slurmctld
    survivor = next(i for i in used if i != victim)
    assert victim != 0
    survivors = python_pids(cluster, survivor, "train_ft.py")
    assert survivors, "no training process on the surviving node"

    # Power loss: the cable goes first, so the dying processes' FIN/RST reach nobody.
    t_kill = time.monotonic()
    wall_kill = time.time()
    events: dict[str, Any] = {}
    try:
        cluster.hosts.cut_link(victim)
        killed = cluster.hosts.kill_all(victim)
        assert killed
        watcher = threading.Thread(
            target=watch_until_gone, args=(cluster, survivor, t_kill, events), daemon=True
        )
        watcher.start()
        slowest_call = 0.0
        srun_gone: float | None = None
        restarts_seen = "0"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            now = time.monotonic() - t_kill
            if srun_gone is None and not srun_running(cluster):
                srun_gone = now
            t_call = time.monotonic()
            state = cluster.node_states().get(cluster.hosts[victim].name, "")
            if "node_down" not in events and state.startswith("down"):
                events["node_down"] = now
            fields = cluster.job(job)
            slowest_call = max(slowest_call, time.monotonic() - t_call)
            js = fields.get("JobState", "")
            restarts_seen = fields.get("Restarts", restarts_seen)
            if "job_left_running" not in events and js != "RUNNING":
                events["job_left_running"] = now
                events["job_state_after_loss"] = js
            if restarts_seen != "0" and "requeued" not in events:
                events["requeued"] = now
            if restarts_seen != "0" and js == "RUNNING" and "rerunning" not in events:
                events["rerunning"] = now
                events["rerun_nodes"] = fields.get("NodeList")
            if restarts_seen != "0" and js == "PENDING" and "released" not in events:
                events["pending_reason"] = fields.get("Reason")
                if fields.get("Reason") == "BeginTime":
                    # SLURM holds a requeued job back (its begin time moves ahead); record how far,
                    # then let it start now, to keep the test short.
                    events["requeue_hold_s (EligibleTime - now)"] = eligible_in(fields)
                    cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
                    events["released"] = time.monotonic() - t_kill
            if "resumed_fit_start" not in events and json_lines(tmp_path / "out-r1-0.txt"):
                events["resumed_fit_start"] = now
            if js in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                events["job_end"] = now
                events["job_end_state"] = js
                break
            time.sleep(0.2)
        events["kill_after_submit_s"] = t_kill - t_submit
        events["srun_on_head_gone"] = srun_gone
        events["slowest_scontrol_sinfo_pair_s"] = slowest_call
        watcher.join(timeout=5)
    finally:  # plug the host back in and restart its slurmd: the cluster is whole again
        cluster.hosts.restore_link(victim)
        cluster.start_slurmd(victim)
        cluster.wait_nodes({cluster.hosts[victim].name: "idle"}, timeout=60)
    errors = [d for d in json_lines(tmp_path / f"out-r0-{used.index(survivor)}.txt")
              if d.get("event") == "error"]  # fmt: skip
    if errors:  # when the survivor's fit raised, and why
        events["survivor_fit_raised"] = errors[0]["time"] - wall_kill
        events["survivor_error"] = errors[0]["error"][-250:]
    first_err = tmp_path / f"err-r0-{used.index(survivor)}.txt"
    survivor_err = first_err.read_text(errors="replace")[-1500:] if first_err.exists() else ""
    record("d_lost_node_events_s", {k: (round(v, 2) if isinstance(v, float) else v)
                                    for k, v in events.items()})  # fmt: skip
    record("d_survivor_stderr_tail", survivor_err[-700:])
    assert events.get("job_end_state") == "COMPLETED", (
        f"{events}\n{(tmp_path / f'job-{job}.out').read_text()}\n{survivor_err}\n"
        + cluster.logs(30)
    )
    done = [d for i in range(2) for d in json_lines(tmp_path / f"out-r1-{i}.txt")
            if d.get("event") == "done"]  # fmt: skip
    assert len(done) == 2, done
    starts = [d for d in json_lines(tmp_path / "out-r1-0.txt") if d.get("event") == "start"]
    record("d_resumed_fit_s (start to done, task 0)", round(done[0]["time"] - starts[0]["time"], 2))
    for d in done:
        assert d["restart"] != "0" and d["step_sleep"] == 0
        assert d["batches"] < 64  # it resumed: fewer batches than a whole run
        record(f"d_resumed_batches_task{d['procid']}", d["batches"])
        diff = max_diff(d["weights"], single["weights"])
        record(f"d_max_abs_weight_diff_task{d['procid']}", diff)
        assert close(d["weights"], single["weights"], 1e-5), diff


# ---------------------------------------------------------------------------------- e
#: The elastic form of the template (Clusters page, "A node lost for good"): a node range, so
#: that the requeued job starts on the nodes left.
ELASTIC_SCRIPT = """#!/bin/bash
#SBATCH --nodes=2-3
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=job-%j.out
r=${SLURM_RESTART_COUNT:-0}
if [ "$r" != 0 ]; then export STEP_SLEEP=0; fi
srun --ntasks-per-node=1 -o out-r$r-%t.txt -e err-r$r-%t.txt python train_ft.py run
"""


def test_a_node_lost_for_good_the_job_goes_on_with_the_nodes_left(
    cluster: MultiNodeSlurm, tmp_path: Path
) -> None:
    """3 nodes, one lost for good after the first backup (link down, every process killed,
    slurmd not started again until the job ended): the requeued job runs on the 2 nodes left,
    resumes from the shared backup and ends with an uninterrupted run's weights (issue 27.5).
    The global batch (24) divides over 3 and over 2 workers, so the math is the same."""
    shutil.copy(JOBS / "train_ft.py", tmp_path)
    shutil.copy(JOBS / "tiny.py", tmp_path)
    (tmp_path / "train.sbatch").write_text(ELASTIC_SCRIPT)
    assert ELASTIC_SCRIPT.split("\n#SBATCH --output")[0] in (DOCS / "clusters.md").read_text()
    sizes = {"EXAMPLES": "240", "BATCH": "24"}
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    single = reference(cluster, "train_ft.py", ref_dir, str(ref_dir), extra=sizes)
    assert single["batches"] == 40

    cluster.wait_nodes(dict.fromkeys(cluster.node_names, "idle"))  # the range's most is free
    job = cluster.submit(["train.sbatch"], cwd=tmp_path, env=job_env(STEP_SLEEP="0.3", **sizes))
    names = first_backup(cluster, job, tmp_path / "run" / "backup")
    assert len(names) == 3, names  # the range's most: every node was free
    index = {h.name: h.index for h in cluster.hosts}
    victim = max(index[n] for n in names)  # never host 0: it runs slurmctld
    lost = cluster.hosts[victim].name
    t_kill = time.monotonic()
    events: dict[str, Any] = {}
    state = ""
    try:
        cluster.hosts.cut_link(victim)
        assert cluster.hosts.kill_all(victim)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            fields = cluster.job(job)
            state, restarts = fields.get("JobState", ""), fields.get("Restarts", "0")
            if restarts != "0" and state == "PENDING" and fields.get("Reason") == "BeginTime":
                cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
            if restarts != "0" and state == "RUNNING" and "rerun_nodes" not in events:
                events["rerun_nodes"] = fields.get("NodeList", "")
                events["running_again_s"] = round(time.monotonic() - t_kill, 2)
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                events["job_end_s"] = round(time.monotonic() - t_kill, 2)
                break
            time.sleep(0.2)
    finally:  # the node comes back only now, for the next tests
        cluster.hosts.restore_link(victim)
        cluster.start_slurmd(victim)
        cluster.wait_nodes({lost: "idle"}, timeout=60)
    record("e_node_lost_for_good_s", events)
    assert state == "COMPLETED", f"{state} {events}\n{cluster.logs(30)}"
    rerun = cluster.run(["scontrol", "show", "hostnames", events["rerun_nodes"]]).stdout.split()
    assert len(rerun) == 2 and lost not in rerun, (rerun, lost)
    done = [d for i in range(2) for d in json_lines(tmp_path / f"out-r1-{i}.txt")
            if d.get("event") == "done"]  # fmt: skip
    assert len(done) == 2, done
    for d in done:
        assert d["restart"] != "0" and d["batches"] < 40  # resumed, on 2 workers
        diff = max_diff(d["weights"], single["weights"])
        record(f"e_max_abs_weight_diff_task{d['procid']}", diff)
        assert close(d["weights"], single["weights"], 1e-5), diff
