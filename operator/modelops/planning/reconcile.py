"""One reconciliation pass, decided without I/O: what to apply, what to delete, what status to show.

The model of a pass:

1. **Advance the rollout** (``rollout.advance``): which version is stable, which is the
   canary and at what weight, given readiness, this tick's check verdicts and manual actions.
2. **Render the desired children** (``children``, ``routers``) for the version the spec
   describes (stable or canary), for the stable version from its record (``revisions``)
   when the spec describes another, and for the traffic split; keep only those that
   ``compare.is_applied`` says would change: in steady state the list is empty. Every
   released version has a record (a ControllerRevision), created the first time the spec
   names it.
3. **Replica counts** are applied separately under the field manager
   ``modelops-replicas`` (see ``replica_writes``), so the main field manager never owns
   ``replicas`` and an HPA is never fought.
4. **Delete children of versions that are neither stable, canary, nor the previous stable
   still inside its scale-down delay.**
5. **Tenant limits** (``policy``): a Deployment or Job that breaks a rule is not written, and
   status says which rule (Degraded ``PolicyRefused``).
6. **Compute the status**, keeping each condition's ``lastTransitionTime`` unless its
   status changed, so an unchanged world yields an identical status and no write.
"""

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelops.api.v1alpha1 import (
    Condition,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    RetrainingStatus,
    Track,
    VersionStatus,
)
from modelops.planning import children, policy, revisions, routers
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
from modelops.planning.revisions import ObservedRevision, RevisionRecord
from modelops.planning.rollout import Event, Hold, RolloutState, advance


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
    revisions: Mapping[str, ObservedRevision] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        if kind == "Deployment":
            found = self.deployments.get(name)
            return found.manifest if found else None
        if kind in ("Job", revisions.KIND):
            # Created once and immutable: existing by name is all that matters.
            present = name in (self.jobs if kind == "Job" else self.revisions)
            return {"metadata": {"name": name}} if present else None
        table = {"Service": self.services, "HorizontalPodAutoscaler": self.autoscalers, "HTTPRoute": self.routes}
        return table[kind].get(name)

    def deployment_of(self, version: str) -> ObservedDeployment | None:
        return next((found for found in self.deployments.values() if found.version == version), None)

    @functools.cached_property
    def records(self) -> dict[str, RevisionRecord]:
        """Version -> the newest readable record of it (computed once per observation: a pass asks often)."""
        return revisions.latest_records(self.revisions)

    def released_versions(self) -> set[str]:
        """Versions with children (any kind: a Service outlives a deleted Deployment) or records: what a
        first release must not find besides its own."""
        return set(self.versions_by_child.values()) | {found.version for found in self.deployments.values()} | {
            found.version for found in self.revisions.values()}


@dataclass(frozen=True)
class Apply:
    """One server-side apply: ``manifest`` under ``field_manager``."""

    manifest: dict[str, Any]
    field_manager: str = children.FIELD_MANAGER

    @property
    def traffic(self) -> bool:
        """Whether this write moves traffic (the entry Service, the HTTPRoute): see ``reconciler``, traffic first."""
        return self.manifest["kind"] == "HTTPRoute" or (
            self.manifest["kind"] == "Service" and children.LABEL_MODEL_VERSION not in self.manifest["metadata"].get("labels", {})
        )

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
    refusals: tuple[str, ...] = ()  # tenant-policy rules the spec or a child breaks (see ``policy``)
    unreadable: bool = False  # holding on a status it cannot trust: write only ``partial_status_document(status)``


def wanted_replicas(spec: ModelDeploymentSpec) -> int:
    """Replicas the stable version must have Ready to be called Ready: the fixed count, or the HPA's minimum.

    ``spec`` is the one that renders the stable version (its record while the spec names another).
    """
    fixed = children.replicas(spec)
    return fixed if fixed is not None else (spec.scaling.min_replicas or 1)


