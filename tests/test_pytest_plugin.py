"""The pytest plugin: its session decision on synthetic inputs, and pytest itself driving it
(pytester, in subprocesses)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import pytest
from helpers import run_json

import tfplace
from tfplace import pytest_plugin
from tfplace._decide.session import SessionSetup
from tfplace.pytest_plugin import Setting, decide_session

pytestmark = [pytest.mark.tf, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: Modules a session that does not use tfplace must never import.
HEAVY = (
    "tensorflow",
    "keras",
    "tfplace._tf",
    "tfplace._facts.inventory",
    "tfplace._decide.strategy",
    "tfplace._configure",
    "tfplace._strategy",
    "tfplace.cluster._launch",
)

#: A conftest recording, after the plugin's own clean-up, what the session imported and left.
RECORDER = f"""
import json, os, sys
import pytest

HEAVY = {HEAVY!r}

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    from tfplace.pytest_plugin import _STATE_KEY
    state = config.stash.get(_STATE_KEY, None)
    facts = {{
        "heavy": [m for m in HEAVY if sys.modules.get(m) is not None],
        "active": state.active_because if state else "no state",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
    }}
    with open(os.path.join(str(config.rootpath), "facts.json"), "w") as f:
        json.dump(facts, f)
"""

#: What the pytester children inherit; the plugin must leave it as it found it.
CVD = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

NO_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None  # import tensorflow fails\n'


def facts(pytester: pytest.Pytester) -> dict[str, object]:
    data: dict[str, object] = json.loads((pytester.path / "facts.json").read_text())
    return data


def plan_for(gpus: int, xdist: str | None = None, **settings: Setting) -> SessionSetup:
    environ = {"PYTEST_XDIST_WORKER_COUNT": xdist} if xdist else {}
    return decide_session(settings, visible_gpus=gpus, environ=environ)


# ------------------------------------------------------------------ decide_session, pure


def test_defaults_on_a_cpu_only_host_split_the_cpu_and_touch_no_gpu() -> None:
    p = plan_for(0)
    assert (p.virtual_cpus, p.strategies) == (2, ("default", "one_device", "mirrored"))
    assert (p.hide_gpus, p.memory_growth, p.memory_limit_mb, p.env) == (False, False, None, ())
    assert p.xdist_workers is None
    assert {name for name, source in p.sources if source == "default"} == {
        "activate",
        "virtual_cpus",
        "strategies",
        "gpu_memory",
        "hide_gpus",
        "logical_gpus",
    }
    assert p.reasons == ("no GPU visible: no GPU memory setting to apply",)


@pytest.mark.parametrize("gpus", [0, 1, 4])
@pytest.mark.parametrize("xdist", [None, "1", "8"])
@pytest.mark.parametrize("memory", ["growth", "none", "2048"])
def test_gpu_memory_follows_the_setting_wherever_there_are_gpus(
    gpus: int, xdist: str | None, memory: str
) -> None:
    p = plan_for(gpus, xdist, gpu_memory=Setting(memory, "--tfplace-gpu-memory"))
    assert p.memory_growth == (gpus > 0 and memory == "growth")
    assert p.memory_limit_mb == (2048 if gpus and memory == "2048" else None)
    assert p.hide_gpus is False
    assert p.gpu_memory == ("2048 MB" if memory == "2048" else memory)
    assert p.xdist_workers == (int(xdist) if xdist else None)
    assert p.source("gpu_memory") == "--tfplace-gpu-memory"
    # processes the tests start (tfplace_workers) grow too, through the environment
    assert p.env == ((("TF_FORCE_GPU_ALLOW_GROWTH", "true"),) if p.memory_growth else ())
    shared = gpus and xdist == "8"
    assert ("shared by 8 xdist workers" in p.reasons[0]) == bool(shared)
    if shared and memory == "2048":
        assert "together 16384 MB of each GPU" in p.reasons[0]
    if shared and memory == "none":
        assert "the other workers run out of memory" in p.reasons[0]


def test_a_growth_variable_the_user_set_is_left_alone() -> None:
    p = decide_session(
        {}, visible_gpus=1, environ={"TF_FORCE_GPU_ALLOW_GROWTH": "false", "OTHER": "x"}
    )
    assert p.memory_growth is True
    assert p.env == ()


@pytest.mark.parametrize("gpus", [0, 1, 4])
@pytest.mark.parametrize("source", ["--tfplace-hide-gpus", "ini tfplace_hide_gpus"])
def test_hiding_gpus_wins_over_memory_settings(gpus: int, source: str) -> None:
    p = plan_for(
        gpus,
        "4",
        hide_gpus=Setting("true", source),
        gpu_memory=Setting("1024", "ini tfplace_gpu_memory"),
    )
    assert (p.hide_gpus, p.memory_growth, p.memory_limit_mb) == (True, False, None)
    assert p.env == (("CUDA_VISIBLE_DEVICES", "-1"),)
    assert p.gpu_memory == "unused (GPUs hidden)"
    assert p.source("hide_gpus") == source
    assert source in p.reasons[0]
    assert "'1024' (ini tfplace_gpu_memory) ignored" in p.reasons[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("yes", True), ("off", False), ("0", False)],
)
def test_flags_read_as_ini_and_toml_write_them(text: str, expected: bool) -> None:
    # pyproject's `tfplace_hide_gpus = true` reaches the plugin as the text "True"
    assert plan_for(1, hide_gpus=Setting(text, "ini tfplace_hide_gpus")).hide_gpus is expected


@pytest.mark.parametrize("source", ["--tfplace-x", "ini tfplace_x"])
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("virtual_cpus", "zero", "must be a positive integer, found 'zero'"),
        ("virtual_cpus", "0", "must be a positive integer, found '0'"),
        ("strategies", "horovod", "lists unknown strategy kind(s) ['horovod']"),
        ("strategies", " , ", "lists unknown strategy kind(s) [' , ']"),
        ("gpu_memory", "lots", "must be growth, none or a limit in MB per GPU"),
        ("gpu_memory", "-5", "must be growth, none or a limit in MB per GPU"),
        ("hide_gpus", "maybe", "must be true or false, found 'maybe'"),
        ("activate", "sometimes", "must be auto or always, found 'sometimes'"),
    ],
)
def test_bad_values_name_where_they_came_from(
    source: str, name: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=r"^tfplace: ") as err:
        decide_session({name: Setting(value, source)}, visible_gpus=1, environ={})
    assert f"{source} {message}" in str(err.value)


def test_a_bad_xdist_worker_count_names_the_environment_variable() -> None:
    with pytest.raises(ValueError, match="environment PYTEST_XDIST_WORKER_COUNT must be"):
        plan_for(1, "many")


def test_the_plan_is_frozen_and_rejects_unknown_inputs() -> None:
    p = plan_for(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.memory_growth = False  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['gpu_memroy'\]"):
        decide_session({"gpu_memroy": Setting("none")}, visible_gpus=0, environ={})
    with pytest.raises(ValueError, match="visible_gpus must be an int >= 0, found -1"):
        decide_session({}, visible_gpus=-1, environ={})


def test_this_suite_opts_in_and_gets_its_two_virtual_cpus(pytestconfig: pytest.Config) -> None:
    state = pytestconfig.stash[pytest_plugin._STATE_KEY]
    assert state.active_because == "ini tfplace_activate = always"
    assert state.status["cpus"] == "applied"
    assert tfplace.inventory().cpu.logical_devices == 2


# ------------------------------------------------------------------ inert unless used


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    for key in ("TF_CONFIG", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize("tensorflow", ["installed", "absent"])
def test_a_project_not_using_tfplace_is_left_alone(
    pytester: pytest.Pytester, tensorflow: str
) -> None:
    pytester.makeconftest(RECORDER + (NO_TENSORFLOW if tensorflow == "absent" else ""))
    # settings alone do not activate the plugin; only their use does
    pytester.makeini("[pytest]\ntfplace_virtual_cpus = 4\ntfplace_hide_gpus = true\n")
    pytester.makepyfile(
        test_plain="""
        import sys
        def test_one():
            assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
        def test_two():
            assert 1 + 1 == 2
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "tfplace:" not in result.stdout.str()
    assert facts(pytester) == {"heavy": [], "active": None, "CUDA_VISIBLE_DEVICES": CVD}


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_without_tensorflow_fake_hardware_still_works_and_the_header_says_so(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(NO_TENSORFLOW)
    pytester.makepyfile(
        test_fake="""
        import tfplace

        def test_two_gpus(tfplace_fake_hardware):
            tfplace_fake_hardware(gpus=2)
            assert tfplace.plan().kind == "mirrored"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "tfplace: devices /CPU:0; TensorFlow not installed, *; active because fixture "
            "tfplace_fake_hardware used by test_fake.py::test_two_gpus",
            "tfplace: virtual CPUs 2 (from default, not applied: TensorFlow is not installed)*",
        ]
    )


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_a_marker_activates_and_a_late_start_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_late="""
        import pytest
        import tensorflow as tf

        tf.constant(1.0)  # starts TensorFlow's runtime while the module is imported

        @pytest.mark.tfplace_gpus(64)
        def test_many_gpus():
            raise AssertionError("no machine has 64 GPUs")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*active because marker tfplace_gpus on test_late.py::test_many_gpus",
            "tfplace: virtual CPUs 2 (from default, NOT applied: TensorFlow had already started*"
            "tfplace_activate = always)*",
            "*needs 64 GPU(s); * visible*",
        ]
    )


