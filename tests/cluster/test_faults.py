"""Faults injected on the devcluster, with the operator under its own ServiceAccount: the safe outcome each time.

Every scenario starts from a stable 1.0.0 (two replicas) and a canary 2.0.0 of the same
ModelDeployment, and breaks something an SRE or a buggy tool would: the stable Deployment deleted,
unlabelled, edited, scaled to 0; status unreadable or missing its stable version; the HTTPRoute CRD
removed; route writes refused by an admission policy; a Gateway refusing the route. The operator
must never promote, never report weights it did not apply, and never write children on a status it
cannot read.
"""

import copy
import json
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelops.devcluster import bootstrap
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.layout import CacheLayout, cache_root
from tests.cluster.conftest import RESYNC_SECONDS, Kubectl, Operator, audit_writes, utc_now
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION, assert_no_writes_over_periodic_passes, example

pytestmark = pytest.mark.cluster

NAME = "fraud-detector"
STABLE, CANARY = "fraud-detector-1-0-0", "fraud-detector-2-0-0"
TIMEOUT = 60
GATEWAY = {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}
ROUTES_CRD = "httproutes.gateway.networking.k8s.io"
MODELDEPLOYMENTS_CRD = "modeldeployments.modelops.dev"
CRDS = Path(__file__).resolve().parents[2] / "crds"


