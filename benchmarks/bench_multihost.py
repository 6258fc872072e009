"""Speed across simulated hosts: one process vs two hosts, and the restart after a lost host.

Side by side in one run:

1. steps/s of a compute-bound CNN (3 conv layers, global batch 128) in one process with 2
   cores, and as 2 workers on 2 simulated hosts with 1 core each, started by the hostfile
   launcher over ssh (each host's sshd, and so its workers, pinned to one core; the launcher
   gives each worker 1 TensorFlow thread per pool from its host's core count). The two-host run
   is repeated with the collective's options varied: implementation (AUTO, RING; NCCL needs
   GPUs), ``bytes_per_pack`` (0: one pack, 64 KiB) and ``timeout_seconds`` (none, 60).
2. The restart after a lost host: every process of host 1 is SIGKILLed in the middle of
   training and its sshd restarted; the figures are the time from the loss until the launcher
   restarts the group, and from there until the new group trains again (TensorFlow's start-up
   and the restore from the backup; the first start's time is printed beside it), with the
   launcher's failure grace of 1 s and with 5 s (the whole grace a survivor stuck in a
   collective would otherwise be given).

The same two-host run is also made without pinning (each worker's pools limited to 1 thread
through ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` only), to weigh the pinning.

Needs root (network namespaces) and OpenSSH's sshd; reuses the test's ``SshHosts``.
Run: ``python benchmarks/bench_multihost.py`` (``BENCH_ROUNDS=n`` repeats the speed runs).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]

from sim_hosts import SimulatedHosts, unavailable  # noqa: E402
from test_multihost_launch import SshHosts, unavailable_here  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
STEPS = 120
BATCH = 128
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", "TF_USE_LEGACY_KERAS": "0"}

# BENCH_IMPL / BENCH_PACK / BENCH_TIMEOUT set the collective's options (the strategy's
# defaults, merged into every reduction, so also into Keras's gradient all-reduce).
CNN = f"""
import json, os, time
import numpy as np
import tfplace
strategy = tfplace.pick_strategy()
import keras
import tensorflow as tf
if "TF_CONFIG" in os.environ and os.environ.get("BENCH_IMPL"):
    timeout = os.environ.get("BENCH_TIMEOUT")
    strategy.extended._communication_options = tf.distribute.experimental.CommunicationOptions(
        implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                               os.environ["BENCH_IMPL"]),
        bytes_per_pack=int(os.environ.get("BENCH_PACK", "0")),
        timeout_seconds=float(timeout) if timeout else None)
rng = np.random.default_rng(0)
x = rng.normal(size=({STEPS + 5} * {BATCH}, 28, 28, 1)).astype("float32")
y = rng.integers(0, 10, size=({STEPS + 5} * {BATCH},))
with strategy.scope():
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
class Clock(keras.callbacks.Callback):  # steps only: from the end of the 5 warm-up steps
    ends = []
    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
model.fit(x, y, batch_size={BATCH}, epochs=1, verbose=0, callbacks=[Clock()])
print("RESULT", json.dumps({{"steps_per_second": {STEPS} / (Clock.ends[-1] - Clock.ends[4])}}),
      flush=True)
