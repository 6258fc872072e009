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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tfplace._decide.devices import ConfigChange, auto_cpu_changes
from tfplace._decide.precision import cc_text
from tfplace._decide.strategy import Plan, decide
from tfplace._decide.threads import auto_threads
from tfplace._facts.inventory import GPUInfo, Inventory
from tfplace.doctor._cuda_libs import LibCheck
from tfplace.doctor._rules import Finding, findings, library_findings, most_severe_first
from tfplace.doctor._verify import VerifyResult, verify
from tfplace.errors import TfplaceError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_VERIFY_FAILED",
    "SCHEMA_VERSION",
    "DoctorReport",
    "diagnose",
    "env_block",
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
            ``tfplace._decide.devices.auto_cpu_changes`` and not applied.
        libraries: the per-library load check (``tfplace.doctor._cuda_libs.check_libraries``) of a
            CUDA build, or None when it did not run.
    """

    inventory: Inventory
    plan: Plan | None
    plan_error: str | None
    findings: tuple[Finding, ...]
    verify: tuple[VerifyResult, ...] | None = field(default=None)
    cpu_changes: tuple[ConfigChange, ...] = field(default=())
    libraries: tuple[LibCheck, ...] | None = field(default=None)

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
            "cuda_libraries": (
                [c.to_dict() for c in self.libraries] if self.libraries is not None else None
            ),
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
            f"  NVIDIA driver {_driver_text(inv)}",
        ]
        for g in inv.gpus:
            hidden = "" if g.visible else " (hidden)"
            lines.append(f"  GPU {g.index:<10}{_gpu_text(g)}{hidden}")
        unseen = [g for g in inv.nvidia.gpus if not g.visible]
        for g in unseen:
            lines.append(f"  NVIDIA GPU {g.index:<3}{_gpu_text(g)} (not visible to TensorFlow)")
        if not inv.gpus:
            lines.append("  GPUs          none visible to TensorFlow")
        if self.libraries is not None:
            bad = [c for c in self.libraries if not c.ok]
            lines.append(
                f"  CUDA libs     {len(self.libraries) - len(bad)}/{len(self.libraries)} load"
                + (f"; failing: {', '.join(c.soname for c in bad)}" if bad else "")
            )
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


def _driver_text(inv: Inventory) -> str:
    nv = inv.nvidia
    if nv.driver_version is None:
        return inv.nvidia_driver or "none"
    cuda = f", supports CUDA {nv.cuda_driver_version}" if nv.cuda_driver_version else ""
    return f"{nv.driver_version}{cuda} (read through {nv.gpu_source})"


def _gpu_text(g: GPUInfo) -> str:
    cc = cc_text(g.compute_capability) if g.compute_capability else "?"
    text = f"{g.name or 'GPU'}, compute {cc}"
    if g.memory_mb:
        text += f", {g.memory_mb} MiB"
        if g.memory_free_mb is not None:
            text += f" ({g.memory_free_mb} free)"
    if g.utilization_percent is not None:
        text += f", {g.utilization_percent}% busy"
    if g.processes:
        text += f", {len(g.processes)} process(es)"
    return text


def env_block(inv: Inventory) -> str:
    """A short block to paste into bug reports (``tfplace doctor --env``).

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> print(env_block(fake_inventory(gpus=1)).splitlines()[2])
        - TensorFlow: 2.21.0 (CUDA 12.5.1, cuDNN 9, sm_60 sm_70 sm_80 sm_89 compute_90)
    """
    from tfplace import __version__

    tf = inv.tensorflow
    if tf is None:
        tf_text = "not installed"
    elif tf.is_cuda_build:
        archs = " ".join(tf.compute_capabilities)
        tf_text = f"{tf.version} (CUDA {tf.cuda_version}, cuDNN {tf.cudnn_version}, {archs})"
    else:
        tf_text = f"{tf.version} ({'ROCm' if tf.is_rocm_build else 'CPU-only'} build)"
    gpus = [f"/GPU:{i} {_gpu_text(g)}" for i, g in enumerate(inv.visible_gpus)]
    gpus += [f"not visible to TensorFlow: {_gpu_text(g)}" for g in inv.nvidia.gpus if not g.visible]
    cpu = inv.cpu
    quota = f"{cpu.quota_cores:g}" if cpu.quota_cores is not None else "none"
    lines = [
        f"- tfplace: {__version__}",
        f"- Python: {inv.python} ({inv.platform}, {inv.machine})",
        f"- TensorFlow: {tf_text}",
        f"- Keras: {inv.keras.flavour} {inv.keras.version or ''}".rstrip(),
        f"- NVIDIA driver: {_driver_text(inv)}",
        f"- GPUs: {'; '.join(gpus) if gpus else 'none'}",
        f"- CPU: {cpu.usable_cores} usable ({cpu.host_cores} host, {cpu.affinity_cores} "
        f"affinity, quota {quota})",
        f"- Packages: {', '.join(f'{n} {v}' for n, v in inv.packages) or 'none'}",
        f"- Environment: {' '.join(f'{k}={v}' for k, v in inv.env) or 'none'}",
    ]
    return "\n".join(lines)


def diagnose(
    inv: Inventory,
    *,
    precision: str | None = None,
    run_verify: bool = False,
    libraries: Sequence[LibCheck] | None = None,
) -> DoctorReport:
    """Build the doctor's report for ``inv`` (verification, if asked, runs for real).

    Args:
        inv: the facts (``tfplace.inventory()``, or a synthetic one from
            :func:`tfplace.testing.fake_inventory`).
        precision: a Keras dtype policy the user intends to use, checked against the hardware.
        run_verify: also run :func:`verify` on this machine's devices (starts
            TensorFlow's runtime; the results are about this machine, not about ``inv``).
        libraries: the per-library load check's results (``tfplace.doctor._cuda_libs``), whose
            failures become findings; ``tfplace doctor`` runs the check for a CUDA build.

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
    checks = tuple(libraries) if libraries is not None else None
    found = library_findings(inv, checks) + findings(inv, precision=precision)
    return DoctorReport(
        inv,
        plan,
        plan_error,
        tuple(most_severe_first(found)),
        results,
        auto_cpu_changes(inv).changes,
        checks,
    )
