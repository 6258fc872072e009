"""SLURM: the cluster of a ``srun`` step from its environment, and its ports (pure).

Every malformed input raises :class:`~tfplace.errors.ClusterConfigError` naming ``SLURM`` and
the variable at fault.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Mapping, Sequence

from tfplace._facts.cluster.spec import ClusterSpec, check_host, fail_at as fail
from tfplace.errors import ClusterConfigError, TfplaceWarning

__all__ = [
    "PORT_ENV",
    "RESERVED_PORTS_ENV",
    "parse_slurm",
    "reserved_ports",
    "slurm_port",
    "step_ports",
    "task_nodes",
]


#: Ports tfplace derives for a SLURM step lie in [_PORT_LOW, _PORT_LOW + _PORT_BLOCKS * 32):
#: below Linux's ephemeral range (32768-60999) so that no outgoing connection holds them.
_PORT_LOW = 10000
_PORT_BLOCK = 32
_PORT_BLOCKS = (32768 - _PORT_LOW) // _PORT_BLOCK
#: Blocks between one job's step 0 and the next job's: the steps of a job below this number
#: never share a block with the steps of the jobs around it (see :func:`slurm_port`).
_STEPS_PER_JOB = 64
#: The first port when the environment names no job (synthetic environments only: every real
#: SLURM task has SLURM_JOB_ID). It is SlurmClusterResolver's default port.
_LEGACY_PORT = 8888
#: The environment variable that sets the first port explicitly.
PORT_ENV = "TFPLACE_PORT"
#: The ports SLURM reserved for this step (``srun --resv-ports``, with ``MpiParams=ports=``
#: in slurm.conf), e.g. ``12000-12003``: free on every node of the step, and handed to no
#: other step while this one runs.
RESERVED_PORTS_ENV = "SLURM_STEP_RESV_PORTS"


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
            raise fail("SLURM", name, f"cannot read {nodelist!r}: unbalanced brackets")
        current += ch
    if depth != 0:
        raise fail("SLURM", name, f"cannot read {nodelist!r}: unbalanced brackets")
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
                raise fail("SLURM", name, f"the host list {nodelist!r} is too large")
        hosts += expanded
    return hosts


def _expand_ranges(ranges: str, name: str) -> list[str]:
    """``"01-03,7"`` -> ``["01", "02", "03", "7"]`` (the width of the lower bound is kept)."""
    out: list[str] = []
    for rng in ranges.split(","):
        lo, _, hi = rng.partition("-")
        if not (lo.isascii() and lo.isdigit()) or (hi and not (hi.isascii() and hi.isdigit())):
            raise fail("SLURM", name, f"cannot read the range {rng!r}")
        if hi and int(hi) - int(lo) > 100_000:
            raise fail("SLURM", name, f"the range {rng!r} is too large")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi or lo) + 1)]
    return out


def _int_var(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise fail("SLURM", name, "is not set")
        return default
    digits = raw.split("(")[0].split(",")[0]  # "2(x3),1" -> "2"
    if not digits.isdigit() or not digits.isascii():
        raise fail("SLURM", name, f"expected an integer, found {raw!r}")
    return int(digits)


def _tasks_per_node(raw: str, name: str) -> list[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in raw.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip(), flags=re.ASCII)
        if not m or int(m.group(2) or 1) > 100_000:
            raise fail("SLURM", name, f"cannot read {raw!r}; expected e.g. '2(x3),1'")
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
        raise fail(
            "SLURM",
            "SLURM_DISTRIBUTION",
            f"found {raw!r} without a plane size (nor SLURM_DIST_PLANESIZE); expected "
            "plane=N with N >= 1",
        )
    if first == "arbitrary":
        raise fail(
            "SLURM",
            "SLURM_DISTRIBUTION",
            "'arbitrary' places tasks in the order of the file SLURM_HOSTFILE, which tfplace "
            "does not read. Fix: use srun -m block, cyclic or plane=N, or set TF_CONFIG",
        )
    raise fail(
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


def slurm_port(env: Mapping[str, str], port: int | None = None, *, tasks_per_node: int = 1) -> int:
    """The first port of a SLURM step's workers; a node's k-th task listens on it plus k.

    In order: ``port`` when given; else ``TFPLACE_PORT``; else a port derived from
    ``SLURM_JOB_ID`` and ``SLURM_STEP_ID``, which every task of the step reads alike, so the
    tasks agree without talking to each other. (SLURM's own reservation,
    ``SLURM_STEP_RESV_PORTS``, comes before the derived port: see :func:`step_ports`.)

    Derived ports lie in 10000-32767 (below Linux's ephemeral ports), in blocks of 32. Step
    ``s`` of job ``j`` starts at block ``(64 * j + s) mod 711``: the steps of one job never
    share a block (up to 711 steps), and the first 64 steps of jobs whose ids differ by less
    than 11 never share one either. A step with more than 32 tasks on a node takes as many
    consecutive blocks as it needs: those of its job's next steps, never another job's
    (below step 64), so only steps of one job that run at the same time must then differ by
    more. Other jobs can, by chance: :func:`tfplace.pick_strategy` checks
    that the port is free before TensorFlow binds it and says what to do when it is not.
    Without a job id (hand-made environments) it is 8888.

    Args:
        env: the SLURM environment.
        port: an explicit first port (1..65535), e.g. from ``pick_strategy(port=...)``.
        tasks_per_node: the most tasks of the step on one node: how many consecutive ports
            the step needs.

    Raises:
        ValueError: ``port`` is not an integer in 1..65535.
        ClusterConfigError: ``TFPLACE_PORT`` is not one.

    Example:
        >>> [slurm_port({"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0"}) for job in ("1234", "1235")]
        [11760, 13808]
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
    blocks = min(max(1, -(-tasks_per_node // _PORT_BLOCK)), _PORT_BLOCKS)
    # a wide step takes the blocks of its job's next steps, moved down only at the very top
    first_block = min((_STEPS_PER_JOB * job_n + step_n) % _PORT_BLOCKS, _PORT_BLOCKS - blocks)
    return _PORT_LOW + first_block * _PORT_BLOCK


def reserved_ports(env: Mapping[str, str]) -> tuple[int, ...] | None:
    """The ports SLURM reserved for this step (``SLURM_STEP_RESV_PORTS``), or None.

    Example:
        >>> reserved_ports({"SLURM_STEP_RESV_PORTS": "12000-12002,12007"})
        (12000, 12001, 12002, 12007)
    """
    raw = env.get(RESERVED_PORTS_ENV, "").strip()
    if not raw:
        return None
    ports: list[int] = []
    for item in raw.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip(), flags=re.ASCII)
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, -1)
        if not m or not 1 <= lo <= hi <= 65535:
            raise fail(
                "SLURM", RESERVED_PORTS_ENV, f"cannot read {raw!r}; expected e.g. '12000-12003'"
            )
        ports += range(lo, hi + 1)
    return tuple(ports)


def step_ports(env: Mapping[str, str], port: int | None, tasks_per_node: int) -> tuple[int, ...]:
    """The port of a node's first, second, ... task of this step (every node alike).

    ``port`` or ``TFPLACE_PORT`` when set (consecutive ports from there); else the ports SLURM
    reserved for the step (:func:`reserved_ports`), which no other step can have at the same
    time; else consecutive ports from the derived :func:`slurm_port`.

    Raises:
        ClusterConfigError: the ports run beyond 65535, or SLURM reserved fewer ports than
            the step has tasks on a node.

    Example:
        >>> step_ports({"SLURM_STEP_RESV_PORTS": "12000-12003"}, None, 2)
        (12000, 12001)
        >>> step_ports({"SLURM_STEP_RESV_PORTS": "12000-12003"}, 3000, 2)
        (3000, 3001)
    """
    reserved = reserved_ports(env)
    if port is None and not env.get(PORT_ENV, "").strip() and reserved is not None:
        if len(reserved) < tasks_per_node:
            raise fail(
                "SLURM",
                RESERVED_PORTS_ENV,
                f"SLURM reserved {len(reserved)} port(s) ({env[RESERVED_PORTS_ENV]}) but the "
                f"step has {tasks_per_node} tasks on one node. Fix: srun --resv-ports="
                f"{tasks_per_node} (or more), or leave it out to let tfplace derive the ports",
            )
        return reserved[:tasks_per_node]
    first = slurm_port(env, port, tasks_per_node=tasks_per_node)
    if first + tasks_per_node - 1 > 65535:
        raise fail(
            "SLURM",
            "port",
            f"{tasks_per_node} tasks on one node need ports {first}.."
            f"{first + tasks_per_node - 1}, beyond 65535. Fix: a lower port",
        )
    return tuple(range(first, first + tasks_per_node))


def parse_slurm(env: Mapping[str, str], *, port: int | None = None) -> ClusterSpec | None:
    """Describe a SLURM step as a cluster of workers, one per task.

    Reads the variables srun gives each task (``SLURM_PROCID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_STEP_TASKS_PER_NODE`` such as ``2(x3),1``, ``SLURM_DISTRIBUTION``: block, cyclic
    or plane=N), falling back to the job's (``SLURM_JOB_NODELIST``, ``SLURM_TASKS_PER_NODE``,
    ``SLURM_NTASKS``). Works on CPU-only nodes too (TensorFlow's ``SlurmClusterResolver``
    fails there with ``range() arg 3 must not be zero``). Ports: see :func:`step_ports`.

    The batch script of a multi-task ``sbatch`` job is not a cluster: it runs once, as task 0,
    and the other tasks exist only once ``srun`` starts them. Building a cluster there would
    wait for workers that never come (``startup_timeout``, 900 s by default). So that process
    is not a cluster: this returns None and warns (:class:`~tfplace.errors.TfplaceWarning`)
    that the job asked for N tasks and that ``srun python train.py`` starts them. It trains
    on its own instead of stopping, because running once in the batch step is also how
    pre- and post-processing or evaluation scripts legitimately run in such a job.

    Args:
        env: the environment to read (``os.environ``, or a synthetic mapping in tests).
        port: the first port; by default ``TFPLACE_PORT``, else SLURM's reserved ports, else
            derived from the job and step ids (:func:`step_ports`). Tasks sharing a node get
            consecutive ports.

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
        raise fail("SLURM", "SLURM_NTASKS", f"{ntasks} tasks is more than tfplace handles")
    slurm_port(env, port)  # a bad port or TFPLACE_PORT is an error before anything else
    procid = _int_var(env, "SLURM_PROCID")
    list_name, hosts = _hosts(env)
    counts = _counts(env, ntasks, list_name, hosts)
    if not 0 <= procid < ntasks:
        raise fail("SLURM", "SLURM_PROCID", f"{procid} is out of range 0..{ntasks - 1}")
    ports = step_ports(env, port, max(counts))
    nodes = task_nodes(counts, _distribution_chunk(env, ntasks))
    job, step = _step_ids(env)
    if job and step is None:  # the batch script itself (see the docstring)
        _warn_batch_script(job, ntasks)
        return None
    return ClusterSpec(
        jobs=(("worker", _addresses(hosts, nodes, ports, list_name)),),
        task_type="worker",
        task_index=procid,
        source="SLURM",
        gpus_per_worker=_gpus_per_task(env, max(counts)),
    )


def _hosts(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The name of the node list variable in force (the step's first) and its hosts."""
    in_step = "SLURM_STEP_NODELIST" in env
    list_name = (
        "SLURM_STEP_NODELIST"
        if in_step
        else ("SLURM_JOB_NODELIST" if "SLURM_JOB_NODELIST" in env else "SLURM_NODELIST")
    )
    hosts = _expand_nodelist(env[list_name], list_name)
    if not hosts:
        raise fail("SLURM", list_name, f"no hosts in {env[list_name]!r}")
    return list_name, hosts


def _counts(env: Mapping[str, str], ntasks: int, list_name: str, hosts: list[str]) -> list[int]:
    """How many tasks each host runs: the step's tasks-per-node variable, else the job's,
    else ``ntasks`` spread evenly; checked against the hosts and ``ntasks``."""
    names = ("SLURM_STEP_TASKS_PER_NODE",) if list_name == "SLURM_STEP_NODELIST" else ()
    count_name = next((n for n in (*names, "SLURM_TASKS_PER_NODE") if env.get(n)), None)
    if count_name:
        counts = _tasks_per_node(env[count_name], count_name)
    else:
        per, extra = divmod(ntasks, len(hosts))
        counts = [per + (1 if i < extra else 0) for i in range(len(hosts))]
        count_name = "SLURM_TASKS_PER_NODE"
    if len(counts) != len(hosts) or sum(counts) != ntasks:
        raise fail(
            "SLURM",
            count_name,
            f"{counts} tasks on {len(hosts)} host(s) ({list_name}) do not add up to {ntasks} tasks",
        )
    return counts


def _addresses(
    hosts: list[str], nodes: list[int], ports: Sequence[int], list_name: str
) -> tuple[str, ...]:
    """``host:port`` of each task: the k-th task placed on a node gets that node's k-th port."""
    placed: dict[int, int] = {}
    addresses = []
    for node in nodes:
        k = placed.get(node, 0)
        addresses.append(f"{check_host(hosts[node], 'SLURM', list_name)}:{ports[k]}")
        placed[node] = k + 1
    return tuple(addresses)


def _gpus_per_task(env: Mapping[str, str], tasks_per_node: int) -> int | None:
    """GPUs each task of a node gets (``SLURM_GPUS_ON_NODE`` / ``_PER_NODE``), or None."""
    raw = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE")
    if not raw:
        return None
    digits = raw.rpartition(":")[2]
    return int(digits) // tasks_per_node if digits.isdigit() and digits.isascii() else None


def _warn_batch_script(job: str, ntasks: int) -> None:
    warnings.warn(
        f"SLURM: this process is the batch script of job {job}, which asked for {ntasks} "
        "tasks (SLURM_NTASKS), but only srun starts them: it trains alone, as one worker. "
        "Fix: start the training with srun in the batch script (srun python train.py)",
        TfplaceWarning,
        stacklevel=3,
    )
