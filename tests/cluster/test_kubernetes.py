"""Kubernetes: each pod's TF_CONFIG from its Indexed Job (JobSet, Kubeflow TrainJob).

The derivation is pure and tested on the environment a pod would get: Kubernetes sets
``JOB_COMPLETION_INDEX`` and names the pod's host ``<job>-<index>``; a JobSet's Jobs are
``<jobset>-<replicatedJob>-<jobIndex>``; a Kubeflow Trainer v2 TrainJob is a JobSet named after
it with one replicated Job ``node``. The documented manifest's command is run as written, with
that environment, and must yield the TF_CONFIG the JobSet's naming rules imply.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tfplace.__main__ import main
from tfplace._facts.cluster.kubernetes import INDEX_VAR, indexed_job_cluster
from tfplace.errors import ClusterConfigError

pytestmark = pytest.mark.pure


ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "docs" / "examples" / "k8s_jobset.yaml"


def pod_env(index: int, hostname: str) -> dict[str, str]:
    return {INDEX_VAR: str(index), "HOSTNAME": hostname}


# ----------------------------------------------------------------------------- derivation


@pytest.mark.parametrize("index", [0, 1, 2])
def test_trainjob_pods_name_their_peers_like_kubeflow_trainer(index: int) -> None:
    # TrainJob "mnist": JobSet "mnist", replicated Job "node", subdomain "mnist".
    spec = indexed_job_cluster(3, "mnist", env=pod_env(index, f"mnist-node-0-{index}"))
    assert spec.source == "Kubernetes"
    assert spec.addresses("worker") == tuple(f"mnist-node-0-{i}.mnist:2222" for i in range(3))
    assert (spec.task_type, spec.task_index) == ("worker", index)
    assert spec.is_chief == (index == 0)
    assert json.loads(spec.to_tf_config())["task"] == {"type": "worker", "index": index}


def test_plain_indexed_job_whose_name_ends_in_a_number() -> None:
    # Job "run-2" with a headless Service "run-2-svc" in namespace "team-a": pod 1 is "run-2-1".
    spec = indexed_job_cluster(2, "run-2-svc.team-a.svc", port=5000, env=pod_env(1, "run-2-1"))
    assert spec.addresses("worker") == (
        "run-2-0.run-2-svc.team-a.svc:5000",
        "run-2-1.run-2-svc.team-a.svc:5000",
    )
    assert spec.task_index == 1


def test_jobset_with_several_replicated_jobs_keeps_the_job_index() -> None:
    # Job 1 of replicated Job "workers" of JobSet "big" (spec.network.subdomain "net").
    spec = indexed_job_cluster(2, "net", env=pod_env(0, "big-workers-1-0"))
    assert spec.addresses("worker") == ("big-workers-1-0.net:2222", "big-workers-1-1.net:2222")


def test_hostname_argument_and_fqdn_hostname() -> None:
    env = {INDEX_VAR: "1", "HOSTNAME": "ignored-7"}
    spec = indexed_job_cluster(2, "s", env=env, hostname="job-1.s.default.svc.cluster.local")
    assert spec.addresses("worker") == ("job-0.s:2222", "job-1.s:2222")


@pytest.mark.parametrize(
    ("env", "num_workers", "subdomain", "expected"),
    [
        ({"HOSTNAME": "job-0"}, 2, "s", r"JOB_COMPLETION_INDEX is not set.*Indexed"),
        (pod_env(0, "job-0") | {INDEX_VAR: "one"}, 2, "s", r"non-negative integer, found 'one'"),
        (pod_env(0, "job-0") | {INDEX_VAR: "-1"}, 2, "s", r"non-negative integer, found '-1'"),
        (pod_env(2, "job-2"), 2, "s", r"JOB_COMPLETION_INDEX=2 .* must be 0\.\.1"),
        (pod_env(1, "web-7d9f8-abcde"), 2, "s", r"'web-7d9f8-abcde' does not end in '-1'"),
        (pod_env(1, "job-11"), 2, "s", r"does not end in '-1'"),
        ({INDEX_VAR: "0"}, 2, "s", r"host name '' does not end in '-0'"),
        (pod_env(0, "-0"), 2, "s", r"does not end in '-0'"),
        (pod_env(0, "job-0"), 2, "bad sub", r"Kubernetes: subdomain: found 'bad sub'"),
        (pod_env(0, "job-0"), 2, "", r"Kubernetes: subdomain"),
    ],
)
def test_malformed_pod_environments_say_what_is_wrong(
    env: dict[str, str], num_workers: int, subdomain: str, expected: str
) -> None:
    with pytest.raises(ClusterConfigError, match=expected):
        indexed_job_cluster(num_workers, subdomain, env=env)


@pytest.mark.parametrize("num_workers", [0, -1, True, 2.0, "2"])
def test_num_workers_must_be_a_positive_integer(num_workers: Any) -> None:
    with pytest.raises(ValueError, match="num_workers: expected a positive integer"):
        indexed_job_cluster(num_workers, "s", env=pod_env(0, "job-0"))


def test_a_bad_port_names_the_port() -> None:
    with pytest.raises(ClusterConfigError, match=r"Kubernetes: port: .*1 to 65535, found 0"):
        indexed_job_cluster(2, "s", port=0, env=pod_env(0, "job-0"))


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INDEX_VAR, "1")
    monkeypatch.setenv("HOSTNAME", "j-1")
    assert indexed_job_cluster(2, "s").address == "j-1.s:2222"


# ----------------------------------------------------------------------------- command line


def test_cli_prints_only_this_pods_tf_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(INDEX_VAR, "0")
    monkeypatch.setenv("HOSTNAME", "t-node-0-0")
    assert main(["tf-config", "--k8s", "-n", "2", "--subdomain", "t", "--port", "3000"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one line, so $(...) captures exactly the JSON
    assert json.loads(out) == {
        "cluster": {"worker": ["t-node-0-0.t:3000", "t-node-0-1.t:3000"]},
        "task": {"type": "worker", "index": 0},
    }


def test_cli_falls_back_to_the_system_host_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(INDEX_VAR, "1")
    monkeypatch.delenv("HOSTNAME", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "sys-1")
    assert main(["tf-config", "--k8s", "-n", "2", "--subdomain", "s"]) == 0
    assert json.loads(capsys.readouterr().out)["cluster"]["worker"][0] == "sys-0.s:2222"


def test_cli_errors_go_to_stderr_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(INDEX_VAR, raising=False)
    assert main(["tf-config", "--k8s", "-n", "2", "--subdomain", "s"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # so TF_CONFIG="$(...)" && ... stops instead of exporting ""
    assert "tfplace tf-config --k8s: Kubernetes: JOB_COMPLETION_INDEX is not set" in captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tf-config"], "needs the workers' hosts, or --k8s"),
        (["tf-config", "--k8s", "--subdomain", "s"], "--k8s needs -n/--num-workers"),
        (["tf-config", "--k8s", "-n", "2"], "--k8s needs -n/--num-workers N and --subdomain"),
        (["tf-config", "--k8s", "-n", "2", "--subdomain", "s", "h1"], "drop the HOST"),
        (["tf-config", "--k8s", "-n", "2", "--subdomain", "s", "--json"], "drop the HOST"),
        (["tf-config", "h1", "h2", "-n", "2"], "go with --k8s"),
    ],
)
def test_cli_usage_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


# ----------------------------------------------------------------------------- the manifest


def load_manifest() -> dict[str, Any]:
    yaml = importlib.import_module("yaml")  # PyYAML, installed with mkdocs (test extra)
    doc = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_docs_manifest_command_yields_each_pods_tf_config(tmp_path: Path) -> None:
    """Run the manifest's container command as written, with the environment each pod gets.

    Expected addresses follow JobSet's documented rules, read from the manifest itself: pod
    ``p`` of Job ``j`` is ``<jobset>-<replicatedJob>-<j>-<p>``, under the subdomain
    ``spec.network.subdomain`` (default: the JobSet's name), on the container's port. ``python``
    is replaced by a stub that prints the TF_CONFIG it was started with.
    """
    doc = load_manifest()
    assert doc["kind"] == "JobSet"
    jobset = doc["metadata"]["name"]
    subdomain = doc["spec"].get("network", {}).get("subdomain", jobset)
    (rjob,) = doc["spec"]["replicatedJobs"]
    assert rjob.get("replicas", 1) == 1
    job = rjob["template"]["spec"]
    assert job.get("completionMode", "Indexed") == "Indexed"
    pods = job["completions"]
    assert job["parallelism"] == pods  # all workers must run at once
    (container,) = job["template"]["spec"]["containers"]
    (port,) = [p["containerPort"] for p in container["ports"]]
    command = [*container["command"], *container.get("args", [])]

    tfplace_script = Path(sys.executable).with_name("tfplace")
    assert tfplace_script.exists(), "the tfplace console script is not installed (pip install -e .)"
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\nprintf "%s" "$TF_CONFIG"\n')
    stub.chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{tfplace_script.parent}{os.pathsep}{os.environ['PATH']}"

    expected_workers = [f"{jobset}-{rjob['name']}-0-{p}.{subdomain}:{port}" for p in range(pods)]
    for pod in range(pods):
        env = {"PATH": path, INDEX_VAR: str(pod), "HOSTNAME": f"{jobset}-{rjob['name']}-0-{pod}"}
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "cluster": {"worker": expected_workers},
            "task": {"type": "worker", "index": pod},
        }


def test_docs_manifest_command_stops_when_the_pod_is_not_indexed(tmp_path: Path) -> None:
    """Outside an Indexed Job the command fails instead of training alone with no TF_CONFIG."""
    doc = load_manifest()
    container = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    stub = tmp_path / "python"
    stub.write_text("#!/bin/sh\necho started training\n")
    stub.chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        [*container["command"], *container["args"]],
        env={"PATH": path, "HOSTNAME": "web-5d8c7"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "started training" not in proc.stdout
    assert "JOB_COMPLETION_INDEX is not set" in proc.stderr


def test_clusters_page_shows_the_manifest() -> None:
    page = (ROOT / "docs" / "clusters.md").read_text(encoding="utf-8")
    section = page.split("## Kubernetes", 1)[1]
    manifest = (ROOT / "docs" / "examples" / "k8s_jobset.yaml").read_text()
    assert f"`docs/examples/k8s_jobset.yaml`:\n\n```yaml\n{manifest}```" in section
