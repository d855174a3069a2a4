"""One reconciliation pass, decided without I/O: what to apply, what to delete, what status to show.

The model of a pass:

1. **Advance the rollout** (``rollout.advance``): which version is stable, which is the
   canary and at what weight, given readiness, this tick's check verdicts and manual actions.
2. **Render the desired children** (``children``, ``routers``) for the version the spec
   describes (stable or canary) and the traffic split, and keep only those that
   ``compare.is_applied`` says would change: in steady state the list is empty. The stable
   version's children are not re-rendered while a canary is live (the spec now describes
   the canary); they stay as they are.
3. **Replica counts** are applied separately under the field manager
   ``modelops-replicas`` (see ``replica_writes``), so the main field manager never owns
   ``replicas`` and an HPA is never fought.
4. **Delete children of versions that are neither stable, canary, nor the previous stable
   still inside its scale-down delay.**
5. **Compute the status**, keeping each condition's ``lastTransitionTime`` unless its
   status changed, so an unchanged world yields an identical status and no write.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelops.api.v1alpha1 import (
    Condition,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    RetrainingRun,
    RetrainingStatus,
    Track,
    VersionStatus,
)
from modelops.planning import children, routers
from modelops.planning.analysis import Evaluation
from modelops.planning.children import Owner
from modelops.planning.compare import drops_owned_fields, is_applied
from modelops.planning.names import child_name
from modelops.planning.monitoring import (
    MonitoringOutcome,
    ObservedJob,
    RetrainingDecision,
    advance_monitoring,
    decide_retraining,
    roll_back_to_previous,
    triggers,
)
from modelops.planning.rollout import Event, RolloutState, advance


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

    def model_uri(self) -> str:
        """MODEL_URI of the pod template's first container ("" when absent)."""
        containers = self.manifest.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
        return next((e.get("value", "") for e in containers[0].get("env") or [] if e.get("name") == "MODEL_URI"), "")


@dataclass(frozen=True)
class Observed:
    """A ModelDeployment's children as the API returned them, keyed by (kind, name)."""

    deployments: Mapping[str, ObservedDeployment] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    autoscalers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    routes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    jobs: Mapping[str, ObservedJob] = field(default_factory=dict)
    versions_by_child: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        if kind == "Deployment":
            found = self.deployments.get(name)
            return found.manifest if found else None
        if kind == "Job":
            return {"metadata": {"name": name}} if name in self.jobs else None
        table = {"Service": self.services, "HorizontalPodAutoscaler": self.autoscalers, "HTTPRoute": self.routes}
        return table[kind].get(name)

    def deployment_of(self, version: str) -> ObservedDeployment | None:
        return next((found for found in self.deployments.values() if found.version == version), None)


@dataclass(frozen=True)
class Apply:
    """One server-side apply: ``manifest`` under ``field_manager``."""

    manifest: dict[str, Any]
    field_manager: str = children.FIELD_MANAGER

    @property
    def label(self) -> str:
        text = f"{self.manifest['kind']} {self.manifest['metadata']['name']}"
        if self.field_manager == children.REPLICAS_FIELD_MANAGER:
            text += f" replicas={self.manifest['spec']['replicas']}"
        return text


@dataclass(frozen=True)
class Plan:
    """The writes one pass needs; all empty in steady state."""

    apply: list[Apply]
    delete: list[tuple[str, str]]
    status: ModelDeploymentStatus
    events: list[Event]
    state: RolloutState
    changing: frozenset[str] = frozenset()
    monitoring: MonitoringOutcome | None = None
    completed_run: RetrainingRun | None = None  # a retraining run that just produced a candidate (to announce)


def wanted_replicas(spec: ModelDeploymentSpec, found: ObservedDeployment | None) -> int:
    """Replicas the stable version must have Ready: its Deployment's count, and at least minReplicas when autoscaled."""
    floor = (spec.scaling.min_replicas or 1) if spec.scaling.autoscaled else 0
    current = found.replicas if found else (children.replicas(spec) or 0)
    return max(current, floor)


def serving(found: ObservedDeployment | None) -> bool:
    """Rolled out, with every replica the Deployment asks for Ready."""
    return found is not None and found.rolled_out and found.ready_replicas >= found.replicas


def _replicas_manifest(owner: Owner, name: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": owner.namespace},
        "spec": {"replicas": count},
    }


