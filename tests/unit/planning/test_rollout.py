"""The rollout state machine, table-driven: steps, every verdict combination, deadlines, manual actions."""

import itertools
from typing import Any

import pytest

from modelops.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, VersionStatus
from modelops.planning.analysis import Evaluation
from modelops.planning.rollout import RolloutState, advance, analysis_due
from tests.unit.planning.helpers import NOW as T0, at



def spec(**rollout: Any) -> ModelDeploymentSpec:
    document = {
        "model": {"version": "2.0", "uri": "s3://m/2.0/"},
        "runtime": {"image": "registry.example/server:1"},
        "rollout": {
            "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 50}],
            "analysis": {
                "interval": "10s",
                "checks": [
                    {"name": "latency", "type": "latencyP99", "max": 0.25},
                    {"name": "errors", "type": "errorRate", "max": 0.01},
                ],
            },
            "progressDeadline": "5m",
        }
        | rollout,
    }
    return ModelDeploymentSpec.model_validate(document)


STABLE_ONLY = ModelDeploymentStatus(stable=VersionStatus(version="1.0", deployment="m-1-0"))
DEPLOYMENTS = {"1.0": "m-1-0", "2.0": "m-2-0"}
READY = {"1.0": True, "2.0": True}


def step(status: ModelDeploymentStatus, now: str, the_spec: ModelDeploymentSpec | None = None, verdicts: dict[str, str] | None = None,
         serving: dict[str, bool] | None = None, actions: dict[str, str] | None = None) -> tuple[RolloutState, ModelDeploymentStatus]:
    evaluations = None if verdicts is None else {name: Evaluation(v, 0.1 if v in ("Pass", "Fail") else None, None, f"{v} reason") for name, v in verdicts.items()}
    state = advance(the_spec or spec(), status, serving=serving or READY, deployments=DEPLOYMENTS, now=now,
                    evaluations=evaluations, requested_actions=actions)
    stable = VersionStatus(version=state.stable, deployment=DEPLOYMENTS.get(state.stable, ""))
    return state, status.model_copy(update={"stable": stable, "rollout": state.rollout, "blocked_revision": state.blocked,
                                            "previous": state.previous, "history": list(state.history), "handled_actions": state.handled})


ALL_PASS = {"latency": "Pass", "errors": "Pass"}


def test_first_version_becomes_stable_directly() -> None:
    state = advance(spec(), ModelDeploymentStatus(), serving={}, deployments={}, now=T0)
    assert (state.stable, state.canary, state.rollout, state.first_release) == ("2.0", None, None, True)
    assert [e.reason for e in state.events] == ["Released"]


def test_a_new_version_starts_at_step_zero_and_waits_for_its_pods() -> None:
    state, _ = step(STABLE_ONLY, T0, serving={"1.0": True, "2.0": False})
    assert state.rollout is not None and (state.rollout.step, state.rollout.weight) == (0, 0)
    assert state.canary == "2.0" and state.stable == "1.0"
    assert state.hold_reason == "waiting for every replica of 2.0 to be Ready"
    assert [c.name for c in state.rollout.checks] == ["latency", "errors"]
    assert "histogram_quantile" in state.rollout.checks[0].query


def test_a_healthy_canary_walks_every_step_then_is_promoted() -> None:
    state, status = step(STABLE_ONLY, T0)
    assert state.weight == 20 and state.hold_reason.startswith("check latency has not passed yet")
    state, status = step(status, at(10), verdicts=ALL_PASS)
    assert state.rollout is not None and state.rollout.step == 1  # setWeight 20 done; now pausing
    assert state.hold_reason == "check latency has not passed yet in step 1"  # checks must pass again in this step
    state, status = step(status, at(20), verdicts=ALL_PASS)
    assert state.rollout is not None and state.rollout.step == 1  # the pause has not elapsed
    assert state.hold_reason == "pausing 1m at step 1"
    state, status = step(status, at(71), verdicts=ALL_PASS)
    assert state.rollout is not None and (state.rollout.step, state.weight) == (2, 50)
    state, status = step(status, at(81), verdicts=ALL_PASS)
    assert (state.stable, state.rollout) == ("2.0", None)
    assert [(h.version, h.outcome) for h in state.history][-1] == ("2.0", "Promoted")
    assert state.previous is not None and (state.previous.version, state.previous.scale_down_at) == ("1.0", at(111))
    assert "Promoted" in [e.reason for e in state.events]


def test_every_check_must_pass_at_least_once_in_each_step() -> None:
    _, status = step(STABLE_ONLY, T0)
    state, status = step(status, at(10), verdicts={"latency": "Pass", "errors": "NoData"})
    assert state.rollout is not None and state.rollout.step == 0
    state, status = step(status, at(20), verdicts={"latency": "NoData", "errors": "Pass"})
    assert state.rollout is not None and state.rollout.step == 1  # each passed once in the step


VERDICTS = ("Pass", "Fail", "NoData", "Error")


