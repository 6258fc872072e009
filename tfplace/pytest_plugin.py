"""pytest plugin: test Keras code under every strategy on any machine, with no conftest.

Installing tfplace registers this module through the ``pytest11`` entry point; ``-p no:tfplace``
disables it.

Inert until used. Registering the plugin imports no TensorFlow and changes nothing. The plugin
*activates* (imports TensorFlow, splits the CPU, configures the GPUs, adds its report lines) only
when the session uses it: a test requests a tfplace fixture or carries a tfplace marker (seen at
collection, before any test runs), a ``--tfplace-*`` option is given on the command line, or the
ini key ``tfplace_activate = always`` asks for it (then it activates in ``pytest_configure``,
before test modules are imported: use that when test modules start TensorFlow at import).

On activation each test process gets (see :func:`decide_session`, which decides it from the
settings, the visible GPUs and pytest-xdist's worker count):

* the CPU split into N virtual devices, so ``mirrored`` runs on a CPU-only machine;
* on a host with GPUs, GPU memory growth, so several test processes (pytest-xdist workers and
  the processes tests start) share a GPU instead of the first mapping all of it;
* with ``--tfplace-hide-gpus``, no GPU at all (a CPU-only run on a GPU host);
* before each test, collective keys no earlier test used, so the strategies of a strategy
  matrix (``MirroredStrategy`` over 2 devices in one test, over 4 in the next) cannot collapse
  into one another's collective groups (tensorflow#61314).

Options (command line, or the ini key in brackets):
    --tfplace-virtual-cpus N     [tfplace_virtual_cpus]  split the CPU into N devices (default 2)
    --tfplace-strategies LIST    [tfplace_strategies]    kinds offered to ``tfplace_strategy``
    --tfplace-gpu-memory MODE    [tfplace_gpu_memory]    growth (default), none, or MB per GPU
    --tfplace-hide-gpus          [tfplace_hide_gpus]     hide every GPU from the tests
    (ini only)                   [tfplace_activate]      auto (default) or always

Fixtures:
    tfplace_strategy        a tf.distribute.Strategy; the test runs once per offered kind
    tfplace_workers         run a function or script in N local workers, get their results
    tfplace_fake_hardware   make tfplace's decisions see other hardware for one test

Markers:
    @pytest.mark.tfplace_strategies("mirrored", ...)   narrow the kinds for one test
    @pytest.mark.tfplace_gpus(n)                       skip unless n GPUs are visible
    @pytest.mark.tfplace_tpu                           skip unless a TPU is attached

Example:
    >>> from tfplace.pytest_plugin import Setting, decide_session
    >>> p = decide_session({"gpu_memory": Setting("growth", "--tfplace-gpu-memory")},
    ...                  visible_gpus=1, environ={"PYTEST_XDIST_WORKER_COUNT": "4"})
    >>> p.memory_growth, p.xdist_workers, p.source("gpu_memory")
    (True, 4, '--tfplace-gpu-memory')
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import os
import pickle
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tfplace._decide.session import (
    KINDS,
    SETTINGS,
    XDIST_ENV,
    SessionSetup,
    Setting,
    activate_always,
    decide_session,
)
from tfplace.errors import AlreadyInitializedError

__all__ = ["Setting", "decide_session"]

_FIXTURES = ("tfplace_strategy", "tfplace_workers", "tfplace_fake_hardware")
_MARKERS = ("tfplace_strategies", "tfplace_gpus", "tfplace_tpu")
#: Help texts, defined once for the command-line option and its ini key.
_HELP = {
    "activate": "auto (default): set TensorFlow up only when the session uses a tfplace fixture, "
    "marker or --tfplace-* option, decided after collection; always: in every session, before "
    "test modules are imported",
    "virtual_cpus": "split the CPU into N virtual devices before TensorFlow starts, so "
    "multi-replica strategies run on a CPU-only machine (default: 2; 1 turns it off)",
    "strategies": "comma-separated strategy kinds the tfplace_strategy fixture runs each test "
    "under (default: default,one_device,mirrored)",
    "gpu_memory": "GPU memory of each test process: growth (default: allocate as needed, so "
    "pytest-xdist workers share a GPU), none (TensorFlow's default: map nearly all of it) or a "
    "limit in MB per GPU",
    "logical_gpus": "split each visible GPU into N logical GPUs (needs --tfplace-gpu-memory=MB, "
    "the memory of each), so a one-GPU host runs 'mirrored over 2 GPUs' tests (default: 1)",
    "hide_gpus": "hide every GPU from the tests for a CPU-only run (TensorFlow in the test "
    "process, and CUDA_VISIBLE_DEVICES=-1 for the processes tests start; restored at the end)",
}
_STATE_KEY = pytest.StashKey["_Session"]()
_RESULT_MARK = "@@tfplace-result@@"


# ------------------------------------------------------------------ options and activation


def _option(name: str) -> str:
    """The command-line option of setting ``name``: ``gpu_memory`` -> ``--tfplace-gpu-memory``."""
    return f"--tfplace-{name.replace('_', '-')}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tfplace", "tfplace: TensorFlow devices and strategies")
    for name, metavar in (
        ("virtual_cpus", "N"),
        ("strategies", "LIST"),
        ("gpu_memory", "MODE"),
        ("logical_gpus", "N"),
    ):
        group.addoption(
            _option(name),
            dest=f"tfplace_{name}",
            default=None,
            metavar=metavar,
            help=_HELP[name],
        )
    group.addoption(
        _option("hide_gpus"),
        dest="tfplace_hide_gpus",
        action="store_const",
        const="true",
        default=None,
        help=_HELP["hide_gpus"],
    )
    for name in SETTINGS:
        parser.addini(f"tfplace_{name}", _HELP[name], default="")


def _settings(config: pytest.Config) -> dict[str, Setting]:
    """Each setting's text and source: the command line, else the ini file, else the default."""
    out: dict[str, Setting] = {}
    for name, default in SETTINGS.items():
        given = config.getoption(f"tfplace_{name}", None)
        ini = str(config.getini(f"tfplace_{name}") or "")
        if given is not None:
            out[name] = Setting(str(given), _option(name))
        elif ini.strip():
            out[name] = Setting(ini, f"ini tfplace_{name}")
        else:
            out[name] = Setting(default)
    return out


