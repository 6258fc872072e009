"""Every worker must see the chief's backups: the chief chooses, the others check.

Each worker listing ``backup_dir`` on its own can resume at different epochs (a folder that
is not shared, a network file system's stale directory cache): a collective hang, not an
error. So the chief chooses the backup to restore and publishes its number through
TensorFlow's coordination service; every worker checks that it sees that very backup and
publishes its verdict; all read all verdicts and restore it, or all raise the same
:class:`~tfplace.errors.ClusterConfigError`. The first save of a ``fit`` is checked the same
way: the chief writes, then every worker must see what it wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tfplace import _tf
from tfplace.callbacks._keras import chief_task, task, tasks
from tfplace.callbacks._store import BackupStore
from tfplace.cluster._multiworker import PeerError, kv_set, kv_wait
from tfplace.errors import ClusterConfigError, one_line

__all__ = ["DEFAULT_GRACE_S", "agree_on_restore", "check_saved"]

#: Seconds a worker keeps looking for a backup it does not see before calling ``backup_dir``
#: not shared. A network file system may hide a new folder that long: Linux's NFS client
#: caches a directory's attributes (and the names it did not find) for up to ``acdirmax``,
#: 60 s by default. ``BackupAndRestore(shared_grace=...)`` changes it.
DEFAULT_GRACE_S = 65.0

_NFS_HINT = (
    "On a network file system (NFS), a worker may see a new backup only once its attribute "
    "cache expires (acdirmax, 60 s by default; names it did not find are cached too, see "
    "lookupcache): raise BackupAndRestore(shared_grace=...) above the mount's cache time, or "
    "mount with a shorter one (actimeo=...) or lookupcache=positive."
)


def agree_on_restore(
    model: Any, store: BackupStore, key: str, timeout: float, grace: float = DEFAULT_GRACE_S
) -> int | None:
    """The number of the backup every worker restores (None: start afresh).

    Raises:
        ClusterConfigError: a worker does not see the backup the chief chose (or sees
            backups the chief does not): ``backup_dir`` is not shared storage; or a worker
            could not read ``backup_dir`` (every worker raises, within seconds).
    """

    def verdict(chosen: str | None) -> str:
        if chosen is None:  # the chief chooses
            latest = store.latest()
            return "none" if latest is None else str(latest)
        if chosen == "none":
            mine = store.latest()
            if mine is None:
                return "ok"
            return f"{task(model)} sees backup-{mine:08d} in {store.root!r}, the chief sees none"
        if _visible(store, int(chosen), grace):
            return "ok"
        return (
            f"{task(model)} does not see backup-{int(chosen):08d} in {store.root!r}, which "
            f"the chief restores (looked for {grace:g} s)"
        )

    chosen = _exchange(model, store, key, verdict, timeout)
    return None if chosen == "none" else int(chosen)


def check_saved(
    model: Any,
    store: BackupStore,
    number: int,
    key: str,
    timeout: float,
    grace: float = DEFAULT_GRACE_S,
) -> None:
    """After the chief saved backup ``number``, check that every worker sees it.

    Raises:
        ClusterConfigError: a worker does not see it (``backup_dir`` is not shared storage),
            or could not read ``backup_dir``.
    """

    def verdict(chosen: str | None) -> str:
        if chosen is None or _visible(store, number, grace):
            return "ok"
        return (
            f"{task(model)} does not see backup-{number:08d} in {store.root!r}, which the "
            f"chief just wrote (looked for {grace:g} s)"
        )

    _exchange(model, store, key, verdict, timeout)


class _VerdictError(Exception):
    """This worker could not give its verdict (its text says why); already published."""


def _exchange(
    model: Any, store: BackupStore, key: str, verdict: Callable[[str | None], str], timeout: float
) -> str:
    """The chief publishes ``verdict(None)``; each other worker waits for it, publishes
    ``verdict(chief's)``; everyone reads every verdict. Returns the chief's.

    No failure waits silently: a worker whose verdict raises (it cannot read ``backup_dir``)
    publishes that failure as its verdict, or, where it cannot publish, under
    ``<key>/error``, which every waiting worker looks at each ``POLL_S`` seconds; every
    worker then raises the same :class:`ClusterConfigError` within seconds.
    """
    ctx = _tf.coordination_context()
    me, chief = task(model), chief_task(model)
    error_key = f"{key}/error"
    folder = store.root
    try:
        if me == chief:
            chosen = _publish(ctx, f"{key}/{chief}", verdict, None, me, store, error_key)
        else:
            chosen, folder = json.loads(
                kv_wait(ctx, f"{key}/{chief}", timeout, error_key=error_key)
            )
            _publish(ctx, f"{key}/{me}", verdict, chosen, me, store, error_key)
        problems = [
            answer
            for other in tasks(model)
            if other != chief
            and (answer := kv_wait(ctx, f"{key}/{other}", timeout, error_key=error_key)) != "ok"
        ]
    except (PeerError, _VerdictError) as err:
        problems = [str(err)]
    if problems and all(" could not read " in p or " could not publish" in p for p in problems):
        raise ClusterConfigError(  # access, not sharing: the shared-storage advice would mislead
            f"BackupAndRestore: {'; '.join(problems)}; this is {me}. Every worker must be able "
            f"to read backup_dir {folder!r}, and the chief to write it: check its permissions, "
            "that it is mounted on every machine, or the bucket's credentials."
        )
    if problems:
        raise ClusterConfigError(
            f"BackupAndRestore: the workers do not see the same backups (the chief's "
            f"backup_dir is {folder!r}; this is {me}; {'; '.join(problems)}). backup_dir must "
            "be shared storage: one folder that every worker reads and the chief writes (a "
            "network file system, or a bucket such as gs://...), given as the same path in "
            f"every worker; a local folder on each machine is not shared. {_NFS_HINT}"
        )
    return str(chosen)


def _publish(
    ctx: Any,
    key: str,
    verdict: Callable[[str | None], str],
    chosen: str | None,
    me: str,
    store: BackupStore,
    error_key: str,
) -> str:
    """Publish ``verdict(chosen)`` under ``key`` (the chief's with its folder); return it.

    A verdict that raises is published as this worker's failure: under ``key`` where the
    others read it as a problem (not the chief's key, which must hold a choice), else under
    ``error_key``.

    Raises:
        _VerdictError: the verdict or the publishing failed (the others have been told).
    """
    failure = None
    try:
        answer = verdict(chosen)
    except Exception as err:
        failure = f"{me} could not read {store.root!r} ({one_line(err)})"
        answer = failure
    value = json.dumps([answer, store.root]) if chosen is None else answer
    try:
        if failure is not None and chosen is None:
            kv_set(ctx, error_key, failure)
        else:
            kv_set(ctx, key, value)
    except Exception as err:
        failure = f"{failure or me + ' could not publish its verdict'} ({key}: {one_line(err)})"
        try:
            kv_set(ctx, error_key, failure)
        except Exception as again:
            failure += (
                f", and could not report it either ({error_key}: {one_line(again)}); the other "
                "workers learn of it only when their wait times out"
            )
    if failure is not None:
        raise _VerdictError(failure)
    return answer


def _visible(store: BackupStore, number: int, grace: float) -> bool:
    """Whether backup ``number`` is there, looking again for up to ``grace`` seconds (each
    look lists ``backup_dir`` first, which asks a network file system for fresh entries)."""
    deadline = time.monotonic() + grace
    while not store.is_complete(number):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
        store.numbers()
    return True
