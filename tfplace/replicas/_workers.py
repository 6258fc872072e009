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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfplace import _tf
from tfplace._decide.strategy import plan
from tfplace._strategy import build_strategy
from tfplace.replicas._judge import Arrays, Run, judge
from tfplace.replicas._report import ModelFacts, ReplicaReport
from tfplace.replicas._train import (
    TrainStep,
    build_model,
    model_facts,
    read_weights,
    record_input,
    sorted_rows,
    train,
    train_steps,
    variable_name,
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
    rtol: float,
    atol: float,
    seed: int,
) -> ReplicaReport:
    """One replica here, N replicas as N local workers; the same :func:`judge`."""
    from tfplace.cluster._launch import launch

    started = time.perf_counter()
    functions = {"build": _locate(build, "build"), "data": _locate(data, "data")}
    if train_step is not None:
        functions["train_step"] = _locate(train_step, "train_step")
    one = build_strategy(plan("one_device", devices=["/CPU:0"]))
    policy = _tf.keras_policy()
    try:
        model_one = build_model(one, build, seed)
    finally:
        _tf.set_keras_policy(policy)
    names = [variable_name(v) for v in model_one.weights]
    start = read_weights(model_one)
    trainable_ids = {id(v) for v in model_one.trainable_weights}
    trainable = [id(v) in trainable_ids for v in model_one.weights]
    with tempfile.TemporaryDirectory(prefix="tfplace-replicas-") as folder:
        np.savez(Path(folder, "start.npz"), *start)
        spec = {
            "functions": functions,
            "steps": steps,
            "seed": seed,
            "folder": folder,
            "sys_path": [p for p in sys.path if p],
            "timeout": WORKER_TIMEOUT,
        }
        Path(folder, "spec.json").write_text(json.dumps(spec))
        run_one = train(one, model_one, data, steps, train_step, seed)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # one replica per worker, on its CPU, like the one here
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), *filter(None, [env.get("PYTHONPATH")])]
        )
        lines: list[str] = []
        result = launch(
            [sys.executable, "-c", _WORKER_MAIN, str(Path(folder, "spec.json"))],
            replicas,
            env=env,
            out=io.StringIO(),
            on_line=lambda i, line: lines.append(f"[worker {i}] {line}"),
        )
        records = [_read_record(Path(folder), i) for i in range(replicas)]
    written = [r for r in records if r is not None]
    if not written:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(
            f"compare_replicas(workers=True): none of the {replicas} workers wrote its record "
            f"({result}). Their last lines:\n{tail}"
        )
    run_many, facts, notes = _merge_records(records, replicas, result.returncode, lines)
    report = judge(
        run_one,
        run_many,
        names=names,
        trainable=trainable,
        facts=facts,
        replicas=replicas,
        steps=steps,
        rtol=rtol,
        atol=atol,
        custom=train_step is not None,
    )
    return dataclasses.replace(
        report,
        notes=report.notes + tuple(notes),
        seconds=time.perf_counter() - started,
        train_seconds=(run_one.seconds, run_many.seconds),
        devices=tuple(f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in range(replicas)),
        workers=replicas,
    )


@dataclass
class _Record:
    """What one worker wrote: its Run (with its own share of each batch) and its model facts."""

    run: Run
    local_batches: list[Arrays]
    facts: ModelFacts


def _read_record(folder: Path, index: int) -> _Record | None:
    meta_path, arrays_path = folder / f"worker{index}.json", folder / f"worker{index}.npz"
    if not (meta_path.is_file() and arrays_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    with np.load(arrays_path) as arrays:
        weights = [
            [arrays[f"w{k}_{j}"] for j in range(meta["variables"])]
            for k in range(len(meta["losses"]) + 1)
        ]
        batches = [
            [arrays[f"b{k}_{c}"] for c in range(meta["components"][k])]
            for k in range(len(meta["components"]))
        ]
    run = Run(list(meta["losses"]), weights, [], [], [], meta["seconds"], meta["error"])
    return _Record(run, batches, ModelFacts(**{**meta["facts"], **_tuples(meta["facts"])}))


def _tuples(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) for k, v in facts.items() if isinstance(v, list)}