def version_spec(spec: ModelDeploymentSpec, version: str, observed: Observed) -> ModelDeploymentSpec | None:
    """The spec that renders ``version``: the spec when it names it, else its record (None without one)."""
    if version == spec.model.version:
        return spec
    record = observed.records.get(version)
    return revisions.spec_from_record(spec, record) if record is not None else None


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
    - with fixed replicas: ``scaling.replicas`` (default 1) of the spec that renders the version
      (for the stable version while the spec names another: its record);
    - autoscaled: None (the HPA owns it), except at creation (``minReplicas``; see ``replica_writes``).
    """
    if version == state.canary and version != state.stable and spec.rollout.router.type == "replicas":
        stable = observed.deployment_of(state.stable)
        if state.rollout is not None and state.rollout.step >= len(spec.rollout.steps):
            return full_replicas(spec, stable)  # about to be promoted: full size first
        return routers.canary_replicas_for_weight(stable.replicas if stable else 1, state.weight)
    rendering = version_spec(spec, version, observed)
    return children.replicas(rendering) if rendering is not None else None


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
    rendering = version_spec(spec, version, observed)
    if rendering is None:
        return []  # a stable version without a record: left as it is (StableRecordMissing)
    count = desired_replicas(spec, state, version, observed)
    if count is None and found is None:
        count = rendering.scaling.min_replicas or 1  # a new autoscaled Deployment starts at minReplicas, not at 1
    if count is None or (found is not None and found.replicas == count):
        return []
    return [Apply(_replicas_manifest(owner, name, count), children.REPLICAS_FIELD_MANAGER)]


def _version_children(owner: Owner, spec: ModelDeploymentSpec, rendering: ModelDeploymentSpec, track: Track,
                      observed: Observed) -> list[dict[str, Any]]:
    """One version's Deployment, Service and (when wanted) HPA, rendered from ``rendering``."""
    version = rendering.model.version
    existing = observed.deployment_of(version)
    release_track: Track = existing.release_track if existing and existing.release_track else track
    manifests = [
        children.deployment(owner, rendering, rendering.model, track, release_track),
        children.version_service(owner, version, track),
    ]
    wants_autoscaler = track == "stable" or spec.rollout.router.type == "gatewayAPI"
    autoscaler = children.autoscaler(owner, rendering, version, track) if wants_autoscaler else None
    if autoscaler is not None:
        manifests.append(autoscaler)
    return manifests


def record_writes(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, observed: Observed) -> list[dict[str, Any]]:
    """The record of the spec's version, when it is released (stable or canary) and not recorded as it is now."""
    if spec.model.version not in (state.stable, state.canary):
        return []
    record = revisions.record_of(spec)
    if revisions.record_name(owner, record) in observed.revisions:
        return []
    return [revisions.revision_manifest(owner, record, revisions.next_number(observed.revisions))]


def desired_children(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, observed: Observed) -> list[dict[str, Any]]:
    """Every child the spec's version, the stable version and the traffic split need, fully rendered."""
    target = spec.model.version
    manifests: list[dict[str, Any]] = record_writes(owner, spec, state, observed)
    if target in (state.stable, state.canary):
        manifests += _version_children(owner, spec, spec, "stable" if target == state.stable else "canary", observed)
    if state.stable != target:
        # The stable version is rendered from its record, whatever the spec names now: edits are
        # reverted and a deleted child is recreated. Without a record only its Service (which
        # depends on nothing but the version) is repaired.
        stable_spec = version_spec(spec, state.stable, observed)
        if stable_spec is not None:
            manifests += _version_children(owner, spec, stable_spec, "stable", observed)
        else:
            manifests.append(children.version_service(owner, state.stable, "stable"))
    return manifests + traffic_manifests(owner, spec, state)


def traffic_manifests(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState) -> list[dict[str, Any]]:
    """The objects that split traffic for ``state``: the entry Service, and the HTTPRoute (gatewayAPI)."""
    live_canary = state.canary if state.rollout is not None else None
    manifests = [routers.entry_service(owner, spec, state.stable, live_canary, state.weight)]
    route = routers.http_route(owner, spec, state.stable, live_canary, state.weight)
    return manifests + ([route] if route is not None else [])


