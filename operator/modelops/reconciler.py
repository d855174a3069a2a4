"""One reconciliation pass with I/O: observe, plan (pure), write only what the plan says.

Used by every trigger (a ModelDeployment event, a child's event, the periodic pass);
passes are idempotent, so running one twice in a row writes nothing the second time.
No kopf here: the handlers in ``modelops.handlers`` call :func:`reconcile`.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from pydantic import ValidationError

from modelops.api.v1alpha1 import NOTIFY_SECRET, Condition, ModelDeploymentSpec, ModelDeploymentStatus, NotifySpec, RetrainingRun, Track
from modelops.kube.api import ApiError, ClusterApi
from modelops.planning import reconcile as planning
from modelops.planning.compare import drops_owned_fields, is_applied
from modelops.planning import policy, revisions
from modelops import notify
from modelops.planning.analysis import Evaluation
from modelops.planning.monitoring import ObservedJob
from modelops.planning.children import ANNOTATION_RELEASE_TRACK, LABEL_MODEL_VERSION, Owner
from modelops.planning.actions import requested_actions, server_order

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a pass did, for logs, events and tests."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    errors: list[str] = field(default_factory=list)
    events: list[planning.Event] = field(default_factory=list)
    canary_weight: int | None = None  # the effective canary weight after the pass (0 without a canary)
    new_failure: bool = False  # errors whose Degraded message differs from the one already in status

    @property
    def wrote(self) -> bool:
        return bool(self.applied or self.deleted or self.status_written)


def _int(value: Any) -> int:
    return int(value or 0)


def observe_deployment(item: Mapping[str, Any]) -> planning.ObservedDeployment:
    metadata, spec, status = item["metadata"], item.get("spec", {}), item.get("status", {})
    conditions = status.get("conditions") or []
    deadline = any(
        c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )
    release_track = (metadata.get("annotations") or {}).get(ANNOTATION_RELEASE_TRACK)
    return planning.ObservedDeployment(
        name=metadata["name"],
        version=(metadata.get("labels") or {}).get(LABEL_MODEL_VERSION, ""),
        release_track=cast(Track, release_track) if release_track in ("stable", "canary") else None,
        replicas=_int(spec.get("replicas", 1)),
        ready_replicas=_int(status.get("readyReplicas")),
        updated_replicas=_int(status.get("updatedReplicas")),
        total_replicas=_int(status.get("replicas")),
        generation=_int(metadata.get("generation")),
        observed_generation=_int(status.get("observedGeneration")),
        progress_deadline_exceeded=deadline,
        manifest=item,
    )


def observe_job(item: Mapping[str, Any], message: str | None) -> ObservedJob:
    conditions = (item.get("status") or {}).get("conditions") or []
    done = {c.get("type"): c for c in conditions if c.get("status") == "True"}
    failed = done.get("Failed")
    complete = done.get("Complete") or done.get("SuccessCriteriaMet")
    finished = (failed or complete or {}).get("lastTransitionTime")
    reason = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ") if failed else ""
    return ObservedJob(item["metadata"]["name"], succeeded=complete is not None and failed is None, failed=failed is not None,
                       reason=reason, finished_at=finished, termination_message=message, uid=str(item["metadata"].get("uid", "")))


def _wants_message(status: ModelDeploymentStatus, job: Mapping[str, Any]) -> bool:
    """Read a Job's termination message only while its run waits for it (never in steady state)."""
    run = status.retraining.last_run if status.retraining else None
    return run is not None and run.job == job["metadata"]["name"] and run.outcome == "Running"


def _without_pods(job: Mapping[str, Any]) -> bool:
    """An unfinished Job that has no pod at all (none active, none ended): maybe none could be created."""
    status = job.get("status") or {}
    ended = any(c.get("status") == "True" for c in status.get("conditions") or [])
    return not ended and not any(_int(status.get(key)) for key in ("active", "succeeded", "failed", "terminating"))


