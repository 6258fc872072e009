"""Elastic launches on simulated hosts (issue 27, item 1): ``--min-workers``.

Three simulated hosts with one worker each. Host 2 is lost for good after the group started:
every process on it is killed, its sshd included, and nothing restarts it, so the probe before
the restart cannot log in there. With ``min_workers=2`` the group starts again on the two hosts
left, saying who is out and why on one line; with ``min_workers=3`` the launch ends with a
clear error, in a bounded time, leaving nothing behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import skip_or_fail
from sim_hosts import SimulatedHosts
from test_multihost_launch import SshHosts, result_of, start_launcher, unavailable_here, wait_for

pytestmark = pytest.mark.slow

# Each worker says how big its cluster is; on the first attempt it waits to be stopped.
WORKER = """
import json, os, time
config = json.loads(os.environ["TF_CONFIG"])
attempt = os.environ["TFPLACE_RESTART_COUNT"]
print("size", attempt, len(config["cluster"]["worker"]), config["task"]["index"], "batch",
      os.environ.get("TFPLACE_GLOBAL_BATCH"), os.environ.get("TFPLACE_WORKER_BATCH"), flush=True)
if attempt == "0":
    time.sleep(300)
"""


@pytest.fixture
def three(tmp_path: Path) -> Iterator[SshHosts]:
    reason = unavailable_here()
    if reason:
        skip_or_fail(reason)
    folder = tmp_path / "ssh"
    folder.mkdir(mode=0o700)
    with SimulatedHosts(3) as hosts:
        ssh = SshHosts(hosts, folder)
        try:
            ssh.start()
            yield ssh
            assert ssh.workers_left() == []
        finally:
            ssh.stop()
    assert hosts.leftovers() == []


def _lose_host_2(c: SshHosts, proc: object) -> str:
    """Wait until all three workers run, then kill everything on host 2 for good."""
    seen = wait_for(proc, r"^\[worker \d \S+\] size 0 3 ", 3, timeout=120)
    assert c.hosts.kill_all(2)
    return seen


def test_a_host_lost_for_good_leaves_the_group_on_the_hosts_left(
    three: SshHosts, tmp_path: Path
) -> None:
    names = [h.name for h in three.hosts]
    proc = start_launcher(three, tmp_path, WORKER, ",".join(names), max_restarts=2,
                          min_workers=2, grace=1.0, global_batch=6)  # fmt: skip
    seen = _lose_host_2(three, proc)
    t_lost = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    out = seen + out
    assert proc.returncode == 0, out
    batches = re.findall(r"^\[worker \d \S+\] size \d \d \d batch (.*)$", out, re.M)
    assert sorted(batches) == ["6 2"] * 3 + ["6 3"] * 2, out  # the global batch stays 6
    assert result_of(out)["attempts"] == 2, out
    assert f"worker 2 on {names[2]}: lost the connection" in out
    out_lines = re.findall(rf"^\[tfplace launch\] host {names[2]} is out \((.*)\); going on "
                           rf"with 2 workers on {names[0]}, {names[1]}$", out, re.M)  # fmt: skip
    assert len(out_lines) == 1 and "cannot log in over ssh" in out_lines[0], out
    sizes = re.findall(r"^\[worker (\d) (\S+)\] size 1 (\d) (\d) batch", out, re.M)
    assert sorted(sizes) == [("0", names[0], "2", "0"), ("1", names[1], "2", "1")], out
    print(f"host lost -> launch ended on 2 hosts after {time.monotonic() - t_lost:.1f} s")


def test_fewer_hosts_than_min_workers_is_a_clear_error_in_bounded_time(
    three: SshHosts, tmp_path: Path
) -> None:
    names = [h.name for h in three.hosts]
    proc = start_launcher(three, tmp_path, WORKER, ",".join(names), max_restarts=2,
                          min_workers=3, grace=1.0)  # fmt: skip
    seen = _lose_host_2(three, proc)
    t_lost = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    ended = time.monotonic() - t_lost
    out = seen + out
    assert proc.returncode == 255, out  # the lost host's code: the launch ends there
    assert result_of(out)["attempts"] == 1, out
    said = re.findall(r"^\[tfplace launch\] cannot restart: (.*)$", out, re.M)
    assert len(said) == 1, out
    assert f"found 2 workers on the hosts that answer ({names[0]}, {names[1]})" in said[0]
    assert "expected at least --min-workers 3" in said[0] and names[2] in said[0]
    assert ended < 30, ended  # the loss at once (connection closed) + the probe's 3 tries
    assert result_of(out)["codes"][2] == 255


# On its third start (after the loss, then the return) each worker ends at once; before that
# it runs until stopped, and a SIGTERM makes it exit 143 as a BackupAndRestore does after saving.
REJOINING = """
import json, os, signal, sys, time
config = json.loads(os.environ["TF_CONFIG"])
attempt = os.environ["TFPLACE_RESTART_COUNT"]
print("size", attempt, len(config["cluster"]["worker"]), config["task"]["index"], flush=True)
if attempt == "2":
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: (print("saved", flush=True), sys.exit(143)))
time.sleep(300)
"""


def test_a_host_that_comes_back_is_taken_back_without_counting_a_restart(
    three: SshHosts, tmp_path: Path
) -> None:
    """Issue 27, item 2: host 2 is lost (the group goes on with 2 workers), then its sshd comes
    back: the launcher finds it within a few seconds, stops the group as for a preemption (each
    worker gets SIGTERM and saves), and starts it on 3 workers. One restart allowed: the return
    is a membership change, not a failure."""
    names = [h.name for h in three.hosts]
    proc = start_launcher(three, tmp_path, REJOINING, ",".join(names), max_restarts=1,
                          min_workers=2, rejoin=True, grace=5.0)  # fmt: skip
    seen = wait_for(proc, r"^\[worker \d \S+\] size 0 3 ", 3, timeout=120)
    assert three.hosts.kill_all(2)
    seen += wait_for(proc, r"^\[worker \d \S+\] size 1 2 ", 2, timeout=120)
    three.start_sshd(2)
    t_back = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    out = seen + out
    assert proc.returncode == 0, out
    assert result_of(out)["attempts"] == 3, out
    said = re.findall(r"^\[tfplace launch\] (host \S+ answers again): stopping the group", out,
                      re.M)  # fmt: skip
    assert said == [f"host {names[2]} answers again"], out
    after = out[out.index("answers again") :]
    assert len(re.findall(r"^\[worker \d \S+\] saved$", after, re.M)) == 2, out  # as preempted
    assert "restarting all 2 workers on new ports (restart 1 of 1" in out  # the size it restarts at
    sizes = re.findall(r"^\[worker (\d) (\S+)\] size 2 (\d) (\d)$", out, re.M)
    assert sorted(sizes) == [(str(i), names[i], "3", str(i)) for i in range(3)], out
    print(f"host back -> group of 3 done after {time.monotonic() - t_back:.1f} s")


def test_a_worker_count_that_does_not_divide_the_global_batch_is_refused_before_the_restart(
    three: SshHosts, tmp_path: Path
) -> None:
    """Issue 27, item 4 (the launcher's part): 3 workers share a global batch of 9; after a
    loss, 2 workers could not take equal parts, so the restart is refused, naming the counts
    that would do."""
    names = [h.name for h in three.hosts]
    proc = start_launcher(three, tmp_path, WORKER, ",".join(names), max_restarts=2,
                          min_workers=2, grace=1.0, global_batch=9)  # fmt: skip
    seen = _lose_host_2(three, proc)
    out, _ = proc.communicate(timeout=120)
    out = seen + out
    assert proc.returncode == 255 and result_of(out)["attempts"] == 1, out
    said = re.findall(r"^\[tfplace launch\] cannot restart: (.*)$", out, re.M)
    assert len(said) == 1 and "found 2 workers for a global batch of 9" in said[0], out
    assert "(1, 3, 9)" in said[0], out
