"""Host lists for the hostfile launcher: ``--hosts`` and hostfiles (pure), the pure parts of
the ssh launcher (the ssh command line, the forwarded environment), and its probe of each host
through a stand-in ssh client."""

from __future__ import annotations

import io
import os
import shlex
import sys
from pathlib import Path

import pytest

from tfplace.cluster._forward import TF_VARIABLES, forwarded_env
from tfplace.cluster._hosts import (
    HostSlots,
    parse_hostfile,
    parse_hosts,
    read_hostfile,
    worker_hosts,
)
from tfplace.cluster._ssh import SSH_OPTIONS, probe, ssh_command, worker_address
from tfplace.errors import ClusterConfigError

pytestmark = pytest.mark.pure


def pairs(hosts: tuple[HostSlots, ...]) -> list[tuple[str, int]]:
    return [(h.host, h.slots) for h in hosts]


def test_hosts_list_with_and_without_slots() -> None:
    assert pairs(parse_hosts("h1:2,h2:2")) == [("h1", 2), ("h2", 2)]
    assert pairs(parse_hosts(" node-1.example.org , 10.0.0.3:4 ")) == [
        ("node-1.example.org", 1),
        ("10.0.0.3", 4),
    ]
    assert pairs(parse_hosts("[fd00::1]:2,[fd00::2]")) == [("[fd00::1]", 2), ("[fd00::2]", 1)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["entry 1", "found ''", "expected host[:slots]"]),
        ("h1:2,,h2", ["entry 2", "remove the extra comma"]),
        ("h1:0", ["entry 1", "found '0'", "a slot count", "Fix:"]),
        ("h1:two", ["found 'two'", "whole number"]),
        ("h1:-1", ["found '-1'"]),
        ("h1:2,h1:1", ["entry 2", "found 'h1'", "each host once", "entry 1", "node1:4"]),
        ("root@h1:2", ["found 'root@h1:2'", "without a user", "~/.ssh/config"]),
        ("fd00::1:2", ["an IPv6 address in brackets", "[fd00::1:2], or [ADDRESS]:SLOTS"]),
        ("bad host:2", ["found 'bad host'", "expected an IPv4 address"]),
        ("[fd00::1]x", ["[IPv6 address]:slots"]),
    ],
)
def test_bad_hosts_lists_say_expected_found_fix(text: str, words: list[str]) -> None:
    with pytest.raises(ClusterConfigError) as err:
        parse_hosts(text)
    message = str(err.value)
    assert message.startswith("--hosts: ")
    for word in words:
        assert word in message, message


def test_hostfile_in_the_horovod_deepspeed_and_open_mpi_forms() -> None:
    text = """
    # a comment line
    node1 slots=2          # Horovod / DeepSpeed
    node2 slots=4 max_slots=8
    node3:2
    node4

    """
    assert pairs(parse_hostfile(text)) == [("node1", 2), ("node2", 4), ("node3", 2), ("node4", 1)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("# only a comment\n", ["found no host", "node1 slots=2"]),
        ("node1 slot=2\n", ["line 1", "found 'slot=2'", "'slots=N'"]),
        ("node1 slots=x\n", ["line 1", "found 'x'", "slot count"]),
        ("node1\nnode1 slots=2\n", ["line 2", "each host once", "line 1"]),
        ("node1:2 slots=2\n", ["line 1", "the slot count once"]),
        ("node1 slots=2 slots=3\n", ["one slots=N"]),
        ("node1 max_slots=0\n", ["found '0'"]),
    ],
)
def test_bad_hostfiles_name_the_line(text: str, words: list[str]) -> None:
    with pytest.raises(ClusterConfigError) as err:
        parse_hostfile(text, "hosts.txt")
    message = str(err.value)
    assert message.startswith("hosts.txt: ")
    for word in words:
        assert word in message, message


def test_read_hostfile(tmp_path: Path) -> None:
    path = tmp_path / "hostfile"
    path.write_text("a slots=2\nb slots=1\n")
    assert pairs(read_hostfile(path)) == [("a", 2), ("b", 1)]
    path.write_text("a slots=2\na\n")
    with pytest.raises(ClusterConfigError, match=f"^{path}: line 2"):
        read_hostfile(path)
    with pytest.raises(ClusterConfigError, match=r"cannot read .*Fix: check the path"):
        read_hostfile(tmp_path / "missing")


def test_workers_are_numbered_host_by_host() -> None:
    assert worker_hosts(parse_hosts("a:2,b:1,c:2")) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
        ("c", 1),
    ]