@dataclass
class _Session:
    """The plugin's per-session state (in ``config.stash``)."""

    settings: dict[str, Setting]
    plan: SessionSetup
    active_because: str | None = None
    status: dict[str, str] = field(default_factory=dict)
    inventory: Any = None
    saved_env: dict[str, str | None] = field(default_factory=dict)
    header_shown: bool = False
    strategies: dict[str, Any] = field(default_factory=dict)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tfplace_strategies(*kinds): run this test only under these strategy kinds"
    )
    config.addinivalue_line("markers", "tfplace_gpus(n=1): skip unless n GPUs are visible")
    config.addinivalue_line("markers", "tfplace_tpu: skip unless a TPU is attached")
    settings = _settings(config)
    try:  # validate the settings now, with no TensorFlow: a typo fails every session alike
        plan = decide_session(settings, visible_gpus=0, environ={})
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    config.stash[_STATE_KEY] = _Session(settings=settings, plan=plan)
    explicit = [s.source for s in settings.values() if s.source.startswith("--")]
    if getattr(config.option, "help", False):
        return  # pytest --help runs no test
    if activate_always(settings["activate"]):
        _activate(config, f"{settings['activate'].source} = always")
    elif explicit:
        _activate(config, f"{explicit[0]} given")


def _activate(config: pytest.Config, because: str) -> _Session:
    """Set TensorFlow up for this test process, once; later calls return the same state."""
    state = config.stash[_STATE_KEY]
    if state.active_because is not None:
        return state
    state.active_because = because
    from tfplace import _tf

    try:
        seam: _tf.TFConfig | None = _tf.TFConfig()
    except ImportError:
        seam = None
    visible = len(seam.get_visible("GPU")) if seam is not None else 0
    try:
        state.plan = plan = decide_session(state.settings, visible_gpus=visible, environ=os.environ)
    except ValueError as err:  # only the environment can be bad here; settings were checked
        raise pytest.UsageError(str(err)) from None
    _set_env(plan.env, state.saved_env)
    if seam is None:
        state.status = dict.fromkeys(("cpus", "gpus"), "not applied: TensorFlow is not installed")
    else:
        state.status = _apply(plan)
    from tfplace._facts.inventory import inventory

    state.inventory = inventory()
    return state


