"""The dev-only kubelet stand-in runs `modelops serve` for model-server pods and follows them."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from modelops.devcluster import bootstrap
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.podrunner import PodRunner, endpoints
from tests.cluster.conftest import Operator
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster


@pytest.fixture
def runner(admin_api: client.ApiClient, devcluster: ClusterState, namespace: str) -> Iterator[PodRunner]:
    handle = PodRunner(admin_api, devcluster.root, (namespace,))
    yield handle
    handle.close()


def test_model_server_pods_run_as_local_servers_and_stop_with_their_pods(
    operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str, runner: PodRunner, tmp_path: Path
) -> None:
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"type": "linear", "coefficients": [1.0], "intercept": 0.0}))
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    custom = client.CustomObjectsApi(admin_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {"model": {"version": "1.0.0", "uri": model.as_uri(), "digest": digest, "format": "custom"},
                 "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"}, "scaling": {"replicas": 2}},
    })
    bootstrap.wait_for("a server for each of two Running pods", lambda: synced(runner, 2), timeout=60)
    published = endpoints(devcluster.root, namespace)
    assert [(e["model"], e["version"]) for e in published] == [("tiny", "1.0.0")] * 2
    for endpoint in published:
        bootstrap.wait_for(
            f"the server of {endpoint['pod']}",
            lambda port=endpoint["port"]: _ready(port),
            timeout=30,
        )
        answer = httpx.post(f"http://127.0.0.1:{endpoint['port']}/v2/models/tiny/infer",
                            json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [2.0]}]}, timeout=5)
        assert answer.json()["outputs"][0]["data"] == [1]

    prometheus = devcluster.prometheus_url
    query = f'mlserve_model_ready{{namespace="{namespace}"}}'

    def scraped() -> set[str]:
        """Pods whose server is ready, keyed by the target labels a PodMonitor would set (the server's own under exported_*)."""
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
        scrape_labels = {"model": "tiny", "version": "1.0.0", "container": "model-server", "endpoint": "http",
                         "exported_model": "tiny", "exported_version": "1.0.0"}
        return {sample["metric"]["pod"] for sample in result
                if sample["value"][1] == "1" and scrape_labels.items() <= sample["metric"].items()}

    bootstrap.wait_for("Prometheus to scrape both pods", lambda: scraped() == {e["pod"] for e in published}, timeout=60)

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny", {"spec": {"scaling": {"replicas": 1}}},
                                          _content_type="application/merge-patch+json")
    bootstrap.wait_for("the runner to follow the scale-down", lambda: synced(runner, 1), timeout=60)
    assert len(endpoints(devcluster.root, namespace)) == 1
    assert len([p for p in (devcluster.layout.prometheus_targets).glob(f"pod-{namespace}-*.json")]) == 1


def synced(runner: PodRunner, count: int) -> bool:
    """One sync of the runner, then whether it runs ``count`` servers."""
    runner.sync()
    return len(runner.running) == count


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/models/tiny/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_runner_command_stops_its_servers_on_sigterm(
    operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    from modelops.devcluster import processes

    model = tmp_path / "model.json"
    model.write_text(json.dumps({"type": "linear", "coefficients": [1.0], "intercept": 0.0}))
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    client.CustomObjectsApi(admin_api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {"model": {"version": "1.0.0", "uri": model.as_uri(), "digest": digest, "format": "custom"},
                 "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"}, "scaling": {"replicas": 1}},
    })
    with (tmp_path / "runner.log").open("wb") as log:
        runner = subprocess.Popen([sys.executable, "-m", "modelops.cli", "devcluster", "pods", "--state-dir", str(devcluster.root),
                                   "--namespace", namespace], stdout=log, stderr=subprocess.STDOUT)
    try:
        bootstrap.wait_for("a published server", lambda: len(endpoints(devcluster.root, namespace)) == 1, timeout=60)
        [endpoint] = endpoints(devcluster.root, namespace)
        server = processes.ProcessRecord("server", endpoint["pid"], endpoint["startTicks"], "")
        assert processes.is_running(server)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 0
        assert not processes.is_running(server)
        assert endpoints(devcluster.root, namespace) == []
        assert not list(devcluster.layout.prometheus_targets.glob(f"pod-{namespace}-*.json"))
    finally:
        runner.kill()
        runner.wait()
