"""Does the user's training give the same result on 1 and on N replicas?

:func:`compare_replicas` builds the user's model twice, under one replica
(``OneDeviceStrategy``) and under N (``MirroredStrategy`` over N devices, by default N
virtual CPUs of this process), gives both the same initial weights, feeds both the user's own
input pipeline, trains ``steps`` steps with ``model.fit`` or with the user's own training step,
and compares the loss and every variable after every step. The answer is a frozen
:class:`ReplicaReport`: the verdict, where the two runs part (step, variable), the loss side by
side, and the likely causes, ranked, each with the evidence that points at it and its fix.

TensorFlow and Keras are reached through the seam (:mod:`tfplace._tf`); the comparison and the
ranking of causes (:func:`judge`) are plain Python and NumPy.

Several strategies in one process (tensorflow#61314): every strategy the check builds either
reduces through one device (``reduction="one_device"``, the default and tfplace's choice for CPU
replicas: no collective keys at all) or, with ``reduction="collective"``, gets collective keys
of its own (:func:`tfplace._tf.fresh_collective_keys`), so checks can run again and again, with
2 and with 4 replicas, in one process.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tfplace import _tf
from tfplace._configure import configure_cpus
from tfplace._decide.strategy import plan
from tfplace._strategy import build_strategy
from tfplace.errors import AlreadyInitializedError

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "Cause",
    "ModelFacts",
    "ReplicaReport",
    "StepRow",
    "compare_replicas",
    "judge",
]

#: Default tolerances. Measured on the fixed examples: 1 vs 2 and 1 vs 4 replicas differ by at
#: most ~1e-6 relative after 5 SGD steps (float32 sums in another order); the broken ones by
#: 1e-2 and more. ``rtol=1e-4, atol=1e-5`` sits between with a wide margin on both sides.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5

Reduction = Literal["one_device", "collective"]
Arrays = list[np.ndarray]
TrainStep = Callable[[Any, Any, Any], Any]


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class ModelFacts:
    """What the model itself says about its replica-sensitive parts."""

    unsynced_batchnorm: tuple[str, ...]
    random_layers: tuple[str, ...]
    dtype_policy: str
    jit_compile: bool
    optimizer: str
    loss_scaling: bool


@dataclass(frozen=True)
class Cause:
    """One likely cause: its key in the catalogue (``a`` ... ``h``, ``x``), what it is, the
    evidence seen here, the fix, and a score (0-1) that ranks the causes."""

    key: str
    title: str
    evidence: str
    fix: str
    score: float


@dataclass(frozen=True)
class StepRow:
    """One step side by side: the loss on 1 and on N replicas, the variable that differs most
    after the step and its gap in units of the tolerance (> 1: outside it), and whether the
    global batch of the step held the same examples."""

    step: int
    loss_one: float
    loss_many: float
    worst_variable: str
    worst_gap: float
    same_batch: bool


@dataclass(frozen=True)
class ReplicaReport:
    """What :func:`compare_replicas` found.

    Attributes:
        same: 1 and N replicas agree within the tolerance for every step and variable, and
            every step's global batch holds the same examples on both.
        replicas: N.
        steps: the steps asked for.
        rtol / atol: the tolerance (``|a - b| <= atol + rtol * |b|``).
        mode: ``"model.fit"`` or ``"custom train_step"``.
        first_step / first_variable: where the runs part first (None when they agree).
        differing_variables: every variable outside the tolerance at that step.
        rows: per step, the losses and the worst variable (:class:`StepRow`).
        causes: likely causes, most likely first (:class:`Cause`).
        facts: what the model says (BatchNormalization, random layers, dtype policy, XLA).
        notes: other remarks (a failed run, an input that ran out).
        seconds: the whole check; train_seconds: the two trainings (1 replica, N replicas).
        devices: the N devices; the one-replica run used the first (with workers, /CPU:0 of
            the calling process).
        workers: how many local worker processes ran the N replicas (0: one process).
    """

    same: bool
    replicas: int
    steps: int
    rtol: float
    atol: float
    mode: str
    first_step: int | None
    first_variable: str | None
    differing_variables: tuple[str, ...]
    rows: tuple[StepRow, ...]
    causes: tuple[Cause, ...]
    facts: ModelFacts
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    train_seconds: tuple[float, float] = (0.0, 0.0)
    devices: tuple[str, ...] = field(default=())
    workers: int = 0

    @property
    def losses_one(self) -> tuple[float, ...]:
        """The loss of every step on one replica."""
        return tuple(r.loss_one for r in self.rows)

    @property
    def losses_many(self) -> tuple[float, ...]:
        """The loss of every step on N replicas."""
        return tuple(r.loss_many for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (with ``losses_one`` / ``losses_many``)."""
        out = asdict(self)
        out["losses_one"] = list(self.losses_one)
        out["losses_many"] = list(self.losses_many)
        return out

    def __str__(self) -> str:
        n = self.replicas
        tol = f"rtol={self.rtol:g}, atol={self.atol:g}"
        if self.workers:
            tol = f"{self.workers} local workers, {tol}"
        if self.same:
            head = f"SAME: 1 and {n} replicas agree for {self.steps} steps ({self.mode}, {tol})"
        else:
            where = f"at step {self.first_step}"
            if self.first_variable:
                where += f", first in variable {self.first_variable}"
            head = f"DIFFERENT: 1 and {n} replicas part {where} ({self.mode}, {tol})"
        lines = [head, ""]
        lines.append(
            f"{'step':>4}  {'loss 1 replica':>15}  {f'loss {n} replicas':>15}  "
            f"{'batch':>5}  worst variable (gap/tolerance)"
        )
        for r in self.rows:
            lines.append(
                f"{r.step:>4}  {r.loss_one:>15.7g}  {r.loss_many:>15.7g}  "
                f"{'same' if r.same_batch else 'DIFF':>5}  {r.worst_variable} ({r.worst_gap:.3g})"
            )
        if self.causes:
            lines += ["", "likely causes, most likely first:"]
            for i, c in enumerate(self.causes, 1):
                lines += [
                    f"  {i}. [{c.key}] {c.title}",
                    f"     seen: {c.evidence}",
                    f"     fix:  {c.fix}",
                ]
        if self.notes:
            lines += ["", *(f"note: {note}" for note in self.notes)]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the check


