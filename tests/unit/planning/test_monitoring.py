"""Monitoring (sustained breaches, actions) and retraining (cooldown, one at a time, candidates)."""

import json
from typing import Any

from modelops.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, PreviousStable, VersionStatus
from modelops.planning.analysis import Evaluation
from modelops.planning.children import Owner
from modelops.planning.monitoring import (
    ObservedJob,
    advance_monitoring,
    decide_retraining,
    monitoring_due,
    roll_back_to_previous,
    triggers,
)
from tests.unit.planning.helpers import NOW as T0, at

OWNER = Owner("fraud", "ml", "uid-1")


def spec(**extra: Any) -> ModelDeploymentSpec:
    document = {
        "model": {"version": "1.0", "uri": "s3://m/1.0/"},
        "runtime": {"image": "registry.example/server:1"},
        "monitoring": {
            "interval": "10s",
            "checks": [
                {"name": "drift", "type": "featureDrift", "max": 0.2, "for": "30s", "action": "retrain"},
                {"name": "latency", "type": "latencyP99", "max": 0.5, "for": "20s", "action": "rollback"},
            ],
        },
        "retraining": {"jobTemplate": {"template": {"spec": {"containers": [{"name": "train", "image": "trainer:1"}]}}}, "cooldown": "1h"},
    } | extra
    return ModelDeploymentSpec.model_validate(document)


STABLE = ModelDeploymentStatus(stable=VersionStatus(version="1.0", deployment="fraud-1-0"))


def evaluate(status: ModelDeploymentStatus, now: str, **verdicts: str):  # type: ignore[no-untyped-def]
    evaluations = {name: Evaluation(v, 0.3 if v == "Fail" else 0.1, None, f"{v} reason") for name, v in verdicts.items()}
    outcome = advance_monitoring(spec(), status, evaluations, now)
    return outcome, status.model_copy(update={"monitoring": outcome.status})


def test_an_action_fires_only_after_the_breach_lasts_for_its_duration() -> None:
    outcome, status = evaluate(STABLE, T0, drift="Fail", latency="Pass")
    assert outcome.triggered == () and outcome.status is not None
    assert outcome.status.checks[0].breaching_since == T0
    outcome, status = evaluate(status, at(20), drift="Fail", latency="Pass")
    assert outcome.triggered == ()
    outcome, status = evaluate(status, at(30), drift="Fail", latency="Pass")
    assert [check.name for check, _ in outcome.triggered] == ["drift"]
    fired = triggers(outcome, spec())
    assert fired.retrain is not None and "check drift failing since 2026-11-26T12:00:00Z" in fired.retrain
    assert fired.features == ("*",)


def test_a_pass_ends_the_breach_and_no_data_neither_ends_nor_fires_it() -> None:
    _, status = evaluate(STABLE, T0, drift="Fail", latency="Pass")
    outcome, status = evaluate(status, at(40), drift="NoData", latency="Pass")
    assert outcome.triggered == () and outcome.status.checks[0].breaching_since == T0  # type: ignore[union-attr]
    assert [c.name for c in outcome.stale] == ["drift"]
    outcome, status = evaluate(status, at(50), drift="Pass", latency="Pass")
    assert outcome.status.checks[0].breaching_since is None  # type: ignore[union-attr]
    outcome, _ = evaluate(status, at(60), drift="Fail", latency="Pass")
    assert outcome.triggered == ()  # a new breach starts from zero: flapping never fires


def test_monitoring_is_due_every_interval_and_restarts_for_a_new_stable() -> None:
    assert monitoring_due(spec(), STABLE, T0)
    _, status = evaluate(STABLE, T0, drift="Pass", latency="Pass")
    assert not monitoring_due(spec(), status, at(5)) and monitoring_due(spec(), status, at(10))
    promoted = status.model_copy(update={"stable": VersionStatus(version="2.0", deployment="fraud-2-0")})
    assert monitoring_due(spec(), promoted, at(5))