def test_ssh_command_never_prompts_and_lets_the_users_options_win() -> None:
    cmd = ssh_command(["ssh", "-o", "ConnectTimeout=30"], "[fd00::1]", ["python3", "-c", "a b"])
    assert cmd[:3] == ["ssh", "-o", "ConnectTimeout=30"]  # first value wins in ssh
    assert cmd[3 : 3 + len(SSH_OPTIONS)] == list(SSH_OPTIONS)
    assert "BatchMode=yes" in cmd and "ServerAliveInterval=1" in cmd
    assert cmd[-2] == "fd00::1"  # ssh takes a bare IPv6 address
    assert shlex.split(cmd[-1]) == ["python3", "-c", "a b"]


def test_an_ssh_config_alias_becomes_an_address_every_worker_can_use() -> None:
    """``Host gpu1`` / ``HostName 10.0.0.5`` means nothing to TensorFlow's gRPC: the workers'
    TF_CONFIG gets the address ssh reached on the host (issue 26, item 6)."""
    assert worker_address("gpu1", "10.0.0.5", "10.0.0.5") == "10.0.0.5"
    assert worker_address("gpu1", "gpu1.cluster.lan", None) == "gpu1.cluster.lan"
    assert worker_address("gpu1", "gpu1.cluster.lan", "10.0.0.5") == "10.0.0.5"  # reached wins
    assert worker_address("node1", "node1", "10.0.0.5") == "node1"  # a plain name stays
    assert worker_address("node1", None, "10.0.0.5") == "node1"  # ssh -G could not say
    assert worker_address("[fd00::1]", "fd00::1", "fd00::1") == "[fd00::1]"
    assert worker_address("gpu6", "fd00::6", "fd00::6") == "[fd00::6]"


def test_forwarded_environment() -> None:
    env = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_CONFIG": "{}",
        "TFPLACE_X": "1",
        "PYTHONPATH": "/src",
        "KERAS_BACKEND": "tensorflow",
        "HOME": "/home/me",
        "PATH": "/usr/bin",
        "MY_VAR": "v",
    }
    assert forwarded_env(env) == {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TFPLACE_X": "1",
        "PYTHONPATH": "/src",
        "KERAS_BACKEND": "tensorflow",
    }
    assert forwarded_env(env, ["MY_VAR"])["MY_VAR"] == "v"
    with pytest.raises(ClusterConfigError, match="each worker gets its own TF_CONFIG"):
        forwarded_env(env, ["TF_CONFIG"])


def test_terraforms_variables_never_reach_the_hosts() -> None:
    """``TF_`` is Terraform's prefix too: its input variables, API tokens and CLI arguments
    stay here; TensorFlow's own variables go, by the documented list (issue 26, item 2)."""
    terraform = {
        "TF_VAR_db_password": "s3cret",
        "TF_TOKEN_app_terraform_io": "token",
        "TF_CLI_ARGS": "-no-color",
        "TF_CLI_ARGS_plan": "-refresh=false",
        "TF_LOG": "DEBUG",
        "TF_WORKSPACE": "prod",
    }
    tensorflow = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_XLA_FLAGS": "--tf_xla_auto_jit=2",
                  "TF_ENABLE_ONEDNN_OPTS": "0", "TF_USE_LEGACY_KERAS": "0"}  # fmt: skip
    assert forwarded_env({**terraform, **tensorflow}) == tensorflow
    assert set(tensorflow) <= set(TF_VARIABLES)
    page = (Path(__file__).resolve().parents[2] / "docs" / "clusters.md").read_text()
    assert all(f"`{name}`" in page for name in TF_VARIABLES)  # the documented list is this one
    # named explicitly, a variable goes (the user's choice)
    assert forwarded_env(terraform, ["TF_WORKSPACE"]) == {"TF_WORKSPACE": "prod"}


def test_x_name_value_sets_the_value_and_an_unset_name_is_an_error() -> None:
    env = {"LR": "0.1"}
    assert forwarded_env(env, ["LR", "SEED=3", "EMPTY="]) == {"LR": "0.1", "SEED": "3", "EMPTY": ""}
    assert forwarded_env(env, ["LR=0.5"])["LR"] == "0.5"  # the value given wins, as mpirun -x
    with pytest.raises(ClusterConfigError) as err:
        forwarded_env(env, ["MISSING_VAR"])
    assert "-x MISSING_VAR" in str(err.value) and "MISSING_VAR unset" in str(err.value)
    assert "-x MISSING_VAR=VALUE" in str(err.value)
    with pytest.raises(ClusterConfigError, match="expected NAME or NAME=VALUE"):
        forwarded_env(env, ["=3"])