def _apply(plan: SessionSetup) -> dict[str, str]:
    """Apply ``plan`` to TensorFlow (the only place the plugin configures it)."""
    from tfplace._configure import configure_cpus, configure_gpus

    late = (
        "NOT applied: TensorFlow had already started (e.g. in a conftest or a test module at "
        "import); set the ini key tfplace_activate = always"
    )
    status = {"cpus": "not needed", "gpus": "nothing to apply"}
    if plan.virtual_cpus > 1:
        try:
            configure_cpus(threads=None, virtual_devices=plan.virtual_cpus)
            status["cpus"] = "applied"
        except AlreadyInitializedError:
            status["cpus"] = late
    gpu_kwargs: dict[str, Any] = {}
    if plan.hide_gpus and plan.visible_gpus:
        gpu_kwargs = {"visible": []}
    elif plan.memory_growth:
        gpu_kwargs = {"memory_growth": True}
    elif plan.memory_limit_mb is not None:
        gpu_kwargs = {"memory_limit_mb": plan.memory_limit_mb}
        if plan.logical_gpus > 1:
            gpu_kwargs["logical_gpus"] = plan.logical_gpus
    if gpu_kwargs:
        try:
            configure_gpus(**gpu_kwargs)
            status["gpus"] = "applied"
        except AlreadyInitializedError:
            status["gpus"] = late
    return status