# ------------------------------------------------------------------ using it

USER_TEST = """
import numpy as np
import pytest
import keras
import tfplace


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
    gpus = len(tfplace.inventory().visible_gpus)
    # one replica per visible GPU; without GPUs, one per virtual CPU (the plugin makes 2)
    assert tfplace_strategy.num_replicas_in_sync == (gpus or 2)


@pytest.mark.tfplace_gpus(2)
def test_needs_two_gpus():
    assert len(tfplace.inventory().visible_gpus) >= 2


@pytest.mark.tfplace_tpu
def test_needs_a_tpu():
    assert tfplace.inventory().tpu.present
"""


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_user_file_runs_under_three_strategies_with_no_conftest(
    pytester: pytest.Pytester,
) -> None:
    # What the child's hardware implies (it inherits this process's environment).
    inv = tfplace.inventory()
    gpus = len(inv.visible_gpus)
    one_device = "GPU:0" if gpus else "CPU:0"
    mirrored = f"{gpus}xGPU" if gpus else "2xCPU"
    devices = ", ".join([f"/GPU:{i}" for i in range(gpus)] + ["/CPU:0", "/CPU:1"])
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(
        passed=4 + (gpus >= 2) + inv.tpu.present, skipped=(gpus < 2) + (not inv.tpu.present)
    )
    out = result.stdout.str()
    assert "test_training_works_under_every_strategy[default] PASSED" in out
    assert f"test_training_works_under_every_strategy[one_device-{one_device}] PASSED" in out
    assert f"test_training_works_under_every_strategy[mirrored-{mirrored}] PASSED" in out
    assert f"test_only_mirrored[mirrored-{mirrored}] PASSED" in out
    if gpus < 2:
        assert f"needs 2 GPU(s); {gpus} visible" in out
    if not inv.tpu.present:
        assert "needs a TPU; none attached" in out
    assert f"tfplace: devices {devices};" in out
    assert "active because fixture tfplace_strategy used by test_user.py::" in out
    assert "virtual CPUs 2 (from default, applied)" in out
    memory = "growth (from default); applied" if gpus else "growth (from default); nothing"
    assert f"tfplace: GPUs {gpus} visible; hide GPUs no (from default); GPU memory {memory}" in out


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_options_and_ini_keys(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORDER)
    pytester.makeini(
        "[pytest]\ntfplace_strategies = mirrored\ntfplace_gpu_memory = none\n"
        "tfplace_virtual_cpus = 5\n"  # the command line wins
    )
    pytester.makepyfile(
        test_x="""
        import os

        def test_x(tfplace_strategy):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1"  # for processes tests start
            assert tfplace_strategy.num_replicas_in_sync == 3  # GPUs hidden: on any machine
        """
    )
    result = pytester.runpytest_subprocess(
        "-v", "--tfplace-virtual-cpus", "3", "--tfplace-hide-gpus"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*; active because --tfplace-virtual-cpus given",
            "*virtual CPUs 3 (from --tfplace-virtual-cpus, applied); strategies mirrored "
            "(from ini tfplace_strategies)*",
            "*hide GPUs yes (from --tfplace-hide-gpus); GPU memory unused (GPUs hidden) "
            "(from ini tfplace_gpu_memory)*",
            "tfplace: GPUs hidden (--tfplace-hide-gpus)*",
            "*'none' (ini tfplace_gpu_memory) ignored*",
            "*test_x[[]mirrored-3xCPU[]] PASSED*",
        ]
    )
    assert facts(pytester)["CUDA_VISIBLE_DEVICES"] == CVD  # restored at the end


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_ini_opt_in_activates_before_collection(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntfplace_activate = always\n")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # shown in the header, before collection, with the split applied
    result.stdout.fnmatch_lines(
        [
            "*active because ini tfplace_activate = always",
            "*virtual CPUs 2 (from default, applied)*",
            "collected 1 item",
        ]
    )


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(
    ("args", "ini", "env", "message"),
    [
        (
            ["--tfplace-virtual-cpus", "zero"],
            "",
            {},
            "tfplace: --tfplace-virtual-cpus must be a positive integer, found 'zero'",
        ),
        (
            ["--tfplace-strategies", "horovod"],
            "",
            {},
            "tfplace: --tfplace-strategies lists unknown strategy",
        ),
        ([], "tfplace_gpu_memory = lots", {}, "tfplace: ini tfplace_gpu_memory must be growth"),
        (
            ["--tfplace-virtual-cpus", "2"],
            "",
            {"PYTEST_XDIST_WORKER_COUNT": "x"},
            "tfplace: environment PYTEST_XDIST_WORKER_COUNT must be an integer, found 'x'",
        ),
    ],
)
@pytest.mark.slow
def test_bad_option_values_say_where_they_came_from(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    ini: str,
    env: dict[str, str],
    message: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.usefixtures("quiet")
def test_help_lists_the_options_and_stays_inert(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORDER)
    result = pytester.runpytest_subprocess("--help", "--tfplace-hide-gpus")
    assert result.ret == 0
    out = result.stdout.str()
    for flag in ("--tfplace-virtual-cpus=N", "--tfplace-gpu-memory=MODE", "--tfplace-hide-gpus"):
        assert flag in out
    assert "tfplace_activate (string):" in out
    assert facts(pytester)["heavy"] == []


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # Two workers on one host share it; on a GPU host they would share one GPU, which NCCL
    # refuses, so the workers run on the CPU (what the replica count above assumes).
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tfplace-hide-gpus")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*tfplace_workers: a worker failed (exit 4)*", "*--- worker 0*"])


