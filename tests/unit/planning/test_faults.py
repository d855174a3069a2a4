"""The planner under faults: the stable version is kept from its record, and nothing is promoted without evidence."""

from typing import Any

from modelops.api.v1alpha1 import BlockedRevision, ModelDeploymentStatus
from modelops.planning import reconcile as planning
from modelops.planning import revisions
from tests.unit.planning.helpers import NOW, OWNER, World, at, spec

STABLE = "fraud-detector-2-1-0"
CANARY = "fraud-detector-2-2-0"


def run(world: World, desired: Any, status: ModelDeploymentStatus, now: str = NOW, **kwargs: Any) -> planning.Plan:
    plan = planning.plan(OWNER, desired, status, world.observed(), 1, now, **kwargs)
    world.apply(plan.apply)
    world.delete(plan.delete)
    return plan


def canary_spec(**rollout: Any) -> Any:
    steps = rollout.pop("steps", [{"setWeight": 20}, {"pause": {}}])
    return spec(model={"version": "2.2.0", "uri": "s3://models/fraud/2.2.0/", "format": "sklearn"},
                rollout={"steps": steps, **rollout})


def mid_canary(**rollout: Any) -> tuple[World, ModelDeploymentStatus]:
    """2.1.0 stable with 2 Ready replicas; 2.2.0 a canary held at a manual gate, its pods Ready."""
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready[STABLE] = 2
    status = run(world, spec(), status).status
    status = run(world, canary_spec(**rollout), status).status
    world.ready[CANARY] = 2
    status = run(world, canary_spec(**rollout), status, now=at(1)).status
    assert status.rollout is not None and status.stable is not None and status.stable.version == "2.1.0"
    return world, status


def image_of(world: World, name: str) -> str:
    return str(world.objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]["image"])