def desired_replicas(spec: ModelDeploymentSpec, state: RolloutState, version: str, observed: Observed) -> int | None:
    """The replica count the operator sets for ``version``'s Deployment, or None when it leaves it alone.

    - the canary under the replicas router: sized from the stable count and the weight;
    - a version the spec describes, with fixed replicas: ``spec.scaling.replicas`` (default 1);
    - autoscaled: None (the HPA owns it), except at creation (``minReplicas``; see ``replica_writes``).
    """
    if version == state.canary and version != state.stable and spec.rollout.router.type == "replicas":
        stable = observed.deployment_of(state.stable)
        if state.rollout is not None and state.rollout.step >= len(spec.rollout.steps):
            return full_replicas(spec, stable)  # about to be promoted: full size first
        return routers.canary_replicas_for_weight(stable.replicas if stable else 1, state.weight)
    return children.replicas(spec)


def full_replicas(spec: ModelDeploymentSpec, stable: ObservedDeployment | None) -> int:
    """The production replica count a canary needs before promotion: the fixed count; autoscaled, under the
    replicas router (which sizes the canary itself) what stable runs now, and under gatewayAPI (where the
    canary has its own HPA) minReplicas."""
    fixed = children.replicas(spec)
    if fixed is not None:
        return fixed
    floor = spec.scaling.min_replicas or 1
    if spec.rollout.router.type == "gatewayAPI":
        return floor
    return max(stable.replicas if stable else 0, floor)


def replica_writes(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, version: str, observed: Observed) -> list[Apply]:
    """Replica applies under ``modelops-replicas``: only when the count differs from what is observed."""
    name = child_name(owner.name, version)
    found = observed.deployment_of(version)
    count = desired_replicas(spec, state, version, observed)
    if count is None and found is None:
        count = spec.scaling.min_replicas or 1  # a new autoscaled Deployment starts at minReplicas, not at 1
    if count is None or (found is not None and found.replicas == count):
        return []
    return [Apply(_replicas_manifest(owner, name, count), children.REPLICAS_FIELD_MANAGER)]


def desired_children(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, observed: Observed) -> list[dict[str, Any]]:
    """Every child the spec's version and the traffic split need, fully rendered."""
    target = spec.model.version
    manifests: list[dict[str, Any]] = []
    live_canary = state.canary if state.rollout is not None else None
    if target in (state.stable, state.canary):
        track: Track = "stable" if target == state.stable else "canary"
        existing = observed.deployment_of(target)
        release_track: Track = existing.release_track if existing and existing.release_track else track
        manifests += [
            children.deployment(owner, spec, spec.model, track, release_track),
            children.version_service(owner, target, track),
        ]
        wants_autoscaler = track == "stable" or spec.rollout.router.type == "gatewayAPI"
        autoscaler = children.autoscaler(owner, spec, target, track) if wants_autoscaler else None
        if autoscaler is not None:
            manifests.append(autoscaler)
    if state.stable != target:
        # The stable version's Service depends only on its version, so it is repaired even while
        # the spec describes another version (its Deployment is not: the spec no longer holds it).
        manifests.append(children.version_service(owner, state.stable, "stable"))
    manifests.append(routers.entry_service(owner, spec, state.stable, live_canary, state.weight))
    route = routers.http_route(owner, spec, state.stable, live_canary, state.weight)
    if route is not None:
        manifests.append(route)
    return manifests


def stale_children(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, observed: Observed) -> list[tuple[str, str]]:
    """(kind, name) of children no longer wanted: other versions, unwanted HPAs, an HTTPRoute of a former router."""
    keep = {state.stable} | ({state.canary} if state.canary else set()) | ({state.previous.version} if state.previous else set())
    stale = {key for key, version in observed.versions_by_child.items() if version not in keep}
    target_name = child_name(owner.name, spec.model.version)
    canary_without_hpa = state.canary == spec.model.version != state.stable and spec.rollout.router.type == "replicas"
    if target_name in observed.autoscalers and (not spec.scaling.autoscaled or canary_without_hpa):
        stale.add(("HorizontalPodAutoscaler", target_name))
    if spec.rollout.router.type != "gatewayAPI" and owner.name in observed.routes:
        stale.add(("HTTPRoute", owner.name))
    return sorted(stale)


def _condition(
    previous: Sequence[Condition], type_: str, status: str, reason: str, message: str, generation: int, now: str
) -> Condition:
    before = next((condition for condition in previous if condition.type == type_), None)
    changed = before is None or before.status != status
    return Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message[:32768],
        last_transition_time=now if changed or before is None else before.last_transition_time,
        observed_generation=generation,
    )


def _version_status(owner: Owner, version: str, observed: Observed, wanted: int, weight: int) -> VersionStatus:
    found = observed.deployment_of(version)
    return VersionStatus(
        version=version,
        deployment=found.name if found else child_name(owner.name, version),
        replicas=wanted,
        ready_replicas=found.ready_replicas if found else 0,
        weight=weight,
    )


