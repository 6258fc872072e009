"""Host lists for ``tfplace launch --hosts`` / ``--hostfile`` (pure).

Two spellings, the ones Horovod (``horovodrun -H`` / ``-hostfile``), DeepSpeed and Open MPI
use:

- ``--hosts node1:2,node2:2``: comma-separated ``host[:slots]`` entries (slots default 1; an
  IPv6 address goes in brackets: ``[fd00::1]:2``).
- a hostfile: one host a line, ``node1 slots=2`` (Horovod, DeepSpeed, Open MPI; Open MPI's
  ``max_slots=N`` is accepted and ignored), or ``node1:2``, or a bare ``node1`` (1 slot).
  ``#`` starts a comment; blank lines are skipped.

A slot is one worker. Workers are numbered host by host in the order written, so
``node1:2,node2:2`` makes workers 0 and 1 on node1 (worker 0 is the chief) and 2 and 3 on
node2. Every malformed input raises :class:`~tfplace.errors.ClusterConfigError` saying what
was expected, what was found and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tfplace._facts.cluster.spec import check_host
from tfplace.errors import ClusterConfigError

__all__ = ["HostSlots", "parse_hostfile", "parse_hosts", "read_hostfile", "worker_hosts"]

_SLOTS_RE = re.compile(r"^[0-9]+$")
_MAX_SLOTS = 1024


@dataclass(frozen=True)
class HostSlots:
    """One host of a host list and how many workers it runs.

    Attributes:
        host: the host name or address, as written in an address (IPv6 in brackets).
        slots: how many workers run there (>= 1).
    """

    host: str
    slots: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dictionary."""
        return asdict(self)


def _fail(source: str, where: str, found: str, expected: str, fix: str) -> ClusterConfigError:
    return ClusterConfigError(
        f"{source}: {where}: found {found!r}, expected {expected}. Fix: {fix}"
    )


def _slots(source: str, where: str, text: str) -> int:
    if not _SLOTS_RE.match(text) or not 1 <= int(text) <= _MAX_SLOTS:
        raise _fail(
            source,
            where,
            text,
            f"a slot count: a whole number from 1 to {_MAX_SLOTS} (one worker a slot)",
            "write e.g. node1:2 or 'node1 slots=2'",
        )
    return int(text)


def _host_and_slots(source: str, where: str, entry: str) -> HostSlots:
    """``host``, ``host:N``, ``[v6]``, ``[v6]:N`` -> HostSlots."""
    if entry.startswith("["):
        end = entry.find("]")
        host, rest = (entry[: end + 1], entry[end + 1 :]) if end > 0 else (entry, "")
        if rest and not rest.startswith(":"):
            raise _fail(source, where, entry, "[IPv6 address]:slots", "write e.g. [fd00::1]:2")
        slots_text = rest[1:] if rest else None
    elif entry.count(":") > 1:
        raise _fail(
            source,
            where,
            entry,
            "host[:slots], an IPv6 address in brackets",
            f"write the address in brackets: [{entry}], or [ADDRESS]:SLOTS",
        )
    else:
        host, _, slots_text_raw = entry.partition(":")
        slots_text = slots_text_raw if ":" in entry else None
    if "@" in host:
        raise _fail(
            source,
            where,
            entry,
            "a host name or address without a user",
            "set the user in ~/.ssh/config (Host ... User ...) or pass ssh=['ssh', '-l', USER]",
        )
    checked = check_host(host, source, where)
    return HostSlots(checked, 1 if slots_text is None else _slots(source, where, slots_text))


def _no_repeats(source: str, found: list[tuple[str, HostSlots]]) -> tuple[HostSlots, ...]:
    if not found:
        raise ClusterConfigError(
            f"{source}: found no host, expected at least one host. "
            "Fix: list hosts as node1:2,node2:2 (or one 'node1 slots=2' a line in a hostfile)"
        )
    seen: dict[str, str] = {}
    for where, entry in found:
        if entry.host in seen:
            raise _fail(
                source,
                where,
                entry.host,
                f"each host once (it is already in {seen[entry.host]})",
                "give a host all its workers in one entry, e.g. node1:4",
            )
        seen[entry.host] = where
    return tuple(entry for _, entry in found)


