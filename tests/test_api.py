"""The public surface: exported names, lazy import, missing TensorFlow."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from helpers import run_json

import tfplace

pytestmark = pytest.mark.pure


PACKAGE = Path(tfplace.__file__).parent

#: The public submodules: importable by users and documented; everything else is private.
PUBLIC_SUBMODULES = (*tfplace._SUBMODULES, "pytest_plugin")
#: The goal of the shape issue: the whole reachable public surface stays small.
MAX_PUBLIC_NAMES = 60


def _type_checking_imports() -> dict[str, str]:
    """Name -> module, as the ``TYPE_CHECKING`` block of ``tfplace/__init__.py`` imports it."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module:
                    for alias in child.names:
                        assert alias.asname == alias.name, alias.name  # an explicit re-export
                        found[alias.name] = child.module
    return found


def reachable_public_names() -> set[str]:
    """Every public name a user reaches: ``tfplace.__all__`` and the public submodules'."""
    names = set(tfplace.__all__)
    for sub in PUBLIC_SUBMODULES:
        names |= set(importlib.import_module(f"tfplace.{sub}").__all__)
    return names


def test_all_and_the_typing_block_are_derived_from_the_one_table() -> None:
    assert tfplace.__all__ == sorted([*tfplace._EXPORTS, "__version__"])
    assert _type_checking_imports() == tfplace._EXPORTS
    assert len(tfplace.__all__) == len(set(tfplace.__all__))


def test_the_reachable_public_surface_is_small_and_documented() -> None:
    names = reachable_public_names()
    assert len(names) <= MAX_PUBLIC_NAMES, sorted(names)
    docs = "\n".join(
        p.read_text()
        for p in (*(PACKAGE.parent / "docs").glob("*.md"), PACKAGE.parent / "README.md")
    )
    undocumented = sorted(n for n in names if n != "__version__" and n not in docs)
    assert undocumented == [], undocumented
    for sub in PUBLIC_SUBMODULES:
        module = importlib.import_module(f"tfplace.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert (obj.__doc__ or "").strip(), f"tfplace.{sub}.{name} has no docstring"


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
    assert "tfplace._facts.cluster.spec" in out["after"]
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


def _documented_paths() -> tuple[set[tuple[str, str]], set[str]]:
    """``from tfplace.x import a, b`` statements, and dotted ``tfplace.x.y`` names in backticks,
    as the README, the docs pages and the examples write them."""
    root = PACKAGE.parent
    files = [root / "README.md", *(root / "docs").rglob("*.md"), *(root / "docs").rglob("*.py")]
    imports: set[tuple[str, str]] = set()
    dotted: set[str] = set()
    for path in files:
        text = path.read_text()
        for module, names in re.findall(r"from (tfplace(?:\.\w+)*) import ([\w, ]+)", text):
            imports |= {(module, n.strip()) for n in names.split(",") if n.strip()}
        dotted |= set(re.findall(r"`(tfplace(?:\.\w+)+)", text))
    return imports, dotted


def _resolve(dotted: str) -> object:
    """The object ``tfplace.a.b.c`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_import_path_the_docs_use_works() -> None:
    imports, dotted = _documented_paths()
    assert ("tfplace.testing", "fake_inventory") in imports  # the scan sees the docs
    assert "tfplace.callbacks.BackupAndRestore" in dotted
    for module, name in sorted(imports):
        assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"
    broken = []
    for path in sorted(dotted):
        try:
            _resolve(path)
        except (ImportError, AttributeError) as err:
            broken.append(f"{path}: {err}")
    assert broken == []
