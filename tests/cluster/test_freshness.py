"""Stale data and action order on the devcluster: a frozen drift exporter reads NoData; actions apply in apiserver order.

The drift stand-in serves the drift gauges to the real Prometheus (tests/support/model_metrics.py);
the operator runs under its own ServiceAccount.
"""

import datetime
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelops.devcluster.cluster import ClusterState
from modelops.planning.actions import annotation, field_manager
from tests.cluster.conftest import Kubectl, Operator
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION
from tests.cluster.test_rollout import NAME, Rollout, manifest, modelops, start_stable

pytestmark = pytest.mark.cluster

MONITORING = {"interval": "10s", "checks": [
    {"name": "drift", "type": "featureDrift", "max": 0.25, "minSampleCount": 500, "for": "1h", "action": "alert"},
]}


@pytest.fixture
def rollout(operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str) -> Iterator[Rollout]:
    handle = Rollout(admin_api, devcluster, namespace)
    yield handle
    handle.close()


def _drift_check(status: dict[str, Any]) -> dict[str, Any]:
    checks = (status.get("monitoring") or {}).get("checks") or []
    return checks[0] if checks else {}


def _verdicts_for(rollout: Rollout, seconds: float) -> set[str]:
    """Every verdict the drift check shows while sampling status for ``seconds``."""
    seen, deadline = set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(_drift_check(rollout.status()).get("verdict", ""))
        time.sleep(0.5)
    return seen


def test_a_drift_score_whose_last_run_stops_advancing_is_no_data_never_pass_or_fail(rollout: Rollout) -> None:
    document = manifest(rollout.namespace)
    document["spec"]["monitoring"] = MONITORING
    stable = rollout.serve("1.0.0", latency_seconds=0.07, drift_score=0.05, drift_interval_seconds=2.0)
    rollout.create(document)
    rollout.wait_stable("1.0.0")
    rollout.wait_for_status("a fresh, low drift score to pass", lambda s: _drift_check(s).get("verdict") == "Pass", timeout=60)

    stable.freeze_drift()  # the drift loop died: the last-run time stops, the gauge keeps its value...
    stable.set(drift_score=0.9)  # ...and even a score that would fail is not believed
    status = rollout.wait_for_status("the stale score to read NoData", lambda s: _drift_check(s).get("verdict") == "NoData", timeout=60)
    assert "no fresh drift score for version 1.0.0" in _drift_check(status)["reason"]
    assert _verdicts_for(rollout, 25) == {"NoData"}  # two more evaluations: never Pass, never Fail

    stable.thaw_drift()  # the loop runs again: the (high) score is fresh and counts
    rollout.wait_for_status("the fresh high score to fail", lambda s: _drift_check(s).get("verdict") == "Fail", timeout=60)


def _annotate(rollout: Rollout, action: str, value: str) -> None:
    """What `modelops <action>` sends, with a value of our choosing (a client clock that is wrong)."""
    rollout.custom.patch_namespaced_custom_object(
        GROUP, VERSION, rollout.namespace, PLURAL, NAME, {"metadata": {"annotations": {annotation(action): value}}},
        field_manager=field_manager(action), _content_type="application/merge-patch+json",
    )


def _at_a_paused_canary(rollout: Rollout, kubectl: Kubectl) -> None:
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 20}, {"setWeight": 50}]))
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("the canary to start", lambda s: s.get("rollout") is not None)
    modelops(kubectl, "pause", NAME, "-n", rollout.namespace)
    rollout.wait_for_status("Paused", lambda s: s.get("phase") == "Paused")


def _both_pending_then_operator_back(rollout: Rollout, operator: Operator, request_both: Any) -> None:
    """Pause and resume both new in one pass: the operator is down while they arrive."""
    operator.kill()
    try:
        request_both()
    finally:
        operator.start()


def test_pause_then_resume_from_a_client_whose_clock_is_behind_ends_resumed(
    rollout: Rollout, operator: Operator, kubectl: Kubectl,
) -> None:
    _at_a_paused_canary(rollout, kubectl)
    modelops(kubectl, "resume", NAME, "-n", rollout.namespace)
    rollout.wait_for_status("running again", lambda s: s.get("phase") != "Paused")

    def request_both() -> None:
        modelops(kubectl, "pause", NAME, "-n", rollout.namespace)
        time.sleep(1.1)  # the apiserver's managedFields times have whole seconds: a later second
        _annotate(rollout, "resume", "2020-01-01T00:00:00.000001Z")  # sorts before the pause's value

    _both_pending_then_operator_back(rollout, operator, request_both)
    metadata = rollout.get()["metadata"]
    times = {entry["manager"]: entry["time"] for entry in metadata["managedFields"]}
    assert times[field_manager("pause")] < times[field_manager("resume")]
    rollout.wait_stable("2.0.0", timeout=120)  # resumed, and carried through to the end
    reasons = rollout.wait_events("Paused", "Resumed")
    assert reasons.index("Resumed", reasons.index("Paused")) > reasons.index("Paused")


def test_pause_then_resume_within_one_second_ends_resumed(rollout: Rollout, operator: Operator, kubectl: Kubectl) -> None:
    _at_a_paused_canary(rollout, kubectl)
    modelops(kubectl, "resume", NAME, "-n", rollout.namespace)
    rollout.wait_for_status("running again", lambda s: s.get("phase") != "Paused")

    def now() -> str:
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")

    def request_both() -> None:
        _annotate(rollout, "pause", now())
        _annotate(rollout, "resume", now())

    _both_pending_then_operator_back(rollout, operator, request_both)
    rollout.wait_stable("2.0.0", timeout=120)
