"""One launcher core for both transports (issue 24, item 2).

The same event (a worker killed by a signal, a worker asking for a restart, an exception)
gets the same words and the same restart decision whether the worker ran here
(``LocalWorkers``) or over ssh (``SshWorkers``). The one difference is a property the ssh
transport hands to the policy: its lost-link code 255. The end-to-end tests run the ssh
transport through a stand-in ``ssh`` that runs the remote command on this machine, so the whole
path (probe, wrapper, heartbeat, exit report) runs without an sshd.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tfplace.cluster._core import (
    Failure,
    FailureKind,
    GroupState,
    LaunchResult,
    Restart,
    RestartPolicy,
    Transport,
    group_state,
)
from tfplace.cluster._launch import LocalWorkers, launch
from tfplace.cluster._remote import SshWorkers

TRANSPORTS: dict[str, type[Transport]] = {"local": LocalWorkers, "ssh": SshWorkers}
POLICIES = [RestartPolicy(0, "retryable"), RestartPolicy(2, "retryable"), RestartPolicy(2, "any")]


@pytest.mark.pure
@pytest.mark.parametrize("returncode", [-9, -15, -2, 137, 130, 143, 1, 2, 3, 127])
def test_the_same_exit_has_the_same_words_and_decision_on_both_transports(
    returncode: int,
) -> None:
    local, ssh = (Failure.of(returncode, t.lost) for t in TRANSPORTS.values())
    assert local == Failure(ssh.kind, ssh.code, None)  # only the transport's lost code differs
    assert local.cause("worker 1") == ssh.cause("worker 1")
    assert local.brief("worker 1") == ssh.brief("worker 1")
    for policy in POLICIES:
        for attempt in (1, 2, 3):
            mine, theirs = policy.verdict(local, attempt), policy.verdict(ssh, attempt)
            assert mine.decision is theirs.decision, (policy, attempt)


@pytest.mark.pure
def test_ssh_255_is_a_lost_link_only_because_the_ssh_transport_says_so() -> None:
    local = Failure.of(255, LocalWorkers.lost)
    ssh = Failure.of(255, SshWorkers.lost)
    assert local.kind is FailureKind.ERROR and ssh.kind is FailureKind.LOST
    assert local.cause("worker 1") == "worker 1 exited with code 255"
    assert ssh.cause("worker 1 on node2") == (
        "worker 1 on node2: lost the connection (ssh exit code 255: host down, unreachable "
        "or killed)"
    )
    policy = RestartPolicy(2, "retryable")
    assert policy.verdict(ssh, 1).decision is Restart.RESTART
    refused = policy.verdict(local, 1)
    assert refused.decision is Restart.PERMANENT
    assert "exit code 255 is a permanent failure" in refused.reason


@pytest.mark.pure
def test_the_group_state() -> None:
    assert group_state([None, None]) == (GroupState.HEALTHY, None)
    assert group_state([0, None]) == (GroupState.HEALTHY, None)
    assert group_state([0, 0]) == (GroupState.SUCCEEDED, None)
    assert group_state([None, 3, -9]) == (GroupState.FAILED, 1)


# A stand-in for ssh: the last argument is the remote command, run here with the same
# standard input (the wrapper reads its description and the heartbeat from it).
FAKE_SSH = """\
#!{python}
import os, sys
os.execvp("sh", ["sh", "-c", sys.argv[-1]])
"""

WORKER = """
import os, signal, sys, time
index, attempt = os.environ["TFPLACE_WORKER_INDEX"], os.environ["TFPLACE_RESTART_COUNT"]
print("worker", index, "attempt", attempt, flush=True)
if index == "1" and attempt == "0":
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(sys.argv[1]))
if attempt == "0":
    time.sleep(60)  # until the launcher stops it (SIGTERM: 143)
