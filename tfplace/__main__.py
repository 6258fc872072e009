"""Command line: ``tfplace`` / ``python -m tfplace``. Parses, prints, sets the exit code.

Commands:
    tfplace [doctor] [--json] [--verify] the machine report and findings (default)
    tfplace doctor --env                a short block to paste into bug reports
    tfplace launch -n N SCRIPT [ARGS]   N local workers of one cluster
    tfplace launch --hosts H1:2,H2:2 SCRIPT   workers on other hosts over ssh (or --hostfile)
    tfplace tf-config HOST [HOST ...]   the TF_CONFIG of each host of a cluster
    tfplace tf-config --k8s -n N --subdomain S   this Kubernetes pod's TF_CONFIG
    tfplace check [-n N] SCRIPT          1 vs N replicas of SCRIPT's build() and data(strategy)
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfplace",
        description="Show what TensorFlow can use on this machine and what tfplace would pick.",
    )
    parser.add_argument("--version", action="version", version=f"tfplace {_version()}")
    _doctor_options(parser)
    sub = parser.add_subparsers(dest="command")
    _add_doctor(sub)
    _add_launch(sub)
    _add_tf_config(sub)
    _add_check(sub)
    return parser


def _add_doctor(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="what TensorFlow can use here, and why not (the default command)",
        description="Report what TensorFlow can use on this machine, what pick_strategy() "
        "would choose, and findings with fixes. Exit codes: 0 healthy (warnings and "
        "information allowed), 1 a finding is an error, 3 --verify failed.",
    )
    _doctor_options(doctor)


def _version() -> str:
    from tfplace import __version__

    return __version__


def _add_launch(sub: Any) -> None:
    launch = sub.add_parser(
        "launch",
        help="run a training script as N local workers of one TensorFlow cluster",
        description="Start N workers of this Python, each with its TF_CONFIG on free loopback "
        "ports. Output lines are prefixed with the worker index. When a worker fails, the "
        "others are stopped and its exit code is returned, or with --max-restarts the whole "
        "group is started again on new ports (TFPLACE_RESTART_COUNT=1, 2, ... in each "
        "worker's environment).",
    )
    launch.add_argument(
        "-n",
        "--num-workers",
        type=int,
        metavar="N",
        help="workers (>= 1; with --hosts or --hostfile: optional, their slots)",
    )
    remote = launch.add_argument_group("on other hosts, over ssh")
    where = remote.add_mutually_exclusive_group()
    where.add_argument(
        "--hosts", metavar="H1:N,H2:N", help="run the workers on these hosts, N each (default 1)"
    )
    where.add_argument(
        "--host-discovery",
        metavar="COMMAND",
        help="a shell command that prints the current hosts, host:slots a line, run before "
        "each start (Horovod's --host-discovery-script)",
    )
    where.add_argument(
        "--hostfile",
        metavar="FILE",
        help="hosts from a file: 'host slots=N' a line (Horovod, DeepSpeed), or host:N",
    )
    remote.add_argument(
        "--ssh",
        default="ssh",
        metavar="COMMAND",
        help="the ssh client and options, e.g. 'ssh -p 2222 -i ~/.ssh/cluster' (default: ssh)",
    )
    remote.add_argument(
        "-x",
        dest="forward",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="pass this variable to the workers (repeatable; NAME=VALUE sets the value; an "
        "unset NAME is an error). TensorFlow's own variables (a documented list, never "
        "Terraform's TF_VAR_*/TF_TOKEN_*/TF_CLI_ARGS*) and TFPLACE_*, KERAS_*, PYTHON*, "
        "XLA_*, CUDA_*, NCCL_*, OMP_*, KMP_* always go",
    )
    remote.add_argument(
        "--min-workers",
        type=int,
        metavar="N",
        help="go on with the hosts that answer when some do not (at the start or a restart), "
        "as long as they hold at least N workers (default: every host must answer)",
    )
    remote.add_argument(
        "--rejoin",
        action="store_true",
        help="with --min-workers: probe the hosts that are out every 5 s, and when one answers "
        "stop the group as for a preemption (it saves) and start it again on more workers",
    )
    launch.add_argument(
        "--global-batch",
        type=int,
        metavar="B",
        help="the training's fixed global batch: every start's worker count must divide it "
        "(checked before each start), and workers get TFPLACE_GLOBAL_BATCH and their part, "
        "TFPLACE_WORKER_BATCH",
    )
    remote.add_argument(
        "--link-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a host may answer nothing before its workers count as lost (default: "
        "10); shorter network blips are ridden through",
    )
    remote.add_argument(
        "--port",
        type=int,
        metavar="BASE",
        help="ports BASE, BASE+1, ... on each host (checked free) instead of free ports",
    )
    launch.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL (default: 5)",
    )
    launch.add_argument(
        "--host",
        default="127.0.0.1",
        help="local address to listen on: IPv4, IPv6 or a name of this machine",
    )
    launch.add_argument(
        "--network",
        choices=("auto", "private", "host"),
        default="auto",
        help="auto (default): workers in a private network namespace with only loopback where "
        "the OS allows it (no outbound access), else a warning; private: that or an error; "
        "host: the machine's network (reachable from outside; needed to download)",
    )
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="start the whole group again up to N times when a worker fails (default 0)",
    )
    launch.add_argument(
        "--restart-on",
        choices=("retryable", "any"),
        default="retryable",
        help="retryable (default): restart when a worker dies of a signal or exits with the "
        "restart code 143; any other code (1: an exception) ends the launch. any: restart "
        "on every failure",
    )
    noise = launch.add_mutually_exclusive_group()
    noise.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="the launcher's INFO lines (core shares, network, addresses) and TensorFlow's INFO "
        "logs in the workers (TF_CPP_MIN_LOG_LEVEL=0)",
    )
    noise.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="the launcher's errors only, and TensorFlow's warnings hidden in the workers "
        "(TF_CPP_MIN_LOG_LEVEL=2); by default workers get TF_CPP_MIN_LOG_LEVEL=1 (no INFO "
        "logs). A TF_CPP_MIN_LOG_LEVEL set in the environment always wins",
    )
    launch.add_argument("-m", dest="module", action="store_true", help="SCRIPT is a module")
    launch.add_argument("script", help="the Python script (or module with -m)")
    launch.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    launch.set_defaults(launch_parser=launch)


def _add_tf_config(sub: Any) -> None:
    tfc = sub.add_parser(
        "tf-config",
        help="print the TF_CONFIG of each host of a multi-machine cluster",
        description="Print one line per host: the TF_CONFIG to export on that host. With "
        "--k8s, print only this pod's TF_CONFIG, derived from its Indexed Job (JobSet, "
        "Kubeflow TrainJob): JOB_COMPLETION_INDEX and the pod's host name, e.g. "
        'TF_CONFIG="$(tfplace tf-config --k8s -n 2 --subdomain train)" && export TF_CONFIG',
    )
    tfc.add_argument("hosts", nargs="*", help="host or host:port, one per worker, in order")
    tfc.add_argument("--port", type=int, default=2222, help="port for hosts without one")
    tfc.add_argument("--json", action="store_true", help="print a JSON list instead")
    k8s = tfc.add_argument_group("in a Kubernetes pod (--k8s)")
    k8s.add_argument(
        "--k8s",
        action="store_true",
        help="print this pod's TF_CONFIG, from JOB_COMPLETION_INDEX and its host name",
    )
    k8s.add_argument(
        "-n", "--num-workers", type=int, help="pods that train together (the Job's completions)"
    )
    k8s.add_argument(
        "--subdomain",
        help="the pods' headless Service (a JobSet's name, or its spec.network.subdomain)",
    )


def _add_check(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="does a training script give the same result on 1 and on N replicas?",
        description="Import SCRIPT (not as __main__, so its own training does not run), take "
        "its build() and data(strategy) functions (and train_step(strategy, model, batch) if "
        "it defines one), and run tfplace.compare_replicas on N virtual CPUs: the verdict, "
        "where 1 and N replicas part, the loss side by side, the likely causes and their "
        "fixes (--workers: the N replicas as N local worker processes instead). Exit codes: 0 "
        "the same, 1 they part (or NaN/inf), 2 could not check (the script lacks build/data, "
        "raises, or no step ran).",
    )
    check.add_argument(
        "-n",
        "--replicas",
        type=int,
        action="append",
        metavar="N",
        help="replicas compared with one (>= 2; repeat for several: -n 2 -n 4; default 2)",
    )
    check.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    check.add_argument(
        "--rtol", type=float, default=None, help="relative tolerance (default: by precision)"
    )
    check.add_argument(
        "--atol", type=float, default=None, help="absolute tolerance (default: by precision)"
    )
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.add_argument(
        "--workers",
        action="store_true",
        help="run the N replicas as N local worker processes (MultiWorkerMirroredStrategy, "
        "one replica each; each worker imports the script) instead of N virtual CPUs",
    )
    check.add_argument("script", help="the training script defining build() and data(strategy)")


def _doctor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also run a matmul and a convolution on every device (starts TensorFlow)",
    )
    from tfplace._decide.precision import POLICIES

    parser.add_argument(
        "--precision",
        default=None,
        choices=POLICIES,
        metavar="POLICY",
        help="a Keras dtype policy you intend to use, checked against the hardware: "
        + ", ".join(POLICIES),
    )
    parser.add_argument(
        "--env",
        action="store_true",
        help="print only a short block to paste into bug reports (versions, driver, GPUs)",
    )


def _doctor(args: argparse.Namespace) -> int:
    from tfplace.doctor import diagnose

    if args.env:
        from tfplace.doctor._report import env_block, this_machine

        print(env_block(this_machine()[0]))
        return 0
    # this machine: TensorFlow's start-up lines are captured into the report, and the CUDA
    # library check (B10) runs in a child process on a Linux CUDA build
    report = diagnose(precision=args.precision, run_verify=args.verify)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.to_text())
    return report.exit_code


def _k8s_tf_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``tf-config --k8s``: this pod's TF_CONFIG on one line, nothing else on stdout."""
    import os
    import socket

    from tfplace._facts.cluster.kubernetes import indexed_job_cluster
    from tfplace.errors import ClusterConfigError

    if args.hosts or args.json:
        parser.error("--k8s derives the hosts and prints JSON: drop the HOST arguments/--json")
    if args.num_workers is None or args.subdomain is None:
        parser.error("--k8s needs -n/--num-workers N and --subdomain NAME")
    try:
        spec = indexed_job_cluster(
            args.num_workers,
            args.subdomain,
            port=args.port,
            hostname=os.environ.get("HOSTNAME") or socket.gethostname(),
        )
    except (ClusterConfigError, ValueError) as err:
        print(f"tfplace tf-config --k8s: {err}", file=sys.stderr)
        return 2
    print(spec.to_tf_config())
    return 0


