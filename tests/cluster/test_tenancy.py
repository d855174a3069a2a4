"""A ModelDeployment grants no more than its author has (docs/operating.md, "Threat model").

The tenant here is a ServiceAccount whose only rights are on ModelDeployments in its namespace
(it cannot create pods or Jobs, nor read Secrets). Everything it tries goes through the
apiserver with the admission policy of ``manifests/base/admission-policy.yaml`` installed, and
through the operator running under its own RBAC.
"""

import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelops.devcluster import accounts, bootstrap
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.localoperator import MANIFESTS, Kubectl, LocalOperator
from tests.cluster.conftest import RESYNC_SECONDS, Operator, audit_writes, utc_now
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

NAME = "tenant-model"
TRAINER = {"name": "train", "image": "ghcr.io/modelops/trainer:1"}
SECRET_ENV = [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def precise_now() -> str:
    """Now, in the audit log's format with microseconds (``utc_now`` has whole seconds: writes earlier
    in the same second would count as later)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def create_once_admitted(create: Callable[[], Any]) -> None:
    """Creates, retrying while admission still refuses: the policy reads namespaces from the apiserver's
    cache, which sees a new namespace label a moment after it is written."""
    def created() -> bool:
        try:
            create()
        except client.ApiException as error:
            if error.status == 403 and "modelops-tenant-limits" in str(error.body):
                return False
            raise
        return True

    bootstrap.wait_for("admission to see the namespace's opt-in", created, timeout=30)


@dataclass
class Tenant:
    namespace: str
    api: client.ApiClient
    kubeconfig: Path

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create(self, spec: dict[str, Any], name: str = NAME) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=10))

    def create_once_admitted(self, spec: dict[str, Any]) -> None:
        create_once_admitted(lambda: self.create(spec))

    def refusal(self, spec: dict[str, Any]) -> client.ApiException:
        with pytest.raises(client.ApiException) as refused:
            self.create(spec)
        return refused.value

    def retrain(self, name: str = NAME) -> None:
        patch = {"metadata": {"annotations": {"modelops.dev/action.retrain": utc_now()}}}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=10)

    def status(self, name: str = NAME) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=10)
        return dict(found.get("status") or {})


def _tenant_rights(namespace: str, account: str) -> list[dict[str, Any]]:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": account, "namespace": namespace},
            "rules": [{"apiGroups": [GROUP], "resources": ["modeldeployments"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": account, "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]}
    return [role, binding]


def _service_account(admin_api: client.ApiClient, namespace: str, name: str) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)), _request_timeout=10)


@pytest.fixture
def tenant(devcluster: ClusterState, admin_api: client.ApiClient, kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[Tenant]:
    _service_account(admin_api, namespace, "tenant")
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_tenant_rights(namespace, "tenant")))
    kubeconfig = accounts.service_account_kubeconfig(admin_api, namespace=namespace, service_account="tenant",
                                                     server=devcluster.server, ca_cert=devcluster.ca_cert, path=tmp_path / "tenant.kubeconfig")
    tenant_kubectl = Kubectl(kubectl.path, kubeconfig)
    for forbidden in (["create", "pods"], ["create", "jobs"], ["get", "secrets"]):
        assert tenant_kubectl("auth", "can-i", *forbidden, "-n", namespace, check=False).stdout.strip() == "no"
    with bootstrap.api_client(kubeconfig) as api:
        yield Tenant(namespace, api, kubeconfig)


def model_spec(**extra: Any) -> dict[str, Any]:
    return {"model": {"version": "1.0.0", "uri": "s3://models/tenant/1.0.0/"},
            "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"}} | extra


def retraining(pod: dict[str, Any]) -> dict[str, Any]:
    return {"jobTemplate": {"template": {"spec": {"containers": [TRAINER]} | pod}}, "cooldown": "1h"}


def _label(admin_api: client.ApiClient, namespace: str, labels: dict[str, str | None]) -> None:
    client.CoreV1Api(admin_api).patch_namespace(namespace, {"metadata": {"labels": labels}}, _request_timeout=10)


ESCALATIONS = [
    ("privileged", model_spec(retraining=retraining({"containers": [TRAINER | {"securityContext": {"privileged": True}}]})),
     "spec.retraining.jobTemplate", "privileged containers are not allowed", "restricted"),
    ("hostPath", model_spec(retraining=retraining({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]})),
     "spec.retraining.jobTemplate.template.spec.volumes", "hostPath volumes are not allowed", "restricted"),
    ("hostNetwork", model_spec(retraining=retraining({"hostNetwork": True, "hostPID": True})),
     "spec.retraining.jobTemplate.template.spec", "hostNetwork, hostPID and hostIPC are not allowed", "restricted"),
    ("foreign serviceAccountName", model_spec(retraining=retraining({"serviceAccountName": "modelops"})),
     "spec.retraining.jobTemplate.template.spec.serviceAccountName", "modelops is not allowed in namespace", "service-account"),
    ("secretKeyRef in runtime.env", model_spec(runtime={"image": "ghcr.io/modelops/model-server:0.1.0", "env": SECRET_ENV}),
     "spec.runtime.env[].valueFrom.secretKeyRef", "Secret references need the label modelops.dev/allow-secret-refs=true",
     "secret-refs"),
    ("secretKeyRef in the jobTemplate", model_spec(retraining=retraining({"containers": [TRAINER | {"env": SECRET_ENV}]})),
     "spec.retraining.jobTemplate", "need the label modelops.dev/allow-secret-refs=true", "secret-refs"),
]


@pytest.mark.parametrize(("case", "spec", "field", "words", "rule"), ESCALATIONS, ids=[e[0] for e in ESCALATIONS])
def test_each_escalation_is_refused_with_a_clear_message_and_nothing_is_created(
    operator: Operator, admin_api: client.ApiClient, tenant: Tenant, case: str, spec: dict[str, Any], field: str, words: str, rule: str
) -> None:
    refused = tenant.refusal(spec)
    assert refused.status == 403
    message = json.loads(refused.body)["message"]
    assert "ValidatingAdmissionPolicy 'modelops-tenant-limits'" in message
    assert f"{field}: " in message and words in message and f"(rule {rule})" in message, message
    time.sleep(RESYNC_SECONDS)  # a pass of the operator, had anything been stored
    assert tenant.custom.list_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL)["items"] == []
    assert client.AppsV1Api(admin_api).list_namespaced_deployment(tenant.namespace).items == []
    assert client.BatchV1Api(admin_api).list_namespaced_job(tenant.namespace).items == []
    assert client.CoreV1Api(admin_api).list_namespaced_pod(tenant.namespace).items == []


def test_with_the_opt_in_label_a_secret_reference_is_accepted_and_without_it_the_operator_stops_writing(
    devcluster: ClusterState, operator: Operator, admin_api: client.ApiClient, tenant: Tenant
) -> None:
    _label(admin_api, tenant.namespace, {"modelops.dev/allow-secret-refs": "true"})
    tenant.create_once_admitted(model_spec(runtime={"image": "ghcr.io/modelops/model-server:0.1.0", "env": SECRET_ENV}))
    apps = client.AppsV1Api(admin_api)
    name = f"{NAME}-1-0-0"

    def deployment_env() -> list[Any]:
        found = apps.list_namespaced_deployment(tenant.namespace, field_selector=f"metadata.name={name}").items
        return found[0].spec.template.spec.containers[0].env if found else []

    bootstrap.wait_for("the Deployment reading the Secret", lambda: any(e.name == "DB_PASSWORD" for e in deployment_env()), timeout=30)
    # The admin withdraws the opt-in: the stored spec is no longer allowed. The operator (defence in
    # depth) writes nothing more for that child and says why, naming the rule.
    _label(admin_api, tenant.namespace, {"modelops.dev/allow-secret-refs": None})

    def degraded() -> dict[str, Any]:
        return next((c for c in tenant.status().get("conditions") or [] if c["type"] == "Degraded"), {})

    bootstrap.wait_for("Degraded PolicyRefused", lambda: degraded().get("reason") == "PolicyRefused", timeout=30)
    assert degraded()["message"].startswith("spec.runtime.env[0].valueFrom.secretKeyRef: Secret references need the label")
    assert "(rule secret-refs)" in degraded()["message"]
    # The spec can no longer be changed while it breaks the rules (admission refuses the update too)...
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(admin_api).patch_namespaced_custom_object(
            GROUP, VERSION, tenant.namespace, PLURAL, NAME, {"spec": {"runtime": {"args": ["--workers=2"]}}})
    assert refused.value.status == 403 and "(rule secret-refs)" in str(refused.value.body)
    tenant.retrain()  # an action leaves the spec as it is: still accepted (so is `modelops abort`)
    # ...and the operator no longer writes the child: deleted, it is not recreated.
    since = precise_now()
    apps.delete_namespaced_deployment(name, tenant.namespace)
    time.sleep(3 * RESYNC_SECONDS)  # several passes of the operator
    assert apps.list_namespaced_deployment(tenant.namespace, field_selector=f"metadata.name={name}").items == []
    writes = audit_writes(devcluster, user=operator.user, namespace=tenant.namespace, since=since)
    assert not [(w["verb"], w["objectRef"], w["requestReceivedTimestamp"]) for w in writes
                if w["objectRef"]["resource"] == "deployments" and w["verb"] in WRITE_VERBS]


def _job_pods(admin_api: client.ApiClient, namespace: str, job: str) -> list[Any]:
    return client.CoreV1Api(admin_api).list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def test_retraining_pods_are_admitted_in_a_namespace_enforcing_restricted(
    operator: Operator, admin_api: client.ApiClient, tenant: Tenant
) -> None:
    _label(admin_api, tenant.namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    tenant.create(model_spec(retraining=retraining({})))
    bootstrap.wait_for("a first status", lambda: bool(tenant.status().get("phase")), timeout=30)
    tenant.retrain()
    job = f"{NAME}-retrain-1"
    bootstrap.wait_for("the retraining Job's pod", lambda: bool(_job_pods(admin_api, tenant.namespace, job)), timeout=60)
    [pod] = _job_pods(admin_api, tenant.namespace, job)
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.containers[0].security_context.allow_privilege_escalation is False
    events = client.CoreV1Api(admin_api).list_namespaced_event(tenant.namespace, field_selector=f"involvedObject.name={job}").items
    assert "FailedCreate" not in {e.reason for e in events}
    bootstrap.wait_for("kwok to complete the pod", lambda: bool(
        client.BatchV1Api(admin_api).read_namespaced_job(job, tenant.namespace).status.succeeded), timeout=60)


def test_a_job_whose_pods_cannot_be_created_fails_its_run_with_the_reason_before_its_deadline(
    operator: Operator, admin_api: client.ApiClient, tenant: Tenant
) -> None:
    quota = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="no-pods"), spec=client.V1ResourceQuotaSpec(hard={"pods": "0"}))
    client.CoreV1Api(admin_api).create_namespaced_resource_quota(tenant.namespace, quota)
    tenant.create(model_spec(retraining=retraining({})))
    bootstrap.wait_for("a first status", lambda: bool(tenant.status().get("phase")), timeout=30)
    started = time.monotonic()
    tenant.retrain()

    def last_run() -> dict[str, Any]:
        return dict((tenant.status().get("retraining") or {}).get("lastRun") or {})

    bootstrap.wait_for("the run to fail", lambda: last_run().get("outcome") == "Failed", timeout=90)
    assert time.monotonic() - started < 3600  # the Job's activeDeadlineSeconds: it did not time out
    assert last_run()["reason"].startswith("FailedCreate: ") and "exceeded quota" in last_run()["reason"]


# --- the namespaced install -------------------------------------------------------------------------


def _overlay(kubectl: Kubectl, namespace: str, account: str) -> list[dict[str, Any]]:
    """The RBAC of manifests/namespaced/ for ``namespace``, bound to ``account`` in it instead of
    modelops-system/modelops (which the session's cluster-wide operator also uses)."""
    documents = [d for d in yaml.safe_load_all(kubectl("kustomize", str(MANIFESTS / "namespaced")).stdout) if d]
    rbac = [d for d in documents if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    assert {d["kind"] for d in rbac} == {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    for document in rbac:
        document["metadata"]["name"] = f"{document['metadata']['name']}-{namespace}"
        if document["kind"] in ("Role", "RoleBinding"):
            document["metadata"]["namespace"] = namespace
        if "roleRef" in document:
            document["roleRef"]["name"] = f"{document['roleRef']['name']}-{namespace}"
            document["subjects"] = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    return rbac


def _can_i(kubectl: Kubectl, namespace: str) -> list[tuple[str, set[str]]]:
    """``kubectl auth can-i --list -n namespace``: (resource, verbs) rows."""
    rows = []
    for line in kubectl("auth", "can-i", "--list", "-n", namespace, "--no-headers").stdout.splitlines():
        resource = line.partition("[")[0].strip()  # empty for non-resource URLs
        verbs = line[line.rindex("[") + 1:line.rindex("]")]
        rows.append((resource, set(verbs.split())))
    return rows


@pytest.fixture
def namespaced_operator(
    devcluster: ClusterState, admin_api: client.ApiClient, kubectl: Kubectl, operator: Operator, namespace: str, tmp_path: Path
) -> Iterator[tuple[LocalOperator, Kubectl]]:
    """An operator watching only ``namespace`` with the overlay's rights; the session's cluster-wide
    operator is stopped meanwhile, so every write in the namespace is this one's."""
    account = "namespaced-operator"
    _service_account(admin_api, namespace, account)
    rbac = _overlay(kubectl, namespace, account)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    kubeconfig = accounts.service_account_kubeconfig(admin_api, namespace=namespace, service_account=account,
                                                     server=devcluster.server, ca_cert=devcluster.ca_cert, path=tmp_path / "op.kubeconfig")
    operator.stop()
    handle = LocalOperator(kubeconfig=kubeconfig, log=tmp_path / "namespaced.log", prometheus_url=operator.prometheus_url,
                           resync_seconds=RESYNC_SECONDS, namespaces=(namespace,), user=f"system:serviceaccount:{namespace}:{account}")
    try:
        handle.start()
        yield handle, Kubectl(kubectl.path, kubeconfig)
    finally:
        handle.stop()
        for document in rbac:
            if document["kind"].startswith("Cluster"):
                kubectl("delete", document["kind"].lower(), document["metadata"]["name"], "--ignore-not-found")
        operator.start()
    assert not handle.logged_problems(), "the namespaced operator logged errors:\n" + handle.log_text()[-5000:]
    assert "Not enough permissions" not in handle.log_text()


def test_the_namespaced_install_reconciles_its_namespace_with_no_cluster_wide_write_rights(
    devcluster: ClusterState, admin_api: client.ApiClient, namespace: str, namespaced_operator: tuple[LocalOperator, Kubectl]
) -> None:
    handle, as_operator = namespaced_operator
    since = utc_now()
    custom = client.CustomObjectsApi(admin_api)
    # A Secret reference with the opt-in: the operator must read its namespace's labels (a Role grants that).
    _label(admin_api, namespace, {"modelops.dev/allow-secret-refs": "true"})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": namespace},
            "spec": model_spec(runtime={"image": "ghcr.io/modelops/model-server:0.1.0", "env": SECRET_ENV})}
    create_once_admitted(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))

    def status() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME).get("status") or {})

    bootstrap.wait_for("Healthy", lambda: status().get("phase") == "Healthy", timeout=60)
    writes = {(e["verb"], e["objectRef"]["resource"]) for e in audit_writes(devcluster, user=handle.user, namespace=namespace, since=since)
              if e["verb"] in WRITE_VERBS}
    assert ("create", "deployments") in writes or ("patch", "deployments") in writes
    # Elsewhere (another namespace, and cluster-scoped objects): reading templates, nothing written.
    elsewhere = f"t-{uuid.uuid4().hex[:10]}"  # need not exist: RBAC answers for any name
    rights = _can_i(as_operator, elsewhere)
    writes_elsewhere = [(resource, verbs & WRITE_VERBS) for resource, verbs in rights
                        if verbs & WRITE_VERBS and not resource.startswith("self")]
    assert writes_elsewhere == [], rights
    assert ("clustermetrictemplates.modelops.dev", {"get"}) in rights
    at_home = dict(_can_i(as_operator, namespace))
    assert {"create", "patch", "delete"} <= at_home["deployments.apps"]
