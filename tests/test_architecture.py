"""The package's shape, checked from its source: layers, one TensorFlow seam, no import cycles.

The layers (``docs/architecture.md``): the seam and the errors at the bottom; facts; pure
decisions; actions (everything that touches TensorFlow or the process); the doctor, the pytest
plugin and the CLI on top. A module may import its own layer and the layers below it only, and
the decisions never import an action.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUIET_ENV

import tfplace

pytestmark = pytest.mark.pure


PACKAGE = Path(tfplace.__file__).parent
SEAM = PACKAGE / "_tf"  # the seam package: the only code that imports TensorFlow

#: Layers by module-name prefix; the longest matching prefix wins.
FLOOR = ("tfplace._tf", "tfplace.errors")
FACTS = ("tfplace._facts",)
PURE_PACKAGE_INITS = ("tfplace.cluster",)  # imports only the pure parsers
DECISIONS = ("tfplace._decide",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_names() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def module_path(name: str) -> Path:
    rel = PACKAGE.parent / name.replace(".", "/")
    return rel / "__init__.py" if rel.is_dir() else rel.with_suffix(".py")


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer(name: str) -> str:
    if _in(name, FLOOR):
        return "floor"
    if _in(name, DECISIONS):
        return "decisions"
    if _in(name, FACTS) or name in PURE_PACKAGE_INITS:
        return "facts"
    if (
        name == "tfplace"
        or name.startswith("tfplace.doctor")
        or name
        in (
            "tfplace.pytest_plugin",
            "tfplace.__main__",
        )
    ):
        return "top"
    return "actions"


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports are free)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return [n for n in ast.walk(tree) if id(n) not in skip]


def imports_of(name: str, *, runtime_only: bool = False) -> set[str]:
    """The tfplace modules ``name`` imports, inside functions too (a lazy import is still an
    import); with ``runtime_only``, not those under ``TYPE_CHECKING``."""
    names = set(module_names())
    tree = ast.parse(module_path(name).read_text())
    nodes = _runtime_nodes(tree) if runtime_only else list(ast.walk(tree))
    edges: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # from tfplace.x import y: y may be a submodule
                sub = f"{node.module}.{alias.name}"
                if sub in names:
                    edges.add(sub)
                elif node.module == "tfplace":  # a lazy public name, or __init__'s own
                    edges.add(tfplace._EXPORTS.get(alias.name, "tfplace"))
                else:
                    edges.add(node.module)
    return (edges & names) - {name}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in module_names()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


# ------------------------------------------------------------------------------ layers


def test_the_layers_are_what_the_architecture_page_says() -> None:
    assert layer("tfplace._decide.strategy") == "decisions"
    assert layer("tfplace._facts.inventory") == "facts"
    assert layer("tfplace._facts.cluster.spec") == "facts"
    assert layer("tfplace.cluster._launch") == "actions"
    assert layer("tfplace._configure") == "actions"
    assert layer("tfplace.doctor._rules") == "top"
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for prefix in (*FACTS, *DECISIONS):
        assert prefix.rsplit(".", 1)[-1] in page, prefix


def test_no_decisions_module_imports_an_action_or_the_seam() -> None:
    offenders = {
        name: sorted(m for m in imports_of(name) if layer(m) not in ("decisions", "facts"))
        for name in module_names()
        if layer(name) == "decisions"
    }
    offenders = {k: [m for m in v if m != "tfplace.errors"] for k, v in offenders.items() if v}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len([n for n in module_names() if layer(n) == "decisions"]) >= 5


def test_facts_import_only_facts_and_the_floor() -> None:
    offenders = {
        name: sorted(m for m in imports_of(name) if layer(m) not in ("facts", "floor"))
        for name in module_names()
        if layer(name) == "facts"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_doctor_reads_facts_and_decisions_only() -> None:
    doctor = [n for n in module_names() if n.startswith("tfplace.doctor")]
    offenders = {
        name: sorted(
            m
            for m in imports_of(name, runtime_only=True)
            if layer(m) == "actions" or m == "tfplace.__main__"
        )
        for name in doctor
    }
    assert len(doctor) >= 5
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_pytest_plugin_loads_only_decisions_when_registered() -> None:
    """At module level the plugin imports decisions and errors; it acts only once active."""
    tree = ast.parse(module_path("tfplace.pytest_plugin").read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfplace"):
            top.add(node.module)
    assert top == {"tfplace._decide.session", "tfplace.errors"}


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_tfplace_modules() -> None:
    graph = import_graph()
    assert "tfplace.doctor._rules" in graph["tfplace.doctor"]  # the graph sees real imports
    assert "tfplace._decide.devices" in graph["tfplace._configure"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_process() -> None:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **QUIET_ENV},
        )
        for name in module_names()
    }
    failed = {}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failed[name] = err.strip().splitlines()[-1:]
    finally:  # on a timeout, no import process is left running
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert not failed, failed


# ------------------------------------------------------------------- the TensorFlow seam


def _seam_files() -> list[Path]:
    return sorted(SEAM.rglob("*.py"))


def _seam_text() -> str:
    return "\n".join(p.read_text() for p in _seam_files())


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if SEAM not in p.parents)


def _tf_touches(source: str, name: str) -> list[str]:
    """Where ``source`` reaches TensorFlow or Keras other than through the seam's functions."""
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] in ("tensorflow", "keras", "tf_keras") for n in names):
            found.append(f"{where} imports {names}")
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.endswith("import_module") and node.args:
                arg = ast.unparse(node.args[0])
                if any(k in arg for k in ("tensorflow", "keras")):
                    found.append(f"{where} {func}({arg})")
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "_tf.load":
            found.append(f"{where} _tf.load (use a named function of the seam)")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "config"
            and isinstance(node.value, ast.Name)
            and node.value.id == "tf"
        ):
            found.append(f"{where} tf.config")
    return found