def compute_status(
    owner: Owner,
    spec: ModelDeploymentSpec,
    previous: ModelDeploymentStatus,
    state: RolloutState,
    observed: Observed,
    generation: int,
    now: str,
    errors: Sequence[str] = (),
    changing: frozenset[str] = frozenset(),
    monitoring: MonitoringOutcome | None = None,
    retraining: RetrainingStatus | None = None,
) -> ModelDeploymentStatus:
    """The status this pass should leave: equal to ``previous`` when nothing changed.

    ``changing`` names the Deployments this pass writes: what was observed of them is about to
    be outdated, so they do not count as ready in this status.
    """
    stable_found = observed.deployment_of(state.stable)
    stable_wanted = wanted_replicas(spec, stable_found) if state.stable == spec.model.version else (stable_found.replicas if stable_found else 0)
    canary: VersionStatus | None = None
    if state.canary is not None:
        canary_found = observed.deployment_of(state.canary)
        weight = routers.effective_weight(
            stable_found.ready_replicas if stable_found else 0,
            canary_found.ready_replicas if canary_found else 0,
            state.weight,
            spec.rollout.router.type,
        )
        canary = _version_status(owner, state.canary, observed, canary_found.replicas if canary_found else 0, weight)
    stable = _version_status(owner, state.stable, observed, stable_wanted, 100 - (canary.weight or 0 if canary else 0))
    stable_ready = serving(stable_found) and stable.ready_replicas >= stable_wanted and stable.deployment not in changing
    readiness = f"{stable.ready_replicas}/{stable.replicas} replicas of {stable.deployment} ready"

    blocked_target = state.blocked is not None and state.blocked.version == spec.model.version != state.stable
    degraded_reason, degraded_message = "AsExpected", "no problems"
    if errors:
        degraded_reason, degraded_message = "ApplyFailed", "; ".join(errors)[:1024]
    elif blocked_target:
        assert state.blocked is not None
        degraded_reason, degraded_message = "RolledBack", f"{state.blocked.version} was rolled back: {state.blocked.reason}"
    elif stable_found is not None and stable_found.progress_deadline_exceeded:
        degraded_reason, degraded_message = "ProgressDeadlineExceeded", f"{stable.deployment}: {readiness}"
    degraded = degraded_reason != "AsExpected"

    paused = state.rollout is not None and (spec.rollout.paused or state.rollout.paused_by_user)
    if state.rollout is not None:
        step_text = f"step {state.rollout.step}/{len(spec.rollout.steps)}, weight {canary.weight if canary else 0}%"
        reason = "MetricsUnavailable" if state.metrics_unavailable else ("Paused" if paused else "Canary")
        detail = f"; holding: {state.hold_reason}" if state.hold_reason else ""
        progressing = ("True", reason, f"rolling out {state.rollout.revision} ({step_text}){detail}")
    elif not stable_ready:
        progressing = ("True", "RollingOut", readiness)
    else:
        progressing = ("False", "Complete", f"{stable.version} is rolled out")

    ready = ("True", "AllReplicasReady", readiness) if stable_ready else ("False", "ReplicasNotReady", readiness)
    conditions = [
        _condition(previous.conditions, "Ready", *ready, generation, now),
        _condition(previous.conditions, "Progressing", *progressing, generation, now),
        _condition(previous.conditions, "Degraded", "True" if degraded else "False", degraded_reason, degraded_message, generation, now),
    ]
    if monitoring is not None and monitoring.status is not None:
        conditions.append(_condition(previous.conditions, "Monitoring", *_monitoring_condition(monitoring), generation, now))
    phase: Phase
    if degraded:
        phase, message = "Degraded", degraded_message
    elif paused:
        phase, message = "Paused", progressing[2]
    elif state.rollout is not None:
        phase, message = "Progressing", progressing[2]
    elif stable_found is None:
        phase, message = "Pending", f"waiting for {stable.deployment} to be created"
    elif not stable_ready:
        phase, message = ("Pending" if stable.ready_replicas == 0 else "Progressing"), readiness
    else:
        phase, message = "Healthy", readiness
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        message=message[:1024],
        stable=stable,
        canary=canary,
        conditions=conditions,
        history=list(state.history),
        rollout=state.rollout,
        blocked_revision=state.blocked,
        previous=state.previous,
        handled_actions=state.handled,
        monitoring=monitoring.status if monitoring is not None else previous.monitoring,
        retraining=retraining if retraining is not None else previous.retraining,
    )


