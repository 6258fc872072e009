"""pytest plugin: test Keras code under every strategy on a CPU-only CI, with no conftest.

Installing tfplace registers this module through the ``pytest11`` entry point; ``-p no:tfplace``
disables it.

Options (command line, or the ini key in brackets):
    --tfplace-virtual-cpus N   [tfplace_virtual_cpus]   split the CPU into N devices (default 2)
    --tfplace-strategies LIST  [tfplace_strategies]     kinds offered to ``tfplace_strategy``

Fixtures:
    tfplace_strategy        a tf.distribute.Strategy; the test runs once per offered kind
    tfplace_workers         run a function or script in N local workers, get their results
    tfplace_fake_hardware   make tfplace's decisions see other hardware for one test

Markers:
    @pytest.mark.tfplace_strategies("mirrored", ...)   narrow the kinds for one test
    @pytest.mark.tfplace_gpus(n)                       skip unless n GPUs are visible
    @pytest.mark.tfplace_tpu                           skip unless a TPU is attached
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tfplace.errors import AlreadyInitializedError

__all__ = ["WorkerResult"]

_KINDS = ("default", "one_device", "mirrored")
_HELP = {
    "virtual_cpus": "split the CPU into N virtual devices before TensorFlow starts, so "
    "multi-replica strategies run on a CPU-only machine (default: 2; 1 turns it off)",
    "strategies": "comma-separated strategy kinds the tfplace_strategy fixture runs each test "
    "under (default: default,one_device,mirrored)",
}
_STATE_KEY = pytest.StashKey[dict[str, Any]]()
_RESULT_MARK = "@@tfplace-result@@"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tfplace", "tfplace: TensorFlow devices and strategies")
    group.addoption(
        "--tfplace-virtual-cpus",
        dest="tfplace_virtual_cpus",
        default=None,
        metavar="N",
        help=_HELP["virtual_cpus"],
    )
    group.addoption(
        "--tfplace-strategies",
        dest="tfplace_strategies",
        default=None,
        metavar="LIST",
        help=_HELP["strategies"],
    )
    parser.addini("tfplace_virtual_cpus", _HELP["virtual_cpus"], default="2")
    parser.addini("tfplace_strategies", _HELP["strategies"], default=",".join(_KINDS))


def _setting(config: pytest.Config, name: str) -> tuple[str, str]:
    value = config.getoption(f"tfplace_{name}")
    if value is not None:
        return str(value), f"--tfplace-{name.replace('_', '-')}"
    return str(config.getini(f"tfplace_{name}")), f"ini tfplace_{name}"


def _parse_virtual_cpus(config: pytest.Config) -> tuple[int, str]:
    raw, source = _setting(config, "virtual_cpus")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"tfplace: {source} must be a positive integer, found {raw!r}")
    return int(raw), source


def _parse_kinds(config: pytest.Config) -> tuple[tuple[str, ...], str]:
    raw, source = _setting(config, "strategies")
    kinds = tuple(k.strip() for k in raw.split(",") if k.strip())
    bad = [k for k in kinds if k not in _KINDS]
    if bad or not kinds:
        raise pytest.UsageError(
            f"tfplace: {source} lists unknown strategy kind(s) {bad or [raw]}; "
            f"expected some of {', '.join(_KINDS)}"
        )
    return kinds, source


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tfplace_strategies(*kinds): run this test only under these strategy kinds"
    )
    config.addinivalue_line("markers", "tfplace_gpus(n=1): skip unless n GPUs are visible")
    config.addinivalue_line("markers", "tfplace_tpu: skip unless a TPU is attached")
    n, n_source = _parse_virtual_cpus(config)
    kinds, k_source = _parse_kinds(config)
    applied = "not needed"
    if n > 1:
        from tfplace.config import configure_cpus

        try:
            configure_cpus(threads=None, virtual_devices=n)
            applied = "applied"
        except AlreadyInitializedError:
            applied = "NOT applied: TensorFlow had already started (e.g. in a conftest)"
    config.stash[_STATE_KEY] = {
        "virtual_cpus": n,
        "virtual_cpus_source": n_source,
        "virtual_cpus_applied": applied,
        "kinds": kinds,
        "kinds_source": k_source,
        "strategies": {},
    }


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        return []
    from tfplace._inventory import inventory

    inv = inventory()
    devices = inv.local_device_names
    return [
        f"tfplace: devices {', '.join(devices)}; TensorFlow "
        f"{inv.tensorflow.version if inv.tensorflow else 'not installed'}, {inv.keras.flavour}",
        f"tfplace: virtual CPUs {state['virtual_cpus']} (from {state['virtual_cpus_source']}, "
        f"{state['virtual_cpus_applied']}); strategies {', '.join(state['kinds'])} "
        f"(from {state['kinds_source']})",
    ]


def _marker_kinds(metafunc: pytest.Metafunc, offered: Sequence[str]) -> list[str]:
    marker = metafunc.definition.get_closest_marker("tfplace_strategies")
    if marker is None:
        return list(offered)
    wanted = [str(k) for k in marker.args]
    bad = [k for k in wanted if k not in _KINDS]
    if bad or not wanted:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: tfplace_strategies({', '.join(map(repr, wanted))}) "
            f"names unknown kind(s) {bad}; expected some of {', '.join(_KINDS)}"
        )
    return [k for k in offered if k in wanted] or wanted


def _test_id(kind: str) -> str:
    from tfplace._inventory import inventory
    from tfplace._plan import decide

    try:
        p = decide(inventory(), kind)
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
    state = metafunc.config.stash[_STATE_KEY]
    kinds = _marker_kinds(metafunc, state["kinds"])
    metafunc.parametrize("tfplace_strategy", kinds, indirect=True, ids=[_test_id(k) for k in kinds])


@pytest.fixture
def tfplace_strategy(request: pytest.FixtureRequest) -> Any:
    """A ``tf.distribute.Strategy``; the test runs once per offered kind.

    Kinds: ``default``, ``one_device`` (the first GPU, else the CPU) and ``mirrored`` (over the
    GPUs when there are two or more, else over the virtual CPUs). Narrow them per test with
    ``@pytest.mark.tfplace_strategies("mirrored")``.
    """
    kind = getattr(request, "param", "default")
    cache: dict[str, Any] = request.config.stash[_STATE_KEY]["strategies"]
    if kind not in cache:
        from tfplace.strategy import pick_strategy

        cache[kind] = pick_strategy(kind)
    return cache[kind]


def pytest_runtest_setup(item: pytest.Item) -> None:
    gpus = item.get_closest_marker("tfplace_gpus")
    tpu = item.get_closest_marker("tfplace_tpu")
    if gpus is None and tpu is None:
        return
    from tfplace._inventory import inventory

    inv = inventory()
    if gpus is not None:
        need = int(gpus.args[0]) if gpus.args else int(gpus.kwargs.get("n", 1))
        have = len(inv.visible_gpus)
        if have < need:
            pytest.skip(f"needs {need} GPU(s); {have} visible")
    if tpu is not None and not inv.tpu.present:
        pytest.skip("needs a TPU; none attached")


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
        from tfplace._launch import launch

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
    from tfplace._inventory import Inventory, use_inventory
    from tfplace.testing import fake_inventory

    with contextlib.ExitStack() as stack:
        saved: dict[str, str | None] = {}

        def fake(set_env: Mapping[str, str] | None = None, **kwargs: Any) -> Inventory:
            for key, value in (set_env or {}).items():
                saved.setdefault(key, os.environ.get(key))
                os.environ[key] = value
            inv = fake_inventory(**kwargs)
            stack.enter_context(use_inventory(inv))
            return inv

        try:
            yield fake
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