def test_rollback_restores_the_previous_stable_only_inside_the_window() -> None:
    status = STABLE.model_copy(update={"previous": PreviousStable(version="0.9", deployment="fraud-0-9", scale_down_at=at(600))})
    rolled = roll_back_to_previous(spec(), status, "latency", at(100))
    assert rolled is not None and rolled.stable is not None and rolled.stable.version == "0.9"
    assert rolled.blocked_revision is not None and rolled.blocked_revision.version == "1.0"
    assert [(h.version, h.outcome) for h in rolled.history] == [("1.0", "RolledBack")]
    assert roll_back_to_previous(spec(), status, "latency", at(600)) is None  # the window has closed


def job(succeeded: bool = False, failed: bool = False, message: str | None = None) -> ObservedJob:
    return ObservedJob("fraud-retrain-1", succeeded=succeeded, failed=failed, reason="BackoffLimitExceeded" if failed else "",
                       finished_at=at(100), termination_message=message)


def test_a_trigger_starts_one_job_with_context_and_defaults() -> None:
    decision = decide_retraining(OWNER, spec(), None, trigger="drift high", features=("age",), job=None, now=T0)
    assert decision.create is not None and decision.create["metadata"]["name"] == "fraud-retrain-1"
    template = decision.create["spec"]
    assert (template["activeDeadlineSeconds"], template["backoffLimit"]) == (3600, 1)
    env = {e["name"]: e["value"] for e in template["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_TRIGGER"] == "drift high" and env["MODELOPS_DRIFTING_FEATURES"] == "age"
    assert env["MODELOPS_CURRENT_VERSION"] == "1.0" and env["MODELOPS_MODEL_NAME"] == "fraud"
    assert decision.create["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert decision.status is not None and decision.status.cooldown_until == at(3600)
    assert decision.status.last_run is not None and decision.status.last_run.outcome == "Running"


def test_at_most_one_run_at_a_time_and_the_cooldown_holds() -> None:
    started = decide_retraining(OWNER, spec(), None, trigger="drift", features=(), job=None, now=T0).status
    running = decide_retraining(OWNER, spec(), started, trigger="drift", features=(), job=job(), now=at(60))
    assert running.create is None and running.cooling_down
    failed = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(failed=True), now=at(120))
    assert failed.status is not None and failed.status.last_run is not None and failed.status.last_run.outcome == "Failed"
    assert "BackoffLimitExceeded" in failed.status.last_run.reason
    again = decide_retraining(OWNER, spec(), failed.status, trigger="drift", features=(), job=None, now=at(600))
    assert again.create is None and again.cooling_down  # not before the cooldown
    later = decide_retraining(OWNER, spec(), failed.status, trigger="drift", features=(), job=None, now=at(3600))
    assert later.create is not None and later.create["metadata"]["name"] == "fraud-retrain-2"


def test_the_candidate_comes_from_the_termination_message() -> None:
    started = decide_retraining(OWNER, spec(), None, trigger="drift", features=(), job=None, now=T0).status
    waiting = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(succeeded=True), now=at(100))
    assert waiting.needs_message == "fraud-retrain-1" and waiting.status == started
    message = json.dumps({"version": "1.1", "uri": "s3://m/1.1/", "digest": "sha256:" + "b" * 64, "metrics": {"auc": 0.91}})
    done = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(succeeded=True, message=message), now=at(100))
    assert done.status is not None and done.status.last_run is not None and done.status.last_run.candidate is not None
    assert (done.status.last_run.candidate.version, done.status.last_run.candidate.metrics) == ("1.1", {"auc": 0.91})
    assert [e.reason for e in done.events] == ["RetrainingSucceeded"]
    bad = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(succeeded=True, message="not json"), now=at(100))
    assert bad.status is not None and bad.status.last_run is not None and bad.status.last_run.candidate is None
    assert bad.status.last_run.outcome == "Succeeded" and "not a candidate" in bad.status.last_run.reason