def compare_replicas(
    build: Callable[[], Any],
    data: Callable[[Any], Any],
    *,
    replicas: int = 2,
    steps: int = 5,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    train_step: TrainStep | None = None,
    devices: Sequence[str] | None = None,
    reduction: Reduction = "one_device",
    seed: int = 0,
    workers: bool = False,
) -> ReplicaReport:
    """Train the user's model on 1 and on ``replicas`` replicas and compare, step by step.

    Args:
        build: makes and compiles the Keras model (called once per strategy, inside its
            ``scope()``); the model must be built (start it with a ``keras.Input``).
        data: ``data(strategy)`` returns the input exactly as the user's training consumes it
            under that strategy: for ``model.fit`` a ``tf.data.Dataset`` of global batches or
            a distributed dataset; for a custom step whatever the loop iterates (usually
            ``strategy.experimental_distribute_dataset(...)``). It is called twice per
            strategy and must give the same batches each time (seed any shuffle).
        replicas: N, the replica count compared with one (>= 2).
        steps: training steps compared.
        rtol / atol: two values agree when ``|a - b| <= atol + rtol * |b|`` (NumPy's rule),
            for the loss and for every variable after every step.
        train_step: None for ``model.fit``; else ``train_step(strategy, model, batch)``, one
            step of the user's loop: it calls ``strategy.run`` itself, applies the gradients
            with ``model.optimizer`` and returns the step's loss (a scalar already reduced
            over replicas, or a per-replica value, which is summed).
        devices: the N devices (default: virtual CPUs ``/CPU:0`` ..., split here when the
            runtime has not started); the one-replica run uses ``devices[0]``.
        reduction: ``"one_device"`` (default) reduces through one device, so strategies can
            be built again and again in one process (tensorflow#61314); ``"collective"`` uses
            collective all-reduce (TensorFlow's default), in keys of its own.
        seed: Keras's global random seed, set before each build and each run.
        workers: run the N replicas as N local worker processes (one replica each, a
            ``MultiWorkerMirroredStrategy`` from :func:`tfplace.pick_strategy` in each, started
            by tfplace's launcher) instead of N devices of this process; the one-replica run
            stays here, on ``/CPU:0``. Each worker imports ``build``, ``data`` and
            ``train_step`` again, so they must be top-level names of a module file (a lambda,
            a nested function or a ``python -c`` program cannot be found there); the workers
            see no GPU. ``devices`` and ``reduction`` do not apply.

    Returns:
        A :class:`ReplicaReport`: ``str()`` reads as a report, ``to_dict()`` gives JSON data.

    Raises:
        AlreadyInitializedError: the runtime started with fewer than N CPU devices.
        ValueError: bad arguments, or the two builds made different variables; with
            ``workers=True``, a function the workers cannot import.
        RuntimeError: ``workers=True`` and no worker wrote its record (the launch output's
            last lines say why).

    Example:
        Trains on 2 CPU devices of this machine (needs the runtime's CPU split; skipped here):

        >>> report = tfplace.compare_replicas(build, data, replicas=2)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
        SAME: 1 and 2 replicas agree for 5 steps (model.fit, rtol=0.0001, atol=1e-05)
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 2:
        raise ValueError(
            f"replicas must be an int >= 2 (1 is compared with it), found {replicas!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, found {steps!r}")
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be >= 0, found rtol={rtol!r}, atol={atol!r}")
    if reduction not in ("one_device", "collective"):
        raise ValueError(f"reduction must be 'one_device' or 'collective', found {reduction!r}")
    if devices is not None and len(devices) != replicas:
        raise ValueError(
            f"devices names {len(devices)} devices for replicas={replicas}: give one per replica"
        )
    if workers:
        if devices is not None:
            raise ValueError(
                "devices= does not apply with workers=True: each worker runs one replica on its "
                "own CPU; leave devices out"
            )
        return _compare_on_workers(
            build, data, train_step, replicas=replicas, steps=steps, rtol=rtol, atol=atol, seed=seed
        )
    started = time.perf_counter()
    names_devices = _ensure_devices(replicas, devices)
    one, many = _fresh_strategies(names_devices, reduction)

    policy = _tf.keras_policy()
    try:  # build() may set a global dtype policy: both builds see it, the caller gets theirs
        model_one = _build(one, build, seed)
        model_many = _build(many, build, seed)
    finally:
        _tf.set_keras_policy(policy)
    names = [_variable_name(v) for v in model_one.weights]
    start = _read(model_one)
    if [a.shape for a in start] != [a.shape for a in _read(model_many)]:
        raise ValueError(
            "build() made different variables under the two strategies: "
            f"{names} vs {[_variable_name(v) for v in model_many.weights]}"
        )
    _write(model_many, start)
    trainable_ids = {id(v) for v in model_one.trainable_weights}
    trainable = [id(v) in trainable_ids for v in model_one.weights]
    facts = model_facts(model_many)

    run_one = _train(one, model_one, data, steps, train_step, seed)
    run_many = _train(many, model_many, data, steps, train_step, seed)
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
        seconds=time.perf_counter() - started,
        train_seconds=(run_one.seconds, run_many.seconds),
        devices=tuple(names_devices),
    )


def _ensure_devices(replicas: int, devices: Sequence[str] | None) -> list[str]:
    """The N devices to replicate on; splits the CPU into N virtual devices if still possible."""
    if devices is not None:
        return list(devices)
    try:
        current = configure_cpus(threads=None, dry_run=True).virtual_devices or 1
        if current < replicas:  # never shrink a larger split the program asked for
            configure_cpus(threads=None, virtual_devices=replicas)
    except AlreadyInitializedError:
        pass  # the runtime already runs: enough if it has N CPU devices (checked below)
    have = len(_tf.logical_device_names("CPU"))
    if have < replicas:
        raise AlreadyInitializedError(
            f"compare_replicas(replicas={replicas}) needs {replicas} CPU devices, but "
            f"TensorFlow's runtime already started with {have}, and the CPU can only be split "
            "before it starts. Fix: call "
            f"tfplace.configure_cpus(virtual_devices={replicas}) (or more) at the top of the "
            "program or in conftest.py, before anything creates a tensor; or pass "
            "devices=[...] naming devices that exist (e.g. GPUs)."
        )
    return [f"/CPU:{i}" for i in range(replicas)]


def _fresh_strategies(devices: list[str], reduction: Reduction) -> tuple[Any, Any]:
    """New one-replica and N-replica strategies for this check alone.

    Never ``pick_strategy``'s: it returns the strategy built first for the same request, and a
    strategy keeps state from the datasets made with it. TensorFlow's ``MirroredStrategy``
    rewrites its input workers for good the first time a dataset is distributed with
    ``InputReplicationMode.PER_REPLICA`` (one pipeline per replica); every later
    ``distribute_datasets_from_function`` without options then makes N pipelines instead of
    one, so a later check in the same process trained other batches than its input asked for
    (and reported two different trainings as the same).
    """
    one = build_strategy(plan("one_device", devices=[devices[0]]))
    if reduction == "one_device":
        many = build_strategy(plan("mirrored", devices=devices, cross_device_ops="reduce_to_one"))
    else:
        many = _tf.collective_mirrored_strategy(devices)
    return one, many


def _build(strategy: Any, build: Callable[[], Any], seed: int) -> Any:
    """``build()`` under the strategy, seeded, with Keras's name counters reset first."""
    _tf.keras_random_seed(seed)
    _tf.fresh_keras_names()
    with strategy.scope():
        model = build()
        if not getattr(model, "weights", None):
            raise ValueError(
                "build() returned a model without weights: start it with a keras.Input so "
                "that it is built when it is made"
            )
    return model


