"""Test helpers: the ONE way tests run code in a fresh TensorFlow process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tfplace._facts.cluster.spec import ClusterSpec
from tfplace.cluster._launch import free_ports

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
#: Set in every run_fresh child: allocate GPU memory on demand rather than mapping it all.
CHILD_GPU_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
#: run_fresh(cpu_only=True): TensorFlow sees no GPU (tfplace's inventory reports them hidden).
CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": "-1"}


def run_fresh(
    code: str,
    *,
    env: Mapping[str, str | None] | None = None,
    cpu_only: bool = False,
    timeout: float = 240,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process (so TensorFlow's runtime starts fresh).

    The child inherits this process's environment plus :data:`QUIET_ENV` and
    :data:`CHILD_GPU_ENV`: ``TF_FORCE_GPU_ALLOW_GROWTH=true``, so that on a GPU host each child
    allocates GPU memory as it needs it instead of mapping the whole GPU (several children at
    once, e.g. under pytest-xdist, would otherwise run out of memory). A test about memory
    settings overrides it through ``env`` (a None value removes it).

    Args:
        code: Python source; it is dedented first.
        env: overrides for the child's environment; a None value removes the variable.
        cpu_only: hide every GPU from the child (``CUDA_VISIBLE_DEVICES=-1``), for tests whose
            expectations are those of a CPU-only machine; applied before ``env``.
        timeout: seconds before the child is killed.
        check: fail the test, showing the child's output, when the child exits non-zero.

    Returns:
        The finished process, with its stdout and stderr as text.

    Example:
        >>> run_fresh("print(6 * 7)", cpu_only=True).stdout.strip()
        '42'
    """
    full = dict(os.environ)
    full.update(QUIET_ENV)
    full.update(CHILD_GPU_ENV)
    if cpu_only:
        full.update(CPU_ONLY_ENV)
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
    """Run ``code`` fresh (see :func:`run_fresh` for ``env``, ``cpu_only``, ...); it must print
    one JSON document as its last non-empty stdout line, which is returned decoded."""
    proc = run_fresh(code, **kwargs)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def run_cluster(
    code: str, n: int = 2, timeout: float = 240, extra_env: Mapping[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``code`` as ``n`` local workers of one TF_CONFIG cluster; return each one's result."""
    cluster = ClusterSpec.local(free_ports(n))
    procs = []
    for i in range(n):
        env = {**os.environ, **QUIET_ENV, **CHILD_GPU_ENV, **(extra_env or {})}
        env["TF_CONFIG"] = cluster.for_task(i).to_tf_config()
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


#: Set by ``.ci/run``: an engine test (SLURM, Ray) that cannot run there fails instead of
#: skipping, so a missing install step cannot pass CI silently.
REQUIRE_ENGINES = os.environ.get("TFPLACE_REQUIRE_ENGINES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail with it where ``TFPLACE_REQUIRE_ENGINES=1`` (CI)."""
    import pytest

    if REQUIRE_ENGINES:
        pytest.fail(f"{reason} (TFPLACE_REQUIRE_ENGINES=1: this run must have it)")
    pytest.skip(reason)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as gone); reads ``/proc``."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def wait_gone(pids: Iterable[int], timeout: float = 10) -> list[int]:
    """Wait until none of ``pids`` runs (see :func:`alive`), for at most ``timeout`` seconds.

    A process that was just killed may take a moment to go, more so on a loaded machine, so
    tests poll instead of sleeping a fixed time.

    Returns:
        The pids still alive at the deadline: ``[]`` when every one is gone.

    Example:
        >>> proc = subprocess.Popen([sys.executable, "-c", "pass"])
        >>> _ = proc.wait()
        >>> wait_gone([proc.pid])
        []
    """
    import time

    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_launcher(proc: subprocess.Popen[Any], worker_pids: Iterable[int] = ()) -> None:
    """Make sure a ``tfplace launch`` process and its workers are gone (a test's ``finally``).

    The launcher is asked to stop (SIGTERM, which it forwards to its workers); if it still runs
    after 15 s, its process group is killed (start it with ``start_new_session=True``). Each
    worker runs in its own session, so every pid of ``worker_pids`` that still leads a process
    group has that group killed too. Does nothing to processes that already ended.
    """
    import signal

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in worker_pids:
        try:
            if alive(pid) and os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def computed_once(folder: Path, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per test session, shared by every pytest-xdist worker.

    A module fixture runs once per worker that runs one of its tests, so under ``-n 2`` a
    fixture of two minutes may run twice. The first worker to get here computes under an
    exclusive lock and leaves the result (JSON) in ``folder``, the session's shared base
    folder (``tmp_path_factory.getbasetemp().parent`` under xdist); a worker arriving
    meanwhile waits on the lock, then reads it. (The pattern pytest-xdist documents for
    session fixtures; xdist's own ``loadgroup`` is inert under pytest 9.2.)
    """
    result = folder / f"{name}.json"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.exists():
            return json.loads(result.read_text())
        value = compute()
        result.write_text(json.dumps(value))
        return value


def processes_named(*names: str) -> list[Path]:
    """The ``/proc/<pid>`` folders of the processes whose name (``comm``) is one of ``names``
    (a process that ends while we look is left out)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in names:
                found.append(comm.parent)
    return found