def observe(cluster: ClusterApi, owner: Owner, status: ModelDeploymentStatus | None = None) -> planning.Observed:
    found = cluster.list_children(owner.namespace, owner.name, owner.uid)
    jobs = {}
    for job in found.get("Job", []):
        observed_job = observe_job(job, None)
        if status is not None and observed_job.succeeded and _wants_message(status, job):
            messages = cluster.termination_messages(owner.namespace, observed_job.name, observed_job.uid)
            observed_job = replace(observed_job, termination_message=messages[0] if len(messages) == 1 else None,
                                   conflicting_messages=len(messages) if len(messages) > 1 else 0)
        elif status is not None and _without_pods(job) and _wants_message(status, job):
            failure = cluster.pod_creation_failure(owner.namespace, observed_job.name)
            if failure is not None:
                observed_job = replace(observed_job, failed=True, reason=f"FailedCreate: {failure}")
        jobs[observed_job.name] = observed_job
    versions: dict[tuple[str, str], str] = {}
    for kind, items in found.items():
        for item in items:
            version = (item["metadata"].get("labels") or {}).get(LABEL_MODEL_VERSION)
            if version:
                versions[(kind, item["metadata"]["name"])] = version
    return planning.Observed(
        revisions={r["metadata"]["name"]: revisions.observe_revision(r) for r in found.get(revisions.KIND, [])},
        deployments={d["metadata"]["name"]: observe_deployment(d) for d in found.get("Deployment", [])},
        services={s["metadata"]["name"]: s for s in found.get("Service", [])},
        autoscalers={h["metadata"]["name"]: h for h in found.get("HorizontalPodAutoscaler", [])},
        routes={r["metadata"]["name"]: r for r in found.get("HTTPRoute", [])},
        jobs=jobs,
        versions_by_child=versions,
    )


def status_document(status: ModelDeploymentStatus) -> dict[str, Any]:
    """The status as a JSON merge patch: None values are sent as null so stale fields are removed."""
    return status.model_dump(mode="json", by_alias=True)


MAX_FIELDS_NAMED = 5


def _field_path(location: tuple[int | str, ...]) -> str:
    """``("retraining", "lastRun", "candidate", "metrics", "auc")`` -> ``status.retraining.lastRun.candidate.metrics.auc``."""
    return "status" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)[:256]


def read_status(body: Mapping[str, Any]) -> tuple[ModelDeploymentStatus, list[str]]:
    """The status, read field by field: every top-level field the models accept is kept, and the
    paths of the ones they refuse are returned (the pass then holds: see ``reconcile``)."""
    raw = body.get("status") or {}
    if not isinstance(raw, Mapping):
        return ModelDeploymentStatus(), ["status"]
    try:
        return ModelDeploymentStatus.model_validate(raw), []
    except ValidationError as error:
        problems = error.errors()
    refused = {problem["loc"][0] for problem in problems if problem["loc"]}
    kept = {key: value for key, value in raw.items() if key not in refused}
    try:
        status = ModelDeploymentStatus.model_validate(kept)
    except ValidationError:
        status = ModelDeploymentStatus()
    named = sorted({f"{_field_path(problem['loc'])} ({problem['msg'][:120]})" for problem in problems})
    return status, named[:MAX_FIELDS_NAMED]


def current_status(body: Mapping[str, Any]) -> ModelDeploymentStatus:
    """The fields of status that can be read (see ``read_status``)."""
    return read_status(body)[0]


def _invalid_spec_status(previous: ModelDeploymentStatus, error: ValidationError, generation: int, now: str) -> ModelDeploymentStatus:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = f"spec.{location}: {first['msg']}"
    condition = Condition(
        type="Degraded", status="True", reason="InvalidSpec", message=message, last_transition_time=now,
        observed_generation=generation,
    )
    others = [c for c in previous.conditions if c.type != "Degraded"]
    return previous.model_copy(
        update={"phase": "Degraded", "message": message, "observed_generation": generation, "conditions": [*others, condition]}
    )


def _degraded_message(status: ModelDeploymentStatus) -> str | None:
    return next((c.message for c in status.conditions if c.type == "Degraded" and c.status == "True"), None)


def _traffic_last(writes: list[planning.Apply]) -> list[planning.Apply]:
    """Traffic is moved after everything it may point at exists: other children, then the HTTPRoute
    (the traffic write most likely to be refused: a missing CRD, another controller's field), then
    the entry Service. A traffic write after one that failed is not made (see ``_apply_writes``)."""
    def rank(write: planning.Apply) -> int:
        return 0 if not write.traffic else (1 if write.manifest["kind"] == "HTTPRoute" else 2)

    return sorted(writes, key=rank)


