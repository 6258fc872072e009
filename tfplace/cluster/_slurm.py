"""SLURM: the cluster of a ``srun`` step from its environment, and its ports (pure).

Every malformed input raises :class:`~tfplace.errors.ClusterConfigError` naming ``SLURM`` and
the variable at fault.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Mapping, Sequence

from tfplace.cluster._spec import ClusterSpec, check_host, fail_at as fail
from tfplace.errors import ClusterConfigError, TfplaceWarning

__all__ = ["PORT_ENV", "parse_slurm", "slurm_port", "task_nodes"]


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
        raise fail("SLURM", "SLURM_NTASKS", f"{ntasks} tasks is more than tfplace handles")
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
        raise fail("SLURM", list_name, f"no hosts in {env[list_name]!r}")
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
        raise fail(
            "SLURM",
            count_name,
            f"{counts} tasks on {len(hosts)} host(s) ({list_name}) do not add up to {ntasks} tasks",
        )
    if not 0 <= procid < ntasks:
        raise fail("SLURM", "SLURM_PROCID", f"{procid} is out of range 0..{ntasks - 1}")
    if first_port + max(counts) - 1 > 65535:
        raise fail(
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
