"""Does the user's training give the same result on 1 and on N replicas?

:func:`compare_replicas` builds the user's model twice, under one replica
(``OneDeviceStrategy``) and under N (``MirroredStrategy`` over N devices, by default N
virtual CPUs of this process), gives both the same initial weights, feeds both the user's own
input pipeline, trains ``steps`` steps with ``model.fit`` or with the user's own training step,
and compares every variable, every update and every logged value after every step. The
one-replica model is dropped before the N-replica one is built, and both runs' variables go to
files, read back one variable at a time. The answer is a frozen :class:`ReplicaReport`: the
verdict, where the two runs part (step, variable), the logged values side by side, and the
likely causes, ranked, each with the evidence that points at it and its fix.

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
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from tfplace import _tf
from tfplace._configure import configure_cpus
from tfplace._decide.strategy import plan
from tfplace._facts.inventory import GPUInfo, inventory
from tfplace._strategy import build_strategy
from tfplace.errors import AlreadyInitializedError
from tfplace.replicas._judge import StepComparer, judge
from tfplace.replicas._records import Run
from tfplace.replicas._report import ReplicaReport
from tfplace.replicas._tolerance import Tolerance, default_tolerance
from tfplace.replicas._train import TrainStep, build_model, start_from, train, train_reference
from tfplace.replicas._workers import compare_on_workers

__all__ = ["compare_replicas"]

Reduction = Literal["one_device", "collective"]


def compare_replicas(
    build: Callable[[], Any],
    data: Callable[[Any], Any],
    *,
    replicas: int = 2,
    steps: int = 5,
    rtol: float | None = None,
    atol: float | None = None,
    update_rtol: float | None = None,
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
            strategy and must give the same batches each time (seed any shuffle; the check
            sets Keras's seed before each call). A global batch sized from the strategy it is
            given (``tfplace.global_batch_size(32, strategy)``) is fine: the check sees it
            grow with the replica count and runs the one replica at the N-replica batch.
        replicas: N, the replica count compared with one (>= 2).
        steps: training steps compared.
        rtol / atol: two values agree when ``|a - b| <= atol + rtol * |b|`` (NumPy's rule),
            for every variable after every step and for the logged values; None: the default
            for the model's dtype policy and the devices (``1e-4``/``1e-5`` for float32 on
            CPUs, looser for TF32 on GPUs of compute capability >= 8.0, float16 and
            bfloat16; the report states which).
        update_rtol: each step's update on N replicas must be within ``update_rtol`` of the
            one-replica update, relative to its size (``||dN - d1|| <= update_rtol *
            ||d1||``, plus the variables' own rounding); None: ``min(0.2, max(0.01, 100 *
            rtol))``. A step N times too large parts at any learning rate.
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
        SAME: 1 and 2 replicas agree for 5 steps (model.fit, rtol=0.0001, atol=1e-05, ...)
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 2:
        raise ValueError(
            f"replicas must be an int >= 2 (1 is compared with it), found {replicas!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, found {steps!r}")
    given = {"rtol": rtol, "atol": atol, "update_rtol": update_rtol}
    bad = {k: v for k, v in given.items() if v is not None and not v >= 0}
    if bad:
        raise ValueError(f"tolerances must be >= 0 (or None for the default), found {bad}")
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
        return compare_on_workers(
            build,
            data,
            train_step,
            replicas=replicas,
            steps=steps,
            tol=(rtol, atol, update_rtol),
            seed=seed,
        )
    started = time.perf_counter()
    names_devices = _ensure_devices(replicas, devices)
    one, many = _fresh_strategies(names_devices, reduction)
    with tempfile.TemporaryDirectory(prefix="tfplace-replicas-") as folder:
        ref = train_reference(
            one,
            build,
            data,
            train_step,
            steps=steps,
            seed=seed,
            replicas=replicas,
            path=Path(folder, "one.bin"),
        )
        policy = _tf.keras_policy()
        try:
            model_many = build_model(many, build, seed)
        finally:
            _tf.set_keras_policy(policy)
        start_from(model_many, ref)
        tol = _tolerance(ref.facts.dtype_policy, names_devices, rtol, atol, update_rtol)
        comparer = StepComparer(
            ref.run.snapshots, names=ref.names, trainable=ref.trainable, tol=tol
        )
        run_many = Run(sink=comparer)  # compared step by step: no file for N replicas
        train(many, model_many, data, steps, train_step, seed, run_many)
        del model_many
    report = judge(
        ref.run,
        run_many,
        comparer.steps,
        facts=ref.facts,
        replicas=replicas,
        steps=steps,
        tol=tol,
        custom=train_step is not None,
        hints=ref.hints,
    )
    return dataclasses.replace(
        report,
        seconds=time.perf_counter() - started,
        train_seconds=(ref.run.seconds, run_many.seconds),
        devices=tuple(names_devices),
    )


def _tolerance(
    policy: str,
    devices: Sequence[str],
    rtol: float | None,
    atol: float | None,
    update_rtol: float | None,
) -> Tolerance:
    """The tolerance for these devices: the GPUs' compute capability from the inventory, and
    whether float32 runs in TF32 there (TensorFlow's setting, and NVIDIA_TF32_OVERRIDE)."""
    gpus: tuple[GPUInfo, ...] = ()
    tf32: bool | None = None
    if any("GPU" in d.upper() for d in devices):
        inv = inventory()
        gpus = inv.visible_gpus
        tf32 = dict(inv.env).get("NVIDIA_TF32_OVERRIDE") != "0" and _tf.tf32_enabled()
    return default_tolerance(
        policy, devices, gpus, tf32=tf32, rtol=rtol, atol=atol, update_rtol=update_rtol
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