def _variable_name(variable: Any) -> str:
    path = getattr(variable, "path", None)  # Keras 3: "sequential/dense/kernel"
    return str(path if path else variable.name)


def _read(model: Any) -> Arrays:
    return [np.array(v.numpy(), dtype=np.float64) for v in model.weights]


def _write(model: Any, values: Arrays) -> None:
    for variable, value in zip(model.weights, values, strict=True):
        dtype = variable.dtype
        variable.assign(value.astype(np.dtype(str(getattr(dtype, "name", dtype)))))


def model_facts(model: Any) -> ModelFacts:
    """What ``model`` says about its replica-sensitive parts (layers, policy, XLA)."""
    kinds = _tf.layer_kinds(model)
    policy = getattr(model, "dtype_policy", None)
    optimizer = getattr(model, "optimizer", None)
    optimizer_name = type(optimizer).__name__ if optimizer is not None else ""
    return ModelFacts(
        unsynced_batchnorm=tuple(n for n, k in kinds if k == "batchnorm"),
        random_layers=tuple(n for n, k in kinds if k == "random"),
        dtype_policy=str(getattr(policy, "name", policy)) if policy is not None else "float32",
        jit_compile=getattr(model, "jit_compile", False) is True,
        optimizer=optimizer_name,
        loss_scaling="LossScale" in optimizer_name,
    )


