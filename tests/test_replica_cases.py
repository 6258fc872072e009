"""The replica check on code it was not written with (tests/replica_cases/: published guides and
tutorials as their authors wrote them, on a small data set, and new cases), each with the
verdict its math dictates and the right cause first; and ``tfplace check`` on scripts that
fail, lack ``build``, or build a strategy when imported.

All cases of a kind run in one fresh process (the CPU split before TensorFlow starts).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import run_fresh

pytestmark = pytest.mark.slow

CASES = Path(__file__).parent / "replica_cases"

#: (label, module, build, data, train_step, extra options)
RUNS = [
    ("double", "finetune_double_gradient", "build", "data", "train_step", {}),
    ("compute_loss", "guide_compute_loss", "build", "data", None, {}),
    ("compute_loss_weighted", "guide_compute_loss", "build", "data_weighted", None, {}),
    ("gan", "guide_gan", "build", "data", None, {"steps": 3}),
    ("tutorial", "tutorial_custom_loop", "build", "data", "train_step", {}),
    ("tutorial_seeded", "tutorial_custom_loop", "build", "data", "train_step", {"seeded": 1}),
    ("readme", "readme_batch", "build", "data", None, {}),
    ("diverges", "diverges", "build_diverging", "data", None, {}),
    ("empty", "diverges", "build", "data_empty", None, {}),
]

DRIVER = """
import importlib
import json
import sys
sys.path.insert(0, {cases!r})
import tfplace
tfplace.configure_cpus(threads=None, virtual_devices=2)
out = {{}}
for label, module, build, data, step, extra in {runs!r}:
    m = importlib.import_module(module)
    extra = dict(extra)
    if extra.pop("seeded", None):
        m.SEEDED = True
    report = tfplace.compare_replicas(
        getattr(m, build), getattr(m, data), replicas=2,
        train_step=getattr(m, step) if step else None, **extra,
    )
    if hasattr(m, "SEEDED"):
        m.SEEDED = False
    out[label] = {{"report": report.to_dict(), "text": str(report)}}
print("JSON", json.dumps(out))
"""


@pytest.fixture(scope="module")
def cases() -> dict[str, Any]:
    proc = run_fresh(DRIVER.format(cases=str(CASES), runs=RUNS), timeout=600)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON "))
    found: dict[str, Any] = json.loads(line[5:])
    return found


def _first(case: dict[str, Any]) -> str:
    causes = case["report"]["causes"]
    return str(causes[0]["key"]) if causes else ""


def test_a_step_twice_too_large_at_a_fine_tuning_rate_is_different_cause_c(
    cases: dict[str, Any],
) -> None:
    """Per-replica reduce_mean, the loss reported with strategy.reduce('MEAN'), SGD 1e-6:
    the weights stay within the tolerance, every update is 2x."""
    case = cases["double"]
    report = case["report"]
    assert report["verdict"] == "DIFFERENT" and report["first_step"] == 0, case["text"]
    assert _first(case) == "c", case["text"]
    assert all(1.9 < r["update_ratio"] < 2.1 for r in report["rows"]), case["text"]
    assert max(r["worst_gap"] for r in report["rows"]) < 1.0  # the weights alone agree


@pytest.mark.parametrize("label", ["compute_loss", "compute_loss_weighted"])
def test_the_keras_guide_train_step_with_compute_loss_is_the_same_training(
    cases: dict[str, Any], label: str
) -> None:
    """The tracker logs Keras's 1/N-scaled loss: SAME for the training, with a note."""
    case = cases[label]
    assert case["report"]["verdict"] == "SAME", case["text"]
    note = " ".join(case["report"]["notes"])
    assert "logged 'loss' differs" in note and "= 1/2" in note, case["text"]
    assert "mae 1" in case["text"]


def test_the_keras_guide_gan_names_its_random_draws_and_shows_its_own_losses(
    cases: dict[str, Any],
) -> None:
    case = cases["gan"]
    assert case["report"]["verdict"] == "DIFFERENT", case["text"]
    assert _first(case) == "e", case["text"]
    assert "keras.random.normal" in case["report"]["causes"][0]["evidence"]
    assert "d_loss 1" in case["text"] and "g_loss 2" in case["text"]
    assert " nan " not in case["text"]


