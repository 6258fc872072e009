"""The public surface: exported names, lazy import, missing TensorFlow."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest
from helpers import run_json

import tfplace

PACKAGE = Path(tfplace.__file__).parent

EXPECTED = {
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
}


def test_exported_names_are_exactly_the_intended_ones() -> None:
    assert set(tfplace.__all__) == EXPECTED
    assert len(tfplace.__all__) == len(set(tfplace.__all__))  # order: ruff RUF022


def test_every_export_is_the_object_its_submodule_defines_and_exports() -> None:
    """Derived from the submodules, the way httpx checks its exports: each public name is
    resolved lazily from the module the table names, is that module's own object, and is in
    that module's ``__all__``; and nothing else public is left in the namespace."""
    table = tfplace._EXPORTS
    assert set(table) | {"__version__"} == set(tfplace.__all__)
    for name, module_name in table.items():
        module = importlib.import_module(module_name)
        assert name in module.__all__, (name, module_name)
        assert getattr(tfplace, name) is getattr(module, name), name
    public = {n for n in vars(tfplace) if not n.startswith("_")}
    submodules = {n for n, v in vars(tfplace).items() if isinstance(v, types.ModuleType)}
    plumbing = {"annotations", "importlib", "Any", "TYPE_CHECKING"}  # __init__'s own imports
    assert public - submodules - plumbing <= set(tfplace.__all__)
    assert sorted(dir(tfplace)) == dir(tfplace) and set(tfplace.__all__) <= set(dir(tfplace))


def test_public_submodules_are_reachable_after_a_plain_import() -> None:
    out = run_json(
        """
        import json, sys
        import tfplace
        names = {"callbacks": tfplace.callbacks.BackupAndRestore.__name__,
                 "doctor": tfplace.doctor.findings.__name__,
                 "cluster": tfplace.cluster.ClusterSpec.__name__}
        print(json.dumps({"names": names, "tf": "tensorflow" in sys.modules}))
        """
    )
    assert out["names"] == {
        "callbacks": "BackupAndRestore",
        "doctor": "findings",
        "cluster": "ClusterSpec",
    }
    for name in tfplace._SUBMODULES:
        assert (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'pick_stratgy'"):
        tfplace.pick_stratgy  # noqa: B018


def test_import_loads_no_submodule_until_a_name_is_used() -> None:
    out = run_json(
        """
        import json, sys
        import tfplace
        before = sorted(m for m in sys.modules if m.startswith("tfplace."))
        tfplace.ClusterSpec
        after = sorted(m for m in sys.modules if m.startswith("tfplace."))
        print(json.dumps({"before": before, "after": after, "tf": "tensorflow" in sys.modules}))
        """
    )
    assert out["before"] == []
    assert "tfplace.cluster" in out["after"]
    assert out["tf"] is False


def test_error_hierarchy() -> None:
    assert issubclass(tfplace.AlreadyInitializedError, tfplace.TfplaceError)
    assert issubclass(tfplace.AlreadyInitializedError, RuntimeError)
    assert issubclass(tfplace.DeviceNotFoundError, LookupError)
    assert issubclass(tfplace.ClusterConfigError, ValueError)
    assert issubclass(tfplace.DeviceFallbackWarning, tfplace.TfplaceWarning)
    assert issubclass(tfplace.TfplaceWarning, UserWarning)


def test_import_does_not_import_tensorflow() -> None:
    out = run_json(
        """
        import json, sys, time
        t = time.perf_counter()
        import tfplace
        ms = (time.perf_counter() - t) * 1000
        print(json.dumps({"tf": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                          "ms": ms}))
        """
    )
    assert out["tf"] is False
    assert out["keras"] is False
    assert out["ms"] < 2000  # lazy: no TensorFlow, no submodule (generous for a loaded machine)


def test_missing_tensorflow_names_the_pip_command() -> None:
    out = run_json(
        """
        import json, sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
        import tfplace
        try:
            tfplace.pick_strategy()
        except ImportError as err:
            print(json.dumps({"msg": str(err)}))
        """
    )
    assert "pip install" in out["msg"]
    assert "tfplace[cpu]" in out["msg"]


def test_inventory_without_tensorflow_still_works() -> None:
    out = run_json(
        """
        import json, sys
        sys.modules["tensorflow"] = None
        import tfplace
        inv = tfplace.inventory()
        print(json.dumps({"tf": inv.tensorflow is None, "kind": tfplace.plan().kind}))
        """
    )
    assert out == {"tf": True, "kind": "default"}


def test_the_error_pages_draw_every_error_class() -> None:
    """docs/errors.md and the errors module's docstring show the whole hierarchy."""
    from tfplace import errors

    page = (PACKAGE.parent / "docs" / "errors.md").read_text()
    for name in errors.__all__:
        assert f" {name} " in page or f"`{name}`" in page, name
        assert name in (errors.__doc__ or ""), name
