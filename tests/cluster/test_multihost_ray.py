"""Ray Train across two simulated hosts: a Ray head on one, a Ray worker node on the other.

Each host is a network and UTS namespace (``tests/sim_hosts.py``) with its own address on a
private bridge, 10.213.0.1 and 10.213.0.2. ``ray start --head`` runs on the first and
``ray start --address=...`` on the second; the driver (``tests/jobs/ray_hosts.py``) runs on the
first and asks ``TensorflowTrainer`` for two workers spread over both nodes. Each worker trains
through ``tfplace.pick_strategy()`` from the ``TF_CONFIG`` Ray writes, which names the two hosts'
addresses, and the result must equal one process training alone.

Recent Ray (2.60 here) turns token authentication on when the head finds a token (e.g. the
``~/.ray/auth_token`` a local ``ray.init()`` writes), and a node without it cannot join: every
node and the driver get the same random token here through ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN``, whatever the home folder holds.

Teardown stops every process on both hosts (SIGTERM, then SIGKILL): ``ray stop`` is not used
because it stops every Ray process of the machine, including other Ray instances that have
nothing to do with these hosts (the PID namespace is the machine's).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import skip_or_fail
from sim_hosts import SimulatedHosts, unavailable

from tfplace._facts.cluster.spec import parse_tf_config

pytestmark = pytest.mark.slow

JOB = Path(__file__).resolve().parents[1] / "jobs" / "ray_hosts.py"
GCS_PORT = 6379


@dataclass
class RayHosts:
    """Two simulated hosts with a Ray cluster over them, and what it took."""

    hosts: SimulatedHosts
    env: dict[str, str]
    address: str
    seconds: dict[str, float] = field(default_factory=dict)


def ray_env(temp_dir: str) -> dict[str, str]:
    """The environment of every Ray process and of the driver: this venv first on PATH, CPU
    only, one thread per TensorFlow pool, one shared auth token, no usage reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CONFIG", "SLURM_"))}
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "CUDA_VISIBLE_DEVICES": "-1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_TMPDIR": temp_dir,
        }
    )
    return env


@contextlib.contextmanager
def ray_cluster(count: int, extra: dict[str, str] | None = None) -> Iterator[RayHosts]:
    """``count`` simulated hosts, a Ray head on the first and a Ray worker node (1 CPU) on
    each; every process of every host stopped at the end, and nothing left. ``extra``: more
    environment for every Ray process and the driver (Ray's ``RAY_<setting>`` overrides)."""
    reason = unavailable()
    if reason:
        skip_or_fail(reason)
    ray = Path(sys.executable).parent / "ray"
    if importlib.util.find_spec("ray") is None or not ray.exists():
        skip_or_fail('Ray is not installed: pip install "ray[train]" (the test extra has it)')
    # Ray's sockets live in its temp dir and their paths must fit in 107 bytes: a short one.
    temp_dir = tempfile.mkdtemp(prefix="tfp-ray-", dir="/tmp")
    hosts = SimulatedHosts(count)
    env = {**ray_env(temp_dir), **(extra or {})}
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        hosts.start()
        cluster = RayHosts(hosts, env, f"{hosts[0].address}:{GCS_PORT}")
        cluster.seconds["hosts_up"] = hosts.up_seconds
        steps = [
            (0, ["--head", f"--port={GCS_PORT}", "--include-dashboard=false",
                 f"--temp-dir={temp_dir}"]),
            *((i, [f"--address={cluster.address}"]) for i in range(1, count)),
        ]  # fmt: skip
        for i, args in steps:
            t0 = time.monotonic()
            proc = hosts[i].run(
                [str(ray), "start", f"--node-ip-address={hosts[i].address}", *args, *common],
                env=env,
                timeout=120,
            )
            assert proc.returncode == 0, f"ray start on {hosts[i].name}:\n{proc.stderr[-3000:]}"
            cluster.seconds[f"ray_start_h{i}"] = time.monotonic() - t0
        yield cluster
    finally:
        t0 = time.monotonic()
        for i in range(len(hosts)):
            if hosts[i].net_inode:
                hosts.stop_all(i, grace=1)
        ray_stop = time.monotonic() - t0
        hosts.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(
            f"\nray stop on {count} hosts {ray_stop:.2f} s, hosts down {hosts.down_seconds:.3f} s"
        )
    left = hosts.leftovers()
    assert left == [], f"left behind by the Ray hosts: {left}"


@pytest.fixture(scope="module")
def ray_hosts() -> Iterator[RayHosts]:
    with ray_cluster(2) as cluster:
        yield cluster


def test_ray_train_one_worker_per_host_equals_one_process(
    ray_hosts: RayHosts, tmp_path: Path
) -> None:
    hosts, env = ray_hosts.hosts, ray_hosts.env
    t0 = time.monotonic()
    proc = hosts[0].run(
        [sys.executable, str(JOB), str(tmp_path)],
        env={**env, "RAY_ADDRESS": ray_hosts.address},
        timeout=300,
    )
    fit_seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    workers = [json.loads((tmp_path / f"worker{r}.json").read_text()) for r in range(2)]

    # one worker on each host, each reading the TF_CONFIG Ray wrote with both hosts' addresses
    assert sorted(w["host"] for w in workers) == [h.name for h in hosts]
    for rank, w in enumerate(workers):
        spec = parse_tf_config(w["tf_config"])
        assert spec is not None and (spec.task_type, spec.task_index) == ("worker", rank)
        addresses = spec.addresses("worker")
        assert sorted(a.rpartition(":")[0] for a in addresses) == [h.address for h in hosts]
        own = next(h for h in hosts if h.name == w["host"])
        assert addresses[rank].rpartition(":")[0] == own.address  # its own host's address
        assert w["kind"] == "KerasMultiWorkerMirroredStrategy" and w["replicas"] == 2

    # the same training in one process, no cluster: the run equals it
    ref_proc = hosts[0].run(
        [sys.executable, str(JOB), str(tmp_path), "--reference"], env=env, timeout=300
    )
    assert ref_proc.returncode == 0, ref_proc.stderr[-3000:]
    single = json.loads((tmp_path / "reference.json").read_text())
    assert single["replicas"] == 1 and single["tf_config"] == ""
    diff = 0.0
    for w in workers:
        assert w["loss"][-1] < w["loss"][0]  # it trained
        np.testing.assert_allclose(w["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        for got, want in zip(w["weights"], single["weights"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            diff = max(diff, float(np.max(np.abs(np.array(got) - np.array(want)))))
    seconds = {k: round(v, 2) for k, v in ray_hosts.seconds.items()}
    print(f"\nRay across hosts: {seconds}, fit {fit_seconds:.1f} s, max |dw| {diff:.2e}")