@dataclass
class Run:
    """What one training recorded: the loss per step, every variable before and after every
    step, each step's global batch, and how the input reached the replicas."""

    losses: list[float]
    weights: list[Arrays]  # [0] before training, [k + 1] after step k
    batches: list[Arrays]  # per step: each input component's global batch, rows sorted
    duplicated: list[bool]  # per step: every replica got the very same examples
    undistributed: list[bool]  # per step: a plain (not per-replica) value reached the step
    seconds: float = 0.0
    error: str | None = None  # the training failed: its exception, in one line


def _record_input(
    strategy: Any, data: Callable[[Any], Any], steps: int, *, as_fit_sees_it: bool = False
) -> list[list[list[np.ndarray]]]:
    """Per step (at most ``steps``), per input component, the arrays of this process's
    replicas, as ``data(strategy)`` gives them. ``as_fit_sees_it``: a plain ``tf.data.Dataset``
    is read through ``strategy.experimental_distribute_dataset``, as ``model.fit`` reads it (so
    a worker records its own share, after auto-sharding)."""
    source = data(strategy)
    if as_fit_sees_it and _tf.is_dataset(source):
        source = strategy.experimental_distribute_dataset(source)
    out: list[list[list[np.ndarray]]] = []
    for seen, element in enumerate(source, 1):
        out.append(_tf.replica_arrays(strategy, element))
        if seen == steps:
            break
    return out


def _train(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
) -> Run:
    n = int(strategy.num_replicas_in_sync)
    run = Run([], [_read(model)], [], [], [])
    for local in _record_input(strategy, data, steps):  # the input as the user's pipeline makes it
        run.batches.append([_sorted_rows(np.concatenate(parts, axis=0)) for parts in local])
        run.duplicated.append(
            n > 1
            and all(len(parts) == n for parts in local)
            and all(all(np.array_equal(p, parts[0]) for p in parts[1:]) for parts in local)
        )
        run.undistributed.append(n > 1 and all(len(parts) == 1 for parts in local))
    _steps(strategy, model, data, min(steps, len(run.batches)), train_step, seed, run)
    return run


def _steps(
    strategy: Any,
    model: Any,
    data: Callable[[Any], Any],
    steps: int,
    train_step: TrainStep | None,
    seed: int,
    run: Run,
) -> None:
    """Train ``steps`` steps, appending each step's loss and variables to ``run``; a failure is
    raised on one replica and recorded in ``run.error`` on several (a cause in itself)."""
    n = int(strategy.num_replicas_in_sync)
    _tf.keras_random_seed(seed)
    began = time.perf_counter()
    try:
        if train_step is None:

            def after_step(loss: float) -> None:
                run.losses.append(loss)
                run.weights.append(_read(model))

            _tf.fit_steps(model, data(strategy), steps, after_step)
        else:
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None and not getattr(optimizer, "built", True):
                with strategy.scope():  # its variables, made under the strategy
                    optimizer.build(model.trainable_variables)
            iterator = iter(data(strategy))
            for _ in range(steps):
                element = next(iterator)
                with strategy.scope():
                    loss = train_step(strategy, model, element)
                local = strategy.experimental_local_results(loss)
                run.losses.append(float(sum(float(np.asarray(v)) for v in local)))
                run.weights.append(_read(model))
    except Exception as err:  # re-raised for 1 replica; reported for N (a cause in itself)
        if n == 1:
            raise
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(("File ", "Detected at", "[["))]
        run.error = f"{type(err).__name__}: {' '.join(useful[-3:])[:400]}"
    run.seconds = time.perf_counter() - began


