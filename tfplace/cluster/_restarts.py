"""The restart contract between a training program, tfplace's launcher and the platform.

A worker that stops *so that it can be started again* (it was preempted, it saved a backup and
wants the whole group restarted) exits with :data:`RESTART_EXIT_CODE`. Whatever restarts the
group (``tfplace launch --max-restarts``, SLURM ``--requeue``, a Kubernetes/Kubeflow
``restartPolicy: ExitCode``) treats that code as retryable, starts every worker again, and
tells them which attempt this is in :data:`RESTART_COUNT_ENV`.

Why 143 (``128 + SIGTERM``):

- TensorFlow's own preemption handling uses it: ``failure_handling_util._RESTARTABLE_EXIT_CODE
  = 143`` is the exit code of ``gce_exit_fn``, the default ``exit_fn`` of
  ``GcpGpuTerminationConfig``/``GcpCpuTerminationConfig`` that ``PreemptionCheckpointHandler``
  calls after its last checkpoint (tensorflow/python/distribute/failure_handling/
  failure_handling_util.py). Its other default, ``sys.exit(42)`` (``BorgTerminationConfig``,
  also used on unknown platforms), is a Borg convention that nothing outside Google reads.
- Kubeflow's training operator, under ``restartPolicy: ExitCode``, retries 130, 137 and 143
  (the signal exits SIGINT, SIGKILL, SIGTERM) and 138 (SIGUSR1, "user defined retryable"), and
  treats 1, 2, 126, 127, 128, 139 and every other code as permanent
  (kubeflow/training-operator ``pkg/util/train/train_util.go``, ``IsRetryableExitCode``).
  42 would be a permanent failure there; 143 is retried.
- It is what a shell, ``subprocess`` (as ``-15``) and every scheduler already report for a
  process that SIGTERM killed, so a worker that saved and exited and a worker that died of
  the same SIGTERM before it could save are both "retry": the second resumes from the backup
  before.

Example:
    >>> from tfplace.cluster._restarts import RESTART_EXIT_CODE, RESTART_COUNT_ENV, is_retryable
    >>> RESTART_EXIT_CODE, RESTART_COUNT_ENV
    (143, 'TFPLACE_RESTART_COUNT')
    >>> is_retryable(143), is_retryable(-9), is_retryable(1)
    (True, True, False)
"""

from __future__ import annotations

import os
import signal

__all__ = [
    "GLOBAL_BATCH_ENV",
    "RESTART_COUNT_ENV",
    "RESTART_EXIT_CODE",
    "WORKER_BATCH_ENV",
    "is_retryable",
    "launched_global_batch",
    "restart_count",
]

#: The exit code of a worker that saved its state and asks for the group to be restarted:
#: ``128 + SIGTERM`` (TensorFlow's restartable code, retryable under Kubeflow's ExitCode
#: policy). See the module docstring for the sources.
RESTART_EXIT_CODE = 128 + int(signal.SIGTERM)

#: The environment variable a restarting launcher sets in every worker: ``0`` on the first
#: start, ``k`` on the k-th restart. Absent means a first start.
RESTART_COUNT_ENV = "TFPLACE_RESTART_COUNT"


def is_retryable(returncode: int) -> bool:
    """Whether a worker's exit status asks for a restart of the group (not a permanent error).

    Retryable: :data:`RESTART_EXIT_CODE`, and a death by a signal, either as ``subprocess``
    reports it (a negative return code) or as a shell reports it (``128 + n``). Everything
    else (1 for an exception, 2 for bad arguments, ...) is permanent: running the same program
    again would fail the same way.

    Args:
        returncode: ``Popen.returncode`` or a shell's ``$?``.

    Example:
        >>> is_retryable(0), is_retryable(137), is_retryable(2)
        (False, True, False)
    """
    if returncode == RESTART_EXIT_CODE or returncode < 0:
        return True
    return 128 < returncode < 128 + 65  # 128 + a signal number (1 to 64)


def restart_count(environ: dict[str, str] | None = None) -> int:
    """Which restart this process belongs to: the value of :data:`RESTART_COUNT_ENV`, 0 if unset.

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        ValueError: the variable is set but is not a non-negative integer.

    Example:
        >>> restart_count({"TFPLACE_RESTART_COUNT": "2"}), restart_count({})
        (2, 0)
    """
    env = os.environ if environ is None else environ
    raw = env.get(RESTART_COUNT_ENV, "0").strip() or "0"
    if not raw.isdigit():
        raise ValueError(
            f"{RESTART_COUNT_ENV}={raw!r}: expected a non-negative integer (the launcher sets "
            f"0, 1, 2, ...). Fix: unset it, or set it to the restart number."
        )
    return int(raw)


#: Set by ``tfplace launch --global-batch B`` in every worker: the global batch, and each
#: worker's part of it.
GLOBAL_BATCH_ENV = "TFPLACE_GLOBAL_BATCH"
WORKER_BATCH_ENV = "TFPLACE_WORKER_BATCH"


def launched_global_batch(environ: dict[str, str] | None = None) -> int | None:
    """The global batch ``tfplace launch --global-batch`` gave this worker, or None.

    Raises:
        ValueError: the variable is set but is not a positive integer.

    Example:
        >>> launched_global_batch({"TFPLACE_GLOBAL_BATCH": "96"}), launched_global_batch({})
        (96, None)
    """
    env = os.environ if environ is None else environ
    raw = env.get(GLOBAL_BATCH_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"{GLOBAL_BATCH_ENV}={raw!r}: expected a positive integer (tfplace launch "
            "--global-batch sets it). Fix: unset it, or set it to the global batch."
        )
    return int(raw)
