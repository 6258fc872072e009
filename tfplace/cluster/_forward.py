"""Which variables of the launcher's environment reach workers on other hosts (pure).

ssh does not pass the environment, so the hostfile launcher sends the workers a chosen part of
it. ``TF_`` is not a safe prefix to choose by: it is also Terraform's, whose ``TF_VAR_*``
(input variables, often secrets), ``TF_TOKEN_*`` (registry API tokens) and ``TF_CLI_ARGS*``
must never be copied to every host. So TensorFlow's own variables are forwarded by name, from
the explicit list :data:`TF_VARIABLES`; the other families by prefix
(:data:`FORWARD_PREFIXES`, none of them Terraform's); anything else only when named with
``-x NAME`` (its value here) or ``-x NAME=VALUE`` (that value), as ``mpirun -x`` does.

Example:
    >>> forwarded_env({"TF_CPP_MIN_LOG_LEVEL": "2", "TF_VAR_db_password": "s3cret"})
    {'TF_CPP_MIN_LOG_LEVEL': '2'}
    >>> forwarded_env({"LR": "0.1"}, ["LR", "SEED=3"])
    {'LR': '0.1', 'SEED': '3'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tfplace.errors import ClusterConfigError

__all__ = ["FORWARD_PREFIXES", "TF_VARIABLES", "forward_values", "forwarded_env"]

#: TensorFlow's own environment variables that reach remote workers, by exact name
#: (``TF_CONFIG`` is never forwarded: each worker gets its own).
TF_VARIABLES = (
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_CPP_MAX_VLOG_LEVEL",
    "TF_CPP_VMODULE",
    "TF_CPP_LOG_THREAD_ID",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "TF_GPU_THREAD_MODE",
    "TF_GPU_THREAD_COUNT",
    "TF_FORCE_UNIFIED_MEMORY",
    "TF_GPU_HOST_MEM_LIMIT_IN_MB",
    "TF_XLA_FLAGS",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_CUDNN_USE_AUTOTUNE",
    "TF_USE_LEGACY_KERAS",
    "TF_DUMP_GRAPH_PREFIX",
)

#: Families of variables that reach remote workers by name prefix (none is Terraform's).
FORWARD_PREFIXES = (
    "TFPLACE_", "KERAS_", "PYTHON", "XLA_", "CUDA_", "NCCL_", "OMP_", "KMP_",
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def forward_values(forward: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The variables ``-x`` names, with their values: ``NAME=VALUE`` sets VALUE, a bare ``NAME``
    takes its value from ``env``.

    Raises:
        ClusterConfigError: a bare ``NAME`` that ``env`` does not set, or a malformed entry
            (checked before anything starts).

    Example:
        >>> forward_values(["A=1", "B"], {"B": "2"})
        {'A': '1', 'B': '2'}
    """
    values: dict[str, str] = {}
    for entry in forward:
        name, eq, value = entry.partition("=")
        if not _NAME.match(name):
            raise ClusterConfigError(
                f"launch: -x {entry!r}: expected NAME or NAME=VALUE with NAME a variable "
                "name (letters, digits, _). Fix: write e.g. -x LEARNING_RATE or -x SEED=3"
            )
        if name == "TF_CONFIG":
            raise ClusterConfigError(
                "launch: -x TF_CONFIG: each worker gets its own TF_CONFIG from the launcher; "
                "found it named with -x. Fix: leave it out"
            )
        if not eq and name not in env:
            raise ClusterConfigError(
                f"launch: -x {name}: expected a variable set in the launcher's environment, "
                f"found {name} unset. Fix: export {name}=... before the launch, or give its "
                f"value: -x {name}=VALUE"
            )
        values[name] = value if eq else env[name]
    return values


def forwarded_env(env: Mapping[str, str], forward: Sequence[str] = ()) -> dict[str, str]:
    """The part of ``env`` a remote worker gets: :data:`TF_VARIABLES` by name,
    :data:`FORWARD_PREFIXES` by prefix, and what ``forward`` names (see :func:`forward_values`).

    Raises:
        ClusterConfigError: an entry of ``forward`` is malformed or names an unset variable.

    Example:
        >>> forwarded_env({"TF_CPP_MIN_LOG_LEVEL": "2", "HOME": "/root", "LR": "0.1"}, ["LR"])
        {'TF_CPP_MIN_LOG_LEVEL': '2', 'LR': '0.1'}
    """
    chosen = {
        k: v
        for k, v in env.items()
        if k != "TF_CONFIG" and (k in TF_VARIABLES or k.startswith(FORWARD_PREFIXES))
    }
    return {**chosen, **forward_values(forward, env)}
