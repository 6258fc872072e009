"""The replica check's judgement, causes, tolerances and script reading, on synthetic runs: no
TensorFlow runtime. The same cases on real trainings: tests/test_replica_cases.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfplace._facts.inventory import GPUInfo
from tfplace._facts.nvidia import parse_query_gpu
from tfplace.replicas._judge import compare_steps, judge
from tfplace.replicas._records import BatchRecord, Run, Snapshots
from tfplace.replicas._report import ModelFacts, ReplicaReport
from tfplace.replicas._script import ScriptError, exit_code, refuse_unless_checkable
from tfplace.replicas._tolerance import default_tolerance
from tfplace.testing import fake_inventory

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).parent / "fixtures" / "gpu-host"
FACTS = ModelFacts((), (), "float32", False, "SGD", False)
NAMES = ["dense/kernel", "dense/bias"]


def _run(
    updates: list[list[np.ndarray]],
    losses: list[float],
    *,
    start: list[np.ndarray],
    metrics: list[dict[str, float]] | None = None,
    batches: list[BatchRecord] | None = None,
) -> Run:
    """A recorded run: float32 variables from ``start``, each step adding its update."""
    snapshots = Snapshots()
    current = [w.astype(np.float32) for w in start]
    snapshots.append(current)
    for step in updates:
        current = [(w + d).astype(np.float32) for w, d in zip(current, step, strict=True)]
        snapshots.append(current)
    return Run(
        losses=list(losses),
        metrics=metrics if metrics is not None else [{"loss": v} for v in losses],
        batches=batches or [BatchRecord(32, f"batch{k}") for k in range(len(updates))],
        snapshots=snapshots,
    )


def _check(one: Run, many: Run, *, replicas: int = 2, custom: bool = True, **tol: Any) -> Any:
    tolerance = default_tolerance("float32", ["/CPU:0"] * replicas, **tol)
    steps = min(len(one.snapshots), len(many.snapshots)) - 1
    compared = compare_steps(
        one.snapshots, many.snapshots, steps, names=NAMES, trainable=[True, True], tol=tolerance
    )
    return judge(
        one,
        many,
        compared,
        facts=FACTS,
        replicas=replicas,
        steps=len(one.losses),
        tol=tolerance,
        custom=custom,
    )


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.3, size=(16, 4)), rng.normal(0, 0.1, size=(4,))]


def _gradients(steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(16, 4)), rng.normal(size=(4,))] for _ in range(steps)]


@pytest.mark.parametrize("lr", [1e-2, 1e-6])
def test_an_update_twice_the_one_replica_update_is_different_at_any_learning_rate(
    lr: float,
) -> None:
    """At lr 1e-6 every weight stays within the tolerance of the one-replica weights; the
    update is still 2x, and that is a difference (cause c), not SAME."""
    start, grads = _weights(), _gradients(5)
    one = _run([[-lr * g for g in step] for step in grads], [1.0] * 5, start=start)
    many = _run([[-2 * lr * g for g in step] for step in grads], [1.0] * 5, start=start)
    report = _check(one, many)
    assert report.verdict == "DIFFERENT" and report.same is False
    assert report.first_step == 0
    assert report.causes[0].key == "c", report
    assert math.isclose(report.rows[0].update_ratio, 2.0, rel_tol=1e-2)
    if lr == 1e-6:
        assert max(r.worst_gap for r in report.rows) < 1.0  # the weights alone look the same
    assert "2x the one-replica update" in str(report) or "x2" in str(report)


def test_the_same_updates_up_to_rounding_are_the_same() -> None:
    start, grads = _weights(), _gradients(5)
    one = _run([[-1e-6 * g for g in step] for step in grads], [1.0] * 5, start=start)
    noisy = [[-1e-6 * g * (1 + 1e-7) for g in step] for step in grads]
    report = _check(one, _run(noisy, [1.0] * 5, start=start))
    assert report.verdict == "SAME" and report.same, report


@pytest.mark.parametrize("where", ["one", "many", "both"])
def test_nan_or_inf_in_either_run_is_its_own_verdict_never_same(where: str) -> None:
    start, grads = _weights(), _gradients(3)
    fine = [[-1e-2 * g for g in step] for step in grads]
    broken = [list(step) for step in fine]
    broken[1] = [np.full_like(broken[1][0], np.nan), broken[1][1]]
    one = _run(broken if where in ("one", "both") else fine, [1.0, 2.0, 3.0], start=start)
    many = _run(broken if where in ("many", "both") else fine, [1.0, 2.0, 3.0], start=start)
    report = _check(one, many)
    assert report.verdict == "NOT FINITE" and not report.same
    assert report.first_step == 1 and report.first_variable == "dense/kernel"
    assert report.causes[0].key == "n"
    assert exit_code([report]) == 1
    assert str(report).startswith("NOT FINITE: NaN or inf at step 1")


def test_an_infinite_logged_loss_is_not_finite_either() -> None:
    start, grads = _weights(), _gradients(2)
    updates = [[-1e-2 * g for g in step] for step in grads]
    one = _run(updates, [1.0, math.inf], start=start)
    report = _check(one, _run(updates, [1.0, math.inf], start=start))
    assert report.verdict == "NOT FINITE" and report.first_step == 1


def test_zero_steps_could_not_be_checked() -> None:
    start = _weights()
    report = _check(_run([], [], start=start), _run([], [], start=start))
    assert report.verdict == "COULD NOT CHECK" and not report.same
    assert "no step ran" in " ".join(report.notes)
    assert exit_code([report]) == 2
    assert str(report).startswith("COULD NOT CHECK: 1 vs 2 replicas")


def test_a_logged_loss_scaled_by_one_over_n_alone_is_the_same_training_with_a_note() -> None:
    start, grads = _weights(), _gradients(4)
    updates = [[-1e-2 * g for g in step] for step in grads]
    losses = [4.0, 3.0, 2.5, 2.0]
    one = _run(updates, losses, start=start, metrics=[{"loss": v, "mae": 1.0} for v in losses])
    many = _run(
        updates,
        [v / 2 for v in losses],
        start=start,
        metrics=[{"loss": v / 2, "mae": 1.0} for v in losses],
    )
    report = _check(one, many, custom=False)
    assert report.verdict == "SAME" and report.same, report
    note = " ".join(report.notes)
    assert "logged 'loss' differs at 4 of 4 steps" in note and "= 1/2" in note
    assert "mae" not in note
    text = str(report)
    assert "mae 1" in text and "mae 2" in text  # every logged value is shown


def test_a_model_that_logs_no_loss_shows_its_own_values_not_nan() -> None:
    start, grads = _weights(), _gradients(2)
    updates = [[-1e-2 * g for g in step] for step in grads]
    logged = [{"d_loss": 0.7, "g_loss": 0.5}, {"d_loss": 0.6, "g_loss": 0.4}]
    one = _run(updates, [math.nan] * 2, start=start, metrics=logged)
    report = _check(one, _run(updates, [math.nan] * 2, start=start, metrics=logged))
    text = str(report)
    assert report.same and "d_loss 1" in text and "g_loss 2" in text
    assert "nan" not in text.lower()


def test_without_evidence_for_any_cause_it_says_no_cause_found_and_what_was_ruled_out() -> None:
    start, grads = _weights(), _gradients(3)
    one = _run([[-1e-2 * g for g in step] for step in grads], [1.0] * 3, start=start)
    updates = [[-1e-2 * g for g in step] for step in grads]
    turned = [*updates[:2], [-1e-2 * g for g in _gradients(1, seed=9)[0]]]  # step 2 only
    report = _check(one, _run(turned, [1.0] * 3, start=start), custom=False)
    assert report.verdict == "DIFFERENT" and report.first_step == 2
    assert [c.key for c in report.causes] == ["-"], report.causes
    assert report.causes[0].title == "no cause found"
    assert "ruled out:" in report.causes[0].evidence and "(h)" in report.causes[0].evidence


def test_other_examples_in_the_global_batch_are_another_training() -> None:
    start, grads = _weights(), _gradients(1)
    updates = [[-1e-2 * g for g in step] for step in grads]
    one = _run(updates, [1.0], start=start, batches=[BatchRecord(32, "x")])
    many = _run(updates, [1.0], start=start, batches=[BatchRecord(32, "y", duplicated=True)])
    report = _check(one, many, custom=False)
    assert report.verdict == "DIFFERENT" and report.first_variable is None
    assert report.causes[0].key == "a"
    assert "agree at that step all the same" in " ".join(report.notes)


def test_the_report_is_json_data() -> None:
    start, grads = _weights(), _gradients(2)
    updates = [[-1e-2 * g for g in step] for step in grads]
    report = _check(_run(updates, [1.0, 0.5], start=start), _run(updates, [1.0, 0.5], start=start))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "SAME" and data["tolerance"] == "default for float32"
    assert data["rows"][0]["metrics_one"] == {"loss": 1.0}
    assert isinstance(report, ReplicaReport)


def test_snapshots_in_a_file_read_back_one_variable_at_a_time(tmp_path: Path) -> None:
    snapshots = Snapshots(tmp_path / "run.bin")
    values = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], dtype=np.float32)]
    snapshots.append(iter(values))
    snapshots.append(iter([v * 2 for v in values]))
    assert len(snapshots) == 2
    assert np.array_equal(snapshots.read(1, 0), values[0] * 2)
    again = Snapshots(tmp_path / "run.bin", layout=snapshots.layout)
    assert len(again) == 2 and again.read(1, 1).tolist() == [3.0]
    with pytest.raises(ValueError, match="expected the first snapshot's layout"):
        snapshots.append([np.zeros((3, 3), np.float32), values[1]])


# ------------------------------------------------------------------------ tolerances


def _h100() -> list[GPUInfo]:
    gpus, _ = parse_query_gpu((FIXTURES / "h100-query-gpu.csv").read_text())
    return [GPUInfo(g.index, g.name, g.compute_capability) for g in gpus]


def _h200() -> list[GPUInfo]:
    doctor = json.loads((FIXTURES / "h200-tf-gpu-doctor-verify.json").read_text())
    return [
        GPUInfo(g["index"], g["name"], tuple(g["compute_capability"]))
        for g in doctor["devices"]["gpus"]
    ]


@pytest.mark.parametrize("gpus", [_h100, _h200], ids=["h100", "h200"])
def test_float32_on_the_captured_hopper_gpus_gets_the_tf32_tolerance(gpus: Any) -> None:
    found = gpus()
    assert found[0].compute_capability == (9, 0)
    tol = default_tolerance("float32", ["/GPU:0"], found)
    assert (tol.rtol, tol.atol) == (1e-3, 1e-4)
    assert "TF32" in tol.source and "compute capability 9.0" in tol.source
    assert default_tolerance("float32", ["/GPU:0"], found, tf32=False).rtol == 1e-4


@pytest.mark.parametrize(
    ("cc", "policy", "expected", "named"),
    [
        ((7, 0), "float32", (1e-4, 1e-5), "float32"),
        ((8, 0), "float32", (1e-3, 1e-4), "TF32"),
        ((8, 0), "mixed_float16", (1e-2, 1e-4), "float16"),
        ((9, 0), "mixed_bfloat16", (5e-2, 1e-3), "bfloat16"),
        (None, "float32", (1e-4, 1e-5), "float32"),
    ],
)
def test_default_tolerances_follow_the_device_and_the_dtype_policy(
    cc: tuple[int, int] | None, policy: str, expected: tuple[float, float], named: str
) -> None:
    inventory = fake_inventory(gpus=2, compute_capability=cc)
    tol = default_tolerance(policy, ["/GPU:0", "/GPU:1"], inventory.visible_gpus)
    assert (tol.rtol, tol.atol) == expected and named in tol.source
    assert 0.01 <= tol.update_rtol <= 0.2
    on_cpu = default_tolerance(policy, ["/CPU:0", "/CPU:1"], inventory.visible_gpus)
    assert on_cpu.rtol == (expected[0] if named != "TF32" else 1e-4)


def test_given_tolerances_win_and_the_report_says_so() -> None:
    tol = default_tolerance("mixed_float16", ["/CPU:0"], rtol=1e-4, atol=1e-5)
    assert (tol.rtol, tol.atol, tol.update_rtol) == (1e-4, 1e-5, 0.01)
    assert tol.source == "rtol, atol given; float16"


# ------------------------------------------------------------------------ the script


def test_a_script_without_build_or_data_is_refused_before_any_of_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "trained.txt"
    script = tmp_path / "train.py"
    script.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(ScriptError, match=r"found no build and no data, so nothing was run"):
        refuse_unless_checkable(script)
    assert not marker.exists()
    script.write_text("def build():\n    pass\n")
    with pytest.raises(ScriptError, match=r"found no data,"):
        refuse_unless_checkable(script)
    script.write_text("if True:\n    def build(): ...\n    data = print\n")
    refuse_unless_checkable(script)  # bound under an if: accepted
    script.write_text("from elsewhere import *\n")
    refuse_unless_checkable(script)  # a star import may bind them: accepted
    script.write_text("def build(:\n")
    with pytest.raises(ScriptError, match="does not parse"):
        refuse_unless_checkable(script)


@pytest.mark.parametrize(
    ("tf32_setting", "env", "expected"),
    [(True, {}, 1e-3), (False, {}, 1e-4), (True, {"NVIDIA_TF32_OVERRIDE": "0"}, 1e-4)],
    ids=["tensorflow-default", "turned-off-in-tensorflow", "NVIDIA_TF32_OVERRIDE=0"],
)
def test_the_check_reads_whether_tf32_is_on(
    tf32_setting: bool, env: dict[str, str], expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the captured H100, float32 gets the TF32 tolerance only while TF32 is really on:
    TensorFlow's setting and NVIDIA's override, read when the check picks its tolerance."""
    from tfplace import _tf
    from tfplace.replicas import _check
    from tfplace.testing import fake_inventory, use_inventory

    monkeypatch.setattr(_tf, "tf32_enabled", lambda: tf32_setting)
    with use_inventory(fake_inventory(_h100(), env=env)):
        tol = _check._tolerance("float32", ["/GPU:0", "/GPU:1"], None, None, None)
    assert tol.rtol == expected
    assert ("TF32" in tol.source) == (expected == 1e-3)


def test_build_and_data_bound_under_any_compound_statement_are_found(tmp_path: Path) -> None:
    """while, try/except*, match, async-free with: names bound there count as top level."""
    script = tmp_path / "nested.py"
    script.write_text(
        "while True:\n    def build(): pass\n    break\n"
        "try:\n    pass\nexcept* ValueError:\n    pass\nelse:\n    data = print\n"
        "match 1:\n    case 1:\n        train_step = None\n"
    )
    refuse_unless_checkable(script)  # accepted: nothing raised
    script.write_text("while True:\n    def build(): pass\n    break\n")
    with pytest.raises(ScriptError, match="no data"):
        refuse_unless_checkable(script)
