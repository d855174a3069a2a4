"""Tenant limits (planning/policy.py): what a ModelDeployment may make the operator create."""

import copy
import json
from typing import Any

import pytest

from modelops.api.v1alpha1 import ModelDeploymentStatus
from modelops.planning import reconcile as planning
from modelops.planning.monitoring import decide_retraining, job_manifest
from modelops.planning.policy import (
    RESTRICTED,
    SECRET_REFS,
    SERVICE_ACCOUNT,
    NamespacePolicy,
    manifest_refusals,
    needs_namespace,
    pod_refusals,
    spec_refusals,
    with_restricted_defaults,
)
from tests.unit.planning.helpers import NOW, OWNER, World, spec

STRICTEST = NamespacePolicy("ml")
OPTED_IN = NamespacePolicy("ml", secret_refs_allowed=True, service_accounts=frozenset({"default", "trainer"}))
CONTAINER = {"name": "train", "image": "trainer:1"}


def pod(**fields: Any) -> dict[str, Any]:
    return {"containers": [dict(CONTAINER)], **fields}


def container(**fields: Any) -> dict[str, Any]:
    return pod(containers=[{**CONTAINER, **fields}])


def secured(**security: Any) -> dict[str, Any]:
    return container(securityContext=security)


SECRET_ENV = [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]

ESCALATIONS = [
    ("host network", pod(hostNetwork=True), RESTRICTED, "spec.hostNetwork"),
    ("host PID", pod(hostPID=True), RESTRICTED, "spec.hostPID"),
    ("host IPC", pod(hostIPC=True), RESTRICTED, "spec.hostIPC"),
    ("hostPath", pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), RESTRICTED, "spec.volumes[0].hostPath"),
    ("a volume type outside restricted", pod(volumes=[{"name": "n", "nfs": {"server": "x", "path": "/"}}]), RESTRICTED,
     "spec.volumes[0]"),
    ("privileged", secured(privileged=True), RESTRICTED, "spec.containers[0].securityContext.privileged"),
    ("privileged init container", pod(initContainers=[{**CONTAINER, "securityContext": {"privileged": True}}]), RESTRICTED,
     "spec.initContainers[0].securityContext.privileged"),
    ("privilege escalation", secured(allowPrivilegeEscalation=True), RESTRICTED,
     "spec.containers[0].securityContext.allowPrivilegeEscalation"),
    ("added capability", secured(capabilities={"add": ["SYS_ADMIN"]}), RESTRICTED,
     "spec.containers[0].securityContext.capabilities.add"),
    ("root by runAsNonRoot false", pod(securityContext={"runAsNonRoot": False}), RESTRICTED, "spec.securityContext.runAsNonRoot"),
    ("root by runAsUser 0", secured(runAsUser=0), RESTRICTED, "spec.containers[0].securityContext.runAsUser"),
    ("seccomp unconfined", pod(securityContext={"seccompProfile": {"type": "Unconfined"}}), RESTRICTED,
     "spec.securityContext.seccompProfile.type"),
    ("apparmor unconfined", secured(appArmorProfile={"type": "Unconfined"}), RESTRICTED,
     "spec.containers[0].securityContext.appArmorProfile.type"),
    ("selinux user", secured(seLinuxOptions={"user": "system_u"}), RESTRICTED, "spec.containers[0].securityContext.seLinuxOptions"),
    ("windows host process", secured(windowsOptions={"hostProcess": True}), RESTRICTED,
     "spec.containers[0].securityContext.windowsOptions.hostProcess"),
    ("unmasked proc", secured(procMount="Unmasked"), RESTRICTED, "spec.containers[0].securityContext.procMount"),
    ("sysctls", pod(securityContext={"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}), RESTRICTED,
     "spec.securityContext.sysctls"),
    ("host port", container(ports=[{"containerPort": 80, "hostPort": 80}]), RESTRICTED, "spec.containers[0].ports[0].hostPort"),
    ("foreign service account", pod(serviceAccountName="admin"), SERVICE_ACCOUNT, "spec.serviceAccountName"),
    ("deprecated serviceAccount field", pod(serviceAccount="admin"), SERVICE_ACCOUNT, "spec.serviceAccount"),
    ("env secretKeyRef", container(env=SECRET_ENV), SECRET_REFS, "spec.containers[0].env[0].valueFrom.secretKeyRef"),
    ("envFrom secretRef", container(envFrom=[{"secretRef": {"name": "db"}}]), SECRET_REFS, "spec.containers[0].envFrom[0].secretRef"),
    ("secret volume", pod(volumes=[{"name": "s", "secret": {"secretName": "db"}}]), SECRET_REFS, "spec.volumes[0].secret"),
    ("projected secret", pod(volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}]), SECRET_REFS,
     "spec.volumes[0].projected.sources[0].secret"),
    ("csi secret", pod(volumes=[{"name": "c", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "db"}}}]), SECRET_REFS,
     "spec.volumes[0].csi.nodePublishSecretRef"),
    ("image pull secrets", pod(imagePullSecrets=[{"name": "registry"}]), SECRET_REFS, "spec.imagePullSecrets"),
]


