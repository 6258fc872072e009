"""Precision decisions: which dtype policy the hardware runs fast, and which would be slow. Pure.

The hardware thresholds live here once.

``configure_precision`` (which policy to choose), ``tfplace doctor`` (which policy would be
slow, which GPU is newer than the build) read these; neither writes its own numbers.

Example:
    >>> FLOAT16_MIN_CC, BFLOAT16_MIN_CC
    ((7, 0), (8, 0))
    >>> cc_text((8, 6)), parse_arch("sm_90"), parse_arch("compute_120")
    ('8.6', (9, 0), (12, 0))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tfplace._facts.inventory import GPUInfo, Inventory

__all__ = [
    "BFLOAT16_MIN_CC",
    "FLOAT16_MIN_CC",
    "POLICIES",
    "SlowPolicy",
    "cc_text",
    "choose_precision",
    "lowest_cc",
    "parse_arch",
    "slow_policy",
]

ComputeCapability = tuple[int, int]

#: Tensor Cores (Volta and newer): float16 matmuls and convolutions are fast from here on.
FLOAT16_MIN_CC: ComputeCapability = (7, 0)
#: bfloat16 Tensor Cores (Ampere and newer); below this bfloat16 is emulated and slow.
BFLOAT16_MIN_CC: ComputeCapability = (8, 0)


def cc_text(cc: ComputeCapability) -> str:
    """``(8, 6)`` as ``"8.6"``.

    Example:
        >>> cc_text((7, 5))
        '7.5'
    """
    return f"{cc[0]}.{cc[1]}"


def parse_arch(code: str) -> ComputeCapability | None:
    """A CUDA architecture name of a build (``"sm_86"``, ``"compute_90"``) as ``(major, minor)``.

    The last digit is the minor version, the digits before it the major one; anything else is
    None.

    Example:
        >>> parse_arch("sm_86"), parse_arch("sm_100"), parse_arch("gfx90a")
        ((8, 6), (10, 0), None)
    """
    m = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)[a-z]?", code.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def lowest_cc(gpus: Sequence[GPUInfo]) -> ComputeCapability | None:
    """The lowest compute capability among ``gpus``; None when there is none or one is unknown.

    A decision that needs every GPU to be at least as new as a threshold must treat an unknown
    GPU as too old, so one unknown makes the whole answer unknown.

    Example:
        >>> ampere = GPUInfo(0, compute_capability=(8, 6))
        >>> turing = GPUInfo(1, compute_capability=(7, 5))
        >>> lowest_cc([ampere, turing])
        (7, 5)
        >>> lowest_cc([ampere, GPUInfo(2)]) is None
        True
    """
    ccs = [g.compute_capability for g in gpus]
    if not ccs or any(cc is None for cc in ccs):
        return None
    return min(cc for cc in ccs if cc is not None)


@dataclass(frozen=True)
class SlowPolicy:
    """Why a Keras dtype policy would be slower than float32 on some hardware, and the fix."""

    what: str
    why: str
    fix: str


def _where(gpus: Sequence[GPUInfo], tpu: bool) -> str:
    if not gpus:
        return "a TPU" if tpu else "the CPU"
    lowest = lowest_cc(gpus)
    if lowest is None:
        return "a GPU whose compute capability is unknown"
    return f"GPUs with compute capability {cc_text(lowest)}"


def slow_policy(policy: str, gpus: Sequence[GPUInfo], *, tpu: bool = False) -> SlowPolicy | None:
    """Whether ``policy`` would run slower than float32 on ``gpus`` (the visible ones) or a TPU.

    Only the mixed policies are judged: ``mixed_float16`` needs every GPU at
    :data:`FLOAT16_MIN_CC` or newer, ``mixed_bfloat16`` a TPU or every GPU at
    :data:`BFLOAT16_MIN_CC` or newer. Pure.

    Example:
        >>> slow_policy("mixed_float16", [GPUInfo(0, compute_capability=(7, 5))]) is None
        True
        >>> slow_policy("mixed_float16", []).what
        'mixed_float16 was requested, but training would run on the CPU.'
    """
    lowest = lowest_cc(gpus)
    if policy == "mixed_float16":
        if lowest is not None and lowest >= FLOAT16_MIN_CC:
            return None
        return SlowPolicy(
            f"mixed_float16 was requested, but training would run on {_where(gpus, tpu)}.",
            "float16 is only fast on Tensor Cores (compute capability "
            f"{cc_text(FLOAT16_MIN_CC)} and newer); elsewhere it is slower than float32 (4x on "
            "a GTX 1660 Ti, 60x on a CPU, TF#44191).",
            'Use configure_precision("auto"), which picks float32 here.',
        )
    if policy == "mixed_bfloat16":
        if tpu or (lowest is not None and lowest >= BFLOAT16_MIN_CC):
            return None
        return SlowPolicy(
            f"mixed_bfloat16 was requested, but training would run on {_where(gpus, tpu)}.",
            "bfloat16 is fast on TPUs and on GPUs with compute capability "
            f"{cc_text(BFLOAT16_MIN_CC)} (Ampere) or newer; elsewhere it is emulated and slower "
            "than float32.",
            'Use configure_precision("auto").',
        )
    return None


#: The policies ``configure_precision`` accepts besides ``"auto"``.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float64")


def choose_precision(inv: Inventory) -> tuple[str, str]:
    """The automatic policy for ``inv`` and why. Pure.

    TPU or every visible GPU at compute capability >= 8.0: ``mixed_bfloat16``; every visible
    GPU at >= 7.0: ``mixed_float16``; otherwise (CPU, older or unknown GPUs): ``float32``.
    The thresholds are this module's (shared with ``tfplace doctor``).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> choose_precision(fake_inventory(gpus=2, compute_capability=(7, 5)))[0]
        'mixed_float16'
    """
    if inv.tpu.present:
        return "mixed_bfloat16", "a TPU computes in bfloat16 natively"
    gpus = inv.visible_gpus
    if not gpus:
        return "float32", "no GPU: on CPUs reduced precision is slower than float32"
    lowest = lowest_cc(gpus)
    if lowest is None:
        return "float32", "a GPU's compute capability is unknown, so float32 is the safe choice"
    text = cc_text(lowest)
    if lowest >= BFLOAT16_MIN_CC:
        return "mixed_bfloat16", (
            f"every GPU has compute capability >= {cc_text(BFLOAT16_MIN_CC)} (lowest {text}): "
            "bfloat16 Tensor Cores, with float32's range (no loss scaling needed)"
        )
    if lowest >= FLOAT16_MIN_CC:
        return "mixed_float16", f"every GPU has Tensor Cores (lowest compute capability {text})"
    return "float32", (
        f"a GPU has compute capability {text} < {cc_text(FLOAT16_MIN_CC)}: no Tensor Cores"
    )