@pytest.mark.parametrize(("latency", "errors"), list(itertools.product(VERDICTS, VERDICTS)))
def test_every_verdict_combination(latency: str, errors: str) -> None:
    _, status = step(STABLE_ONLY, T0)
    state, _ = step(status, at(10), verdicts={"latency": latency, "errors": errors})
    fails = [latency, errors].count("Fail")
    if fails:  # failureLimit 0: any failure rolls back
        assert state.rollout is None and state.blocked is not None and state.blocked.version == "2.0"
        assert state.stable == "1.0" and state.weight == 0
        assert [(h.version, h.outcome) for h in state.history][-1] == ("2.0", "RolledBack")
        assert "check " in state.blocked.reason and "failed" in state.blocked.reason
        return
    assert state.rollout is not None
    assert state.rollout.step == (1 if latency == errors == "Pass" else 0)
    assert state.rollout.consecutive_errors == (1 if "Error" in (latency, errors) else 0)
    assert state.rollout.failures == 0


def test_failure_limit_tolerates_that_many_failures() -> None:
    tolerant = spec(analysis={"interval": "10s", "failureLimit": 1, "checks": [{"name": "latency", "type": "latencyP99", "max": 0.25}]})
    _, status = step(STABLE_ONLY, T0, tolerant)
    state, status = step(status, at(10), tolerant, verdicts={"latency": "Fail"})
    assert state.rollout is not None and state.rollout.failures == 1
    state, status = step(status, at(20), tolerant, verdicts={"latency": "Fail"})
    assert state.rollout is None and state.blocked is not None


def test_no_data_holds_and_the_progress_deadline_rolls_back_naming_the_check() -> None:
    _, status = step(STABLE_ONLY, T0)
    for second in range(10, 300, 10):
        state, status = step(status, at(second), verdicts={"latency": "NoData", "errors": "NoData"})
        assert state.rollout is not None and state.rollout.step == 0
    state, status = step(status, at(301), verdicts={"latency": "NoData", "errors": "NoData"})
    assert state.rollout is None and state.blocked is not None
    assert state.blocked.reason.startswith("no progress for 5m: check latency has no data")


def test_errors_hold_report_metrics_unavailable_at_the_limit_and_reset_on_success() -> None:
    _, status = step(STABLE_ONLY, T0)
    for tick in range(1, 5):
        state, status = step(status, at(10 * tick), verdicts={"latency": "Error", "errors": "Error"})
    assert state.rollout is not None and state.rollout.consecutive_errors == 4 and state.metrics_unavailable
    assert state.hold_reason.startswith("metrics unavailable: 4 consecutive query errors")
    state, status = step(status, at(50), verdicts=ALL_PASS)
    assert state.rollout is not None and state.rollout.consecutive_errors == 0 and not state.metrics_unavailable
    assert state.rollout.step == 1


def test_analysis_is_due_every_interval() -> None:
    _, status = step(STABLE_ONLY, T0)
    assert analysis_due(status, T0)
    _, status = step(status, at(10), verdicts={"latency": "NoData", "errors": "NoData"})
    assert not analysis_due(status, at(15)) and analysis_due(status, at(20))


def test_a_newer_version_supersedes_the_live_canary() -> None:
    _, status = step(STABLE_ONLY, T0)
    _, status = step(status, at(10), verdicts=ALL_PASS)
    newer = spec().model_copy(update={"model": spec().model.model_copy(update={"version": "3.0", "uri": "s3://m/3.0/"})})
    state, _ = step(status, at(20), newer)
    assert state.rollout is not None and (state.rollout.revision, state.rollout.step) == ("3.0", 0)
    assert [(h.version, h.outcome) for h in state.history][-1] == ("2.0", "Superseded")


def test_a_rolled_back_revision_is_not_retried_until_asked() -> None:
    _, status = step(STABLE_ONLY, T0)
    state, status = step(status, at(10), verdicts={"latency": "Fail", "errors": "Pass"})
    assert state.canary == "2.0" and state.weight == 0  # kept running for abortScaleDownDelay, no traffic
    state, status = step(status, at(100))
    assert state.rollout is None and state.canary is None  # after the delay: removed, still blocked
    assert "2.0 was rolled back" in state.hold_reason and "modelops retry" in state.hold_reason
    state, status = step(status, at(110), actions={"retry": at(105)})
    assert state.blocked is None and state.rollout is not None and state.rollout.revision == "2.0"
    assert status.handled_actions.retry == at(105)
    state, _ = step(status, at(120), actions={"retry": at(105)})  # the same request again: not repeated
    assert "Retry" not in [e.reason for e in state.events]


def test_manual_promote_and_abort() -> None:
    _, status = step(STABLE_ONLY, T0)
    state, _ = step(status, at(5), actions={"promote": at(4)})
    assert state.stable == "2.0" and state.rollout is None
    assert [(h.version, h.outcome, h.reason) for h in state.history][-1] == ("2.0", "Promoted", "promoted by a user")
    state, _ = step(status, at(5), actions={"abort": at(4)})
    assert state.stable == "1.0" and state.blocked is not None and state.blocked.reason == "aborted by a user"
    assert [(h.version, h.outcome) for h in state.history][-1] == ("2.0", "Aborted")