def _merge_records(
    records: list[_Record | None], n: int, returncode: int, lines: list[str]
) -> tuple[Run, ModelFacts, list[str]]:
    """The N-replica Run from the workers' records: the first worker's losses and variables,
    each step's global batch from every worker's share in worker order."""
    notes: list[str] = []
    written = [r for r in records if r is not None]
    first = written[0]
    run = Run(list(first.run.losses), list(first.run.weights), [], [], [], first.run.seconds)
    run.error = next((r.run.error for r in written if r.run.error), None)
    if len(written) < n and run.error is None:
        tail = " | ".join(lines[-3:])
        run.error = f"worker(s) {[i for i, r in enumerate(records) if r is None]} wrote nothing "
        run.error += f"(launch exit code {returncode}): {tail}"[:400]
    steps = min(len(r.local_batches) for r in written) if len(written) == n else 0
    for k in range(steps):
        shares = [r.local_batches[k] for r in written]
        parts = len(shares[0])
        run.batches.append(
            [sorted_rows(np.concatenate([s[c] for s in shares], axis=0)) for c in range(parts)]
        )
        run.duplicated.append(
            all(
                len(s) == parts and all(np.array_equal(s[c], shares[0][c]) for c in range(parts))
                for s in shares[1:]
            )
        )
        run.undistributed.append(False)  # one replica a worker: every value is "local"
    for i, r in enumerate(written[1:], 1):
        last = min(len(r.run.weights), len(first.run.weights)) - 1
        if last > 0 and any(
            not np.array_equal(a, b)
            for a, b in zip(r.run.weights[last], first.run.weights[last], strict=True)
        ):
            notes.append(
                f"worker {i} holds other variable values than worker 0 after step {last - 1}: "
                "the workers' copies are not kept in sync (variables made outside "
                "strategy.scope()?)"
            )
            break
    return run, first.facts, notes


def replica_worker(spec_path: str) -> int:
    """One worker of ``compare_replicas(workers=True)``: import the user's functions, build
    the model under the multi-worker strategy, load the shared initial weights, train, and write
    the record (``worker<i>.json`` / ``.npz``). Returns 0, or 3 when the training failed (the
    launcher then stops the other workers instead of leaving them waiting in a collective)."""
    from tfplace._strategy import pick_strategy

    spec = json.loads(Path(spec_path).read_text())
    index = int(os.environ.get("TFPLACE_WORKER_INDEX", "0"))
    sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
    functions = {role: _import(*where) for role, where in spec["functions"].items()}
    strategy = pick_strategy(
        "multi_worker",
        communication_timeout=spec["timeout"],
        startup_timeout=spec["timeout"],
    )
    seed, steps = int(spec["seed"]), int(spec["steps"])
    model = build_model(strategy, functions["build"], seed)
    with np.load(Path(spec["folder"], "start.npz")) as arrays:
        start = [arrays[f"arr_{j}"] for j in range(len(arrays.files))]
    if [a.shape for a in start] != [a.shape for a in read_weights(model)]:
        raise ValueError("build() made other variables in the worker than in the parent process")
    write_weights(model, start)
    train_step = functions.get("train_step")
    recorded = record_input(strategy, functions["data"], steps, as_fit_sees_it=train_step is None)
    local = [[np.concatenate(parts, axis=0) for parts in step] for step in recorded]
    run = Run([], [read_weights(model)], [], [], [])
    train_steps(strategy, model, functions["data"], min(steps, len(local)), train_step, seed, run)
    arrays_out: dict[str, np.ndarray] = {}
    for k, values in enumerate(run.weights):
        arrays_out.update({f"w{k}_{j}": v for j, v in enumerate(values)})
    for k, components in enumerate(local):
        arrays_out.update({f"b{k}_{c}": v for c, v in enumerate(components)})
    folder = Path(spec["folder"])
    np.savez(folder / f"worker{index}.npz", **arrays_out)  # type: ignore[arg-type]
    meta = {
        "losses": run.losses,
        "variables": len(start),
        "components": [len(c) for c in local],
        "seconds": run.seconds,
        "error": run.error,
        "facts": asdict(model_facts(model)),
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
        spec.loader.exec_module(module)
    return getattr(module, attribute)
