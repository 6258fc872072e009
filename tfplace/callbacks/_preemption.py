"""Preemption: SIGTERM to any worker stops every worker at the same batch end.

The signalled worker announces the preemption through TensorFlow's coordination service
(key ``<base>``). Each worker's watcher thread sees it and proposes the first batch end it
will still check (``<base>/stop/<task>``); at that batch end every worker reads all
proposals and all stop at the latest one, so that collectives stay matched.

No failure waits silently: a worker that cannot publish (the announcement or its proposal)
logs a WARNING and reports the failure, with its proposal, under ``<base>/error``, which
every waiting worker looks at each :data:`~tfplace.cluster._multiworker.POLL_S` seconds;
they log it at WARNING and go on with the reported proposal. A worker that cannot even
report stops at its next batch end with the restart code, without a new backup.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any, Literal

from tfplace import _tf
from tfplace.cluster._multiworker import POLL_S, BarrierTimeoutError, kv_get, kv_set
from tfplace.errors import one_line

__all__ = ["Preemption"]

log = logging.getLogger("tfplace")

#: What a batch end does: go on, save and stop, or stop without saving (no agreement).
Verdict = Literal["train", "stop", "abort"]


class Preemption:
    """The SIGTERM handler, the watcher thread and the agreement on a stop step of one fit.

    Args:
        base: the key prefix of this fit (unique per fit, the same in every worker).
        me: this worker's ``"<task type>/<index>"``.
        everyone: every training task, the chief first (empty outside a cluster).
        timeout: seconds to wait for the other workers' proposals.

    Example:
        >>> alone = Preemption("tfplace/preempt/1", "worker/0", [], 60.0)
        >>> alone.check(1)  # no SIGTERM: train on
        'train'
    """

    def __init__(self, base: str, me: str, everyone: list[str], timeout: float) -> None:
        self.base = base
        self.me = me
        self.everyone = everyone
        self.timeout = timeout
        self.error_key = f"{base}/error"
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._flagged = False
        self._checked = 0  # the last batch end that saw no preemption
        self._stop_at: int | None = None
        self._abort: str | None = None
        self._sigterms = 0
        self._previous_handler: Any = None
        self._reported: set[str] = set()

    @property
    def multi_worker(self) -> bool:
        return len(self.everyone) > 1

    def start(self) -> None:
        """Install the SIGTERM handler (main thread only) and, with peers, the watcher."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.multi_worker:
            threading.Thread(target=self._watch, daemon=True, name="tfplace-preempt").start()

    def stop(self) -> None:
        """Put the previous handler back and end the watcher (within ``POLL_S`` seconds)."""
        self._done.set()
        if self._previous_handler is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_handler)
            except ValueError:  # not the main thread: the handler stays until exit
                log.debug("tfplace: could not restore the SIGTERM handler outside the main thread")
            self._previous_handler = None

    def check(self, ends: int) -> Verdict:
        """What batch end number ``ends`` (counted over the whole fit) does."""
        with self._lock:
            if not self._flagged and self._abort is None:
                self._checked = ends
                return "train"
            if self._abort is not None:
                return "abort"
        if not self.multi_worker:
            return "stop"
        if self._stop_at is None:
            ctx = _tf.coordination_context()
            proposals = [self._proposal(ctx, task) for task in self.everyone]
            if self._abort is not None:
                return "abort"
            self._stop_at = max(proposals)
        return "stop" if ends >= self._stop_at else "train"

    @property
    def abort_reason(self) -> str:
        return self._abort or ""

    # The signalled worker.

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._sigterms:  # a second SIGTERM (or fit() died without on_train_end): give up
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self._sigterms += 1
        log.warning("tfplace: SIGTERM received; saving a backup at the next step")
        if not self.multi_worker:
            with self._lock:
                self._flagged = True
            return
        threading.Thread(target=self._announce, daemon=True).start()

    def _announce(self) -> None:
        ctx = _tf.coordination_context()
        try:
            kv_set(ctx, self.base, "preempt")
        except Exception as err:
            if _tf.is_already_exists(err):
                return  # another worker was preempted first: the others know
            what = f"{self.me} could not announce its preemption ({self.base}: {one_line(err)})"
            log.warning("tfplace: %s; reporting it under %s instead", what, self.error_key)
            self._report(ctx, what, None)

    # Every worker.

    def _watch(self) -> None:
        """Wait for a preemption notice (or a reported failure); then propose the first batch
        end this worker will check, so that all workers can stop at the latest proposal."""
        ctx = _tf.coordination_context()
        while not self._done.is_set():
            try:
                notice = kv_get(ctx, self.base, POLL_S)
                failure = None if notice is not None else kv_get(ctx, self.error_key, 0.001)
            except Exception as err:
                if not self._done.is_set():
                    log.warning(
                        "tfplace: %s stopped watching for preemptions: the coordination "
                        "service failed (%s); a SIGTERM to another worker will not reach it",
                        self.me,
                        one_line(err),
                    )
                return
            if failure is not None:
                self._peer_failure(failure)
            if notice is not None or failure is not None:
                break
        else:
            return
        with self._lock:
            self._flagged = True
            proposal = self._checked + 1
        key = f"{self.base}/stop/{self.me}"
        try:
            kv_set(ctx, key, str(proposal))
        except Exception as err:
            what = f"{self.me} could not publish its stop proposal ({key}: {one_line(err)})"
            log.warning("tfplace: %s; reporting it under %s instead", what, self.error_key)
            self._report(ctx, what, proposal)

    def _proposal(self, ctx: Any, task: str) -> int:
        """``task``'s proposal, from its key or from the failure it reported instead."""
        key = f"{self.base}/stop/{task}"
        waited = 0.0
        while self._abort is None:
            try:
                value = kv_get(ctx, key, POLL_S)
                failure = None if value is not None else kv_get(ctx, self.error_key, 0.001)
            except Exception as err:
                self._abort = f"{self.me} could not read {key} ({one_line(err)})"
                log.warning("tfplace: %s", self._abort)
                return 0
            if value is not None:
                return int(value)
            if failure is not None:
                reported = self._peer_failure(failure)
                if reported is not None and reported[0] == task and reported[1] is not None:
                    return reported[1]
            waited += POLL_S
            if waited >= self.timeout:
                raise BarrierTimeoutError(
                    f"BackupAndRestore: {task} did not propose a step to stop at within "
                    f"{self.timeout:g} s after a preemption (this is {self.me}): it died, "
                    "hangs, or runs a different program"
                )
        return 0  # aborted: check() stops without saving

    def _report(self, ctx: Any, what: str, stop: int | None) -> None:
        """Publish a failure (with this worker's proposal) under the error key."""
        try:
            kv_set(ctx, self.error_key, json.dumps({"task": self.me, "what": what, "stop": stop}))
        except Exception as err:
            self._abort = (
                f"{what}, and could not report it either ({self.error_key}: {one_line(err)}); "
                "the other workers learn of it only when their collectives time out"
            )
            log.warning(
                "tfplace: %s; this worker stops at its next step without a new backup",
                self._abort,
            )

    def _peer_failure(self, text: str) -> tuple[str, int | None] | None:
        """Log a failure another worker reported (once); return its (task, proposal)."""
        try:
            failure = json.loads(text)
            reported: tuple[str, int | None] | None = (str(failure["task"]), failure["stop"])
            what = str(failure["what"])
        except (ValueError, KeyError, TypeError):
            reported, what = None, text
        if text not in self._reported:
            self._reported.add(text)
            log.warning("tfplace: preemption: %s; %s goes on with its report", what, self.me)
        return reported