@pytest.mark.parametrize(("case", "pod_spec", "rule", "field"), ESCALATIONS, ids=[case[0] for case in ESCALATIONS])
def test_each_escalation_is_refused_naming_its_field_and_rule(case: str, pod_spec: dict[str, Any], rule: str, field: str) -> None:
    refusals = pod_refusals(pod_spec, STRICTEST, "spec")
    assert [(r.rule, r.field) for r in refusals] == [(rule, field)]
    assert f"(rule {rule})" in str(refusals[0]) and str(refusals[0]).startswith(field)


ALLOWED = [
    ("the documented template", pod()),
    ("the restricted defaults themselves", with_restricted_defaults(pod())),
    ("stricter settings", secured(runAsNonRoot=True, runAsUser=1000, capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                                  seccompProfile={"type": "Localhost", "localhostProfile": "p.json"}, readOnlyRootFilesystem=True)),
    ("restricted volume types", pod(volumes=[{"name": "e", "emptyDir": {}}, {"name": "c", "configMap": {"name": "x"}},
                                             {"name": "p", "persistentVolumeClaim": {"claimName": "data"}}])),
    ("the default account", pod(serviceAccountName="default")),
    ("false host namespaces", pod(hostNetwork=False, hostPID=False)),
    ("container_t SELinux", secured(seLinuxOptions={"type": "container_t", "level": "s0:c1"})),
]


@pytest.mark.parametrize(("case", "pod_spec"), ALLOWED, ids=[case[0] for case in ALLOWED])
def test_restricted_pods_are_allowed(case: str, pod_spec: dict[str, Any]) -> None:
    assert pod_refusals(pod_spec, STRICTEST, "spec") == []


def test_the_admins_opt_ins_allow_secret_references_and_listed_accounts_only() -> None:
    opted = pod(serviceAccountName="trainer", volumes=[{"name": "s", "secret": {"secretName": "db"}}],
                containers=[{**CONTAINER, "env": SECRET_ENV}])
    assert pod_refusals(opted, OPTED_IN, "spec") == []
    assert [r.rule for r in pod_refusals(opted, STRICTEST, "spec")] == [SERVICE_ACCOUNT, SECRET_REFS, SECRET_REFS]
    assert [r.field for r in pod_refusals(pod(serviceAccountName="admin"), OPTED_IN, "spec")] == ["spec.serviceAccountName"]


def test_the_namespace_metadata_is_read_strictly() -> None:
    def read(labels: Any = None, annotations: Any = None) -> NamespacePolicy:
        return NamespacePolicy.from_namespace({"metadata": {"name": "ml", "labels": labels, "annotations": annotations}})

    assert read() == NamespacePolicy("ml")
    assert not read({"modelops.dev/allow-secret-refs": "True"}).secret_refs_allowed  # exactly "true"
    assert not read({"modelops.dev/allow-secret-refs": "yes"}).secret_refs_allowed
    huge = ",".join(f"sa{i}" for i in range(10_000))
    assert len(read(annotations={"modelops.dev/retraining-service-accounts": huge}).service_accounts) == 65  # bounded
    assert read(annotations={"modelops.dev/retraining-service-accounts": " , ,"}).service_accounts == {"default"}


def test_an_unreadable_namespace_refuses_what_depends_on_it_and_says_why() -> None:
    unknown = NamespacePolicy.unknown("ml", "namespaces \"ml\" is forbidden")
    [account, secret] = pod_refusals(pod(serviceAccountName="default", containers=[{**CONTAINER, "env": SECRET_ENV}]), unknown, "spec")
    assert (account.rule, secret.rule) == (SERVICE_ACCOUNT, SECRET_REFS)
    assert "cannot read namespace ml: namespaces \"ml\" is forbidden" in secret.message
    assert pod_refusals(pod(), unknown, "spec") == []  # nothing that needs the namespace: nothing refused


