"""The command line, run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import QUIET_ENV


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, **QUIET_ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tfplace", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=False,
    )


def test_report_text() -> None:
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr
    assert "TensorFlow    2." in proc.stdout
    assert "CPU-only build" in proc.stdout
    assert "Strategy      default on /CPU:0" in proc.stdout


def test_report_json_names_cuda_visible_devices() -> None:
    proc = run_cli("doctor", "--json", env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("tensorflow", "keras", "platform", "cpu", "env", "strategy"):
        assert key in data
    assert data["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert any("CUDA_VISIBLE_DEVICES='-1'" in r for r in data["strategy"]["reasons"])


def test_report_with_bad_tf_config_explains_instead_of_crashing() -> None:
    proc = run_cli(env={"TF_CONFIG": "{broken"})
    assert proc.returncode == 1  # an error finding (F3)
    assert "cannot decide: TF_CONFIG: JSON" in proc.stdout
