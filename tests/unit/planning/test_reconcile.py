"""The pure reconciliation pass: version hand-over, minimal writes, status and its stability."""

from modelops.api.v1alpha1 import ModelDeploymentStatus
from modelops.planning import reconcile as planning
from modelops.planning import revisions
from tests.unit.planning.helpers import LATER, NOW, OWNER, World, spec


def record_name(version: str, uri: str) -> str:
    return revisions.record_name(OWNER, revisions.record_of(spec(model={"version": version, "uri": uri})))


def name_of(write: planning.Apply) -> str:
    return f"{write.manifest['kind']} {write.manifest['metadata']['name']}"


def run(world: World, desired_spec, status: ModelDeploymentStatus, now: str = NOW, generation: int = 1) -> planning.Plan:
    plan = planning.plan(OWNER, desired_spec, status, world.observed(), generation, now)
    world.apply(plan.apply)
    world.delete(plan.delete)
    return plan


def test_first_pass_creates_the_children_and_makes_the_first_version_stable() -> None:
    world = World()
    plan = run(world, spec(), ModelDeploymentStatus())
    assert sorted((name_of(write), write.field_manager) for write in plan.apply) == [
        ("ControllerRevision fraud-detector-2-1-0-" + revisions.record_hash(revisions.record_of(spec())), "modelops"),
        ("Deployment fraud-detector-2-1-0", "modelops"),
        ("Deployment fraud-detector-2-1-0", "modelops-replicas"),
        ("Service fraud-detector", "modelops"),
        ("Service fraud-detector-2-1-0", "modelops"),
    ]
    replicas = next(w for w in plan.apply if w.field_manager == "modelops-replicas")
    assert replicas.manifest["spec"] == {"replicas": 2}
    main = next(w for w in plan.apply if name_of(w).startswith("Deployment") and w.field_manager == "modelops")
    assert "replicas" not in main.manifest["spec"]  # the main field manager never owns replicas
    assert plan.delete == []
    assert plan.status.stable is not None and plan.status.stable.version == "2.1.0"
    assert plan.status.canary is None
    assert plan.status.phase == "Pending"
    assert [(h.version, h.outcome) for h in plan.status.history] == [("2.1.0", "Promoted")]
    assert [e.reason for e in plan.events] == ["Released"]


def test_ready_replicas_make_it_healthy_and_then_nothing_is_written() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    plan = run(world, spec(), status, now=LATER)
    assert plan.apply == []
    assert plan.status.phase == "Healthy"
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.message) == ("True", "AllReplicasReady", "2/2 replicas of fraud-detector-2-1-0 ready")
    assert ready.last_transition_time == LATER
    again = run(world, spec(), plan.status, now="2026-11-26T13:00:00Z")
    assert again.apply == [] and again.delete == [] and again.events == []
    assert again.status == plan.status  # identical, including lastTransitionTime: no status write


def test_partial_readiness_is_reported() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 1
    plan = run(world, spec(), status)
    assert plan.status.message == "1/2 replicas of fraud-detector-2-1-0 ready"
    assert plan.status.phase == "Progressing"
    assert next(c for c in plan.status.conditions if c.type == "Ready").status == "False"


