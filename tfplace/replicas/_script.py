"""``tfplace check SCRIPT``: a training script's ``build``/``data``/``train_step`` checked.

The script is read with :mod:`ast` first, so one that defines neither ``build`` nor ``data`` is
refused before any of its code runs; then it is imported under a name of its own (never
``__main__``: its ``if __name__ == "__main__":`` block does not run) with its own path as
``sys.argv``, as Python would give it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tfplace._configure import configure_cpus
from tfplace.replicas._check import compare_replicas
from tfplace.replicas._report import ReplicaReport

__all__ = [
    "ScriptError",
    "check_script",
    "exit_code",
    "refuse_unless_checkable",
    "script_functions",
]

#: The module name the script is imported under (``--workers`` finds its functions there).
MODULE = "__tfplace_check__"


class ScriptError(ValueError):
    """The script cannot be checked: it lacks ``build`` or ``data``, or does not parse."""


def _top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names the module binds at its top level, and whether it has a ``from x import *``."""
    names: set[str] = set()
    star = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        else:  # if/try/with/for/while/match, sync or async: the statements they hold
            body = [
                statement
                for part in (node, *getattr(node, "handlers", ()), *getattr(node, "cases", ()))
                for field in ("body", "orelse", "finalbody")
                for statement in getattr(part, field, ())
                if isinstance(statement, ast.stmt)
            ]
            if body:
                more, more_star = _top_level_names(ast.Module(body=body, type_ignores=[]))
                names |= more
                star = star or more_star
    return names, star


def refuse_unless_checkable(path: Path) -> None:
    """Read the script with :mod:`ast`, running none of it.

    Raises:
        ScriptError: it does not parse, or binds no ``build`` or no ``data`` at its top level
            (a ``from x import *`` may bind them: then it is not refused here).
    """
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise ScriptError(f"{path} does not parse: {err}") from err
    names, star = _top_level_names(tree)
    missing = [n for n in ("build", "data") if n not in names]
    if missing and not star:
        raise ScriptError(
            f"{path} must define build() (returns the compiled model) and data(strategy) "
            "(returns the input as the training consumes it) at its top level; found no "
            f"{' and no '.join(missing)}, so nothing was run. Fix: add them (the training of "
            'the script itself can stay under if __name__ == "__main__":)'
        )


def script_functions(path: Path) -> tuple[Callable[[], Any], Callable[[Any], Any], Any]:
    """``(build, data, train_step or None)`` of the script at ``path``, imported under its own
    module name with ``sys.argv == [path]``.

    Raises:
        ScriptError: see :func:`refuse_unless_checkable`.
        Exception: whatever the script raises when imported.
    """
    refuse_unless_checkable(path)
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # the script's own imports, as with python (for this process)
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that --workers finds build/data in this file
    argv = sys.argv
    sys.argv = [str(path)]
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)  # a half-run module is not left behind
        raise
    finally:
        sys.argv = argv
    build, data = getattr(module, "build", None), getattr(module, "data", None)
    if not callable(build) or not callable(data):
        raise ScriptError(
            f"{path} must define build() and data(strategy); found build="
            f"{type(build).__name__}, data={type(data).__name__}"
        )
    return build, data, getattr(module, "train_step", None)


def check_script(
    path: Path,
    replicas: Sequence[int],
    *,
    steps: int,
    workers: bool,
    rtol: float | None = None,
    atol: float | None = None,
) -> list[ReplicaReport]:
    """The replica check of a script, 1 vs each count in ``replicas``.

    Raises:
        ScriptError: see :func:`script_functions`.
        Exception: whatever the script, its ``build()`` or ``data()`` raise.
    """
    refuse_unless_checkable(path)  # before anything runs, the CPU split included
    if not workers:  # before the script runs: it may start TensorFlow at import
        configure_cpus(threads=None, virtual_devices=max(replicas))
    build, data, train_step = script_functions(path)
    return [
        compare_replicas(
            build,
            data,
            replicas=n,
            steps=steps,
            rtol=rtol,
            atol=atol,
            train_step=train_step,
            workers=workers,
        )
        for n in replicas
    ]


def exit_code(reports: Sequence[ReplicaReport]) -> int:
    """0 when every report says SAME, 1 when one says DIFFERENT or NOT FINITE, else 2."""
    if any(r.verdict in ("DIFFERENT", "NOT FINITE") for r in reports):
        return 1
    return 0 if reports and all(r.verdict == "SAME" for r in reports) else 2
