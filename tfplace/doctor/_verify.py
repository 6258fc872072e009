"""The doctor's action: run a real matmul and convolution on every device (``--verify``).

Detection can only say what TensorFlow registered; some faults (a cuDNN mismatch, a driver
too old for the build) appear only when a kernel runs. This is the only doctor module that
touches TensorFlow, through ``tfplace._tf``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tfplace import _tf
from tfplace.doctor._explain import explain_error
from tfplace.doctor._rules import Finding

__all__ = ["VerifyResult", "verify"]


@dataclass(frozen=True)
class VerifyResult:
    """A real matmul and convolution on one device.

    Attributes:
        device: TensorFlow's full logical device name.
        ok: whether both ran and their result is a number (not NaN).
        seconds: how long both took, including TensorFlow's kernel start-up on that device.
        error: the first line of the failure, or None.
        finding: the known cause of the failure and its fix (:func:`explain_error`), or None.
    """

    device: str
    ok: bool
    seconds: float
    error: str | None = None
    finding: Finding | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "device": self.device,
            "ok": self.ok,
            "seconds": round(self.seconds, 6),
            "error": self.error,
            "finding": self.finding.to_dict() if self.finding else None,
        }


def verify() -> list[VerifyResult]:
    """Run a 256x256 matmul and a 3x3 convolution on every visible device, with timings.

    A cuDNN mismatch passes every detection check and only fails at the first convolution;
    this finds it. Starts TensorFlow's runtime; every visible GPU and the first CPU device are
    tried, and one device's failure does not stop the others.

    Returns:
        One result per device, GPUs first.

    Example:
        The list has one entry per device, so it depends on the machine (skipped under doctest):

        >>> [r.ok for r in verify()]  # doctest: +SKIP
        [True]
    """
    devices = _tf.logical_device_names("GPU") + _tf.logical_device_names("CPU")[:1]
    results = []
    for name in devices:
        start = time.perf_counter()
        try:
            total = _tf.device_check(name)
            if total != total:  # NaN: the kernels ran but computed garbage
                raise ArithmeticError("the result is NaN")
            results.append(VerifyResult(name, True, time.perf_counter() - start))
        except Exception as err:  # every failure is reported, none stops the others
            results.append(
                VerifyResult(
                    name,
                    False,
                    time.perf_counter() - start,
                    f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}",
                    explain_error(err),
                )
            )
    return results
