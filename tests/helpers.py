"""Test helpers: the ONE way tests run code in a fresh TensorFlow process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

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
