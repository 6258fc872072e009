"""Workers' output: cut into whole lines, written with a prefix per worker, handed to a callback.

Shared by the local launcher (``_launch``) and the launcher on hosts (``_remote``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import IO

__all__ = ["LINE_END", "MAX_LINE", "Lines", "WorkerOutput"]


#: What ends a line of worker output: ``\n``, ``\r\n``, or a lone ``\r`` (a terminal would
#: return to the start of the line there, over the prefix).
LINE_END = re.compile(rb"\r\n|\r|\n")
#: A line longer than this is written out in pieces, each with its prefix: a bound on the memory
#: one runaway line may hold, far above real lines (a worker printing its weights as one JSON
#: line writes hundreds of KiB, and a reader of the output must get that line whole).
MAX_LINE = 1 << 24


class Lines:
    r"""Cuts a stream of bytes, arriving in chunks of any size, into whole lines.

    A line ends at ``\n``, ``\r\n``, a lone ``\r`` (or another of ``str.splitlines``'s line
    ends); a chunk may end anywhere (inside a line,
    between ``\r`` and ``\n``, inside a UTF-8 character); what is left at the end of the
    stream is a last line. Pure: tested on its own.

    Example:
        >>> lines = Lines()
        >>> lines.feed(b"a\nb\r"), lines.feed(b"\nc\rd"), lines.finish()
        (['a'], ['b', 'c'], ['d'])
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes."""
        held = self._pending + data
        # A final \r may be the first half of \r\n: keep it until the next chunk says.
        tail = b"\r" if held.endswith(b"\r") else b""
        parts = LINE_END.split(held[: len(held) - len(tail)])
        self._pending = parts.pop() + tail
        while len(self._pending) > MAX_LINE:
            parts.append(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        return _decoded(parts)

    def finish(self) -> list[str]:
        """What is left at the end of the stream, as lines (a line without its end too)."""
        parts = LINE_END.split(self._pending)
        self._pending = b""
        if parts and parts[-1] == b"":
            parts.pop()
        return _decoded(parts)


def _decoded(parts: list[bytes]) -> list[str]:
    """The text of each line; the other line ends of ``str.splitlines`` (form feed, U+2028,
    ...) end a line too, so that whoever splits the output that way finds a prefix on each."""
    return [
        piece for part in parts for piece in (part.decode("utf-8", "replace").splitlines() or [""])
    ]


class WorkerOutput:
    """Where the workers' lines go: ``out``, each with its worker's prefix, whole lines at a
    time, and ``on_line(index, line)`` for each; an error raised by ``on_line`` is kept in
    ``callback_error`` (the launch stops and re-raises it) and the callback is not called again.
    """

    def __init__(self, out: IO[str], on_line: Callable[[int, str], None] | None) -> None:
        self.out = out
        self.on_line = on_line
        self.lock = threading.Lock()
        self.callback_error: BaseException | None = None

    def say(self, text: str) -> None:
        """A line of the launcher's own, ``[tfplace launch] text``."""
        with self.lock:
            self.out.write(f"[tfplace launch] {text}\n")
            self.out.flush()

    def pump(
        self,
        index: int,
        prefix: str,
        stream: IO[bytes],
        control: Callable[[str], bool] | None = None,
    ) -> None:
        """Copy ``stream`` to ``out`` until it ends, ``prefix`` on every line.

        A stream is read as it arrives and cut into lines by :class:`Lines`, whatever the sizes
        of the writes; give standard output and standard error a reader each, so that a line
        half-written on one is never cut by a line of the other. ``control`` sees each line
        first; a line for which it returns True is the transport's own and is not written.
        """
        lines = Lines()
        read = getattr(stream, "read1", stream.read)
        while chunk := read(1 << 16):
            self._emit(index, prefix, lines.feed(chunk), control)
        self._emit(index, prefix, lines.finish(), control)
        stream.close()

    def _emit(
        self,
        index: int,
        prefix: str,
        lines: list[str],
        control: Callable[[str], bool] | None = None,
    ) -> None:
        if control is not None:
            lines = [line for line in lines if not control(line)]
        if not lines:
            return
        with self.lock:  # whole lines at a time, so callbacks never run concurrently
            self.out.write("".join(f"{prefix}{line}\n" for line in lines))
            self.out.flush()
            for line in lines:
                if self.on_line is not None and self.callback_error is None:
                    try:
                        self.on_line(index, line)
                    except BaseException as err:  # stops the launch; the caller re-raises it
                        self.callback_error = err
