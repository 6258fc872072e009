"""The one GPU policy (issue 26.4): every row of ``GPU_POLICY`` run, and the page shows it.

``on_gpu`` runs against this process's logical devices with the GPU count stood in for;
``configure_gpus`` against a fake ``tf.config`` with 0 or 2 GPUs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import FakeGPUMachine

import tfplace
from tfplace import _placement
from tfplace._decide.devices import GPU_POLICY

pytestmark = pytest.mark.tf

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: (request, machine) of each row -> a call that performs it: strict -> the device or config
Action = Callable[[bool, pytest.MonkeyPatch], object]


def _on_gpu(index: int, gpus: int) -> Action:
    def act(strict: bool, monkeypatch: pytest.MonkeyPatch) -> object:
        monkeypatch.setattr(_placement, "_count", lambda kind: gpus if kind == "GPU" else 1)
        with _placement.on_gpu(index, strict=strict) as name:
            return name

    return act


def _configure(gpus: int, **kwargs: object) -> Action:
    def act(strict: bool, monkeypatch: pytest.MonkeyPatch) -> object:
        return tfplace.configure_gpus(
            **kwargs,  # type: ignore[arg-type]
            strict=strict,
            backend=FakeGPUMachine(n=gpus),
        )

    return act


ACTIONS: dict[tuple[str, str], Action] = {
    ("`on_gpu(i)`", "has GPU i"): _on_gpu(1, 2),
    ("`on_gpu(i)`", "has GPUs, not GPU i"): _on_gpu(3, 2),
    ("`on_gpu(i)`", "no GPU"): _on_gpu(0, 0),
    ("`configure_gpus(visible=[...])`", "has those GPUs"): _configure(2, visible=[1]),
    ("`configure_gpus(visible=[...])`", "has GPUs, not all of those"): _configure(
        2, visible=[0, 3]
    ),
    ("`configure_gpus(visible=[...])`", "no GPU"): _configure(0, visible=[0]),
    ("`configure_gpus(memory_growth=True)`", "has GPUs"): _configure(2, memory_growth=True),
    ("`configure_gpus(memory_growth=True)`", "no GPU"): _configure(0, memory_growth=True),
}


def test_every_row_of_the_policy_has_an_action() -> None:
    assert sorted(ACTIONS) == sorted((row[0], row[1]) for row in GPU_POLICY)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("row", GPU_POLICY, ids=[f"{r[0]} on {r[1]}" for r in GPU_POLICY])
def test_each_cell_of_the_gpu_policy(
    row: tuple[str, str, str, str], strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    request, machine, default, with_strict = row
    expected = with_strict if strict else default
    act = ACTIONS[(request, machine)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if "DeviceNotFoundError" in expected:
            with pytest.raises(tfplace.DeviceNotFoundError) as info:
                act(strict, monkeypatch)
            message = str(info.value)
            if "has GPUs" in machine:  # a wrong index: named, with the ones that exist
                assert "do not exist" in message and "Use those indices" in message
                assert "strict=False" not in message
            else:
                assert "no GPU is visible" in message and "tfplace doctor" in message
            return
        result = act(strict, monkeypatch)
    fallbacks = [w for w in caught if issubclass(w.category, tfplace.DeviceFallbackWarning)]
    assert bool(fallbacks) == ("DeviceFallbackWarning" in expected), [str(w) for w in caught]
    if expected == "runs on GPU i":
        assert result == "/GPU:1"
    elif "runs on `/CPU:0`" in expected:
        assert result == "/CPU:0"
    elif expected == "applied":
        assert isinstance(result, tfplace.GPUConfig) and result.visible
        assert result.memory_growth or result.visible == (1,)
    else:  # nothing applied, nothing to configure
        assert isinstance(result, tfplace.GPUConfig) and result.visible == ()


def test_the_placement_page_shows_the_policy_table() -> None:
    page = (DOCS / "placement.md").read_text()
    for request, machine, default, with_strict in GPU_POLICY:
        row = f"| {request} | {machine} | {default} | {with_strict} |"
        assert row in page, row
