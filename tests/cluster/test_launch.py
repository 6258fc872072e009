"""The local launcher: output, exit codes, signals, and nothing left behind."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import CPU_ONLY_ENV, QUIET_ENV, alive, stop_launcher, wait_gone

import tfplace
from tfplace._decide.threads import split_threads
from tfplace._facts.inventory import CPUInfo, _affinity, cpu_quota
from tfplace.cluster import _launch, _netns
from tfplace.cluster._launch import free_ports, launch, tf_configs
from tfplace.cluster._output import MAX_LINE, Lines

pytestmark = pytest.mark.slow


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def worker_lines(text: str) -> list[str]:
    """The workers' lines of a launch's output, without the launcher's own."""
    return [line for line in text.splitlines() if not line.startswith("[tfplace launch] ")]


def cli(*args: str) -> subprocess.Popen[str]:
    """Start ``tfplace launch ARGS`` in its own session: a test's ``finally`` passes it to
    :func:`helpers.stop_launcher`, so a failing test leaves no launcher or worker behind."""
    return subprocess.Popen(
        [sys.executable, "-m", "tfplace", "launch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **QUIET_ENV},
        start_new_session=True,
    )


def test_workers_get_their_tf_config_and_prefixed_output(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import json, os, sys
        task = json.loads(os.environ["TF_CONFIG"])["task"]
        print("task", task["index"], os.environ["TFPLACE_WORKER_INDEX"],
              os.environ["TFPLACE_RESTART_COUNT"], *sys.argv[1:])
        """,
    )
    out = io.StringIO()
    result = launch([sys.executable, path, "x", "y"], 3, out=out)
    assert result.returncode == 0
    assert result.worker_codes == (0, 0, 0)
    assert result.failed_worker is None
    assert result.attempts == 1
    lines = sorted(worker_lines(out.getvalue()))
    assert lines == [f"[worker {i}] task {i} {i} 0 x y" for i in range(3)]
    started = re.findall(r"\[tfplace launch\] worker (\d): pid (\d+) on host (\S+)", out.getvalue())
    assert [w for w, _, _ in started] == ["0", "1", "2"] and len(
        {p for _, p, _ in started}
    ) == 3  # first start: 0


def test_one_failing_worker_stops_the_others_and_leaves_nothing(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import os, subprocess, sys, time
        marks = sys.argv[1]
        if os.environ["TFPLACE_WORKER_INDEX"] == "1":
            # Fail only once workers 0 and 2 have started their child and said so.
            deadline = time.monotonic() + 60
            while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            sys.exit(3)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("pids", os.getpid(), child.pid, flush=True)
        open(os.path.join(marks, os.environ["TFPLACE_WORKER_INDEX"]), "w").close()
        time.sleep(120)
        """,
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    start = time.monotonic()
    proc = cli("-n", "3", "--grace", "2", path, str(marks))
    found: list[int] = []
    try:
        out, _ = proc.communicate(timeout=100)
        elapsed = time.monotonic() - start
        found = [int(p) for line in re.findall(r"pids (\d+) (\d+)", out) for p in line]
        assert proc.returncode == 3, out
        assert "[tfplace launch] worker 1 exited with code 3; stopping the others" in out
        assert elapsed < 60  # far below the workers' 120 s sleep: they were stopped, not awaited
        assert len(found) == 4
        assert wait_gone(found) == []
    finally:
        stop_launcher(proc, found)  # only matters when an assertion above failed


def test_worker_killed_by_a_signal_gives_128_plus_the_signal(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import os, signal
        if os.environ["TFPLACE_WORKER_INDEX"] == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    result = launch([sys.executable, path], 2, out=io.StringIO(), grace_seconds=1)
    assert result.returncode == 137
    assert result.failed_worker == 0
    assert result.attempts == 1  # retryable, but max_restarts defaults to 0: not restarted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_are_forwarded_and_workers_stopped(tmp_path: Path, sig: int) -> None:
    path = script(
        tmp_path,
        """
        import os, time
        print("pid", os.getpid(), flush=True)
        time.sleep(120)
        """,
    )
    proc = cli("-n", "2", "--grace", "2", path)
    assert proc.stdout is not None
    pids: list[int] = []
    try:
        while len(pids) < 2:
            line = proc.stdout.readline()
            assert line, "launcher ended early"
            if line.startswith("[worker") and " pid " in line:
                pids.append(int(line.split()[-1]))
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, out
        assert f"received signal {sig}" in out
        assert wait_gone(pids) == []
    finally:
        stop_launcher(proc, pids)  # only matters when an assertion above failed


def test_bad_launch_arguments() -> None:
    with pytest.raises(TypeError):
        launch("python x.py", 2)
    with pytest.raises(ValueError, match="num_workers"):
        launch([sys.executable, "-c", "pass"], 0)
    with pytest.raises(ValueError, match="grace"):
        launch([sys.executable, "-c", "pass"], 1, grace_seconds=-1)
    with pytest.raises(ValueError, match="positive count"):
        free_ports(0)
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "launch", "-n", "0", "x.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "-n must be >= 1" in proc.stderr


def test_tf_configs_for_a_host_list() -> None:
    configs = [json.loads(c) for c in tf_configs(["node1", "node2:3000", "fd00::2"], port=2222)]
    assert configs[0]["cluster"]["worker"] == ["node1:2222", "node2:3000", "[fd00::2]:2222"]
    assert [c["task"]["index"] for c in configs] == [0, 1, 2]
    with pytest.raises(tfplace.ClusterConfigError, match="duplicate"):
        tf_configs(["a", "a:2222"])
    with pytest.raises(ValueError, match="non-empty"):
        tf_configs([])


def test_tf_config_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "tf-config", "h1", "h2", "--port", "4000"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("h2: export TF_CONFIG='")
    config = json.loads(lines[1].split("'")[1])
    assert config["task"] == {"type": "worker", "index": 1}
    bad = subprocess.run(
        [sys.executable, "-m", "tfplace", "tf-config", "h1:99999"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "host list: cluster.worker[0]" in bad.stderr


@pytest.mark.slow
def test_peers_of_a_killed_worker_fail_within_the_timeout(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import os, signal, time
        import numpy as np
        import tfplace
        strategy = tfplace.pick_strategy(communication_timeout=5)
        import keras
        index = os.environ["TFPLACE_WORKER_INDEX"]
        print("pid", os.getpid(), flush=True)
        x = np.ones((4096, 4), "float32"); y = np.ones((4096, 1), "float32")
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
            model.compile("sgd", "mse")

        class Die(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if index == "1" and batch == 5:
                    print("dying", time.time(), flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

        try:
            model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[Die()])
        except Exception as err:
            print("failed", time.time(), type(err).__name__, " ".join(str(err).split()))
            raise SystemExit(1)
        """,
    )
    out = io.StringIO()
    # A long grace period lets worker 0 report its own failure before it would be killed.
    result = launch(
        [sys.executable, path],
        2,
        out=out,
        grace_seconds=60,
        env={**os.environ, **QUIET_ENV, **CPU_ONLY_ENV},  # one replica each, whatever the host
    )
    text = out.getvalue()
    assert result.returncode == 137, text
    assert result.failed_worker == 1
    died = float(re.search(r"\[worker 1\] dying (\S+)", text).group(1))  # type: ignore[union-attr]
    failed = re.search(r"\[worker 0\] failed (\S+) (\w+) (.*)", text)
    assert failed, text
    assert failed.group(2) in ("UnavailableError", "DeadlineExceededError", "InternalError")
    assert "timed out" in failed.group(3) or "abort" in failed.group(3).lower()
    assert float(failed.group(1)) - died < 30
    pids = [int(p) for p in re.findall(r"\] pid (\d+)", text)]
    assert len(pids) == 2
    assert not [p for p in pids if alive(p)]  # the launcher left no process behind


def test_tf_config_command_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "tf-config", "h1", "[fd00::1]:5000", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    configs = json.loads(proc.stdout)
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert configs[0]["cluster"]["worker"] == ["h1:2222", "[fd00::1]:5000"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["bad host", "grpc://127.0.0.1", "127.0.0.1:2222", ""])
def test_bad_hosts_are_refused_before_anything_starts(tmp_path: Path, host: str) -> None:
    with pytest.raises(tfplace.ClusterConfigError, match=r"^free_ports: host: found"):
        free_ports(2, host=host)
    marker = tmp_path / "started"
    with pytest.raises(tfplace.ClusterConfigError, match=r"^launch: host: found") as info:
        launch([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], 2, host=host)
    assert repr(host) in str(info.value) and "Fix:" in str(info.value)
    assert not marker.exists()  # no worker was started


def test_a_host_that_is_not_here_is_a_clear_error_not_a_socket_error() -> None:
    # .invalid never resolves (RFC 6761); 192.0.2.1 is a documentation address, never local.
    for host, reason in [("nowhere.invalid", "cannot listen"), ("192.0.2.1", "cannot listen")]:
        with pytest.raises(tfplace.ClusterConfigError, match=reason) as info:
            launch([sys.executable, "-c", "pass"], 1, host=host)
        assert repr(host) in str(info.value)
        assert isinstance(info.value.__cause__, OSError)  # the socket error stays chained
    proc = subprocess.run(
        [sys.executable, "-m", "tfplace", "launch", "-n", "2", "--host", "bad host", __file__],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("tfplace launch: host: found 'bad host'")


def test_ipv6_loopback_workers_get_bracketed_addresses(tmp_path: Path) -> None:
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    assert all(0 < p < 65536 for p in free_ports(2, host="::1"))
    path = script(
        tmp_path,
        """
        import os
        print(os.environ["TF_CONFIG"])
        """,
    )
    lines: list[tuple[int, str]] = []
    result = launch(
        [sys.executable, path], 2, host="::1", out=io.StringIO(), on_line=lambda *a: lines.append(a)
    )
    assert result.returncode == 0
    configs = {i: tfplace.parse_tf_config(text) for i, text in lines}
    assert sorted(configs) == [0, 1]
    for i, spec in configs.items():
        assert spec is not None and spec.task_index == i
        assert all(a.startswith("[::1]:") for a in spec.addresses("worker"))


def test_on_line_gets_each_workers_lines_without_the_prefix(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import os, sys
        i = os.environ["TFPLACE_WORKER_INDEX"]
        print(f"out {i}", flush=True)
        print(f"[worker 9] looks like a prefix {i}", flush=True)
        print(f"err {i}", file=sys.stderr, flush=True)
        """,
    )
    lines: list[tuple[int, str]] = []
    out = io.StringIO()
    result = launch(
        [sys.executable, path], 2, out=out, on_line=lambda i, line: lines.append((i, line))
    )
    assert result.returncode == 0
    for i in range(2):
        mine = [line for index, line in lines if index == i]
        assert sorted(mine) == sorted(
            [f"out {i}", f"[worker 9] looks like a prefix {i}", f"err {i}"]
        )
    # The prefixed copy still goes to ``out``.
    assert sorted(worker_lines(out.getvalue())) == sorted(f"[worker {i}] {t}" for i, t in lines)


MESSY_WORKER = r"""
import os, sys, time
i = os.environ["TFPLACE_WORKER_INDEX"]
out, err = sys.stdout.buffer, sys.stderr.buffer

def w(stream, text):
    stream.write(text.encode())
    stream.flush()

w(out, f"multi {i} a\nmulti {i} b\nmulti {i} c\n")  # several lines in one write
w(out, f"part {i} ")  # a line written in pieces ...
time.sleep(0.3)
w(err, f"Example stragglers:\n/job:worker/replica:0/task:{i}\n")  # ... while stderr writes
time.sleep(0.3)
w(out, f"end {i}\n")
w(out, f"bar {i} 1\rbar {i} 2\r")  # carriage returns, and a \r\n cut between two writes
time.sleep(0.2)
w(out, f"\nwin {i}\r\n")
w(out, f"form {i}\x0cfeed {i}\n")  # a line end of str.splitlines
w(out, f"last {i}")  # no line end at all
"""


def test_every_line_a_worker_writes_carries_its_prefix(tmp_path: Path) -> None:
    path = script(tmp_path, MESSY_WORKER)
    out = io.StringIO()
    seen: list[tuple[int, str]] = []
    result = launch([sys.executable, path], 2, out=out, on_line=lambda *a: seen.append(a))
    assert result.returncode == 0
    text = out.getvalue()
    lines = worker_lines(text)  # Python's idea of a line: \r, \x0c, ... included
    unprefixed = [line for line in lines if not re.match(r"\[worker [01]\] ", line)]
    assert unprefixed == [], text
    for i in range(2):
        expected = [
            *(f"multi {i} {c}" for c in "abc"),
            f"part {i} end {i}",  # one line, not cut by what stderr wrote meanwhile
            "Example stragglers:",
            f"/job:worker/replica:0/task:{i}",
            f"bar {i} 1",
            f"bar {i} 2",
            f"win {i}",
            f"form {i}",
            f"feed {i}",
            f"last {i}",
        ]
        mine = [
            line.removeprefix(f"[worker {i}] ")
            for line in lines
            if line.startswith(f"[worker {i}]")
        ]
        assert sorted(mine) == sorted(expected), text
        stdout_order = [x for x in mine if not x.startswith(("Example", "/job"))]
        assert stdout_order == [x for x in expected if not x.startswith(("Example", "/job"))]
        assert sorted(line for index, line in seen if index == i) == sorted(expected)


@pytest.mark.pure
def test_lines_are_the_same_however_the_stream_is_cut() -> None:
    data = "a\nbb\r\ncc\rdd\r\r\neé\x0cf\n\ng".encode()
    whole = Lines()
    expected = whole.feed(data) + whole.finish()
    assert expected == ["a", "bb", "cc", "dd", "", "eé", "f", "", "g"]
    for cut in range(len(data) + 1):
        for cut2 in range(cut, len(data) + 1):
            lines = Lines()
            got = lines.feed(data[:cut]) + lines.feed(data[cut:cut2]) + lines.feed(data[cut2:])
            assert got + lines.finish() == expected, (cut, cut2)
    long = Lines()
    pieces = long.feed(b"x" * (MAX_LINE * 2 + 5)) + long.finish()
    assert [len(p) for p in pieces] == [MAX_LINE, MAX_LINE, 5]


def test_a_launch_result_prints_as_text(tmp_path: Path) -> None:
    # worker 1 fails once worker 0 is done, so that the codes are known: 0 and 3
    path = script(
        tmp_path,
        """
        import os, sys, time
        if os.environ["TFPLACE_WORKER_INDEX"] == "1":
            time.sleep(2)
            sys.exit(3)
        """,
    )
    result = launch([sys.executable, path], 2, out=io.StringIO(), grace_seconds=1)
    text = str(result)
    assert text.startswith("launch failed: worker 1 exited with code 3; exit codes 0, 3;"), text
    assert text.endswith(", 1 attempt") and "LaunchResult(" not in text
    assert result.to_dict()["worker_codes"] == [0, 3]
    ok = launch([sys.executable, "-c", "pass"], 2, out=io.StringIO())
    assert re.fullmatch(
        r"launch succeeded: 2 workers exited with code 0; \d+\.\d s, 1 attempt", str(ok)
    )
    stopped = _launch.LaunchResult(130, (143, None), None, 2.0)
    assert str(stopped) == (
        "launch stopped with code 130 (the launcher was signalled); exit codes 143, not "
        "started; 2.0 s, 1 attempt"
    )


def test_an_on_line_error_stops_the_workers_and_is_raised(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import os, time
        print("pid", os.getpid(), flush=True)
        time.sleep(120)
        """,
    )
    pids: list[int] = []

    def on_line(index: int, line: str) -> None:
        pids.append(int(line.split()[1]))
        if len(pids) == 2:
            raise KeyError("callback broke")

    start = time.monotonic()
    with pytest.raises(KeyError, match="callback broke"):
        launch([sys.executable, path], 2, out=io.StringIO(), on_line=on_line, grace_seconds=1)
    assert time.monotonic() - start < 30
    assert len(pids) == 2
    assert not [p for p in pids if alive(p)]
    with pytest.raises(TypeError, match="on_line"):
        launch([sys.executable, path], 1, on_line="print")  # type: ignore[arg-type]


# ------------------------------------------------------------------ core shares


@pytest.mark.parametrize(
    ("cores", "workers", "env", "share", "expected"),
    [
        (8, 2, {}, 4, {"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "4"}),
        (2, 2, {}, 1, {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
        (7, 3, {}, 2, {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2"}),
        (2, 5, {}, 1, {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
        (4, 1, {}, 4, {"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "4"}),
        (8, 2, {"TF_NUM_INTRAOP_THREADS": "3"}, 4, {"TF_NUM_INTEROP_THREADS": "4"}),
        (8, 2, {"TF_NUM_INTRAOP_THREADS": "0", "TF_NUM_INTEROP_THREADS": "0"}, 4, {}),
    ],
)
def test_split_threads_gives_each_worker_its_share(
    cores: int, workers: int, env: dict[str, str], share: int, expected: dict[str, str]
) -> None:
    plan = split_threads(cores, workers, env)
    assert plan.cores_per_worker == share
    assert dict(plan.set_env) == expected
    text = " ".join(plan.reasons)
    assert f"{cores} usable core" in text and f"{workers} workers" in text
    for var, value in env.items():  # what the user set is kept, and the log says so
        assert f"{var}={value} is set in the environment: kept" in text
    if cores < workers:
        assert "take turns" in text
    elif cores % workers:
        assert f"{cores - share * workers} left" in text


def test_split_threads_refuses_bad_counts() -> None:
    for args in [(0, 2), (2, 0), (True, 2), (2.0, 2)]:
        with pytest.raises(ValueError, match=r"split_threads: \w+ must be a positive int"):
            split_threads(*args, {})  # type: ignore[arg-type]


def test_workers_get_their_share_of_the_usable_cores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = script(
        tmp_path,
        """
        import os
        print(os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS"))
        """,
    )
    # What this machine allows (affinity, capped by the cgroup quota), as the inventory says.
    cpu = CPUInfo(os.cpu_count() or 1, _affinity(), cpu_quota())
    share = str(max(1, cpu.usable_cores // 2))
    base = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    lines: list[tuple[int, str]] = []
    with caplog.at_level(logging.INFO, logger="tfplace"):
        result = launch(
            [sys.executable, path],
            2,
            env=base,
            out=io.StringIO(),
            on_line=lambda *a: lines.append(a),
        )
    assert result.returncode == 0
    assert sorted(lines) == [(0, f"{share} {share}"), (1, f"{share} {share}")]
    assert f"TF_NUM_INTRAOP_THREADS={share}, TF_NUM_INTEROP_THREADS={share}" in caplog.text
    # A value the user set is left alone (and logged); the other variable still gets the share.
    lines.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfplace"):
        launch(
            [sys.executable, path],
            2,
            env={**base, "TF_NUM_INTEROP_THREADS": "7"},
            out=io.StringIO(),
            on_line=lambda *a: lines.append(a),
        )
    assert sorted(lines) == [(0, f"{share} 7"), (1, f"{share} 7")]
    assert "TF_NUM_INTEROP_THREADS=7 is set in the environment: kept" in caplog.text


# ------------------------------------------------------------------ network exposure


def listening(text: str) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The (address, port) of each LISTEN socket in a /proc/net/tcp or tcp6 table."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # TCP_LISTEN
            continue
        addr, port = fields[1].split(":")
        raw = bytes.fromhex(addr)  # 32-bit words in host byte order
        host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        found.append((ipaddress.ip_address(host), int(port, 16)))
    return found


def test_listening_parses_the_kernel_format() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 00000000:0016 00000000:0000 0A 00000000:00000000\n"
        "   2: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000\n"
        "   3: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0\n"
    )
    assert listening(table) == [
        (ipaddress.ip_address("127.0.0.1"), 8080),
        (ipaddress.ip_address("0.0.0.0"), 22),
        (ipaddress.ip_address("::1"), 80),
    ]


def net_tables(prefix: str = "/proc/self/net") -> str:
    return "".join(
        Path(f"{prefix}/{n}").read_text() for n in ("tcp", "tcp6") if Path(f"{prefix}/{n}").exists()
    )


NETWORK_WORKER = """
import json, os, sys, time
import tfplace

strategy = tfplace.pick_strategy()  # starts this worker's TensorFlow server (gRPC)
me = json.loads(os.environ["TF_CONFIG"])
port = int(me["cluster"]["worker"][me["task"]["index"]].rsplit(":", 1)[1])
tables = "".join(open(f"/proc/self/net/{n}").read() for n in ("tcp", "tcp6")
                 if os.path.exists(f"/proc/self/net/{n}"))
interfaces = sorted(l.split(":")[0].strip() for l in open("/proc/self/net/dev").readlines()[2:])
print("READY", json.dumps({"port": port, "tables": tables, "interfaces": interfaces,
                          "netns": os.readlink("/proc/self/ns/net")}), flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/net")
def test_workers_servers_are_reachable_only_from_this_machine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = script(tmp_path, NETWORK_WORKER)
    release = tmp_path / "release"
    reports: dict[int, dict[str, Any]] = {}
    here: list[tuple[object, int]] = []  # the workers' ports as this machine's network sees them
    refused: list[bool] = []

    def on_line(index: int, line: str) -> None:
        if not line.startswith("READY "):
            return
        reports[index] = json.loads(line.removeprefix("READY "))
        if len(reports) < 2:
            return
        # Both servers are up: look at them from here (this machine's own network).
        ports = {int(r["port"]) for r in reports.values()}
        here.extend((a, p) for a, p in listening(net_tables()) if p in ports)
        for port in ports:
            with socket.socket() as s:
                s.settimeout(5)
                refused.append(s.connect_ex(("127.0.0.1", port)) != 0)
        release.touch()

    env = {**os.environ, **QUIET_ENV, "CUDA_VISIBLE_DEVICES": "-1"}  # about the network only
    with caplog.at_level(logging.INFO, logger="tfplace"):
        result = launch(
            [sys.executable, path, str(release)], 2, env=env, out=io.StringIO(), on_line=on_line
        )
    assert result.returncode == 0, caplog.text
    assert sorted(reports) == [0, 1]
    for report in reports.values():  # each server really listens on its port, where it runs
        mine = [a for a, p in listening(str(report["tables"])) if p == report["port"]]
        assert mine, report
    private = private_or_fallback("share a private network namespace" in caplog.text, caplog.text)
    if private:
        # Seen from this machine, nothing listens on the workers' ports at all ...
        assert here == [] and refused == [True, True]
        # ... and where the servers do listen, the only interface is the loopback one.
        for report in reports.values():
            assert report["interfaces"] == ["lo"]
            assert report["netns"] != os.readlink("/proc/self/ns/net")
        assert reports[0]["netns"] == reports[1]["netns"]  # one namespace for the cluster
    else:  # the documented fallback: the launch log says why and what it means
        warning = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warning and "could not be isolated" in warning[0].getMessage(), caplog.text
        assert "no authentication" in warning[0].getMessage()


def private_or_fallback(private: bool, output: str) -> bool:
    """``private``, when the launcher made its private network namespace.

    Where it fell back to the host network, the fallback is accepted (and tested as such)
    unless ``TFPLACE_REQUIRE_ENGINES=1``: CI sets it and runs as root, where the namespace can
    always be made, so there the fallback fails the test instead of passing unproven.
    """
    if not private and os.environ.get("TFPLACE_REQUIRE_ENGINES") == "1":
        pytest.fail(
            "the launcher fell back to the host network instead of a private network "
            "namespace (TFPLACE_REQUIRE_ENGINES=1: this run must prove the private path):\n"
            + output[-2000:]
        )
    return private


def test_the_switch_turns_the_network_fallback_into_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TFPLACE_REQUIRE_ENGINES", raising=False)
    assert private_or_fallback(False, "could not be isolated") is False  # accepted
    assert private_or_fallback(True, "") is True
    monkeypatch.setenv("TFPLACE_REQUIRE_ENGINES", "1")
    assert private_or_fallback(True, "") is True
    with pytest.raises(pytest.fail.Exception, match="fell back to the host network"):
        private_or_fallback(False, "could not be isolated (not allowed here)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux network namespaces")
def test_under_the_switch_a_launch_that_falls_back_fails_the_network_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real test, run by pytest with TFPLACE_REQUIRE_ENGINES=1 while the namespace
    cannot be made (its holder is replaced by one that says no): it fails, naming the cause."""
    here = Path(__file__).parent
    pytester.makeconftest(
        f"""
        import sys
        sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]
        import pytest
        from tfplace.cluster import _launch, _netns

        @pytest.fixture(autouse=True)
        def no_namespace(monkeypatch):
            monkeypatch.setattr(
                _netns.PrivateNetwork, "open", classmethod(lambda cls: "not allowed here")
            )
        """
    )
    pytester.makepyfile(
        test_switch="from test_launch import (\n"
        "    test_workers_servers_are_reachable_only_from_this_machine as test_it,\n)\n"
    )
    for required, outcome in (("1", {"failed": 1}), ("0", {"passed": 1})):
        monkeypatch.setenv("TFPLACE_REQUIRE_ENGINES", required)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
        result.assert_outcomes(**outcome)
        if required == "1":
            result.stdout.fnmatch_lines(["*fell back to the host network*"])


def run_netns_probe(tmp_path: Path, **kwargs: object) -> list[str]:
    path = script(tmp_path, "import os; print(os.readlink('/proc/self/ns/net'))")
    lines: list[tuple[int, str]] = []
    result = launch(
        [sys.executable, path],
        2,
        out=io.StringIO(),
        on_line=lambda *a: lines.append(a),
        **kwargs,  # type: ignore[arg-type]
    )
    assert result.returncode == 0
    return [line for _, line in sorted(lines)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux network namespaces")
def test_when_no_namespace_can_be_made_the_launch_warns_and_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_netns.PrivateNetwork, "open", classmethod(lambda cls: "not allowed here"))
    with caplog.at_level(logging.INFO, logger="tfplace"):
        namespaces = run_netns_probe(tmp_path)
    assert namespaces == [os.readlink("/proc/self/ns/net")] * 2  # the machine's own network
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not be isolated (not allowed here)" in warnings[0]
    assert "Network exposure" in warnings[0]  # where the docs explain what to do
    with pytest.raises(tfplace.ClusterConfigError, match=r"network='private'.*not allowed here"):
        launch([sys.executable, "-c", "pass"], 1, network="private")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux network namespaces")
def test_network_host_and_non_loopback_hosts_use_the_machines_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    here = os.readlink("/proc/self/ns/net")
    with caplog.at_level(logging.INFO, logger="tfplace"):
        assert run_netns_probe(tmp_path, network="host") == [here, here]
    assert "network='host'" in caplog.text
    with pytest.raises(ValueError, match="network must be one of"):
        launch([sys.executable, "-c", "pass"], 1, network="none")
    with pytest.raises(tfplace.ClusterConfigError, match="needs a loopback host"):
        launch([sys.executable, "-c", "pass"], 1, network="private", host=socket.gethostname())


@pytest.mark.parametrize("network", ["auto", "host"])
def test_a_missing_program_is_an_error_before_any_worker_starts(network: str) -> None:
    for program in ["tfplace-no-such-program", "/nonexistent/python"]:
        with pytest.raises(FileNotFoundError, match=program):
            launch([program, "x.py"], 2, out=io.StringIO(), network=network)


def _interfaces(text: str) -> set[str]:
    """Interface names from ``/proc/net/dev`` text (the reader's network namespace)."""
    return {line.split(":", 1)[0].strip() for line in text.splitlines()[2:] if ":" in line}


@pytest.mark.parametrize("network", ["host", "auto"])
def test_the_command_line_chooses_the_network(tmp_path: Path, network: str) -> None:
    path = script(
        tmp_path,
        """
        print("interfaces", ",".join(sorted(
            line.split(":", 1)[0].strip()
            for line in open("/proc/net/dev").read().splitlines()[2:] if ":" in line
        )))
        """,
    )
    proc = cli("-n", "1", "--network", network, path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    seen = set(next(x for x in out.splitlines() if "interfaces" in x).split()[-1].split(","))
    mine = _interfaces(Path("/proc/net/dev").read_text())
    if network == "auto" and not private_or_fallback("could not be isolated" not in out, out):
        assert seen == mine  # the warned fallback
    elif network == "host":
        assert seen == mine
    else:
        assert seen == {"lo"}, out


def test_what_successful_workers_leave_running_is_stopped_at_once(tmp_path: Path) -> None:
    """A worker that succeeds but leaves a child behind (holding its output pipe) neither
    keeps that child alive nor makes the launcher wait for it."""
    path = script(
        tmp_path,
        """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("child", child.pid, flush=True)
        """,
    )
    out = io.StringIO()
    start = time.monotonic()
    result = launch([sys.executable, path], 2, env={**os.environ, **QUIET_ENV}, out=out)
    elapsed = time.monotonic() - start
    assert result.returncode == 0
    pids = [int(line.split()[-1]) for line in out.getvalue().splitlines() if " child " in line]
    assert len(pids) == 2, out.getvalue()
    assert wait_gone(pids) == []
    # it used to wait 5 s per worker for the child's pipe (10 s); 8 s leaves room for two
    # Python start-ups on a loaded machine
    assert elapsed < 8, elapsed
