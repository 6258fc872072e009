"""Keep TensorFlow's start-up lines off the terminal while the doctor imports or starts it.

TensorFlow's C++ code logs through absl, and before ``absl::InitializeLog()`` is called
(always, at import) every message goes straight to file descriptor 2 whatever
``TF_CPP_MIN_LOG_LEVEL`` says: the oneDNN line once per copy of absl in TensorFlow's shared
libraries, the CPU-instructions line, and on a GPU machine the CUDA ones. :func:`captured`
points descriptor 2 at a temporary file for the duration of a block; afterwards the lines in
TensorFlow's log format are kept (the doctor turns the known ones into findings) and anything
else (a Python warning, a log record) is written back to stderr, so nothing of the user's is
lost.

Example:
    >>> tf_lines(["I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.",
    ...           "x.py:3: UserWarning: careful"])
    (['I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.'], ['x.py:3: UserWarning: careful'])
"""  # noqa: E501

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

__all__ = ["captured", "log_message", "tf_lines"]

#: absl's (and TensorFlow's) log prefix: severity letter, date, time, thread, file:line].
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [^\]\s]+:\d+\] ")
#: absl's banner before its first pre-initialisation message.
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
#: Lines that Python writes (warnings, tracebacks, logging's default format).
_PYTHON_LINE = re.compile(
    r"^(Traceback |\S.*:\d+: \w*(Warning|Error)\b|(DEBUG|INFO|WARNING|ERROR|CRITICAL):)"
)


def tf_lines(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split captured lines into TensorFlow's log lines and the rest. Pure.

    A TensorFlow line is one in absl's format, absl's banner, or a line continuing a
    TensorFlow message (the line after ``cpu_feature_guard``'s, say) up to the next line
    that Python would write.
    """
    ours: list[str] = []
    rest: list[str] = []
    in_tf = False
    for line in lines:
        if _ABSL_LINE.match(line) or line.startswith(_BANNER):
            in_tf = True
        elif not line.strip() or _PYTHON_LINE.match(line):
            in_tf = False
        (ours if in_tf else rest).append(line)
    return [line for line in ours if not line.startswith(_BANNER)], rest


def log_message(line: str) -> str:
    """A log line without absl's prefix.

    Example:
        >>> log_message("W0000 00:00:1.5  7 gpu_device.cc:2365] Cannot dlopen some GPU libraries.")
        'Cannot dlopen some GPU libraries.'
    """
    match = _ABSL_LINE.match(line)
    return line[match.end() :] if match else line


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Capture file descriptor 2 (C++ logs included) during the block.

    Yields a list that, after the block, holds TensorFlow's log lines written meanwhile;
    the other captured lines are written back to ``sys.stderr`` then. Where descriptor 2
    cannot be redirected, nothing is captured.
    """
    found: list[str] = []
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield found
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield found
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            ours, rest = tf_lines(text.splitlines())
            found.extend(ours)
            if rest:
                sys.stderr.write("\n".join(rest) + "\n")
                sys.stderr.flush()
