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
    [deployment] = _documents("deployment.yaml")
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


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert present <= listed
    assert "../crds" in listed
