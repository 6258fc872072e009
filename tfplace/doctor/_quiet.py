"""Keep TensorFlow's start-up lines off the terminal while the doctor imports or starts it.

TensorFlow's C++ code logs through absl, and before ``absl::InitializeLog()`` is called
(always, at import) every message goes straight to file descriptor 2 whatever
``TF_CPP_MIN_LOG_LEVEL`` says: the oneDNN line once per copy of absl in TensorFlow's shared
libraries, the CPU-instructions line, and on a GPU machine the CUDA ones. :func:`captured`
points descriptor 2 at a relay for the duration of a block: the lines in TensorFlow's log
format are kept (the doctor turns the known ones into findings), and anything else (a Python
warning, a log record, a fatal CHECK message) goes to stderr at once, so nothing of the
user's is lost, not even when TensorFlow aborts the process during the import.

Example:
    >>> tf_lines(["I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.",
    ...           "x.py:3: UserWarning: careful"])
    (['I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.'], ['x.py:3: UserWarning: careful'])
"""  # noqa: E501

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence

__all__ = ["captured", "log_message", "tf_lines"]

#: absl's (and TensorFlow's) log prefix: severity letter, date, time, thread, file:line].
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [^\]\s]+:\d+\] ")
#: absl's banner before its first pre-initialisation message.
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
#: Lines that continue a TensorFlow message: indented, or cpu_feature_guard's second line.
_CONTINUED = re.compile(r"^(\s+\S|To enable the following instructions)")


def tf_lines(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split captured lines into TensorFlow's log lines and the rest. Pure.

    A TensorFlow line is one in absl's format, absl's banner, or a line continuing a
    TensorFlow message: indented, or the second line of ``cpu_feature_guard``'s. Anything
    else is the rest, whatever came before it.
    """
    ours: list[str] = []
    rest: list[str] = []
    in_tf = False
    for line in lines:
        if _ABSL_LINE.match(line) or line.startswith(_BANNER):
            in_tf = True
        elif not (in_tf and _CONTINUED.match(line)):
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


#: The relay: a small process that reads what is written to descriptor 2 during the block,
#: passes every line that is not TensorFlow's start-up logging through to the real stderr at
#: once, and files the known lines for the report. It runs in its own process so that a line
#: written just before TensorFlow aborts the interpreter (a C++ CHECK failure, a missing CPU
#: instruction) still reaches the terminal: a pipe keeps what was written after its writer
#: dies, and a thread of the dying process would not. Without the closing marker (the block
#: never ended) it also passes the filed lines through, so nothing is lost.
_RELAY = r"""
import os, re, sys
absl, continued = re.compile(sys.argv[2]), re.compile(sys.argv[3])
banner, done_marker = sys.argv[4].encode(), sys.argv[5].encode()
done, in_tf, kept = False, False, []
with open(sys.argv[1], "ab") as sink:
    for raw in sys.stdin.buffer:
        if raw.rstrip(b"\n") == done_marker:
            done = True
            continue
        line = raw.decode("utf-8", "replace")
        fatal = False
        if absl.match(line) or raw.startswith(banner):
            in_tf, fatal = True, line.startswith("F")
        elif not (in_tf and continued.match(line)):
            in_tf = False
        if in_tf:
            sink.write(raw)
            sink.flush()
            if not fatal:
                kept.append(raw)
        if not in_tf or fatal:
            os.write(2, raw if raw.endswith(b"\n") else raw + b"\n")
if not done:  # the block never ended: its process is gone, and nobody reads the sink
    for raw in kept:
        os.write(2, raw if raw.endswith(b"\n") else raw + b"\n")
    os.unlink(sys.argv[1])
"""
_DONE = "\x1ftfplace-capture-done\x1f"


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Capture TensorFlow's start-up lines on file descriptor 2 (C++ logs included).

    Yields a list that, after the block, holds TensorFlow's log lines written meanwhile. Every
    other line (a Python warning, a log record, a fatal ``F`` line of TensorFlow's) is passed
    through to stderr as it is written, so a message printed just before a crash is seen.
    Where descriptor 2 cannot be redirected or the relay cannot start, nothing is captured.
    """
    found: list[str] = []
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield found
        return
    fd, sink_path = tempfile.mkstemp(prefix="tfplace-stderr-")
    os.close(fd)
    read_end, write_end = os.pipe()
    try:
        relay = subprocess.Popen(
            [
                sys.executable,
                "-S",
                "-c",
                _RELAY,
                sink_path,
                _ABSL_LINE.pattern,
                _CONTINUED.pattern,
                _BANNER,
                _DONE,
            ],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
        )
    except OSError:
        for end in (read_end, write_end, saved):
            os.close(end)
        os.unlink(sink_path)
        yield found
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield found
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(2, f"\n{_DONE}\n".encode())
        os.dup2(saved, 2)  # the pipe's last writer closes: the relay reads to the end
        os.close(saved)
        try:
            relay.wait(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        with open(sink_path, "rb") as sink:
            text = sink.read().decode("utf-8", errors="replace")
        os.unlink(sink_path)
        ours, _rest = tf_lines(text.splitlines())
        found.extend(ours)