def _monitoring_condition(outcome: MonitoringOutcome) -> tuple[str, str, str]:
    """Monitoring: True when every check passes; False while some breach; Unknown with stale data."""
    if outcome.breaching:
        return "False", "Breach", "; ".join(f"{c.name}: {c.reason} (since {c.breaching_since})" for c in outcome.breaching)
    if outcome.stale:
        return "Unknown", "DataStale", "; ".join(f"{c.name}: {c.verdict} {c.reason}" for c in outcome.stale)
    assert outcome.status is not None
    if not outcome.status.checks or any(c.verdict is None for c in outcome.status.checks):
        return "Unknown", "NotEvaluated", "waiting for the first evaluation"
    return "True", "AllChecksPass", "every monitoring check passes"


def _why_no_retraining(spec: ModelDeploymentSpec, decision: RetrainingDecision) -> str:
    if spec.retraining is None:
        return "spec.retraining is not set"
    current = decision.status
    if current is not None and current.last_run is not None and current.last_run.outcome == "Running":
        return f"{current.last_run.job} is still running"
    if current is not None and current.cooldown_until:
        return f"cooling down until {current.cooldown_until} (spec.retraining.cooldown)"
    return "nothing to start"


def serving_model(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, observed: "Observed") -> tuple[str, str] | None:
    """The stable (version, uri) in production, when it is not the version the spec names."""
    if status.stable is None or status.stable.version == spec.model.version:
        return None
    found = observed.deployment_of(status.stable.version)
    return (status.stable.version, found.model_uri()) if found is not None else None


def plan(
    owner: Owner,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    generation: int,
    now: str,
    *,
    evaluations: Mapping[str, Evaluation] | None = None,
    monitoring_evaluations: Mapping[str, Evaluation] | None = None,
    requested_actions: Mapping[str, str] | None = None,
    action_order: Sequence[str] = (),
) -> Plan:
    """Everything one pass must write; ``Plan.apply`` and ``Plan.delete`` are empty in steady state."""
    requested = dict(requested_actions or {})
    monitored = advance_monitoring(spec, status, monitoring_evaluations, now)
    fired = triggers(monitored, spec)
    extra_events: list[Event] = [Event("Warning", "MonitoringAlert", alert) for alert in fired.alerts]
    working = status
    if fired.rollback:
        rolled = roll_back_to_previous(spec, status, f"monitoring: {fired.rollback}", now)
        if rolled is not None:
            working = rolled
            extra_events.append(Event("Warning", "RolledBack", f"{status.stable.version if status.stable else ''} rolled back by monitoring: {fired.rollback}"))
    manual_retrain = bool(requested.get("retrain")) and requested.get("retrain") != status.handled_actions.retrain
    last_run = status.retraining.last_run if status.retraining else None
    retraining = decide_retraining(
        owner,
        spec,
        status.retraining,
        trigger=fired.retrain or ("requested with `modelops retrain`" if manual_retrain else None),
        features=fired.features,
        job=observed.jobs.get(last_run.job) if last_run else None,
        now=now,
        serving=serving_model(spec, status, observed),
    )
    extra_events += retraining.events
    if manual_retrain and retraining.create is None:
        extra_events.append(Event("Warning", "RetrainRefused", f"`modelops retrain` refused: {_why_no_retraining(spec, retraining)}"))
    stable_found = observed.deployment_of(working.stable.version) if working.stable else None
    state = advance(
        spec,
        working,
        serving={found.version: serving(found) for found in observed.deployments.values()},
        full_size={
            found.version: serving(found) and found.replicas >= full_replicas(spec, stable_found)
            for found in observed.deployments.values()
        },
        deployments={found.version: found.name for found in observed.deployments.values()},
        now=now,
        evaluations=evaluations,
        requested_actions=requested,
        action_order=action_order,
    )
    to_apply: list[Apply] = []
    if retraining.create is not None and retraining.create["metadata"]["name"] not in observed.jobs:
        to_apply.append(Apply(retraining.create))
    for manifest in desired_children(owner, spec, state, observed):
        found = observed.get(manifest["kind"], manifest["metadata"]["name"])
        if not is_applied(manifest, found) or drops_owned_fields(manifest, found, children.FIELD_MANAGER):
            to_apply.append(Apply(manifest))
    for version in {state.stable, state.canary} - {None}:
        if version == spec.model.version or version == state.canary:
            to_apply += replica_writes(owner, spec, state, version, observed)  # type: ignore[arg-type]
    changing = frozenset(w.manifest["metadata"]["name"] for w in to_apply if w.manifest["kind"] == "Deployment")
    new_status = compute_status(
        owner, spec, status, state, observed, generation, now, changing=changing,
        monitoring=monitored, retraining=retraining.status,
    )
    return Plan(
        apply=to_apply,
        delete=stale_children(owner, spec, state, observed),
        status=new_status,
        events=list(state.events) + extra_events,
        state=state,
        changing=changing,
        monitoring=monitored,
        completed_run=retraining.completed,
    )
