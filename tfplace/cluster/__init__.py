"""Clusters: describe one (TF_CONFIG, SLURM, Kubernetes), join it, launch it, restart it.

The public part is the cluster description, :class:`ClusterSpec`, and where it comes from:

- :func:`parse_tf_config` / :func:`parse_slurm` / :func:`from_env` read one from the
  environment (pure: no TensorFlow, no network);
- a Kubernetes Indexed Job's comes from ``tfplace tf-config --k8s`` (the CLI).

The rest of the package is private plumbing behind the top-level functions: the local and
hostfile launcher (``tfplace.launch``), restarts, and the multi-worker strategy with its
barrier (``tfplace.pick_strategy``, ``tfplace.barrier``). Importing this package loads only
the pure parsers.

Example:
    >>> spec = ClusterSpec.from_hosts(["a", "b"], port=2222)
    >>> spec.num_workers, spec.for_task(1).is_chief
    (2, False)
"""

from __future__ import annotations

from tfplace._facts.cluster.env import from_env
from tfplace._facts.cluster.slurm import parse_slurm
from tfplace._facts.cluster.spec import ClusterSpec, parse_tf_config

__all__ = ["ClusterSpec", "from_env", "parse_slurm", "parse_tf_config"]
