"""The causes the replica check can name: for each, its title, the evidence that points at it
and its fix. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tfplace.replicas._report import Cause, ModelFacts


@dataclass(frozen=True)
class Evidence:
    """What the judge saw, as the causes read it."""

    batch_differs_at: int | None
    batch_sizes: tuple[int, int]
    duplicated: bool
    undistributed: bool
    loss0_ratio: float
    loss0_differs: bool
    grad_ratio: float | None
    skipped: bool
    small: bool


def near(value: float | None, target: float, rel: float = 0.05) -> bool:
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


def rank(
    ev: Evidence,
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


def _input_causes(scores: _Scores, ev: Evidence, n: int, custom: bool) -> None:
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


def _loss_scaling_causes(scores: _Scores, ev: Evidence, n: int) -> None:
    """Cause c: same batches in a custom step, yet the loss or update scales with N."""
    if ev.loss0_differs and (near(ev.loss0_ratio, n) or near(ev.loss0_ratio, 1 / n)):
        scores.add(
            "c",
            0.9,
            f"same batches and weights, yet the step-0 loss on {n} replicas is "
            f"{ev.loss0_ratio:.4g}x the one-replica loss (= the replica count)",
        )
    if near(ev.grad_ratio, n) or near(ev.grad_ratio, 1 / n, 0.05):
        scores.add(
            "c",
            0.92,
            f"same batches, and the first update is {ev.grad_ratio:.4g}x the "
            f"one-replica update: the gradient is scaled by the replica count {n}",
        )


def _layer_causes(
    scores: _Scores,
    ev: Evidence,
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


def _numeric_causes(scores: _Scores, ev: Evidence, facts: ModelFacts) -> None:
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