class Fault:
    """One ModelDeployment under test, and admin clients to break things with."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create(self, steps: list[dict[str, Any]], router: dict[str, Any] | None = None) -> None:
        document = example(self.namespace)
        document["spec"]["model"] = {"version": "1.0.0", "uri": "s3://models/fraud/1.0.0/"}
        document["spec"]["scaling"] = {"replicas": 2}
        document["spec"]["rollout"] = {"steps": steps, "abortScaleDownDelay": "1h"} | ({"router": router} if router else {})
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, document)
        self.wait("1.0.0 to be Ready", lambda s: _condition(s, "Ready") == "True" and (s.get("stable") or {}).get("version") == "1.0.0")

    def release(self, version: str) -> None:
        model = {"version": version, "uri": f"s3://models/fraud/{version}/"}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME, {"spec": {"model": model}},
                                                   _content_type="application/merge-patch+json")

    def act(self, action: str) -> None:
        annotation = {f"modelops.dev/action.{action}": utc_now()}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME, {"metadata": {"annotations": annotation}},
                                                   _content_type="application/merge-patch+json")

    def body(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)

    def status(self) -> dict[str, Any]:
        return self.body().get("status") or {}

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT) -> dict[str, Any]:
        bootstrap.wait_for(what, lambda: predicate(self.status()), timeout=timeout, interval=0.2)
        return self.status()

    def patch_status(self, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, NAME, {"status": patch},
                                                          _content_type="application/merge-patch+json")

    def deployment(self, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def route(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", self.namespace, "httproutes", NAME)

    def route_weights(self) -> dict[str, int]:
        return {ref["name"]: ref["weight"] for ref in self.route()["spec"]["rules"][0]["backendRefs"]}

    def events(self) -> list[str]:
        return [event.reason for event in self.core.list_namespaced_event(self.namespace).items
                if event.involved_object.kind == "ModelDeployment"]


def _settled_now() -> str:
    """A time after every write of the passes so far (the audit check compares whole seconds)."""
    time.sleep(1.1)
    return utc_now()


def _condition(status: dict[str, Any], type_: str) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == type_), None)


def _reason(status: dict[str, Any], type_: str) -> str | None:
    return next((c["reason"] for c in status.get("conditions") or [] if c["type"] == type_), None)


def _at_step(step: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: (s.get("rollout") or {}).get("step") == step


def _still_canary(status: dict[str, Any]) -> None:
    assert status["stable"]["version"] == "1.0.0"
    assert status["rollout"]["revision"] == "2.0.0"
    assert "Promoted" not in [h["outcome"] for h in status["history"] if h["version"] == "2.0.0"]


@pytest.fixture
def fault(operator: Operator, admin_api: client.ApiClient, namespace: str) -> Iterator[Fault]:
    yield Fault(admin_api, namespace)


def test_the_stable_deleted_unlabelled_edited_and_scaled_to_zero_mid_canary_is_restored_and_never_replaced(fault: Fault) -> None:
    fault.create([{"setWeight": 20}, {"pause": {}}])
    fault.release("2.0.0")
    fault.wait("2.0.0 at the manual gate", _at_step(1))

    old_uid = fault.deployment(STABLE).metadata.uid  # type: ignore[union-attr]
    fault.apps.delete_namespaced_deployment(STABLE, fault.namespace)
    bootstrap.wait_for("the stable Deployment to be recreated",
                       lambda: (found := fault.deployment(STABLE)) is not None and found.metadata.uid != old_uid, timeout=TIMEOUT)
    status = fault.wait("stable Ready again", lambda s: _condition(s, "Ready") == "True")
    _still_canary(status)

    fault.apps.patch_namespaced_deployment(STABLE, fault.namespace, [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}])
    bootstrap.wait_for("the managed-by label to be back",
                       lambda: (fault.deployment(STABLE).metadata.labels or {}).get("app.kubernetes.io/managed-by") == "modelops",  # type: ignore[union-attr]
                       timeout=RESYNC_SECONDS * 2 + 15)
    _still_canary(fault.status())

    fault.apps.patch_namespaced_deployment(STABLE, fault.namespace, {"spec": {"replicas": 0, "template": {"spec": {"containers": [
        {"name": "model-server", "image": "evil.example/x:1"}]}}}})

    def reverted() -> bool:
        found = fault.deployment(STABLE)
        return found is not None and found.spec.replicas == 2 and found.spec.template.spec.containers[0].image == "ghcr.io/modelops/model-server:0.1.0"

    bootstrap.wait_for("the stable's image and replicas to be reverted", reverted, timeout=TIMEOUT)
    _still_canary(fault.status())

    fault.act("abort")
    status = fault.wait("the abort", lambda s: s.get("blockedRevision") is not None)
    assert status["blockedRevision"]["version"] == "2.0.0" and status["stable"]["version"] == "1.0.0"
    fault.apps.patch_namespaced_deployment_scale(STABLE, fault.namespace, {"spec": {"replicas": 0}})
    bootstrap.wait_for("the stable scaled back to 2", lambda: fault.deployment(STABLE).spec.replicas == 2, timeout=TIMEOUT)  # type: ignore[union-attr]
    status = fault.wait("stable Ready with 2 replicas", lambda s: _condition(s, "Ready") == "True" and s["stable"]["readyReplicas"] >= 2)
    assert status["stable"]["replicas"] == 2  # judged against the wanted count, not against what was observed
    assert fault.events().count("Released") == 1  # only the first release


def _aborted_canary(fault: Fault) -> None:
    """1.0.0 stable, and 2.0.0 rolled out to a manual gate, then aborted: the spec names a blocked version."""
    fault.create([{"setWeight": 20}, {"pause": {}}])
    fault.release("2.0.0")
    fault.wait("2.0.0 at the manual gate", _at_step(1))
    fault.act("abort")
    fault.wait("the abort", lambda s: (s.get("blockedRevision") or {}).get("version") == "2.0.0")


def test_a_status_that_lost_its_stable_version_writes_no_child_and_never_releases_the_blocked_revision(
    fault: Fault, devcluster: ClusterState, operator: Operator
) -> None:
    _aborted_canary(fault)
    stable = fault.status()["stable"]

    since = _settled_now()
    fault.patch_status({"stable": None})
    status = fault.wait("StatusUnreadable", lambda s: _reason(s, "Degraded") == "StatusUnreadable")
    assert "status.stable is missing" in status["message"] and "1.0.0" in status["message"]
    assert _condition(status, "Ready") == "Unknown"
    time.sleep(RESYNC_SECONDS * 2 + 1)
    writes = audit_writes(devcluster, user=operator.user, namespace=fault.namespace, since=since)
    assert {(w["objectRef"]["resource"], w["objectRef"].get("subresource")) for w in writes} <= {("modeldeployments", "status"), ("events", None)}
    assert fault.deployment(STABLE) is not None and fault.deployment(STABLE).spec.replicas == 2  # type: ignore[union-attr]
    assert fault.events().count("StatusUnreadable") == 1

    fault.patch_status({"stable": stable})  # a human restores it
    status = fault.wait("recovered", lambda s: _reason(s, "Degraded") == "RolledBack" and _condition(s, "Ready") == "True")
    assert status["stable"]["version"] == "1.0.0" and status["blockedRevision"]["version"] == "2.0.0"


def _loosened_metrics_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment CRD as an older modelops installed it: candidate metrics of any type."""
    loosened = copy.deepcopy(crd)
    loosened.pop("status", None)
    status = loosened["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    metrics = status["properties"]["retraining"]["properties"]["lastRun"]["properties"]["candidate"]["properties"]["metrics"]
    metrics.pop("additionalProperties")
    metrics["x-kubernetes-preserve-unknown-fields"] = True
    return loosened


def test_an_unreadable_status_field_holds_without_writing_children_and_keeps_the_rest(
    fault: Fault, devcluster: ClusterState, operator: Operator, admin_api: client.ApiClient, kubectl: Kubectl
) -> None:
    _aborted_canary(fault)

    extensions = client.ApiextensionsV1Api(admin_api)
    crd = json.loads(extensions.read_custom_resource_definition(MODELDEPLOYMENTS_CRD, _preload_content=False).data)
    refused = {"retraining": {"runs": 1, "lastRun": {"job": "x", "trigger": "t", "startedAt": utc_now()[:19] + "Z",
                                                     "candidate": {"version": "1.1.0", "uri": "s3://m/1.1.0/", "metrics": {"auc": "high"}}}}}
    with pytest.raises(ApiException) as refusal:
        fault.patch_status(refused)  # today's CRD refuses it at the door
    assert refusal.value.status == 422
    since = _settled_now()
    extensions.replace_custom_resource_definition(MODELDEPLOYMENTS_CRD, _loosened_metrics_schema(crd))
    try:
        bootstrap.wait_for("the loose schema to take effect", lambda: _accepts(fault, refused), timeout=30)
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelops-dev", "-k", str(CRDS))
    status = fault.wait("StatusUnreadable", lambda s: _reason(s, "Degraded") == "StatusUnreadable")
    assert "status.retraining.lastRun.candidate.metrics.auc" in status["message"]
    assert status["stable"]["version"] == "1.0.0" and status["blockedRevision"]["version"] == "2.0.0"  # the rest is kept
    time.sleep(RESYNC_SECONDS * 2 + 1)
    writes = audit_writes(devcluster, user=operator.user, namespace=fault.namespace, since=since)
    assert {(w["objectRef"]["resource"], w["objectRef"].get("subresource")) for w in writes} <= {("modeldeployments", "status"), ("events", None)}
    assert fault.deployment(STABLE) is not None
    assert fault.status()["retraining"]["lastRun"]["candidate"]["metrics"] == {"auc": "high"}

    fault.patch_status({"retraining": None})  # a human removes the bad field
    fault.wait("recovered", lambda s: _reason(s, "Degraded") == "RolledBack" and _condition(s, "Ready") == "True")


def _succeeds(call: Callable[[], object], unless: int) -> bool:
    """Whether ``call`` succeeds; False when the apiserver answers ``unless``, any other error raised."""
    try:
        call()
    except ApiException as error:
        if error.status == unless:
            return False
        raise
    return True


def _accepts(fault: Fault, patch: dict[str, Any]) -> bool:
    return _succeeds(lambda: fault.patch_status(patch), unless=422)


def test_a_route_write_refused_by_admission_holds_the_step_and_status_keeps_the_applied_weight(
    fault: Fault, kubectl: Kubectl
) -> None:
    fault.create([{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {}}], router=GATEWAY)
    fault.release("2.0.0")
    fault.wait("2.0.0 at 20 %", _at_step(1))
    assert fault.route_weights() == {STABLE: 80, CANARY: 20}
    # Events are posted after the status write that shows the step: wait for the first StepCompleted.
    bootstrap.wait_for("the first StepCompleted event", lambda: fault.events().count("StepCompleted") == 1, timeout=20)
    steps_completed = 1
    policy = f"freeze-routes-{fault.namespace}"
    kubectl("apply", "-f", "-", input=_freeze_routes(policy, fault.namespace))
    try:
        # The apiserver enforces a new policy a moment after it is created: wait until it refuses a
        # (dry-run) route change, well before the 30 s pause ends.
        bootstrap.wait_for("the policy to be enforced", lambda: not _route_change_allowed(fault), timeout=20)
        assert fault.status()["rollout"]["step"] == 1
        status = fault.wait("TrafficSplitUnavailable", lambda s: _reason(s, "Degraded") == "TrafficSplitUnavailable", timeout=90)
        assert status["rollout"]["step"] == 1 and status["rollout"]["weight"] == 20 and status["canary"]["weight"] == 20
        assert "frozen by policy" in status["message"]
        assert _reason(status, "TrafficSplit") == "TrafficSplitUnavailable"
        assert fault.route_weights() == {STABLE: 80, CANARY: 20}
        assert fault.events().count("StepCompleted") == steps_completed  # the pause ended, yet no step completed
    finally:
        kubectl("delete", "validatingadmissionpolicybinding", policy, "--ignore-not-found")
        kubectl("delete", "validatingadmissionpolicy", policy, "--ignore-not-found")
    status = fault.wait("the step to go through", lambda s: (s.get("canary") or {}).get("weight") == 50, timeout=90)
    assert fault.route_weights() == {STABLE: 50, CANARY: 50}
    assert _reason(status, "Degraded") == "AsExpected"


def _route_change_allowed(fault: Fault) -> bool:
    patch = {"metadata": {"annotations": {"example.com/probe": utc_now()}}}
    try:
        fault.custom.patch_namespaced_custom_object("gateway.networking.k8s.io", "v1", fault.namespace, "httproutes", NAME, patch,
                                                    dry_run="All", _content_type="application/merge-patch+json")
    except ApiException as error:
        if error.status in (403, 422):
            return False
        raise
    return True


def _freeze_routes(name: str, namespace: str) -> str:
    return f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["gateway.networking.k8s.io"]
        apiVersions: ["v1"]
        operations: ["UPDATE"]
        resources: ["httproutes"]
  validations:
    - expression: "object.metadata.namespace != '{namespace}'"
      message: "route changes in {namespace} are frozen by policy"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
"""


def test_a_route_a_gateway_refused_holds_the_canary(fault: Fault) -> None:
    fault.create([{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}], router=GATEWAY)
    fault.release("2.0.0")
    status = fault.wait("2.0.0 at 20 %", _at_step(1))
    assert _reason(status, "TrafficSplit") == "Unconfirmed"  # no Gateway controller runs here
    route = fault.route()
    refusal = {"status": {"parents": [{"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"},
                                       "controllerName": "example.com/gateway-controller",
                                       "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                                                       "message": "no listener allows routes from this namespace",
                                                       "observedGeneration": route["metadata"]["generation"],
                                                       "lastTransitionTime": utc_now()[:19] + "Z"}]}]}}
    fault.custom.patch_namespaced_custom_object_status("gateway.networking.k8s.io", "v1", fault.namespace, "httproutes", NAME,
                                                       refusal, _content_type="application/merge-patch+json")
    status = fault.wait("the hold", lambda s: _reason(s, "TrafficSplit") == "TrafficSplitUnavailable", timeout=30)
    assert "NotAllowedByListeners" in status["message"]
    time.sleep(12)  # past the 10 s pause
    status = fault.status()
    assert status["rollout"]["step"] == 1 and status["canary"]["weight"] == 20
    assert fault.route_weights() == {STABLE: 80, CANARY: 20}


def test_without_the_httproute_crd_the_canary_holds_and_resumes_when_it_is_back(
    fault: Fault, admin_api: client.ApiClient, kubectl: Kubectl
) -> None:
    fault.create([{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}], router=GATEWAY)
    fault.release("2.0.0")
    fault.wait("2.0.0 at 20 %", _at_step(1))
    extensions = client.ApiextensionsV1Api(admin_api)
    extensions.delete_custom_resource_definition(ROUTES_CRD)
    try:
        bootstrap.wait_for("the CRD to be gone", lambda: not _exists(extensions, ROUTES_CRD), timeout=60)
        status = fault.wait("TrafficSplitUnavailable", lambda s: _reason(s, "Degraded") == "TrafficSplitUnavailable", timeout=60)
        time.sleep(12)  # past the 10 s pause: without a route the step must not complete
        status = fault.status()
        assert status["rollout"]["step"] == 1 and status["canary"]["weight"] == 20
        assert "Promoted" not in [h["outcome"] for h in status["history"] if h["version"] == "2.0.0"]
    finally:
        binaries = CacheLayout(cache_root())
        bootstrap.install_crds(admin_api, binaries.gateway_api_crds)
        bootstrap.wait_for("the Gateway API CRDs", lambda: bootstrap.crds_established(admin_api, [ROUTES_CRD]), timeout=60)
    status = fault.wait("the step to go through", lambda s: (s.get("canary") or {}).get("weight") == 50, timeout=90)
    assert fault.route_weights() == {STABLE: 50, CANARY: 50}


def _exists(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    return _succeeds(lambda: extensions.read_custom_resource_definition(name), unless=404)


def test_a_canary_at_a_manual_gate_writes_nothing(fault: Fault, devcluster: ClusterState, operator: Operator) -> None:
    fault.create([{"setWeight": 20}, {"pause": {}}])
    fault.release("2.0.0")
    fault.wait("2.0.0 at the manual gate", lambda s: _at_step(1)(s) and _condition(s, "Ready") == "True"
               and (s.get("rollout") or {}).get("heldSince") is not None)

    class _Models:  # what assert_no_writes_over_periodic_passes reads
        namespace = fault.namespace
        apps, core = fault.apps, fault.core

        @staticmethod
        def get() -> dict[str, Any]:
            return fault.body()

    assert_no_writes_over_periodic_passes(_Models, devcluster, operator)  # type: ignore[arg-type]
