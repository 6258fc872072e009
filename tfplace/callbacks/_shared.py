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
from tfplace.cluster._multiworker import kv_set, kv_wait
from tfplace.errors import ClusterConfigError

__all__ = ["agree_on_restore", "check_saved"]

#: Seconds a worker looks again for a backup it does not see (a directory cache may lag).
_GRACE_S = 5.0


def agree_on_restore(model: Any, store: BackupStore, key: str, timeout: float) -> int | None:
    """The number of the backup every worker restores (None: start afresh).

    Raises:
        ClusterConfigError: a worker does not see the backup the chief chose (or sees
            backups the chief does not): ``backup_dir`` is not shared storage.
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
        if _visible(store, int(chosen)):
            return "ok"
        return (
            f"{task(model)} does not see backup-{int(chosen):08d} in {store.root!r}, which "
            "the chief restores"
        )

    chosen = _exchange(model, store, key, verdict, timeout)
    return None if chosen == "none" else int(chosen)


def check_saved(model: Any, store: BackupStore, number: int, key: str, timeout: float) -> None:
    """After the chief saved backup ``number``, check that every worker sees it.

    Raises:
        ClusterConfigError: a worker does not see it: ``backup_dir`` is not shared storage.
    """

    def verdict(chosen: str | None) -> str:
        if chosen is None or _visible(store, number):
            return "ok"
        return (
            f"{task(model)} does not see backup-{number:08d} in {store.root!r}, which the "
            "chief just wrote"
        )

    _exchange(model, store, key, verdict, timeout)


def _exchange(
    model: Any, store: BackupStore, key: str, verdict: Callable[[str | None], str], timeout: float
) -> str:
    """The chief publishes ``verdict(None)``; each other worker waits for it, publishes
    ``verdict(chief's)``; everyone reads every verdict. Returns the chief's."""
    ctx = _tf.coordination_context()
    me, chief = task(model), chief_task(model)
    if me == chief:
        chosen, folder = verdict(None), store.root
        kv_set(ctx, f"{key}/{chief}", json.dumps([chosen, folder]))
    else:
        chosen, folder = json.loads(kv_wait(ctx, f"{key}/{chief}", timeout))
        kv_set(ctx, f"{key}/{me}", verdict(chosen))
    problems = [
        answer
        for other in tasks(model)
        if other != chief and (answer := kv_wait(ctx, f"{key}/{other}", timeout)) != "ok"
    ]
    if problems:
        raise ClusterConfigError(
            f"BackupAndRestore: the workers do not see the same backups (the chief's "
            f"backup_dir is {folder!r}; {'; '.join(problems)}). backup_dir must be shared "
            "storage: one folder that every worker reads and the chief writes (a network file "
            "system, or a bucket such as gs://...), given as the same path in every worker; a "
            "local folder on each machine is not shared."
        )
    return chosen


def _visible(store: BackupStore, number: int) -> bool:
    """Whether backup ``number`` is there, looking again for a few seconds if it is not."""
    deadline = time.monotonic() + _GRACE_S
    while not store.is_complete(number):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True
