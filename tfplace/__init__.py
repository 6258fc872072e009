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

#: Public name -> the private module that defines it: the one list of the public API.
#: ``__all__`` is derived from it; ``tests/test_api.py`` checks that the ``TYPE_CHECKING``
#: block below imports exactly these names from exactly these modules.
_EXPORTS: dict[str, str] = {
    "KINDS": "tfplace._decide.strategy",
    "PRIORITY": "tfplace._decide.strategy",
    "Plan": "tfplace._decide.strategy",
    "plan": "tfplace._decide.strategy",
    "Inventory": "tfplace._facts.inventory",
    "inventory": "tfplace._facts.inventory",
    "LaunchResult": "tfplace.cluster._launch",
    "launch": "tfplace.cluster._launch",
    "tf_configs": "tfplace.cluster._launch",
    "TrainingDiagnosis": "tfplace.tuning._diagnose",
    "diagnose_training": "tfplace.tuning._diagnose",
    "ClusterSpec": "tfplace._facts.cluster.spec",
    "parse_slurm": "tfplace._facts.cluster.slurm",
    "parse_tf_config": "tfplace._facts.cluster.spec",
    "CPUConfig": "tfplace._configure",
    "GPUConfig": "tfplace._configure",
    "configure_cpus": "tfplace._configure",
    "configure_gpus": "tfplace._configure",
    "global_batch_size": "tfplace._data",
    "prepare_dataset": "tfplace._data",
    "AlreadyInitializedError": "tfplace.errors",
    "BarrierTimeoutError": "tfplace.errors",
    "BatchSizeError": "tfplace.errors",
    "ClusterConfigError": "tfplace.errors",
    "DeviceFallbackWarning": "tfplace.errors",
    "DeviceNotFoundError": "tfplace.errors",
    "TfplaceError": "tfplace.errors",
    "TfplaceWarning": "tfplace.errors",
    "MemoryInfo": "tfplace._memory",
    "memory_info": "tfplace._memory",
    "track_memory": "tfplace._memory",
    "barrier": "tfplace.cluster._multiworker",
    "is_chief": "tfplace.cluster._multiworker",
    "worker_save_path": "tfplace.cluster._multiworker",
    "on_cpu": "tfplace._placement",
    "on_device": "tfplace._placement",
    "on_gpu": "tfplace._placement",
    "configure_precision": "tfplace._precision",
    "pick_strategy": "tfplace._strategy",
    "ReplicaReport": "tfplace.replicas._report",
    "compare_replicas": "tfplace.replicas._check",
    "AutotuneReport": "tfplace.tuning._autotune",
    "autotune": "tfplace.tuning._autotune",
    "find_batch_size": "tfplace.tuning._autotune",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # static view for type checkers and IDEs (explicit re-exports)
    from tfplace._configure import (
        CPUConfig as CPUConfig,
        GPUConfig as GPUConfig,
        configure_cpus as configure_cpus,
        configure_gpus as configure_gpus,
    )
    from tfplace._data import (
        global_batch_size as global_batch_size,
        prepare_dataset as prepare_dataset,
    )
    from tfplace._decide.strategy import (
        KINDS as KINDS,
        PRIORITY as PRIORITY,
        Plan as Plan,
        plan as plan,
    )
    from tfplace._facts.cluster.slurm import (
        parse_slurm as parse_slurm,
    )
    from tfplace._facts.cluster.spec import (
        ClusterSpec as ClusterSpec,
        parse_tf_config as parse_tf_config,
    )
    from tfplace._facts.inventory import (
        Inventory as Inventory,
        inventory as inventory,
    )
    from tfplace._memory import (
        MemoryInfo as MemoryInfo,
        memory_info as memory_info,
        track_memory as track_memory,
    )
    from tfplace._placement import (
        on_cpu as on_cpu,
        on_device as on_device,
        on_gpu as on_gpu,
    )
    from tfplace._precision import (
        configure_precision as configure_precision,
    )
    from tfplace._strategy import (
        pick_strategy as pick_strategy,
    )
    from tfplace.cluster._launch import (
        LaunchResult as LaunchResult,
        launch as launch,
        tf_configs as tf_configs,
    )
    from tfplace.cluster._multiworker import (
        barrier as barrier,
        is_chief as is_chief,
        worker_save_path as worker_save_path,
    )
    from tfplace.errors import (
        AlreadyInitializedError as AlreadyInitializedError,
        BarrierTimeoutError as BarrierTimeoutError,
        BatchSizeError as BatchSizeError,
        ClusterConfigError as ClusterConfigError,
        DeviceFallbackWarning as DeviceFallbackWarning,
        DeviceNotFoundError as DeviceNotFoundError,
        TfplaceError as TfplaceError,
        TfplaceWarning as TfplaceWarning,
    )
    from tfplace.replicas._check import (
        compare_replicas as compare_replicas,
    )
    from tfplace.replicas._report import (
        ReplicaReport as ReplicaReport,
    )
    from tfplace.tuning._autotune import (
        AutotuneReport as AutotuneReport,
        autotune as autotune,
        find_batch_size as find_batch_size,
    )
    from tfplace.tuning._diagnose import (
        TrainingDiagnosis as TrainingDiagnosis,
        diagnose_training as diagnose_training,
    )


#: Public submodules reachable as ``tfplace.<name>`` after a plain ``import tfplace``
#: (``tfplace.callbacks.BackupAndRestore``, ``tfplace.doctor.findings``), imported on first use.
#: ``tfplace.pytest_plugin`` is public too, loaded by pytest through its entry point.
_SUBMODULES = ("callbacks", "cluster", "doctor", "errors", "testing", "tuning")


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
