"""The replica check on N local workers: the worker protocol (a spec file in, a record out per
worker), the records put together into the N-replica run, and the worker's own main."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfplace._decide.strategy import plan
from tfplace._strategy import build_strategy
from tfplace.errors import AlreadyInitializedError
from tfplace.replicas._judge import compare_steps, judge
from tfplace.replicas._records import Run, Snapshots, batch_record
from tfplace.replicas._report import ReplicaReport
from tfplace.replicas._tolerance import default_tolerance
from tfplace.replicas._train import (
    TrainStep,
    build_model,
    record_input,
    train_reference,
    train_steps,
    weight_values,
    write_weights,
)

# ------------------------------------------------------------------------------ N local workers

#: Seconds the workers have to start and join, and a collective to wait for its peers, before
#: the launch fails instead of hanging (TensorFlow's start-up on a loaded 2-core machine takes
#: ~10 s).
WORKER_TIMEOUT = 180.0
_WORKER_MAIN = "; ".join(
    [
        "import sys",
        "from tfplace.replicas._workers import replica_worker",
        "sys.exit(replica_worker(sys.argv[1]))",
    ]
)


def _locate(fn: Any, role: str) -> tuple[str, str, str]:
    """``(module name, module file, attribute)`` under which a worker finds ``fn`` again.

    Looks in ``fn``'s own module first, then in every module of this program with a file of its
    own (a ``tf.function`` or a partial may be bound elsewhere), for a top-level name bound to
    this very object.

    Raises:
        ValueError: no module file binds it (a lambda, a nested function, ``python -c``).
    """
    seen: set[str] = set()
    first = getattr(fn, "__module__", None)
    candidates = [first] if isinstance(first, str) else []
    candidates += [name for name in list(sys.modules) if name != first]
    for name in candidates:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) if module is not None else None
        if not path or name in seen or path.startswith((sys.base_prefix, sys.prefix)):
            continue
        seen.add(name)
        for attribute, value in list(vars(module).items()):
            if value is fn and not attribute.startswith("__"):
                return name, str(Path(path).resolve()), attribute
    what = getattr(fn, "__qualname__", None) or type(fn).__name__
    raise ValueError(
        f"compare_replicas(workers=True): each worker imports {role} again, but {what!r} is not "
        "a top-level name of any module file of this program (found "
        f"{type(fn).__name__} {what!r} in module {first!r}). Fix: define {role} at the top level "
        f"of a .py file (def {role}(...) or {role} = ...), not as a lambda, inside another "
        "function or in python -c, and pass that object"
    )


def compare_on_workers(
    build: Callable[[], Any],
    data: Callable[[Any], Any],
    train_step: TrainStep | None,
    *,
    replicas: int,
    steps: int,
    tol: tuple[float | None, float | None, float | None],
    seed: int,
) -> ReplicaReport:
    """One replica here, N replicas as N local workers; the same :func:`judge`."""
    from tfplace.cluster._launch import launch

    started = time.perf_counter()
    functions = {"build": _locate(build, "build"), "data": _locate(data, "data")}
    if train_step is not None:
        functions["train_step"] = _locate(train_step, "train_step")
    one = build_strategy(plan("one_device", devices=["/CPU:0"]))
    with tempfile.TemporaryDirectory(prefix="tfplace-replicas-") as name:
        folder = Path(name)
        ref = train_reference(
            one,
            build,
            data,
            train_step,
            steps=steps,
            seed=seed,
            replicas=replicas,
            path=folder / "one.bin",
        )
        spec = {
            "functions": functions,
            "steps": steps,
            "seed": seed,
            "folder": str(folder),
            "sys_path": [p for p in sys.path if p],
            "timeout": WORKER_TIMEOUT,
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # one replica per worker, on its CPU, like the one here
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [env.get("PYTHONPATH")])]
        )
        lines: list[str] = []
        result = launch(
            [sys.executable, "-c", _WORKER_MAIN, str(folder / "spec.json")],
            replicas,
            env=env,
            out=io.StringIO(),
            on_line=lambda i, line: lines.append(f"[worker {i}] {line}"),
        )
        records = [_read_record(folder, i, ref.run.snapshots.layout) for i in range(replicas)]
        if not any(records):
            tail = "\n".join(lines[-25:])
            raise RuntimeError(
                f"compare_replicas(workers=True): none of the {replicas} workers wrote its "
                f"record ({result}). Their last lines:\n{tail}"
            )
        run_many, notes = _merge_records(records, replicas, result.returncode, lines)
        tolerance = default_tolerance(
            ref.facts.dtype_policy, ["/CPU:0"], (), rtol=tol[0], atol=tol[1], update_rtol=tol[2]
        )
        count = min(len(ref.run.snapshots), len(run_many.snapshots)) - 1
        compared = compare_steps(
            ref.run.snapshots,
            run_many.snapshots,
            max(count, 0),
            names=ref.names,
            trainable=ref.trainable,
            tol=tolerance,
        )
    report = judge(
        ref.run,
        run_many,
        compared,
        facts=ref.facts,
        replicas=replicas,
        steps=steps,
        tol=tolerance,
        custom=train_step is not None,
        hints=ref.hints,
    )
    return dataclasses.replace(
        report,
        notes=report.notes + tuple(notes),
        seconds=time.perf_counter() - started,
        train_seconds=(ref.run.seconds, run_many.seconds),
        devices=tuple(f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in range(replicas)),
        workers=replicas,
    )


@dataclass
class _Record:
    """What one worker wrote: its Run (its own variables) and its share of each batch."""

    run: Run
    shares: list[list[np.ndarray]]  # per step, per input component


def _read_record(
    folder: Path, index: int, layout: list[tuple[np.dtype, tuple[int, ...]]]
) -> _Record | None:
    meta_path, arrays_path = folder / f"worker{index}.json", folder / f"worker{index}.npz"
    if not (meta_path.is_file() and arrays_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    with np.load(arrays_path) as arrays:
        shares = [
            [arrays[f"b{k}_{c}"] for c in range(meta["components"][k])]
            for k in range(len(meta["components"]))
        ]
    run = Run(
        losses=list(meta["losses"]),
        metrics=[dict(m) for m in meta["metrics"]],
        snapshots=Snapshots(folder / f"worker{index}.bin", layout=layout),
        seconds=meta["seconds"],
        error=meta["error"],
    )
    return _Record(run, shares)


def _merge_records(
    records: list[_Record | None], n: int, returncode: int, lines: list[str]
) -> tuple[Run, list[str]]:
    """The N-replica Run from the workers' records: the first worker's losses and variables,
    each step's global batch from every worker's share in worker order."""
    notes: list[str] = []
    written = [r for r in records if r is not None]
    first = written[0]
    run = dataclasses.replace(first.run, batches=[])
    run.error = next((r.run.error for r in written if r.run.error), None)
    if len(written) < n and run.error is None:
        tail = " | ".join(lines[-3:])
        run.error = f"worker(s) {[i for i, r in enumerate(records) if r is None]} wrote nothing "
        run.error += f"(launch exit code {returncode}): {tail}"[:400]
    steps = min(len(r.shares) for r in written) if len(written) == n else 0
    for k in range(steps):
        shares = [r.shares[k] for r in written]
        parts = len(shares[0])
        local = [[s[c] for s in shares] for c in range(parts)]
        run.batches.append(batch_record(local, n))
    mine = first.run.snapshots
    for i, r in enumerate(written[1:], 1):
        last = min(len(r.run.snapshots), len(mine)) - 1
        if last > 0 and any(
            not np.array_equal(r.run.snapshots.read(last, j), mine.read(last, j))
            for j in range(mine.variables)
        ):
            notes.append(
                f"worker {i} holds other variable values than worker 0 after step {last - 1}: "
                "the workers' copies are not kept in sync (variables made outside "
                "strategy.scope()?)"
            )
            break
    return run, notes


def _worker_strategy(timeout: float) -> Any:
    """The worker's multi-worker strategy: the check's, or the one the user's script built
    when it was imported (``pick_strategy()`` at module level, as a training script does)."""
    from tfplace._strategy import pick_strategy

    try:
        return pick_strategy("multi_worker", communication_timeout=timeout, startup_timeout=timeout)
    except AlreadyInitializedError as err:
        try:  # the script's own pick_strategy() at import: the same request gives it again
            return pick_strategy()
        except AlreadyInitializedError:
            raise AlreadyInitializedError(
                "tfplace check --workers: the script builds a strategy of its own when it is "
                "imported, with other settings than the check's workers can share, so the "
                "worker cannot build its multi-worker strategy (expected: no strategy built "
                "at import, or a plain pick_strategy(); found: " + str(err)[:200] + "). Fix: "
                'move the pick_strategy(...) call under `if __name__ == "__main__":` or '
                "into build()/data()"
            ) from err


def replica_worker(spec_path: str) -> int:
    """One worker of ``compare_replicas(workers=True)``: import the user's functions, build
    the model under the multi-worker strategy, load the shared initial weights, train, and write
    the record (``worker<i>.json`` / ``.npz`` / ``.bin``). Returns 0, or 3 when the training
    failed (the launcher then stops the other workers instead of leaving them waiting in a
    collective)."""
    spec = json.loads(Path(spec_path).read_text())
    index = int(os.environ.get("TFPLACE_WORKER_INDEX", "0"))
    sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
    functions = {role: _import(*where) for role, where in spec["functions"].items()}
    strategy = _worker_strategy(float(spec["timeout"]))
    seed, steps = int(spec["seed"]), int(spec["steps"])
    model = build_model(strategy, functions["build"], seed)
    folder = Path(spec["folder"])
    layout = [(np.asarray(v.numpy()).dtype, tuple(v.shape)) for v in model.weights]
    start = Snapshots(folder / "one.bin", layout=layout)
    if len(start) < 1:
        raise ValueError("build() made other variables in the worker than in the parent process")
    write_weights(model, (start.read(0, j) for j in range(start.variables)))
    train_step = functions.get("train_step")
    recorded = record_input(
        strategy, functions["data"], steps, seed, as_fit_sees_it=train_step is None
    )
    local = [[np.concatenate(parts, axis=0) for parts in step] for step in recorded]
    run = Run(snapshots=Snapshots(folder / f"worker{index}.bin"))
    run.keep(weight_values(model))
    train_steps(strategy, model, functions["data"], min(steps, len(local)), train_step, seed, run)
    arrays_out: dict[str, np.ndarray] = {}
    for k, components in enumerate(local):
        arrays_out.update({f"b{k}_{c}": v for c, v in enumerate(components)})
    np.savez(folder / f"worker{index}.npz", **arrays_out)  # type: ignore[arg-type]
    meta = {
        "losses": run.losses,
        "metrics": run.metrics,
        "components": [len(c) for c in local],
        "seconds": run.seconds,
        "error": run.error,
    }
    (folder / f"worker{index}.json.tmp").write_text(json.dumps(meta))
    (folder / f"worker{index}.json.tmp").replace(folder / f"worker{index}.json")
    return 3 if run.error else 0


def _import(module_name: str, path: str, attribute: str) -> Any:
    """``attribute`` of the module the parent found it in: by name where it is importable here,
    else loaded from its file (a script run as ``__main__``, or ``tfplace check``'s)."""
    if not module_name.startswith("__"):
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            pass
    name = f"__tfplace_replica_{Path(path).stem}__"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        argv = sys.argv
        sys.argv = [path]  # the script sees its own name, as when Python runs it
        try:
            spec.loader.exec_module(module)
        finally:
            sys.argv = argv
    return getattr(module, attribute)