def test_a_finished_job_without_a_termination_message_stops_blocking_retraining_after_a_grace() -> None:
    started = decide_retraining(OWNER, spec(), None, trigger="drift", features=(), job=None, now=T0).status
    still = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(succeeded=True), now=at(399))
    assert still.needs_message == "fraud-retrain-1"
    given_up = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=job(succeeded=True), now=at(400))
    assert given_up.status is not None and given_up.status.last_run is not None
    assert (given_up.status.last_run.outcome, given_up.status.last_run.reason) == ("Succeeded", "the Job wrote no termination message")
    assert [(e.type, e.reason) for e in given_up.events] == [("Warning", "RetrainingSucceeded")]


def test_an_alert_fires_once_per_breach() -> None:
    alerting = spec(monitoring={"interval": "10s", "checks": [{"name": "parity", "type": "fairnessGap", "attribute": "g", "max": 0.1, "for": "0s", "action": "alert"}]})

    def tick(status: ModelDeploymentStatus, now: str, verdict: str):  # type: ignore[no-untyped-def]
        outcome = advance_monitoring(alerting, status, {"parity": Evaluation(verdict, 0.3, None, "gap")}, now)
        return outcome, status.model_copy(update={"monitoring": outcome.status})

    fired = []
    status = STABLE
    for second, verdict in [(0, "Fail"), (10, "Fail"), (20, "Fail"), (30, "Pass"), (40, "Fail")]:
        outcome, status = tick(status, at(second), verdict)
        fired.append(len(outcome.triggered))
    assert fired == [1, 0, 0, 0, 1]  # once for the first breach, once for the next


def test_a_jobs_finish_time_in_the_clients_spelling_is_recorded_canonically() -> None:
    """The kubernetes client renders a Job's lastTransitionTime with +00:00; status holds it with Z."""
    started = decide_retraining(OWNER, spec(), None, trigger="drift", features=(), job=None, now=T0).status
    finished = ObservedJob("fraud-retrain-1", succeeded=False, failed=True, reason="BackoffLimitExceeded",
                           finished_at="2026-11-26T12:01:40+00:00")
    failed = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=finished, now=at(120))
    assert failed.status is not None and failed.status.last_run is not None
    assert failed.status.last_run.finished_at == at(100)
    unreadable = ObservedJob("fraud-retrain-1", succeeded=False, failed=True, finished_at="Tuesday")
    failed = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=unreadable, now=at(120))
    assert failed.status is not None and failed.status.last_run is not None and failed.status.last_run.finished_at == at(120)


def test_a_naive_cooldown_in_status_is_read_as_utc_instead_of_raising_every_pass() -> None:
    status = ModelDeploymentStatus.model_validate({"stable": {"version": "1.0", "deployment": "fraud-1-0"},
                                                   "retraining": {"runs": 1, "cooldownUntil": "2026-11-26T13:00:00"}})
    assert status.retraining is not None
    cooling = decide_retraining(OWNER, spec(), status.retraining, trigger="drift", features=(), job=None, now=at(600))
    assert cooling.cooling_down and cooling.create is None
    later = decide_retraining(OWNER, spec(), status.retraining, trigger="drift", features=(), job=None, now=at(3600))
    assert later.create is not None


def test_pods_of_one_job_reporting_different_candidates_yield_none() -> None:
    started = decide_retraining(OWNER, spec(), None, trigger="drift", features=(), job=None, now=T0).status
    conflicting = ObservedJob("fraud-retrain-1", succeeded=True, failed=False, finished_at=at(100), conflicting_messages=2)
    done = decide_retraining(OWNER, spec(), started, trigger=None, features=(), job=conflicting, now=at(100))
    assert done.status is not None and done.status.last_run is not None
    assert done.status.last_run.outcome == "Succeeded" and done.status.last_run.candidate is None
    assert "2 pods of the Job report different termination messages" in done.status.last_run.reason
    assert [e.type for e in done.events] == ["Warning"]


def test_an_oversized_termination_message_is_no_candidate() -> None:
    from modelops.planning.monitoring import parse_candidate

    candidate, problem = parse_candidate('{"version": "1.1", "uri": "s3://m/1.1/", "pad": "' + "x" * 5000 + '"}')
    assert candidate is None and "longer than 4096 bytes" in problem
