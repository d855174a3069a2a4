"""The reconciler's wiring over an in-memory ClusterApi: what it writes, and what it does on errors."""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from modelops.kube.api import ApiError
from modelops.planning.children import LABEL_DEPLOYMENT
from modelops.reconciler import reconcile
from tests.unit.planning.helpers import NOW


class FakeCluster:
    """The in-memory ClusterApi of the unit tests: records every call; holds applied objects so that
    a second pass sees them. Holds one ModelDeployment (``body``) or several (``add``).

    Faults are injected per method: ``fail_next["get_modeldeployment"] = [ApiError(0, ...)]``
    raises those errors, one per call, before the call does anything. The status patch is
    conditional like the apiserver's: a ``resource_version`` other than the stored one is a 409.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.primary = self.add(body)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.owned: dict[str, set[tuple[str, str]]] = {}  # owner name -> (kind, name) of its children
        self.calls: list[str] = []
        self.fail_apply: dict[str, ApiError] = {}
        self.fail_next: dict[str, list[Exception]] = {}
        self.foreign: dict[tuple[str, str], list[str]] = {}
        self.templates: dict[str, str] = {}
        self.secrets: dict[tuple[str, str], str] = {}  # (namespace, key) of Secret modelops-notify -> value

    @property
    def body(self) -> dict[str, Any]:
        return self.bodies[self.primary]

    def add(self, body: dict[str, Any]) -> tuple[str, str]:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        body["metadata"].setdefault("resourceVersion", "1")
        self.bodies[key] = body
        return key

    def remove(self, namespace: str, name: str) -> None:
        """Deletes the ModelDeployment and, as the garbage collector would, its children."""
        self.bodies.pop((namespace, name), None)
        for key in self.owned.pop(name, set()):
            self.objects.pop(key, None)

    def write_status_behind_the_operators_back(self, namespace: str, name: str) -> None:
        """Someone else writes the object: its resourceVersion moves on."""
        self._bump(self.bodies[(namespace, name)])

    @staticmethod
    def _bump(body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)

    def _inject(self, method: str) -> None:
        errors = self.fail_next.get(method)
        if errors:
            raise errors.pop(0)

    def get_modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._inject("get_modeldeployment")
        found = self.bodies.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list_modeldeployments(self, namespaces: Sequence[str] = ()) -> set[tuple[str, str]]:
        self._inject("list_modeldeployments")
        self.calls.append("list modeldeployments")
        return {key for key, item in self.bodies.items() if not item["metadata"].get("deletionTimestamp")}

    def get_metric_template(self, name: str) -> str | None:
        return self.templates.get(name)

    def notify_url(self, namespace: str, key: str) -> str | None:
        self.calls.append(f"read Secret modelops-notify {key}")
        return self.secrets.get((namespace, key))

    def list_children(self, namespace: str, owner: str, owner_uid: str) -> dict[str, list[dict[str, Any]]]:
        self._inject("list_children")
        self.calls.append("list")
        result: dict[str, list[dict[str, Any]]] = {"Deployment": [], "Service": [], "HorizontalPodAutoscaler": [], "HTTPRoute": [], "ControllerRevision": [], "Job": []}
        for kind, name in sorted(self.owned.get(owner, ())):
            result[kind].append(copy.deepcopy(self.objects[(kind, name)]))
        return result

    def apply(self, manifest: Mapping[str, Any], field_manager: str = "modelops") -> None:
        self._inject("apply")
        if manifest["kind"] in self.fail_apply:
            raise self.fail_apply[manifest["kind"]]
        self.calls.append(f"apply {manifest['kind']} {manifest['metadata']['name']} as {field_manager}")
        key = (manifest["kind"], manifest["metadata"]["name"])
        current = self.objects.setdefault(key, {"status": {}} if manifest["kind"] == "Deployment" else {})
        for field, value in copy.deepcopy(dict(manifest)).items():
            current[field] = {**current.get(field, {}), **value} if isinstance(value, dict) else value
        owner = (manifest["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
        if owner is not None:  # a partial apply (replicas only) carries no labels: the object is already known
            self.owned.setdefault(owner, set()).add(key)

    def owner_uids(self, namespace: str, kind: str, name: str) -> list[str] | None:
        self.calls.append(f"read {kind} {name}")
        return self.foreign.get((kind, name))

    def delete(self, namespace: str, kind: str, name: str) -> None:
        self.calls.append(f"delete {kind} {name}")
        self.objects.pop((kind, name), None)
        for children in self.owned.values():
            children.discard((kind, name))

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None) -> None:
        self._inject("patch_status")
        self.calls.append("patch status")
        stored = self.bodies[(namespace, name)]
        if resource_version is not None and resource_version != stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "the object has been modified; please apply your changes to the latest version and try again")
        stored["status"] = _merge_patch(stored.get("status") or {}, copy.deepcopy(dict(status)))  # RFC 7386: null removes
        self._bump(stored)

    def post_event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append(f"event {reason}")

    namespace_labels: dict[str, str] | ApiError = {}
    creation_failure: str | None = None

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        self.calls.append(f"read Namespace {name}")
        if isinstance(self.namespace_labels, ApiError):
            raise self.namespace_labels
        return {"metadata": {"name": name, "labels": dict(self.namespace_labels)}}

    def pod_creation_failure(self, namespace: str, job: str) -> str | None:
        self.calls.append(f"read FailedCreate {job}")
        return self.creation_failure


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def body(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"version": "1.0", "uri": "s3://m/1.0/"},
        "runtime": {"image": "registry.example/server:1"},
        "scaling": {"replicas": 1},
    } | spec_overrides
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": spec}


def test_passes_converge_to_writing_nothing() -> None:
    cluster = FakeCluster(body())
    first = reconcile(cluster, cluster.body, NOW)
    record = next(label for label in first.applied if label.startswith("ControllerRevision m-1-0-"))
    assert first.applied == [record, "Deployment m-1-0", "Service m-1-0", "Deployment m-1-0 replicas=1", "Service m"]
    assert "apply Deployment m-1-0 as modelops-replicas" in cluster.calls
    assert first.status_written
    assert [e.reason for e in first.events] == ["Released"]
    second = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), NOW)  # type: ignore[arg-type]
    assert second.applied == [] and second.status_written  # now it sees the Deployment: "0/1 replicas ... ready"
    assert cluster.body["status"]["message"] == "0/1 replicas of m-1-0 ready"
    cluster.calls.clear()
    third = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), NOW)  # type: ignore[arg-type]
    assert not third.wrote
    assert cluster.calls == ["list"]  # and no reads of single objects either


def test_an_apply_error_is_reported_in_status_and_other_children_still_apply() -> None:
    cluster = FakeCluster(body())
    cluster.fail_apply["Service"] = ApiError(403, 'services is forbidden: User "x" cannot patch')
    outcome = reconcile(cluster, cluster.body, NOW)
    assert outcome.applied[1:] == ["Deployment m-1-0", "Deployment m-1-0 replicas=1"]
    assert outcome.applied[0].startswith("ControllerRevision m-1-0-")
    assert len(outcome.errors) == 2
    assert cluster.body["status"]["phase"] == "Degraded"
    degraded = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed"
    assert "services is forbidden" in degraded["message"]


def test_a_spec_the_models_refuse_is_reported_without_touching_children() -> None:
    cluster = FakeCluster(body(model={"version": "not ok!", "uri": "s3://m/"}))
    outcome = reconcile(cluster, cluster.body, NOW)
    assert cluster.calls == ["patch status"]
    assert cluster.body["status"]["phase"] == "Degraded"
    assert cluster.body["status"]["message"].startswith("spec.model.version:")
    assert outcome.errors


def test_status_patch_sends_nulls_for_cleared_fields() -> None:
    cluster = FakeCluster(body())
    sent: list[Mapping[str, Any]] = []
    cluster.patch_status = lambda namespace, name, status, **_: sent.append(status)  # type: ignore[method-assign]
    reconcile(cluster, cluster.body, NOW)
    assert "canary" in sent[0] and sent[0]["canary"] is None


def test_an_existing_object_of_someone_else_is_never_taken_over() -> None:
    cluster = FakeCluster(body())
    cluster.foreign[("Service", "m")] = ["someone-elses-uid"]
    outcome = reconcile(cluster, cluster.body, NOW)
    assert "Service m" not in outcome.applied
    assert "apply Service m as modelops" not in cluster.calls
    assert any("already exists and is not owned by ModelDeployment m" in error for error in outcome.errors)
    assert cluster.body["status"]["phase"] == "Degraded"


def test_no_route_is_written_while_a_service_it_points_at_is_someone_elses() -> None:
    router = {"router": {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}}
    cluster = FakeCluster(body(rollout=router))
    cluster.foreign[("Service", "m-1-0")] = ["someone-elses-uid"]
    outcome = reconcile(cluster, cluster.body, NOW)
    assert not [call for call in cluster.calls if call.startswith("apply HTTPRoute")]
    assert "HTTPRoute m: not updated, because Service m-1-0 could not be applied" in outcome.errors
    assert cluster.body["status"]["phase"] == "Degraded"
    del cluster.foreign[("Service", "m-1-0")]  # the foreign Service is renamed: the route follows
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), NOW)  # type: ignore[arg-type]
    assert "apply HTTPRoute m as modelops" in cluster.calls


def test_a_lasting_failure_is_new_once_and_a_different_one_is_new_again() -> None:
    cluster = FakeCluster(body())
    cluster.fail_apply["Service"] = ApiError(403, 'services is forbidden: User "x" cannot patch')
    assert reconcile(cluster, cluster.body, NOW).new_failure
    later = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:30Z")  # type: ignore[arg-type]
    assert later.errors and not later.new_failure
    cluster.fail_apply["Service"] = ApiError(422, "Service is invalid: spec.ports")
    assert reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:01:00Z").new_failure  # type: ignore[arg-type]
    del cluster.fail_apply["Service"]
    healed = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:01:30Z")  # type: ignore[arg-type]
    assert not healed.errors and not healed.new_failure


def _serving(cluster: FakeCluster, version: str, replicas: int = 1) -> None:
    """The Deployment of ``version`` has all its replicas Ready (as the Deployment controller would report)."""
    deployment = cluster.objects[("Deployment", f"m-{version.replace('.', '-')}")]
    generation = deployment.setdefault("metadata", {}).setdefault("generation", 1)
    deployment["status"] = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas, "observedGeneration": generation}


def _pass(cluster: FakeCluster, now: str = NOW) -> Any:
    return reconcile(cluster, cluster.get_modeldeployment("ns", "m"), now)  # type: ignore[arg-type]


def _canary(router: dict[str, Any] | None = None) -> FakeCluster:
    rollout: dict[str, Any] = {"steps": [{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 60}, {"pause": {}}]}
    if router:
        rollout["router"] = router
    cluster = FakeCluster(body(rollout=rollout))
    _pass(cluster)
    _serving(cluster, "1.0")
    _pass(cluster)
    cluster.body["spec"]["model"] = {"version": "2.0", "uri": "s3://m/2.0/"}
    _pass(cluster)
    _serving(cluster, "2.0")
    _pass(cluster, "2026-11-26T12:00:01Z")
    assert cluster.body["status"]["rollout"]["step"] == 1
    return cluster


GATEWAY = {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}


def test_a_failed_route_write_holds_the_rollout_and_status_keeps_the_applied_weight() -> None:
    cluster = _canary(GATEWAY)
    before = copy.deepcopy(cluster.body["status"])
    applied_route = copy.deepcopy(cluster.objects[("HTTPRoute", "m")])
    cluster.fail_apply["HTTPRoute"] = ApiError(404, "the server could not find the requested resource")  # CRD gone
    outcome = _pass(cluster, "2026-11-26T12:01:00Z")  # the 30 s pause is over: the plan moves to 60 %
    status = cluster.body["status"]
    assert status["rollout"]["step"] == before["rollout"]["step"] and status["rollout"]["weight"] == 20
    assert status["canary"]["weight"] == 20 == applied_route["spec"]["rules"][0]["backendRefs"][1]["weight"]
    assert outcome.events == []  # no StepCompleted for a step whose traffic never moved
    traffic = next(c for c in status["conditions"] if c["type"] == "TrafficSplit")
    assert (traffic["status"], traffic["reason"]) == ("False", "TrafficSplitUnavailable")
    assert status["phase"] == "Degraded" and outcome.new_failure
    del cluster.fail_apply["HTTPRoute"]
    healed = _pass(cluster, "2026-11-26T12:01:30Z")
    assert cluster.body["status"]["canary"]["weight"] == 60
    assert cluster.objects[("HTTPRoute", "m")]["spec"]["rules"][0]["backendRefs"][1]["weight"] == 60
    assert "StepCompleted" in [e.reason for e in healed.events]


def test_while_the_route_cannot_be_written_no_backend_it_points_at_is_deleted() -> None:
    cluster = _canary(GATEWAY)
    cluster.body["spec"]["model"] = {"version": "3.0", "uri": "s3://m/3.0/"}  # supersedes 2.0: its children would go
    cluster.fail_apply["HTTPRoute"] = ApiError(500, "etcdserver: request timed out")
    outcome = _pass(cluster, "2026-11-26T12:01:00Z")
    assert outcome.deleted == []
    assert ("Service", "m-2-0") in cluster.objects and ("Deployment", "m-2-0") in cluster.objects
    assert cluster.body["status"]["canary"]["version"] == "2.0"
    assert cluster.body["status"]["rollout"]["revision"] == "2.0"


def test_an_unreadable_status_field_writes_no_child_keeps_the_field_and_warns_once() -> None:
    cluster = FakeCluster(body())
    _pass(cluster)
    _serving(cluster, "1.0")
    _pass(cluster)
    cluster.body["status"]["retraining"] = {"runs": 1, "lastRun": {"job": "m-retrain-1", "trigger": "t", "startedAt": NOW,
                                                                  "candidate": {"version": "1.1", "uri": "s3://m/1.1/", "metrics": {"auc": "high"}}}}
    cluster.body["spec"]["model"] = {"version": "2.0", "uri": "s3://m/2.0/"}
    cluster.calls.clear()
    outcome = _pass(cluster, "2026-11-26T12:01:00Z")
    assert [call for call in cluster.calls if not call.startswith(("list", "patch status"))] == []
    assert outcome.applied == [] and outcome.deleted == []
    status = cluster.body["status"]
    assert status["retraining"]["lastRun"]["candidate"]["metrics"] == {"auc": "high"}  # left for a human to see and fix
    assert status["stable"]["version"] == "1.0"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "StatusUnreadable"
    assert "status.retraining.lastRun.candidate.metrics.auc" in degraded["message"]
    assert [e.reason for e in outcome.events] == ["StatusUnreadable"]
    again = _pass(cluster, "2026-11-26T12:02:00Z")
    assert again.events == [] and not again.wrote


SECRET_ENV = [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]


def test_the_namespace_is_read_only_for_a_spec_that_needs_an_opt_in() -> None:
    plain = FakeCluster(body())
    reconcile(plain, plain.body, NOW)
    assert not [call for call in plain.calls if call.startswith("read Namespace")]
    reading = FakeCluster(body(runtime={"image": "registry.example/server:1", "env": SECRET_ENV}))
    reading.namespace_labels = {"modelops.dev/allow-secret-refs": "true"}
    outcome = reconcile(reading, reading.body, NOW)
    assert "read Namespace ns" in reading.calls
    assert "Deployment m-1-0" in outcome.applied


def test_a_secret_reference_without_the_opt_in_writes_no_deployment_and_status_names_the_rule() -> None:
    cluster = FakeCluster(body(runtime={"image": "registry.example/server:1", "env": SECRET_ENV}))
    outcome = reconcile(cluster, cluster.body, NOW)
    assert not [label for label in outcome.applied if label.startswith("Deployment")]
    degraded = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "PolicyRefused"
    assert degraded["message"].startswith("spec.runtime.env[0].valueFrom.secretKeyRef: Secret references need the label")
    assert "(rule secret-refs)" in degraded["message"]


def test_an_unreadable_namespace_fails_closed_and_says_why() -> None:
    cluster = FakeCluster(body(runtime={"image": "registry.example/server:1", "env": SECRET_ENV}))
    cluster.namespace_labels = ApiError(403, 'namespaces "ns" is forbidden')
    outcome = reconcile(cluster, cluster.body, NOW)
    assert not [label for label in outcome.applied if label.startswith("Deployment")]
    degraded = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "PolicyRefused"
    assert 'cannot read namespace ns: namespaces "ns" is forbidden' in degraded["message"]


def _retraining_body() -> dict[str, Any]:
    return body(retraining={"jobTemplate": {"template": {"spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}}})


def test_a_job_whose_pods_cannot_be_created_fails_its_run_with_the_reason() -> None:
    cluster = FakeCluster(_retraining_body())
    cluster.body["metadata"]["annotations"] = {"modelops.dev/action.retrain": "t1"}
    reconcile(cluster, cluster.body, NOW)
    assert cluster.body["status"]["retraining"]["lastRun"]["outcome"] == "Running"
    job = cluster.objects[("Job", "m-retrain-1")]
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True  # the restricted defaults
    cluster.creation_failure = 'pods "m-retrain-1-x" is forbidden: violates PodSecurity "restricted:latest"'
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), NOW)  # type: ignore[arg-type]
    run = cluster.body["status"]["retraining"]["lastRun"]
    assert run["outcome"] == "Failed"
    assert run["reason"].startswith('FailedCreate: pods "m-retrain-1-x" is forbidden: violates PodSecurity')


def test_a_job_with_pods_is_not_asked_for_creation_failures() -> None:
    cluster = FakeCluster(_retraining_body())
    cluster.body["metadata"]["annotations"] = {"modelops.dev/action.retrain": "t1"}
    reconcile(cluster, cluster.body, NOW)
    cluster.objects[("Job", "m-retrain-1")]["status"] = {"active": 1}
    cluster.calls.clear()
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), NOW)  # type: ignore[arg-type]
    assert not [call for call in cluster.calls if call.startswith("read FailedCreate")]