def test_the_tensorflow_tutorial_loop_with_its_unseeded_shuffle_names_the_shuffle(
    cases: dict[str, Any],
) -> None:
    """The module-level dataset reshuffles on every pass: the runs read other batches (the
    training differs for that reason alone); seeded, the same tutorial is SAME."""
    case = cases["tutorial"]
    assert case["report"]["verdict"] == "DIFFERENT", case["text"]
    assert _first(case) == "s", case["text"]
    assert "seed" in case["report"]["causes"][0]["fix"]
    assert cases["tutorial_seeded"]["report"]["verdict"] == "SAME", cases["tutorial_seeded"]["text"]


def test_the_readme_batch_rule_through_the_check_is_the_same(cases: dict[str, Any]) -> None:
    """data() batches by tfplace.global_batch_size(32, strategy), as the README does: both
    runs are compared at the 2-replica global batch (64), and the report says so."""
    case = cases["readme"]
    report = case["report"]
    assert report["verdict"] == "SAME", case["text"]
    assert report["batch_sizes"] == [64, 64]
    assert "32 examples for 1 replica, 64 for 2" in " ".join(report["notes"])


def test_a_diverging_training_is_not_finite_never_same(cases: dict[str, Any]) -> None:
    case = cases["diverges"]
    assert case["report"]["verdict"] == "NOT FINITE" and not case["report"]["same"]
    assert _first(case) == "n", case["text"]


def test_an_input_without_batches_could_not_be_checked(cases: dict[str, Any]) -> None:
    case = cases["empty"]
    assert case["report"]["verdict"] == "COULD NOT CHECK" and not case["report"]["same"]
    assert "no step ran" in " ".join(case["report"]["notes"])


# ------------------------------------------------------------------------ the command line

CLI = "import sys; from tfplace.__main__ import main; sys.exit(main(sys.argv[1:]))"


def _cli(*args: str, timeout: float = 300) -> Any:
    argv = "import sys; sys.argv[1:] = " + repr(list(args))
    return run_fresh(f"{argv}\n{CLI}", check=False, timeout=timeout)


def test_the_cli_exits_2_when_build_raises(tmp_path: Path) -> None:
    script = tmp_path / "raises.py"
    script.write_text(
        textwrap.dedent(
            """
            def build():
                raise ValueError("no model today")

            def data(strategy):
                return []
            """
        )
    )
    proc = _cli("check", str(script))
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "could not check" in proc.stderr and "ValueError: no model today" in proc.stderr


def test_the_cli_refuses_a_script_without_build_before_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "checkpoint.txt"
    script = tmp_path / "train.py"
    script.write_text(
        f"import sys\nfrom pathlib import Path\nPath({str(marker)!r}).write_text(str(sys.argv))\n"
    )
    proc = _cli("check", str(script))
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "found no build and no data, so nothing was run" in proc.stderr
    assert not marker.exists()


PICKS_AT_IMPORT = """
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfplace

strategy = tfplace.pick_strategy()  # as docs/multi-worker.md shows: before any model
Path({argv!r}).write_text(repr(sys.argv))
x = np.random.default_rng(3).normal(size=(256, 4)).astype("float32")


def build():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy):
    return tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1, keepdims=True))).batch(32)


if __name__ == "__main__":
    raise SystemExit("the check imports this script; its own training must not run")
"""


def test_the_cli_on_workers_takes_a_script_that_picks_its_strategy_at_import(
    tmp_path: Path,
) -> None:
    argv = tmp_path / "argv.txt"
    script = tmp_path / "train_workers.py"
    script.write_text(PICKS_AT_IMPORT.format(argv=str(argv)))
    proc = _cli("check", "--workers", "--steps", "3", str(script), timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("SAME: 1 and 2 replicas agree for 3 steps")
    assert argv.read_text() == repr([str(script)])  # its own name, as Python gives it
