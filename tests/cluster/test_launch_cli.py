"""The first hour with ``tfplace launch`` (issue 26, items 10 to 14): a missing script or module
is refused before anything starts, a replaced TF_CONFIG is said, ``launch``'s own usage,
``--version``, quiet workers by default with ``-v``/``-q``, and which pid is which worker."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tfplace
from tfplace.__main__ import _missing_target, main
from tfplace.cluster._launch import launch

REPORT = "import os; print('level', os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'pid', os.getpid())"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "tfplace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.mark.slow
def test_a_missing_script_or_module_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = cli("launch", "-n", "2", "missing.py", cwd=tmp_path)
    assert done.returncode == 2
    assert "tfplace launch: no such script 'missing.py'" in done.stderr
    assert "no worker was started" in done.stderr
    assert "[worker" not in done.stdout + done.stderr  # not two copies of Python's error
    done = cli("launch", "-n", "2", "-m", "no_such_module_anywhere.train", cwd=tmp_path)
    assert done.returncode == 2
    assert "no module named 'no_such_module_anywhere.train'" in done.stderr
    assert "[worker" not in done.stdout + done.stderr


@pytest.mark.pure
def test_the_target_check_finds_what_python_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.py").write_text("print(1)\n")
    monkeypatch.chdir(tmp_path)
    assert _missing_target("mine.py", module=False) is None
    assert _missing_target("mine", module=True) is None  # from the current folder, as -m does
    assert _missing_target("json.tool", module=True) is None
    assert "no such script" in (_missing_target("gone.py", module=False) or "")


@pytest.mark.slow
def test_a_tf_config_of_the_launchers_environment_is_said_to_be_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    command = [sys.executable, "-c", "print('ok')"]
    for value, level, words in [
        ("{not json", logging.WARNING, "the TF_CONFIG of this environment is not valid"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
            logging.INFO,
            "each worker gets its own TF_CONFIG, not this environment's",
        ),
    ]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tfplace"):
            result = launch(command, 1, env={**os.environ, "TF_CONFIG": value}, out=io.StringIO())
        assert result.returncode == 0
        said = [r for r in caplog.records if "TF_CONFIG" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == level and words in said[0].getMessage()
        assert "\n" not in said[0].getMessage()  # one line


@pytest.mark.pure
def test_bad_launch_options_print_launchs_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["launch", "-n", "0", "x.py"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tfplace launch ") and "-n must be >= 1, found 0" in err


@pytest.mark.pure
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"tfplace {tfplace.__version__}\n"


@pytest.mark.slow
def test_workers_are_quiet_by_default_and_v_q_change_it(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(REPORT + "\n")
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    levels = {}
    for flag, expected in [((), "1"), (("-v",), "0"), (("-q",), "2")]:
        done = cli("launch", "-n", "2", *flag, str(script), env=base)
        assert done.returncode == 0, done.stderr
        levels[flag] = re.findall(r"^\[worker \d\] level (\S+)", done.stdout, re.M)
        assert levels[flag] == [expected, expected], (flag, done.stdout)
        if flag == ("-v",):  # the launcher's INFO lines: core shares, addresses
            assert "tfplace launch: 2 workers on" in done.stderr
        else:
            assert "tfplace launch: 2 workers on" not in done.stderr
    done = cli("launch", "-n", "1", "-q", str(script), env={**base, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "level 3" in done.stdout  # the user's own setting wins


@pytest.mark.slow
def test_each_worker_is_named_with_its_pid_and_host_at_start(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(REPORT + "\n")
    done = cli("launch", "-n", "2", str(script))
    assert done.returncode == 0, done.stderr
    said = dict(re.findall(r"^\[tfplace launch\] worker (\d): pid (\d+) on host \S+$",
                           done.stdout, re.M))  # fmt: skip
    real = dict(re.findall(r"^\[worker (\d)\] level \S+ pid (\d+)$", done.stdout, re.M))
    assert said == real and len(said) == 2, done.stdout


@pytest.mark.pure
def test_the_link_timeout_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["launch", "--hosts", "a", "--link-timeout", "0.5", __file__])
    assert stop.value.code == 2
    assert "--link-timeout must be a number of seconds >= 1, found 0.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="link_timeout must be a finite number of seconds >= 1"):
        launch(["true"], None, hosts="a", link_timeout=float("inf"))


@pytest.mark.pure
def test_min_workers_is_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from tfplace.errors import ClusterConfigError

    with pytest.raises(ClusterConfigError, match="found --min-workers 3, expected 1 to the 2"):
        launch(["true"], None, hosts="a:1,b:1", min_workers=3)
    with pytest.raises(ValueError, match="min_workers goes with hosts"):
        launch(["true"], 2, min_workers=1)
    with pytest.raises(SystemExit):
        main(["launch", "-n", "2", "--min-workers", "1", __file__])
    assert "--min-workers goes with --hosts/--hostfile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["launch", "--hosts", "a,b", "--rejoin", __file__])
    assert "--rejoin goes with --min-workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="rejoin goes with min_workers"):
        launch(["true"], None, hosts="a,b", rejoin=True)


@pytest.mark.slow
def test_a_global_batch_is_shared_and_checked(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text("import os; print(os.environ['TFPLACE_GLOBAL_BATCH'], "
                      "os.environ['TFPLACE_WORKER_BATCH'])\n")  # fmt: skip
    done = cli("launch", "-n", "5", "--global-batch", "96", str(script))
    assert done.returncode == 2 and "[worker" not in done.stdout
    assert "found 5 workers for a global batch of 96" in done.stderr
    assert "(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...)" in done.stderr
    done = cli("launch", "-n", "2", "--global-batch", "96", str(script))
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^\[worker \d\] (.*)$", done.stdout, re.M) == ["96 48", "96 48"]
