"""Shared test set-up: this test process runs TensorFlow with two virtual CPU devices."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import tfplace

# Before anything in this process can start TensorFlow's runtime: two logical CPUs, so that
# in-process tests can run multi-replica strategies. Tests needing other settings run fresh.
tfplace.configure_cpus(virtual_devices=2)