def _refuse_foreign(cluster: ClusterApi, owner: Owner, write: planning.Apply) -> None:
    """Before creating a child, make sure no object of that name belongs to someone else: never take one over."""
    metadata = write.manifest["metadata"]
    controllers = cluster.owner_uids(owner.namespace, write.manifest["kind"], metadata["name"])
    if controllers is not None and owner.uid not in controllers:
        raise ApiError(
            409,
            f"{write.label} already exists and is not owned by ModelDeployment {owner.name}: rename or delete it",
        )


class Notifier(Protocol):
    """Where passes hand candidates to announce (``notify.Outbox``): never the network itself."""

    def submit(self, item: notify.Notification) -> None: ...

    def result(self, namespace: str, name: str, job: str) -> bool | None: ...

    def settle(self, namespace: str, name: str, job: str) -> None: ...


def _run_to_announce(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> RetrainingRun | None:
    """The last run, while its candidate waits to be announced (notified not yet recorded)."""
    run = status.retraining.last_run if status.retraining else None
    if run is None or run.candidate is None or run.outcome != "Succeeded" or run.notified is not None:
        return None
    return run if spec.retraining is not None and spec.retraining.notify is not None else None


def _notify_url(cluster: ClusterApi, owner: Owner, target: NotifySpec) -> str | None:
    """The webhook URL: from the spec, or from the namespace's Secret modelops-notify (None when missing)."""
    if target.url_from is None:
        return target.url
    return cluster.notify_url(owner.namespace, target.url_from.secret_key_ref.key)


def _with_notification(
    cluster: ClusterApi, status: ModelDeploymentStatus, spec: ModelDeploymentSpec, owner: Owner, notifier: Notifier | None
) -> tuple[ModelDeploymentStatus, str | None, list[planning.Event]]:
    """Folds a finished delivery into ``lastRun.notified``, or submits the candidate to the outbox.

    Returns the status, the Job whose outcome was folded in (to settle once status is written), and
    events. The delivery itself happens outside the pass, in the outbox; a pass never waits for it.
    The URL appears in no status, event or log line.
    """
    run = _run_to_announce(spec, status)
    if run is None or notifier is None or status.retraining is None:
        return status, None, []
    assert spec.retraining is not None and spec.retraining.notify is not None
    events: list[planning.Event] = []
    delivered = notifier.result(owner.namespace, owner.name, run.job)
    if delivered is None:
        url = _notify_url(cluster, owner, spec.retraining.notify)
        if url is not None:
            notifier.submit(notify.notification(url, owner.namespace, owner.name, run))
            return status, None, []
        delivered = False
        key = spec.retraining.notify.url_from.secret_key_ref.key if spec.retraining.notify.url_from else ""
        events.append(planning.Event("Warning", "NotifyFailed", f"{run.candidate.version if run.candidate else run.job} not announced: "
                                     f"Secret {NOTIFY_SECRET} has no key {key!r} in namespace {owner.namespace}"))
    last_run = run.model_copy(update={"notified": delivered})
    retraining = status.retraining.model_copy(update={"last_run": last_run})
    return status.model_copy(update={"retraining": retraining}), (run.job if not events else None), events


def reconcile(
    cluster: ClusterApi,
    body: Mapping[str, Any],
    now: str,
    evaluations: Mapping[str, Evaluation] | None = None,
    monitoring_evaluations: Mapping[str, Evaluation] | None = None,
    notifier: Notifier | None = None,
) -> Outcome:
    """Brings one ModelDeployment's children and status to the desired state; writes nothing if already there.

    The status patch carries the body's ``resourceVersion``: when someone wrote the object since
    it was read, the apiserver answers 409 and :class:`ApiError` propagates, so the caller
    re-reads the object and runs the pass again.
    """
    metadata = body["metadata"]
    resource_version = metadata.get("resourceVersion")
    owner = Owner(name=metadata["name"], namespace=metadata["namespace"], uid=metadata["uid"])
    generation = _int(metadata.get("generation"))
    previous, unreadable = read_status(body)
    outcome = Outcome()
    if unreadable:
        problem = f"cannot read {'; '.join(unreadable)}: holding, nothing is written until status is fixed"
        return _hold_unreadable(cluster, owner, previous, planning.unreadable_status(previous, problem, generation, now), outcome,
                                resource_version)
    try:
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        # The CRD schema should have refused this; it happens only with an outdated CRD installed.
        status = _invalid_spec_status(previous, error, generation, now)
        if status != previous:
            cluster.patch_status(owner.namespace, owner.name, status_document(status), resource_version=resource_version)
            outcome.status_written = True
        outcome.errors.append(status.message or "invalid spec")
        return outcome

    observed = observe(cluster, owner, previous)
    requested = requested_actions(metadata)
    plan = planning.plan(
        owner, spec, previous, observed, generation, now,
        evaluations=evaluations, monitoring_evaluations=monitoring_evaluations,
        requested_actions=requested,
        action_order=server_order(metadata, requested),
        namespace_policy=namespace_policy(cluster, owner.namespace, spec),
    )
    if plan.unreadable:
        return _hold_unreadable(cluster, owner, previous, plan.status, outcome, resource_version)
    previous_split = {} if previous.stable is None else {
        (m["kind"], m["metadata"]["name"]): m for m in planning.traffic_manifests(owner, spec, planning.previous_state(previous))}
    traffic_error = _apply_writes(cluster, owner, plan, observed, outcome, previous_split)
    if not traffic_error:
        _delete_stale(cluster, owner, plan, outcome)
    else:
        _restore_split(cluster, plan, outcome, previous_split)

    status = plan.status
    if traffic_error and previous.stable is not None:
        # Traffic first: the rollout's new state counts only once its split is applied. Status keeps
        # the state (and weights) last applied; this pass's transitions did not happen, and the
        # next pass tries again.
        status = planning.compute_status(
            owner, spec, previous, planning.previous_state(previous), observed, generation, now, outcome.errors,
            plan.changing, retraining=previous.retraining, traffic_error=traffic_error, refusals=plan.refusals,
        )
    elif outcome.errors:
        # (A traffic error here is a first release's: there is no earlier split to keep, but the
        # TrafficSplit condition still says the split was not written.)
        status = planning.compute_status(
            owner, spec, previous, plan.state, observed, generation, now, outcome.errors, plan.changing,
            monitoring=plan.monitoring, retraining=plan.status.retraining, traffic_error=traffic_error, refusals=plan.refusals,
        )
    status, announced_job, notify_events = _with_notification(cluster, status, spec, owner, notifier)
    if status != previous:
        cluster.patch_status(owner.namespace, owner.name, status_document(status), resource_version=resource_version)
        outcome.status_written = True
    if announced_job is not None and notifier is not None:
        notifier.settle(owner.namespace, owner.name, announced_job)
    outcome.new_failure = bool(outcome.errors) and _degraded_message(status) != _degraded_message(previous)
    outcome.events = ([] if traffic_error else plan.events) + notify_events
    outcome.canary_weight = (status.canary.weight or 0) if status.canary else 0
    return outcome


def namespace_policy(cluster: ClusterApi, namespace: str, spec: ModelDeploymentSpec) -> policy.NamespacePolicy:
    """The admin's limits for the namespace; read only when the spec asks for more than the strictest
    limits allow (so most passes make no extra request). Fails closed when the namespace cannot be read."""
    if not policy.needs_namespace(spec):
        return policy.NamespacePolicy(namespace)
    try:
        found = cluster.get_namespace(namespace)
    except ApiError as error:
        return policy.NamespacePolicy.unknown(namespace, error.message)
    if found is None:
        return policy.NamespacePolicy.unknown(namespace, "not found")
    return policy.NamespacePolicy.from_namespace(found)


def _blocked_by(write: planning.Apply, failed_services: list[str], not_moved: list[str],
                previous_split: Mapping[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The failed writes that keep ``write`` from moving traffic as planned (empty: nothing does)."""
    if not write.traffic:
        return []
    if write.manifest["kind"] == "HTTPRoute":
        return failed_services  # never route to a Service that is not ours or not as planned
    key = (write.manifest["kind"], write.manifest["metadata"]["name"])
    return not_moved if key in previous_split else []  # never move half a split (a first release has none)


def _apply_writes(cluster: ClusterApi, owner: Owner, plan: planning.Plan, observed: planning.Observed, outcome: Outcome,
                  previous_split: Mapping[tuple[str, str], dict[str, Any]]) -> str:
    """Applies the plan's writes, traffic last; returns why traffic could not be split as planned ("" when it was).

    Once a traffic write fails, the later ones keep the split status shows (``previous_split``, empty
    at a first release): they are applied as that split only where the cluster differs from it (a
    deleted entry Service), so half a split never moves and nothing flaps from pass to pass."""
    created: set[tuple[str, str]] = set()  # children this pass creates: checked once, not once per write
    failed_services: list[str] = []
    traffic_errors: list[str] = []
    not_moved: list[str] = []
    for write in _traffic_last(plan.apply):
        key = (write.manifest["kind"], write.manifest["metadata"]["name"])
        blockers = _blocked_by(write, failed_services, not_moved, previous_split)
        if blockers:
            message = f"{write.label}: not updated, because {', '.join(blockers)} could not be applied"
            outcome.errors.append(message)
            traffic_errors.append(message)
            not_moved.append(write.label)
            kept = previous_split.get(key)
            if kept is None or (is_applied(kept, observed.get(*key)) and not drops_owned_fields(kept, observed.get(*key), write.field_manager)):
                continue
            write = planning.Apply(kept, write.field_manager)
        try:
            if observed.get(*key) is None and key not in created:
                _refuse_foreign(cluster, owner, write)
                created.add(key)
            cluster.apply(write.manifest, write.field_manager)
            outcome.applied.append(write.label if write.manifest is not previous_split.get(key) else f"{write.label} (previous split)")
        except ApiError as error:
            outcome.errors.append(f"{write.label}: {error.message}")
            if write.traffic:
                traffic_errors.append(f"{write.label}: {error.message}")
                not_moved.append(write.label)
            elif key[0] == "Service":
                failed_services.append(write.label)
    return "; ".join(traffic_errors)[:1024]


def _restore_split(cluster: ClusterApi, plan: planning.Plan, outcome: Outcome,
                   previous_split: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """A traffic write failed after another one of the same pass moved traffic (the HTTPRoute applied,
    the entry Service refused): put the ones that moved back to the split status shows, so status and
    the cluster agree on where traffic goes. The next pass tries the whole split again."""
    for write in plan.apply:
        key = (write.manifest["kind"], write.manifest["metadata"]["name"])
        if not write.traffic or write.label not in outcome.applied or key not in previous_split:
            continue
        try:
            cluster.apply(previous_split[key], write.field_manager)
            outcome.applied.append(f"{write.label} (restored)")
        except ApiError as error:
            outcome.errors.append(f"{write.label}: restoring the previous split: {error.message}")


def _delete_stale(cluster: ClusterApi, owner: Owner, plan: planning.Plan, outcome: Outcome) -> None:
    for kind, name in plan.delete:
        try:
            cluster.delete(owner.namespace, kind, name)
            outcome.deleted.append(f"{kind} {name}")
        except ApiError as error:
            outcome.errors.append(f"deleting {kind} {name}: {error.message}")


def _hold_unreadable(
    cluster: ClusterApi, owner: Owner, previous: ModelDeploymentStatus, status: ModelDeploymentStatus, outcome: Outcome,
    resource_version: str | None,
) -> Outcome:
    """Fail closed on a status that cannot be trusted: no child is written, only phase, message and
    conditions (so the fields that could not be read are kept as they are), and one Warning event
    when the problem is new."""
    message = _degraded_message(status) or "status cannot be read"
    if status != previous:
        cluster.patch_status(owner.namespace, owner.name, planning.partial_status_document(status), resource_version=resource_version)
        outcome.status_written = True
    if _degraded_message(previous) != message:
        outcome.events = [planning.Event("Warning", "StatusUnreadable", message)]
    outcome.errors.append(message)
    return outcome
