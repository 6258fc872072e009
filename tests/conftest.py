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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["pytester"]
