"""The ML loop end to end: real `modelops serve` processes, real Prometheus, drift, a retraining Job.

The stable version's pods are stood in for by `modelops serve` processes started with the
env of the Deployment's pod template (as a kubelet would), registered with Prometheus under
the pods' namespace and names. A load generator sends inference requests; shifting its input
distribution raises the drift gauge, and after the check's `for` duration exactly one
retraining Job appears. kwok completes it; the test writes the Job's termination message as a
kubelet would, and a local HTTP receiver collects the notification.
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kubernetes import client

from modelops.devcluster import bootstrap, targets
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.localoperator import free_port
from modelops.serving.drift import build_profile
from tests.cluster.conftest import Operator
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

NAME = "scorer"
MODEL = {"type": "linear", "kind": "classifier", "features": ["a", "b"], "coefficients": [1.0, -0.5], "intercept": 0.0}



SECRET_PATH = "B000/s3cr3t-w3bh00k-t0ken"
EVIL_CANDIDATE = {"version": "6.6.6", "uri": "https://evil.example/model.joblib", "metrics": {"auc": 1.0}}


def _impostor_pod(core: client.CoreV1Api, namespace: str, real: client.V1Pod) -> str:
    """A pod someone else created with the Job's name label (``job-name``, what the operator selected by
    before) but no ownerReference, which reports a candidate of its own, later than the real one. (With
    the Job's uid label too, the Job controller would adopt it: then the two messages differ and no
    candidate is trusted; see the unit tests.)"""
    labels = {key: value for key, value in (real.metadata.labels or {}).items() if key in ("job-name", "batch.kubernetes.io/job-name")}
    name = f"{real.metadata.name}-impostor"
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        # On a node nobody runs: neither the scheduler nor kwok touches it, so its planted status stays.
        spec=client.V1PodSpec(restart_policy="Never", node_name="no-such-node",
                              containers=[client.V1Container(name="train", image="evil.example/x:1")])))
    core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "train", "image": "evil.example/x:1", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(EVIL_CANDIDATE),
                                 "finishedAt": "2099-01-01T00:00:00Z"}},
    }]}})
    return name


class Receiver:
    """A local HTTP endpoint that records what is POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(json.loads(body))
                receiver.paths.append(self.path)
                self.send_response(202)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/candidates"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StandInPods:
    """`modelops serve` processes for every pod of a Deployment, with the pod template's env."""

    def __init__(self, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str, deployment: str, targets_dir: Path, logs: Path) -> None:
        template = apps.read_namespaced_deployment(deployment, namespace).spec.template
        env = {e.name: e.value or "" for e in template.spec.containers[0].env}
        pods = core.list_namespaced_pod(namespace, label_selector=f"modelops.dev/deployment={NAME}").items
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.targets_dir = targets_dir
        self.target_names: list[str] = []
        self.logs = logs
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "KUBE"))}
        try:
            for pod in pods:
                port = free_port()
                with (logs / f"{pod.metadata.name}.log").open("wb") as log:
                    self.processes.append(subprocess.Popen(
                        [sys.executable, "-m", "modelops.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                        env=base | env, stdout=log, stderr=subprocess.STDOUT,
                    ))
                self.ports.append(port)
                name = f"{namespace}-{pod.metadata.name}"[:63]
                targets.register(targets_dir, name, f"127.0.0.1:{port}", {"namespace": namespace, "pod": pod.metadata.name})
                self.target_names.append(name)
            for port in self.ports:
                bootstrap.wait_for(f"modelops serve on {port} to be ready", lambda port=port: self._ready(port), timeout=30)
        except BaseException:
            self.close()
            raise

    def _ready(self, port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/models/{NAME}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        for name in self.target_names:
            targets.unregister(self.targets_dir, name)
        for process in self.processes:
            process.terminate()
            process.wait(timeout=15)


class Traffic:
    """Inference requests to every stand-in pod; ``shift`` moves the input distribution's mean."""

    def __init__(self, ports: list[int], biased_groups: bool = False) -> None:
        self.ports, self.shift, self.sent, self.failed = ports, 0.0, 0, 0
        self.biased_groups = biased_groups
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                for port in self.ports:
                    rows = rng.normal(self.shift, 1.0, (50, 2))
                    inputs: list[dict[str, Any]] = []
                    if self.biased_groups:  # group a gets inputs the model mostly approves, group b mostly not
                        rows[:25, 0] += 1.5
                        rows[25:, 0] -= 1.5
                        inputs.append({"name": "group", "shape": [50], "datatype": "BYTES", "data": ["a"] * 25 + ["b"] * 25})
                    tensor = {"name": "x", "shape": [50, 2], "datatype": "FP64", "data": rows.ravel().tolist()}
                    body = {"inputs": [tensor, *inputs]}
                    answer = http.post(f"http://127.0.0.1:{port}/v2/models/{NAME}/infer", json=body)
                    self.sent += 1
                    self.failed += answer.status_code != 200
                time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[str, str, str]:
    model = tmp_path / "model.json"
    model.write_text(json.dumps(MODEL))
    rng = np.random.default_rng(1)
    profile = tmp_path / "profile.json"
    reference = {"a": [str(v) for v in rng.normal(0, 1, 5000)], "b": [str(v) for v in rng.normal(0, 1, 5000)]}
    profile.write_text(json.dumps(build_profile(reference, bins=10).to_json()))
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    return model.as_uri(), digest, profile.as_uri()


def test_drift_starts_exactly_one_retraining_job_and_its_candidate_is_recorded_and_announced(
    operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str, tmp_path: Path,
    artifacts: tuple[str, str, str],
) -> None:
    uri, digest, profile = artifacts
    receiver = Receiver()
    custom, apps, core, batch = (client.CustomObjectsApi(admin_api), client.AppsV1Api(admin_api),
                                 client.CoreV1Api(admin_api), client.BatchV1Api(admin_api))
    document = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"version": "1.0.0", "uri": uri, "digest": digest, "format": "custom"},
            "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0", "env": [
                {"name": "MODEL_PROFILE_URI", "value": profile},
                {"name": "MODELOPS_DRIFT_INTERVAL_SECONDS", "value": "1"},
                {"name": "MODELOPS_DRIFT_WINDOW", "value": "1000"},
            ]},
            "scaling": {"replicas": 2},
            "monitoring": {"interval": "10s", "checks": [
                {"name": "drift", "type": "featureDrift", "max": 0.25, "minSampleCount": 500, "for": "10s", "action": "retrain"},
            ]},
            "retraining": {
                "jobTemplate": {"template": {"spec": {"containers": [{"name": "train", "image": "ghcr.io/modelops/trainer:1"}]}}},
                "cooldown": "1h",
                "notify": {"urlFrom": {"secretKeyRef": {"name": "modelops-notify", "key": "webhook"}}},
            },
        },
    }
    # The webhook URL is a credential: it lives in the namespace's Secret modelops-notify, and must
    # appear in no log line, event or status field.
    secret_url = f"{receiver.url}/T000/{SECRET_PATH}"
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="modelops-notify"),
                                                             string_data={"webhook": secret_url}))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)

    def status() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME).get("status") or {}

    bootstrap.wait_for("the stable version to be Healthy", lambda: status().get("phase") == "Healthy", timeout=60)
    pods = StandInPods(apps, core, namespace, f"{NAME}-1-0-0", devcluster.layout.prometheus_targets, tmp_path)
    traffic = Traffic(pods.ports)
    try:
        def monitored(verdict: str) -> bool:
            checks = (status().get("monitoring") or {}).get("checks") or []
            return bool(checks) and checks[0].get("verdict") == verdict

        bootstrap.wait_for("the drift check to pass on unshifted data", lambda: monitored("Pass"), timeout=90)
        assert batch.list_namespaced_job(namespace).items == []

        traffic.shift = 2.0
        bootstrap.wait_for("the drift check to fail", lambda: monitored("Fail"), timeout=60)
        bootstrap.wait_for("a retraining Job", lambda: bool(batch.list_namespaced_job(namespace).items), timeout=60)
        [job] = batch.list_namespaced_job(namespace).items
        assert job.metadata.name == f"{NAME}-retrain-1"
        env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
        assert env["MODELOPS_CURRENT_VERSION"] == "1.0.0" and "check drift failing since" in env["MODELOPS_TRIGGER"]
        assert job.spec.active_deadline_seconds == 3600 and job.spec.backoff_limit == 1

        # kwok completes the pod; write its termination message as the kubelet would.
        def job_pod() -> client.V1Pod | None:
            found = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
            return found[0] if found and found[0].status.phase == "Succeeded" else None

        bootstrap.wait_for("the Job's pod to complete", lambda: job_pod() is not None, timeout=60)
        pod = job_pod()
        assert pod is not None
        impostor = _impostor_pod(core, namespace, pod)  # carries the Job's labels, but the Job does not own it
        candidate = {"version": "1.1.0", "uri": "s3://models/scorer/1.1.0/", "digest": "sha256:" + "c" * 64, "metrics": {"auc": 0.93}}
        core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"containerStatuses": [{
            "name": "train", "image": "ghcr.io/modelops/trainer:1", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(candidate)}},
        }]}})

        def recorded() -> bool:
            run = (status().get("retraining") or {}).get("lastRun") or {}
            return run.get("outcome") == "Succeeded" and run.get("candidate") is not None

        bootstrap.wait_for("the candidate in status", recorded, timeout=60)
        # The announcement leaves the pass (the notify outbox); a later pass records its outcome.
        bootstrap.wait_for("the announcement's outcome in status",
                           lambda: status()["retraining"]["lastRun"].get("notified") is not None, timeout=30)
        run = status()["retraining"]["lastRun"]
        assert run["candidate"] == candidate and run["notified"] is True  # not the impostor's
        assert [r["candidate"] for r in receiver.received] == [candidate]
        assert receiver.paths == [f"/candidates/T000/{SECRET_PATH}"]
        events = core.list_namespaced_event(namespace).items
        assert SECRET_PATH not in json.dumps(status()) + operator.log_text() + " ".join(e.message or "" for e in events)
        planted = core.read_namespaced_pod(impostor, namespace).status.container_statuses[0].state.terminated
        assert json.loads(planted.message) == EVIL_CANDIDATE  # it was there to be read all along
        assert receiver.received[0]["modelDeployment"] == {"namespace": namespace, "name": NAME}
        reasons = {e.reason for e in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}").items}
        assert {"RetrainingStarted", "RetrainingSucceeded"} <= reasons

        # Drift persists, but the cooldown holds: still exactly one Job, and the spec is untouched.
        time.sleep(25)
        assert [j.metadata.name for j in batch.list_namespaced_job(namespace).items] == [f"{NAME}-retrain-1"]
        assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)["spec"]["model"]["version"] == "1.0.0"
        monitoring = next(c for c in status()["conditions"] if c["type"] == "Monitoring")
        assert (monitoring["status"], monitoring["reason"]) == ("False", "Breach")
        assert traffic.failed == 0
    finally:
        traffic.close()
        pods.close()
        receiver.close()


