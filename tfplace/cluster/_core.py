"""The one supervision core of ``tfplace launch``: worker-group states, failures, restarts, signals.

Both launchers, local workers (:mod:`tfplace.cluster._launch`) and workers on other hosts over
ssh (:mod:`tfplace.cluster._remote`), run through :func:`supervise`. What differs between them
is only a :class:`Transport`: how the workers of one attempt are started, watched and stopped
on their hosts. Everything else is decided here, once:

- the worker group's state after each look (:class:`GroupState`: healthy, succeeded, failed,
  or stopped by a signal to the launcher);
- what a worker's exit means, in words (:class:`Failure`): a death by a signal, the restart exit
  code, an ordinary error, or a lost link where the transport declares one (ssh's 255);
- whether a failed group is started again (:class:`RestartPolicy`, Kubeflow's
  ``restartPolicy: ExitCode`` plus the transport's lost-link code);
- Ctrl-C and SIGTERM to the launcher (recorded, forwarded to the workers, never restarted);
- the stop: SIGTERM to every live worker, SIGKILL after the grace period, nothing left.

The shape follows torchrun's elastic agent (``torch/distributed/elastic/agent/server/api.py``):
one loop over the group's state decides restart or stop and counts the restarts; the local
agent supplies only ``_start_workers``, ``_stop_workers`` and ``_monitor_workers``.

Example:
    >>> failure = Failure.of(-9)
    >>> failure.cause("worker 1"), failure.retryable
    ('worker 1 was killed by SIGKILL (exit code 137)', True)
    >>> RestartPolicy(2, "retryable").verdict(Failure.of(1), 1).decision
    <Restart.PERMANENT: 'permanent'>
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import enum
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tfplace.cluster._output import WorkerOutput
from tfplace.cluster._restarts import (
    GLOBAL_BATCH_ENV,
    RESTART_COUNT_ENV,
    RESTART_EXIT_CODE,
    WORKER_BATCH_ENV,
    is_retryable,
)
from tfplace.cluster._result import LaunchResult
from tfplace.errors import ClusterConfigError

__all__ = [
    "GLOBAL_BATCH_ENV",
    "RESTART_ON",
    "WORKER_BATCH_ENV",
    "Failure",
    "FailureKind",
    "GroupState",
    "Interrupt",
    "LaunchResult",
    "LostLink",
    "Restart",
    "RestartPolicy",
    "Transport",
    "Verdict",
    "batch_env",
    "exit_code",
    "group_state",
    "signals_to",
    "supervise",
]

log = logging.getLogger("tfplace")

#: The values of ``restart_on``.
RESTART_ON = ("retryable", "any")


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: ``128 + n`` for a death by signal n.

    Example:
        >>> exit_code(-9), exit_code(3)
        (137, 3)
    """
    return 128 - returncode if returncode < 0 else returncode


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for a number without a name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ------------------------------------------------------------------------------ vocabulary


@dataclass(frozen=True)
class LostLink:
    """A transport's own exit code for "the connection to the host is gone" (ssh: 255).

    Attributes:
        code: the exit code the transport's client reports.
        meaning: what it means, in words, for the failure text.
    """

    code: int
    meaning: str


class FailureKind(enum.Enum):
    """What ended a worker, as the restart policy sees it."""

    #: ``subprocess`` saw a death by a signal (a negative return code).
    SIGNALLED = "signalled"
    #: Exit code 143: the worker saved and asks for a restart (or SIGTERM killed it).
    RESTART_CODE = "restart code"
    #: Exit code 128 + n: a shell's (or a remote wrapper's) report of a death by signal n.
    SIGNAL_CODE = "signal code"
    #: The transport's lost-link code (ssh's 255): host down, unreachable, or its ssh killed.
    LOST = "lost"
    #: Any other code: the program failed (1: an exception, 2: bad arguments, ...).
    ERROR = "error"


