"""A fake ``tf.config`` for a machine with GPUs, mimicking TensorFlow's rules and messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FakeDevice:
    name: str
    device_type: str


@dataclass
class FakeGPUMachine:
    """Implements tfplace._configure.ConfigBackend over ``n`` fake GPUs and one CPU.

    Every setting applied is recorded in ``calls`` ("growth 0 True", "split 1 [512]",
    "visible ['0']", "intra 4", "inter 2"), so a test can assert exactly what was applied,
    including that nothing was.
    """

    n: int = 2
    started: bool = False
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._gpus = [FakeDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(self.n)]
        self._cpus = [FakeDevice("/physical_device:CPU:0", "CPU")]
        self._visible = list(self._gpus)
        self._growth: dict[FakeDevice, bool] = {}
        self._split: dict[FakeDevice, list[int | None]] = {}
        self._threads = (0, 0)

    def _guard(self, what: str) -> None:
        if self.started:
            raise RuntimeError(f"{what} cannot be modified after being initialized")

    def runtime_started(self) -> bool:
        return self.started

    def gpus(self) -> list[Any]:
        return list(self._gpus)

    def cpus(self) -> list[Any]:
        return list(self._cpus)

    def get_visible(self, kind: str) -> list[Any]:
        return [d for d in self._visible if d.device_type == kind]

    def set_visible(self, devices: list[Any], kind: str) -> None:
        self._guard("Visible devices")
        self.calls.append(f"visible {[d.name[-1] for d in devices]}")
        self._visible = list(devices)

    def get_growth(self, device: Any) -> bool:
        return self._growth.get(device, False)

    def set_growth(self, device: Any, enabled: bool) -> None:
        self._guard("Physical devices")
        if device in self._split:
            raise ValueError("Cannot set memory growth on device when virtual devices configured")
        self.calls.append(f"growth {device.name[-1]} {enabled}")
        self._growth[device] = enabled

    def get_split(self, device: Any) -> list[int | None] | None:
        return self._split.get(device)

    def set_split(self, device: Any, limits: list[int | None]) -> None:
        self._guard("Virtual devices")
        self.calls.append(f"split {device.name[-1]} {limits}")
        self._split[device] = list(limits)

    def logical_count(self, kind: str) -> int:
        self.started = True
        if kind == "CPU":
            return len(self._split.get(self._cpus[0]) or [None])
        return sum(len(self._split.get(d) or [None]) for d in self.get_visible("GPU"))

    def get_threads(self) -> tuple[int, int]:
        return self._threads

    def set_threads(self, intra: int | None, inter: int | None) -> None:
        if intra is not None:
            if self.started:
                raise RuntimeError("Intra op parallelism cannot be modified after initialization.")
            self.calls.append(f"intra {intra}")
            self._threads = (intra, self._threads[1])
        if inter is not None:
            if self.started:
                raise RuntimeError("Inter op parallelism cannot be modified after initialization.")
            self.calls.append(f"inter {inter}")
            self._threads = (self._threads[0], inter)