def _set_env(items: Iterable[tuple[str, str]], saved: dict[str, str | None]) -> None:
    """Set each variable, first keeping its value from before in ``saved`` (None: unset)."""
    for key, value in items:
        saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put back the variables ``_set_env`` changed, and forget them."""
    for key, old in saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    saved.clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    _restore_env(state.saved_env)


def _uses_tfplace(item: pytest.Item) -> str | None:
    names = getattr(item, "fixturenames", ())
    for fixture in _FIXTURES:
        if fixture in names:
            return f"fixture {fixture} used by {item.nodeid}"
    for marker in _MARKERS:
        if item.get_closest_marker(marker) is not None:
            return f"marker {marker} on {item.nodeid}"
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # After collection and deselection, before any test runs: the last moment to split the CPU.
    if config.stash[_STATE_KEY].active_because is not None:
        return
    for item in items:
        because = _uses_tfplace(item)
        if because is not None:
            _activate(config, because)
            return


def _header(state: _Session) -> list[str]:
    inv, plan = state.inventory, state.plan
    gpus = str(plan.visible_gpus)
    workers = (
        f"; {plan.xdist_workers} xdist workers (from environment {XDIST_ENV})"
        if plan.xdist_workers
        else ""
    )
    return [
        f"tfplace: devices {', '.join(inv.local_device_names)}; TensorFlow "
        f"{inv.tensorflow.version if inv.tensorflow else 'not installed'}, {inv.keras.flavour}; "
        f"active because {state.active_because}",
        f"tfplace: virtual CPUs {plan.virtual_cpus} (from {plan.source('virtual_cpus')}, "
        f"{state.status['cpus']}); strategies {', '.join(plan.strategies)} "
        f"(from {plan.source('strategies')})",
        f"tfplace: GPUs {gpus} visible{workers}; hide GPUs {'yes' if plan.hide_gpus else 'no'} "
        f"(from {plan.source('hide_gpus')}); GPU memory {plan.gpu_memory} "
        f"(from {plan.source('gpu_memory')}); {state.status['gpus']}",
        *(f"tfplace: {reason}" for reason in plan.reasons),
    ]


def _header_once(config: pytest.Config) -> list[str]:
    """The header lines, the first time they are asked for once the plugin is active."""
    state = config.stash.get(_STATE_KEY, None)
    if state is None or state.active_because is None or state.header_shown:
        return []
    state.header_shown = True
    return _header(state)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _header_once(config)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    # Activated during collection: the header was not shown at the start; show it now.
    return _header_once(config)


def _marker_kinds(metafunc: pytest.Metafunc, offered: Sequence[str]) -> list[str]:
    marker = metafunc.definition.get_closest_marker("tfplace_strategies")
    if marker is None:
        return list(offered)
    wanted = [str(k) for k in marker.args]
    bad = [k for k in wanted if k not in KINDS]
    if bad or not wanted:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: tfplace_strategies({', '.join(map(repr, wanted))}) "
            f"names unknown kind(s) {bad}; expected some of {', '.join(KINDS)}"
        )
    return [k for k in offered if k in wanted] or wanted


def _test_id(kind: str, inv: Any) -> str:
    from tfplace._decide.strategy import plan

    try:
        p = plan(kind, inventory=inv)
    except Exception:  # an id must never break collection
        return kind
    if kind == "default":
        return "default"
    if kind == "one_device":
        return f"one_device-{p.devices[0].lstrip('/')}"
    dev = p.devices[0].lstrip("/").split(":")[0]
    return f"mirrored-{p.num_replicas_in_sync}x{dev}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tfplace_strategy" not in metafunc.fixturenames:
        return
    # The ids name the devices, so the CPU split must be in place before they are computed.
    state = _activate(
        metafunc.config, f"fixture tfplace_strategy used by {metafunc.definition.nodeid}"
    )
    kinds = _marker_kinds(metafunc, state.plan.strategies)
    ids = [_test_id(k, state.inventory) for k in kinds]
    metafunc.parametrize("tfplace_strategy", kinds, indirect=True, ids=ids)


@pytest.fixture
def tfplace_strategy(request: pytest.FixtureRequest) -> Any:
    """A ``tf.distribute.Strategy``; the test runs once per offered kind.

    Kinds: ``default``, ``one_device`` (the first GPU, else the CPU) and ``mirrored`` (one
    replica per visible GPU, else one per virtual CPU). Narrow them per test with
    ``@pytest.mark.tfplace_strategies("mirrored")``. Requesting it activates the plugin.

    Example::

        def test_fit(tfplace_strategy):
            with tfplace_strategy.scope():
                model = build_model()
    """
    state = _activate(
        request.config, f"fixture tfplace_strategy requested by {request.node.nodeid}"
    )
    kind = getattr(request, "param", "default")
    if kind not in state.strategies:
        from tfplace._strategy import pick_strategy

        state.strategies[kind] = pick_strategy(kind)
    return state.strategies[kind]


def pytest_runtest_setup(item: pytest.Item) -> None:
    _fresh_collective_keys(item.config)
    gpus = item.get_closest_marker("tfplace_gpus")
    tpu = item.get_closest_marker("tfplace_tpu")
    if gpus is None and tpu is None:
        return
    inv = _activate(item.config, f"marker on {item.nodeid}").inventory
    if gpus is not None:
        need = int(gpus.args[0]) if gpus.args else int(gpus.kwargs.get("n", 1))
        have = len(inv.visible_gpus)
        if have < need:
            pytest.skip(f"needs {need} GPU(s); {have} visible")
    if tpu is not None and not inv.tpu.present:
        pytest.skip("needs a TPU; none attached")


def _fresh_collective_keys(config: pytest.Config) -> None:
    """Before each test of an active session: the ``MirroredStrategy`` objects a test builds
    get collective keys no earlier test's strategy used. A strategy matrix (2 replicas in one
    test, 4 in the next) otherwise joins a collective group registered with another size, and
    every later collective in the process aborts (tensorflow#61314)."""
    state = config.stash.get(_STATE_KEY, None)
    if state is None or state.active_because is None or sys.modules.get("tensorflow") is None:
        return
    from tfplace import _tf

    _tf.fresh_collective_keys()


# ------------------------------------------------------------------ multi-worker fixture


@dataclass(frozen=True)
class WorkerResult:
    """What one worker of :func:`tfplace_workers` returned.

    Attributes:
        index: the worker's index.
        returncode: its exit code.
        value: the function's return value (unpickled), or None for scripts and failures.
        output: everything it printed (without the ``[worker i]`` prefix).
    """

    index: int
    returncode: int | None
    value: Any
    output: str


_CHILD = """
import base64, importlib.util, pickle, sys
spec = importlib.util.spec_from_file_location("__tfplace_worker__", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
value = getattr(module, {name!r})(*pickle.loads(base64.b64decode({args!r})))
print({mark!r} + base64.b64encode(pickle.dumps(value)).decode(), flush=True)
"""


class _Workers:
    """Callable behind the ``tfplace_workers`` fixture."""

    def __call__(
        self,
        target: Callable[..., Any] | str | os.PathLike[str],
        n: int = 2,
        *,
        args: Sequence[Any] = (),
        env: Mapping[str, str] | None = None,
        grace_seconds: float = 5.0,
        check: bool = True,
    ) -> list[WorkerResult]:
        """Run ``target`` in ``n`` local workers of one cluster; return each one's result.

        Args:
            target: a module-level function of a test file (its return value is pickled
                back), or the path of a script.
            n: how many workers.
            args: positional arguments for the function, or command-line arguments for the
                script.
            env: extra environment variables for the workers (TF_CONFIG is set for you).
            grace_seconds: between SIGTERM and SIGKILL when a worker fails.
            check: fail the test when any worker exits non-zero.
        """
        from tfplace.cluster._launch import launch

        if callable(target):
            path = inspect.getsourcefile(target)
            name = getattr(target, "__name__", "")
            if path is None or getattr(target, "__qualname__", name) != name:
                raise TypeError(
                    f"tfplace_workers runs module-level functions of a file; {target!r} is not"
                )
            code = _CHILD.format(
                path=path,
                name=name,
                args=base64.b64encode(pickle.dumps(tuple(args))).decode(),
                mark=_RESULT_MARK,
            )
            command = [sys.executable, "-c", textwrap.dedent(code)]
        else:
            command = [sys.executable, str(Path(target)), *map(str, args)]
        outputs: dict[int, list[str]] = {i: [] for i in range(n)}
        values: dict[int, Any] = {}

        def on_line(index: int, text: str) -> None:
            if text.startswith(_RESULT_MARK):
                values[index] = pickle.loads(base64.b64decode(text[len(_RESULT_MARK) :]))
            else:
                outputs[index].append(text)

        result = launch(
            command,
            n,
            env={**os.environ, **(env or {})},
            grace_seconds=grace_seconds,
            out=io.StringIO(),  # the lines reach on_line; the prefixed copy is not needed
            on_line=on_line,
        )
        results = [
            WorkerResult(i, result.worker_codes[i], values.get(i), "\n".join(outputs[i]))
            for i in range(n)
        ]
        if check and result.returncode != 0:
            details = "\n".join(
                f"--- worker {r.index} (exit {r.returncode})\n{r.output[-2000:]}" for r in results
            )
            pytest.fail(f"tfplace_workers: a worker failed (exit {result.returncode})\n{details}")
        return results


@pytest.fixture
def tfplace_workers() -> _Workers:
    """Run a function or script in N local workers (one TF_CONFIG cluster) and get results.

    Example::

        def train():                       # module level in the test file
            strategy = tfplace.pick_strategy()
            ...
            return history.history["loss"]

        def test_train(tfplace_workers):
            results = tfplace_workers(train, n=2)
            assert results[0].value == results[1].value
    """
    return _Workers()


# ------------------------------------------------------------------ fake hardware


@pytest.fixture
def tfplace_fake_hardware() -> Iterator[Callable[..., Any]]:
    """Make tfplace's decisions see other hardware for the rest of the test.

    Call it with :func:`tfplace.testing.fake_inventory` arguments (``gpus=2``,
    ``compute_capability=(7, 5)``, ``tf_config={...}``, ``platform="win32"``, ...). Every
    tfplace decision (``plan``, ``pick_strategy``'s choice, ``inventory()``) sees that
    machine until the test ends; TensorFlow itself still runs on the real one. Environment
    variables passed as ``set_env={...}`` are set and restored afterwards.
    """
    from tfplace._facts.inventory import Inventory, use_inventory
    from tfplace.testing import fake_inventory

    with contextlib.ExitStack() as stack:
        saved: dict[str, str | None] = {}

        def fake(set_env: Mapping[str, str] | None = None, **kwargs: Any) -> Inventory:
            _set_env((set_env or {}).items(), saved)
            inv = fake_inventory(**kwargs)
            stack.enter_context(use_inventory(inv))
            return inv

        try:
            yield fake
        finally:
            _restore_env(saved)
