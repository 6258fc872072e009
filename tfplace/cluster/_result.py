"""How a launch ended: :class:`LaunchResult`, the one result of both transports of the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LaunchResult"]


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended.

    Attributes:
        returncode: 0 when every worker succeeded, else the first failing worker's code
            (128 + signal number for a worker killed by a signal) in the last attempt.
        worker_codes: each worker's exit code in the last attempt (128 + N for a worker a
            signal N ended, the launcher's SIGTERM/SIGKILL included; None only for a worker
            that never started).
        failed_worker: the index of the first worker that failed in the last attempt, or None.
        seconds: wall time of the launch, all attempts together.
        attempts: how many times the group was started (1 + the restarts).
    """

    returncode: int
    worker_codes: tuple[int | None, ...]
    failed_worker: int | None
    seconds: float
    attempts: int = 1

    def __str__(self) -> str:
        """One line: how the launch ended, each worker's exit code, the time and attempts.

        Example:
            >>> print(LaunchResult(3, (0, 3, 143), 1, 4.25, attempts=2))
            launch failed: worker 1 exited with code 3; exit codes 0, 3, 143; 4.2 s, 2 attempts
            >>> print(LaunchResult(0, (0, 0), None, 1.5))
            launch succeeded: 2 workers exited with code 0; 1.5 s, 1 attempt
        """
        codes = ", ".join("not started" if c is None else str(c) for c in self.worker_codes)
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.returncode == 0:
            head = f"launch succeeded: {len(self.worker_codes)} workers exited with code 0"
            return f"{head}; {self.seconds:.1f} s, {tries}"
        if self.failed_worker is None:
            head = f"launch stopped with code {self.returncode} (the launcher was signalled)"
        else:
            head = f"launch failed: worker {self.failed_worker} exited with code {self.returncode}"
        return f"{head}; exit codes {codes}; {self.seconds:.1f} s, {tries}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "returncode": self.returncode,
            "worker_codes": list(self.worker_codes),
            "failed_worker": self.failed_worker,
            "seconds": self.seconds,
            "attempts": self.attempts,
        }
