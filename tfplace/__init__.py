"""tfplace: make TensorFlow / Keras use whatever hardware is there.

Importing tfplace is cheap and never imports TensorFlow: the public names are resolved from
their submodules on first use (PEP 562 ``__getattr__``), and each function imports TensorFlow
only when it needs it.

A fresh ``import tfplace`` loads no submodule and no TensorFlow (``tests/test_api.py`` checks
it in a new interpreter); the first use of a name loads the module that defines it.

Example:
    >>> import tfplace
    >>> tfplace.KINDS[0], "pick_strategy" in tfplace.__all__
    ('auto', True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it. ``tests/test_api.py`` checks that this table,
#: ``__all__`` and the submodules' own ``__all__`` agree.
_EXPORTS: dict[str, str] = {
    "KINDS": "tfplace._plan",
    "PRIORITY": "tfplace._plan",
    "Plan": "tfplace._plan",
    "plan": "tfplace._plan",
    "Inventory": "tfplace._inventory",
    "inventory": "tfplace._inventory",
    "LaunchResult": "tfplace._launch",
    "launch": "tfplace._launch",
    "tf_configs": "tfplace._launch",
    "TrainingDiagnosis": "tfplace._diagnose",
    "diagnose_training": "tfplace._diagnose",
    "ClusterSpec": "tfplace.cluster",
    "parse_slurm": "tfplace.cluster",
    "parse_tf_config": "tfplace.cluster",
    "CPUConfig": "tfplace.config",
    "GPUConfig": "tfplace.config",
    "configure_cpus": "tfplace.config",
    "configure_gpus": "tfplace.config",
    "global_batch_size": "tfplace.data",
    "prepare_dataset": "tfplace.data",
    "AlreadyInitializedError": "tfplace.errors",
    "BarrierTimeoutError": "tfplace.errors",
    "BatchSizeError": "tfplace.errors",
    "ClusterConfigError": "tfplace.errors",
    "DeviceFallbackWarning": "tfplace.errors",
    "DeviceNotFoundError": "tfplace.errors",
    "TfplaceError": "tfplace.errors",
    "TfplaceWarning": "tfplace.errors",
    "MemoryInfo": "tfplace.memory",
    "memory_info": "tfplace.memory",
    "track_memory": "tfplace.memory",
    "barrier": "tfplace.multiworker",
    "is_chief": "tfplace.multiworker",
    "worker_save_path": "tfplace.multiworker",
    "on_cpu": "tfplace.placement",
    "on_device": "tfplace.placement",
    "on_gpu": "tfplace.placement",
    "configure_precision": "tfplace.precision",
    "pick_strategy": "tfplace.strategy",
    "AutotuneReport": "tfplace.tuning",
    "autotune": "tfplace.tuning",
    "find_batch_size": "tfplace.tuning",
}

__all__ = [
    "KINDS",
    "PRIORITY",
    "AlreadyInitializedError",
    "AutotuneReport",
    "BarrierTimeoutError",
    "BatchSizeError",
    "CPUConfig",
    "ClusterConfigError",
    "ClusterSpec",
    "DeviceFallbackWarning",
    "DeviceNotFoundError",
    "GPUConfig",
    "Inventory",
    "LaunchResult",
    "MemoryInfo",
    "Plan",
    "TfplaceError",
    "TfplaceWarning",
    "TrainingDiagnosis",
    "__version__",
    "autotune",
    "barrier",
    "configure_cpus",
    "configure_gpus",
    "configure_precision",
    "diagnose_training",
    "find_batch_size",
    "global_batch_size",
    "inventory",
    "is_chief",
    "launch",
    "memory_info",
    "on_cpu",
    "on_device",
    "on_gpu",
    "parse_slurm",
    "parse_tf_config",
    "pick_strategy",
    "plan",
    "prepare_dataset",
    "tf_configs",
    "track_memory",
    "worker_save_path",
]

if TYPE_CHECKING:  # static view for type checkers and IDEs; no cost at run time
    from tfplace._diagnose import TrainingDiagnosis, diagnose_training
    from tfplace._inventory import Inventory, inventory
    from tfplace._launch import LaunchResult, launch, tf_configs
    from tfplace._plan import KINDS, PRIORITY, Plan, plan
    from tfplace.cluster import ClusterSpec, parse_slurm, parse_tf_config
    from tfplace.config import CPUConfig, GPUConfig, configure_cpus, configure_gpus
    from tfplace.data import global_batch_size, prepare_dataset
    from tfplace.errors import (
        AlreadyInitializedError,
        BarrierTimeoutError,
        BatchSizeError,
        ClusterConfigError,
        DeviceFallbackWarning,
        DeviceNotFoundError,
        TfplaceError,
        TfplaceWarning,
    )
    from tfplace.memory import MemoryInfo, memory_info, track_memory
    from tfplace.multiworker import barrier, is_chief, worker_save_path
    from tfplace.placement import on_cpu, on_device, on_gpu
    from tfplace.precision import configure_precision
    from tfplace.strategy import pick_strategy
    from tfplace.tuning import AutotuneReport, autotune, find_batch_size


#: Public submodules reachable as ``tfplace.<name>`` after a plain ``import tfplace``
#: (``tfplace.callbacks.BackupAndRestore``, ``tfplace.doctor.findings``), imported on first use.
_SUBMODULES = (
    "callbacks",
    "cluster",
    "config",
    "data",
    "doctor",
    "errors",
    "memory",
    "multiworker",
    "placement",
    "precision",
    "strategy",
    "testing",
    "tuning",
)


def __getattr__(name: str) -> Any:
    """Resolve a public name (or public submodule) on first use and cache it here."""
    if name in _SUBMODULES:
        return importlib.import_module(f"tfplace.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfplace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
