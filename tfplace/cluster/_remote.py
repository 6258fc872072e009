"""Workers on other hosts over SSH: the ssh transport of the launcher core.

Behind ``tfplace launch --hosts/--hostfile``. :class:`SshWorkers` only starts, watches and
stops workers; the supervision (states, failures, restarts, signals) is the core's
(:mod:`tfplace.cluster._core`). Each worker is one ``ssh`` client on the launching machine
running a small wrapper on its host (:mod:`tfplace.cluster._ssh`), which stops the worker when
its input closes or the launcher's heartbeat stops, and reports the worker's pid and raw exit
status. So nothing is left on a host after success, failure, Ctrl-C, a killed launcher or a
lost link.

Before each attempt one short ssh call per host (in parallel) reports that host's usable cores
and free TCP ports (or checks fixed ones): the workers' ``TF_CONFIG`` names the hosts as written
in the host list (an ssh-config alias by an address of its host), with ports free on each host,
and each worker's TensorFlow thread pools get its share of its host's cores
(:func:`~tfplace._decide.threads.split_threads`).

Only chosen variables of the launcher's environment reach the workers (ssh does not forward
the environment): TensorFlow's own by an explicit list, a few families by prefix, and those
``forward`` names (:mod:`tfplace.cluster._forward`; never Terraform's ``TF_VAR_*``,
``TF_TOKEN_*``, ``TF_CLI_ARGS*``); the rest comes from the host's own login environment.

A host that answers nothing for ``link_timeout`` seconds (default
:data:`~tfplace.cluster._ssh.LINK_TIMEOUT`) ends its ssh (exit code 255): the transport's
lost link, which the restart policy retries. A shorter blip is ridden through; while a host is
silent, a peer's failure with an ordinary error (its collective gave up on the silent host) is
held until the silent host answers again (the error stands) or is lost (the loss is the
failure, and retried).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tfplace._decide.threads import split_threads
from tfplace._facts.cluster.spec import ClusterSpec
from tfplace.cluster._core import (
    Failure,
    FailureKind,
    LaunchResult,
    LostLink,
    RestartPolicy,
    Supervision,
    Transport,
    batch_env,
    supervise,
)
from tfplace.cluster._forward import forwarded_env
from tfplace.cluster._hosts import HostSlots, parse_hostfile, parse_hosts, worker_hosts
from tfplace.cluster._output import WorkerOutput
from tfplace.cluster._restarts import RESTART_COUNT_ENV
from tfplace.cluster._ssh import (
    _WRAPPER,
    CONTROL,
    LINK_TIMEOUT,
    SSH_LOST,
    Probe,
    heartbeat_timeout,
    probe_all,
    probe_each,
    ssh_options,
)
from tfplace.errors import ClusterConfigError

__all__ = ["FAILURE_GRACE", "REJOIN_EVERY", "SILENT_AFTER", "SshWorkers", "launch_on_hosts"]

log = logging.getLogger("tfplace")

#: After a worker failure the others get SIGTERM and at most this long before SIGKILL (see
#: ``launch_on_hosts``).
FAILURE_GRACE = 1.0

#: Seconds between two probes of the hosts that are out (``rejoin``).
REJOIN_EVERY = 5.0

#: Seconds without a line from a host (its wrapper writes one a second) after which the host is
#: silent: a peer's ordinary error is then held until the silent host's fate is known.
SILENT_AFTER = 2.5


class _Worker:
    """One ssh client running the wrapper, and what the launcher heard from it."""

    def __init__(self, index: int, host: str, proc: subprocess.Popen[bytes]) -> None:
        self.index = index
        self.host = host
        self.proc = proc
        self.lock = threading.Lock()
        self.readers: list[threading.Thread] = []
        #: When a line last came from the host (the wrapper's beat, once a second).
        self.heard = time.monotonic()
        #: When the ssh client was first seen ended.
        self.ended: float | None = None
        #: The worker's own ``Popen.returncode`` as its wrapper reported it (negative for a
        #: death by a signal), once it did.
        self.reported: int | None = None

    def send(self, word: str) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()

    def close_input(self) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def output_line(self, _line: str) -> bool:
        """A line of the worker's output: the host is alive; the line is printed."""
        self.heard = time.monotonic()
        return False

    def control(self, output: WorkerOutput, line: str) -> bool:
        """Read one line of the wrapper's standard error; True when it was the wrapper's own
        (anything else, ssh's own messages, is printed as the worker's). Only the wrapper's
        lines say the host is alive: ssh's own (``Timeout, server not responding``) do not."""
        if not line.startswith(CONTROL):
            return False
        self.heard = time.monotonic()
        words = line[len(CONTROL) :].split()
        if words[:1] == ["start"] and len(words) == 3:
            output.say(f"worker {self.index}: pid {words[1]} on host {words[2]}")
        elif words[:1] == ["exit"] and len(words) == 2:
            with contextlib.suppress(ValueError):
                self.reported = int(words[1])
        return True

    def returncode(self) -> int | None:
        """The ssh client's return code, or the worker's own where its wrapper reported it
        (so that a worker killed by a signal on its host reads as one here too)."""
        code = self.proc.poll()
        if code is None:
            return None
        if self.ended is None:
            self.ended = time.monotonic()
            for reader in self.readers:  # the report is read before the pipes end
                reader.join(timeout=2.0)
        raw = self.reported
        if code != 0 and raw is not None and (128 - raw if raw < 0 else raw) == code:
            return raw
        return code

    def silent(self, now: float) -> bool:
        """Whether the host, its worker still running, has said nothing for a while."""
        return self.proc.poll() is None and now - self.heard > SILENT_AFTER


