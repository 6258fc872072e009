"""The machine report: an inventory plus the automatic plan, as data and as text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tfplace.config import auto_threads
from tfplace.errors import TfplaceError
from tfplace.inventory import Inventory
from tfplace.plan import Plan, decide

__all__ = ["Report", "make_report"]


@dataclass(frozen=True)
class Report:
    """What ``python -m tfplace`` prints: the facts and the automatic decision."""

    inventory: Inventory
    plan: Plan | None
    plan_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        inv = self.inventory
        data = inv.to_dict()
        intra, inter = auto_threads(inv.cpu.usable_cores)
        data["cpu"]["auto_threads"] = {"intra_op": intra, "inter_op": inter}
        data["strategy"] = self.plan.to_dict() if self.plan else {"error": self.plan_error}
        return data

    def to_text(self) -> str:
        """A human-readable report."""
        inv = self.inventory
        tf = inv.tensorflow
        lines = [
            "tfplace machine report",
            f"  Python        {inv.python} on {inv.platform} ({inv.machine})",
            (
                f"  TensorFlow    {tf.version} ("
                + (
                    "CUDA build"
                    if tf.is_cuda_build
                    else "ROCm build"
                    if tf.is_rocm_build
                    else "CPU-only build"
                )
                + (
                    f", CUDA {tf.cuda_version}, cuDNN {tf.cudnn_version}"
                    if tf.is_cuda_build
                    else ""
                )
                + ")"
                if tf
                else "  TensorFlow    not installed"
            ),
            f"  Keras         {inv.keras.flavour} {inv.keras.version or ''}".rstrip(),
            f"  Runtime       {'started' if inv.runtime_started else 'not started'}",
        ]
        if inv.gpus:
            for g in inv.gpus:
                cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
                hidden = "" if g.visible else " (hidden)"
                lines.append(f"  GPU {g.index}         {g.name or 'GPU'}, compute {cc}{hidden}")
        else:
            lines.append("  GPUs          none visible")
        cpu = inv.cpu
        quota = f"{cpu.quota_cores:g}" if cpu.quota_cores is not None else "none"
        intra, inter = auto_threads(cpu.usable_cores)
        lines.append(
            f"  CPU           {cpu.host_cores} host cores, {cpu.affinity_cores} in affinity, "
            f"quota {quota} -> {cpu.usable_cores} usable; "
            f'configure_cpus("auto") -> {intra} intra-op / {inter} inter-op threads'
        )
        if cpu.logical_devices > 1:
            lines.append(f"  Virtual CPUs  {cpu.logical_devices}")
        if inv.tpu.present:
            lines.append(f"  TPU           {', '.join(inv.tpu.hints)}")
        if inv.env:
            lines.append("  Environment")
            lines += [f"    {k}={v}" for k, v in inv.env]
        if self.plan is not None:
            lines.append(f"  Strategy      {self.plan.summary()}")
            lines += [f"                - {r}" for r in self.plan.reasons[1:]]
        else:
            lines.append(f"  Strategy      cannot decide: {self.plan_error}")
        return "\n".join(lines)


def make_report(inv: Inventory) -> Report:
    """Build the report for ``inv`` (pure)."""
    try:
        return Report(inv, decide(inv), None)
    except TfplaceError as err:
        return Report(inv, None, str(err))
