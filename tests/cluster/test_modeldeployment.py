"""The operator, under its own ServiceAccount and RBAC, reconciles ModelDeployments on the devcluster."""

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelops.devcluster import bootstrap
from modelops.devcluster.cluster import ClusterState
from tests.cluster.conftest import RESYNC_SECONDS, Kubectl, Operator, audit_writes, utc_now

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud-detector.yaml"
GROUP, VERSION, PLURAL = "modelops.dev", "v1alpha1", "modeldeployments"
TIMEOUT = 60


def example(namespace: str) -> dict[str, Any]:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    return manifest


class Models:
    """Small helpers over the admin client for one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)

    def get(self, name: str = "fraud-detector") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def patch_spec(self, patch: dict[str, Any], name: str = "fraud-detector") -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": patch}, _content_type="application/merge-patch+json"
        )

    def condition(self, type_: str, name: str = "fraud-detector") -> dict[str, Any] | None:
        conditions = (self.get(name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def wait_ready(self, name: str = "fraud-detector") -> dict[str, Any]:
        def ready() -> bool:
            body = self.get(name)
            condition = self.condition("Ready", name)
            return bool(
                condition
                and condition["status"] == "True"
                and body["status"].get("observedGeneration") == body["metadata"]["generation"]
            )

        bootstrap.wait_for(f"ModelDeployment {name} to be Ready", ready, timeout=TIMEOUT)
        return self.get(name)

    def children(self) -> dict[str, set[str]]:
        selector = "modelops.dev/deployment=fraud-detector"
        return {
            "Deployment": {d.metadata.name for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items},
            "Service": {s.metadata.name for s in self.core.list_namespaced_service(self.namespace, label_selector=selector).items},
            "HorizontalPodAutoscaler": {
                h.metadata.name
                for h in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(self.namespace, label_selector=selector).items
            },
        }


@pytest.fixture
def models(operator: Operator, admin_api: client.ApiClient, namespace: str) -> Iterator[Models]:
    yield Models(admin_api, namespace)


def _env(container: client.V1Container) -> dict[str, str]:
    return {variable.name: variable.value for variable in container.env or []}


def test_example_creates_exactly_the_expected_children_and_becomes_ready(models: Models) -> None:
    created = models.create(example(models.namespace))
    body = models.wait_ready()

    assert models.children() == {
        "Deployment": {"fraud-detector-2-1-0"},
        "Service": {"fraud-detector", "fraud-detector-2-1-0"},
        "HorizontalPodAutoscaler": {"fraud-detector-2-1-0"},
    }
    deployment = models.apps.read_namespaced_deployment("fraud-detector-2-1-0", models.namespace)
    [owner] = deployment.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("ModelDeployment", "fraud-detector", created["metadata"]["uid"], True)
    labels = deployment.spec.template.metadata.labels
    assert labels == {
        "app.kubernetes.io/name": "fraud-detector",
        "app.kubernetes.io/instance": "fraud-detector",
        "app.kubernetes.io/version": "2.1.0",
        "app.kubernetes.io/managed-by": "modelops",
        "modelops.dev/deployment": "fraud-detector",
        "modelops.dev/version": "2.1.0",
    }
    assert deployment.metadata.labels["modelops.dev/track"] == "stable"
    [container] = deployment.spec.template.spec.containers
    assert container.image == "ghcr.io/modelops/model-server:0.1.0"
    env = _env(container)
    assert env["MODEL_NAME"] == "fraud-detector"
    assert env["MODEL_VERSION"] == "2.1.0"
    assert env["MODEL_URI"] == "s3://models/fraud/2.1.0/"
    assert env["MODEL_DIGEST"].startswith("sha256:9f86d08")
    assert env["MODELOPS_TRACK"] == "stable"
    assert env["LOG_LEVEL"] == "info"
    assert container.readiness_probe.http_get.path == "/v2/models/fraud-detector/ready"
    assert container.liveness_probe.http_get.path == "/v2/health/live"
    assert container.resources.requests == {"cpu": "250m", "memory": "512Mi"}
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert deployment.spec.template.spec.security_context.run_as_non_root is True

    hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler("fraud-detector-2-1-0", models.namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    assert hpa.spec.scale_target_ref.name == "fraud-detector-2-1-0"
    entry = models.core.read_namespaced_service("fraud-detector", models.namespace)
    assert entry.spec.selector == {"modelops.dev/deployment": "fraud-detector", "modelops.dev/version": "2.1.0"}

    status = body["status"]
    assert status["phase"] == "Healthy"
    assert status["stable"] == {"version": "2.1.0", "deployment": "fraud-detector-2-1-0", "replicas": 2, "readyReplicas": 2, "weight": 100}
    assert status["history"][0]["outcome"] == "Promoted"
    assert status["message"] == "2/2 replicas of fraud-detector-2-1-0 ready"


def test_kubectl_wait_get_and_explain(models: Models, kubectl: Kubectl) -> None:
    models.create(example(models.namespace))
    kubectl("wait", "--for=condition=Ready", "--timeout=60s", "-n", models.namespace, "mdep/fraud-detector")
    table = kubectl("get", "mdep", "-n", models.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"]
    assert table[1].split()[:3] == ["fraud-detector", "2.1.0", "Healthy"]
    explained = kubectl("explain", "modeldeployment.spec.model").stdout
    assert "The model artifact and its version." in explained
    assert "version\t<string> -required-" in explained
    assert "A change starts a new rollout" in explained


def test_changing_scaling_updates_the_hpa(models: Models) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    models.patch_spec({"scaling": {"maxReplicas": 7, "targetCPUUtilizationPercentage": 50}})

    def updated() -> bool:
        hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler("fraud-detector-2-1-0", models.namespace)
        return hpa.spec.max_replicas == 7 and hpa.spec.metrics[0].resource.target.average_utilization == 50

    bootstrap.wait_for("the HPA to follow the new scaling", updated, timeout=TIMEOUT)


def test_switching_to_fixed_replicas_removes_the_hpa_and_sets_replicas(models: Models) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    models.patch_spec({"scaling": {"replicas": 3, "minReplicas": None, "maxReplicas": None, "targetCPUUtilizationPercentage": None}})

    def fixed() -> bool:
        deployment = models.apps.read_namespaced_deployment("fraud-detector-2-1-0", models.namespace)
        return deployment.spec.replicas == 3 and not models.children()["HorizontalPodAutoscaler"]

    bootstrap.wait_for("3 fixed replicas and no HPA", fixed, timeout=TIMEOUT)
    assert models.wait_ready()["status"]["stable"]["readyReplicas"] == 3


def test_a_deleted_child_is_recreated_within_a_periodic_pass(models: Models) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    old_uid = models.core.read_namespaced_service("fraud-detector-2-1-0", models.namespace).metadata.uid
    models.core.delete_namespaced_service("fraud-detector-2-1-0", models.namespace)
    deleted_at = time.monotonic()

    def recreated() -> bool:
        try:
            return models.core.read_namespaced_service("fraud-detector-2-1-0", models.namespace).metadata.uid != old_uid
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    bootstrap.wait_for("the Service to be recreated", recreated, timeout=TIMEOUT, interval=0.1)
    # Services have no watch trigger: only the periodic pass can have repaired it.
    assert time.monotonic() - deleted_at <= RESYNC_SECONDS * 2 + 5


def test_out_of_band_edits_to_owned_fields_are_reverted(models: Models) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    name = "fraud-detector-2-1-0"
    models.apps.patch_namespaced_deployment(
        name, models.namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "model-server", "image": "evil.example/miner:1"}]}}}},
    )
    models.autoscaling.patch_namespaced_horizontal_pod_autoscaler(name, models.namespace, {"spec": {"maxReplicas": 50}})
    models.core.patch_namespaced_service("fraud-detector", models.namespace, {"spec": {"selector": {"modelops.dev/version": "9.9.9"}}})

    def reverted() -> bool:
        deployment = models.apps.read_namespaced_deployment(name, models.namespace)
        hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler(name, models.namespace)
        entry = models.core.read_namespaced_service("fraud-detector", models.namespace)
        return (
            deployment.spec.template.spec.containers[0].image == "ghcr.io/modelops/model-server:0.1.0"
            and hpa.spec.max_replicas == 5
            and entry.spec.selector["modelops.dev/version"] == "2.1.0"
        )

    bootstrap.wait_for("the operator to revert the edits", reverted, timeout=TIMEOUT)


def assert_no_writes_over_periodic_passes(models: Models, devcluster: ClusterState, operator: Operator, passes: int = 4) -> None:
    """The apiserver's audit log shows no write by the operator's ServiceAccount in the namespace."""
    time.sleep(RESYNC_SECONDS + 1)  # let any write triggered by the last readiness change land
    since = utc_now()
    versions_before = _resource_versions(models)
    time.sleep(RESYNC_SECONDS * passes + 1)
    writes = audit_writes(devcluster, user=operator.user, namespace=models.namespace, since=since)
    assert writes == [], [f"{w['verb']} {w['objectRef']}" for w in writes]
    assert _resource_versions(models) == versions_before
    assert "periodic pass of" not in operator.log_text()  # the loop logs only failures


def test_steady_state_sends_no_writes(models: Models, devcluster: ClusterState, operator: Operator) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    assert_no_writes_over_periodic_passes(models, devcluster, operator)


def _resource_versions(models: Models) -> dict[str, str]:
    """Objects only the operator writes. (The HPA is left out: the controller-manager rewrites its
    status every sync, as metrics are unavailable here.)"""
    versions = {"ModelDeployment": models.get()["metadata"]["resourceVersion"]}
    for deployment in models.apps.list_namespaced_deployment(models.namespace).items:
        versions[f"Deployment {deployment.metadata.name}"] = deployment.metadata.resource_version
    for service in models.core.list_namespaced_service(models.namespace).items:
        versions[f"Service {service.metadata.name}"] = service.metadata.resource_version
    return versions


def test_a_new_version_rolls_out_beside_stable_then_replaces_it(
    models: Models, devcluster: ClusterState, operator: Operator
) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    models.patch_spec(
        {"model": {"version": "2.2.0", "uri": "s3://models/fraud/2.2.0/", "digest": None}, "rollout": {"scaleDownDelay": "3s"}}
    )

    def promoted() -> bool:
        status = models.get()["status"]
        return status["stable"]["version"] == "2.2.0" and status.get("canary") is None

    bootstrap.wait_for("2.2.0 to become stable", promoted, timeout=TIMEOUT)
    body = models.wait_ready()
    assert [(h["version"], h["outcome"]) for h in body["status"]["history"]] == [("2.1.0", "Promoted"), ("2.2.0", "Promoted")]
    bootstrap.wait_for(
        "the 2.1.0 children to be deleted",
        lambda: models.children() == {
            "Deployment": {"fraud-detector-2-2-0"},
            "Service": {"fraud-detector", "fraud-detector-2-2-0"},
            "HorizontalPodAutoscaler": {"fraud-detector-2-2-0"},
        },
        timeout=TIMEOUT,
    )
    entry = models.core.read_namespaced_service("fraud-detector", models.namespace)
    assert entry.spec.selector["modelops.dev/version"] == "2.2.0"
    env = _env(models.apps.read_namespaced_deployment("fraud-detector-2-2-0", models.namespace).spec.template.spec.containers[0])
    # No digest: MODEL_DIGEST is set and empty (the API stores an empty value as absent).
    assert (env["MODEL_VERSION"], env["MODEL_URI"], env["MODEL_DIGEST"]) == ("2.2.0", "s3://models/fraud/2.2.0/", None)
    def reasons() -> set[str]:
        events = models.core.list_namespaced_event(models.namespace, field_selector="involvedObject.name=fraud-detector").items
        return {event.reason for event in events}

    # A pass posts its events after its status write: the status the test saw may be ahead of them.
    bootstrap.wait_for("the Released and Promoted events", lambda: {"Released", "Promoted"} <= reasons(), timeout=20)
    assert_no_writes_over_periodic_passes(models, devcluster, operator, passes=2)


def test_deleting_the_modeldeployment_removes_every_child(models: Models) -> None:
    models.create(example(models.namespace))
    models.wait_ready()
    models.custom.delete_namespaced_custom_object(GROUP, VERSION, models.namespace, PLURAL, "fraud-detector")
    empty = {"Deployment": set(), "Service": set(), "HorizontalPodAutoscaler": set()}
    bootstrap.wait_for("the garbage collector to remove every child", lambda: models.children() == empty, timeout=TIMEOUT)
    bootstrap.wait_for(
        "the pods to go",
        lambda: not models.core.list_namespaced_pod(models.namespace, label_selector="modelops.dev/deployment=fraud-detector").items,
        timeout=TIMEOUT,
    )


def _with(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    target = result
    for part in parents:
        target = target.setdefault(part, {})
    if value is _DELETE:
        target.pop(last, None)
    else:
        target[last] = value
    return result


_DELETE = object()
DIGEST = "sha256:" + "a" * 64

INVALID = [
    ("bad version string", "spec.model.version", "2.1.0 beta", "spec.model.version"),
    ("version too long", "spec.model.version", "1" * 64, "spec.model.version"),
    ("missing version", "spec.model.version", _DELETE, "spec.model.version"),
    ("unknown uri scheme", "spec.model.uri", "ftp://models/x", "spec.model.uri"),
    ("malformed digest", "spec.model.digest", "sha256:xyz", "spec.model.digest"),
    ("unknown format", "spec.model.format", "pickle-rick", "spec.model.format"),
    ("image with spaces", "spec.runtime.image", "my image:1", "spec.runtime.image"),
    ("tag under RequireDigest", "spec.runtime.imagePolicy", "RequireDigest", "spec.runtime.image"),
    ("port out of range", "spec.runtime.port", 70000, "spec.runtime.port"),
    ("too many args", "spec.runtime.args", ["--x"] * 65, "spec.runtime.args"),
    ("reserved env", "spec.runtime.env", [{"name": "MODEL_URI", "value": "file:///etc/passwd"}], "spec.runtime.env"),
    ("bad env name", "spec.runtime.env", [{"name": "1BAD", "value": "x"}], "spec.runtime.env[0].name"),
    ("value and valueFrom", "spec.runtime.env", [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], "spec.runtime.env[0]"),
    ("bad quantity", "spec.runtime.resources", {"requests": {"cpu": "lots"}}, "spec.runtime.resources.requests.cpu"),
    ("negative replicas", "spec.scaling", {"replicas": -1}, "spec.scaling.replicas"),
    ("min greater than max", "spec.scaling", {"minReplicas": 5, "maxReplicas": 2}, "spec.scaling.minReplicas"),
    ("replicas and maxReplicas", "spec.scaling", {"replicas": 2, "maxReplicas": 4}, "spec.scaling"),
    ("cpu target without max", "spec.scaling", {"targetCPUUtilizationPercentage": 50}, "spec.scaling"),
    ("cpu target over 100", "spec.scaling", {"maxReplicas": 3, "targetCPUUtilizationPercentage": 101}, "spec.scaling.targetCPUUtilizationPercentage"),
    ("too many metrics", "spec.scaling", {"maxReplicas": 3, "metrics": [{"type": "Resource"}] * 9}, "spec.scaling.metrics"),
    ("history limit too big", "spec.revisionHistoryLimit", 100, "spec.revisionHistoryLimit"),
    ("unknown field", "spec.model.checksum", "abc", "checksum"),
    ("name too long", "metadata.name", "f" * 41, "metadata.name"),
    ("name starting with a digit", "metadata.name", "9fraud", "metadata.name"),
]


@pytest.mark.parametrize(("case", "path", "value", "field"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_manifests_are_rejected_naming_the_field(
    operator: Operator, admin_api: client.ApiClient, namespace: str, case: str, path: str, value: Any, field: str
) -> None:
    custom = client.CustomObjectsApi(admin_api)
    manifest = _with(example(namespace), path, value)
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest, field_validation="Strict")
    assert rejected.value.status in (400, 422), rejected.value.body
    assert field in rejected.value.body, rejected.value.body
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert client.AppsV1Api(admin_api).list_namespaced_deployment(namespace).items == []


def test_a_released_version_is_immutable(models: Models) -> None:
    models.create(example(models.namespace))
    with pytest.raises(ApiException) as rejected:
        models.patch_spec({"model": {"uri": "s3://models/fraud/tampered/"}})
    assert rejected.value.status == 422
    assert "a released model version is immutable" in rejected.value.body
    assert models.get()["spec"]["model"]["uri"] == "s3://models/fraud/2.1.0/"


def _restricted_namespace(core: client.CoreV1Api, name: str) -> None:
    labels = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
    core.patch_namespace(name, {"metadata": {"labels": labels}})


def test_model_pods_are_admitted_under_the_restricted_pod_security_standard(models: Models) -> None:
    _restricted_namespace(models.core, models.namespace)
    models.create(example(models.namespace))
    body = models.wait_ready()  # Ready means the ReplicaSet could create the pods: PodSecurity admitted them
    assert body["status"]["stable"]["readyReplicas"] == 2
    failures = [
        event.message for event in models.core.list_namespaced_event(models.namespace).items if event.reason == "FailedCreate"
    ]
    assert failures == []


def test_the_operator_deployment_is_admitted_under_the_restricted_pod_security_standard(
    admin_api: client.ApiClient, namespace: str, kubectl: Kubectl
) -> None:
    core, apps = client.CoreV1Api(admin_api), client.AppsV1Api(admin_api)
    _restricted_namespace(core, namespace)
    rendered = kubectl("kustomize", str(EXAMPLE.parents[1] / "manifests")).stdout
    [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    deployment["metadata"]["namespace"] = namespace
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    apps.create_namespaced_deployment(namespace, deployment)
    bootstrap.wait_for(
        "the operator pod to be admitted and Ready",
        lambda: (apps.read_namespaced_deployment("modelops", namespace).status.ready_replicas or 0) == 1,
        timeout=TIMEOUT,
    )
    # A pod that breaks the standard is refused in this namespace: the check above is not vacuous.
    privileged = copy.deepcopy(deployment["spec"]["template"])
    privileged["metadata"] = {"name": "privileged"}
    privileged["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body


def test_every_example_is_accepted_by_the_apiserver(operator: Operator, kubectl: Kubectl, namespace: str) -> None:
    for path in sorted(EXAMPLE.parent.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        document["metadata"]["namespace"] = namespace
        result = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(document), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert "created (server dry run)" in result.stdout