@pytest.mark.slow
def test_x_is_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from tfplace.__main__ import main
    from tfplace.cluster._launch import launch

    # node-unreachable.invalid is never asked: the bad -x ends the launch first
    assert (
        main(["launch", "--hosts", "node-unreachable.invalid", "-x", "NOT_SET_HERE_X", __file__])
        == 2
    )
    assert "-x NOT_SET_HERE_X: expected a variable set" in capsys.readouterr().err
    with pytest.raises(ClusterConfigError, match="-x NOT_SET_HERE_X"):
        launch(["true"], 1, forward=["NOT_SET_HERE_X"], env={})
    out = io.StringIO()
    result = launch([sys.executable, "-c", "import os; print(os.environ['SEED'])"], 1,
                    forward=["SEED=7"], env=dict(os.environ), out=out)  # fmt: skip
    assert result.returncode == 0 and "[worker 0] 7" in out.getvalue()


def test_launch_checks_the_host_list_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tfplace.__main__ import main
    from tfplace.cluster._launch import launch

    with pytest.raises(SystemExit) as stop:
        main(["launch", "x.py"])
    assert stop.value.code == 2
    assert "launch needs -n N (local workers), or --hosts / --hostfile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["launch", "--hosts", "a:2", "--network", "host", "x.py"])
    assert "not with --hosts/--hostfile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["launch", "-n", "2", "--port", "3000", "x.py"])
    assert "--port goes with --hosts/--hostfile" in capsys.readouterr().err

    assert main(["launch", "--hosts", "a:x", __file__]) == 2  # a script that exists
    assert "tfplace --hosts: entry 1: found 'x', expected a slot count" in capsys.readouterr().err
    assert main(["launch", "--hostfile", str(tmp_path / "none"), __file__]) == 2
    assert "cannot read" in capsys.readouterr().err

    with pytest.raises(ClusterConfigError, match="found -n 3 workers, expected the 2 slots"):
        launch(["true"], 3, hosts="a:2")
    with pytest.raises(ClusterConfigError, match="network='private' keeps workers on this"):
        launch(["true"], None, hosts="a:2", network="private")
    with pytest.raises(ValueError, match="num_workers must be a positive int"):
        launch(["true"], None)


# A stand-in for ssh: it fails each call whose number is in FAIL (1-based) with the text in
# SAYS and exit code 255, as ssh does before a login; any other call runs the remote command
# here, as ssh would there.
FAKE_SSH = """\
#!{python}
import os, pathlib, subprocess, sys
if "-G" in sys.argv:  # ssh -G HOST: the configuration, as ssh resolves it (no connection)
    print("hostname", sys.argv[-1])
    sys.exit(0)
calls = pathlib.Path({calls!r})
n = len(calls.read_text().split()) + 1 if calls.exists() else 1
calls.write_text(calls.read_text() + " x" if calls.exists() else "x")
if n in {fail!r}:
    sys.stderr.write({says!r} + "\\n")
    sys.exit(255)
sys.exit(subprocess.run(["sh", "-c", sys.argv[-1]]).returncode)
"""


def fake_ssh(tmp_path: Path, fail: set[int], says: str) -> tuple[list[str], Path]:
    calls = tmp_path / "calls"
    path = tmp_path / "ssh"
    path.write_text(FAKE_SSH.format(python=sys.executable, calls=str(calls), fail=fail, says=says))
    path.chmod(0o755)
    return [str(path)], calls


@pytest.mark.slow
def test_the_probe_tries_again_when_sshd_drops_the_connection_before_the_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An sshd over its MaxStartups limit, or one restarting with its host, resets the
    connection before the login: the probe tries again (3 tries in all), saying so."""
    says = "kex_exchange_identification: read: Connection reset by peer"
    ssh, calls = fake_ssh(tmp_path, {1, 2}, says)
    found = probe(ssh, sys.executable, HostSlots("node1", 2), None, "launch")
    assert found.cores >= 1 and len(found.ports) == 2
    assert found.address == "node1"  # ssh -G resolves it to itself: no alias
    assert calls.read_text().split() == ["x"] * 3
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 2 and says in retries[0], retries


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fail", "says", "tries"),
    [
        ({1, 2, 3}, "ssh: connect to host node1 port 22: Connection refused", 3),
        ({1}, "root@node1: Permission denied (publickey).", 1),  # never tried again
    ],
)
def test_a_probe_that_cannot_log_in_is_a_clear_error(
    tmp_path: Path, fail: set[int], says: str, tries: int
) -> None:
    ssh, calls = fake_ssh(tmp_path, fail, says)
    with pytest.raises(ClusterConfigError, match="host node1: cannot log in over ssh") as err:
        probe(ssh, sys.executable, HostSlots("node1", 1), None, "launch")
    assert says in str(err.value)
    assert len(calls.read_text().split()) == tries
