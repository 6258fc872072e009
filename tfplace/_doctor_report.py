"""The doctor's report: facts, plan, findings and verification as one piece of data.

:class:`DoctorReport` holds the inventory and the plan themselves; its :meth:`~DoctorReport.to_dict`
(the ``--json`` document) is built from their own ``to_dict`` methods, and
:meth:`~DoctorReport.to_text` renders the same objects as text. Printing happens in
``__main__``.

Example:
    >>> from tfplace.testing import fake_inventory
    >>> data = diagnose(fake_inventory(tf_version=None)).to_dict()
    >>> data["schema_version"], data["exit_code"], data["findings"][0]["id"]
    (2, 1, 'B0')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tfplace._doctor_rules import Finding, findings
from tfplace._doctor_verify import VerifyResult, verify
from tfplace._inventory import Inventory
from tfplace._plan import Plan, decide
from tfplace.config import ConfigChange, auto_threads, plan_auto_cpus
from tfplace.errors import TfplaceError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_VERIFY_FAILED",
    "SCHEMA_VERSION",
    "DoctorReport",
    "diagnose",
]

#: Exit codes of ``tfplace doctor``.
EXIT_OK = 0  #: no error finding (warnings and information allowed), verification passed
EXIT_ERROR = 1  #: at least one finding has severity "error"
EXIT_VERIFY_FAILED = 3  #: ``--verify`` failed on at least one device
#: Version of the ``--json`` document; bumped only on incompatible changes (docs/doctor.md).
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class DoctorReport:
    """The doctor's report: facts, the automatic plan, findings, optional verification.

    Attributes:
        inventory: the facts the report is about.
        plan: what ``pick_strategy()`` would build, or None when no plan can be made.
        plan_error: why no plan can be made (e.g. an invalid TF_CONFIG), or None.
        findings: the rules' findings, most severe first.
        verify: the ``--verify`` results, or None when verification was not asked for.
        cpu_changes: what ``configure_cpus("auto")`` would change here, decided by the pure
            ``tfplace.config.plan_auto_cpus`` and not applied.
    """

    inventory: Inventory
    plan: Plan | None
    plan_error: str | None
    findings: tuple[Finding, ...]
    verify: tuple[VerifyResult, ...] | None = field(default=None)
    cpu_changes: tuple[ConfigChange, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_VERIFY_FAILED`, :data:`EXIT_ERROR` or :data:`EXIT_OK`."""
        if self.verify is not None and not all(r.ok for r in self.verify):
            return EXIT_VERIFY_FAILED
        if any(f.severity == "error" for f in self.findings):
            return EXIT_ERROR
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema in docs/doctor.md).

        The facts are the inventory's own :meth:`~tfplace.Inventory.to_dict` and the decision
        is the plan's own ``to_dict``: the report adds no second description of either.
        """
        from tfplace import __version__

        intra, inter = auto_threads(self.inventory.cpu.usable_cores)
        return {
            "schema_version": SCHEMA_VERSION,
            "tfplace": __version__,
            "inventory": self.inventory.to_dict(),
            "auto_threads": {"intra_op": intra, "inter_op": inter},
            "configure_cpus_auto": [c.to_dict() for c in self.cpu_changes],
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "plan_error": self.plan_error,
            "findings": [f.to_dict() for f in self.findings],
            "verify": [r.to_dict() for r in self.verify] if self.verify is not None else None,
            "exit_code": self.exit_code,
        }

    def to_text(self) -> str:
        """The human-readable report: the same facts as :meth:`to_dict`, as aligned text."""
        inv = self.inventory
        tf = inv.tensorflow
        if tf:
            kind = (
                "CUDA build"
                if tf.is_cuda_build
                else "ROCm build"
                if tf.is_rocm_build
                else ("CPU-only build")
            )
            extra = (
                f", CUDA {tf.cuda_version}, cuDNN {tf.cudnn_version}, for "
                f"{' '.join(tf.compute_capabilities)}"
                if tf.is_cuda_build
                else ""
            )
            tf_line = f"{tf.version} ({kind}{extra})"
        else:
            tf_line = "not installed"
        lines = [
            "tfplace doctor",
            f"  Python        {inv.python} on {inv.platform} ({inv.machine})",
            f"  TensorFlow    {tf_line}",
            f"  Keras         {inv.keras.flavour} {inv.keras.version or ''}".rstrip(),
            "  Packages      "
            + (", ".join(f"{n} {v}" for n, v in inv.packages) or "no tensorflow* distribution"),
            f"  Runtime       {'started' if inv.runtime_started else 'not started'}",
            f"  NVIDIA driver {inv.nvidia_driver or 'none'}",
        ]
        if inv.gpus:
            for g in inv.gpus:
                cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
                mem = f", {g.memory_mb} MB" if g.memory_mb else ""
                hidden = "" if g.visible else " (hidden)"
                lines.append(f"  GPU {g.index:<10}{g.name or 'GPU'}, compute {cc}{mem}{hidden}")
        else:
            lines.append("  GPUs          none visible to TensorFlow")
        if inv.tpu.present:
            lines.append(f"  TPU           {', '.join(inv.tpu.hints)}")
        cpu = inv.cpu
        quota = f"{cpu.quota_cores:g}" if cpu.quota_cores is not None else "none"
        intra, inter = auto_threads(cpu.usable_cores)
        lines.append(
            f"  CPU           {cpu.host_cores} host cores, {cpu.affinity_cores} in affinity, "
            f"quota {quota} -> {cpu.usable_cores} usable"
        )
        lines.append(
            f'                configure_cpus("auto") -> {intra} intra-op / {inter} inter-op '
            f"threads; {cpu.logical_devices} CPU device(s)"
        )
        changes = "; ".join(str(c) for c in self.cpu_changes) or "nothing (already in force)"
        lines.append(f"                it would change: {changes}")
        lines.append("  Environment   " + ("" if inv.env else "none of the relevant variables"))
        lines += [f"    {k}={v}" for k, v in inv.env]
        if self.plan is not None:
            lines.append(f"  Strategy      {self.plan.summary()}")
            lines += [f"                - {r}" for r in self.plan.reasons[1:]]
        else:
            lines.append(f"  Strategy      cannot decide: {self.plan_error}")
        if self.verify is not None:
            lines.append("  Verify        matmul 256x256 + conv 3x3 on each device")
            for r in self.verify:
                status = "ok  " if r.ok else "FAIL"
                lines.append(f"    {status} {r.device}  {r.seconds * 1000:.1f} ms")
                if r.error:
                    lines.append(f"         {r.error}")
                    if r.finding:
                        lines.append(f"         fix: {r.finding.fix}")
        lines.append(f"Findings ({len(self.findings)})" if self.findings else "Findings: none")
        for f in self.findings:
            lines.append(f"  [{f.severity}] {f.id}: {f.what}")
            lines.append(f"      why: {f.why}")
            lines.append(f"      fix: {f.fix}")
            lines.append(f"      see: docs/{f.doc}")
        return "\n".join(lines)


def diagnose(
    inv: Inventory, *, precision: str | None = None, run_verify: bool = False
) -> DoctorReport:
    """Build the doctor's report for ``inv`` (verification, if asked, runs for real).

    Args:
        inv: the facts (``tfplace.inventory()``, or a synthetic one from
            :func:`tfplace.testing.fake_inventory`).
        precision: a Keras dtype policy the user intends to use, checked against the hardware.
        run_verify: also run :func:`~tfplace.doctor.verify` on this machine's devices (starts
            TensorFlow's runtime; the results are about this machine, not about ``inv``).

    Returns:
        The report; ``exit_code`` is what ``tfplace doctor`` exits with.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> report = diagnose(fake_inventory(gpus=2))
        >>> report.plan.kind, report.exit_code
        ('mirrored', 0)
    """
    try:
        plan, plan_error = decide(inv), None
    except TfplaceError as err:
        plan, plan_error = None, str(err)
    results = tuple(verify()) if run_verify else None
    return DoctorReport(
        inv,
        plan,
        plan_error,
        tuple(findings(inv, precision=precision)),
        results,
        plan_auto_cpus(inv).changes,
    )
