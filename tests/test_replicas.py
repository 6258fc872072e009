"""The replica check: the cause catalogue (docs/examples/replicas) flagged with the right cause
and its fixes passing, 1 vs 2 and 1 vs 4 replicas on virtual CPUs; the report; checks one after
another in one process; strategies built again and again in one process (tensorflow#61314).

Scenarios run in fresh interpreters (the CPU is split before TensorFlow starts, and a collapsed
collective poisons the process for good). The catalogue runs in two of them, side by side, each
checking several examples in turn: every check builds strategies of its own, so one check's
input cannot change the next one's (see test_a_check_after_per_replica_pipelines_...).
"""

from __future__ import annotations

import json
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import computed_once, run_fresh

from tfplace.replicas._judge import compare_steps, judge
from tfplace.replicas._records import BatchRecord, Run, Snapshots, batch_record
from tfplace.replicas._report import ModelFacts
from tfplace.replicas._tolerance import default_tolerance
from tfplace.replicas._workers import _locate

pytestmark = pytest.mark.slow

CATALOGUE = Path(__file__).parents[1] / "docs" / "examples" / "replicas"
SCRIPTS = {
    "a": "a_duplicated_data",
    "b": "b_batch_size",
    "c": "c_loss_average",
    "d": "d_batchnorm",
    "e": "e_random",
    "f": "f_mixed_precision",
    "g": "g_xla",
}
#: The examples per process; the two processes run at once (about 110 s on this 2-core machine
#: under load, against ~320 s for one process per example run one after another).
GROUPS = ("abcd", "efg")


def _run_group(
    causes: str, scripts: dict[str, str] = SCRIPTS, how: str = ""
) -> tuple[str, str, int]:
    lines = "\n".join(
        f"print('CODE', {c!r}, run({c!r}, getattr(importlib.import_module({module!r}), "
        f"{attr or 'CASES'!r}){how}))"
        for c in causes
        for module, _, attr in [scripts[c].partition(":")]
    )
    proc = run_fresh(
        f"""
import importlib
import sys
sys.path.insert(0, {str(CATALOGUE)!r})
from _common import run
{lines}
""",
        timeout=600,
        check=False,
    )
    return proc.stdout, proc.stderr, proc.returncode