"""

# Small epochs with a backup after each; on the first attempt each step sleeps a little so the
# kill lands mid-training. Prints each epoch's start with a wall-clock time.
LONG = """
import os, time
import numpy as np
import tfplace
import tfplace.callbacks
strategy = tfplace.pick_strategy(communication_timeout=60, startup_timeout=120)
import keras
count = int(os.environ["TFPLACE_RESTART_COUNT"])
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = x[:, :1]
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile("adam", "mse")
class Mark(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        print("epoch", count, epoch, time.time(), flush=True)
    def on_train_batch_end(self, batch, logs=None):
        if count == 0:
            time.sleep(0.25)
backup = tfplace.callbacks.BackupAndRestore(os.environ["BACKUP"])
model.fit(x, y, batch_size=16, epochs=6, verbose=0, callbacks=[backup, Mark()])
"""

LAUNCHER = """
import json, sys
from tfplace.cluster._remote import launch_on_hosts
a = json.loads(sys.argv[1])
code = launch_on_hosts(a["command"], a["hosts"], ssh=a["ssh"],
                       forward=a["forward"], max_restarts=a["restarts"],
                       grace_seconds=a["grace"], failure_grace=a["failure_grace"]).returncode
sys.exit(code)
"""


def one_process(path: Path) -> float:
    out = subprocess.run(
        ["taskset", "-c", "0,1", sys.executable, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=True,
    ).stdout
    return float(json.loads(out.split("RESULT ", 1)[1])["steps_per_second"])


def start(c: SshHosts, script: Path, extra: dict[str, str], **opts: Any) -> subprocess.Popen[str]:
    args = {
        "command": [sys.executable, str(script)],
        "hosts": ",".join(h.name for h in c.hosts),
        "ssh": c.ssh,
        "forward": sorted(extra),
        "restarts": opts.get("restarts", 0),
        "grace": opts.get("grace", 5.0),
        "failure_grace": opts.get("failure_grace", 1.0),
    }
    return c.hosts[0].popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ENV, **extra},
        cwd=script.parent,
    )


def two_hosts(c: SshHosts, script: Path, extra: dict[str, str]) -> float:
    proc = start(c, script, extra)
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(out[-3000:])
    rates = [float(json.loads(r)["steps_per_second"]) for r in re.findall(r"RESULT (.*)", out)]
    return min(rates)  # the group goes at its slowest worker's pace


def restart(c: SshHosts, script: Path, folder: Path, failure_grace: float) -> dict[str, float]:
    backup = folder / f"backup-{failure_grace}"
    proc = start(c, script, {"BACKUP": str(backup)}, restarts=1, failure_grace=failure_grace)
    assert proc.stdout is not None
    t_launch = time.time()
    first_epoch = restarted = resumed = t_kill = None
    for line in proc.stdout:
        now = time.time()
        found = re.search(r"\] epoch (\d) (\d) (\S+)$", line.strip())
        if found and found.group(1) == "0" and first_epoch is None:
            first_epoch = float(found.group(3))
        if found and found.group(1) == "0" and found.group(2) == "2" and t_kill is None:
            time.sleep(0.3)
            t_kill = time.time()
            c.hosts.kill_all(1)
            c.start_sshd(1)
        if "restarting all" in line and restarted is None:
            restarted = now
        if found and found.group(1) == "1" and resumed is None:
            resumed = float(found.group(3))
    proc.wait()
    if None in (first_epoch, restarted, resumed, t_kill) or proc.returncode != 0:
        raise RuntimeError(f"restart run failed (exit code {proc.returncode})")
    assert first_epoch and restarted and resumed and t_kill
    return {
        "startup_s": first_epoch - t_launch,
        "kill_to_restart_s": restarted - t_kill,
        "restart_to_training_s": resumed - restarted,
    }


def main() -> None:
    reason = unavailable_here() or unavailable()
    if reason:
        print(f"bench_multihost: skipped: {reason}")
        return
    if len(os.sched_getaffinity(0)) < 2:
        print("bench_multihost: needs 2 cores")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cnn, long = folder / "cnn.py", folder / "long.py"
        cnn.write_text(textwrap.dedent(CNN))
        long.write_text(textwrap.dedent(LONG))
        (folder / "ssh").mkdir(mode=0o700)
        rows: dict[str, list[float]] = {}
        variants = {
            "2 hosts x 1 core (defaults)": {},
            "2 hosts, AUTO, bytes_per_pack=0, timeout none": {"BENCH_IMPL": "AUTO"},
            "2 hosts, RING": {"BENCH_IMPL": "RING"},
            "2 hosts, AUTO, bytes_per_pack=64 KiB": {"BENCH_IMPL": "AUTO", "BENCH_PACK": "65536"},
            "2 hosts, AUTO, timeout_seconds=60": {"BENCH_IMPL": "AUTO", "BENCH_TIMEOUT": "60"},
        }
        restarts = []
        with SimulatedHosts(2) as hosts:
            c = SshHosts(hosts, folder / "ssh", cores={0: [0], 1: [1]})
            try:
                t0 = time.monotonic()
                c.start()
                up = hosts.up_seconds + (time.monotonic() - t0)
                for _ in range(ROUNDS):
                    rows.setdefault("1 process x 2 cores", []).append(one_process(cnn))
                    for name, extra in variants.items():
                        rows.setdefault(name, []).append(two_hosts(c, cnn, extra))
                for grace in (1.0, 5.0):
                    restarts.append((grace, restart(c, long, folder, grace)))
            finally:
                c.stop()
        left = hosts.leftovers()
        # The same two hosts without pinning: 1 thread per pool from the environment only.
        with SimulatedHosts(2) as free:
            (folder / "ssh2").mkdir(mode=0o700)
            c = SshHosts(free, folder / "ssh2")
            one = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
            try:
                c.start()
                for _ in range(ROUNDS):
                    name = "2 hosts, 1 thread per pool, not pinned"
                    rows.setdefault(name, []).append(two_hosts(c, cnn, one))
            finally:
                c.stop()
        left += free.leftovers()
    base = statistics.median(rows["1 process x 2 cores"])
    print(f"simulated hosts + sshd up in {up:.2f} s, down in {hosts.down_seconds:.2f} s")
    print(f"CNN, 3 conv layers, global batch {BATCH}, {STEPS} steps, {ROUNDS} round(s):")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:<48} {med:6.2f} steps/s  {med / base:5.2f}x")
    print("restart after host 1 lost all its processes (SIGKILL) mid-training:")
    for grace, r in restarts:
        print(
            f"  failure grace {grace:.0f} s: the launcher restarts {r['kill_to_restart_s']:.2f} s "
            f"after the loss; the new group trains {r['restart_to_training_s']:.1f} s later "
            f"(TensorFlow start-up and restore; the first start took {r['startup_s']:.1f} s)"
        )
    print("leftovers:", left or "none")


if __name__ == "__main__":
    main()
