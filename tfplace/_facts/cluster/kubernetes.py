"""Kubernetes: each pod's TF_CONFIG from what an Indexed Job gives the pod (pure functions).

Kubeflow Trainer v2 leaves ``TF_CONFIG`` to the user (kubeflow/trainer#2699), but every pod it
starts already knows enough to write it. A TrainJob runs as a JobSet, and a JobSet runs Indexed
Jobs; in an Indexed Job with a headless Service as ``subdomain``:

* Kubernetes sets ``JOB_COMPLETION_INDEX`` (0..completions-1) in every container, and names the
  pod's host ``<job>-<index>`` ("Indexed Job for Parallel Processing with Static Work
  Assignment" and "Job with Pod-to-Pod Communication", kubernetes.io);
* a JobSet's Jobs are named ``<jobset>-<replicatedJob>-<jobIndex>``, so pod hosts read
  ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>``, reachable as
  ``<host>.<subdomain>``, the subdomain being ``spec.network.subdomain`` or, by default, the
  JobSet's name (JobSet docs, "Concepts: DNS hostnames for Pods");
* Kubeflow Trainer v2 builds a JobSet named after the TrainJob with one replicated Job
  ``node``, so its pods are ``<trainjob>-node-0-<i>.<trainjob>`` (the endpoints its JobSet
  plugin computes, also the ``PET_MASTER_ADDR`` it gives PyTorch).

So a pod's peers are its own host name with the last number replaced by 0..N-1, under the
subdomain: :func:`indexed_job_cluster` derives them from the environment, and
``tfplace tf-config --k8s`` prints the result for a manifest's command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tfplace._facts.cluster.spec import ClusterSpec, check_host
from tfplace.errors import ClusterConfigError

__all__ = ["INDEX_VAR", "indexed_job_cluster"]

#: The variable Kubernetes sets in every container of an Indexed Job's pod.
INDEX_VAR = "JOB_COMPLETION_INDEX"

_SOURCE = "Kubernetes"


def _fail(message: str) -> ClusterConfigError:
    return ClusterConfigError(f"{_SOURCE}: {message}")


def indexed_job_cluster(
    num_workers: int,
    subdomain: str,
    *,
    port: int = 2222,
    env: Mapping[str, str] | None = None,
    hostname: str | None = None,
) -> ClusterSpec:
    """This pod's cluster: the ``num_workers`` pods of its Indexed Job, this one at its index.

    Worker ``i`` is ``<stem>-<i>.<subdomain>:<port>``, where ``<stem>-<index>`` is this pod's
    host name (``<job>`` for a plain Indexed Job, ``<jobset>-<replicatedJob>-<jobIndex>`` in a
    JobSet or a Kubeflow TrainJob). Only the environment is read: no DNS, no API server.

    Args:
        num_workers: the Job's ``completions`` (= ``parallelism``): pods that train together.
        subdomain: the headless Service the pods are under (the pod template's ``subdomain``;
            for a JobSet ``spec.network.subdomain``, by default the JobSet's name; for a
            TrainJob its name). It may go on with the namespace, e.g. ``train.team-a.svc``.
        port: the port every worker listens on (expose it as a ``containerPort``).
        env: the environment to read ``JOB_COMPLETION_INDEX`` (and ``HOSTNAME``) from;
            default ``os.environ``.
        hostname: this pod's host name; default ``env["HOSTNAME"]``.

    Returns:
        The cluster, seen from this pod (``task.index`` = its completion index).

    Raises:
        ClusterConfigError: no or a malformed ``JOB_COMPLETION_INDEX``, an index outside
            0..num_workers-1, a host name that does not end in ``-<index>`` (not an Indexed
            Job's pod), or a subdomain that is not a DNS name.
        ValueError: ``num_workers`` is not a positive integer.

    Example:
        >>> pod = {"JOB_COMPLETION_INDEX": "1", "HOSTNAME": "mnist-node-0-1"}
        >>> spec = indexed_job_cluster(2, "mnist", env=pod)
        >>> spec.addresses("worker"), spec.task_index
        (('mnist-node-0-0.mnist:2222', 'mnist-node-0-1.mnist:2222'), 1)
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(
            f"num_workers: expected a positive integer (the Job's completions), "
            f"found {num_workers!r}"
        )
    if env is None:
        env = os.environ
    raw = env.get(INDEX_VAR)
    if raw is None:
        raise _fail(
            f"{INDEX_VAR} is not set; expected the pod index Kubernetes sets in every pod of an "
            "Indexed Job (JobSets and Kubeflow TrainJobs run Indexed Jobs). Fix: run this in "
            "such a pod, or set completionMode: Indexed on the Job"
        )
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise _fail(f"{INDEX_VAR}: expected a non-negative integer, found {raw!r}")
    index = int(raw)
    if index >= num_workers:
        raise _fail(
            f"{INDEX_VAR}={index} but --num-workers is {num_workers}, so the index must be "
            f"0..{num_workers - 1}. Fix: pass the Job's completions as the number of workers"
        )
    if hostname is None:
        hostname = env.get("HOSTNAME", "")
    short = hostname.split(".", 1)[0]
    suffix = f"-{index}"
    if not short.endswith(suffix) or len(short) == len(suffix):
        raise _fail(
            f"host name {hostname!r} does not end in {suffix!r}; expected the host name "
            f"Kubernetes gives pod {index} of an Indexed Job, <job>-{index} (in a JobSet "
            f"<jobset>-<replicatedJob>-<jobIndex>-{index}). Fix: do not set the pod's "
            "hostname field, and run in an Indexed Job's pod"
        )
    check_host(subdomain, _SOURCE, "subdomain")  # the headless Service's DNS name
    stem = short[: -len(suffix)]
    hosts = [f"{stem}-{i}.{subdomain}" for i in range(num_workers)]
    return ClusterSpec.from_hosts(hosts, port=port, source=_SOURCE).for_task(index)