def stale_children(owner: Owner, spec: ModelDeploymentSpec, state: RolloutState, observed: Observed) -> list[tuple[str, str]]:
    """(kind, name) of children no longer wanted: other versions, unwanted HPAs, an HTTPRoute of a former router."""
    keep = {state.stable} | ({state.canary} if state.canary else set()) | ({state.previous.version} if state.previous else set())
    stale = {key for key, version in observed.versions_by_child.items() if version not in keep and key[0] != revisions.KIND}
    stale |= {(revisions.KIND, name) for name in stale_records(owner, spec, keep, observed)}
    target_name = child_name(owner.name, spec.model.version)
    canary_without_hpa = state.canary == spec.model.version != state.stable and spec.rollout.router.type == "replicas"
    if target_name in observed.autoscalers and (not spec.scaling.autoscaled or canary_without_hpa):
        stale.add(("HorizontalPodAutoscaler", target_name))
    if spec.rollout.router.type != "gatewayAPI" and owner.name in observed.routes:
        stale.add(("HTTPRoute", owner.name))
    return sorted(stale)


def stale_records(owner: Owner, spec: ModelDeploymentSpec, keep: set[str], observed: Observed) -> list[str]:
    """Records of versions no longer kept, and older records of kept ones.

    The current record of the spec's version is the one matching the spec; older records of it
    go only once that one exists. Other kept versions keep their newest readable record.
    """
    current = revisions.record_name(owner, revisions.record_of(spec))
    newest = {version: revisions.record_name(owner, record) for version, record in observed.records.items()}
    stale = []
    for name, found in observed.revisions.items():
        if found.version not in keep:
            stale.append(name)
        elif found.version == spec.model.version:
            if current in observed.revisions and name != current:
                stale.append(name)
        elif found.version in newest and name != newest[found.version]:
            stale.append(name)
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


def last_known_wanted(previous: ModelDeploymentStatus, version: str, found: ObservedDeployment | None) -> int:
    """The wanted replica count of a stable version without a record: what status last showed for it
    (at least 1), never what its Deployment asks for now, so a scale to 0 by hand is not Ready."""
    if previous.stable is not None and previous.stable.version == version and previous.stable.replicas:
        return max(1, previous.stable.replicas)
    return max(1, found.replicas if found else 1)


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
    traffic_error: str = "",
    refusals: Sequence[str] = (),
) -> ModelDeploymentStatus:
    """The status this pass should leave: equal to ``previous`` when nothing changed.

    ``changing`` names the Deployments this pass writes: what was observed of them is about to
    be outdated, so they do not count as ready in this status. ``traffic_error``: a traffic write
    of this pass failed (``state`` is then the previous, still applied, one).
    """
    stable_found = observed.deployment_of(state.stable)
    stable_spec = version_spec(spec, state.stable, observed)
    stable_wanted = wanted_replicas(stable_spec) if stable_spec is not None else last_known_wanted(previous, state.stable, stable_found)
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
    stable_ready = serves(stable_found, stable_wanted) and stable.deployment not in changing
    readiness = f"{stable.ready_replicas}/{stable.replicas} replicas of {stable.deployment} ready"
    traffic = _traffic_condition(owner, spec, observed, traffic_error)

    blocked_target = state.blocked is not None and state.blocked.version == spec.model.version != state.stable
    degraded_reason, degraded_message = "AsExpected", "no problems"
    if traffic is not None and traffic[1] == "TrafficSplitUnavailable":
        degraded_reason, degraded_message = traffic[1], "; ".join([traffic[2], *errors])[:1024]
    elif refusals:
        degraded_reason, degraded_message = "PolicyRefused", "; ".join([*refusals, *errors])[:1024]
    elif errors:
        degraded_reason, degraded_message = "ApplyFailed", "; ".join(errors)[:1024]
    elif state.hold is not None and state.hold.degraded:
        degraded_reason, degraded_message = state.hold.reason, state.hold.message
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
    if traffic is not None:
        conditions.append(_condition(previous.conditions, "TrafficSplit", *traffic, generation, now))
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