def _launch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import logging
    import os

    from tfplace.cluster._hosts import read_hostfile
    from tfplace.cluster._launch import launch
    from tfplace.errors import ClusterConfigError

    parser = args.launch_parser  # its usage, not the top level's, on a bad option
    remote = args.hosts is not None or args.hostfile is not None or args.host_discovery is not None
    if args.num_workers is None and not remote:
        parser.error("launch needs -n N (local workers), or --hosts / --hostfile")
    if args.num_workers is not None and args.num_workers < 1:
        parser.error(f"-n must be >= 1, found {args.num_workers}")
    if remote and (args.host != "127.0.0.1" or args.network != "auto"):
        parser.error("--host and --network are for local workers; not with --hosts/--hostfile")
    if args.min_workers is not None and not (remote and args.min_workers >= 1):
        parser.error(
            f"--min-workers goes with --hosts/--hostfile and is >= 1, found {args.min_workers}"
        )
    if args.port is not None and not (remote and 1 <= args.port <= 65535):
        parser.error(f"--port goes with --hosts/--hostfile and is 1..65535, found {args.port}")
    if args.max_restarts < 0:
        parser.error(f"--max-restarts must be >= 0, found {args.max_restarts}")
    if args.global_batch is not None and args.global_batch < 1:
        parser.error(f"--global-batch must be >= 1, found {args.global_batch}")
    if args.rejoin and args.min_workers is None:
        parser.error("--rejoin goes with --min-workers (hosts that are out can come back)")
    if not math.isfinite(args.link_timeout) or args.link_timeout < 1:
        parser.error(f"--link-timeout must be a number of seconds >= 1, found {args.link_timeout}")
    if not math.isfinite(args.grace) or args.grace < 0:
        parser.error(f"--grace must be a finite number of seconds >= 0, found {args.grace}")
    missing = _missing_target(args.script, args.module)
    if missing is not None:  # before any worker starts, not N copies of Python's error
        print(f"tfplace launch: {missing}", file=sys.stderr)
        return 2
    log = logging.getLogger("tfplace")
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    elif args.quiet:
        log.setLevel(logging.ERROR)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "2" if args.quiet else "1")
    target = ["-m", args.script] if args.module else [args.script]
    try:
        hosts = read_hostfile(args.hostfile) if args.hostfile is not None else args.hosts
        result = launch(
            [sys.executable, *target, *args.args],
            args.num_workers,
            env=env,
            grace_seconds=args.grace,
            host=args.host,
            network=args.network,
            max_restarts=args.max_restarts,
            restart_on=args.restart_on,
            hosts=hosts,
            ssh=shlex.split(args.ssh),
            forward=args.forward,
            port=args.port,
            link_timeout=args.link_timeout,
            min_workers=args.min_workers,
            rejoin=args.rejoin,
            host_discovery=args.host_discovery,
            global_batch=args.global_batch,
        )
    except ClusterConfigError as err:  # a bad --host, host list or -x: nothing was started
        print(f"tfplace {err}", file=sys.stderr)  # "tfplace launch: host: ..."
        return 2
    return result.returncode