# ------------------------------------------------------------------------------ N local workers

#: Seconds the workers have to start and join, and a collective to wait for its peers, before
#: the launch fails instead of hanging (TensorFlow's start-up on a loaded 2-core machine takes
#: ~10 s).
WORKER_TIMEOUT = 180.0
_WORKER_MAIN = "; ".join(
    [
        "import sys",
        "from tfplace._replicas import replica_worker",
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


def _compare_on_workers(
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
        model_one = _build(one, build, seed)
    finally:
        _tf.set_keras_policy(policy)
    names = [_variable_name(v) for v in model_one.weights]
    start = _read(model_one)
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
        run_one = _train(one, model_one, data, steps, train_step, seed)
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
            [_sorted_rows(np.concatenate([s[c] for s in shares], axis=0)) for c in range(parts)]
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
    model = _build(strategy, functions["build"], seed)
    with np.load(Path(spec["folder"], "start.npz")) as arrays:
        start = [arrays[f"arr_{j}"] for j in range(len(arrays.files))]
    if [a.shape for a in start] != [a.shape for a in _read(model)]:
        raise ValueError("build() made other variables in the worker than in the parent process")
    _write(model, start)
    train_step = functions.get("train_step")
    recorded = _record_input(strategy, functions["data"], steps, as_fit_sees_it=train_step is None)
    local = [[np.concatenate(parts, axis=0) for parts in step] for step in recorded]
    run = Run([], [_read(model)], [], [], [])
    _steps(strategy, model, functions["data"], min(steps, len(local)), train_step, seed, run)
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


# ------------------------------------------------------------------------------ the judgement


def _sorted_rows(array: np.ndarray) -> np.ndarray:
    flat = (
        np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
        if array.ndim
        else (np.asarray(array, dtype=np.float64).reshape(1, 1))
    )
    if flat.shape[1] == 0:
        return flat
    order = np.lexsort(flat.T[::-1])
    return flat[order]


def _gap(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> float:
    """Largest |a-b| / (atol + rtol|b|): > 1 means outside the tolerance."""
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    denom = atol + rtol * np.abs(b)
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            denom > 0, diff / np.where(denom > 0, denom, 1.0), np.where(diff > 0, np.inf, 0.0)
        )
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    return math.inf if not np.all(np.isfinite(a)) and np.any(np.isfinite(b)) else worst


def _same_batch(a: Arrays | None, b: Arrays | None, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        x.shape == y.shape and _gap(x, y, 0.0, 0.0) <= 1.0 for x, y in zip(a, b, strict=True)
    )


def judge(
    one: Run,
    many: Run,
    *,
    names: list[str],
    trainable: list[bool],
    facts: ModelFacts,
    replicas: int,
    steps: int,
    rtol: float,
    atol: float,
    custom: bool,
) -> ReplicaReport:
    """Compare two recorded runs and rank the likely causes of any difference. Pure."""
    n = replicas
    rows: list[StepRow] = []
    first_step: int | None = None
    first_variable: str | None = None
    differing: tuple[str, ...] = ()
    for k in range(min(len(one.losses), len(many.losses))):
        gaps = [
            _gap(b, a, rtol, atol)
            for a, b in zip(one.weights[k + 1], many.weights[k + 1], strict=True)
        ]
        worst = int(np.argmax(gaps)) if gaps else 0
        batch_a = one.batches[k] if k < len(one.batches) else None
        batch_b = many.batches[k] if k < len(many.batches) else None
        rows.append(
            StepRow(
                k,
                one.losses[k],
                many.losses[k],
                names[worst] if names else "",
                gaps[worst] if gaps else 0.0,
                _same_batch(batch_a, batch_b, 0, 0),
            )
        )
        loss_gap = _gap(np.array([many.losses[k]]), np.array([one.losses[k]]), rtol, atol)
        if first_step is None and (loss_gap > 1.0 or (gaps and gaps[worst] > 1.0)):
            first_step = k
            if gaps and gaps[worst] > 1.0:
                first_variable = names[worst]
                differing = tuple(nm for nm, g in zip(names, gaps, strict=True) if g > 1.0)
    # other examples in a global batch: another training, even where the numbers agree (a
    # duplicated batch averages to the same loss and gradient as the batch it repeats)
    batch_step = next((r.step for r in rows if not r.same_batch), None)
    data_only = batch_step is not None and (first_step is None or batch_step < first_step)
    if data_only:
        first_step, first_variable, differing = batch_step, None, ()
    if many.error is not None and first_step is None:
        first_step = len(rows)
    same = first_step is None and len(rows) == min(steps, len(one.losses))
    evidence = _Evidence.collect(one, many, rows, trainable, n, first_step, rtol, atol)
    causes = _rank(evidence, facts, n, custom, same, first_variable, differing, many.error)
    notes: list[str] = []
    if many.error is not None:
        notes.append(f"training on {n} replicas failed at step {first_step}: {many.error}")
    if data_only and batch_step is not None:
        row = rows[batch_step]
        agree = row.worst_gap <= 1.0 and (
            _gap(np.array([row.loss_many]), np.array([row.loss_one]), rtol, atol) <= 1.0
        )
        notes.append(
            f"the global batch of step {batch_step} holds other examples on {n} replicas than "
            "on one: the runs train on different data"
            + (" (loss and weights agree at that step all the same)" if agree else "")
        )
    if len(rows) < steps and many.error is None:
        notes.append(f"only {len(rows)} of {steps} steps ran: the input ran out")
    if evidence.grad_ratio is not None and not same:
        notes.append(
            f"first update on {n} replicas is {evidence.grad_ratio:.3g}x the update "
            "on 1 replica (projected over all trainable weights)"
        )
    return ReplicaReport(
        same=same,
        replicas=n,
        steps=steps,
        rtol=rtol,
        atol=atol,
        mode="custom train_step" if custom else "model.fit",
        first_step=first_step,
        first_variable=first_variable,
        differing_variables=differing,
        rows=tuple(rows),
        causes=tuple(causes),
        facts=facts,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class _Evidence:
    batch_differs_at: int | None
    batch_sizes: tuple[int, int]
    duplicated: bool
    undistributed: bool
    loss0_ratio: float
    loss0_differs: bool
    grad_ratio: float | None
    skipped: bool
    small: bool

    @staticmethod
    def collect(
        one: Run,
        many: Run,
        rows: list[StepRow],
        trainable: list[bool],
        n: int,
        first_step: int | None,
        rtol: float,
        atol: float,
    ) -> _Evidence:
        batch_differs = next((r.step for r in rows if not r.same_batch), None)
        size_one = one.batches[0][0].shape[0] if one.batches and one.batches[0] else 0
        size_many = many.batches[0][0].shape[0] if many.batches and many.batches[0] else 0
        l1 = rows[0].loss_one if rows else math.nan
        ln = rows[0].loss_many if rows else math.nan
        ratio = ln / l1 if l1 not in (0.0,) and math.isfinite(l1) else math.nan
        loss0 = bool(rows) and _gap(np.array([ln]), np.array([l1]), rtol, atol) > 1.0
        grad_ratio = None
        skipped = False
        if first_step is not None and first_step + 1 < min(len(many.weights), len(one.weights)):
            k = first_step
            d1 = _flat_delta(one.weights[k], one.weights[k + 1], trainable)
            dn = _flat_delta(many.weights[k], many.weights[k + 1], trainable)
            norm1 = float(d1 @ d1)
            if norm1 > 0:
                grad_ratio = float(dn @ d1) / norm1
            skipped = (norm1 == 0.0) != (float(dn @ dn) == 0.0)
        worst = max((r.worst_gap for r in rows), default=0.0)
        loss_worst = max(
            (_gap(np.array([r.loss_many]), np.array([r.loss_one]), rtol, atol) for r in rows),
            default=0.0,
        )
        small = max(worst, loss_worst) < 1000.0  # within 1000x the tolerance: rounding-sized
        return _Evidence(
            batch_differs,
            (size_one, size_many),
            any(many.duplicated),
            any(many.undistributed),
            ratio,
            loss0,
            grad_ratio,
            skipped,
            small,
        )


def _flat_delta(before: Arrays, after: Arrays, trainable: list[bool]) -> np.ndarray:
    parts = [(b - a).ravel() for a, b, t in zip(before, after, trainable, strict=True) if t]
    return np.concatenate(parts) if parts else np.zeros(0)


def _near(value: float | None, target: float, rel: float = 0.05) -> bool:
    return value is not None and math.isfinite(value) and abs(value - target) <= rel * target


FIXES = {
    "a": "Give every replica (worker) different examples: with "
    "distribute_datasets_from_function shard by input_context (ds.shard(ctx.num_input_pipelines,"
    " ctx.input_pipeline_id)); pass strategy.run a distributed batch from "
    "strategy.experimental_distribute_dataset(...), never a plain tensor; across workers keep "
    "auto-sharding on (AutoShardPolicy.DATA or FILE).",
    "b": "Batch by the GLOBAL size in a dataset that tf.distribute splits "
    "(experimental_distribute_dataset, model.fit), but by "
    "input_context.get_per_replica_batch_size(GLOBAL) inside distribute_datasets_from_function.",
    "c": "Average the per-example loss over the GLOBAL batch: loss = "
    "tf.nn.compute_average_loss(per_example_loss, global_batch_size=GLOBAL) (and "
    "tf.nn.scale_regularization_loss for regularizers); never reduce_mean on a replica's batch.",
    "d": "Normalize over the global batch: keras.layers.BatchNormalization(synchronized=True) "
    "(tf_keras: SyncBatchNormalization); or accept that per-replica statistics differ and "
    "compare with a larger per-replica batch.",
    "e": "Random ops draw different numbers on N replicas. Check with randomness off (e.g. "
    "build(dropout=0.0)), or derive the randomness from the example (stateless ops seeded by an "
    "example id: tf.random.stateless_uniform(shape, seed=[id, step])), which gives the same "
    "numbers whatever replica holds the example.",
    "f": "float16 rounds differently on a smaller per-replica batch, and a dynamic loss scale "
    "may skip a step on one run only: compare under the float32 policy, or loosen the "
    "tolerance (rtol ~1e-2) for mixed precision; in a custom loop use "
    "optimizer.scale_loss(loss) with a LossScaleOptimizer.",
    "g": 'Under MirroredStrategy compile with jit_compile=False or "auto" (Keras 3 turns XLA '
    "off under tf.distribute by itself); an explicit jit_compile=True compiles one replica's "
    "step with variables that live on other devices, which fails (Keras 3 + TF 2.21) or, "
    "where it runs, fuses float math per replica shape (loosen rtol to ~1e-3).",
    "x": "The multi-replica run raised: read the error; code that runs on one device but not "
    "under MirroredStrategy usually creates variables outside strategy.scope() or calls "
    "numpy()/Python control flow on per-replica values.",
    "h": "Summation order differs with the replica count (float32 rounding): loosen rtol/atol "
    "if the gap stays within about 1e-4 relative and does not grow over the steps.",
}
TITLES = {
    "a": "unsharded or duplicated data: replicas read the same examples",
    "b": "per-replica batch size used as the global batch size",
    "c": "loss averaged over the replica's batch instead of the global batch",
    "d": "BatchNormalization statistics computed per replica",
    "e": "random ops (Dropout, tf.random) differ per replica",
    "f": "mixed precision / loss scaling",
    "g": "XLA (jit_compile) under MirroredStrategy",
    "h": "floating-point summation order",
    "x": "the multi-replica run fails",
}


class _Scores:
    """Causes found so far: each cause keeps its strongest evidence."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[float, str]] = {}

    def add(self, key: str, score: float, why: str) -> None:
        if key not in self.found or self.found[key][0] < score:
            self.found[key] = (score, why)


def _rank(
    ev: _Evidence,
    facts: ModelFacts,
    n: int,
    custom: bool,
    same: bool,
    first_variable: str | None,
    differing: tuple[str, ...],
    error: str | None,
) -> list[Cause]:
    """The likely causes, strongest first: from a failure, from an agreement that may not
    last, or from the evidence of where and how the runs part."""
    scores = _Scores()
    if error is not None:
        _failure_causes(scores, facts, n, error)
    elif same:
        _latent_causes(scores, facts)
    else:
        batches_same = ev.batch_differs_at is None and not ev.undistributed and not ev.duplicated
        _input_causes(scores, ev, n, custom)
        if batches_same and custom:
            _loss_scaling_causes(scores, ev, n)
        _layer_causes(scores, ev, facts, differing, batches_same)
        _numeric_causes(scores, ev, facts)
    return _causes(scores.found)


def _failure_causes(scores: _Scores, facts: ModelFacts, n: int, error: str) -> None:
    """Training on N replicas failed while one replica trains."""
    if facts.jit_compile:
        xla = any(w in error for w in ("XLA", "xla", "different device", "jit"))
        scores.add(
            "g",
            0.95 if xla else 0.7,
            f"training on {n} replicas failed with jit_compile=True: " + error[:160],
        )
    else:
        scores.add("x", 0.9, f"training on {n} replicas failed (1 replica trains): {error[:160]}")


def _latent_causes(scores: _Scores, facts: ModelFacts) -> None:
    """The runs agree; layers that could make them part with other batches are named."""
    if facts.unsynced_batchnorm:
        scores.add(
            "d",
            0.2,
            f"agree here, but layers {', '.join(facts.unsynced_batchnorm)} "
            "normalize per replica; they may part with other batches",
        )
    if facts.random_layers:
        scores.add(
            "e",
            0.2,
            f"agree here although random layers {', '.join(facts.random_layers)} "
            "are present (inactive, or rate 0?)",
        )


def _input_causes(scores: _Scores, ev: _Evidence, n: int, custom: bool) -> None:
    """Causes a and b: the N replicas did not see the one replica's global batches."""
    if ev.duplicated:
        scores.add("a", 0.97, f"on {n} replicas every replica received the very same examples")
    if ev.undistributed and custom:
        scores.add(
            "a",
            0.95,
            "the loop passed a plain (undistributed) batch to strategy.run, so every "
            "replica got the whole global batch",
        )
    if ev.batch_differs_at is None:
        return
    a, b = ev.batch_sizes
    if a != b:
        scores.add(
            "b",
            0.95,
            f"the global batch has {b} examples on {n} replicas but {a} on one (x{b / a:.3g})"
            if a
            else "the global batch size differs",
        )
    elif not ev.duplicated:
        scores.add(
            "a",
            0.8,
            f"the global batch of step {ev.batch_differs_at} holds other examples "
            f"on {n} replicas than on one (same size, different content)",
        )


def _loss_scaling_causes(scores: _Scores, ev: _Evidence, n: int) -> None:
    """Cause c: same batches in a custom step, yet the loss or update scales with N."""
    if ev.loss0_differs and (_near(ev.loss0_ratio, n) or _near(ev.loss0_ratio, 1 / n)):
        scores.add(
            "c",
            0.9,
            f"same batches and weights, yet the step-0 loss on {n} replicas is "
            f"{ev.loss0_ratio:.4g}x the one-replica loss (= the replica count)",
        )
    if _near(ev.grad_ratio, n) or _near(ev.grad_ratio, 1 / n, 0.05):
        scores.add(
            "c",
            0.92,
            f"same batches, and the first update is {ev.grad_ratio:.4g}x the "
            f"one-replica update: the gradient is scaled by the replica count {n}",
        )


def _layer_causes(
    scores: _Scores,
    ev: _Evidence,
    facts: ModelFacts,
    differing: tuple[str, ...],
    batches_same: bool,
) -> None:
    """Causes d and e: layers that compute per replica (statistics, random numbers)."""
    if facts.unsynced_batchnorm:
        stats = any("moving" in v for v in differing)
        score = 0.85 if (batches_same and ev.loss0_differs) or stats else 0.5
        where = (
            "the loss differs already at step 0, before any update"
            if ev.loss0_differs
            else "weights part"
        )
        scores.add(
            "d",
            score,
            f"{where}; layers {', '.join(facts.unsynced_batchnorm)} are "
            "BatchNormalization(synchronized=False)",
        )
    if facts.random_layers:
        score = 0.8 if ev.loss0_differs and batches_same else 0.5
        scores.add(
            "e",
            score,
            f"random layers {', '.join(facts.random_layers)}; "
            + (
                "the step-0 loss differs with identical batches and weights"
                if ev.loss0_differs
                else "weights part"
            ),
        )
    elif (
        batches_same
        and ev.loss0_differs
        and not facts.unsynced_batchnorm
        and "c" not in scores.found
    ):
        scores.add(
            "e",
            0.6,
            "identical batches and weights give another step-0 loss and the model "
            "has no BatchNormalization: something in the forward pass is random per replica "
            "(tf.random.*, a stateful RNG in the step)",
        )


def _numeric_causes(scores: _Scores, ev: _Evidence, facts: ModelFacts) -> None:
    """Causes f, g and h: precision, XLA, and plain rounding."""
    if facts.dtype_policy.startswith("mixed") or facts.loss_scaling:
        score = 0.85 if ev.skipped else (0.7 if ev.small else 0.4)
        scores.add(
            "f",
            score,
            f"dtype policy {facts.dtype_policy}"
            + (
                "; one run skipped an update the other applied (loss-scale overflow)"
                if ev.skipped
                else ""
            ),
        )
    if facts.jit_compile:
        scores.add("g", 0.6 if ev.small else 0.3, "the model is compiled with jit_compile=True")
    if ev.small:
        scores.add(
            "h",
            0.4 if scores.found else 0.8,
            "the gap is within 1000x the tolerance: rounding-sized",
        )
    if not scores.found:
        scores.add("h", 0.1, "no specific evidence; the runs part by more than rounding")


def _causes(found: dict[str, tuple[float, str]]) -> list[Cause]:
    ranked = sorted(found.items(), key=lambda item: -item[1][0])
    return [Cause(k, TITLES[k], why, FIXES[k], round(score, 2)) for k, (score, why) in ranked]