def _shared(factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder every xdist worker of this session sees (the base folder, without xdist)."""
    base = factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """Every case of every cause example, checked 1 vs 2 and 1 vs 4, several per process;
    once per session, whichever xdist worker runs these tests."""

    def compute() -> dict[str, Any]:
        with ThreadPoolExecutor(len(GROUPS)) as pool:
            done = dict(zip(GROUPS, pool.map(_run_group, GROUPS), strict=True))
        return _results(done)

    found: dict[str, Any] = computed_once(
        _shared(tmp_path_factory, worker_id), "replica-catalogue", compute
    )
    return found


def _results(done: dict[str, tuple[str, str, int]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for group, (stdout, stderr, code) in done.items():
        rows = re.findall(
            r"^RESULT (\w) (\S+) replicas=(\d+) same=(True|False) cause=(\S+)$", stdout, re.M
        )
        for cause in group:
            results[cause] = [
                {"name": name, "n": int(n), "same": same == "True", "cause": top}
                for c, name, n, same, top in rows
                if c == cause
            ]
            codes = re.findall(rf"^CODE {cause} (\d+)$", stdout, re.M)
            results[cause + "-code"] = int(codes[0]) if codes else code or -1
            begin = stdout.find(f"=== cause {cause}:")
            end = stdout.find(f"CODE {cause} ")
            part = stdout[begin:end] if 0 <= begin < end else stdout
            results[cause + "-text"] = part + stderr[-2000:]
    return results


def _check_cause(catalogue: dict[str, Any], cause: str, counts: set[int] | None = None) -> None:
    rows = catalogue[cause]
    text = str(catalogue[cause + "-text"])
    assert {r["n"] for r in rows} == (counts or {2, 4}), text[-2000:]
    broken = [r for r in rows if r["name"].startswith("broken")]
    fixed = [r for r in rows if r["name"].startswith("fixed")]
    assert broken and fixed, text[-2000:]
    for r in broken:
        assert not r["same"] and r["cause"] == cause, (r, text[-3000:])
    for r in fixed:
        assert r["same"], (r, text[-3000:])
    assert catalogue[cause + "-code"] == 0, text[-2000:]  # the example's own verdict agrees


def test_cause_a_duplicated_data_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "a")


def test_cause_b_global_batch_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "b")


def test_cause_c_loss_averaged_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "c")


def test_cause_d_batchnorm_per_replica_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "d")


def test_cause_e_random_ops_are_named_and_their_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "e")


def test_cause_f_mixed_precision_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "f")


def test_cause_g_xla_under_mirrored_is_named_and_its_fix_passes(catalogue: Any) -> None:
    _check_cause(catalogue, "g")


#: The causes checked with the N replicas as 2 local worker processes: (a) is the case that
#: matters most across workers (every worker reading the same examples), (c) a custom step.
WORKER_SCRIPTS = {
    "a": "a_workers",
    "b": "workers:CASES_B",
    "c": "c_loss_average",
    "d": "workers:CASES_D",
    "e": "workers:CASES_E",
    "f": "workers:CASES_F",
    "g": "workers:CASES_G",
}
WORKER_GROUPS = ("acf", "bdeg")


@pytest.fixture(scope="module")
def on_workers(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """Every cause, 1 replica here vs 2 local workers; two processes side by side; once per
    session, whichever xdist worker runs these tests."""
    how = ", replicas=(2,), workers=True"

    def compute() -> dict[str, Any]:
        with ThreadPoolExecutor(len(WORKER_GROUPS)) as pool:
            runs = pool.map(lambda group: _run_group(group, WORKER_SCRIPTS, how), WORKER_GROUPS)
            done = dict(zip(WORKER_GROUPS, runs, strict=True))
        return _results(done)

    found: dict[str, Any] = computed_once(
        _shared(tmp_path_factory, worker_id), "replica-workers", compute
    )
    return found


def test_with_2_local_workers_unsharded_data_is_named_and_its_fixes_pass(on_workers: Any) -> None:
    _check_cause(on_workers, "a", {2})
    names = {r["name"] for r in on_workers["a"]}
    assert {"broken_no_autoshard", "broken_unsharded_pipelines"} <= names
    assert "(model.fit, 2 local workers," in on_workers["a-text"]


def test_with_2_local_workers_the_loss_average_is_named_and_its_fix_passes(
    on_workers: Any,
) -> None:
    _check_cause(on_workers, "c", {2})
    assert "(custom train_step, 2 local workers," in on_workers["c-text"]


@pytest.mark.parametrize("cause", ["b", "d", "e", "f", "g"])
def test_with_2_local_workers_the_other_causes_are_named_and_their_fixes_pass(
    on_workers: Any, cause: str
) -> None:
    _check_cause(on_workers, cause, {2})
    assert "2 local workers," in on_workers[cause + "-text"]


def module_level_data(strategy: Any) -> Any:
    return strategy


def test_workers_need_functions_they_can_import_again() -> None:
    module, path, name = _locate(module_level_data, "data")
    assert (module, name) == (__name__, "module_level_data")
    assert path == str(Path(__file__).resolve())
    with pytest.raises(ValueError, match=r"not a top-level name.*Fix: define build at the top"):
        _locate(lambda: None, "build")

    def nested(strategy: Any) -> Any:
        return strategy

    with pytest.raises(ValueError, match=r"'test_workers_need_.*nested'"):
        _locate(nested, "data")


def test_a_worker_that_fails_before_its_record_is_an_error_with_its_lines(tmp_path: Path) -> None:
    (tmp_path / "fails_on_worker_1.py").write_text(
        textwrap.dedent(
            """
            import os
            import keras
            import numpy as np
            import tensorflow as tf

            def build():
                if os.environ.get("TFPLACE_WORKER_INDEX") == "1":
                    raise RuntimeError("build() cannot run on worker 1")
                net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
                net.compile(optimizer="sgd", loss="mse")
                return net

            def data(strategy):
                x = np.ones((16, 2), "float32")
                return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4)
            """
        )
    )
    proc = run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import fails_on_worker_1 as m
        import tfplace
        try:
            tfplace.compare_replicas(m.build, m.data, replicas=2, steps=2, workers=True)
        except RuntimeError as err:
            print("RAISED", err)
        """,
        timeout=400,
    )
    assert "RAISED compare_replicas(workers=True): none of the 2 workers wrote" in proc.stdout
    assert "[worker 1]" in proc.stdout and "build() cannot run on worker 1" in proc.stdout


UNSHARDED_SCRIPT = """
import keras
import numpy as np
import tensorflow as tf

SHARD = {shard}
x = np.random.default_rng(3).normal(size=(256, 4)).astype("float32")


def build():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(strategy):
    ds = tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1, keepdims=True))).batch(32)
    if not SHARD:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.with_options(options)
    return ds


if __name__ == "__main__":
    raise SystemExit("the check imports this script; its own training must not run")
"""


