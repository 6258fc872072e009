"""tfplace.barrier: a no-op alone, a real meeting point across workers, a named timeout."""

from __future__ import annotations

import json
import time

import pytest
from helpers import CPU_ONLY_ENV, run_cluster

import tfplace
from tfplace.cluster._multiworker import BarrierTimeoutError

pytestmark = pytest.mark.slow


def test_barrier_without_a_cluster_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    start = time.monotonic()
    tfplace.barrier(timeout=1)  # no cluster: nobody to wait for, no coordination service
    one = json.dumps(
        {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}
    )
    monkeypatch.setenv("TF_CONFIG", one)
    tfplace.barrier(timeout=1)  # a single worker has nobody to wait for
    assert time.monotonic() - start < 2.0  # neither call waited for its 1 s timeout


def test_barrier_rejects_a_bad_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        tfplace.barrier(timeout=0)


def test_barrier_timeout_error_is_a_tfplace_error_and_a_timeout() -> None:
    assert issubclass(BarrierTimeoutError, tfplace.TfplaceError)
    assert issubclass(BarrierTimeoutError, TimeoutError)


MEET = """
import json, time
import tfplace

strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
chief = tfplace.is_chief()
if not chief:
    time.sleep(2)  # the chief must wait for this worker at the barrier
arrived = time.time()
tfplace.barrier(timeout=60)
left = time.time()
error = None
if chief:  # worker 1 never comes to the second barrier
    try:
        tfplace.barrier(timeout=3)
    except tfplace.TfplaceError as err:
        error = [type(err).__name__, str(err)]
else:
    time.sleep(8)  # stay alive (but absent) while the chief times out
print(json.dumps({"chief": chief, "arrived": arrived, "left": left, "error": error}))
"""


@pytest.mark.slow
def test_barrier_waits_for_every_worker_and_names_the_missing_one() -> None:
    results = []
    for proc in run_cluster(MEET, extra_env=CPU_ONLY_ENV, timeout=180):
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    chief, worker = sorted(results, key=lambda r: not r["chief"])
    assert chief["chief"] and not worker["chief"]
    # it waited for the late worker (one clock: both run on this machine)
    assert chief["left"] >= worker["arrived"] - 0.05, (chief, worker)
    assert chief["error"][0] == "BarrierTimeoutError"
    assert "missing: worker 1" in chief["error"][1] and "within 3 s" in chief["error"][1]
    assert worker["error"] is None


EXPLICIT = """
import json, os, tempfile, time
config = json.loads(os.environ.pop("TF_CONFIG"))  # the cluster is given, not in the env
import tfplace
from tfplace._facts.cluster.spec import from_mapping

cluster = from_mapping(config, source="cluster argument")
strategy = tfplace.pick_strategy(cluster=cluster, communication_timeout=60, startup_timeout=120)
me = config["task"]["index"]
if me == 1:
    time.sleep(2)  # the chief must wait for this worker at the barrier
arrived = time.time()
tfplace.barrier(timeout=60)
left = time.time()
with tfplace.worker_save_path(os.path.join(tempfile.gettempdir(), "m.keras")) as path:
    private = path != os.path.join(tempfile.gettempdir(), "m.keras")
print(json.dumps({
    "me": me, "chief": tfplace.is_chief(), "arrived": arrived, "left": left,
    "private": private,
    "env": "TF_CONFIG" in os.environ,
}))
"""


@pytest.mark.slow
def test_an_explicit_cluster_without_tf_config_blocks_and_answers_as_tf_config_does() -> None:
    """pick_strategy(cluster=ClusterSpec(...)) with no TF_CONFIG: barrier() waits for the
    late worker, is_chief() is False in worker 1, worker_save_path() gives it a private path
    (before, the barrier returned at once and both answered as the chief)."""
    results = []
    for proc in run_cluster(EXPLICIT, extra_env=CPU_ONLY_ENV, timeout=180):
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    chief, worker = sorted(results, key=lambda r: r["me"])
    assert not chief["env"] and not worker["env"]
    assert chief["chief"] is True and worker["chief"] is False
    assert chief["private"] is False and worker["private"] is True
    assert chief["left"] >= worker["arrived"] - 0.05, (chief, worker)  # waited for worker 1


def test_the_cluster_of_the_strategy_in_force_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a multi-worker strategy was built for an explicit cluster, is_chief() and
    worker_save_path() answer for that cluster, not for the (empty) environment."""
    from tfplace._facts.cluster.spec import ClusterSpec
    from tfplace.cluster import _multiworker

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    second = ClusterSpec.from_hosts(["a", "b"]).for_task(1)
    monkeypatch.setattr(_multiworker, "_built_cluster", second)
    assert tfplace.is_chief() is False
    with tfplace.worker_save_path("m.keras") as path:
        assert path != "m.keras"
    assert tfplace.is_chief(second.for_task(0)) is True  # an explicit argument wins