"""


def _launcher_lines(text: str) -> list[str]:
    """The launcher's own lines, with the ssh transport's host label taken out; each start
    line (``worker i: pid P on host H``: pids differ) becomes ``worker i started``."""
    lines = [line for line in text.splitlines() if line.startswith("[tfplace launch] ")]
    lines = [re.sub(r": pid \d+ on host \S+$", " started", line) for line in lines]
    return [line.replace(" on 127.0.0.1", "") for line in lines]


def _run_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> dict[str, tuple[LaunchResult, list[str], list[str]]]:
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    command = [sys.executable, str(worker), how]
    seen: dict[str, tuple[LaunchResult, list[str], list[str]]] = {}
    for name in TRANSPORTS:
        out = io.StringIO()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tfplace"):
            if name == "local":
                result = launch(command, 2, out=out, max_restarts=1, grace_seconds=2)
            else:
                result = launch(command, None, hosts="127.0.0.1:2", ssh=[str(ssh)], out=out,
                                max_restarts=1, grace_seconds=2)  # fmt: skip
        warnings = [r.getMessage().replace(" on 127.0.0.1", "") for r in caplog.records]
        seen[name] = (result, _launcher_lines(out.getvalue()), warnings)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "code", "attempts", "words"),
    [
        ("kill", 0, 2, "worker 1 was killed by SIGKILL (exit code 137) on attempt 1; restarting"),
        ("143", 0, 2, "worker 1 exited with the restart exit code 143 on attempt 1; restarting"),
        ("1", 1, 1, "worker 1 exited with code 1 on attempt 1; not restarting: exit code 1 is"),
    ],
)
def test_the_same_failure_is_told_and_decided_the_same_on_both_transports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, code: int, attempts: int, words: str
) -> None:
    seen = _run_both(tmp_path, caplog, how)
    (local, local_lines, local_log), (ssh, ssh_lines, ssh_log) = seen["local"], seen["ssh"]
    assert local.returncode == ssh.returncode == code
    assert local.attempts == ssh.attempts == attempts
    assert local.worker_codes == ssh.worker_codes
    assert local.worker_codes == ((0, 0) if code == 0 else (143, 1))
    # A refusal lists what is retryable; over ssh that includes the transport's lost link.
    clause = "a lost link (ssh exit code 255: host down, unreachable or killed), "
    assert (clause in "".join(ssh_lines)) is (code == 1)
    assert clause not in "".join(local_lines)
    ssh_lines = [line.replace(clause, "") for line in ssh_lines]
    ssh_log = [line.replace(clause, "") for line in ssh_log]
    assert sorted(local_lines) == sorted(ssh_lines), (local_lines, ssh_lines)
    assert local_lines.count("[tfplace launch] worker 1 started") == attempts
    told = [line for line in local_lines if not line.endswith(" started")]  # in order
    assert told == [line for line in ssh_lines if not line.endswith(" started")] and told
    assert local_log == ssh_log and words in local_log[0], (local_log, ssh_log)


# A stand-in for ssh that, like ssh, exits with 255 when the other end is gone: here, when the
# wrapper it runs is killed.
LOSING_SSH = """\
#!{python}
import subprocess, sys
code = subprocess.run(["sh", "-c", "exec " + sys.argv[-1]]).returncode
sys.exit(255 if code < 0 else code)
"""

# Worker 1 silences its host (stops its wrapper: no beat, no output), and 8 s later loses it
# (kills the wrapper: ssh's 255). Worker 0 fails 5 s after the silence began, with an ordinary
# error, as a survivor does when TensorFlow gives up on a silent peer. On the second attempt
# both succeed.
SILENCED = """
import os, signal, sys, time
index, attempt = os.environ["TFPLACE_WORKER_INDEX"], os.environ["TFPLACE_RESTART_COUNT"]
marker = sys.argv[1]  # written when host 1 goes silent: worker 0 times its error from it
print("worker", index, "attempt", attempt, flush=True)
if attempt == "0" and index == "1":
    time.sleep(0.5)
    wrapper = os.getppid()
    os.kill(wrapper, signal.SIGSTOP)
    open(marker, "w").close()
    time.sleep(8)
    os.kill(wrapper, signal.SIGKILL)
    sys.exit(0)
if attempt == "0":
    deadline = time.time() + 60
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(5)  # well past the 2.5 s after which a host without beats counts as silent
    sys.exit(1)
"""


@pytest.mark.slow
def test_a_peers_error_while_a_host_is_silent_waits_for_that_hosts_fate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The silent host is then lost: the loss is the failure (retried), not the peer's error
    (permanent), which alone would have ended the launch."""
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(SILENCED))
    ssh = tmp_path / "ssh"
    ssh.write_text(LOSING_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    out = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="tfplace"):
        result = launch([sys.executable, str(worker), str(tmp_path / "silent")], None,
                        hosts="127.0.0.1:2", ssh=[str(ssh)], out=out, max_restarts=1,
                        grace_seconds=2)  # fmt: skip
    text = out.getvalue()
    assert result.returncode == 0 and result.attempts == 2, text
    assert "worker 1 on 127.0.0.1: lost the connection" in text, text
    assert "worker 0 on 127.0.0.1 exited with code 1; stopping" not in text, text
    warned = [r.getMessage() for r in caplog.records]
    assert any("lost the connection" in w and "restarting all 2 workers" in w for w in warned)


