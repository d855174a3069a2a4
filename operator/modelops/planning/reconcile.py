"""One reconciliation pass, decided without I/O: what to apply, what to delete, what status to show.

The model of a pass:

1. **Decide the versions.** ``target`` is ``spec.model.version``. ``stable`` is the
   version in ``status.stable``; a new ModelDeployment has none, so its first version
   becomes stable directly. While ``target != stable``, the target's Deployment rolls out
   beside the stable one and receives no traffic from the entry Service. When every
   replica of the target is updated and Ready, the target is promoted: the entry Service
   switches to it and the previous stable version's children are deleted. (Canary steps
   with traffic weights and metric analysis replace this hand-over in the rollout layer.)
2. **Render the desired children** (``children``) and keep only those that
   ``compare.is_applied`` says would change: in steady state the list is empty.
3. **Delete children of versions that are neither stable nor target** (superseded ones).
4. **Compute the status**, keeping each condition's ``lastTransitionTime`` unless its
   status changed, so an unchanged world yields an identical status and no write.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelops.api.v1alpha1 import (
    Condition,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Track,
    VersionStatus,
)
from modelops.planning import children
from modelops.planning.children import Owner
from modelops.planning.compare import is_applied
from modelops.planning.names import child_name


@dataclass(frozen=True)
class ObservedDeployment:
    """What the operator reads from a versioned Deployment."""

    name: str
    version: str
    release_track: Track | None
    replicas: int
    ready_replicas: int
    updated_replicas: int
    total_replicas: int
    generation: int
    observed_generation: int
    progress_deadline_exceeded: bool
    manifest: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def rolled_out(self) -> bool:
        """The controller has seen the latest spec, every replica runs it, and all are Ready."""
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas >= self.replicas
            and self.total_replicas == self.replicas
            and self.ready_replicas >= self.replicas
        )


@dataclass(frozen=True)
class Observed:
    """A ModelDeployment's children as the API returned them, keyed by (kind, name)."""

    deployments: Mapping[str, ObservedDeployment] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    autoscalers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    versions_by_child: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        if kind == "Deployment":
            found = self.deployments.get(name)
            return found.manifest if found else None
        return (self.services if kind == "Service" else self.autoscalers).get(name)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Apply:
    """One server-side apply: ``manifest`` under ``field_manager``."""

    manifest: dict[str, Any]
    field_manager: str = children.FIELD_MANAGER

    @property
    def label(self) -> str:
        return f"{self.manifest['kind']} {self.manifest['metadata']['name']}"


@dataclass(frozen=True)
class Plan:
    """The writes one pass needs; all empty in steady state."""

    apply: list[Apply]
    delete: list[tuple[str, str]]
    status: ModelDeploymentStatus
    events: list[Event]


@dataclass(frozen=True)
class Decision:
    stable: str
    target: str
    promoted: bool
    first_release: bool
    history: tuple[HistoryEntry, ...]


def decide_versions(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, observed: Observed, owner: Owner, now: str) -> Decision:
    """Which version is stable after this pass, and whether the target was just promoted."""
    target = spec.model.version
    history = tuple(status.history)
    stable = status.stable.version if status.stable else None
    if stable is not None and stable != target and child_name(owner.name, stable) not in observed.deployments:
        stable = None  # the old stable is gone (deleted by hand): nothing to hand over from
    if stable is None:
        entry = HistoryEntry(version=target, outcome="Promoted", at=now, reason="first version: stable directly")
        return Decision(target, target, promoted=False, first_release=True, history=_bounded(history, entry, spec))
    if stable == target:
        return Decision(stable, target, promoted=False, first_release=False, history=history)
    candidate = observed.deployments.get(child_name(owner.name, target))
    if candidate is not None and serving(candidate, spec):
        entry = HistoryEntry(version=target, outcome="Promoted", at=now, reason=f"all {candidate.replicas} replicas Ready")
        return Decision(target, target, promoted=True, first_release=False, history=_bounded(history, entry, spec))
    return Decision(stable, target, promoted=False, first_release=False, history=history)


def wanted_replicas(spec: ModelDeploymentSpec, found: ObservedDeployment | None) -> int:
    """Replicas a version must have Ready: its Deployment's count, and at least minReplicas when autoscaled."""
    floor = (spec.scaling.min_replicas or 1) if spec.scaling.autoscaled else 0
    current = found.replicas if found else (children.replicas(spec) or 0)
    return max(current, floor)


def serving(found: ObservedDeployment, spec: ModelDeploymentSpec) -> bool:
    """Rolled out, with every wanted replica Ready."""
    return found.rolled_out and found.ready_replicas >= wanted_replicas(spec, found)


def _bounded(history: tuple[HistoryEntry, ...], entry: HistoryEntry, spec: ModelDeploymentSpec) -> tuple[HistoryEntry, ...]:
    limit = spec.revision_history_limit
    return (*history, entry)[-limit:] if limit else ()


def desired_children(owner: Owner, spec: ModelDeploymentSpec, decision: Decision, observed: Observed) -> list[dict[str, Any]]:
    """Every child the target version and the entry point need, fully rendered."""
    track: Track = "stable" if decision.target == decision.stable else "canary"
    existing = observed.deployments.get(child_name(owner.name, decision.target))
    release_track: Track = (existing.release_track if existing and existing.release_track else track)
    manifests = [
        children.deployment(owner, spec, spec.model, track, release_track),
        children.version_service(owner, decision.target, track),
        children.entry_service(owner, decision.stable),
    ]
    autoscaler = children.autoscaler(owner, spec, decision.target, track)
    if autoscaler is not None:
        manifests.append(autoscaler)
    return manifests


