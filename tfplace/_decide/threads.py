"""Thread decisions: TensorFlow's pool sizes for one process and for local workers. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["THREAD_VARS", "WorkerThreads", "auto_threads", "split_threads"]


def auto_threads(usable_cores: int) -> tuple[int, int]:
    """The ``(intra_op, inter_op)`` thread counts ``configure_cpus("auto")`` chooses.

    TensorFlow sizes both pools from the host's cores; "auto" sizes them from the cores this
    process may really use (affinity and cgroup quota), so a ``--cpus 4`` container on a
    64-core host runs 4 + 4 threads instead of 64 + 64.

    Example:
        >>> auto_threads(4), auto_threads(0)
        ((4, 4), (1, 1))
    """
    usable = max(1, usable_cores)
    return usable, usable


THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclass(frozen=True)
class WorkerThreads:
    """The thread-pool settings every local worker gets, and why.

    Attributes:
        cores_per_worker: each worker's share of the usable cores (at least 1).
        set_env: the variables the launcher adds to each worker's environment.
        reasons: one sentence per decision, for the launch log.
    """

    cores_per_worker: int
    set_env: tuple[tuple[str, str], ...]
    reasons: tuple[str, ...]


def split_threads(usable_cores: int, num_workers: int, env: Mapping[str, str]) -> WorkerThreads:
    """Size each local worker's TensorFlow thread pools to its share of the cores (pure).

    Each worker is configured as TensorFlow configures itself on a machine with its share of
    the cores: both pools get ``usable_cores // num_workers`` threads (at least 1).
    A variable the environment already sets is kept (``0`` means TensorFlow's default, so
    ``TF_NUM_INTRAOP_THREADS=0 TF_NUM_INTEROP_THREADS=0`` turns the sharing off).

    Args:
        usable_cores: cores the workers may use together (the inventory's
            ``cpu.usable_cores``: affinity, capped by the cgroup quota).
        num_workers: how many workers share them.
        env: the workers' base environment.

    Raises:
        ValueError: a count is not a positive int.

    Example:
        >>> split_threads(8, 2, {}).set_env
        (('TF_NUM_INTRAOP_THREADS', '4'), ('TF_NUM_INTEROP_THREADS', '4'))
        >>> split_threads(8, 2, {"TF_NUM_INTRAOP_THREADS": "1"}).set_env
        (('TF_NUM_INTEROP_THREADS', '4'),)
    """
    for name, value in (("usable_cores", usable_cores), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"split_threads: {name} must be a positive int, found {value!r}")
    share = max(1, usable_cores // num_workers)
    if usable_cores < num_workers:
        why = (
            f"{usable_cores} usable core(s) for {num_workers} workers: 1 thread per pool "
            "each; the workers still take turns on the cores (fewer workers would be faster)"
        )
    elif usable_cores % num_workers:
        why = (
            f"{usable_cores} usable cores / {num_workers} workers: {share} each "
            f"({usable_cores - share * num_workers} left for the rest of the machine)"
        )
    else:
        why = f"{usable_cores} usable cores / {num_workers} workers: {share} each"
    reasons = [why]
    set_env = []
    for var in THREAD_VARS:
        if var in env:
            reasons.append(f"{var}={env[var]} is set in the environment: kept for every worker")
        else:
            set_env.append((var, str(share)))
    if set_env:
        reasons.append("each worker gets " + ", ".join(f"{k}={v}" for k, v in set_env))
    return WorkerThreads(share, tuple(set_env), tuple(reasons))