def test_autoscaling_creates_an_hpa_and_starts_at_min_replicas_under_a_separate_manager() -> None:
    world = World()
    autoscaled = spec(scaling={"minReplicas": 3, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60})
    plan = run(world, autoscaled, ModelDeploymentStatus())
    managers = {(name_of(write), write.field_manager) for write in plan.apply}
    assert ("Deployment fraud-detector-2-1-0", "modelops-replicas") in managers
    assert ("Deployment fraud-detector-2-1-0", "modelops") in managers
    bootstrap = next(w for w in plan.apply if w.field_manager == "modelops-replicas")
    main = next(w for w in plan.apply if w.label == "Deployment fraud-detector-2-1-0" and w.field_manager == "modelops")
    assert bootstrap.manifest["spec"]["replicas"] == 3
    assert "replicas" not in main.manifest["spec"]
    world.objects[("Deployment", "fraud-detector-2-1-0")]["spec"]["replicas"] = 5  # the HPA scaled it
    assert not [w for w in run(world, autoscaled, plan.status).apply if w.field_manager == "modelops-replicas"]
    hpa = next(w.manifest for w in plan.apply if w.manifest["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


def test_autoscaled_version_is_not_ready_below_min_replicas() -> None:
    world = World()
    autoscaled = spec(scaling={"minReplicas": 3, "maxReplicas": 6})
    status = run(world, autoscaled, ModelDeploymentStatus()).status
    world.objects[("Deployment", "fraud-detector-2-1-0")]["spec"]["replicas"] = 1  # as if the HPA had not acted yet
    world.ready["fraud-detector-2-1-0"] = 1
    plan = run(world, autoscaled, status)
    assert plan.status.stable is not None and plan.status.stable.replicas == 3
    assert plan.status.phase != "Healthy"


def test_turning_autoscaling_off_deletes_the_hpa() -> None:
    world = World()
    status = run(world, spec(scaling={"maxReplicas": 4}), ModelDeploymentStatus()).status
    plan = run(world, spec(scaling={"replicas": 2}), status)
    assert ("HorizontalPodAutoscaler", "fraud-detector-2-1-0") in plan.delete


def test_new_version_without_steps_starts_at_full_size_beside_stable_then_replaces_it() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    status = run(world, spec(), status).status
    new = spec(model={"version": "2.2.0", "uri": "s3://models/fraud/2.2.0/"})

    rolling = run(world, new, status, now=LATER, generation=2)
    assert sorted((name_of(w), w.field_manager) for w in rolling.apply) == [
        ("ControllerRevision " + record_name("2.2.0", "s3://models/fraud/2.2.0/"), "modelops"),
        ("Deployment fraud-detector-2-2-0", "modelops"),
        ("Deployment fraud-detector-2-2-0", "modelops-replicas"),
        ("Service fraud-detector-2-2-0", "modelops"),
    ]
    assert rolling.status.stable is not None and rolling.status.stable.version == "2.1.0"
    assert rolling.status.canary is not None and rolling.status.canary.version == "2.2.0"
    assert rolling.status.phase == "Progressing"
    canary_deployment = world.objects[("Deployment", "fraud-detector-2-2-0")]
    assert canary_deployment["metadata"]["labels"]["modelops.dev/track"] == "canary"
    assert world.objects[("Service", "fraud-detector")]["spec"]["selector"]["modelops.dev/version"] == "2.1.0"
    # No steps: blue/green. The new version starts at full size and gets no traffic until promotion.
    assert [w.manifest["spec"] for w in rolling.apply if w.field_manager == "modelops-replicas"] == [{"replicas": 2}]

    world.ready["fraud-detector-2-2-0"] = 1
    half = run(world, new, rolling.status, now=LATER, generation=2)
    assert half.status.stable is not None and half.status.stable.version == "2.1.0"
    assert "waiting for every replica of 2.2.0 to be Ready" in half.status.message

    world.ready["fraud-detector-2-2-0"] = 2
    promoted = run(world, new, half.status, now=LATER, generation=2)
    assert promoted.status.stable is not None and promoted.status.stable.version == "2.2.0"
    assert promoted.status.canary is None
    assert [e.reason for e in promoted.events] == ["Promoted"]
    assert world.objects[("Service", "fraud-detector")]["spec"]["selector"]["modelops.dev/version"] == "2.2.0"
    assert promoted.status.previous is not None and promoted.status.previous.version == "2.1.0"
    assert promoted.delete == []  # the previous stable keeps running for scaleDownDelay (30s)
    # The release track in the pod template never changes, so promotion restarts no pod.
    template_env = world.objects[("Deployment", "fraud-detector-2-2-0")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELOPS_TRACK", "value": "canary"} in template_env
    assert world.objects[("Deployment", "fraud-detector-2-2-0")]["metadata"]["labels"]["modelops.dev/track"] == "stable"
    assert [h.version for h in promoted.status.history] == ["2.1.0", "2.2.0"]

    later = run(world, new, promoted.status, now="2026-11-26T12:06:00Z", generation=2)
    assert sorted(later.delete) == [
        ("ControllerRevision", revisions.record_name(OWNER, revisions.record_of(spec()))),
        ("Deployment", "fraud-detector-2-1-0"),
        ("Service", "fraud-detector-2-1-0"),
    ]
    assert later.status.previous is None


def test_a_superseded_version_is_deleted() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    status = run(world, spec(), status).status
    status = run(world, spec(model={"version": "2.2.0", "uri": "s3://m/2.2.0/"}), status).status
    plan = run(world, spec(model={"version": "2.3.0", "uri": "s3://m/2.3.0/"}), status)
    assert sorted(plan.delete) == [
        ("ControllerRevision", record_name("2.2.0", "s3://m/2.2.0/")),
        ("Deployment", "fraud-detector-2-2-0"),
        ("Service", "fraud-detector-2-2-0"),
    ]
    assert plan.status.canary is not None and plan.status.canary.version == "2.3.0"
    assert [(h.version, h.outcome) for h in plan.status.history][-1] == ("2.2.0", "Superseded")


def test_history_is_bounded_by_the_revision_history_limit() -> None:
    world = World()
    status = ModelDeploymentStatus()
    for minor in range(6):
        version = f"2.{minor}.0"
        current = spec(model={"version": version, "uri": f"s3://m/{version}/"}, revisionHistoryLimit=3)
        status = run(world, current, status).status
        world.ready[f"fraud-detector-2-{minor}-0"] = 2
        status = run(world, current, status).status
    assert [h.version for h in status.history] == ["2.3.0", "2.4.0", "2.5.0"]
    assert {h.outcome for h in status.history} == {"Promoted"}


def test_a_progress_deadline_exceeded_marks_it_degraded() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.progress_deadline_exceeded.add("fraud-detector-2-1-0")
    plan = run(world, spec(), status)
    assert plan.status.phase == "Degraded"
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ProgressDeadlineExceeded")


def test_apply_errors_are_reported_as_degraded() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    state = planning.plan(OWNER, spec(), status, world.observed(), 1, NOW).state
    degraded = planning.compute_status(OWNER, spec(), status, state, world.observed(), 1, NOW, ["Service x: forbidden"])
    assert degraded.phase == "Degraded"
    assert degraded.message == "Service x: forbidden"


def test_a_stable_deployment_deleted_by_hand_is_recreated() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.delete([("Deployment", "fraud-detector-2-1-0")])
    plan = run(world, spec(), status)
    assert [name_of(w) for w in plan.apply] == ["Deployment fraud-detector-2-1-0", "Deployment fraud-detector-2-1-0"]
    assert plan.events == []  # not a new release


def _with_retraining(**extra: object):  # type: ignore[no-untyped-def]
    return spec(retraining={"jobTemplate": {"template": {"spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}}}, **extra)


def test_modelops_retrain_creates_one_job_and_is_carried_out_once() -> None:
    world = World()
    status = run(world, _with_retraining(), ModelDeploymentStatus()).status
    plan = planning.plan(OWNER, _with_retraining(), status, world.observed(), 1, NOW, requested_actions={"retrain": "t1"})
    jobs = [w for w in plan.apply if w.manifest["kind"] == "Job"]
    assert [w.manifest["metadata"]["name"] for w in jobs] == ["fraud-detector-retrain-1"]
    assert plan.status.handled_actions.retrain == "t1"
    assert plan.status.retraining is not None and plan.status.retraining.last_run is not None
    assert plan.status.retraining.last_run.trigger == "requested with `modelops retrain`"
    again = planning.plan(OWNER, _with_retraining(), plan.status, world.observed(), 1, NOW, requested_actions={"retrain": "t1"})
    assert not [w for w in again.apply if w.manifest["kind"] == "Job"]
    assert not [e for e in again.events if e.reason == "RetrainRefused"]  # already carried out: nothing to say


def test_a_refused_modelops_retrain_says_why_instead_of_being_swallowed() -> None:
    world = World()
    status = run(world, _with_retraining(), ModelDeploymentStatus()).status
    first = planning.plan(OWNER, _with_retraining(), status, world.observed(), 1, NOW, requested_actions={"retrain": "t1"})
    job = planning.ObservedJob("fraud-detector-retrain-1", succeeded=False, failed=False)
    observed = world.observed()
    observed.jobs["fraud-detector-retrain-1"] = job
    running = planning.plan(OWNER, _with_retraining(), first.status, observed, 1, NOW, requested_actions={"retrain": "t2"})
    assert [e.message for e in running.events if e.reason == "RetrainRefused"] == [
        "`modelops retrain` refused: fraud-detector-retrain-1 is still running"]
    assert running.status.handled_actions.retrain == "t2"
    gone = planning.plan(OWNER, _with_retraining(), first.status, world.observed(), 1, NOW, requested_actions={"retrain": "t2"})
    assert [e.message for e in gone.events if e.reason == "RetrainRefused"] == [
        "`modelops retrain` refused: cooling down until 2026-11-26T18:00:00Z (spec.retraining.cooldown)"]
    unset = planning.plan(OWNER, spec(), status, world.observed(), 1, NOW, requested_actions={"retrain": "t3"})
    assert [e.message for e in unset.events if e.reason == "RetrainRefused"] == ["`modelops retrain` refused: spec.retraining is not set"]


def test_a_retraining_job_is_told_the_version_in_production_not_a_blocked_one_the_spec_names() -> None:
    from modelops.api.v1alpha1 import BlockedRevision

    world = World()
    status = run(world, _with_retraining(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    status = run(world, _with_retraining(), status).status
    assert status.stable is not None and status.stable.version == "2.1.0"
    blocked = _with_retraining(model={"version": "3.0.0", "uri": "s3://models/fraud/3.0.0/", "format": "sklearn"})
    status = status.model_copy(update={"blocked_revision": BlockedRevision(version="3.0.0", reason="latency", at=NOW)})
    plan = planning.plan(OWNER, blocked, status, world.observed(), 2, NOW, requested_actions={"retrain": "t1"})
    [job] = [w.manifest for w in plan.apply if w.manifest["kind"] == "Job"]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MODELOPS_CURRENT_VERSION"], env["MODELOPS_CURRENT_URI"]) == ("2.1.0", "s3://models/fraud/2.1.0/")


def test_a_monitoring_rollback_restores_the_previous_stable_and_blocks_the_revision() -> None:
    from modelops.planning.analysis import Evaluation

    monitored = spec(monitoring={"interval": "10s", "checks": [{"name": "latency", "type": "latencyP99", "max": 0.5, "for": "0s", "action": "rollback"}]})
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    status = run(world, spec(), status).status
    new = monitored.model_copy(update={"model": monitored.model.model_copy(update={"version": "2.2.0", "uri": "s3://m/2.2.0/"})})
    status = run(world, new, status).status
    world.ready["fraud-detector-2-2-0"] = 2
    status = run(world, new, status).status
    assert status.stable is not None and status.stable.version == "2.2.0"
    assert status.previous is not None and status.previous.scale_down_at == "2026-11-26T12:30:00Z"  # rollbackWindow, not 30s

    slow = {"latency": Evaluation("Fail", 0.9, None, "0.9 > max 0.5")}
    plan = planning.plan(OWNER, new, status, world.observed(), 2, LATER, monitoring_evaluations=slow)
    world.apply(plan.apply)
    assert plan.status.stable is not None and plan.status.stable.version == "2.1.0"
    assert plan.status.blocked_revision is not None and plan.status.blocked_revision.version == "2.2.0"
    assert "monitoring: check latency" in plan.status.blocked_revision.reason
    assert world.objects[("Service", "fraud-detector")]["spec"]["selector"]["modelops.dev/version"] == "2.1.0"
    assert plan.status.phase == "Degraded"


def test_the_stable_service_is_repaired_during_a_canary() -> None:
    world = World()
    status = run(world, spec(), ModelDeploymentStatus()).status
    world.ready["fraud-detector-2-1-0"] = 2
    status = run(world, spec(), status).status
    new = spec(model={"version": "2.2.0", "uri": "s3://m/2.2.0/"}, rollout={"steps": [{"pause": {}}]})
    status = run(world, new, status).status
    assert run(world, new, status).apply == []  # nothing to repair: no write
    world.delete([("Service", "fraud-detector-2-1-0")])
    plan = run(world, new, status)
    assert [name_of(w) for w in plan.apply] == ["Service fraud-detector-2-1-0"]
    assert world.objects[("Service", "fraud-detector-2-1-0")]["metadata"]["labels"]["modelops.dev/track"] == "stable"
