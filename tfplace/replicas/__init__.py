"""The replica check: does the user's training give the same result on 1 and on N replicas?

The public names are :func:`tfplace.compare_replicas` and :class:`tfplace.ReplicaReport`; this
package holds the check by job, each module importing only those below it:

- ``_script``: ``tfplace check SCRIPT``: the script read with ``ast``, imported, checked;
- ``_check``: :func:`compare_replicas` itself and the run on N devices of this process;
- ``_workers``: the run on N local worker processes, the worker protocol and its records;
- ``_train``: one training (build, input recorded as the replicas receive it, steps);
- ``_judge``: two recorded runs compared step by step, one variable at a time (pure);
- ``_causes``: every cause the check names, with its evidence and its fix (pure);
- ``_evidence``: what the judge saw, as the causes read it (pure);
- ``_records``: what a training records: variables in a file, batch digests (pure);
- ``_tolerance``: the default tolerance from the dtype policy and the devices (pure);
- ``_report``: the report, as frozen data.
"""

from __future__ import annotations

from tfplace.replicas._check import compare_replicas
from tfplace.replicas._report import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Cause,
    ModelFacts,
    ReplicaReport,
    StepRow,
)
from tfplace.replicas._workers import WORKER_TIMEOUT

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "WORKER_TIMEOUT",
    "Cause",
    "ModelFacts",
    "ReplicaReport",
    "StepRow",
    "compare_replicas",
]
