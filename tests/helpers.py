"""Test helpers: the ONE way tests run code in a fresh TensorFlow process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

from tfplace._launch import free_ports

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def run_fresh(
    code: str,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 240,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process (so TensorFlow's runtime starts fresh).

    ``env`` entries override the current environment; a None value removes the variable.
    With ``check``, a non-zero exit fails the test showing the child's output.
    """
    full = dict(os.environ)
    full.update(QUIET_ENV)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"child exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def run_json(code: str, **kwargs: Any) -> Any:
    """Run ``code`` fresh; it must print one JSON document as its last stdout line."""
    proc = run_fresh(code, **kwargs)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def run_cluster(
    code: str, n: int = 2, timeout: float = 240, extra_env: Mapping[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``code`` as ``n`` local workers of one TF_CONFIG cluster; return each one's result."""
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(n):
        env = {**os.environ, **QUIET_ENV, **(extra_env or {})}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        args = [sys.executable, "-c", textwrap.dedent(code)]
        procs.append(
            (
                args,
                subprocess.Popen(
                    args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    done = []
    try:
        for args, proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def run_workers(
    code: str, n: int = 2, timeout: float = 240, extra_env: Mapping[str, str] | None = None
) -> list[Any]:
    """Run ``code`` as ``n`` workers; each must exit 0 and print JSON as its last line."""
    results = []
    for i, proc in enumerate(run_cluster(code, n, timeout, extra_env)):
        assert proc.returncode == 0, f"worker {i} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results
