"""Shared test set-up.

The tfplace pytest plugin (installed with the package) splits the CPU into two virtual devices
before TensorFlow starts, so in-process tests can run multi-replica strategies. Tests needing
other settings run in a fresh process (helpers.run_fresh).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["pytester"]