def test_the_cli_checks_a_script_on_local_workers(tmp_path: Path) -> None:
    script = tmp_path / "train_unsharded.py"
    script.write_text(UNSHARDED_SCRIPT.format(shard=False))
    cli = "import sys; from tfplace.__main__ import main; sys.exit(main(sys.argv[1:]))"
    code = f"import sys; sys.argv[1:] = ['check', '--workers', '--steps', '3', {str(script)!r}]"
    proc = run_fresh(f"{code}\n{cli}", check=False, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("DIFFERENT: 1 and 2 replicas part at step 0")
    assert "2 local workers" in proc.stdout.splitlines()[0]
    assert "1. [a] unsharded or duplicated data" in proc.stdout
    script.write_text(UNSHARDED_SCRIPT.format(shard=True))
    as_json = code.replace("'--steps'", "'--json', '--steps'")
    proc = run_fresh(f"{as_json}\n{cli}", check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (report,) = json.loads(proc.stdout)
    assert report["same"] is True and report["workers"] == 2 and len(report["rows"]) == 3


SEQUENCE = f"""
import json
import sys
sys.path.insert(0, {str(CATALOGUE)!r})
import a_duplicated_data as a
import b_batch_size as b
import tfplace
out = []
for first in sys.argv[1:]:
    before = tfplace.compare_replicas(replicas=2, **a.CASES[first])
    after = tfplace.compare_replicas(replicas=2, **b.CASES["broken"])
    out.append({{"first": first, "first_same": before.same, "report": after.to_dict()}})
print(json.dumps(out))
"""


def test_a_check_after_per_replica_pipelines_sees_its_own_input() -> None:
    """The false "same": a model.fit check after a check whose input made one pipeline per
    replica (InputReplicationMode.PER_REPLICA). TensorFlow's MirroredStrategy rewrites its
    input workers for good when such a dataset is made, and the check used to get the very
    same strategy object again from pick_strategy's cache: the second check's input then gave
    every replica the same 32 examples, which average to the one-replica loss."""
    proc = run_fresh(
        f"import sys; sys.argv[1:] = ['broken_unsharded', 'fixed_sharded']\n{SEQUENCE}"
    )
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["first_same"] for r in runs] == [False, True]
    for r in runs:
        report = r["report"]
        assert report["same"] is False, (r["first"], report)
        assert report["causes"][0]["key"] == "b", (r["first"], report["causes"])
        assert report["losses_many"] != report["losses_one"]
        assert report["first_step"] == 0


def _run(losses: list[float], digest: str, size: int, duplicated: bool) -> Run:
    snapshots = Snapshots()
    snapshots.append([np.zeros((2, 1))])
    snapshots.append([np.ones((2, 1))])
    batches = [BatchRecord(size, digest, duplicated=duplicated)]
    return Run(losses=losses, metrics=[{"loss": losses[0]}], batches=batches, snapshots=snapshots)


def test_the_same_numbers_on_other_examples_are_not_the_same_training() -> None:
    """Every replica reading the same examples can average to the one-replica loss and update
    (the state above made exactly that); the verdict must still be "different"."""
    rows = np.arange(64, dtype=np.float64).reshape(32, 2)
    one = _run([1.0], batch_record([[rows]], 1).digest, 32, duplicated=False)
    twice = batch_record([[rows, rows]], 2)
    many = _run([1.0], twice.digest, 64, duplicated=twice.duplicated)
    facts = ModelFacts((), (), "float32", False, "SGD", False)
    tol = default_tolerance("float32", ["/CPU:0", "/CPU:1"])

    def check(one: Run, many: Run) -> Any:
        compared = compare_steps(
            one.snapshots, many.snapshots, 1, names=["dense/kernel"], trainable=[True], tol=tol
        )
        options: dict[str, Any] = {"facts": facts, "replicas": 2, "steps": 1, "tol": tol}
        return judge(one, many, compared, custom=False, **options)

    report = check(one, many)
    assert twice.duplicated and twice.size == 64
    assert report.same is False and report.first_step == 0 and report.first_variable is None
    assert [c.key for c in report.causes][:2] == ["a", "b"]
    assert "holds other examples on 2 replicas" in " ".join(report.notes)
    assert "agree at that step all the same" in " ".join(report.notes)
    assert str(report).startswith("DIFFERENT: 1 and 2 replicas part at step 0 (model.fit")
    same = _run([1.0], one.batches[0].digest, 32, duplicated=False)
    assert check(one, same).same is True


COLLAPSE = """
import sys
import tfplace
tfplace.configure_cpus(threads=None, virtual_devices=4)
import numpy as np
import keras
import tensorflow as tf
from tfplace import _tf

def fit_on(strategy):
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    with strategy.scope():
        net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                                keras.layers.BatchNormalization(synchronized=True),
                                keras.layers.Dense(1)])
        net.compile(optimizer="sgd", loss="mse")
    net.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)

def strategy(n, how):
    devices = [f"/CPU:{i}" for i in range(n)]
    if how == "plain":
        return tf.distribute.MirroredStrategy(devices)
    if how == "collective":
        return _tf.collective_mirrored_strategy(devices)
    return tfplace.pick_strategy("mirrored", devices=devices, cross_device_ops="reduce_to_one")

for how in sys.argv[1:]:
    for n in (2, 4, 2):
        fit_on(strategy(n, how))
        print(how, n, flush=True)
"""


def test_strategies_of_other_sizes_in_one_process_collapse_without_own_keys() -> None:
    """The failure the measures prevent (tensorflow#61314): plain strategies share group 1."""
    proc = run_fresh(f"import sys; sys.argv[1:] = ['plain']\n{COLLAPSE}", check=False)
    assert proc.returncode != 0
    # the first strategy trains; a later one of another size collapses: usually the 4-device
    # one, sometimes (a race in TensorFlow's collective executor) the second 2-device one, and
    # the op that reports the abort first may say "cancelled" instead of the group sizes
    done = proc.stdout.split()
    assert done in (["plain", "2"], ["plain", "2", "plain", "4"]), proc.stdout
    assert re.search(
        r"joining a group with size ?\d, but that group has size \d|was cancelled", proc.stderr
    ), proc.stderr[-2000:]


def test_the_strategies_the_check_builds_can_be_built_again_and_again() -> None:
    proc = run_fresh(f"import sys; sys.argv[1:] = ['collective', 'one_device']\n{COLLAPSE}")
    assert proc.stdout.split() == [
        *("collective", "2", "collective", "4", "collective", "2"),
        *("one_device", "2", "one_device", "4", "one_device", "2"),
    ]


def test_repeated_checks_in_one_process_report_and_assert() -> None:
    proc = run_fresh(
        """
        import json
        import tfplace
        tfplace.configure_cpus(threads=None, virtual_devices=4)
        import numpy as np
        import keras
        import tensorflow as tf
        from tfplace.testing import assert_same_training
        x = np.random.default_rng(1).normal(size=(256, 4)).astype("float32")
        y = x.sum(axis=1, keepdims=True)

        def data(strategy):
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

        def build(bn=False):
            layers = [keras.Input((4,)), keras.layers.Dense(8)]
            if bn:
                layers.append(keras.layers.BatchNormalization())
            net = keras.Sequential(layers + [keras.layers.Dense(1)])
            net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            return net

        same = [assert_same_training(build, data, replicas=n, steps=3, reduction=r).same
                for n, r in [(2, "collective"), (4, "collective"), (2, "one_device"),
                             (4, "one_device")]]
        bad = tfplace.compare_replicas(lambda: build(bn=True), data, replicas=2, steps=3)
        try:
            assert_same_training(lambda: build(bn=True), data, replicas=2, steps=3)
            raised = ""
        except AssertionError as err:
            raised = str(err)
        print(json.dumps({"same": same, "report": bad.to_dict(), "text": str(bad),
                          "raised": raised}))
        """
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] == [True, True, True, True]
    report = out["report"]
    assert report["same"] is False and report["first_step"] == 0 and report["replicas"] == 2
    assert report["causes"][0]["key"] == "d"
    assert len(report["losses_one"]) == len(report["rows"]) == 3
    assert report["first_variable"] in report["differing_variables"]
    assert out["text"].startswith("DIFFERENT: 1 and 2 replicas part at step 0")
    assert "[d] BatchNormalization statistics computed per replica" in out["text"]
    assert "BatchNormalization statistics computed per replica" in out["raised"]


def test_splits_the_cpu_itself_and_says_what_to_do_when_too_late() -> None:
    proc = run_fresh(
        """
        import numpy as np
        import keras
        import tensorflow as tf
        import tfplace
        x = np.ones((64, 2), "float32")

        def build():
            net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            net.compile(optimizer="sgd", loss="mse")
            return net

        def data(strategy):
            return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(12)

        r = tfplace.compare_replicas(build, data, replicas=3, steps=2)
        print(r.same, r.devices)
        try:
            tfplace.compare_replicas(build, data, replicas=4)
        except tfplace.AlreadyInitializedError as err:
            print(err)
        """,
        cpu_only=True,
    )
    assert "True ('/CPU:0', '/CPU:1', '/CPU:2')" in proc.stdout
    assert "needs 4 CPU devices" in proc.stdout and "started with 3" in proc.stdout
    assert "tfplace.configure_cpus(virtual_devices=4)" in proc.stdout