# Worker 0 of the first start widens the pool the discovery command reads, then is killed.
GROWING = """
import json, os, signal, sys
config = json.loads(os.environ["TF_CONFIG"])
attempt = os.environ["TFPLACE_RESTART_COUNT"]
print("size", attempt, len(config["cluster"]["worker"]), flush=True)
if attempt == "0":
    with open(sys.argv[1], "w") as pool:
        pool.write("127.0.0.1:1\\n127.0.0.2 slots=1\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:launch. the cluster spans several hosts")  # stand-in hosts
def test_host_discovery_runs_before_each_start(tmp_path: Path) -> None:
    """Issue 27, item 3: the hosts come from a command (Horovod's convention), run again before
    the restart: the pool grew meanwhile, so the second start has two workers."""
    pool = tmp_path / "pool"
    pool.write_text("127.0.0.1:1\n")
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(GROWING))
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    out = io.StringIO()
    result = launch([sys.executable, str(worker), str(pool)], None, ssh=[str(ssh)], out=out,
                    host_discovery=f"cat {pool}", max_restarts=1)  # fmt: skip
    text = out.getvalue()
    assert result.returncode == 0 and result.attempts == 2, text
    assert re.findall(r"^\[worker 0 127.0.0.1\] size 0 (\d)$", text, re.M) == ["1"], text
    second = sorted(re.findall(r"^\[worker (\d) (\S+)\] size 1 (\d)$", text, re.M))
    assert second == [("0", "127.0.0.1", "2"), ("1", "127.0.0.2", "2")], text
    assert result.worker_codes == (0, 0)


# Worker 0 of the first start widens the pool, then trains on until the launcher stops it.
WIDENING = """
import json, os, sys, time
config = json.loads(os.environ["TF_CONFIG"])
attempt = os.environ["TFPLACE_RESTART_COUNT"]
print("size", attempt, len(config["cluster"]["worker"]), flush=True)
if attempt == "0":
    with open(sys.argv[1], "w") as pool:
        pool.write("127.0.0.1:1\\n127.0.0.2 slots=1\\n")
    time.sleep(120)  # until the launcher stops the group to take the new host in
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:launch. the cluster spans several hosts")  # stand-in hosts
def test_host_discovery_with_rejoin_takes_a_new_host_in_while_the_group_runs(
    tmp_path: Path,
) -> None:
    """With --rejoin the discovery command runs every few seconds while the group trains: a
    host added to the pool stops the group (as a preemption) and it starts again on more."""
    pool = tmp_path / "pool"
    pool.write_text("127.0.0.1:1\n")
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WIDENING))
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    out = io.StringIO()
    t0 = time.monotonic()
    result = launch([sys.executable, str(worker), str(pool)], None, ssh=[str(ssh)], out=out,
                    host_discovery=f"cat {pool}", rejoin=True, min_workers=1,
                    grace_seconds=2)  # fmt: skip
    took = time.monotonic() - t0
    text = out.getvalue()
    assert result.returncode == 0 and result.attempts == 2, text
    assert re.findall(r"^\[worker 0 127.0.0.1\] size 0 (\d)$", text, re.M) == ["1"], text
    second = sorted(re.findall(r"^\[worker (\d) (\S+)\] size 1 (\d)$", text, re.M))
    assert second == [("0", "127.0.0.1", "2"), ("1", "127.0.0.2", "2")], text
    assert took < 60, text  # taken in while it ran, long before the first start's 120 s


@pytest.mark.pure
def test_a_failing_discovery_command_is_a_clear_error() -> None:
    from tfplace.errors import ClusterConfigError

    with pytest.raises(ClusterConfigError, match=r"--host-discovery 'exit 3' failed \(exit code 3"):
        launch(["true"], None, host_discovery="exit 3")
    with pytest.raises(ClusterConfigError, match="--host-discovery: found no host"):
        launch(["true"], None, host_discovery="true")
    with pytest.raises(ClusterConfigError, match="found a host list or -n as well"):
        launch(["true"], None, hosts="a", host_discovery="echo a")