def serves(found: ObservedDeployment | None, wanted: int) -> bool:
    """At least ``wanted`` replicas Ready, every pod on the current template, the controller caught up.

    An HPA scaling up above ``wanted`` does not make the version unready; a rolling update, a
    scale below ``wanted`` (even to 0) or a Deployment that is gone does.
    """
    return (
        found is not None
        and found.observed_generation >= found.generation
        and found.updated_replicas >= found.total_replicas
        and found.ready_replicas >= wanted
    )


def _traffic_condition(owner: Owner, spec: ModelDeploymentSpec, observed: Observed, error: str) -> tuple[str, str, str] | None:
    """TrafficSplit (gatewayAPI router only): True when every parent Gateway accepted the route,
    Unknown while none has reported on its current generation, False when one refused it or a
    write of the split failed."""
    if spec.rollout.router.type != "gatewayAPI":
        return None
    if error:
        return "False", "TrafficSplitUnavailable", error
    acceptance = routers.route_acceptance(observed.routes.get(owner.name))
    status = {"Accepted": "True", "Unconfirmed": "Unknown", "Refused": "False"}[acceptance.state]
    reason = "TrafficSplitUnavailable" if acceptance.state == "Refused" else acceptance.state
    return status, reason, acceptance.message


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
    namespace_policy: policy.NamespacePolicy | None = None,
) -> Plan:
    """Everything one pass must write; ``Plan.apply`` and ``Plan.delete`` are empty in steady state.

    A status that lost its stable version while other versions were released is not a first
    release: the plan writes nothing and says so (``StatusUnreadable``), see ``lost_stable``.
    """
    lost = lost_stable(spec, status, observed)
    if lost:
        return Plan(apply=[], delete=[], status=unreadable_status(status, lost, generation, now), events=[],
                    state=previous_state(status), unreadable=True)
    requested = dict(requested_actions or {})
    limits = namespace_policy or policy.NamespacePolicy(owner.namespace)  # default: the strictest
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
        policy=limits,
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
        hold=outside_hold(owner, spec, working.stable.version if working.stable else "", observed),
    )
    to_apply: list[Apply] = []
    if retraining.create is not None and retraining.create["metadata"]["name"] not in observed.jobs:
        to_apply.append(Apply(retraining.create))
    for manifest in desired_children(owner, spec, state, observed):
        found = observed.get(manifest["kind"], manifest["metadata"]["name"])
        if not is_applied(manifest, found) or drops_owned_fields(manifest, found, children.FIELD_MANAGER):
            to_apply.append(Apply(manifest))
    for version in sorted({state.stable, state.canary} - {None}):  # type: ignore[type-var]
        to_apply += replica_writes(owner, spec, state, version, observed)
    to_apply, refused = _within_limits(to_apply, limits)
    refusals = tuple(dict.fromkeys(str(r) for r in [*policy.spec_refusals(spec, limits), *refused]))
    changing = frozenset(w.manifest["metadata"]["name"] for w in to_apply if w.manifest["kind"] == "Deployment")
    new_status = compute_status(
        owner, spec, status, state, observed, generation, now, changing=changing,
        monitoring=monitored, retraining=retraining.status, refusals=refusals,
    )
    return Plan(
        apply=to_apply,
        delete=stale_children(owner, spec, state, observed),
        status=new_status,
        events=list(state.events) + extra_events,
        state=state,
        changing=changing,
        monitoring=monitored,
        refusals=refusals,
    )


def _within_limits(writes: list[Apply], limits: policy.NamespacePolicy) -> tuple[list[Apply], list[policy.Refusal]]:
    """The writes the tenant policy allows, and the refusals of the others: nothing is written for a
    refused child (not even its replica count)."""
    refused: list[policy.Refusal] = []
    blocked: set[tuple[str, str]] = set()
    for write in writes:
        found = policy.manifest_refusals(write.manifest, limits)
        if found:
            refused += found
            blocked.add((write.manifest["kind"], write.manifest["metadata"]["name"]))
    allowed = [w for w in writes if (w.manifest["kind"], w.manifest["metadata"]["name"]) not in blocked]
    return allowed, refused


