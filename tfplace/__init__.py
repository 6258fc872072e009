"""tfplace: make TensorFlow / Keras use whatever hardware is there.

Importing tfplace is cheap and never imports TensorFlow; each function imports it when
first needed.

Example:
    >>> import tfplace
    >>> tfplace.configure_gpus(memory_growth=True)  # doctest: +SKIP
    >>> strategy = tfplace.pick_strategy()  # doctest: +SKIP
"""

from __future__ import annotations

from tfplace.cluster import ClusterSpec, parse_slurm, parse_tf_config
from tfplace.config import CPUConfig, GPUConfig, configure_cpus, configure_gpus
from tfplace.data import global_batch_size, prepare_dataset
from tfplace.errors import (
    AlreadyInitializedError,
    BatchSizeError,
    ClusterConfigError,
    DeviceFallbackWarning,
    DeviceNotFoundError,
    TfplaceError,
    TfplaceWarning,
)
from tfplace.inventory import Inventory, inventory
from tfplace.launch import LaunchResult, launch, tf_configs
from tfplace.memory import MemoryInfo, memory_info, track_memory
from tfplace.multiworker import is_chief, worker_save_path
from tfplace.placement import on_cpu, on_device, on_gpu
from tfplace.plan import KINDS, PRIORITY, Plan, plan
from tfplace.precision import configure_precision
from tfplace.strategy import pick_strategy
from tfplace.tuning import AutotuneReport, autotune, find_batch_size

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "PRIORITY",
    "AlreadyInitializedError",
    "AutotuneReport",
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
    "__version__",
    "autotune",
    "configure_cpus",
    "configure_gpus",
    "configure_precision",
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