@dataclass(frozen=True)
class Failure:
    """One worker's failed exit, classified once for every transport.

    Attributes:
        kind: what ended it.
        code: the exit code as a shell reports it (128 + n for signal n).
        lost: the transport's lost-link code, where it declared one.
    """

    kind: FailureKind
    code: int
    lost: LostLink | None = None

    @classmethod
    def of(cls, returncode: int, lost: LostLink | None = None) -> Failure:
        """Classify ``returncode`` (``Popen.returncode``), given the transport's ``lost`` code.

        Example:
            >>> Failure.of(255).kind, Failure.of(255, LostLink(255, "ssh")).kind
            (<FailureKind.ERROR: 'error'>, <FailureKind.LOST: 'lost'>)
        """
        code = exit_code(returncode)
        if returncode < 0:
            kind = FailureKind.SIGNALLED
        elif lost is not None and code == lost.code:
            kind = FailureKind.LOST
        elif code == RESTART_EXIT_CODE:
            kind = FailureKind.RESTART_CODE
        elif is_retryable(code):
            kind = FailureKind.SIGNAL_CODE
        else:
            kind = FailureKind.ERROR
        return cls(kind, code, lost)

    @property
    def retryable(self) -> bool:
        """Whether ``restart_on="retryable"`` restarts it: everything but an ordinary error."""
        return self.kind is not FailureKind.ERROR

    def brief(self, who: str) -> str:
        """The launcher's line when the group is stopped for it: ``worker 1 exited with code 3``."""
        if self.kind is FailureKind.LOST:
            return self.cause(who)
        return f"{who} exited with code {self.code}"

    def cause(self, who: str) -> str:
        """Why ``who`` failed, in words: ``worker 1 was killed by SIGKILL (exit code 137)``."""
        if self.kind is FailureKind.SIGNALLED:
            return f"{who} was killed by {signal_name(self.code - 128)} (exit code {self.code})"
        if self.kind is FailureKind.LOST:
            assert self.lost is not None
            return f"{who}: lost the connection ({self.lost.meaning})"
        if self.kind is FailureKind.RESTART_CODE:
            return f"{who} exited with the restart exit code {self.code}"
        if self.kind is FailureKind.SIGNAL_CODE:
            return f"{who} exited with code {self.code} (128 + {signal_name(self.code - 128)})"
        return f"{who} exited with code {self.code}"


# ------------------------------------------------------------------------------ restart policy


class Restart(enum.Enum):
    """What happens after a failed attempt (see :meth:`RestartPolicy.verdict`)."""

    #: Start the whole group again.
    RESTART = "restart"
    #: ``max_restarts=0``: restarts were not asked for; the failure ends the launch silently.
    NOT_ASKED = "not asked"
    #: ``max_restarts`` restarts were made already.
    EXHAUSTED = "exhausted"
    #: The exit code is a permanent failure (and ``restart_on="retryable"``).
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Verdict:
    """Whether a failed attempt is restarted, and why not, in words."""

    decision: Restart
    reason: str = ""

    @property
    def restart(self) -> bool:
        """Whether the group is started again."""
        return self.decision is Restart.RESTART


@dataclass(frozen=True)
class RestartPolicy:
    """The one restart policy: ``limit`` restarts of the failures that ``on`` names.

    Attributes:
        limit: ``max_restarts``.
        on: ``"retryable"`` (a signal death, the restart code 143, the transport's lost link)
            or ``"any"``.
    """

    limit: int
    on: str

    def verdict(self, failure: Failure, attempt: int) -> Verdict:
        """Whether the failed ``attempt`` (1-based), ended by ``failure``, is restarted.

        Example:
            >>> RestartPolicy(2, "retryable").verdict(Failure.of(-9), 1).restart
            True
            >>> RestartPolicy(2, "retryable").verdict(Failure.of(1), 1).decision
            <Restart.PERMANENT: 'permanent'>
        """
        if attempt > self.limit:
            if self.limit == 0:
                return Verdict(Restart.NOT_ASKED)
            return Verdict(
                Restart.EXHAUSTED,
                f"restarts exhausted: {attempt} attempts (1 start + {self.limit} restarts)",
            )
        if self.on != "any" and not failure.retryable:
            lost = f"a lost link ({failure.lost.meaning}), " if failure.lost else ""
            return Verdict(
                Restart.PERMANENT,
                f"exit code {failure.code} is a permanent failure (retryable: a death by a "
                f"signal, {lost}or the restart exit code {RESTART_EXIT_CODE}); "
                "restart_on='any' (--restart-on any) restarts every failure",
            )
        return Verdict(Restart.RESTART)


