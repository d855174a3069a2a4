"""Continuous monitoring of the stable version and retraining runs, decided without I/O.

**Monitoring.** Every ``spec.monitoring.interval`` the checks run on the stable version (the
same check types and verdicts as canary analysis). A check that keeps failing for its ``for``
duration takes its action: ``retrain`` (at every evaluation while it lasts; the cooldown keeps
that to one Job), ``rollback`` (only inside ``rollbackWindow`` after a promotion, while the
previous stable still runs) or ``alert`` (once per breach). A Pass ends the breach; NoData
and Error never trigger anything (they show in the Monitoring condition) and do not end it.

**Retraining.** A trigger (a retrain action, or ``modelops retrain``) starts a Job unless one
is running or the cooldown since the last start has not passed. The Job's name is
``<name>-retrain-<run number>``: deterministic, so a pass that is repeated after a failed
status write finds the same Job instead of starting a second one. A finished Job's
termination message is the candidate (``{"version", "uri", "digest", "metrics"}``).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelops.api.v1alpha1 import (
    BlockedRevision,
    Candidate,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    MonitoringCheck,
    MonitoringStatus,
    MonitorStatus,
    RetrainingRun,
    RetrainingStatus,
    VersionStatus,
    duration_seconds,
)
from modelops.api.timestamps import canonical_or
from modelops.planning.analysis import Evaluation
from modelops.planning.children import Owner, common_labels
from modelops.planning.policy import NamespacePolicy, job_template_refusals, with_restricted_defaults
from modelops.planning.rollout import Event, _after, _elapsed

TERMINATION_MESSAGE_GRACE_SECONDS = 300
JOB_LABEL = "modelops.dev/retraining"


@dataclass(frozen=True)
class MonitoringOutcome:
    status: MonitoringStatus | None
    triggered: tuple[tuple[MonitoringCheck, MonitorStatus], ...] = ()
    breaching: tuple[MonitorStatus, ...] = ()
    stale: tuple[MonitorStatus, ...] = ()


def monitoring_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: str) -> bool:
    if spec.monitoring is None or not spec.monitoring.checks or status.stable is None:
        return False
    monitoring = status.monitoring
    if monitoring is None or monitoring.version != status.stable.version or monitoring.next_evaluation_at is None:
        return True
    return _elapsed(monitoring.next_evaluation_at, now) >= 0


def advance_monitoring(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, evaluations: Mapping[str, Evaluation] | None, now: str
) -> MonitoringOutcome:
    """The monitoring status after this pass, and the checks whose action fires now."""
    if spec.monitoring is None or status.stable is None:
        return MonitoringOutcome(None)
    stable = status.stable.version
    previous = status.monitoring if status.monitoring and status.monitoring.version == stable else None
    known = {check.name: check for check in (previous.checks if previous else [])}
    checks: list[MonitorStatus] = []
    triggered: list[tuple[MonitoringCheck, MonitorStatus]] = []
    for check in spec.monitoring.checks:
        current = known.get(check.name) or MonitorStatus(name=check.name)
        evaluation = (evaluations or {}).get(check.name)
        if evaluation is not None:
            breaching_since, alerted_at = current.breaching_since, current.alerted_at
            if evaluation.verdict == "Fail":
                breaching_since = breaching_since or now
            elif evaluation.verdict == "Pass":
                breaching_since, alerted_at = None, None
            sustained = breaching_since is not None and _elapsed(breaching_since, now) >= duration_seconds(check.for_)
            fires = evaluation.verdict == "Fail" and sustained and not (check.action == "alert" and alerted_at)
            if fires and check.action == "alert":
                alerted_at = now
            current = MonitorStatus(
                name=check.name, verdict=evaluation.verdict, value=evaluation.value, reason=evaluation.reason[:512],
                at=now, breaching_since=breaching_since, alerted_at=alerted_at,
            )
            if fires:
                triggered.append((check, current))
        checks.append(current)
    next_at = previous.next_evaluation_at if previous else None
    if evaluations is not None:
        next_at = _after(now, duration_seconds(spec.monitoring.interval))
    new_status = MonitoringStatus(version=stable, next_evaluation_at=next_at, checks=checks)
    return MonitoringOutcome(
        new_status,
        tuple(triggered),
        breaching=tuple(c for c in checks if c.breaching_since is not None),
        stale=tuple(c for c in checks if c.verdict in ("NoData", "Error")),
    )


def roll_back_to_previous(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, reason: str, now: str) -> ModelDeploymentStatus | None:
    """The status after restoring the previous stable (None when it is no longer kept)."""
    previous, stable = status.previous, status.stable
    if previous is None or stable is None or _elapsed(previous.scale_down_at, now) >= 0:
        return None
    history = [*status.history, HistoryEntry(version=stable.version, outcome="RolledBack", at=now, reason=reason[:1024])]
    limit = spec.revision_history_limit
    return status.model_copy(
        update={
            "stable": VersionStatus(version=previous.version, deployment=previous.deployment),
            "blocked_revision": BlockedRevision(version=stable.version, reason=reason[:1024], at=now),
            "previous": None,
            "rollout": None,
            "history": history[-limit:] if limit else [],
        }
    )


@dataclass(frozen=True)
class ObservedJob:
    name: str
    succeeded: bool
    failed: bool
    reason: str = ""
    finished_at: str | None = None
    termination_message: str | None = None
    uid: str = ""  # the Job's uid: its pods carry it (batch.kubernetes.io/controller-uid) and reference it as controller
    conflicting_messages: int = 0  # pods of the Job that exited 0 with different messages (then none is trusted)


@dataclass(frozen=True)
class RetrainingDecision:
    status: RetrainingStatus | None
    create: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    needs_message: str | None = None  # a finished Job whose termination message should be read
    cooling_down: bool = False


def _message_overdue(job: ObservedJob, now: str) -> bool:
    """A Job finished long ago and still no pod shows a termination message: stop waiting for one."""
    return job.finished_at is not None and _elapsed(canonical_or(job.finished_at, now), now) >= TERMINATION_MESSAGE_GRACE_SECONDS


def job_name(owner: Owner, run: int) -> str:
    return f"{owner.name}-retrain-{run}"


MAX_MESSAGE_BYTES = 4096  # what the kubelet keeps of a termination message


def parse_candidate(message: str | None) -> tuple[Candidate | None, str]:
    """The candidate a Job's pod reported, validated against the ``Candidate`` schema and its bounds
    (a version and URI of the API's patterns, at most 20 numeric metrics); anything else is no candidate."""
    if not message:
        return None, "the Job wrote no termination message"
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        return None, f"termination message is not a candidate (longer than {MAX_MESSAGE_BYTES} bytes)"
    try:
        return Candidate.model_validate(json.loads(message)), ""
    except (ValueError, ValidationError) as error:
        first = str(error).splitlines()[0][:300]
        return None, f"termination message is not a candidate ({first})"


def job_manifest(
    owner: Owner, spec: ModelDeploymentSpec, name: str, trigger: str, features: Sequence[str], serving: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The retraining Job: the user's template plus context env, default deadlines, an ownerReference.

    ``serving`` is the (version, uri) in production, which the monitoring checks judged; it differs
    from spec.model while the spec names a canary or a blocked version. Default: spec.model.
    """
    version, uri = serving or (spec.model.version, spec.model.uri)
    assert spec.retraining is not None
    template = json.loads(json.dumps(spec.retraining.job_template))  # a deep copy of plain JSON
    template.setdefault("activeDeadlineSeconds", spec.retraining.active_deadline_seconds)
    template.setdefault("backoffLimit", spec.retraining.backoff_limit)
    template.setdefault("ttlSecondsAfterFinished", 7 * 24 * 3600)
    pod = template.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    with_restricted_defaults(pod)  # else a namespace enforcing `restricted` creates no pod (FailedCreate)
    context = [
        {"name": "MODELOPS_MODEL_NAME", "value": owner.name},
        {"name": "MODELOPS_CURRENT_VERSION", "value": version},
        {"name": "MODELOPS_CURRENT_URI", "value": uri},
        {"name": "MODELOPS_TRIGGER", "value": trigger[:1024]},
        {"name": "MODELOPS_DRIFTING_FEATURES", "value": ",".join(features)[:1024]},
    ]
    for container in pod.get("containers") or []:
        names = {c["name"] for c in context}
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + context
    labels = common_labels(owner) | {JOB_LABEL: name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]},
        "spec": template,
    }


def decide_retraining(
    owner: Owner,
    spec: ModelDeploymentSpec,
    status: RetrainingStatus | None,
    *,
    trigger: str | None,
    features: Sequence[str],
    job: ObservedJob | None,
    now: str,
    serving: tuple[str, str] | None = None,
    policy: NamespacePolicy | None = None,
) -> RetrainingDecision:
    """The retraining status after this pass, and the Job to create if a run starts.

    A run whose Job the tenant policy refuses (``planning.policy``, ``policy`` defaults to the
    strictest) is recorded as failed at once, with the rules it breaks: no Job is created.
    """
    if spec.retraining is None:
        return RetrainingDecision(status)
    current = status or RetrainingStatus()
    run = current.last_run
    events: list[Event] = []
    if run is not None and run.outcome == "Running":
        if job is None:
            run = run.model_copy(update={"outcome": "Failed", "finished_at": now, "reason": f"Job {run.job} disappeared"})
            events.append(Event("Warning", "RetrainingFailed", run.reason))
        elif job.failed:
            run = run.model_copy(update={"outcome": "Failed", "finished_at": canonical_or(job.finished_at, now), "reason": job.reason[:1024]})
            events.append(Event("Warning", "RetrainingFailed", f"{run.job} failed: {job.reason}; next attempt after the cooldown"))
        elif job.succeeded:
            if job.termination_message is None and not job.conflicting_messages and not _message_overdue(job, now):
                return RetrainingDecision(current, needs_message=job.name)
            candidate, problem = parse_candidate(job.termination_message)
            if job.conflicting_messages:
                candidate, problem = None, (f"{job.conflicting_messages} pods of the Job report different termination messages: "
                                            "no candidate is trusted (a pod with the Job's labels was adopted by it?)")
            run = run.model_copy(update={"outcome": "Succeeded", "finished_at": canonical_or(job.finished_at, now), "candidate": candidate, "reason": problem})
            message = f"{run.job} produced candidate {candidate.version} ({candidate.uri})" if candidate else f"{run.job}: {problem}"
            events.append(Event("Normal" if candidate else "Warning", "RetrainingSucceeded", message))
            current = current.model_copy(update={"last_run": run})
            return RetrainingDecision(current, events=tuple(events))
        current = current.model_copy(update={"last_run": run})
        if run.outcome == "Running":
            return RetrainingDecision(current, cooling_down=trigger is not None)
    if trigger is None:
        return RetrainingDecision(current, events=tuple(events))
    if current.cooldown_until is not None and _elapsed(current.cooldown_until, now) < 0:
        return RetrainingDecision(current, events=tuple(events), cooling_down=True)
    number = current.runs + 1
    name = job_name(owner, number)
    started = RetrainingRun(job=name, trigger=trigger[:512], started_at=now)
    cooldown_until = _after(now, duration_seconds(spec.retraining.cooldown))
    refusals = job_template_refusals(spec, policy or NamespacePolicy(owner.namespace))
    if refusals:
        reason = f"PolicyRefused: {'; '.join(str(r) for r in refusals)}"[:1024]
        refused = started.model_copy(update={"outcome": "Failed", "finished_at": now, "reason": reason})
        events.append(Event("Warning", "RetrainingFailed", f"{name} not created: {reason}"))
        return RetrainingDecision(RetrainingStatus(runs=number, cooldown_until=cooldown_until, last_run=refused), events=tuple(events))
    events.append(Event("Normal", "RetrainingStarted", f"{name}: {trigger}"))
    return RetrainingDecision(
        RetrainingStatus(runs=number, cooldown_until=cooldown_until, last_run=started),
        create=job_manifest(owner, spec, name, trigger, features, serving),
        events=tuple(events),
    )


@dataclass(frozen=True)
class Triggers:
    retrain: str | None = None
    features: tuple[str, ...] = ()
    rollback: str | None = None
    alerts: tuple[str, ...] = field(default_factory=tuple)


def triggers(outcome: MonitoringOutcome, spec: ModelDeploymentSpec) -> Triggers:
    """What the fired checks ask for, in words."""
    retrain = [(c, s) for c, s in outcome.triggered if c.action == "retrain"]
    rollback = [(c, s) for c, s in outcome.triggered if c.action == "rollback"]
    alerts = tuple(f"{c.name}: {s.reason}" for c, s in outcome.triggered if c.action == "alert")
    features = tuple(sorted({c.feature or "*" for c, _ in retrain if c.type == "featureDrift"}))
    return Triggers(
        retrain="; ".join(f"check {c.name} failing since {s.breaching_since}: {s.reason}" for c, s in retrain) or None,
        features=features,
        rollback="; ".join(f"check {c.name} failing since {s.breaching_since}: {s.reason}" for c, s in rollback) or None,
        alerts=alerts,
    )