def test_pause_holds_and_stops_the_deadline_and_resume_continues() -> None:
    _, status = step(STABLE_ONLY, T0)
    state, status = step(status, at(5), actions={"pause": at(4)})
    assert state.rollout is not None and state.rollout.paused_by_user
    state, status = step(status, at(600), verdicts=ALL_PASS)  # far past the 5m deadline
    assert state.rollout is not None and state.rollout.step == 0 and state.blocked is None
    assert state.hold_reason == "paused by a user"
    state, status = step(status, at(610), actions={"pause": at(4), "resume": at(605)})
    assert state.rollout is not None and not state.rollout.paused_by_user
    state, status = step(status, at(620), verdicts=ALL_PASS)
    assert state.rollout is not None and state.rollout.step == 1


def test_spec_paused_holds() -> None:
    _, status = step(STABLE_ONLY, T0, spec(paused=True))
    state, _ = step(status, at(10), spec(paused=True), verdicts=ALL_PASS)
    assert state.rollout is not None and state.rollout.step == 0 and state.hold_reason == "spec.rollout.paused is true"


def test_skip_analysis_advances_without_verdicts() -> None:
    skipping = spec(skipAnalysis=True, steps=[{"setWeight": 30}, {"setWeight": 60}])
    state, _ = step(STABLE_ONLY, T0, skipping)
    assert state.stable == "2.0"  # every step completed at once, then promotion


def test_an_indefinite_pause_waits_for_resume_or_promote() -> None:
    gated = spec(steps=[{"setWeight": 10}, {"pause": {}}], skipAnalysis=True)
    state, status = step(STABLE_ONLY, T0, gated)
    assert state.rollout is not None and state.rollout.step == 1
    assert "until `modelops promote` or `modelops resume`" in state.hold_reason
    state, status = step(status, at(3600), gated)
    assert state.rollout is not None and state.blocked is None  # no progress deadline while a human decides
    state, _ = step(status, at(3601), gated, actions={"resume": at(3600)})
    assert state.stable == "2.0"


def test_returning_the_spec_to_the_stable_version_abandons_the_canary() -> None:
    _, status = step(STABLE_ONLY, T0)
    back = spec().model_copy(update={"model": spec().model.model_copy(update={"version": "1.0", "uri": "s3://m/1.0/"})})
    state, _ = step(status, at(10), back)
    assert state.rollout is None and state.canary is None and state.stable == "1.0"
    assert [(h.version, h.outcome) for h in state.history][-1] == ("2.0", "Superseded")


def test_without_steps_the_checks_must_pass_once_before_promotion() -> None:
    blue_green = spec(steps=[])
    state, status = step(STABLE_ONLY, T0, blue_green)
    assert (state.stable, state.canary, state.weight) == ("1.0", "2.0", 0)
    assert state.hold_reason == "before promotion: check latency has not passed yet in step 0"
    state, status = step(status, at(10), blue_green, verdicts={"latency": "Pass", "errors": "NoData"})
    assert state.stable == "1.0" and state.hold_reason == "before promotion: check errors has no data: NoData reason"
    state, status = step(status, at(20), blue_green, verdicts=ALL_PASS)
    assert (state.stable, state.canary) == ("2.0", None)
    assert [(h.version, h.outcome, h.reason) for h in state.history][-1] == ("2.0", "Promoted", "all replicas Ready and every check passed")


def test_without_steps_a_failing_check_rolls_back_before_any_traffic_moved() -> None:
    blue_green = spec(steps=[])
    _, status = step(STABLE_ONLY, T0, blue_green)
    state, _ = step(status, at(10), blue_green, verdicts={"latency": "Fail", "errors": "Pass"})
    assert state.stable == "1.0" and state.blocked is not None and state.blocked.version == "2.0"


def test_the_previous_stable_is_released_after_the_scale_down_delay() -> None:
    _, status = step(STABLE_ONLY, T0, spec(steps=[], analysis={"checks": []}))
    assert status.previous is not None
    state, _ = step(status, at(29), spec(steps=[], analysis={"checks": []}))
    assert state.previous is not None
    state, _ = step(status, at(30), spec(steps=[], analysis={"checks": []}))
    assert state.previous is None


@pytest.mark.parametrize(
    ("order", "paused"),
    [
        (["pause", "resume"], False),  # the apiserver received resume last, whatever the values say
        (["resume", "pause"], True),
        ([], True),  # order unknown: the cautious action wins
        (["resume"], True),  # pause's time unknown: the same
    ],
)
def test_pause_and_resume_pending_together_follow_the_apiservers_order(order: list[str], paused: bool) -> None:
    _, status = step(STABLE_ONLY, T0)
    skewed = {"pause": "2030-01-01T00:00:00.000001Z", "resume": "2020-01-01T00:00:00.000001Z"}  # values sort the other way
    state = advance(spec(), status, serving=READY, deployments=DEPLOYMENTS, now=at(5), requested_actions=skewed, action_order=order)
    assert state.rollout is not None and state.rollout.paused_by_user is paused
