"""The replica check's default tolerance, from the dtype policy and the devices. Pure.

1 and N replicas sum in another order, and on a GPU pick other kernels for another batch
shape, so right code agrees only up to the arithmetic's own precision:

- float32 on CPUs, and on GPUs below compute capability 8.0: ``rtol=1e-4, atol=1e-5`` (the
  fixed examples agree to ~1e-6 relative after 5 SGD steps; the broken ones part by 1e-2 and
  more);
- float32 on a GPU of compute capability 8.0 or more (A100, H100, H200, ...): TensorFlow runs
  float32 matmuls and convolutions in TF32 by default (10-bit mantissa, ~5e-4 per product):
  ``rtol=1e-3, atol=1e-4``;
- float16 (``mixed_float16``): ``rtol=1e-2, atol=1e-4``;
- bfloat16 (``mixed_bfloat16``): 8-bit mantissa: ``rtol=5e-2, atol=1e-3``.

The updates (what one step changed) are judged relative to their own size, at
``update_rtol = min(0.2, max(0.01, 100 * rtol))``: a right step agrees to a fraction of a
percent, a replica-count bug parts by 1/N or N-1 times the update (50 % and more).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tfplace._facts.inventory import GPUInfo

__all__ = ["Tolerance", "default_tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """How close 1 and N replicas must be.

    Attributes:
        rtol / atol: the variables and logged values: ``|a - b| <= atol + rtol * |b|``.
        update_rtol: each step's update on N replicas against the one-replica update:
            ``||dN - d1|| <= update_rtol * ||d1||`` (plus the variables' own rounding).
        source: where the values come from, for the report.
    """

    rtol: float
    atol: float
    update_rtol: float
    source: str


def _update_rtol(rtol: float) -> float:
    return min(0.2, max(0.01, 100.0 * rtol))


def _gpu_index(device: str) -> int | None:
    found = re.search(r"GPU:(\d+)$", device, re.IGNORECASE)
    return int(found.group(1)) if found else None


def default_tolerance(
    policy: str,
    devices: Sequence[str],
    gpus: Sequence[GPUInfo] = (),
    *,
    tf32: bool | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    update_rtol: float | None = None,
) -> Tolerance:
    """The tolerance for a check under ``policy`` on ``devices``; given values win.

    Args:
        policy: the model's dtype policy (``"float32"``, ``"mixed_float16"``, ...).
        devices: the devices the replicas run on (``/CPU:0``, ``/GPU:1``, ...).
        gpus: the visible GPUs in logical order (``Inventory.visible_gpus``), for their
            compute capability.
        tf32: whether TensorFlow runs float32 in TF32 on capable GPUs; None: TensorFlow's
            default (on).
        rtol / atol / update_rtol: values the caller gave (None: the default).

    Returns:
        A :class:`Tolerance` whose ``source`` says why.

    Example:
        >>> default_tolerance("float32", ["/CPU:0", "/CPU:1"]).rtol
        0.0001
    """
    precision = "float32"
    if "bfloat16" in policy:
        base, precision = (5e-2, 1e-3), "bfloat16"
    elif "float16" in policy:
        base, precision = (1e-2, 1e-4), "float16"
    else:
        base = (1e-4, 1e-5)
        capabilities = []
        for device in devices:
            index = _gpu_index(device)
            if index is not None and index < len(gpus):
                capabilities.append(gpus[index].compute_capability)
        capable = [cc for cc in capabilities if cc is not None and cc >= (8, 0)]
        if capable and tf32 is not False:
            base, precision = (1e-3, 1e-4), "TF32"
            cc = ".".join(str(v) for v in max(capable))
            precision += f" (float32 on a GPU of compute capability {cc}"
            precision += ", TensorFlow's default)" if tf32 is None else ")"
    chosen_rtol = base[0] if rtol is None else rtol
    chosen_atol = base[1] if atol is None else atol
    chosen_update = _update_rtol(chosen_rtol) if update_rtol is None else update_rtol
    given = [
        name
        for name, value in (("rtol", rtol), ("atol", atol), ("update_rtol", update_rtol))
        if value is not None
    ]
    source = f"default for {precision}" if not given else f"{', '.join(given)} given; {precision}"
    return Tolerance(chosen_rtol, chosen_atol, chosen_update, source)