def parse_hosts(text: str, source: str = "--hosts") -> tuple[HostSlots, ...]:
    """Parse a comma-separated host list, ``node1:2,node2:2`` (pure).

    Args:
        text: ``host[:slots]`` entries separated by commas; spaces around entries are ignored.
        source: where the text came from, for error messages.

    Returns:
        One :class:`HostSlots` per entry, in order.

    Raises:
        ClusterConfigError: an empty list or entry, a bad host or slot count, a repeated host.

    Example:
        >>> [(h.host, h.slots) for h in parse_hosts("node1:2, node2")]
        [('node1', 2), ('node2', 1)]
        >>> parse_hosts("node1:two")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: --hosts: entry 1: found 'two', expected a slot count...
    """
    if not isinstance(text, str):
        raise ClusterConfigError(
            f"{source}: expected a string such as 'node1:2,node2:2', found {text!r}"
        )
    found = []
    for i, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        where = f"entry {i}"
        if not entry:
            raise _fail(
                source, where, raw, "host[:slots]", "remove the extra comma (node1:2,node2:2)"
            )
        found.append((where, _host_and_slots(source, where, entry)))
    return _no_repeats(source, found)


def parse_hostfile(text: str, source: str = "hostfile") -> tuple[HostSlots, ...]:
    """Parse a hostfile in the Horovod / DeepSpeed / Open MPI form (pure).

    Args:
        text: the file's contents: ``host slots=N``, ``host:N`` or ``host`` a line; ``#``
            comments; Open MPI's ``max_slots=N`` is ignored.
        source: the file's name, for error messages.

    Returns:
        One :class:`HostSlots` per host line, in order.

    Raises:
        ClusterConfigError: no host, a bad line, host or slot count, or a repeated host.

    Example:
        >>> text = "# two nodes\\nnode1 slots=2\\nnode2 slots=2 max_slots=4\\n"
        >>> [(h.host, h.slots) for h in parse_hostfile(text)]
        [('node1', 2), ('node2', 2)]
    """
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"line {number}"
        first, *options = line.split()
        entry = _host_and_slots(source, where, first)
        slots: int | None = None
        for option in options:
            key, eq, value = option.partition("=")
            if key == "slots" and eq:
                if slots is not None:
                    raise _fail(source, where, line, "one slots=N", "keep one slots=N")
                slots = _slots(source, where, value)
            elif key == "max_slots" and eq:
                _slots(source, where, value)  # Open MPI's limit: checked, not used
            else:
                raise _fail(
                    source,
                    where,
                    option,
                    "'slots=N' (or Open MPI's 'max_slots=N') after the host",
                    "write the line as 'node1 slots=2'",
                )
        if slots is not None:
            if ":" in first.rsplit("]", 1)[-1]:
                raise _fail(
                    source, where, line, "the slot count once", "write 'node1 slots=2' or node1:2"
                )
            entry = HostSlots(entry.host, slots)
        found.append((where, entry))
    return _no_repeats(source, found)


def read_hostfile(path: str | Path) -> tuple[HostSlots, ...]:
    """Read and parse a hostfile (see :func:`parse_hostfile`).

    Raises:
        ClusterConfigError: the file cannot be read, or its contents are invalid.

    Example:
        >>> read_hostfile("/nonexistent/hosts")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfplace.errors.ClusterConfigError: --hostfile: cannot read '/nonexistent/hosts' (...
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterConfigError(
            f"--hostfile: cannot read {str(path)!r} ({err}); expected a text file with one "
            "'host slots=N' a line. Fix: check the path"
        ) from err
    return parse_hostfile(text, str(path))


def worker_hosts(hosts: Sequence[HostSlots]) -> list[tuple[str, int]]:
    """Each worker's ``(host, index on that host)``, workers numbered host by host (pure).

    Example:
        >>> worker_hosts([HostSlots("a", 2), HostSlots("b", 1)])
        [('a', 0), ('a', 1), ('b', 0)]
    """
    return [(h.host, i) for h in hosts for i in range(h.slots)]
