"""Cluster descriptions: TF_CONFIG and SLURM parsing and validation (pure functions).

Every malformed input raises :class:`~tfplace.errors.ClusterConfigError` naming the source
(``TF_CONFIG``, ``SLURM``, ``cluster argument``) and the field at fault; no input raises
anything else.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tfplace.errors import ClusterConfigError, TfplaceWarning

__all__ = [
    "ClusterSpec",
    "check_host",
    "from_env",
    "from_mapping",
    "parse_slurm",
    "parse_tf_config",
    "slurm_port",
    "task_nodes",
]

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


def _fail(source: str, fieldname: str, message: str) -> ClusterConfigError:
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
        raise _fail(source, fieldname, f"expected a host name or IP address, found {host!r}")
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
        raise _fail(
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
    raise _fail(
        source,
        fieldname,
        f"found {host!r}, {_HOST_HELP}. Fix: use the machine's host name or IP address "
        "(no spaces, no scheme such as grpc://, no port here)",
    )


def _split_address(source: str, fieldname: str, value: object) -> tuple[str, int]:
    """``"host:port"`` -> (host as written in an address, port); IPv6 must be in brackets."""
    if not isinstance(value, str):
        raise _fail(source, fieldname, f'expected a "host:port" string, found {value!r}')
    if "://" in value:
        raise _fail(
            source,
            fieldname,
            f'expected "host:port", found {value!r}. Fix: drop the scheme '
            f'("{value.partition("://")[2]}")',
        )
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise _fail(
            source,
            fieldname,
            f'expected "host:port", found {value!r}. Fix: add the port, e.g. "{value}:2222"',
        )
    if ":" in host and not host.startswith("["):
        raise _fail(
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
        raise _fail(source, fieldname, f"expected a port from 1 to 65535, found {port!r}")
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
        raise _fail(source, "task.type", f"expected a string, found {task_type!r}")
    if task_type not in jobs:
        raise _fail(
            source,
            "task.type",
            f"{task_type!r} is not in the cluster; expected one of {sorted(jobs)}",
        )
    if isinstance(index, str) and index.isdigit() and index.isascii():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int):
        raise _fail(source, "task.index", f"expected an integer, found {index!r}")
    if not 0 <= index < len(jobs[task_type]):
        raise _fail(
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
        raise _fail(source, "top level", f"expected a JSON object, found {type(config).__name__}")
    if "cluster" not in config:
        raise _fail(source, "cluster", 'missing; expected {"cluster": {"worker": [...]}, ...}')
    if "task" not in config:
        raise _fail(source, "task", 'missing; expected "task": {"type": "worker", "index": 0}')
    cluster = config["cluster"]
    if not isinstance(cluster, Mapping) or not cluster:
        raise _fail(
            source, "cluster", f"expected a non-empty object of task lists, found {cluster!r}"
        )
    jobs: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for name, addrs in cluster.items():
        if not isinstance(name, str) or not name:
            raise _fail(source, "cluster", f"task type names must be strings, found {name!r}")
        if isinstance(addrs, Mapping):  # sparse form {"0": "host:port"} is not supported
            raise _fail(source, f"cluster.{name}", "expected a list of addresses, found an object")
        if not isinstance(addrs, list | tuple) or not addrs:
            raise _fail(
                source,
                f"cluster.{name}",
                f"expected a non-empty list of addresses, found {addrs!r}",
            )
        checked = []
        for i, addr in enumerate(addrs):
            where = f"cluster.{name}[{i}]"
            address = _check_address(source, where, addr)
            if address in seen:
                raise _fail(source, where, f"duplicate address {addr!r} (also {seen[address]})")
            seen[address] = where
            checked.append(address)
        jobs[name] = tuple(checked)
    if len(jobs.get("chief", ())) > 1:
        raise _fail(source, "cluster.chief", "a cluster has at most one chief")
    if not any(t in jobs for t in _WORKER_TYPES):
        raise _fail(source, "cluster", 'needs a "worker" or "chief" list')
    task = config["task"]
    if not isinstance(task, Mapping):
        raise _fail(source, "task", f"expected an object, found {task!r}")
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
        raise _fail("TF_CONFIG", "JSON", f"not valid JSON ({err})") from None
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

#: Ports tfplace derives for a SLURM step lie in [_PORT_LOW, _PORT_LOW + _PORT_BLOCKS * 32):
#: below Linux's ephemeral range (32768-60999) so that no outgoing connection holds them.
_PORT_LOW = 10000
_PORT_BLOCK = 32
_PORT_BLOCKS = (32768 - _PORT_LOW) // _PORT_BLOCK
#: The first port when the environment names no job (synthetic environments only: every real
#: SLURM task has SLURM_JOB_ID). It is SlurmClusterResolver's default port.
_LEGACY_PORT = 8888
#: The environment variable that sets the first port explicitly.
PORT_ENV = "TFPLACE_PORT"


def _expand_nodelist(nodelist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Expand SLURM's compressed host list, e.g. ``gpu[01-03,07],login1`` or ``r[1-2]n[1-2]``."""
    parts: list[str] = []
    depth, current = 0, ""
    for ch in nodelist:  # split at the commas outside brackets
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise _fail("SLURM", name, f"cannot read {nodelist!r}: unbalanced brackets")
        current += ch
    if depth != 0:
        raise _fail("SLURM", name, f"cannot read {nodelist!r}: unbalanced brackets")
    parts.append(current)
    hosts: list[str] = []
    for part in parts:
        if not part:
            continue
        expanded = [""]
        for text, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            names = [text]
            if ranges:
                names = [f"{text}{n}" for n in _expand_ranges(ranges, name)]
            expanded = [e + n for e in expanded for n in names]
            if len(hosts) + len(expanded) > 100_000:
                raise _fail("SLURM", name, f"the host list {nodelist!r} is too large")
        hosts += expanded
    return hosts


