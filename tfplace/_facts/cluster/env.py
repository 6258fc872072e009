"""The cluster this process belongs to, from whichever source the environment has (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tfplace._facts.cluster.slurm import parse_slurm
from tfplace._facts.cluster.spec import ClusterSpec, parse_tf_config

__all__ = ["from_env"]


def from_env(
    env: Mapping[str, str] | None = None, *, port: int | None = None
) -> ClusterSpec | None:
    """The cluster this process belongs to: ``TF_CONFIG`` when set, else a multi-task SLURM step.

    Reads the environment only: no TensorFlow, no network, no installed-package scan.

    Args:
        env: the environment to read (default: ``os.environ``).
        port: the first port of a SLURM step's workers (:func:`slurm_port`); TF_CONFIG names
            its own ports.

    Returns:
        The validated cluster, or None outside a cluster.

    Raises:
        ClusterConfigError: ``TF_CONFIG`` or the SLURM variables are malformed.

    Example:
        >>> from_env({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, '
        ...                        '"task": {"type": "worker", "index": 1}}'}).is_chief
        False
        >>> from_env({}) is None
        True
    """
    if env is None:
        env = os.environ
    return parse_tf_config(env.get("TF_CONFIG") or "") or parse_slurm(env, port=port)