@pytest.mark.slow
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


def test_plugin_module_is_registered_and_imports_nothing_heavy(
    pytestconfig: pytest.Config,
) -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "tfplace"]
    assert eps and eps[0].value == "tfplace.pytest_plugin"
    assert pytestconfig.pluginmanager.get_plugin("tfplace") is pytest_plugin
    loaded = run_json(
        """
        import json, sys
        import tfplace.pytest_plugin
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split(".")[0] in ("tfplace", "tensorflow", "keras"))))
        """
    )
    assert loaded == [
        "tfplace",
        "tfplace._decide",
        "tfplace._decide.session",
        "tfplace.errors",
        "tfplace.pytest_plugin",
    ]
    assert Path(pytest_plugin.__file__).parent == Path(tfplace.__file__).parent
    assert sys.modules["tfplace.pytest_plugin"] is pytest_plugin


@pytest.mark.slow
def test_a_project_runs_under_pytest_xdist(pytester: pytest.Pytester) -> None:
    """Each xdist worker process activates the plugin on its own and runs its share."""
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_par="""
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_each(tfplace_strategy, i):
            assert tfplace_strategy.num_replicas_in_sync >= 1
            assert os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    # 4 cases x the three default strategy kinds, spread over two worker processes
    result.assert_outcomes(passed=12)


def test_logical_gpus_split_a_one_gpu_host_for_mirrored_tests() -> None:
    settings = {
        "logical_gpus": Setting("2", "--tfplace-logical-gpus"),
        "gpu_memory": Setting("4096", "--tfplace-gpu-memory"),
    }
    p = pytest_plugin.decide_session(settings, visible_gpus=1, environ={})
    assert (p.logical_gpus, p.memory_limit_mb, p.memory_growth) == (2, 4096, False)
    assert "mirrored tests run over 2 GPUs" in p.reasons[-1]
    # no GPU: nothing to split, and the setting is harmless
    assert pytest_plugin.decide_session(settings, visible_gpus=0, environ={}).logical_gpus == 1
    with pytest.raises(ValueError, match=r"--tfplace-logical-gpus = 2 needs a GPU memory limit"):
        pytest_plugin.decide_session(
            {"logical_gpus": Setting("2", "--tfplace-logical-gpus")}, visible_gpus=1, environ={}
        )


# ------------------------------------------------------------------ strategy matrix (TF#61314)

MATRIX_TEST = """
import numpy as np
import pytest
import keras
import tensorflow as tf