def _expand_ranges(ranges: str, name: str) -> list[str]:
    """``"01-03,7"`` -> ``["01", "02", "03", "7"]`` (the width of the lower bound is kept)."""
    out: list[str] = []
    for rng in ranges.split(","):
        lo, _, hi = rng.partition("-")
        if not (lo.isascii() and lo.isdigit()) or (hi and not (hi.isascii() and hi.isdigit())):
            raise _fail("SLURM", name, f"cannot read the range {rng!r}")
        if hi and int(hi) - int(lo) > 100_000:
            raise _fail("SLURM", name, f"the range {rng!r} is too large")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi or lo) + 1)]
    return out


def _int_var(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise _fail("SLURM", name, "is not set")
        return default
    digits = raw.split("(")[0].split(",")[0]  # "2(x3),1" -> "2"
    if not digits.isdigit() or not digits.isascii():
        raise _fail("SLURM", name, f"expected an integer, found {raw!r}")
    return int(digits)


def _tasks_per_node(raw: str, name: str) -> list[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in raw.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip(), flags=re.ASCII)
        if not m or int(m.group(2) or 1) > 100_000:
            raise _fail("SLURM", name, f"cannot read {raw!r}; expected e.g. '2(x3),1'")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _distribution_chunk(env: Mapping[str, str], ntasks: int) -> int:
    """How many consecutive tasks a node takes per round: 1 cyclic, N plane=N, all block."""
    raw = env.get("SLURM_DISTRIBUTION", "")
    first = raw.split(",")[0].split(":")[0].strip().lower()  # "cyclic:block,Pack" -> "cyclic"
    if first in ("", "*", "block"):
        return max(ntasks, 1)
    if first == "cyclic":
        return 1
    if first.startswith("plane"):
        size = first.partition("=")[2] or env.get("SLURM_DIST_PLANESIZE", "")
        if size.isascii() and size.isdigit() and int(size) > 0:
            return int(size)
        raise _fail(
            "SLURM",
            "SLURM_DISTRIBUTION",
            f"found {raw!r} without a plane size (nor SLURM_DIST_PLANESIZE); expected "
            "plane=N with N >= 1",
        )
    if first == "arbitrary":
        raise _fail(
            "SLURM",
            "SLURM_DISTRIBUTION",
            "'arbitrary' places tasks in the order of the file SLURM_HOSTFILE, which tfplace "
            "does not read. Fix: use srun -m block, cyclic or plane=N, or set TF_CONFIG",
        )
    raise _fail(
        "SLURM",
        "SLURM_DISTRIBUTION",
        f"found {raw!r}, expected block, cyclic, plane=N or arbitrary (srun -m)",
    )


def task_nodes(counts: Sequence[int], chunk: int) -> list[int]:
    """The node index of each task, for ``counts[i]`` tasks on node ``i``.

    Rounds go over the nodes in order; each node takes up to ``chunk`` consecutive task ids
    per round, skipping nodes that have all their tasks (``chunk=1``: cyclic, ``chunk`` at
    least the task count: block, else SLURM's plane distribution).

    Example:
        >>> task_nodes([2, 2, 2, 1], chunk=1)  # srun -m cyclic with SLURM_TASKS_PER_NODE=2(x3),1
        [0, 1, 2, 3, 0, 1, 2]
        >>> task_nodes([2, 2, 2, 1], chunk=7)  # block
        [0, 0, 1, 1, 2, 2, 3]
    """
    left = list(counts)
    order: list[int] = []
    while any(left):
        for node, n in enumerate(left):
            take = min(n, chunk)
            order += [node] * take
            left[node] -= take
    return order


def _step_ids(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    return env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"), (
        env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
    )


def slurm_port(env: Mapping[str, str], port: int | None = None) -> int:
    """The first port of a SLURM step's workers; a node's k-th task listens on it plus k.

    In order: ``port`` when given; else ``TFPLACE_PORT``; else a port derived from
    ``SLURM_JOB_ID`` and ``SLURM_STEP_ID``, which every task of the step reads alike, so the
    tasks agree without talking to each other. Derived ports lie in 10000-32767 (below
    Linux's ephemeral ports) in blocks of 32: steps whose ``16 * job + step`` differ by less
    than 711 get different blocks, so jobs submitted one after another on a shared node do
    not collide. Without a job id (hand-made environments) it is 8888.

    Args:
        env: the SLURM environment.
        port: an explicit first port (1..65535), e.g. from ``pick_strategy(port=...)``.

    Raises:
        ValueError: ``port`` is not an integer in 1..65535.
        ClusterConfigError: ``TFPLACE_PORT`` is not one.

    Example:
        >>> [slurm_port({"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0"}) for job in ("1234", "1235")]
        [27504, 28016]
        >>> slurm_port({"SLURM_JOB_ID": "1234", "TFPLACE_PORT": "7000"}), slurm_port({}, 9000)
        (7000, 9000)
    """
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer from 1 to 65535, found {port!r}")
        return port
    raw = env.get(PORT_ENV, "").strip()
    if raw:
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535):
            raise ClusterConfigError(
                f"{PORT_ENV}: expected a port from 1 to 65535, found {raw!r}. Fix: set it to "
                "a port that is free on every node, e.g. 23000, or unset it to let tfplace "
                "derive one from the job and step ids"
            )
        return int(raw)
    job, step = _step_ids(env)
    if not job:
        return _LEGACY_PORT
    job_n = int(job) if job.isascii() and job.isdigit() else zlib.crc32(job.encode())
    step_n = int(step) if step and step.isascii() and step.isdigit() else 0
    return _PORT_LOW + ((16 * job_n + step_n) % _PORT_BLOCKS) * _PORT_BLOCK