def discover_hosts(command: str) -> tuple[HostSlots, ...]:
    """The hosts ``command`` prints now (Horovod's ``--host-discovery-script``): ``host:slots``
    (or ``host slots=N``, or ``host``) a line, run through the shell.

    Raises:
        ClusterConfigError: the command fails, prints no host, or prints a malformed line
            (the message names the line).

    Example:
        >>> [(h.host, h.slots) for h in discover_hosts("printf 'node1:2\\nnode2\\n'")]
        [('node1', 2), ('node2', 1)]
    """
    try:
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ClusterConfigError(
            f"launch: --host-discovery {command!r} did not run ({err}); expected a command "
            "that prints the current hosts within 60 s. Fix: check the command"
        ) from err
    said = done.stderr.strip().splitlines()
    if done.returncode != 0:
        raise ClusterConfigError(
            f"launch: --host-discovery {command!r} failed (exit code {done.returncode}: "
            f"{said[-1] if said else 'no message'}); expected it to print the current hosts, "
            "host:slots a line. Fix: run it by hand and fix what it says"
        )
    return parse_hostfile(done.stdout, source="--host-discovery")


def launch_on_hosts(
    command: Sequence[str],
    hosts: str | Sequence[HostSlots] | None,
    *,
    num_workers: int | None = None,
    env: Mapping[str, str] | None = None,
    forward: Sequence[str] = (),
    ssh: Sequence[str] = ("ssh",),
    python: str | None = None,
    port: int | None = None,
    grace_seconds: float = 5.0,
    failure_grace: float = FAILURE_GRACE,
    out: IO[str] | None = None,
    on_line: Callable[[int, str], None] | None = None,
    max_restarts: int = 0,
    restart_on: str = "retryable",
    cwd: str | None = None,
    link_timeout: float = LINK_TIMEOUT,
    min_workers: int | None = None,
    rejoin: bool = False,
    host_discovery: str | None = None,
    global_batch: int | None = None,
) -> LaunchResult:
    """Run ``command`` as workers on ``hosts`` over ssh; see :func:`tfplace.cluster._launch.launch`.

    ``hosts`` is a host list (``"node1:2,node2:2"``, see :func:`parse_hosts`) or parsed
    entries; ``num_workers``, when given, must equal its slot count. Output is cut into lines and
    prefixed as the local launcher's (``tfplace.cluster._output``).

    ``python`` is the interpreter that runs the small wrapper and probe on each host (default:
    this one's path, the same environment on every host as Horovod and DeepSpeed expect);
    ``cwd`` the workers' folder (default: this one's: a shared file system). ``port``: a fixed
    base (workers on a host use port, port + 1, ...; checked free) instead of free ports.
    A worker failure (not a launcher signal) gives the others ``min(grace_seconds,
    failure_grace)`` between SIGTERM and SIGKILL: in a synchronous group the survivors wait in
    a collective on the lost peer and cannot save anything, so a long grace only delays the
    restart. ssh's exit code 255 (a lost connection or host) is retried like a killed worker.
    ``link_timeout``: seconds a host may answer nothing before its workers are taken as lost;
    a shorter blip is ridden through, and a survivor's own error while a peer's host is silent
    waits for that host's fate (a lost host explains its peers' collective errors).
    ``min_workers``: before each start every listed host is probed, and the group starts on
    those that answer if they hold at least this many workers (who is out, and why, is said
    in one line); fewer is a ``ClusterConfigError`` at the first start and ends the launch
    ("cannot restart") at a restart. None: every host must answer. ``rejoin`` (with
    ``min_workers``): while hosts are out, they are probed every :data:`REJOIN_EVERY` s, and
    when one answers the group is stopped as for a preemption (SIGTERM and the full grace: a
    ``BackupAndRestore`` saves and exits 143) and started again on more workers; this start is
    not counted against ``max_restarts``. ``host_discovery``: a shell command that prints the
    current hosts (``host:slots`` a line, Horovod's convention), run before each start (and by
    ``rejoin``'s watcher) instead of a fixed ``hosts``. ``global_batch``: each start's worker
    count must divide it (else that start is refused, naming the counts that would), and each
    worker gets ``TFPLACE_GLOBAL_BATCH`` and its part, ``TFPLACE_WORKER_BATCH``.

    Returns:
        A ``LaunchResult``; no worker process is left on any host, whatever the path.

    Raises:
        ClusterConfigError: a bad host list, a host that cannot be reached or logged in to
            without a prompt, a Python that does not run there, a fixed port in use, or
            ``num_workers`` different from the slots (checked before any worker starts).

    Example:
        >>> launch_on_hosts(["true"], "node1:2", num_workers=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: launch: found -n 3 workers, expected the 2 slots...
    """
    hosts_given = host_discovery is None
    if host_discovery is not None:
        if hosts is not None or num_workers is not None:
            raise ClusterConfigError(
                "launch: --host-discovery gives the hosts and their slots; found a host list "
                "or -n as well. Fix: leave --hosts/--hostfile and -n out"
            )
        hosts = discover_hosts(host_discovery)
    if hosts is None:
        raise ValueError("launch_on_hosts needs hosts or host_discovery")
    if isinstance(hosts, str):
        hosts = parse_hosts(hosts)
    slots = sum(h.slots for h in hosts)
    if num_workers is not None and num_workers != slots:
        raise ClusterConfigError(
            f"launch: found -n {num_workers} workers, expected the {slots} slots of the host "
            f"list ({', '.join(f'{h.host}:{h.slots}' for h in hosts)}). Fix: leave -n out "
            "with --hosts/--hostfile, or make the slots add up to it"
        )
    # (with discovery the slots change from start to start: each start checks them)
    if min_workers is not None and not 1 <= min_workers <= (slots if hosts_given else min_workers):
        raise ClusterConfigError(
            f"launch: found --min-workers {min_workers}, expected 1 to the {slots} slots of "
            "the host list. Fix: lower it, or list more hosts"
        )
    setup = _Setup(
        command=tuple(command),
        hosts=tuple(hosts),
        base=dict(os.environ if env is None else env),
        forward=tuple(forward),
        ssh=tuple(ssh),
        python=python or sys.executable,
        workdir=cwd or os.getcwd(),
        port=port,
        grace=float(grace_seconds),
        link_timeout=float(link_timeout),
        min_workers=min_workers,
        rejoin=rejoin,
        discovery=host_discovery,
        global_batch=global_batch,
    )
    forwarded_env(setup.base, setup.forward)  # a bad -x is an error before anything starts
    started = time.monotonic()
    workers = SshWorkers(setup, failure_grace)
    workers.prepare(1)  # errors before anything starts
    how = Supervision(
        RestartPolicy(max_restarts, restart_on),
        grace_seconds,
        WorkerOutput(out or sys.stdout, on_line),
        started,
    )
    return supervise(workers, how)