def test_a_fairness_gap_trips_its_check_only_with_enough_samples_per_group(
    operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str, tmp_path: Path,
    artifacts: tuple[str, str, str],
) -> None:
    uri, digest, _ = artifacts
    custom, apps, core = client.CustomObjectsApi(admin_api), client.AppsV1Api(admin_api), client.CoreV1Api(admin_api)
    document = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"version": "1.0.0", "uri": uri, "digest": digest, "format": "custom"},
            "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0", "env": [{"name": "MODEL_SENSITIVE_ATTRIBUTES", "value": "group"}]},
            "scaling": {"replicas": 1},
            "monitoring": {"interval": "10s", "checks": [
                {"name": "parity", "type": "fairnessGap", "attribute": "group", "max": 0.2, "window": "20s",
                 "minSampleCount": 100, "for": "0s", "action": "alert"},
                {"name": "parity-strict-sample", "type": "fairnessGap", "attribute": "group", "max": 0.2, "window": "20s",
                 "minSampleCount": 10000000, "for": "0s", "action": "alert"},
            ]},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)

    def status() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME).get("status") or {}

    bootstrap.wait_for("the stable version to be Healthy", lambda: status().get("phase") == "Healthy", timeout=60)
    pods = StandInPods(apps, core, namespace, f"{NAME}-1-0-0", devcluster.layout.prometheus_targets, tmp_path)
    traffic = Traffic(pods.ports, biased_groups=True)
    try:
        def verdicts() -> dict[str, str | None]:
            return {c["name"]: c.get("verdict") for c in (status().get("monitoring") or {}).get("checks", [])}

        bootstrap.wait_for("the fairness check to fail", lambda: verdicts().get("parity") == "Fail", timeout=90)
        checks = {c["name"]: c for c in status()["monitoring"]["checks"]}
        assert checks["parity"]["value"] > 0.2
        assert checks["parity-strict-sample"]["verdict"] == "NoData"  # too few samples per group: never a verdict
        assert "need 10000000" in checks["parity-strict-sample"]["reason"]
        condition = next(c for c in status()["conditions"] if c["type"] == "Monitoring")
        assert (condition["status"], condition["reason"]) == ("False", "Breach")
        assert "parity:" in condition["message"] and "parity-strict-sample:" not in condition["message"]
        bootstrap.wait_for(
            "a MonitoringAlert event",
            lambda: "MonitoringAlert" in {e.reason for e in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}").items},
            timeout=30,
        )
    finally:
        traffic.close()
        pods.close()