def outside_hold(owner: Owner, spec: ModelDeploymentSpec, stable: str, observed: Observed) -> Hold | None:
    """Why a canary of the spec's version must not move forward now, for reasons outside it."""
    if not stable or stable == spec.model.version:
        return None
    stable_spec = version_spec(spec, stable, observed)
    if stable_spec is None:
        return Hold("StableRecordMissing", f"stable {stable} has no revision record (released by an older operator?): "
                    "its children are left as they are and the canary holds; set model.version back to "
                    f"{stable} to record it from the spec")
    found = observed.deployment_of(stable)
    wanted = wanted_replicas(stable_spec)
    if not serves(found, wanted):
        ready = found.ready_replicas if found else 0
        return Hold("StableNotServing", f"stable {stable} is not serving ({ready}/{wanted} replicas ready)", degraded=False)
    if spec.rollout.router.type == "gatewayAPI":
        acceptance = routers.route_acceptance(observed.routes.get(owner.name))
        if acceptance.state == "Refused":
            return Hold("TrafficSplitUnavailable", acceptance.message)
    return None


def lost_stable(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, observed: Observed) -> str:
    """Why status cannot be trusted to name the stable version ("" when it can).

    Status without a stable version is a first release only when nothing but the spec's own
    version was ever released here; otherwise releasing the spec's version (perhaps a blocked
    one) would replace the real stable version and delete its children.
    """
    if status.stable is not None:
        return ""
    remembered = {entry.version for entry in status.history} | ({status.rollout.revision} if status.rollout else set())
    others = sorted((observed.released_versions() | remembered) - {spec.model.version, ""})
    blocked = status.blocked_revision
    if not others and blocked is not None and blocked.version == spec.model.version:
        return f"status.stable is missing and the spec names the blocked {blocked.version}: writing nothing until status.stable is restored"
    if not others:
        return ""
    return (f"status.stable is missing, but versions {', '.join(others[:5])} have children, records or history: "
            "writing nothing until status.stable is restored")


def unreadable_status(previous: ModelDeploymentStatus, problem: str, generation: int, now: str) -> ModelDeploymentStatus:
    """The status of a pass that holds because it cannot trust status: Degraded StatusUnreadable, Ready
    and Progressing Unknown (it cannot know), every other field left as it was."""
    conditions = [
        _condition(previous.conditions, "Ready", "Unknown", "StatusUnreadable", "unknown while status cannot be read", generation, now),
        _condition(previous.conditions, "Progressing", "Unknown", "StatusUnreadable", "holding: nothing is written", generation, now),
        _condition(previous.conditions, "Degraded", "True", "StatusUnreadable", problem, generation, now),
    ]
    others = [c for c in previous.conditions if c.type not in ("Ready", "Progressing", "Degraded")]
    return previous.model_copy(update={"phase": "Degraded", "message": problem[:1024], "conditions": [*conditions, *others]})


def partial_status_document(status: ModelDeploymentStatus) -> dict[str, Any]:
    """Only phase, message and conditions, as a merge patch: the fields that could not be read stay as they are."""
    return status.model_dump(mode="json", by_alias=True, include={"phase", "message", "conditions"})


def previous_state(status: ModelDeploymentStatus) -> RolloutState:
    """The rollout state status shows: what was last applied (used when this pass's traffic write failed)."""
    rollout = status.rollout
    canary = status.canary.version if status.canary else None
    return RolloutState(
        stable=status.stable.version if status.stable else "",
        canary=canary,
        weight=rollout.weight if rollout is not None and rollout.revision == canary else 0,
        rollout=rollout,
        blocked=status.blocked_revision,
        previous=status.previous,
        history=tuple(status.history),
        handled=status.handled_actions,
    )
