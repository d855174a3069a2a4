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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class RouteAcceptance:
    """What the parent Gateways said of the owned HTTPRoute (from its ``status.parents``)."""

    state: Literal["Accepted", "Unconfirmed", "Refused"]
    message: str


MAX_PARENTS_READ = 16  # a route's status lists at most 32 parents; the first 16 are plenty to judge


def route_acceptance(route: Mapping[str, Any] | None) -> RouteAcceptance:
    """Refused when any parent reports ``Accepted=False`` or ``ResolvedRefs=False`` (whatever the
    generation: fail closed); Accepted when every parent reports ``Accepted=True`` for the
    route's current generation; otherwise Unconfirmed (no Gateway controller has reported yet).

    >>> route_acceptance(None).state
    'Unconfirmed'
    >>> refused = {"metadata": {"name": "m", "generation": 2}, "status": {"parents": [{"parentRef": {"name": "gw"},
    ...     "conditions": [{"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no m-2"}]}]}}
    >>> route_acceptance(refused).message
    'HTTPRoute m: Gateway gw reports ResolvedRefs=False (BackendNotFound: no m-2)'
    """
    if not route:
        return RouteAcceptance("Unconfirmed", "the HTTPRoute does not exist yet")
    metadata = route.get("metadata") or {}
    name, generation = metadata.get("name", ""), int(metadata.get("generation") or 0)
    parents = ((route.get("status") or {}).get("parents") or [])[:MAX_PARENTS_READ]
    refusals, accepted = [], 0
    for parent in parents:
        gateway = str((parent.get("parentRef") or {}).get("name", "?"))[:253]
        for condition in parent.get("conditions") or []:
            if condition.get("type") in ("Accepted", "ResolvedRefs") and condition.get("status") == "False":
                detail = f"{condition.get('reason', '')}: {str(condition.get('message', ''))[:256]}".strip(": ")
                refusals.append(f"Gateway {gateway} reports {condition['type']}=False ({detail})")
        accepted += any(
            c.get("type") == "Accepted" and c.get("status") == "True" and int(c.get("observedGeneration") or generation) >= generation
            for c in parent.get("conditions") or []
        )
    if refusals:
        return RouteAcceptance("Refused", f"HTTPRoute {name}: " + "; ".join(refusals))
    if parents and accepted == len(parents):
        return RouteAcceptance("Accepted", f"HTTPRoute {name} (generation {generation}) accepted by every parent Gateway")
    return RouteAcceptance("Unconfirmed", f"no Gateway has reported on HTTPRoute {name} (generation {generation}) yet")
