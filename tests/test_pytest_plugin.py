"""The pytest plugin, driven through pytest itself (pytester, in subprocesses)."""

from __future__ import annotations

import os

import pytest

import tfplace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

USER_TEST = """
import numpy as np
import pytest
import keras


def fit_and_loss(strategy):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    batch = 8 * strategy.num_replicas_in_sync
    return model.fit(x, y, batch_size=batch, epochs=3, verbose=0).history["loss"]


def test_training_works_under_every_strategy(tfplace_strategy):
    losses = fit_and_loss(tfplace_strategy)
    assert losses[-1] < losses[0]


@pytest.mark.tfplace_strategies("mirrored")
def test_only_mirrored(tfplace_strategy):
    assert tfplace_strategy.num_replicas_in_sync == 2


@pytest.mark.tfplace_gpus(2)
def test_needs_two_gpus():
    raise AssertionError("must be skipped on a CPU machine")


@pytest.mark.tfplace_tpu
def test_needs_a_tpu():
    raise AssertionError("must be skipped without a TPU")
"""


def env() -> dict[str, str]:
    return {"TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.mark.usefixtures("quiet")
def test_user_file_runs_under_three_strategies_with_no_conftest(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=2)
    out = result.stdout.str()
    assert "test_training_works_under_every_strategy[default] PASSED" in out
    assert "test_training_works_under_every_strategy[one_device-CPU:0] PASSED" in out
    assert "test_training_works_under_every_strategy[mirrored-2xCPU] PASSED" in out
    assert "test_only_mirrored[mirrored-2xCPU] PASSED" in out
    assert "needs 2 GPU(s); 0 visible" in out
    assert "needs a TPU; none attached" in out
    assert "tfplace: devices /CPU:0, /CPU:1" in out
    assert "virtual CPUs 2 (from ini tfplace_virtual_cpus, applied)" in out


@pytest.mark.usefixtures("quiet")
def test_options_and_ini_keys(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntfplace_strategies = mirrored\n")
    pytester.makepyfile(
        test_x="""
        def test_x(tfplace_strategy):
            assert tfplace_strategy.num_replicas_in_sync == 3
        """
    )
    result = pytester.runpytest_subprocess("-v", "--tfplace-virtual-cpus", "3")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*virtual CPUs 3 (from --tfplace-virtual-cpus, applied); strategies mirrored "
            "(from ini tfplace_strategies)*",
            "*test_x[[]mirrored-3xCPU[]] PASSED*",
        ]
    )


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tfplace-virtual-cpus", "zero"], "--tfplace-virtual-cpus must be a positive integer"),
        (["--tfplace-strategies", "horovod"], "--tfplace-strategies lists unknown strategy"),
    ],
)
def test_bad_option_values_say_where_they_came_from(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret != 0
    assert message in result.stderr.str()


@pytest.mark.usefixtures("quiet")
def test_unknown_kind_in_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
        import pytest
        @pytest.mark.tfplace_strategies("tpu_pod")
        def test_x(tfplace_strategy):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret != 0
    assert "names unknown kind(s) ['tpu_pod']" in result.stdout.str() + result.stderr.str()


@pytest.mark.usefixtures("quiet")
def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
        import sys
        def test_no_tensorflow_imported():
            assert "tensorflow" not in sys.modules
        def test_fixture_missing(tfplace_strategy):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:tfplace")
    result.assert_outcomes(passed=1, errors=1)
    assert "fixture 'tfplace_strategy' not found" in result.stdout.str()
    assert "tfplace: devices" not in result.stdout.str()


@pytest.mark.usefixtures("quiet")
def test_multi_worker_fixture_runs_a_function_in_two_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mw="""
        import json, os

        def train(epochs):
            import numpy as np
            import tfplace
            strategy = tfplace.pick_strategy(communication_timeout=60)
            import keras
            x = np.ones((64, 2), "float32"); y = np.ones((64, 1), "float32")
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
                model.compile("sgd", "mse")
            history = model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
            print("worker says hi")
            return {"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                    "task": json.loads(os.environ["TF_CONFIG"])["task"]["index"]}

        def fail():
            raise SystemExit(4)

        def test_two_workers(tfplace_workers):
            results = tfplace_workers(train, n=2, args=(2,))
            assert [r.returncode for r in results] == [0, 0]
            assert [r.value["task"] for r in results] == [0, 1]
            assert results[0].value["replicas"] == 2
            assert results[0].value["loss"] == results[1].value["loss"]
            assert "worker says hi" in results[1].output
            assert "TF_CONFIG" not in os.environ   # the parent's environment is untouched

        def test_failure_is_reported(tfplace_workers):
            results = tfplace_workers(fail, n=2, check=False)
            assert 4 in [r.returncode for r in results]

        def test_script_target(tfplace_workers, tmp_path):
            script = tmp_path / "w.py"
            script.write_text(
                "import os, sys; print('arg', sys.argv[1], os.environ['TFPLACE_WORKER_INDEX'])"
            )
            results = tfplace_workers(script, n=2, args=["x"])
            assert sorted(r.output for r in results) == ["arg x 0", "arg x 1"]
            assert [r.value for r in results] == [None, None]

        def test_failing_worker_fails_the_test_with_its_output(tfplace_workers):
            tfplace_workers(fail, n=2)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*tfplace_workers: a worker failed (exit 4)*", "*--- worker 0*"])


def test_fake_hardware_fixture_and_restoring_the_environment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fake="""
        import os
        import tfplace

        def my_device_choice():                 # the user's own device-dependent code
            plan = tfplace.plan()
            return "big-batch" if plan.num_replicas_in_sync >= 2 else "small-batch"

        def test_two_gpus(tfplace_fake_hardware):
            tfplace_fake_hardware(gpus=2, compute_capability=(7, 5))
            assert my_device_choice() == "big-batch"
            assert tfplace.inventory().gpus[0].compute_capability == (7, 5)

        def test_cluster(tfplace_fake_hardware):
            tfplace_fake_hardware(
                tf_config={"cluster": {"worker": ["a:1", "b:1"]},
                           "task": {"type": "worker", "index": 1}},
                set_env={"MY_FLAG": "on"},
            )
            assert tfplace.plan().kind == "multi_worker"
            assert os.environ["MY_FLAG"] == "on"

        def test_after(tfplace_fake_hardware):
            assert "MY_FLAG" not in os.environ
            assert tfplace.inventory().gpus == ()
            assert my_device_choice() == "small-batch"

        os.environ["KEEP_ME"] = "original"

        def test_overrides_an_existing_variable(tfplace_fake_hardware):
            tfplace_fake_hardware(set_env={"KEEP_ME": "changed"})
            assert os.environ["KEEP_ME"] == "changed"

        def test_existing_variable_is_restored():
            assert os.environ["KEEP_ME"] == "original"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=5)


def test_plugin_module_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "tfplace"]
    assert eps and eps[0].value == "tfplace.pytest_plugin"
    assert "MY_FLAG" not in os.environ
    assert tfplace.__name__ == "tfplace"
