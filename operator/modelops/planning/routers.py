"""Traffic routers: how a canary weight becomes objects. Pure; one function set per router.

A router renders, for given stable and canary versions and a weight, the objects that
split traffic, and says how many replicas each version needs. The executor applies what
it renders; reading the weight back is the same render compared with what is observed.

- ``replicas`` (default, no mesh): while the canary has weight > 0, the entry Service
  selects the pods of both versions and the split follows replica counts. The stable
  version keeps its full count and the canary gets
  ``max(1, round(stable × w / (100 − w)))`` replicas, so its share of pods is the
  nearest achievable to ``w``. For example, a stable of 4 replicas at w = 20 gives 1 canary
  replica, an effective 20 %; at w = 50 it gives 4, 50 %. At weight 0 the entry Service
  selects stable only and the canary runs 1 warm replica that receives no traffic.
- ``gatewayAPI``: an HTTPRoute named after the ModelDeployment, owned by it, with
  weighted ``backendRefs`` to the per-version Services. The entry Service stays on
  stable; each version scales on its own (replicas or HPA).
"""

import math
from typing import Any

from modelops.api.v1alpha1 import ModelDeploymentSpec
from modelops.planning import children
from modelops.planning.children import Owner
from modelops.planning.names import child_name

GATEWAY_GROUP = "gateway.networking.k8s.io"


def canary_replicas_for_weight(stable_replicas: int, weight: int) -> int:
    """Replicas the canary needs under the replicas router.

    >>> [canary_replicas_for_weight(4, w) for w in (0, 10, 20, 50, 80)]
    [1, 1, 1, 4, 16]
    """
    if weight <= 0:
        return 1
    if weight >= 100:
        return max(1, stable_replicas)
    return max(1, round(stable_replicas * weight / (100 - weight)))


def effective_weight(stable_ready: int, canary_ready: int, configured: int, router: str) -> int:
    """The canary's actual share: configured for gatewayAPI; its share of Ready pods for replicas.

    >>> effective_weight(4, 1, 20, "replicas"), effective_weight(4, 1, 20, "gatewayAPI"), effective_weight(4, 1, 0, "replicas")
    (20, 20, 0)
    """
    if router == "gatewayAPI" or configured == 0:
        return configured
    total = stable_ready + canary_ready
    return 0 if total == 0 else math.floor(100 * canary_ready / total + 0.5)


def entry_service(owner: Owner, spec: ModelDeploymentSpec, stable: str, canary: str | None, weight: int) -> dict[str, Any]:
    """The entry Service: stable only, or (replicas router, weight > 0) both versions."""
    service = children.entry_service(owner, stable)
    if spec.rollout.router.type == "replicas" and canary is not None and weight > 0:
        service["spec"]["selector"] = {children.LABEL_DEPLOYMENT: owner.name}
    return service


def http_route(owner: Owner, spec: ModelDeploymentSpec, stable: str, canary: str | None, weight: int) -> dict[str, Any] | None:
    """The owned HTTPRoute of the gatewayAPI router (None for other routers)."""
    gateway = spec.rollout.router.gateway_api
    if spec.rollout.router.type != "gatewayAPI" or gateway is None:
        return None
    backends = [{"group": "", "kind": "Service", "name": child_name(owner.name, stable), "port": children.SERVICE_PORT, "weight": 100 - (weight if canary else 0)}]
    if canary is not None:
        backends.append({"group": "", "kind": "Service", "name": child_name(owner.name, canary), "port": children.SERVICE_PORT, "weight": weight})
    parent_refs = []
    for parent in gateway.parent_refs:
        reference: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": parent.name}
        if parent.namespace:
            reference["namespace"] = parent.namespace
        if parent.section_name:
            reference["sectionName"] = parent.section_name
        parent_refs.append(reference)
    route: dict[str, Any] = {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": children.common_labels(owner),
            "ownerReferences": [owner.reference()],
        },
        "spec": {"parentRefs": parent_refs, "rules": [{"backendRefs": backends}]},
    }
    if gateway.hostnames:
        route["spec"]["hostnames"] = list(gateway.hostnames)
    return route


def route_weights(route: dict[str, Any] | None) -> dict[str, int]:
    """Backend Service name -> weight, read back from an observed HTTPRoute."""
    if not route:
        return {}
    rules = route.get("spec", {}).get("rules") or []
    return {ref["name"]: int(ref.get("weight", 1)) for rule in rules for ref in rule.get("backendRefs") or []}