@pytest.mark.parametrize("replicas", [2, 4, 2])
def test_sync_batchnorm_trains(replicas):
    strategy = tf.distribute.MirroredStrategy([f"/CPU:{i}" for i in range(replicas)])
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                                  keras.layers.BatchNormalization(synchronized=True),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)
"""


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_a_strategy_matrix_in_one_process_cannot_collapse(pytester: pytest.Pytester) -> None:
    """MirroredStrategy over 2 CPUs in one test, over 4 in the next: without fresh collective
    keys per test the second joins the group the first registered with size 2, and every later
    collective aborts (tensorflow#61314); the active plugin gives each test keys of its own."""
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--tfplace-virtual-cpus=4", timeout=300
    )
    result.assert_outcomes(passed=3)
    # the same tests, the CPU split the same way, without the plugin: they collapse
    pytester.makeconftest(
        "import tfplace\ntfplace.configure_cpus(threads=None, virtual_devices=4)\n"
    )
    bare = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:tfplace", "-v", timeout=300
    )
    # Which later test sees the abort varies from run to run (it may surface in the test after
    # the one whose collective joined the wrong group), so the control asserts the collapse
    # itself: the first test passes, at least one later one fails on the group-size mismatch
    # (the op that reports the abort first may say "cancelled" instead of the sizes).
    outcomes = bare.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 3, outcomes
    assert outcomes.get("failed", 0) >= 1, outcomes
    bare.stdout.fnmatch_lines(["*test_sync_batchnorm_trains?2_0? PASSED*"])
    mismatch = r"joining a group with size ?\d, but that group has size \d|was cancelled"
    assert re.search(mismatch, bare.stdout.str() + bare.stderr.str())