def parse_slurm(env: Mapping[str, str], *, port: int | None = None) -> ClusterSpec | None:
    """Describe a SLURM step as a cluster of workers, one per task.

    Reads the variables srun gives each task (``SLURM_PROCID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_STEP_TASKS_PER_NODE`` such as ``2(x3),1``, ``SLURM_DISTRIBUTION``: block, cyclic
    or plane=N), falling back to the job's (``SLURM_JOB_NODELIST``, ``SLURM_TASKS_PER_NODE``,
    ``SLURM_NTASKS``). Works on CPU-only nodes too (TensorFlow's ``SlurmClusterResolver``
    fails there with ``range() arg 3 must not be zero``). Ports: see :func:`slurm_port`.

    The batch script of a multi-task ``sbatch`` job is not a cluster: it runs once, as task 0,
    and the other tasks exist only once ``srun`` starts them. Building a cluster there would
    wait for workers that never come (``startup_timeout``, 900 s by default). So that process
    is not a cluster: this returns None and warns (:class:`~tfplace.errors.TfplaceWarning`)
    that the job asked for N tasks and that ``srun python train.py`` starts them. It trains
    on its own instead of stopping, because running once in the batch step is also how
    pre- and post-processing or evaluation scripts legitimately run in such a job.

    Args:
        env: the environment to read (``os.environ``, or a synthetic mapping in tests).
        port: the first port; by default ``TFPLACE_PORT``, else derived from the job and step
            ids (:func:`slurm_port`). Tasks sharing a node get consecutive ports.

    Returns:
        The cluster, or None when the environment is not a SLURM step of two or more tasks.

    Raises:
        ClusterConfigError: the SLURM variables are malformed or inconsistent.
        ValueError: ``port`` is not an integer in 1..65535.

    Example:
        >>> env = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1",
        ...        "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_NODELIST": "gpu[01-02]",
        ...        "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_DISTRIBUTION": "cyclic"}
        >>> parse_slurm(env, port=2000).addresses("worker")
        ('gpu01:2000', 'gpu02:2000', 'gpu01:2001')
    """
    if "SLURM_PROCID" not in env or not any(
        k in env for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    ):
        return None
    ntasks = _int_var(env, "SLURM_STEP_NUM_TASKS", _int_var(env, "SLURM_NTASKS", 1))
    if ntasks < 2:
        return None
    if ntasks > 100_000:
        raise _fail("SLURM", "SLURM_NTASKS", f"{ntasks} tasks is more than tfplace handles")
    first_port = slurm_port(env, port)
    procid = _int_var(env, "SLURM_PROCID")
    in_step = "SLURM_STEP_NODELIST" in env
    list_name = (
        "SLURM_STEP_NODELIST"
        if in_step
        else ("SLURM_JOB_NODELIST" if "SLURM_JOB_NODELIST" in env else "SLURM_NODELIST")
    )
    hosts = _expand_nodelist(env[list_name], list_name)
    if not hosts:
        raise _fail("SLURM", list_name, f"no hosts in {env[list_name]!r}")
    count_name = next(
        (
            n
            for n in (("SLURM_STEP_TASKS_PER_NODE",) if in_step else ()) + ("SLURM_TASKS_PER_NODE",)
            if env.get(n)
        ),
        None,
    )
    if count_name:
        counts = _tasks_per_node(env[count_name], count_name)
    else:
        per, extra = divmod(ntasks, len(hosts))
        counts = [per + (1 if i < extra else 0) for i in range(len(hosts))]
        count_name = "SLURM_TASKS_PER_NODE"
    if len(counts) != len(hosts) or sum(counts) != ntasks:
        raise _fail(
            "SLURM",
            count_name,
            f"{counts} tasks on {len(hosts)} host(s) ({list_name}) do not add up to {ntasks} tasks",
        )
    if not 0 <= procid < ntasks:
        raise _fail("SLURM", "SLURM_PROCID", f"{procid} is out of range 0..{ntasks - 1}")
    if first_port + max(counts) - 1 > 65535:
        raise _fail(
            "SLURM",
            "port",
            f"{max(counts)} tasks on one node need ports {first_port}.."
            f"{first_port + max(counts) - 1}, beyond 65535. Fix: a lower port",
        )
    nodes = task_nodes(counts, _distribution_chunk(env, ntasks))
    job, step = _step_ids(env)
    if job and step is None:  # the batch script itself (see the docstring)
        warnings.warn(
            f"SLURM: this process is the batch script of job {job}, which asked for {ntasks} "
            "tasks (SLURM_NTASKS), but only srun starts them: it trains alone, as one worker. "
            "Fix: start the training with srun in the batch script (srun python train.py)",
            TfplaceWarning,
            stacklevel=2,
        )
        return None
    local: dict[int, int] = {}
    addresses = []
    for node in nodes:
        addresses.append(
            f"{check_host(hosts[node], 'SLURM', list_name)}:{first_port + local.get(node, 0)}"
        )
        local[node] = local.get(node, 0) + 1
    gpus_raw = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE")
    gpus: int | None = None
    if gpus_raw:
        digits = gpus_raw.rpartition(":")[2]
        gpus = int(digits) if digits.isdigit() and digits.isascii() else None
    per_task = None if gpus is None else gpus // max(counts)
    return ClusterSpec(
        jobs=(("worker", tuple(addresses)),),
        task_type="worker",
        task_index=procid,
        source="SLURM",
        gpus_per_worker=per_task,
    )


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