@dataclass(frozen=True)
class _Setup:
    """What every attempt on the hosts starts from, checked by :func:`launch_on_hosts`."""

    command: tuple[str, ...]
    hosts: tuple[HostSlots, ...]
    base: Mapping[str, str]
    forward: tuple[str, ...]
    ssh: tuple[str, ...]
    python: str
    workdir: str
    port: int | None
    grace: float
    link_timeout: float = LINK_TIMEOUT
    min_workers: int | None = None
    rejoin: bool = False
    discovery: str | None = None
    global_batch: int | None = None


class SshWorkers(Transport):
    """The ssh transport: one ssh client a worker, each running the wrapper on its host.

    Its lost-link code (ssh's 255) is the one thing it tells the restart policy.
    """

    lost = LostLink(SSH_LOST, "ssh exit code 255: host down, unreachable or killed")

    def __init__(self, setup: _Setup, failure_grace: float = FAILURE_GRACE) -> None:
        self.setup = setup
        self.failure_grace = failure_grace
        self.restart_where = "on the same ports" if setup.port else "on new ports"
        self.probes: list[Probe] = []
        #: The hosts of the current attempt: all listed, or (``min_workers``) those answering.
        self.active: tuple[HostSlots, ...] = setup.hosts
        #: The hosts listed for the current attempt: ``hosts``, or what discovery printed.
        self.listed: tuple[HostSlots, ...] = setup.hosts
        #: Each worker's part of the fixed global batch, if any (``batch_env``).
        self.batch: dict[str, str] = {}
        #: Who is out of this attempt and why, said when it starts.
        self.news: list[str] = []
        #: A host that was out and answers again (``rejoin``), once the watcher found one.
        self.returned: str | None = None
        self.workers: list[_Worker] = []
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()

    @property
    def size(self) -> int:
        return sum(h.slots for h in self.active)

    def label(self, index: int) -> str:
        host = worker_hosts(self.active)[index][0]
        return f"worker {index} on {host}"

    def prepare(self, attempt: int) -> None:
        """Probe every listed host; with ``min_workers``, go on with those that answer."""
        s = self.setup
        if s.discovery is not None and attempt > 1:  # the first list was found by the launch
            self.listed = discover_hosts(s.discovery)
        if s.min_workers is None:
            self.probes = probe_all(s.ssh, s.python, self.listed, s.port, "launch", s.link_timeout)
            self.active = self.listed
            self.batch = batch_env(s.global_batch, self.size)
            return
        answers = probe_each(s.ssh, s.python, self.listed, s.port, "launch", s.link_timeout)
        active, out = members(self.listed, answers, s.min_workers)
        self.active = tuple(h for h, _ in active)
        self.probes = [p for _, p in active]
        self.batch = batch_env(s.global_batch, self.size)  # before anything is said or started
        self.news = [
            f"host {h.host} is out ({err}); going on with {self.size} workers on "
            + ", ".join(h.host for h in self.active)
            for h, err in out
        ]
        for line in self.news:
            log.warning("tfplace launch: %s", line)

    def start(self, attempt: int, output: WorkerOutput) -> None:
        self.workers, self.threads, self.done = [], [], threading.Event()
        for line in self.news:
            output.say(line)
        commands = _commands(self.setup, self.active, self.probes, attempt, self.batch)
        for index, (host, cmd, spec) in enumerate(commands):
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            worker = _Worker(index, host, proc)
            self.workers.append(worker)
            worker.send(json.dumps(spec, separators=(",", ":")))
            prefix = f"[worker {index} {host}] "
            for stream, control in (
                (proc.stdout, worker.output_line),
                (proc.stderr, lambda line, w=worker: w.control(output, line)),
            ):
                reader = threading.Thread(
                    target=output.pump, args=(index, prefix, stream, control), daemon=True
                )
                reader.start()
                worker.readers.append(reader)
                self.threads.append(reader)
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        self.threads.append(beat)
        self.returned = None
        out = [h for h in self.listed if h not in self.active]
        if self.setup.rejoin and (out or self.setup.discovery is not None):
            watch = threading.Thread(target=self._watch_out, args=(out, self.done), daemon=True)
            watch.start()
            self.threads.append(watch)

    def _watch_out(self, out: list[HostSlots], done: threading.Event) -> None:
        """Probe the hosts that are out every :data:`REJOIN_EVERY` s until one answers."""
        s = self.setup
        while not done.wait(REJOIN_EVERY):
            if s.discovery is not None:  # new hosts appear here, not only those that were out
                try:
                    listed = discover_hosts(s.discovery)
                except ClusterConfigError as err:
                    log.info("tfplace launch: %s", err)
                    continue
                out = [h for h in listed if h not in self.active]
                if not out:
                    continue
            answers = probe_each(s.ssh, s.python, out, s.port, "launch", s.link_timeout, True)
            back = [h.host for h, a in zip(out, answers, strict=True) if isinstance(a, Probe)]
            if back and not done.is_set():
                self.returned = f"host {', '.join(back)} answers again"
                return

    def grown(self) -> str | None:
        return self.returned

    def _heartbeat(self) -> None:
        while not self.done.wait(1.0):
            for w in self.workers:
                if w.proc.poll() is None:
                    w.send(".")

    def returncodes(self) -> list[int | None]:
        """Each worker's return code; an ordinary error is held (None) while another host is
        silent, for at most the link timeout plus 2 s after it ended: if the silent host is
        lost, its loss is the failure (its peers' errors follow from it)."""
        codes = [w.returncode() for w in self.workers]
        now = time.monotonic()
        if not any(w.silent(now) for w in self.workers):
            return codes
        hold = self.setup.link_timeout + 2.0
        for i, (w, code) in enumerate(zip(self.workers, codes, strict=True)):
            if code is None or code == 0 or w.ended is None or now - w.ended > hold:
                continue
            if Failure.of(code, self.lost).kind is FailureKind.ERROR:
                codes[i] = None
        return codes

    def stop(self, sig: int, grace: float) -> None:
        live = [w for w in self.workers if w.proc.poll() is None]
        for w in live:
            w.send(f"SIG {int(sig)}")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in live):
            time.sleep(0.02)
        for w in live:
            if w.proc.poll() is None:
                w.send("KILL")
            w.close_input()
        # The wrappers exit once their workers are gone and ssh ends with them; an ssh whose
        # host does not answer is killed here (its wrapper stops on the missing heartbeat).
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in live):
            time.sleep(0.02)
        self._kill_clients()

    def _kill_clients(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
            w.close_input()

    def finish(self) -> None:
        if all(w.proc.poll() is not None for w in self.workers):
            self._kill_clients()
        self.done.set()
        for t in self.threads:
            t.join(timeout=5)


def members(
    hosts: Sequence[HostSlots],
    answers: Sequence[Probe | ClusterConfigError],
    min_workers: int,
) -> tuple[list[tuple[HostSlots, Probe]], list[tuple[HostSlots, ClusterConfigError]]]:
    """The hosts an attempt starts on (those that answered the probe) and those out, with why
    (pure); fewer than ``min_workers`` slots among those that answered is an error.

    Raises:
        ClusterConfigError: the hosts that answered hold fewer than ``min_workers`` slots.

    Example:
        >>> a, b = HostSlots("a", 2), HostSlots("b", 1)
        >>> on, out = members([a, b], [Probe(4, (1, 2), "a"), ClusterConfigError("down")], 2)
        >>> [h.host for h, _ in on], [(h.host, str(e)) for h, e in out]
        (['a'], [('b', 'down')])
    """
    on = [(h, p) for h, p in zip(hosts, answers, strict=True) if isinstance(p, Probe)]
    out = [(h, e) for h, e in zip(hosts, answers, strict=True) if not isinstance(e, Probe)]
    slots = sum(h.slots for h, _ in on)
    if slots < min_workers:
        why = "; ".join(f"{h.host}: {e}" for h, e in out)
        raise ClusterConfigError(
            f"launch: found {slots} workers on the hosts that answer "
            f"({', '.join(h.host for h, _ in on) or 'none'}), expected at least --min-workers "
            f"{min_workers}. Out: {why}. Fix: bring a host back, list more hosts, or lower "
            "--min-workers"
        )
    return on, out


def _commands(
    setup: _Setup,
    hosts: Sequence[HostSlots],
    probes: Sequence[Probe],
    attempt: int,
    batch: Mapping[str, str],
) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Each worker's (host, ssh command, wrapper description), workers numbered host by host."""
    by_host = dict(zip((h.host for h in hosts), probes, strict=True))
    layout = worker_hosts(hosts)
    addresses = [f"{by_host[host].address}:{by_host[host].ports[slot]}" for host, slot in layout]
    cluster = ClusterSpec.from_hosts(addresses, source="launch")
    shared = forwarded_env(setup.base, setup.forward)
    threads = {h.host: split_threads(by_host[h.host].cores, h.slots, setup.base) for h in hosts}
    if attempt == 1:
        for h in hosts:
            for reason in threads[h.host].reasons:
                log.info("tfplace launch: %s: %s", h.host, reason)
        log.info("tfplace launch: %d workers on %s", len(addresses), ", ".join(addresses))
    wrapper = shlex.join([setup.python, "-I", "-S", "-c", _WRAPPER])
    options = ssh_options(setup.link_timeout)
    result = []
    for index, (host, _) in enumerate(layout):
        worker_env = {
            **shared,
            **dict(threads[host].set_env),
            "TF_CONFIG": cluster.for_task(index).to_tf_config(),
            "TFPLACE_WORKER_INDEX": str(index),
            RESTART_COUNT_ENV: str(attempt - 1),
            **batch,
        }
        worker_env.setdefault("PYTHONUNBUFFERED", "1")
        spec = {
            "argv": list(setup.command),
            "env": worker_env,
            "cwd": setup.workdir,
            "grace": setup.grace,
            "heartbeat": heartbeat_timeout(setup.link_timeout),
        }
        result.append((host, [*setup.ssh, *options, host.strip("[]"), wrapper], spec))
    return result
