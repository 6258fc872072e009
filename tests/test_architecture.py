"""The package's shape, checked from its source: one TensorFlow seam, no cycles at import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "tfplace"
SEAM = PACKAGE / "_tf.py"


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports are free)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return [n for n in ast.walk(tree) if id(n) not in skip]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != SEAM)


def test_tensorflow_is_imported_only_in_the_seam() -> None:
    offenders = []
    for path in _modules():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")  # type: ignore[attr-defined]
    assert offenders == [], f"import tensorflow outside tfplace/_tf.py: {offenders}"
    assert "import tensorflow" in SEAM.read_text()


def test_tf_config_is_called_only_through_the_seam() -> None:
    """Device settings and device lists are read and written in one place (``_tf.py``)."""
    offenders = []
    for path in _modules():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "config"
                and isinstance(node.value, ast.Name)
                and node.value.id == "tf"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"tf.config used outside tfplace/_tf.py: {offenders}"


def test_the_virtual_cpu_count_rule_has_one_home() -> None:
    """Counting logical CPUs before start-up (the split of CPU:0) is written once."""
    users = [p.name for p in _modules() if "get_split(cpus[0])" in p.read_text()]
    assert users == []
    assert "get_split(cpus[0])" in SEAM.read_text()