HOSTILE = [
    "a string", 42, None, [], ["x"], {"containers": "junk"}, {"containers": [None, 3, "x", []]},
    {"volumes": {"hostPath": {}}}, {"volumes": [None, {"hostPath": None}]}, {"securityContext": "root"},
    {"containers": [{"securityContext": {"capabilities": "ALL"}}]}, {"containers": [{"securityContext": {"capabilities": {"add": "SYS"}}}]},
    {"containers": [{"env": [{"valueFrom": "x"}, None]}]}, {"containers": [{"ports": [None, {"hostPort": "80"}]}]},
    {"imagePullSecrets": "x"}, {"serviceAccountName": ["a"]}, {"volumes": [{"projected": {"sources": "x"}}]},
]


@pytest.mark.parametrize("pod_spec", HOSTILE, ids=[json.dumps(h)[:40] for h in HOSTILE])
def test_hostile_shapes_give_refusals_or_nothing_never_an_exception(pod_spec: Any) -> None:
    for limits in (STRICTEST, OPTED_IN, NamespacePolicy.unknown("ml", "x")):
        refusals = pod_refusals(pod_spec, limits, "spec", annotations=pod_spec)
        assert all(r.rule in (RESTRICTED, SERVICE_ACCOUNT, SECRET_REFS) for r in refusals)
    if isinstance(pod_spec, dict):
        with_restricted_defaults(copy.deepcopy(pod_spec))


def test_refusals_are_bounded() -> None:
    many = pod(containers=[{**CONTAINER, "name": f"c{i}", "securityContext": {"privileged": True}} for i in range(5000)])
    assert len(pod_refusals(many, STRICTEST, "spec")) == 10


def test_restricted_defaults_fill_only_what_is_unset() -> None:
    filled = with_restricted_defaults(pod())
    assert filled["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert filled["containers"][0]["securityContext"] == {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False}
    kept = with_restricted_defaults(pod(securityContext={"runAsNonRoot": True, "runAsUser": 1000,
                                                         "seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}))
    assert kept["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "p"}
    assert kept["securityContext"]["runAsUser"] == 1000


def _retraining(pod_spec: dict[str, Any], **extra: Any):  # type: ignore[no-untyped-def]
    return spec(retraining={"jobTemplate": {"template": {"spec": pod_spec}}}, **extra)


def test_the_retraining_job_carries_the_restricted_security_context() -> None:
    manifest = job_manifest(OWNER, _retraining(pod()), "fraud-detector-retrain-1", "manual", ())
    pod_spec = manifest["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest_refusals(manifest, STRICTEST) == []


def test_a_refused_job_is_a_failed_run_with_its_rules_and_is_not_created() -> None:
    decision = decide_retraining(OWNER, _retraining(pod(hostPID=True)), None, trigger="manual", features=(), job=None, now=NOW)
    assert decision.create is None
    assert decision.status is not None and decision.status.last_run is not None
    run = decision.status.last_run
    assert run.outcome == "Failed" and run.finished_at == NOW
    assert run.reason.startswith("PolicyRefused: spec.retraining.jobTemplate.template.spec.hostPID")
    assert decision.status.cooldown_until is not None  # not retried at every pass
    assert [e.reason for e in decision.events] == ["RetrainingFailed"]


def test_the_spec_needs_its_namespace_only_when_it_asks_for_an_opt_in() -> None:
    assert not needs_namespace(spec())
    assert not needs_namespace(_retraining(pod(hostNetwork=True)))  # refused whatever the namespace says
    assert needs_namespace(_retraining(pod(serviceAccountName="trainer")))
    assert needs_namespace(spec(runtime={"image": "srv:1", "env": SECRET_ENV}))


def test_a_model_reading_a_secret_without_the_opt_in_gets_no_deployment_and_status_names_the_rule() -> None:
    world = World()
    hostile = spec(runtime={"image": "srv:1", "env": SECRET_ENV})
    plan = planning.plan(OWNER, hostile, ModelDeploymentStatus(), world.observed(), 1, NOW)
    kinds = [w.manifest["kind"] for w in plan.apply]
    assert "Deployment" not in kinds  # neither the pod template nor the replica count
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "PolicyRefused")
    assert "spec.runtime.env[0].valueFrom.secretKeyRef" in degraded.message and "(rule secret-refs)" in degraded.message
    assert plan.status.phase == "Degraded"
    allowed = planning.plan(OWNER, hostile, ModelDeploymentStatus(), world.observed(), 1, NOW, namespace_policy=OPTED_IN)
    assert "Deployment" in [w.manifest["kind"] for w in allowed.apply]
    assert not any(c.reason == "PolicyRefused" for c in allowed.status.conditions)
    assert spec_refusals(hostile, OPTED_IN) == []