def batch_env(global_batch: int | None, workers: int, source: str = "launch") -> dict[str, str]:
    """The variables that tell each of ``workers`` its part of a fixed ``global_batch``
    (``TFPLACE_GLOBAL_BATCH``, ``TFPLACE_WORKER_BATCH``); none without a global batch (pure).

    The training's math stays the same at every worker count only if the global batch does:
    a count that does not divide it is refused, naming the counts that would.

    Raises:
        ClusterConfigError: ``workers`` does not divide ``global_batch``.

    Example:
        >>> batch_env(96, 3)
        {'TFPLACE_GLOBAL_BATCH': '96', 'TFPLACE_WORKER_BATCH': '32'}
        >>> batch_env(96, 5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: launch: found 5 workers for a global batch of 96...
    """
    if global_batch is None:
        return {}
    if global_batch % workers:
        fits = [str(n) for n in range(1, min(global_batch, 64) + 1) if global_batch % n == 0]
        more = ", ..." if global_batch > 64 else ""
        raise ClusterConfigError(
            f"{source}: found {workers} workers for a global batch of {global_batch}, which "
            f"{workers} does not divide; expected a worker count that divides it "
            f"({', '.join(fits)}{more}), so that each worker takes an equal part and "
            "the training computes the same thing. Fix: change the hosts or slots, "
            "--min-workers, or the global batch"
        )
    return {GLOBAL_BATCH_ENV: str(global_batch), WORKER_BATCH_ENV: str(global_batch // workers)}


# ------------------------------------------------------------------------------ group state


class GroupState(enum.Enum):
    """A worker group's state after one look at its workers."""

    #: Every worker still runs, or has succeeded while others run.
    HEALTHY = "healthy"
    #: Every worker exited with code 0.
    SUCCEEDED = "succeeded"
    #: A worker exited with another code (the first one, by index, is the failed worker).
    FAILED = "failed"


def group_state(
    returncodes: Sequence[int | None], lost: LostLink | None = None
) -> tuple[GroupState, int | None]:
    """The group's state from its workers' return codes (None: still running), and the index
    of the failed worker: the first, or the first lost link where one is (a host's loss
    explains the errors of its peers, whose collectives gave up on it).

    Example:
        >>> group_state([None, 0]), group_state([0, -9]), group_state([0, 0])[0]
        ((<GroupState.HEALTHY: 'healthy'>, None), (<GroupState.FAILED: 'failed'>, 1), \
<GroupState.SUCCEEDED: 'succeeded'>)
        >>> group_state([1, 255], LostLink(255, "ssh"))
        (<GroupState.FAILED: 'failed'>, 1)
    """
    failed = [i for i, code in enumerate(returncodes) if code is not None and code != 0]
    if failed:
        for i in failed:
            code = returncodes[i]
            assert code is not None
            if Failure.of(code, lost).kind is FailureKind.LOST:
                return GroupState.FAILED, i
        return GroupState.FAILED, failed[0]
    if all(code == 0 for code in returncodes):
        return GroupState.SUCCEEDED, None
    return GroupState.HEALTHY, None


class Interrupt:
    """The signal the launcher itself received (Ctrl-C, SIGTERM), shared by every attempt."""

    def __init__(self) -> None:
        self.signal: int | None = None


@contextlib.contextmanager
def signals_to(interrupt: Interrupt) -> Iterator[None]:
    """Record SIGINT and SIGTERM in ``interrupt`` meanwhile (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(sig: int, _frame: object) -> None:
        interrupt.signal = sig

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------------ transports


class Transport(abc.ABC):
    """How the workers of one attempt are started, watched and stopped on their hosts.

    A transport decides nothing: :func:`supervise` calls :meth:`prepare` before each start,
    then :meth:`start`, looks at :meth:`returncodes` until the group's state is not healthy,
    :meth:`stop` on a failure or a signal, and :meth:`finish` after every attempt.
    """

    #: The transport's lost-link exit code, handed to the restart policy (ssh: 255).
    lost: LostLink | None = None
    #: Seconds a failure leaves the other workers between SIGTERM and SIGKILL, at most.
    failure_grace: float = float("inf")
    #: How the restart line says where the group starts again.
    restart_where: str = "on new ports"

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """How many workers the group has."""

    def label(self, index: int) -> str:
        """How the launcher names worker ``index`` in its lines: ``worker 1``."""
        return f"worker {index}"

    @abc.abstractmethod
    def prepare(self, attempt: int) -> None:
        """Find what attempt ``attempt`` (1-based) needs (ports, cores); raises
        :class:`ClusterConfigError` when it cannot start."""

    @abc.abstractmethod
    def start(self, attempt: int, output: WorkerOutput) -> None:
        """Start every worker of ``attempt``; their lines go to ``output``."""

    @abc.abstractmethod
    def returncodes(self) -> list[int | None]:
        """Each started worker's ``Popen.returncode`` now (None: still running)."""

    @abc.abstractmethod
    def stop(self, sig: int, grace: float) -> None:
        """Send ``sig`` to every live worker, SIGKILL after ``grace`` s; all have ended after."""

    def grown(self) -> str | None:
        """Why the group should start again on more workers now (a host that was out answers
        again), or None. A membership change, not a failure: never counted as a restart."""
        return None

    @abc.abstractmethod
    def finish(self) -> None:
        """After an attempt, whatever its end: nothing of it left, its output read to the end."""


@dataclass(frozen=True)
class Supervision:
    """What :func:`supervise` needs besides the transport."""

    policy: RestartPolicy
    grace: float
    output: WorkerOutput
    started: float


def supervise(transport: Transport, how: Supervision) -> LaunchResult:
    """Start the group, watch it, and start it again after each failure the policy allows.

    ``transport.prepare(1)`` has been called (its errors come before anything starts).

    Returns:
        The :class:`LaunchResult` of the last attempt; no worker is left running.
    """
    interrupt = Interrupt()
    with signals_to(interrupt):
        attempt = failures = 1  # starts so far; failed attempts so far, this one included
        while True:
            codes, failed, code, grown = _attempt(transport, how, interrupt, attempt)
            result = LaunchResult(
                returncode=code,
                worker_codes=tuple(None if c is None else exit_code(c) for c in codes),
                failed_worker=failed,
                seconds=time.monotonic() - how.started,
                attempts=attempt,
            )
            cause = None
            if grown is not None:  # a membership change: not a failure, not counted
                if group_state(codes)[0] is GroupState.SUCCEEDED:
                    return result
            elif failed is None:
                return result
            else:
                cause = _restart(transport, how, codes[failed], failed, (attempt, failures),
                                 interrupt)  # fmt: skip
                if cause is None:
                    return result
            try:
                transport.prepare(attempt + 1)
            except ClusterConfigError as err:
                how.output.say(f"cannot restart: {err}")
                log.warning("tfplace launch: cannot restart: %s", err)
                return result
            if interrupt.signal is not None:  # Ctrl-C while the next attempt was prepared
                how.output.say(f"received signal {interrupt.signal}; not restarting")
                return dataclasses.replace(result, returncode=128 + interrupt.signal)
            if cause is not None:  # said once the new group is known (its size may change)
                _say_restart(transport, how, cause, attempt, failures)
                failures += 1
            attempt += 1


def _attempt(
    transport: Transport, how: Supervision, interrupt: Interrupt, attempt: int
) -> tuple[list[int | None], int | None, int, str | None]:
    """One start of the group, watched until it ends: (return codes, failed worker, code, why
    it was stopped to grow)."""
    try:
        transport.start(attempt, how.output)
        failed, code, grown = _watch(transport, how, interrupt)
    except BaseException:
        transport.stop(signal.SIGTERM, how.grace)
        raise
    finally:
        transport.finish()
    if how.output.callback_error is not None:  # raised while the last lines were read
        raise how.output.callback_error
    return transport.returncodes(), failed, code, grown


def _watch(
    transport: Transport, how: Supervision, interrupt: Interrupt
) -> tuple[int | None, int, str | None]:
    """Look at the group until it is not healthy; stop it on a failure, a signal, or to grow
    (SIGTERM and the full grace: a ``BackupAndRestore`` saves and exits 143)."""
    while True:
        if how.output.callback_error is not None:
            how.output.say("the on_line callback raised an error; stopping the workers")
            transport.stop(signal.SIGTERM, how.grace)
            raise how.output.callback_error
        sig = interrupt.signal
        if sig is not None:
            how.output.say(f"received signal {sig}; stopping the workers")
            transport.stop(sig, how.grace)
            return None, 128 + sig, None
        codes = transport.returncodes()
        state, failed = group_state(codes, transport.lost)
        if state is GroupState.FAILED:
            assert failed is not None
            raw = codes[failed]
            assert raw is not None
            failure = Failure.of(raw, transport.lost)
            how.output.say(f"{failure.brief(transport.label(failed))}; stopping the others")
            transport.stop(signal.SIGTERM, min(how.grace, transport.failure_grace))
            return failed, failure.code, None
        if state is GroupState.SUCCEEDED:
            return None, 0, None
        grown = transport.grown()
        if grown is not None:
            how.output.say(f"{grown}: stopping the group to start it again on more workers")
            log.warning("tfplace launch: %s: stopping the group to start it on more workers", grown)
            transport.stop(signal.SIGTERM, how.grace)
            return None, 0, grown
        time.sleep(0.01)


def _restart(
    transport: Transport,
    how: Supervision,
    raw: int | None,
    failed: int,
    counts: tuple[int, int],
    interrupt: Interrupt,
) -> str | None:
    """The failure's cause when the failed attempt is restarted, else None (and why not, in the
    output and log). ``counts``: the starts so far, and the failed attempts so far (this one
    included; what the policy counts: a start to grow the group is not a failure)."""
    attempt, failures = counts
    assert raw is not None
    failure = Failure.of(raw, transport.lost)
    cause = failure.cause(transport.label(failed))
    say = how.output.say
    if interrupt.signal is not None:
        say(f"received signal {interrupt.signal}; not restarting")
        log.warning(
            "tfplace launch: %s, and the launcher received signal %d: not restarting",
            cause,
            interrupt.signal,
        )
        return None
    verdict = how.policy.verdict(failure, failures)
    if verdict.decision is Restart.NOT_ASKED:
        return None
    if not verdict.restart:
        say(f"not restarting: {verdict.reason}; exit code {failure.code}")
        log.warning(
            "tfplace launch: %s on attempt %d; not restarting: %s. Exit code %d",
            cause,
            attempt,
            verdict.reason,
            failure.code,
        )
        return None
    return cause


def _say_restart(
    transport: Transport, how: Supervision, cause: str, attempt: int, failures: int
) -> None:
    n, limit, where = transport.size, how.policy.limit, transport.restart_where
    how.output.say(
        f"restarting all {n} workers {where} (restart {failures} of {limit}, "
        f"{RESTART_COUNT_ENV}={attempt})"
    )
    log.warning(
        "tfplace launch: %s on attempt %d; restarting all %d workers %s (restart %d of %d, %s=%d)",
        cause,
        attempt,
        n,
        where,
        failures,
        limit,
        RESTART_COUNT_ENV,
        attempt,
    )