def stale_children(owner: Owner, decision: Decision, observed: Observed) -> list[tuple[str, str]]:
    """(kind, name) of children whose version is neither stable nor target, plus HPAs no longer wanted."""
    keep = {decision.stable, decision.target}
    stale = [key for key, version in observed.versions_by_child.items() if version not in keep]
    return sorted(stale)


def unwanted_autoscalers(owner: Owner, spec: ModelDeploymentSpec, decision: Decision, observed: Observed) -> list[tuple[str, str]]:
    """An HPA of the target left over after autoscaling was turned off."""
    name = child_name(owner.name, decision.target)
    if not spec.scaling.autoscaled and name in observed.autoscalers:
        return [("HorizontalPodAutoscaler", name)]
    return []


def _condition(
    previous: Sequence[Condition], type_: str, status: str, reason: str, message: str, generation: int, now: str
) -> Condition:
    before = next((condition for condition in previous if condition.type == type_), None)
    changed = before is None or before.status != status
    return Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=now if changed or before is None else before.last_transition_time,
        observed_generation=generation,
    )


def _version_status(owner: Owner, version: str, observed: Observed, spec: ModelDeploymentSpec, weight: int) -> VersionStatus:
    name = child_name(owner.name, version)
    found = observed.deployments.get(name)
    wanted = wanted_replicas(spec, found)
    ready = found.ready_replicas if found else 0
    return VersionStatus(version=version, deployment=name, replicas=wanted, ready_replicas=ready, weight=weight)


def compute_status(
    owner: Owner,
    spec: ModelDeploymentSpec,
    previous: ModelDeploymentStatus,
    decision: Decision,
    observed: Observed,
    generation: int,
    now: str,
    errors: Sequence[str] = (),
) -> ModelDeploymentStatus:
    """The status this pass should leave: equal to ``previous`` when nothing changed."""
    stable = _version_status(owner, decision.stable, observed, spec, weight=100)
    canary = None if decision.stable == decision.target else _version_status(owner, decision.target, observed, spec, 0)
    stable_deployment = observed.deployments.get(stable.deployment)
    stable_ready = stable_deployment is not None and serving(stable_deployment, spec)
    readiness = f"{stable.ready_replicas}/{stable.replicas} replicas of {stable.deployment} ready"

    degraded_reason, degraded_message = "AsExpected", "no problems"
    if errors:
        degraded_reason, degraded_message = "ApplyFailed", "; ".join(errors)[:1024]
    elif stable_deployment is not None and stable_deployment.progress_deadline_exceeded:
        degraded_reason, degraded_message = "ProgressDeadlineExceeded", f"{stable.deployment}: {readiness}"
    degraded = degraded_reason != "AsExpected"

    if canary is not None:
        progressing = ("True", "NewVersion", f"rolling out {canary.version}: {canary.ready_replicas}/{canary.replicas} "
                       f"replicas of {canary.deployment} ready; {stable.version} keeps serving")
    elif not stable_ready:
        progressing = ("True", "RollingOut", readiness)
    else:
        progressing = ("False", "Complete", f"{stable.version} is rolled out")

    ready = ("True", "AllReplicasReady", readiness) if stable_ready else ("False", "ReplicasNotReady", readiness)
    previous_conditions = previous.conditions
    conditions = [
        _condition(previous_conditions, "Ready", ready[0], ready[1], ready[2], generation, now),
        _condition(previous_conditions, "Progressing", *progressing, generation, now),
        _condition(previous_conditions, "Degraded", "True" if degraded else "False", degraded_reason,
                   degraded_message, generation, now),
    ]
    phase: Phase
    if degraded:
        phase, message = "Degraded", degraded_message
    elif stable_deployment is None and not stable_ready:
        phase, message = "Pending", f"waiting for {stable.deployment} to be created"
    elif canary is not None:
        phase, message = "Progressing", progressing[2]
    elif not stable_ready:
        phase, message = ("Pending" if decision.first_release or stable.ready_replicas == 0 else "Progressing"), readiness
    else:
        phase, message = "Healthy", readiness
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        message=message[:1024],
        stable=stable,
        canary=canary,
        conditions=conditions,
        history=list(decision.history),
    )


def _with_initial_replicas(manifest: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    """A new autoscaled Deployment starts at minReplicas instead of the default 1.

    Applied under a separate field manager: ``modelops`` never owns ``replicas`` of an
    autoscaled Deployment, so its later applies (which omit it) never reset what the HPA set.
    """
    return {**manifest, "spec": {**manifest["spec"], "replicas": spec.scaling.min_replicas or 1}}


def plan(
    owner: Owner,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    generation: int,
    now: str,
) -> Plan:
    """Everything one pass must write; ``Plan.apply`` and ``Plan.delete`` are empty in steady state."""
    decision = decide_versions(spec, status, observed, owner, now)
    to_apply = []
    for manifest in desired_children(owner, spec, decision, observed):
        current = observed.get(manifest["kind"], manifest["metadata"]["name"])
        if is_applied(manifest, current):
            continue
        if current is None and manifest["kind"] == "Deployment" and spec.scaling.autoscaled:
            to_apply.append(Apply(_with_initial_replicas(manifest, spec), children.BOOTSTRAP_FIELD_MANAGER))
        to_apply.append(Apply(manifest))
    to_delete = stale_children(owner, decision, observed) + unwanted_autoscalers(owner, spec, decision, observed)
    events: list[Event] = []
    if decision.first_release:
        events.append(Event("Normal", "Released", f"{decision.target} is the first version: stable directly"))
    if decision.promoted:
        events.append(Event("Normal", "Promoted", f"{decision.target} is now stable ({decision.history[-1].reason})"))
    new_status = compute_status(owner, spec, status, decision, observed, generation, now)
    return Plan(apply=to_apply, delete=to_delete, status=new_status, events=events)