def test_a_failed_retraining_job_is_recorded_and_not_retried_before_the_cooldown(
    operator: Operator, admin_api: client.ApiClient, namespace: str, artifacts: tuple[str, str, str], kubectl: Any
) -> None:
    uri, digest, _ = artifacts
    custom, batch = client.CustomObjectsApi(admin_api), client.BatchV1Api(admin_api)
    unschedulable = {"nodeSelector": {"modelops.dev/no-such-node": "true"}, "containers": [{"name": "train", "image": "trainer:1"}]}
    document = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"version": "1.0.0", "uri": uri, "digest": digest, "format": "custom"},
            "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"},
            # The pod can never be scheduled, so the Job fails at its deadline: a hung Job.
            "retraining": {"jobTemplate": {"activeDeadlineSeconds": 3, "template": {"spec": unschedulable}}, "cooldown": "1h"},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)

    def status() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME).get("status") or {}

    bootstrap.wait_for("Healthy", lambda: status().get("phase") == "Healthy", timeout=60)
    environment = {"KUBECONFIG": str(kubectl.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    retrain = [sys.executable, "-m", "modelops.cli", "retrain", NAME, "-n", namespace]
    subprocess.run(retrain, check=True, env=environment, capture_output=True, timeout=60)
    bootstrap.wait_for(
        "the run to be recorded as Failed",
        lambda: ((status().get("retraining") or {}).get("lastRun") or {}).get("outcome") == "Failed",
        timeout=60,
    )
    run = status()["retraining"]["lastRun"]
    assert run["job"] == f"{NAME}-retrain-1" and "DeadlineExceeded" in run["reason"]
    subprocess.run(retrain, check=True, env=environment, capture_output=True, timeout=60)
    bootstrap.wait_for(
        "the second request to be handled",
        lambda: (status().get("handledActions") or {}).get("retrain") is not None
        and status()["handledActions"]["retrain"] > run["startedAt"],
        timeout=30,
    )
    time.sleep(3)
    assert [j.metadata.name for j in batch.list_namespaced_job(namespace).items] == [f"{NAME}-retrain-1"]
    assert status()["retraining"]["runs"] == 1
