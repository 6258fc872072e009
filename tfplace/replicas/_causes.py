"""The causes the replica check can name. Pure.

Each cause is one block: its key and title, the function that reads the evidence and says how
strongly (0-1) and why it points at this cause, and its fix. A cause is named only on evidence
that fits its title; where none fits, the report says "no cause found" and what was ruled out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tfplace.replicas._evidence import Context, Evidence, near
from tfplace.replicas._report import Cause, ModelFacts

__all__ = ["CAUSES", "CauseKind", "rank"]


Found = list[tuple[float, str]]  # (score, why) for each piece of evidence that fits


@dataclass(frozen=True)
class CauseKind:
    """One cause: key, title, its finder over the evidence, and its fix."""

    key: str
    title: str
    find: Callable[[Context], Found]
    fix: str


# ----------------------------------------------------------------------- (s) unseeded shuffle


def _find_s(cx: Context) -> Found:
    if not cx.ev.reread:
        return []
    return [
        (
            0.96,
            "data(strategy) gave other batches when the check read it twice on one replica "
            "with the same seed before each read: a shuffle without a seed of its own (a "
            "dataset made once and read again draws a new order each time), so the two runs "
            "train on other batches",
        )
    ]


SHUFFLE = CauseKind(
    "s",
    "unseeded shuffle: the input changes from one read to the next",
    _find_s,
    "Seed the shuffle (ds.shuffle(buffer, seed=1)) and make the dataset inside data() (or "
    "shuffle with reshuffle_each_iteration=False), so that every read gives the same batches.",
)


# ----------------------------------------------------------------- (a) duplicated examples


def _find_a(cx: Context) -> Found:
    ev, n = cx.ev, cx.n
    found: Found = []
    if ev.duplicated:
        found.append((0.97, f"on {n} replicas every replica received the very same examples"))
    if ev.undistributed and cx.custom:
        found.append(
            (
                0.95,
                "the loop passed a plain (undistributed) batch to strategy.run, so every "
                "replica got the whole global batch",
            )
        )
    same_size = ev.batch_sizes[0] == ev.batch_sizes[1]
    if ev.batch_differs_at is not None and same_size and not ev.duplicated and not ev.reread:
        found.append(
            (
                0.8,
                f"the global batch of step {ev.batch_differs_at} holds other examples on {n} "
                "replicas than on one (same size, different content)",
            )
        )
    return found


DUPLICATED = CauseKind(
    "a",
    "unsharded or duplicated data: replicas read the same examples",
    _find_a,
    "Give every replica (worker) different examples: with distribute_datasets_from_function "
    "shard by input_context (ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)); pass "
    "strategy.run a distributed batch from strategy.experimental_distribute_dataset(...), never "
    "a plain tensor; across workers keep auto-sharding on (AutoShardPolicy.DATA or FILE).",
)


# -------------------------------------------------------------------- (b) batch size


def _find_b(cx: Context) -> Found:
    ev, n = cx.ev, cx.n
    a, b = ev.batch_sizes
    if ev.batch_differs_at is None or a == b:
        return []
    if not a:
        return [(0.95, "the global batch size differs")]
    why = f"the global batch has {b} examples on {n} replicas but {a} on one (x{b / a:.3g})"
    if b == n * a:
        why += (
            "; data() did not size it from the strategy it was given (the check tells it the "
            f"{n}-replica count): a per-replica pipeline batched by the global size, or a "
            "batch scaled from another strategy"
        )
    return [(0.95, why)]


BATCH = CauseKind(
    "b",
    "per-replica batch size used as the global batch size",
    _find_b,
    "Batch by the GLOBAL size in a dataset that tf.distribute splits "
    "(experimental_distribute_dataset, model.fit), but by "
    "input_context.get_per_replica_batch_size(GLOBAL) inside distribute_datasets_from_function. "
    "To scale the batch with the replicas, size it from the strategy data() is given "
    "(tfplace.global_batch_size(32, strategy)): the check then compares both runs at one "
    "global batch.",
)


# ------------------------------------------------------------------ (c) loss average


def _find_c(cx: Context) -> Found:
    ev, n = cx.ev, cx.n
    found: Found = []
    if not ev.batches_same:
        return found
    if ev.loss0_differs and (near(ev.loss0_ratio, n) or near(ev.loss0_ratio, 1 / n)):
        found.append(
            (
                0.9,
                f"same batches and weights, yet the step-0 loss on {n} replicas is "
                f"{ev.loss0_ratio:.4g}x the one-replica loss (= the replica count)",
            )
        )
    aligned = ev.update_cosine is not None and ev.update_cosine >= 0.99
    if aligned and (near(ev.grad_ratio, n) or near(ev.grad_ratio, 1 / n)):
        found.append(
            (
                0.93,
                f"same batches, and the update of step {ev.first_step} is "
                f"{ev.grad_ratio:.4g}x the one-replica update, in the same direction: the "
                f"gradient is scaled by the replica count {n}",
            )
        )
    return found


LOSS_AVERAGE = CauseKind(
    "c",
    "loss averaged over the replica's batch instead of the global batch",
    _find_c,
    "Average the per-example loss over the GLOBAL batch: loss = "
    "tf.nn.compute_average_loss(per_example_loss, global_batch_size=GLOBAL) (and "
    "tf.nn.scale_regularization_loss for regularizers); never reduce_mean on a replica's batch.",
)


# --------------------------------------------------------------------- (d) BatchNorm


def _find_d(cx: Context) -> Found:
    ev, facts = cx.ev, cx.facts
    if not facts.unsynced_batchnorm:
        return []
    layers = ", ".join(facts.unsynced_batchnorm)
    first = ev.batches_same and (ev.loss0_differs or ev.step0_update_differs)
    where = (
        "the loss differs already at step 0, before any update"
        if ev.loss0_differs
        else ("the first update differs" if ev.step0_update_differs else "weights part")
    )
    return [
        (
            0.85 if first else 0.5,
            f"{where}; layers {layers} are BatchNormalization(synchronized=False)",
        )
    ]


BATCHNORM = CauseKind(
    "d",
    "BatchNormalization statistics computed per replica",
    _find_d,
    "Normalize over the global batch: keras.layers.BatchNormalization(synchronized=True) "
    "(tf_keras: SyncBatchNormalization); or accept that per-replica statistics differ and "
    "compare with a larger per-replica batch.",
)


# ----------------------------------------------------------------- (e) random draws


def _find_e(cx: Context) -> Found:
    ev, facts = cx.ev, cx.facts
    found: Found = []
    first = ev.batches_same and (ev.loss0_differs or ev.step0_update_differs)
    if facts.random_calls:
        calls = ", ".join(facts.random_calls)
        found.append(
            (
                0.9 if first else 0.6,
                f"the training step draws random numbers ({calls}): each replica draws its own "
                "for its share of the batch, other numbers than one replica draws for the "
                "whole batch"
                + ("; the first update differs with the same weights and batch" if first else ""),
            )
        )
    if facts.random_layers:
        found.append(
            (
                0.8 if first else 0.5,
                f"random layers {', '.join(facts.random_layers)}; "
                + (
                    "the first step differs with identical batches and weights"
                    if first
                    else "weights part"
                ),
            )
        )
    plain = not facts.unsynced_batchnorm and not facts.random_layers and not facts.random_calls
    scaled = near(ev.grad_ratio, cx.n) or near(ev.grad_ratio, 1 / cx.n)
    moved = ev.step0_update_differs and not ev.small
    if plain and ev.batches_same and ev.first_step == 0 and not scaled:  # noqa: SIM102
        if ev.loss0_differs or moved:
            what = (
                "another step-0 loss"
                if ev.loss0_differs
                else f"another first update (cosine {ev.update_cosine or 0:.4g})"
            )
            found.append(
                (
                    0.6,
                    f"identical batches and weights give {what}, and the model has no "
                    "BatchNormalization or random layer: something in the step draws numbers "
                    "per replica (tf.random.*, keras.random.*, a stateful generator)",
                )
            )
    return found


RANDOM = CauseKind(
    "e",
    "random draws (Dropout, tf.random, keras.random) differ per replica",
    _find_e,
    "Random ops draw different numbers on N replicas. Check with randomness off (e.g. "
    "build(dropout=0.0)), or derive the randomness from the example (stateless ops seeded by an "
    "example id: tf.random.stateless_uniform(shape, seed=[id, step])), which gives the same "
    "numbers whatever replica holds the example.",
)


# ------------------------------------------------------------- (f) mixed precision


def _find_f(cx: Context) -> Found:
    ev, facts = cx.ev, cx.facts
    if not (facts.dtype_policy.startswith("mixed") or facts.loss_scaling):
        return []
    score = 0.85 if ev.skipped else (0.7 if ev.small else 0.4)
    why = f"dtype policy {facts.dtype_policy}"
    if ev.skipped:
        why += "; one run skipped an update the other applied (loss-scale overflow)"
    return [(score, why)]


PRECISION = CauseKind(
    "f",
    "mixed precision / loss scaling",
    _find_f,
    "float16 rounds differently on a smaller per-replica batch, and a dynamic loss scale "
    "may skip a step on one run only: leave rtol/atol at their default (the check loosens them "
    "for float16 and bfloat16), or compare under float32; in a custom loop use "
    "optimizer.scale_loss(loss) with a LossScaleOptimizer.",
)


# ------------------------------------------------------------------------- (g) XLA


def _find_g(cx: Context) -> Found:
    if not cx.facts.jit_compile:
        return []
    return [(0.6 if cx.ev.small else 0.3, "the model is compiled with jit_compile=True")]


XLA = CauseKind(
    "g",
    "XLA (jit_compile) under MirroredStrategy",
    _find_g,
    'Under MirroredStrategy compile with jit_compile=False or "auto" (Keras 3 turns XLA '
    "off under tf.distribute by itself); an explicit jit_compile=True compiles one replica's "
    "step with variables that live on other devices, which fails (Keras 3 + TF 2.21) or, "
    "where it runs, fuses float math per replica shape (loosen rtol to ~1e-3).",
)


# ------------------------------------------------------------------ (h) rounding


def _find_h(cx: Context) -> Found:
    ev = cx.ev
    if not ev.small:
        return []
    return [
        (
            0.4 if cx.facts.dtype_policy.startswith("mixed") or cx.facts.jit_compile else 0.8,
            f"same batches, and the updates agree to {ev.update_relative:.2g} of their size in "
            f"the same direction (cosine {ev.update_cosine or 0:.6g}): rounding-sized",
        )
    ]


ROUNDING = CauseKind(
    "h",
    "floating-point summation order",
    _find_h,
    "Summation order differs with the replica count (float rounding): loosen rtol/atol (or "
    "update_rtol) if the gap stays small relative to the update and does not grow.",
)


# ------------------------------------------------------------- (n) NaN or inf


def _find_n(cx: Context) -> Found:
    ev, n = cx.ev, cx.n
    if not ev.nonfinite:
        return []
    where = {
        "one": "on 1 replica only",
        "many": f"on {n} replicas only",
        "both": f"on 1 and on {n} replicas",
    }[ev.nonfinite]
    why = f"NaN or inf {where} at step {ev.first_step}"
    if ev.nonfinite == "both":
        why += ": the training diverges whatever the replica count"
    return [(0.99, why)]


NONFINITE = CauseKind(
    "n",
    "NaN or inf in a run: nothing left to compare",
    _find_n,
    "Find where the values blow up: a learning rate too high for the data's scale, a log or "
    "division of zero, float16 without loss scaling; tf.debugging.enable_check_numerics() names "
    "the first op. On N replicas only: a gradient scaled by the replica count (c, b) diverges "
    "first.",
)


# -------------------------------------------------------------- (x) a failed run


FAILED = CauseKind(
    "x",
    "the multi-replica run fails",
    lambda cx: [],
    "The multi-replica run raised: read the error; code that runs on one device but not "
    "under MirroredStrategy usually creates variables outside strategy.scope() or calls "
    "numpy()/Python control flow on per-replica values.",
)

NONE_FOUND = CauseKind(
    "-",
    "no cause found",
    lambda cx: [],
    "Compare the two runs' per-step values in the table; check with SGD and randomness off, "
    "and narrow the model down to the layer that parts first (the report's first variable).",
)

#: Every cause, in the order the report lists causes of equal score.
CAUSES = (
    NONFINITE,
    SHUFFLE,
    DUPLICATED,
    BATCH,
    LOSS_AVERAGE,
    BATCHNORM,
    RANDOM,
    PRECISION,
    XLA,
    ROUNDING,
    FAILED,
    NONE_FOUND,
)
_BY_KEY = {kind.key: kind for kind in CAUSES}


def _ruled_out(cx: Context) -> str:
    ev, facts = cx.ev, cx.facts
    parts = [
        "same examples in every global batch (a, b, s)" if ev.batches_same else "",
        f"update ratio {ev.grad_ratio:.3g} with cosine {ev.update_cosine:.3g}, not 1/N or N (c)"
        if ev.grad_ratio is not None and ev.update_cosine is not None
        else "",
        "no unsynchronized BatchNormalization (d)" if not facts.unsynced_batchnorm else "",
        "no random layer or random call in the step (e)"
        if not facts.random_layers and not facts.random_calls
        else "",
        f"dtype policy {facts.dtype_policy} (f)" if "mixed" not in facts.dtype_policy else "",
        "no jit_compile=True (g)" if not facts.jit_compile else "",
        "not rounding-sized: the updates part by "
        + (
            f"{ev.update_relative:.2g} of their size (h)"
            if ev.update_relative == ev.update_relative
            else "more than rounding (h)"
        ),
    ]
    return "ruled out: " + "; ".join(p for p in parts if p)


def rank(
    ev: Evidence,
    facts: ModelFacts,
    n: int,
    custom: bool,
    verdict: str,
    error: str | None,
) -> list[Cause]:
    """The likely causes, strongest first: from a failure (``error``: the N-replica run
    raised), from an agreement that may not last, or from the evidence of where and how the
    runs part."""
    cx = Context(ev, facts, n, custom)
    found: dict[str, tuple[float, str]] = {}
    if error is not None:
        if facts.jit_compile:
            xla = any(w in error for w in ("XLA", "xla", "different device", "jit"))
            why = f"training on {n} replicas failed with jit_compile=True: " + error[:160]
            found["g"] = (0.95 if xla else 0.7, why)
        else:
            found["x"] = (0.9, f"training on {n} replicas failed (1 replica trains): {error[:160]}")
    elif verdict == "SAME":
        if facts.unsynced_batchnorm:
            layers = ", ".join(facts.unsynced_batchnorm)
            found["d"] = (
                0.2,
                f"agree here, but layers {layers} normalize per replica; they may part with "
                "other batches",
            )
        if facts.random_layers:
            layers = ", ".join(facts.random_layers)
            found["e"] = (
                0.2,
                f"agree here although random layers {layers} are present (inactive, or rate 0?)",
            )
    elif verdict in ("DIFFERENT", "NOT FINITE"):
        kinds = CAUSES if verdict == "DIFFERENT" else (NONFINITE, LOSS_AVERAGE, BATCH, PRECISION)
        for kind in kinds:
            for score, why in kind.find(cx):
                if kind.key not in found or found[kind.key][0] < score:
                    found[kind.key] = (score, why)
        if not found and verdict == "DIFFERENT":
            found["-"] = (0.0, _ruled_out(cx))
    order = {kind.key: i for i, kind in enumerate(CAUSES)}
    ranked = sorted(found.items(), key=lambda item: (-item[1][0], order[item[0]]))
    return [
        Cause(k, _BY_KEY[k].title, why, _BY_KEY[k].fix, round(score, 2))
        for k, (score, why) in ranked
    ]
