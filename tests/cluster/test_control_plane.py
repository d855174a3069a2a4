"""The devcluster is a real control plane: controllers, RBAC, admission, GC and Prometheus all work.

Each test asserts a concrete outcome that a mock API could not produce.
"""

import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_api_client import PrometheusConnect

from modelops.devcluster import accounts, bootstrap, targets
from modelops.devcluster.cluster import ClusterState

pytestmark = pytest.mark.cluster

TIMEOUT = 90


def _labels(name: str) -> dict[str, str]:
    return {"app": name}


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=_labels(name)),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=_labels(name)),
                spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="example.invalid/app:1")]),
            ),
        ),
    )


def test_deployment_reaches_three_ready_pods(admin_api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(admin_api), client.CoreV1Api(admin_api)
    apps.create_namespaced_deployment(namespace, _deployment("web", 3))

    def three_ready() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        return len(ready) == 3

    bootstrap.wait_for("3 Ready pods of deployment web", three_ready, timeout=TIMEOUT)
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    # The scheduler bound every pod to a kwok node, and kwok gave each a (fake) IP.
    assert all(pod.spec.node_name and pod.spec.node_name.startswith("kwok-node-") for pod in pods)
    assert all(pod.status.pod_ip and pod.status.phase == "Running" for pod in pods)
    # The Deployment controller owns a ReplicaSet which owns the pods: the controller-manager is real.
    owners = {ref.kind for pod in pods for ref in pod.metadata.owner_references}
    assert owners == {"ReplicaSet"}
    bootstrap.wait_for(
        "deployment web to report 3 ready replicas",
        lambda: apps.read_namespaced_deployment("web", namespace).status.ready_replicas == 3,
        timeout=TIMEOUT,
    )


def test_job_succeeds(admin_api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(admin_api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="train"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(name="train", image="example.invalid/trainer:1")],
                )
            ),
        ),
    )
    batch.create_namespaced_job(namespace, job)

    def succeeded() -> bool:
        status = batch.read_namespaced_job_status("train", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    bootstrap.wait_for("job train to complete", succeeded, timeout=TIMEOUT)
    assert batch.read_namespaced_job_status("train", namespace).status.succeeded == 1


def test_deleting_owner_garbage_collects_dependents(admin_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    for index in range(3):
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"dependent-{index}", owner_references=[reference])),
        )
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependents_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return not any(name.startswith("dependent-") for name in names)

    bootstrap.wait_for("the garbage collector to delete the dependents", dependents_gone, timeout=TIMEOUT)
    remaining = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
    assert "bystander" in remaining
    assert "owner" not in remaining


def test_deleting_namespace_removes_its_objects(admin_api: client.ApiClient) -> None:
    core = client.CoreV1Api(admin_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="data")))
    client.AppsV1Api(admin_api).create_namespaced_deployment(name, _deployment("doomed", 1))

    core.delete_namespace(name)

    def namespace_gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            return error.status == 404
        return False

    bootstrap.wait_for(f"namespace {name} to be finalized", namespace_gone, timeout=TIMEOUT)
    assert not [cm for cm in core.list_config_map_for_all_namespaces().items if cm.metadata.namespace == name]
    assert not [p for p in core.list_pod_for_all_namespaces().items if p.metadata.namespace == name]


def test_service_account_without_role_is_forbidden_where_admin_succeeds(
    devcluster: ClusterState, admin_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody")))
    kubeconfig = accounts.service_account_kubeconfig(
        admin_api,
        namespace=namespace,
        service_account="nobody",
        server=devcluster.server,
        ca_cert=devcluster.ca_cert,
        path=tmp_path / "nobody.kubeconfig",
    )

    assert isinstance(core.list_namespaced_secret(namespace).items, list)  # admin may
    with bootstrap.api_client(kubeconfig) as as_nobody:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_nobody).list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body

        # The token does authenticate: granting a Role makes the same call succeed.
        rbac = client.RbacAuthorizationV1Api(admin_api)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-secrets"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="nobody-reads-secrets"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)],
            ),
        )
        bootstrap.wait_for(
            "the RoleBinding to take effect",
            lambda: isinstance(client.CoreV1Api(as_nobody).list_namespaced_secret(namespace).items, list),
            timeout=30,
        )


def _hpa(name: str, minimum: int, maximum: int) -> dict[str, object]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": minimum,
            "maxReplicas": maximum,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
            ],
        },
    }


def test_autoscaling_v2_hpa_is_validated(admin_api: client.ApiClient, namespace: str) -> None:
    autoscaling = client.AutoscalingV2Api(admin_api)
    created = autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, _hpa("good", 2, 5))
    assert created.spec.max_replicas == 5
    assert created.spec.metrics[0].resource.target.average_utilization == 70

    with pytest.raises(ApiException) as rejected:
        autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, _hpa("bad", 5, 2))
    assert rejected.value.status == 422
    assert "maxReplicas" in rejected.value.body
    names = [h.metadata.name for h in autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items]
    assert names == ["good"]


def _http_route(name: str, weight: int) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models"}}],
                    "backendRefs": [{"name": "model-stable", "port": 8080, "weight": weight}],
                }
            ],
        },
    }


def test_gateway_api_httproute_is_validated(admin_api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(admin_api)
    group, version, plural = "gateway.networking.k8s.io", "v1", "httproutes"
    created = custom.create_namespaced_custom_object(group, version, namespace, plural, _http_route("good", 90))
    assert created["spec"]["rules"][0]["backendRefs"][0]["weight"] == 90

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(group, version, namespace, plural, _http_route("bad", -1))
    assert rejected.value.status == 422
    assert "weight" in rejected.value.body
    listed = custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]
    assert [item["metadata"]["name"] for item in listed] == ["good"]


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return


@pytest.fixture
def metrics_endpoint() -> Iterator[str]:
    """A real HTTP metrics endpoint on 127.0.0.1 exposing one gauge."""
    handler = type("Handler", (_MetricsHandler,), {"body": b'modelops_selftest_value{kind="probe"} 42.5\n'})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_prometheus_scrapes_a_target_registered_through_file_sd(devcluster: ClusterState, metrics_endpoint: str) -> None:
    name = f"selftest-{uuid.uuid4().hex[:8]}"
    folder = devcluster.layout.prometheus_targets
    targets.register(folder, name, metrics_endpoint, {"namespace": "ml", "pod": name})
    prometheus = PrometheusConnect(url=devcluster.prometheus_url, disable_ssl=True)
    query = f'modelops_selftest_value{{pod="{name}"}}'
    try:
        bootstrap.wait_for(f"Prometheus to scrape {metrics_endpoint}", lambda: bool(prometheus.custom_query(query)), timeout=60)
        [sample] = prometheus.custom_query(query)
    finally:
        targets.unregister(folder, name)
    assert float(sample["value"][1]) == 42.5
    assert sample["metric"]["namespace"] == "ml"
    assert sample["metric"]["pod"] == name
    assert sample["metric"]["kind"] == "probe"
    assert sample["metric"]["instance"] == metrics_endpoint