def test_tensorflow_and_keras_are_reached_only_through_the_seam() -> None:
    offenders = [
        hit
        for path in _modules()
        for hit in _tf_touches(path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert offenders == [], offenders
    assert "import tensorflow" in _seam_text()
    assert len(_seam_files()) >= 5 and len(_modules()) > 50  # both sides of the line are seen


def test_the_seam_check_catches_each_way_around_it() -> None:
    cases = {
        "import keras\n": "imports ['keras']",
        "import tf_keras\n": "imports ['tf_keras']",
        "import importlib\nimportlib.import_module('tensorflow')\n": "import_module",
        "from tfplace import _tf\n_tf.load().distribute\n": "_tf.load",
        "import tensorflow as tf\n": "imports ['tensorflow']",
    }
    for code, expected in cases.items():
        hits = _tf_touches(code, "probe.py")
        assert any(expected in h for h in hits), (code, hits)
    assert _tf_touches("from tfplace import _tf\n_tf.is_dataset(1)\n", "probe.py") == []


def test_the_virtual_cpu_count_rule_has_one_home() -> None:
    """Counting logical CPUs before start-up (the split of CPU:0) is written once."""
    users = [p.name for p in _modules() if "get_split(cpus[0])" in p.read_text()]
    assert users == []
    assert "get_split(cpus[0])" in _seam_text()


def test_change_sets_dispatch_on_typed_targets_not_labels() -> None:
    """Applying a change set never compares a change's display label."""
    from tfplace._decide.devices import Target

    text = (PACKAGE / "_configure.py").read_text()
    for target in Target:
        assert f'"{target.value}"' not in text, target


#: Private names of the standard library that tfplace may use anywhere.
_STDLIB_PRIVATE = frozenset({"_replace", "_asdict", "_fields", "_exit", "_getframe"})
#: Public-looking TensorFlow/Keras internals tfplace relies on: only the seam may touch them.
_PUBLIC_LOOKING_INTERNALS = frozenset({"train_function"})


def _tfplace_private_names() -> set[str]:
    """The private names tfplace itself defines: modules, functions, classes, variables,
    arguments and the attributes it sets on its own objects (``self._x``)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names.update(part.removesuffix(".py") for part in path.relative_to(PACKAGE).parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and ast.unparse(node.value) in ("self", "cls")
            ):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_touches(source: str, name: str, ours: set[str]) -> list[str]:
    """Where ``source`` reaches an attribute tfplace does not define and TensorFlow or Keras
    keeps private (``x._name``, ``getattr(x, "_name")``), or a listed public-looking one."""

    def foreign(attr: str) -> bool:
        if attr in _PUBLIC_LOOKING_INTERNALS:
            return True
        private = attr.startswith("_") and not attr.startswith(("__", "_tfplace"))
        return private and attr not in ours and attr not in _STDLIB_PRIVATE

    found = []
    for node in ast.walk(ast.parse(source)):
        attr = None
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) not in ("self", "cls"):
            attr = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            attr = node.args[1].value
        if attr is not None and foreign(attr):
            found.append(f"{name}:{getattr(node, 'lineno', '?')} {ast.unparse(node)}")
    return found


def test_private_tensorflow_and_keras_attributes_are_reached_only_through_the_seam() -> None:
    """Every internal (``strategy.extended._num_workers``, ``model._initial_epoch``,
    ``model.train_function``, ...) is behind a named seam function with a feature probe."""
    ours = _tfplace_private_names()
    offenders = [
        hit
        for path in _modules()
        for hit in _private_touches(path.read_text(), str(path.relative_to(PACKAGE)), ours)
    ]
    assert offenders == [], offenders
    seam_hits = [
        hit for path in _seam_files() for hit in _private_touches(path.read_text(), path.name, ours)
    ]
    assert any("_num_workers" in hit for hit in seam_hits)  # the check sees real internals


def test_the_private_attribute_check_catches_each_way_around_it() -> None:
    ours = {"_mine"}
    cases = {
        "strategy.extended._num_workers\n": "_num_workers",
        "model._initial_epoch = 3\n": "_initial_epoch",
        "getattr(model, '_training_state', None)\n": "_training_state",
        "model.train_function = f\n": "train_function",
    }
    for code, expected in cases.items():
        hits = _private_touches(code, "probe.py", ours)
        assert any(expected in h for h in hits), (code, hits)
    allowed = "self._x = 1\nobj._mine\nt._replace(a=1)\nstrategy._tfplace_cluster = c\n"
    assert _private_touches(allowed, "probe.py", ours) == []