#: Asks a fresh Python whether a module can be found as ``python -m`` would (the current folder
#: first), without importing the module itself (its parent packages are imported).
_FIND_MODULE = (
    "import importlib.util, sys\n"
    "try:\n    found = importlib.util.find_spec(sys.argv[1]) is not None\n"
    "except Exception as err:\n    print(f'{type(err).__name__}: {err}'); found = False\n"
    "sys.exit(0 if found else 1)"
)


def _missing_target(script: str, module: bool) -> str | None:
    """Why the workers could not start ``script`` (or ``-m`` module), or None when they can."""
    import os
    import subprocess

    if not module:
        if os.path.isfile(script):
            return None
        return (
            f"no such script {script!r} (expected a Python file, relative to {os.getcwd()}); "
            "no worker was started. Fix: check the path, or use -m for a module"
        )
    done = subprocess.run(
        [sys.executable, "-c", _FIND_MODULE, script], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    why = f" ({done.stdout.strip()})" if done.stdout.strip() else ""
    return (
        f"no module named {script!r}{why} for this Python ({sys.executable}, from "
        f"{os.getcwd()}); no worker was started. Fix: check the name, install the package, "
        "or run from the folder that holds it"
    )


def _tf_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tfplace.cluster._launch import tf_configs
    from tfplace.errors import ClusterConfigError

    if args.k8s:
        return _k8s_tf_config(parser, args)
    if not args.hosts:
        parser.error("tf-config needs the workers' hosts, or --k8s inside a Kubernetes pod")
    if args.num_workers is not None or args.subdomain is not None:
        parser.error("-n/--num-workers and --subdomain go with --k8s")
    try:
        configs = tf_configs(args.hosts, args.port)
    except ClusterConfigError as err:
        print(f"tfplace tf-config: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([json.loads(c) for c in configs], indent=2))
    else:
        for host, config in zip(args.hosts, configs, strict=True):
            print(f"{host}: export TF_CONFIG='{config}'")
    return 0


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``check SCRIPT``: the replica check of a script's build() and data(strategy); exit 0
    SAME, 1 DIFFERENT (or NaN/inf), 2 could not check, whatever the script raises."""
    from pathlib import Path

    counts = args.replicas or [2]
    if min(counts) < 2 or args.steps < 1:
        parser.error(f"-n must be >= 2 and --steps >= 1, found -n {counts}, --steps {args.steps}")
    path = Path(args.script)
    if not path.is_file():
        parser.error(f"check: no such script {args.script!r}")
    from tfplace.replicas._script import check_script, exit_code

    tolerances = {k: v for k in ("rtol", "atol") if (v := getattr(args, k)) is not None}
    try:
        reports = check_script(path, counts, steps=args.steps, workers=args.workers, **tolerances)
    except (Exception, SystemExit) as err:  # the script, build() or data() failed: not checked
        print(
            f"tfplace check: could not check {args.script}: {type(err).__name__}: {err}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(str(r) for r in reports))
    return exit_code(reports)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "launch":
        return _launch(parser, args)
    if args.command == "tf-config":
        return _tf_config(parser, args)
    if args.command == "check":
        return _check(parser, args)
    return _doctor(args)


if __name__ == "__main__":
    sys.exit(main())