def test_a_deleted_stable_deployment_mid_canary_is_recreated_from_its_record_and_the_canary_holds() -> None:
    world, status = mid_canary()
    world.delete([("Deployment", STABLE)])
    plan = run(world, canary_spec(), status, now=at(2))
    assert plan.status.stable is not None and plan.status.stable.version == "2.1.0"  # never "stable directly"
    assert not [e for e in plan.events if e.reason in ("Promoted", "Released")]
    recreated = world.objects[("Deployment", STABLE)]
    env = {e["name"]: e.get("value") for e in recreated["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_URI"] == "s3://models/fraud/2.1.0/" and env["MODEL_VERSION"] == "2.1.0"
    assert recreated["spec"]["replicas"] == 2
    assert plan.status.rollout is not None and "stable 2.1.0 is not serving" in (plan.state.hold_reason or "")
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ready.status == "False"


def test_a_deleted_stable_does_not_release_a_blocked_revision() -> None:
    world, status = mid_canary()
    status = run(world, canary_spec(), status, now=at(2), requested_actions={"abort": "a1"}).status
    assert status.blocked_revision is not None and status.blocked_revision.version == "2.2.0"
    world.delete([("Deployment", STABLE)])
    plan = run(world, canary_spec(), status, now=at(3))
    assert plan.status.stable is not None and plan.status.stable.version == "2.1.0"
    assert plan.status.canary is None or plan.status.canary.weight == 0
    assert ("Deployment", STABLE) in world.objects


def test_out_of_band_edits_of_the_stable_are_reverted_during_a_canary() -> None:
    world, status = mid_canary()
    world.objects[("Deployment", STABLE)]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil.example/x:1"
    world.objects[("Deployment", STABLE)]["spec"]["replicas"] = 0
    plan = run(world, canary_spec(), status, now=at(2))
    assert image_of(world, STABLE) == "registry.example/server:1"
    assert world.objects[("Deployment", STABLE)]["spec"]["replicas"] == 2
    assert sorted(w.label for w in plan.apply) == [f"Deployment {STABLE}", f"Deployment {STABLE} replicas=2"]


def test_after_abort_a_stable_scaled_to_zero_is_scaled_back_and_not_reported_ready() -> None:
    world, status = mid_canary()
    status = run(world, canary_spec(), status, now=at(2), requested_actions={"abort": "a1"}).status
    world.objects[("Deployment", STABLE)]["spec"]["replicas"] = 0
    world.ready[STABLE] = 0
    plan = run(world, canary_spec(), status, now=at(3))
    assert world.objects[("Deployment", STABLE)]["spec"]["replicas"] == 2
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ReplicasNotReady")
    assert plan.status.stable is not None and plan.status.stable.replicas == 2


def test_a_changed_spec_runtime_for_the_canary_does_not_touch_the_stable() -> None:
    world, status = mid_canary()
    edited = canary_spec().model_copy(update={"runtime": canary_spec().runtime.model_copy(update={"image": "registry.example/server:2"})})
    run(world, edited, status, now=at(2))
    assert image_of(world, STABLE) == "registry.example/server:1"
    assert image_of(world, CANARY) == "registry.example/server:2"
    records = world.observed().records
    assert records["2.1.0"].runtime.image == "registry.example/server:1"
    assert records["2.2.0"].runtime.image == "registry.example/server:2"
    assert len([name for (kind, name) in world.objects if kind == revisions.KIND]) == 3  # the old 2.2.0 one goes next pass
    run(world, edited, status, now=at(3))
    assert len([name for (kind, name) in world.objects if kind == revisions.KIND]) == 2


def test_a_stable_without_a_record_holds_the_canary_and_keeps_its_children() -> None:
    world, status = mid_canary()
    world.delete([(revisions.KIND, revisions.record_name(OWNER, revisions.record_of(spec())))])
    world.objects[("Deployment", STABLE)]["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    plan = run(world, canary_spec(), status, now=at(2), requested_actions={"resume": "r1"})
    assert image_of(world, STABLE) == "someone/else:1"  # left as it is: nothing to render it from
    assert plan.status.rollout is not None and plan.status.stable is not None and plan.status.stable.version == "2.1.0"
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "StableRecordMissing")


def test_a_status_without_stable_beside_other_released_versions_writes_nothing() -> None:
    world, status = mid_canary()
    lost = status.model_copy(update={"stable": None, "blocked_revision": BlockedRevision(version="2.2.0", reason="x", at=NOW)})
    plan = planning.plan(OWNER, canary_spec(), lost, world.observed(), 1, at(2))
    assert plan.apply == [] and plan.delete == [] and plan.events == []
    assert plan.unreadable
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert degraded.reason == "StatusUnreadable" and "2.1.0" in degraded.message
    assert set(planning.partial_status_document(plan.status)) == {"phase", "message", "conditions"}


def test_a_status_without_stable_and_only_the_specs_version_is_a_first_release_again() -> None:
    world = World()
    first = run(world, spec(), ModelDeploymentStatus())
    again = planning.plan(OWNER, spec(), ModelDeploymentStatus(), world.observed(), 1, at(1))
    assert not again.unreadable
    assert again.status.stable is not None and again.status.stable.version == "2.1.0"
    assert first.status.stable == again.status.stable


GATEWAY = {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}
TIMED_STEPS = [{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {"duration": "1h"}}]


def test_a_route_a_gateway_refused_holds_the_canary() -> None:
    world, status = mid_canary(steps=TIMED_STEPS, router=GATEWAY)
    assert status.rollout is not None and status.rollout.step == 1
    route = world.objects[("HTTPRoute", "fraud-detector")]
    route["status"] = {"parents": [{"parentRef": {"name": "public"}, "conditions": [
        {"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners", "message": "no listener allows it"}]}]}
    plan = run(world, canary_spec(steps=TIMED_STEPS, router=GATEWAY), status, now=at(60))
    assert plan.status.rollout is not None and plan.status.rollout.step == 1  # the 30 s pause is over, yet it holds
    traffic = next(c for c in plan.status.conditions if c.type == "TrafficSplit")
    assert (traffic.status, traffic.reason) == ("False", "TrafficSplitUnavailable")
    assert "NotAllowedByListeners" in traffic.message
    assert plan.status.phase == "Degraded"
    del route["status"]
    moved = run(world, canary_spec(steps=TIMED_STEPS, router=GATEWAY), plan.status, now=at(61))
    assert moved.status.rollout is not None and moved.status.rollout.step == 3


def test_a_route_no_gateway_reported_on_is_unconfirmed_without_holding() -> None:
    world, status = mid_canary(steps=TIMED_STEPS, router=GATEWAY)
    plan = run(world, canary_spec(steps=TIMED_STEPS, router=GATEWAY), status, now=at(60))
    assert plan.status.rollout is not None and plan.status.rollout.step == 3
    traffic = next(c for c in plan.status.conditions if c.type == "TrafficSplit")
    assert (traffic.status, traffic.reason) == ("Unknown", "Unconfirmed")


def test_a_canary_at_a_manual_gate_writes_nothing_pass_after_pass() -> None:
    world, status = mid_canary()
    held = run(world, canary_spec(), status, now=at(2)).status
    assert held.rollout is not None and held.rollout.held_since is not None
    for seconds in (30, 600, 3600):
        plan = run(world, canary_spec(), held, now=at(seconds))
        assert plan.apply == [] and plan.delete == [] and plan.events == []
        assert plan.status == held


def test_time_held_at_a_manual_gate_does_not_count_against_the_progress_deadline() -> None:
    world, status = mid_canary(progressDeadline="10m", steps=[{"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1h"}}])
    held = run(world, canary_spec(progressDeadline="10m", steps=[{"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1h"}}]),
               status, now=at(2)).status
    desired = canary_spec(progressDeadline="10m", steps=[{"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1h"}}])
    resumed = run(world, desired, held, now=at(7200), requested_actions={"resume": "r1"})
    assert resumed.status.rollout is not None, "resumed after 2 h at a manual gate must not be rolled back"
    assert resumed.status.blocked_revision is None
