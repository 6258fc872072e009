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
from hypothesis import HealthCheck, settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Property tests share two cores with engine tests under -n 2: a slow draw is the machine's
# load, not a finding (each test's own @settings still sets its number of examples).
settings.register_profile("tfplace", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tfplace")
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
