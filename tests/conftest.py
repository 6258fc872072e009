"""Shared test set-up.

This suite opts in to the tfplace pytest plugin (``tfplace_activate = "always"`` in
pyproject.toml), so the plugin splits the CPU into two virtual devices before any test module is
imported and in-process tests can run multi-replica strategies; on a GPU host each test process
gets GPU memory growth. Tests needing other settings run in a fresh process (helpers.run_fresh).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["pytester"]


TIERS = ("pure", "tf", "slow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is in one tier (docs/architecture.md): ``pure``, ``tf`` or ``slow``."""
    untiered = [i.nodeid for i in items if not any(i.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(
            f"tests without a tier marker ({', '.join(TIERS)}): {untiered[:5]}; add "
            "pytestmark = pytest.mark.<tier> to the module or mark the test"
        )
    # Longest first, so under -n the last tests to start are short ones and no worker idles
    # at the end while the other finishes a two-minute engine test: slow, then tf, then pure,
    # each in collection order (the same order in every xdist worker, as xdist requires).
    items.sort(
        key=lambda i: next(n for n, t in enumerate(reversed(TIERS)) if i.get_closest_marker(t))
    )
