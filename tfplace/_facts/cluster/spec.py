"""Cluster descriptions: :class:`ClusterSpec`, and TF_CONFIG parsing and validation (pure).

Every malformed input raises :class:`~tfplace.errors.ClusterConfigError` naming the source
(``TF_CONFIG``, ``SLURM``, ``cluster argument``) and the field at fault; no input raises
anything else.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tfplace.errors import ClusterConfigError, TfplaceWarning

__all__ = ["ClusterSpec", "check_host", "fail_at", "from_mapping", "parse_tf_config"]

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
_WORKER_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster and this process's place in it.

    Attributes:
        jobs: ``(task type, addresses)`` pairs, in a stable order (chief, worker, ps, evaluator,
            then any other type sorted by name).
        task_type: this process's task type, e.g. ``"worker"``.
        task_index: this process's index within its task type.
        source: where the description came from (``"TF_CONFIG"``, ``"SLURM"``, ...).
        gpus_per_worker: local GPUs per worker when the source says (SLURM), else None.
    """

    jobs: tuple[tuple[str, tuple[str, ...]], ...]
    task_type: str
    task_index: int
    source: str = "TF_CONFIG"
    gpus_per_worker: int | None = field(default=None)

    @classmethod
    def from_hosts(
        cls, hosts: Sequence[str], *, port: int = 2222, source: str = "host list"
    ) -> ClusterSpec:
        """A cluster of workers, one per entry, seen from worker 0 (see :meth:`for_task`).

        Args:
            hosts: host names or IP addresses, each optionally with ``:port``; an IPv6
                address with a port goes in brackets (``[fd00::1]:2222``).
            port: the port of entries without one (1..65535).
            source: where the hosts came from, for error messages.

        Raises:
            ClusterConfigError: a host or port is invalid, or an address repeats.
            ValueError / TypeError: ``hosts`` is not a non-empty list of strings.

        Example:
            >>> ClusterSpec.from_hosts(["node1", "node2:3000", "fd00::2"]).addresses("worker")
            ('node1:2222', 'node2:3000', '[fd00::2]:2222')
        """
        if isinstance(hosts, str) or not isinstance(hosts, Sequence) or not hosts:
            raise ValueError(
                f"{source}: expected a non-empty list of hosts, found {hosts!r}. "
                'Fix: pass a list, e.g. ["node1", "node2:2222"]'
            )
        default = _check_port(source, "port", port)
        addresses = []
        for i, entry in enumerate(hosts):
            if not isinstance(entry, str):
                raise TypeError(f"{source}: hosts[{i}]: expected a string, found {entry!r}")
            if (entry.startswith("[") and "]:" in entry) or entry.count(":") == 1:
                addresses.append(entry)  # "host:port", validated below
            else:  # a bare host, an IPv6 address included, takes the default port
                addresses.append(f"{check_host(entry, source, f'hosts[{i}]')}:{default}")
        return from_mapping(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}, source
        )

    @classmethod
    def local(cls, ports: Sequence[int], host: str = "127.0.0.1") -> ClusterSpec:
        """Workers on one host, one per port: the cluster ``tfplace launch`` starts.

        Args:
            ports: one port per worker (1..65535), e.g. from ``free_ports``.
            host: the address they listen on (IPv4, IPv6 or a name).

        Raises:
            ClusterConfigError: the host or a port is invalid, or a port repeats.

        Example:
            >>> ClusterSpec.local([2222, 2223]).for_task(1).to_tf_config()
            '{"cluster":{"worker":["127.0.0.1:2222","127.0.0.1:2223"]},"task":{"type":"worker","index":1}}'
        """
        source = "tfplace launch"
        address_host = check_host(host, source)
        if isinstance(ports, str | bytes) or not isinstance(ports, Sequence) or not ports:
            raise ValueError(f"{source}: expected a non-empty list of ports, found {ports!r}")
        addresses = [
            f"{address_host}:{_check_port(source, f'ports[{i}]', p)}" for i, p in enumerate(ports)
        ]
        return from_mapping(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}, source
        )

    def for_task(self, index: int, task_type: str = "worker") -> ClusterSpec:
        """The same cluster seen from another of its tasks.

        Raises:
            ClusterConfigError: the cluster has no such task.

        Example:
            >>> ClusterSpec.from_hosts(["a", "b"]).for_task(1).address
            'b:2222'
        """
        task_type, index = _check_task(self.source, dict(self.jobs), task_type, index)
        return replace(self, task_type=task_type, task_index=index)

    def addresses(self, task_type: str) -> tuple[str, ...]:
        """The addresses of one task type (empty when the cluster has none)."""
        for name, addrs in self.jobs:
            if name == task_type:
                return addrs
        return ()

    @property
    def num_workers(self) -> int:
        """Tasks that train (chief plus workers)."""
        return sum(len(self.addresses(t)) for t in _WORKER_TYPES)

    @property
    def has_ps(self) -> bool:
        """Whether the cluster has parameter-server tasks."""
        return bool(self.addresses("ps"))

    @property
    def is_chief(self) -> bool:
        """Whether this task is the chief: the ``chief`` task, or worker 0 when there is none."""
        if self.addresses("chief"):
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self) -> str:
        """This task's own address."""
        return self.addresses(self.task_type)[self.task_index]

    def to_dict(self) -> dict[str, Any]:
        """The TF_CONFIG dictionary describing this cluster and task."""
        return {
            "cluster": {name: list(addrs) for name, addrs in self.jobs},
            "task": {"type": self.task_type, "index": self.task_index},
        }

    def to_tf_config(self) -> str:
        """The TF_CONFIG JSON text for this task."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


def fail_at(source: str, fieldname: str, message: str) -> ClusterConfigError:
    return ClusterConfigError(f"{source}: {fieldname}: {message}")


_HOST_HELP = (
    "expected an IPv4 address (10.0.0.2), an IPv6 address (fd00::2, written [fd00::2] in an "
    "address) or a DNS name (node-2.example.org)"
)


def check_host(host: object, source: str = "host", fieldname: str = "host") -> str:
    """Validate one host and return it as it is written in an address (IPv6 in brackets).

    Only the spelling is checked; nothing is resolved or contacted.

    Args:
        host: an IPv4 address, an IPv6 address (bare or in brackets) or a DNS name.
        source: where the host came from, for the message (``"tfplace launch"``, ...).
        fieldname: the field at fault, for the message.

    Returns:
        The host, with an IPv6 address in brackets.

    Raises:
        ClusterConfigError: the host is none of those; the message says what was expected.

    Example:
        >>> check_host("fd00::1"), check_host("10.0.0.2"), check_host("node-1.example.org")
        ('[fd00::1]', '10.0.0.2', 'node-1.example.org')
        >>> check_host("bad host", "launch")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: launch: host: found 'bad host', expected an IPv4 ...
    """
    if not isinstance(host, str):
        raise fail_at(source, fieldname, f"expected a host name or IP address, found {host!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    import ipaddress

    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if ip is not None and (ip.version == 6 or not bracketed):
        return f"[{bare}]" if ip.version == 6 else bare
    if bracketed:
        raise fail_at(
            source,
            fieldname,
            f"found {host!r}, expected an IPv6 address inside the brackets (they hold IPv6 "
            f"addresses only). Fix: write {bare!r} without brackets",
        )
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if (
        host.isascii()
        and len(host) <= 253
        and all(_LABEL_RE.match(label) for label in labels)
        and not all(label.isdigit() for label in labels)
    ):
        return host
    raise fail_at(
        source,
        fieldname,
        f"found {host!r}, {_HOST_HELP}. Fix: use the machine's host name or IP address "
        "(no spaces, no scheme such as grpc://, no port here)",
    )


def _split_address(source: str, fieldname: str, value: object) -> tuple[str, int]:
    """``"host:port"`` -> (host as written in an address, port); IPv6 must be in brackets."""
    if not isinstance(value, str):
        raise fail_at(source, fieldname, f'expected a "host:port" string, found {value!r}')
    if "://" in value:
        raise fail_at(
            source,
            fieldname,
            f'expected "host:port", found {value!r}. Fix: drop the scheme '
            f'("{value.partition("://")[2]}")',
        )
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise fail_at(
            source,
            fieldname,
            f'expected "host:port", found {value!r}. Fix: add the port, e.g. "{value}:2222"',
        )
    if ":" in host and not host.startswith("["):
        raise fail_at(
            source,
            fieldname,
            f"found {value!r}: an IPv6 address needs brackets in an address. "
            f'Fix: write "[{host}]:{port}" (or "[{value}]:PORT" if {port!r} is part of it)',
        )
    return check_host(host, source, fieldname), _check_port(source, fieldname, port)


def _check_port(source: str, fieldname: str, port: object) -> int:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise fail_at(source, fieldname, f"expected a port from 1 to 65535, found {port!r}")
    return port


def _check_address(source: str, fieldname: str, value: object) -> str:
    host, port = _split_address(source, fieldname, value)
    return f"{host}:{port}"


def _host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def _job_order(name: str) -> tuple[int, str]:
    return (_TASK_TYPES.index(name) if name in _TASK_TYPES else len(_TASK_TYPES), name)


def _check_task(
    source: str, jobs: Mapping[str, tuple[str, ...]], task_type: object, index: object
) -> tuple[str, int]:
    if not isinstance(task_type, str):
        raise fail_at(source, "task.type", f"expected a string, found {task_type!r}")
    if task_type not in jobs:
        raise fail_at(
            source,
            "task.type",
            f"{task_type!r} is not in the cluster; expected one of {sorted(jobs)}",
        )
    if isinstance(index, str) and index.isdigit() and index.isascii():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int):
        raise fail_at(source, "task.index", f"expected an integer, found {index!r}")
    if not 0 <= index < len(jobs[task_type]):
        raise fail_at(
            source,
            "task.index",
            f"{index} is out of range: cluster.{task_type} has {len(jobs[task_type])} "
            f"address(es), so the index must be 0..{len(jobs[task_type]) - 1}",
        )
    return task_type, index


def from_mapping(config: object, source: str = "TF_CONFIG") -> ClusterSpec:
    """Validate a TF_CONFIG-shaped mapping (``{"cluster": ..., "task": ...}``).

    Raises:
        ClusterConfigError: anything is malformed; the message names ``source`` and the field.
    """
    if not isinstance(config, Mapping):
        raise fail_at(source, "top level", f"expected a JSON object, found {type(config).__name__}")
    if "cluster" not in config:
        raise fail_at(source, "cluster", 'missing; expected {"cluster": {"worker": [...]}, ...}')
    if "task" not in config:
        raise fail_at(source, "task", 'missing; expected "task": {"type": "worker", "index": 0}')
    cluster = config["cluster"]
    if not isinstance(cluster, Mapping) or not cluster:
        raise fail_at(
            source, "cluster", f"expected a non-empty object of task lists, found {cluster!r}"
        )
    jobs: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for name, addrs in cluster.items():
        if not isinstance(name, str) or not name:
            raise fail_at(source, "cluster", f"task type names must be strings, found {name!r}")
        if isinstance(addrs, Mapping):  # sparse form {"0": "host:port"} is not supported
            raise fail_at(
                source, f"cluster.{name}", "expected a list of addresses, found an object"
            )
        if not isinstance(addrs, list | tuple) or not addrs:
            raise fail_at(
                source,
                f"cluster.{name}",
                f"expected a non-empty list of addresses, found {addrs!r}",
            )
        checked = []
        for i, addr in enumerate(addrs):
            where = f"cluster.{name}[{i}]"
            address = _check_address(source, where, addr)
            if address in seen:
                raise fail_at(source, where, f"duplicate address {addr!r} (also {seen[address]})")
            seen[address] = where
            checked.append(address)
        jobs[name] = tuple(checked)
    if len(jobs.get("chief", ())) > 1:
        raise fail_at(source, "cluster.chief", "a cluster has at most one chief")
    if not any(t in jobs for t in _WORKER_TYPES):
        raise fail_at(source, "cluster", 'needs a "worker" or "chief" list')
    task = config["task"]
    if not isinstance(task, Mapping):
        raise fail_at(source, "task", f"expected an object, found {task!r}")
    task_type, index = _check_task(source, jobs, task.get("type"), task.get("index", 0))
    hosts = {_host(a) for addrs in jobs.values() for a in addrs}
    local = hosts & _LOCAL_HOSTS
    if local and len(hosts) > 1:
        warnings.warn(
            f"{source}: the cluster spans several hosts but also names {sorted(local)}; "
            "each machine would reach itself there. Use every machine's real host name or IP.",
            TfplaceWarning,
            stacklevel=3,
        )
    ordered = tuple(sorted(jobs.items(), key=lambda kv: _job_order(kv[0])))
    return ClusterSpec(jobs=ordered, task_type=task_type, task_index=index, source=source)


def parse_tf_config(value: str | None = None) -> ClusterSpec | None:
    """Parse and validate a TF_CONFIG value.

    Args:
        value: the JSON text; when None, the ``TF_CONFIG`` environment variable is read.

    Returns:
        The cluster, or None when the value is None or empty (no cluster configured).

    Raises:
        ClusterConfigError: invalid JSON, wrong shapes, unknown task type, index out of range,
            an address without a valid host:port, duplicate addresses.

    Example:
        >>> parse_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"index": 1, '
        ...                 '"type": "worker"}}').num_workers
        2
    """
    if value is None:
        value = os.environ.get("TF_CONFIG")
    if value is None or not value.strip():
        return None
    try:
        config = json.loads(value)
    except (ValueError, RecursionError) as err:
        raise fail_at("TF_CONFIG", "JSON", f"not valid JSON ({err})") from None
    return from_mapping(config, "TF_CONFIG")


# --------------------------------------------------------------------------------- SLURM
#
# What SLURM documents (srun(1)/sbatch(1) of slurm-wlm 22.05, "OUTPUT ENVIRONMENT VARIABLES"
# and -m/--distribution), and what this parser relies on:
# - SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE: task counts "in the same order as
#   SLURM_JOB_NODELIST", a count repeated on consecutive nodes written "2(x3)": "2(x3),1" means
#   two tasks on each of the first three nodes and one on the fourth.
# - SLURM_DISTRIBUTION (srun -m): the part before the first ":" places tasks on nodes. "block":
#   consecutive tasks share a node; "cyclic": consecutive tasks go to consecutive nodes, round
#   robin among the nodes that still have tasks to get; "plane=N": blocks of N consecutive
#   tasks, round robin; "arbitrary": the order of the file SLURM_HOSTFILE. Unset or "*" means
#   block (srun's default when there are more tasks than nodes; with at most one task per
#   node, block and cyclic place tasks alike).
# - Under srun every task has SLURM_STEP_ID (and SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST);
#   the batch script of an sbatch job runs as task 0 of the job with SLURM_JOB_ID,
#   SLURM_NTASKS and SLURM_PROCID=0 but no step variables (checked on a real slurmd).
