"""The install manifests: least-privilege RBAC and a restricted, single-replica operator."""

from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def test_rbac_has_no_wildcards_no_escalation_and_reads_one_secret_name_only() -> None:
    [role] = [d for d in _documents("rbac.yaml") if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        if "secrets" in rule["resources"]:
            # Only `get` of the notify Secret by name: resourceNames cannot restrict list or watch.
            assert rule == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["modelops-notify"], "verbs": ["get"]}


def test_the_operator_writes_its_own_resource_only_through_the_status_subresource() -> None:
    [role] = [d for d in _documents("rbac.yaml") if d["kind"] == "ClusterRole"]
    verbs = {(group, resource): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert verbs[("modelops.dev", "modeldeployments")] == {"get", "list", "watch"}
    assert verbs[("modelops.dev", "modeldeployments/status")] == {"get", "patch"}


def test_operator_deployment_is_one_replica_recreate_and_restricted() -> None:
    [deployment] = _documents("base/deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "limits" in container["resources"] and "requests" in container["resources"]


def _listed(folder: Path) -> set[str]:
    return set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])


def test_kustomization_lists_every_manifest() -> None:
    assert _listed(MANIFESTS) == {"base", "rbac.yaml"}
    present = {p.name for p in (MANIFESTS / "base").glob("*.yaml") if p.name != "kustomization.yaml"}
    assert present | {"../../crds"} == _listed(MANIFESTS / "base")


def test_the_admission_policy_is_bound_and_enforced_on_create_and_update() -> None:
    policy, binding = _documents("base/admission-policy.yaml")
    assert policy["kind"] == "ValidatingAdmissionPolicy" and binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["modeldeployments"] and set(rule["operations"]) == {"CREATE", "UPDATE"}
    for validation in policy["spec"]["validations"]:
        text = validation.get("message") or validation["messageExpression"]
        assert "spec." in text and "(rule " in text, text  # each refusal names the field and the rule


def _rules(documents: list[dict[str, Any]], kind: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for document in documents if document["kind"] == kind
        for rule in document["rules"] for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }


def test_the_namespaced_install_reads_only_templates_cluster_wide_and_keeps_the_namespaced_rules() -> None:
    namespaced = MANIFESTS / "namespaced"
    assert _rules(_documents("namespaced/cluster-read.yaml"), "ClusterRole") == {("modelops.dev", "clustermetrictemplates", "get")}
    role = _rules(_documents("namespaced/tenant/role.yaml"), "Role")
    cluster_wide = _rules(_documents("rbac.yaml"), "ClusterRole")
    # kopf's cluster-wide scanning (CRDs, listing namespaces) and the cluster-scoped templates are all that is left out.
    scanning = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")} | {
        ("", "namespaces", v) for v in ("list", "watch")}
    assert role == cluster_wide - scanning - {("modelops.dev", "clustermetrictemplates", "get")}
    assert "rbac.yaml" not in " ".join(_listed(namespaced))
