"""The pure parts of bench/rollback.py: what counts as rolled back, and the summary per interval."""

import pytest

from bench.rollback import CANARY, NAME, STABLE, Observations, manifest, rolled_back, summary_rows, wall_time
from modelops.api.v1alpha1 import ModelDeploymentSpec

ROLLED_BACK = {
    "phase": "Degraded",
    "blockedRevision": {"version": CANARY, "reason": "check latency (0.995 > max 0.25) failed", "at": "2026-11-26T10:00:07Z"},
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "AllReplicasReady"},
        {"type": "Degraded", "status": "True", "reason": "RolledBack"},
    ],
}


def test_rolled_back_needs_the_blocked_revision_the_phase_and_the_condition() -> None:
    assert rolled_back(ROLLED_BACK)
    assert not rolled_back(ROLLED_BACK | {"phase": "Progressing"})
    assert not rolled_back(ROLLED_BACK | {"blockedRevision": {"version": STABLE}})
    assert not rolled_back({k: v for k, v in ROLLED_BACK.items() if k != "blockedRevision"})
    assert not rolled_back(ROLLED_BACK | {"conditions": [{"type": "Degraded", "status": "True", "reason": "ApplyFailed"}]})
    assert not rolled_back({})


def route(weights: dict[str, int], name: str = NAME) -> dict:
    backends = [{"name": service, "weight": weight} for service, weight in weights.items()]
    return {"metadata": {"name": name}, "spec": {"rules": [{"backendRefs": backends}]}}


def test_traffic_is_back_on_stable_once_the_route_gives_the_canary_nothing_after_it_had_some() -> None:
    seen = Observations()
    seen.route("ADDED", route({"model-1-0-0": 100}), 1.0)
    seen.route("MODIFIED", route({"model-1-0-0": 100, "model-2-0-0": 0}), 1.5)
    assert seen.stable_only_again_at is None  # the canary at 0 % before its first step: not a rollback
    seen.route("MODIFIED", route({"model-1-0-0": 80, "model-2-0-0": 20}), 2.0)
    seen.route("MODIFIED", route({"other-1-0-0": 100}, name="other"), 2.5)  # another route: ignored
    seen.route("MODIFIED", route({"model-1-0-0": 100, "model-2-0-0": 0}), 3.0)
    seen.route("MODIFIED", route({"model-1-0-0": 100}), 4.0)
    assert seen.canary_weighted and seen.stable_only_again_at == 3.0


def test_a_canary_backend_removed_from_the_route_counts_as_no_traffic() -> None:
    seen = Observations()
    seen.route("MODIFIED", route({"model-1-0-0": 80, "model-2-0-0": 20}), 2.0)
    seen.route("MODIFIED", route({"model-1-0-0": 100}), 3.0)
    assert seen.stable_only_again_at == 3.0


def test_the_first_rolled_back_status_is_kept() -> None:
    seen = Observations()
    seen.modeldeployment("MODIFIED", {"metadata": {"name": NAME}, "status": {"phase": "Progressing"}}, 1.0)
    seen.modeldeployment("MODIFIED", {"metadata": {"name": NAME}, "status": ROLLED_BACK}, 2.0)
    seen.modeldeployment("MODIFIED", {"metadata": {"name": NAME}, "status": ROLLED_BACK}, 3.0)
    assert seen.rolled_back_at == 2.0 and seen.status["phase"] == "Degraded"


def test_wait_gives_up_naming_what_it_waited_for() -> None:
    seen = Observations()
    with pytest.raises(TimeoutError, match="the rollback did not happen"):
        seen.wait("the rollback", lambda s: s.rolled_back_at is not None, timeout=0.01)


def test_wall_time_reads_whole_second_timestamps() -> None:
    assert wall_time("2026-11-26T10:00:07Z") - wall_time("2026-11-26T10:00:00Z") == 7
    assert wall_time("1970-01-01T00:01:00Z") == 60


@pytest.mark.parametrize("interval", [10, 60])
def test_the_manifest_is_valid_and_pauses_after_the_first_step(interval: int) -> None:
    document = manifest("ns", STABLE, interval)
    spec = ModelDeploymentSpec.model_validate(document["spec"])
    assert spec.rollout.analysis.interval == f"{interval}s"
    assert spec.rollout.analysis.failure_limit == 0
    assert [step.set_weight for step in spec.rollout.steps] == [20, None]
    assert spec.rollout.router.type == "gatewayAPI"
    assert spec.rollout.steps[1].pause is not None


def test_summary_rows_take_the_median_per_interval() -> None:
    results = [
        {"interval_seconds": 10, "planned_phase": p, "breach_to_rollback_seconds": t, "breach_to_scheduled_analysis_seconds": w}
        for p, t, w in [(0.167, 9.4, 8.33), (0.5, 6.1, 5.0), (0.833, 2.3, 1.67)]
    ] + [{"interval_seconds": 60, "planned_phase": 0.5, "breach_to_rollback_seconds": 31.0, "breach_to_scheduled_analysis_seconds": 30.0}]
    ten, sixty = summary_rows(results, [10, 60])
    assert (ten["runs"], ten["median_seconds"], ten["min_seconds"], ten["max_seconds"]) == (3, 6.1, 2.3, 9.4)
    assert ten["by_phase"] == {"0.167": 9.4, "0.5": 6.1, "0.833": 2.3}
    assert ten["reaction_seconds_median"] == 1.1  # the median of 1.07, 1.1 and 0.63, rounded
    assert (sixty["runs"], sixty["median_seconds"], sixty["reaction_seconds_median"]) == (1, 31.0, 1.0)
