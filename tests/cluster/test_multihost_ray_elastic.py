"""Ray Train's worker range across 3 simulated hosts: a host lost for good, and the group goes on.

Ray 2.60's Train (its V2, the default) takes ``ScalingConfig(num_workers=(min, max))``; with
``FailureConfig(max_failures=...)`` a failed worker group is started again at the size the
cluster has room for. ``tests/jobs/ray_elastic.py`` asks for 2 to 3 workers, one per host,
each training through ``tfplace.pick_strategy()`` with a ``tfplace.callbacks.BackupAndRestore``
on storage every host sees, at a fixed global batch. After the first backup one host is lost
for good (its link down, every process on it killed): the group must go on with the 2 hosts
left, resume from the backup and end with the weights of one process training alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_multihost_ray import RayHosts, ray_cluster

pytestmark = pytest.mark.slow

JOB = Path(__file__).resolve().parents[1] / "jobs" / "ray_elastic.py"


#: Ray's waits, shortened. After the loss, Ray Train first starts the group at its old size
#: again (its view of the cluster's resources still counts the lost node) and waits out the
#: worker group's start-up timeout (60 s by default: 80 s from the loss to training again here)
#: before it tries the size the cluster has; the node health checks decide when the node is
#: dead (a check every second, a second to answer, dead after 3 missed).
FAST_HEALTH_CHECKS = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[RayHosts]:
    with ray_cluster(3, FAST_HEALTH_CHECKS) as cluster:
        yield cluster


def test_ray_train_worker_range_goes_on_without_a_host_lost_for_good(
    three_hosts: RayHosts, tmp_path: Path
) -> None:
    hosts, env = three_hosts.hosts, three_hosts.env
    driver = hosts[0].popen(
        [sys.executable, str(JOB), str(tmp_path)],
        env={**env, "RAY_ADDRESS": three_hosts.address, "STEP_SLEEP": "0.3"},
        stdout=open(tmp_path / "driver.out", "w"),  # noqa: SIM115
        stderr=open(tmp_path / "driver.err", "w"),  # noqa: SIM115
    )
    figures: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 240
        backup = tmp_path / "backup"
        while not list(backup.glob("backup-*/state.json")):
            assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "driver.err").read_text()[-4000:]
            time.sleep(0.2)
        first = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("start-0-*.json"))]
        assert len(first) == 3 and {s["size"] for s in first} == {3}, first
        victim = 2  # never the head: it runs the driver and Ray's control plane
        t_loss = time.monotonic()
        hosts.cut_link(victim)
        assert hosts.kill_all(victim)
        while not list(tmp_path.glob("start-1-*.json")):
            assert time.monotonic() - t_loss < 300, (tmp_path / "driver.err").read_text()[-4000:]
            time.sleep(0.2)
        figures["training_again_s"] = round(time.monotonic() - t_loss, 1)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.err").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        hosts.restore_link(2)
    second = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("start-1-*.json"))]
    assert {s["size"] for s in second} == {2} and len(second) == 2, second
    assert hosts[2].name not in {s["host"] for s in second}
    done = [json.loads((tmp_path / f"done-{r}.json").read_text()) for r in range(2)]
    (tmp_path / "ref").mkdir()
    ref = hosts[0].run(
        [sys.executable, str(JOB), str(tmp_path / "ref"), "--reference"], env=env, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    single = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert single["batches"] == 40
    diff = 0.0
    for d in done:
        assert d["size"] == 2 and d["replicas"] == 2 and d["batches"] < 40  # resumed
        for got, want in zip(d["weights"], single["weights"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            diff = max(diff, float(np.max(np.abs(np.array(got) - np.array(want)))))
    figures["max_abs_weight_diff"] = diff
    print(f"\nMEASURED ray elastic: {figures} {three_hosts.seconds}", file=sys.stderr)
