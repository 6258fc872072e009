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

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tfplace._decide.devices import ConfigChange, auto_cpu_changes
from tfplace._decide.precision import cc_text
from tfplace._decide.strategy import Plan, decide
from tfplace._decide.threads import auto_threads
from tfplace._facts.inventory import GPUInfo, Inventory
from tfplace.doctor import _cuda_libs
from tfplace.doctor._cuda_libs import LibCheck
from tfplace.doctor._explain import explain_error
from tfplace.doctor._quiet import captured, log_message
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
    "startup_findings",
    "this_machine",
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
        startup_log: the lines TensorFlow logged while the doctor imported it (and started
            its runtime, with ``run_verify``), captured instead of printed; the known ones are
            also findings.

    ``print(report)`` prints :meth:`to_text`, the text ``tfplace doctor`` prints.
    """

    inventory: Inventory
    plan: Plan | None
    plan_error: str | None
    findings: tuple[Finding, ...]
    verify: tuple[VerifyResult, ...] | None = field(default=None)
    cpu_changes: tuple[ConfigChange, ...] = field(default=())
    libraries: tuple[LibCheck, ...] | None = field(default=None)
    startup_log: tuple[str, ...] = field(default=())

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
            "startup_log": list(self.startup_log),
            "exit_code": self.exit_code,
        }

    def __str__(self) -> str:
        """The readable report, :meth:`to_text` (``print(report)`` shows it)."""
        return self.to_text()

    def to_text(self) -> str:
        """The human-readable report: the same facts as :meth:`to_dict`, as aligned text."""
        return "\n".join(
            [
                "tfplace doctor",
                *_software_lines(self.inventory),
                *_device_lines(self.inventory, self.libraries),
                *_cpu_lines(self.inventory, self.cpu_changes),
                *_env_lines(self.inventory),
                *_strategy_lines(self.plan, self.plan_error),
                *_verify_lines(self.verify),
                *_finding_lines(self.findings),
            ]
        )


# ------------------------------------------------------------------ the text, part by part


def _tf_text(inv: Inventory) -> str:
    tf = inv.tensorflow
    if not tf:
        return "not installed"
    if tf.is_cuda_build:
        archs = " ".join(tf.compute_capabilities)
        cuda = f"CUDA {tf.cuda_version}, cuDNN {tf.cudnn_version}"
        return f"{tf.version} (CUDA build, {cuda}, for {archs})"
    return f"{tf.version} ({'ROCm build' if tf.is_rocm_build else 'CPU-only build'})"


def _software_lines(inv: Inventory) -> list[str]:
    packages = ", ".join(f"{n} {v}" for n, v in inv.packages) or "no tensorflow* distribution"
    return [
        f"  Python        {inv.python} on {inv.platform} ({inv.machine})",
        f"  TensorFlow    {_tf_text(inv)}",
        f"  Keras         {inv.keras.flavour} {inv.keras.version or ''}".rstrip(),
        f"  Packages      {packages}",
        f"  Runtime       {'started' if inv.runtime_started else 'not started'}",
        f"  NVIDIA driver {_driver_text(inv)}",
    ]


def _device_lines(inv: Inventory, libraries: tuple[LibCheck, ...] | None) -> list[str]:
    lines = [
        f"  GPU {g.index:<10}{_gpu_text(g)}{'' if g.visible else ' (hidden)'}" for g in inv.gpus
    ]
    lines += [
        f"  NVIDIA GPU {g.index:<3}{_gpu_text(g)} (not visible to TensorFlow)"
        for g in inv.nvidia.gpus
        if not g.visible
    ]
    if not inv.gpus:
        lines.append("  GPUs          none visible to TensorFlow")
    if libraries is not None:
        bad = [c for c in libraries if not c.ok]
        lines.append(
            f"  CUDA libs     {len(libraries) - len(bad)}/{len(libraries)} load"
            + (f"; failing: {', '.join(c.soname for c in bad)}" if bad else "")
        )
    if inv.tpu.present:
        lines.append(f"  TPU           {', '.join(inv.tpu.hints)}")
    return lines


def _cpu_lines(inv: Inventory, changes: tuple[ConfigChange, ...]) -> list[str]:
    cpu = inv.cpu
    quota = f"{cpu.quota_cores:g}" if cpu.quota_cores is not None else "none"
    intra, inter = auto_threads(cpu.usable_cores)
    would = "; ".join(str(c) for c in changes) or "nothing (already in force)"
    return [
        f"  CPU           {cpu.host_cores} host cores, {cpu.affinity_cores} in affinity, "
        f"quota {quota} -> {cpu.usable_cores} usable",
        f'                configure_cpus("auto") -> {intra} intra-op / {inter} inter-op '
        f"threads; {cpu.logical_devices} CPU device(s)",
        f"                it would change: {would}",
    ]


def _env_lines(inv: Inventory) -> list[str]:
    head = "  Environment   " + ("" if inv.env else "none of the relevant variables")
    return [head, *(f"    {k}={v}" for k, v in inv.env)]


def _strategy_lines(plan: Plan | None, plan_error: str | None) -> list[str]:
    if plan is None:
        return [f"  Strategy      cannot decide: {plan_error}"]
    return [
        f"  Strategy      {plan.summary()}",
        *(f"                - {r}" for r in plan.reasons[1:]),
    ]


def _verify_lines(results: tuple[VerifyResult, ...] | None) -> list[str]:
    if results is None:
        return []
    lines = ["  Verify        matmul 256x256 + conv 3x3 on each device"]
    for r in results:
        lines.append(f"    {'ok  ' if r.ok else 'FAIL'} {r.device}  {r.seconds * 1000:.1f} ms")
        if r.error:
            lines.append(f"         {r.error}")
            if r.finding:
                lines.append(f"         fix: {r.finding.fix}")
    return lines


def _finding_lines(found: tuple[Finding, ...]) -> list[str]:
    lines = [f"Findings ({len(found)})" if found else "Findings: none"]
    for f in found:
        lines += [
            f"  [{f.severity}] {f.id}: {f.what}",
            f"      why: {f.why}",
            f"      fix: {f.fix}",
            f"      see: docs/{f.doc}",
        ]
    return lines


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


def this_machine() -> tuple[Inventory, tuple[str, ...]]:
    """This machine's inventory, with the lines TensorFlow logs while it is imported captured.

    TensorFlow writes its start-up lines (oneDNN, CPU instructions, CUDA) straight to file
    descriptor 2 while it is imported, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; here they are
    captured instead of printed (nothing is captured when TensorFlow was imported already).

    Returns:
        The inventory and TensorFlow's captured log lines.
    """
    from tfplace._facts.inventory import inventory

    if "tensorflow" in sys.modules:
        return inventory(), ()
    with captured() as lines:
        inv = inventory()
    return inv, tuple(lines)


def diagnose(
    inv: Inventory | None = None,
    *,
    precision: str | None = None,
    run_verify: bool = False,
    libraries: Sequence[LibCheck] | None = None,
    check_libraries: bool | None = None,
) -> DoctorReport:
    """Build the doctor's report: for this machine (no ``inv``) as ``tfplace doctor`` prints
    it, or for the inventory given.

    For this machine, TensorFlow's start-up lines are captured rather than printed (see
    :func:`this_machine`), and for a CUDA build on Linux the per-library load check runs in a
    child process (:func:`~tfplace.doctor._cuda_libs.check_libraries`; it never starts
    TensorFlow in this process): a library that does not load is finding B10, exactly as in
    ``tfplace doctor``.

    Args:
        inv: the facts (default: this machine's; or ``tfplace.inventory()``, or a synthetic one
            from :func:`tfplace.testing.fake_inventory`).
        precision: a Keras dtype policy the user intends to use, checked against the hardware.
        run_verify: also run :func:`verify` on this machine's devices (starts
            TensorFlow's runtime; the results are about this machine, not about ``inv``).
        libraries: the per-library load check's results, whose failures become findings
            (when given, the check does not run again).
        check_libraries: run the per-library load check here (default: when ``inv`` is not
            given, since an inventory passed in may describe another machine; False skips it).

    Returns:
        The report; ``exit_code`` is what ``tfplace doctor`` exits with; ``print(report)``
        prints the text ``tfplace doctor`` prints.

    Example:
        >>> from tfplace.testing import fake_inventory
        >>> report = diagnose(fake_inventory(gpus=2))
        >>> report.plan.kind, report.exit_code
        ('mirrored', 0)
    """
    startup: tuple[str, ...] = ()
    if inv is None:
        inv, startup = this_machine()
        check_libraries = True if check_libraries is None else check_libraries
    try:
        plan, plan_error = decide(inv), None
    except TfplaceError as err:
        plan, plan_error = None, str(err)
    results = None
    if run_verify:
        with captured() as lines:  # starting the runtime logs too (devices, CUDA)
            results = tuple(verify())
        startup += tuple(lines)
    if libraries is None and check_libraries:
        libraries = _library_check(inv)
    checks = tuple(libraries) if libraries is not None else None
    found = (
        library_findings(inv, checks)
        + startup_findings(startup)
        + findings(inv, precision=precision)
    )
    return DoctorReport(
        inv,
        plan,
        plan_error,
        tuple(most_severe_first(found)),
        results,
        auto_cpu_changes(inv).changes,
        checks,
        startup,
    )


def _library_check(inv: Inventory) -> tuple[LibCheck, ...] | None:
    """The per-library load check of ``inv``'s TensorFlow, for a CUDA build on Linux."""
    tf = inv.tensorflow
    if tf is None or not tf.is_cuda_build or not inv.platform.startswith("linux"):
        return None
    return _cuda_libs.check_libraries(tf.cuda_version, tf.cudnn_version, tf_version=tf.version)


def startup_findings(lines: Sequence[str]) -> list[Finding]:
    """Findings from TensorFlow's captured start-up lines: each known cause once. Pure.

    A warning, not an error: the same causes are judged from the facts by the rules; the
    line is evidence of what TensorFlow itself saw.

    Example:
        >>> line = "W0000 00:00:1.5  7 gpu_device.cc:2365] Cannot dlopen some GPU libraries."
        >>> [(f.id, f.severity) for f in startup_findings([line])]
        [('B3', 'warning')]
    """
    out: dict[str, Finding] = {}
    for line in lines:
        message = log_message(line)
        known = explain_error(message)
        if known is not None and known.id not in out:
            out[known.id] = replace(
                known, severity="warning", what=f"TensorFlow logged: {message[:300]}"
            )
    return list(out.values())
