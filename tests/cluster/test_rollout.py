"""Progressive delivery on the devcluster with a real Prometheus.

Each model version's pods are stood in for by a local metrics endpoint that serves the
metrics contract with values the test controls, registered as a Prometheus scrape target
with the pod's namespace and pod labels. The operator runs under its own ServiceAccount and
queries Prometheus through a proxy the test can switch off.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

import modelops as modelops_package
from modelops.devcluster import bootstrap
from modelops.devcluster.cluster import ClusterState
from tests.cluster.conftest import Kubectl, Operator
from tests.cluster.test_modeldeployment import EXAMPLE, GROUP, PLURAL, VERSION
from tests.support.model_metrics import ModelMetricsEndpoint, VersionMetrics

pytestmark = pytest.mark.cluster

NAME = "fraud-detector"
INTERVAL_SECONDS = 10
CHECKS = [
    {"name": "latency", "type": "latencyP99", "max": 0.25, "window": "10s", "minSampleCount": 20},
    {"name": "errors", "type": "errorRate", "max": 0.05, "window": "10s", "minSampleCount": 20},
]


def manifest(namespace: str, *, router: str = "replicas", steps: list[dict[str, Any]] | None = None,
             checks: list[dict[str, Any]] | None = None, **rollout: Any) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["namespace"] = namespace
    document["spec"]["model"] = {"version": "1.0.0", "uri": "s3://models/fraud/1.0.0/"}
    document["spec"]["scaling"] = {"replicas": 4}
    spec_rollout: dict[str, Any] = {
        "steps": steps if steps is not None else [{"setWeight": 20}, {"setWeight": 50}],
        "analysis": {"interval": f"{INTERVAL_SECONDS}s", "checks": CHECKS if checks is None else checks},
        "scaleDownDelay": "2s",
        "abortScaleDownDelay": "2s",
    } | rollout
    if router == "gatewayAPI":
        spec_rollout["router"] = {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}], "hostnames": ["fraud.example.com"]}}
    document["spec"]["rollout"] = spec_rollout
    return document


class Rollout:
    """A ModelDeployment plus stand-in metrics endpoints for its versions."""

    def __init__(self, api: client.ApiClient, devcluster: ClusterState, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.targets_dir = devcluster.layout.prometheus_targets
        self.endpoints: dict[str, ModelMetricsEndpoint] = {}

    def serve(self, version: str, **behaviour: float) -> VersionMetrics:
        metrics = VersionMetrics(self.namespace, NAME, version)
        metrics.set(**behaviour)
        pod = f"{NAME}-{version.replace('.', '-')}-stand-in"
        self.endpoints[version] = ModelMetricsEndpoint(self.targets_dir, metrics, pod)
        return metrics

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.stop()

    def create(self, document: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, document)

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def patch_spec(self, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, NAME, {"spec": patch}, _content_type="application/merge-patch+json"
        )

    def release(self, version: str) -> None:
        self.patch_spec({"model": {"version": version, "uri": f"s3://models/fraud/{version}/"}})

    def wait_stable(self, version: str, timeout: float = 90) -> dict[str, Any]:
        def stable() -> bool:
            status = self.status()
            return (status.get("stable") or {}).get("version") == version and status.get("phase") == "Healthy"

        bootstrap.wait_for(f"{version} to be the healthy stable version", stable, timeout=timeout)
        return self.status()

    def wait_for_status(self, what: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
        bootstrap.wait_for(what, lambda: predicate(self.status()), timeout=timeout, interval=0.25)
        return self.status()

    def replicas(self, version: str) -> int:
        deployment = self.apps.read_namespaced_deployment(f"{NAME}-{version.replace('.', '-')}", self.namespace)
        return int(deployment.spec.replicas)

    def route_weights(self) -> dict[str, int]:
        route = self.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", self.namespace, "httproutes", NAME)
        return {ref["name"]: ref["weight"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}

    def events(self) -> list[str]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={NAME}").items
        return [event.reason for event in sorted(events, key=lambda e: e.metadata.creation_timestamp)]

    def wait_events(self, *reasons: str, timeout: float = 20) -> list[str]:
        """The events once every one of ``reasons`` is among them: the operator posts a pass's events
        after its status write, so a status a test saw may be ahead of its events."""
        bootstrap.wait_for(f"events {', '.join(reasons)}", lambda: set(reasons) <= set(self.events()), timeout=timeout)
        return self.events()


@pytest.fixture
def rollout(operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str) -> Iterator[Rollout]:
    handle = Rollout(admin_api, devcluster, namespace)
    yield handle
    handle.close()


def start_stable(rollout: Rollout, document: dict[str, Any]) -> VersionMetrics:
    stable = rollout.serve("1.0.0", latency_seconds=0.07)
    rollout.create(document)
    rollout.wait_stable("1.0.0")
    return stable


def record_while(predicate: Any, sample: Any, timeout: float) -> list[Any]:
    """Samples ``sample()`` every 0.2 s until ``predicate()``; returns the distinct values in order."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = sample()
        if not seen or seen[-1] != value:
            seen.append(value)
        if predicate():
            return seen
        time.sleep(0.2)
    raise AssertionError(f"timed out; saw {seen}")


def test_a_healthy_canary_is_promoted_through_every_step_gateway_api(rollout: Rollout) -> None:
    start_stable(rollout, manifest(rollout.namespace, router="gatewayAPI"))
    assert rollout.route_weights() == {f"{NAME}-1-0-0": 100}
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")

    weights = record_while(
        lambda: (rollout.status().get("stable") or {}).get("version") == "2.0.0",
        lambda: tuple(sorted(rollout.route_weights().items())),
        timeout=120,
    )
    canary_name = f"{NAME}-2-0-0"
    canary_weights = [dict(w).get(canary_name) for w in weights if canary_name in dict(w)]
    # Exactly the steps, in order, nothing skipped; then 100 % once promoted.
    assert canary_weights == [0, 20, 50, 100], weights
    assert all(sum(dict(w).values()) == 100 for w in weights)
    bootstrap.wait_for("the route to send everything to 2.0.0", lambda: rollout.route_weights() == {canary_name: 100}, timeout=30)
    status = rollout.wait_stable("2.0.0")
    assert [(h["version"], h["outcome"]) for h in status["history"]][-1] == ("2.0.0", "Promoted")
    assert {"CanaryStarted", "StepCompleted", "Promoted"} <= set(rollout.wait_events("CanaryStarted", "StepCompleted", "Promoted"))


def test_a_healthy_canary_is_promoted_replica_counts_follow_the_steps(rollout: Rollout) -> None:
    start_stable(rollout, manifest(rollout.namespace))
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")

    selectors: list[dict[str, str]] = []

    def sample() -> tuple[int, int | None, int]:
        status = rollout.status()
        weight = (status.get("rollout") or {}).get("weight", -1)
        try:
            canary = rollout.replicas("2.0.0")
        except client.ApiException:
            canary = None
        if weight == 50:
            selectors.append(rollout.core.read_namespaced_service(NAME, rollout.namespace).spec.selector)
        return weight, canary, rollout.replicas("1.0.0") if (status.get("stable") or {}).get("version") == "1.0.0" else -1

    seen = record_while(lambda: (rollout.status().get("stable") or {}).get("version") == "2.0.0", sample, timeout=120)
    # While the canary has weight, the entry Service selects both versions: the split is by pod count.
    assert {"modelops.dev/deployment": NAME} in selectors, selectors
    during = [(weight, canary) for weight, canary, stable in seen if stable == 4 and canary is not None and weight >= 0]
    # Stable keeps 4 replicas; the canary gets max(1, round(4 w / (100 - w))): 1 at 0 % and 20 %, 4 at 50 %.
    assert (20, 1) in during and (50, 4) in during, seen
    assert all(canary == {0: 1, 20: 1, 50: 4}[weight] for weight, canary in during if weight in (0, 20, 50) and canary != 4), seen
    rollout.wait_stable("2.0.0")
    entry = rollout.core.read_namespaced_service(NAME, rollout.namespace)
    assert entry.spec.selector == {"modelops.dev/deployment": NAME, "modelops.dev/version": "2.0.0"}


def test_a_latency_regression_is_rolled_back_within_the_analysis_interval(rollout: Rollout) -> None:
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 20}, {"pause": {"duration": "5m"}}]))
    canary = rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("the canary to pass step 0", lambda s: (s.get("rollout") or {}).get("step") == 1)

    canary.set(latency_seconds=0.8)  # p99 jumps from ~0.1 s to ~1 s
    regressed = time.monotonic()
    status = rollout.wait_for_status("the rollback", lambda s: s.get("blockedRevision") is not None, timeout=60)
    elapsed = time.monotonic() - regressed
    # failureLimit 0: at most one interval, plus a few scrape intervals and the 10 s window filling.
    assert elapsed <= INTERVAL_SECONDS * (0 + 1) + 8, elapsed
    assert status["blockedRevision"]["version"] == "2.0.0"
    assert "check latency" in status["blockedRevision"]["reason"]
    assert status["phase"] == "Degraded"
    assert status["stable"]["version"] == "1.0.0"
    entry = rollout.core.read_namespaced_service(NAME, rollout.namespace)
    assert entry.spec.selector["modelops.dev/version"] == "1.0.0"  # all traffic back on stable at once
    assert "RolledBack" in rollout.wait_events("RolledBack")
    print(f"\nlatency regression to rollback: {elapsed:.1f}s (interval {INTERVAL_SECONDS}s)")


def test_an_error_rate_spike_is_rolled_back(rollout: Rollout) -> None:
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 20}, {"pause": {"duration": "5m"}}]))
    canary = rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("the canary to pass step 0", lambda s: (s.get("rollout") or {}).get("step") == 1)
    canary.set(error_ratio=0.3)
    status = rollout.wait_for_status("the rollback", lambda s: s.get("blockedRevision") is not None, timeout=60)
    assert "check errors" in status["blockedRevision"]["reason"]


def test_a_canary_slower_than_stable_is_rolled_back_by_a_relative_check(rollout: Rollout) -> None:
    relative = [
        {"name": "latency-absolute", "type": "latencyP99", "max": 2.0, "window": "10s", "minSampleCount": 20},
        {"name": "latency-relative", "type": "latencyP99", "maxRatioToStable": 1.2, "window": "10s", "minSampleCount": 20},
    ]
    document = manifest(rollout.namespace, steps=[{"setWeight": 20}], checks=relative)
    start_stable(rollout, document)
    rollout.serve("2.0.0", latency_seconds=0.2)  # p99 ~0.25 s against stable's ~0.1 s: 2.5x, yet under the 2 s max
    rollout.release("2.0.0")
    status = rollout.wait_for_status("the rollback", lambda s: s.get("blockedRevision") is not None, timeout=60)
    assert "check latency-relative" in status["blockedRevision"]["reason"]
    assert "latency-absolute" not in status["blockedRevision"]["reason"]
    assert "x stable" in status["blockedRevision"]["reason"]  # the values behind the verdict are in the reason


def test_a_canary_without_traffic_holds_then_is_rolled_back_at_the_progress_deadline(rollout: Rollout) -> None:
    start_stable(rollout, manifest(rollout.namespace, progressDeadline="30s"))
    rollout.serve("2.0.0", requests_per_second=0)
    rollout.release("2.0.0")
    status = rollout.wait_for_status(
        "a NoData verdict", lambda s: any(c.get("verdict") == "NoData" for c in (s.get("rollout") or {}).get("checks", []))
    )
    assert status["rollout"]["step"] == 0
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert "has no data" in progressing["message"]
    status = rollout.wait_for_status("the rollback at the deadline", lambda s: s.get("blockedRevision") is not None, timeout=60)
    assert status["blockedRevision"]["reason"].startswith("no progress for 30s: check latency has no data")
    assert [h["outcome"] for h in status["history"]][-1] == "RolledBack"
    assert status["stable"]["version"] == "1.0.0"


def test_prometheus_unreachable_holds_with_metrics_unavailable_then_continues(rollout: Rollout, operator: Operator) -> None:
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 20}, {"setWeight": 50}], progressDeadline="10m"))
    rollout.serve("2.0.0", latency_seconds=0.07)
    assert operator.prometheus is not None
    operator.prometheus.stop()
    try:
        rollout.release("2.0.0")
        status = rollout.wait_for_status(
            "MetricsUnavailable",
            lambda s: any(c["type"] == "Progressing" and c["reason"] == "MetricsUnavailable" for c in s.get("conditions", [])),
            timeout=INTERVAL_SECONDS * 5 + 30,
        )
        assert status["rollout"]["step"] == 0 and status["rollout"]["consecutiveErrors"] >= 4
        assert {c["verdict"] for c in status["rollout"]["checks"]} == {"Error"}
        assert status["stable"]["version"] == "1.0.0" and status.get("blockedRevision") is None
    finally:
        operator.prometheus.start()
    rollout.wait_stable("2.0.0", timeout=120)


def test_an_operator_killed_mid_rollout_resumes_at_the_same_step(rollout: Rollout, operator: Operator) -> None:
    document = manifest(rollout.namespace, steps=[{"setWeight": 20}, {"pause": {"duration": "20s"}}, {"setWeight": 50}])
    start_stable(rollout, document)
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    before = rollout.wait_for_status("step 1", lambda s: (s.get("rollout") or {}).get("step") == 1)
    operator.kill()
    try:
        time.sleep(2)
        assert rollout.status()["rollout"]["step"] == 1  # the state is in status, not in the dead process
    finally:
        operator.start()
    resumed = rollout.wait_for_status("the restarted operator to report", lambda s: (s.get("rollout") or {}).get("step", -1) >= 1)
    assert resumed["rollout"]["stepStartedAt"] == before["rollout"]["stepStartedAt"]  # no reset
    assert resumed["rollout"]["weight"] == 20  # no jump
    deployments = {d.metadata.name for d in rollout.apps.list_namespaced_deployment(rollout.namespace).items}
    assert deployments == {f"{NAME}-1-0-0", f"{NAME}-2-0-0"}  # no duplicate children
    rollout.wait_stable("2.0.0", timeout=120)


def modelops(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI of the code under test (PYTHONPATH: this checkout's package, not whichever one is installed)."""
    source = str(Path(modelops_package.__file__).resolve().parents[1])
    environment = {"KUBECONFIG": str(kubectl.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": source}
    return subprocess.run([sys.executable, "-m", "modelops.cli", *args], capture_output=True, text=True, timeout=60,
                          env=environment, check=True)


def test_supersede_abort_retry_and_manual_promote(rollout: Rollout, kubectl: Kubectl) -> None:
    document = manifest(rollout.namespace, steps=[{"setWeight": 20}, {"pause": {}}])
    start_stable(rollout, document)
    for version in ("2.0.0", "3.0.0"):
        rollout.serve(version, latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("2.0.0 at the manual gate", lambda s: (s.get("rollout") or {}).get("step") == 1)

    rollout.release("3.0.0")  # supersede
    status = rollout.wait_for_status("3.0.0 to start over", lambda s: (s.get("rollout") or {}).get("revision") == "3.0.0")
    assert status["rollout"]["step"] == 0
    assert ("2.0.0", "Superseded") in [(h["version"], h["outcome"]) for h in status["history"]]

    modelops(kubectl, "abort", NAME, "-n", rollout.namespace)
    status = rollout.wait_for_status("the abort", lambda s: s.get("blockedRevision") is not None)
    assert status["blockedRevision"] == {"version": "3.0.0", "reason": "aborted by a user", "at": status["blockedRevision"]["at"]}
    assert ("3.0.0", "Aborted") in [(h["version"], h["outcome"]) for h in status["history"]]
    time.sleep(3)
    assert rollout.status().get("rollout") is None  # blocked: not retried on its own

    modelops(kubectl, "retry", NAME, "-n", rollout.namespace)
    rollout.wait_for_status("the retry", lambda s: (s.get("rollout") or {}).get("revision") == "3.0.0" and not s.get("blockedRevision"))
    rollout.wait_for_status("3.0.0 at the manual gate", lambda s: (s.get("rollout") or {}).get("step") == 1)
    modelops(kubectl, "promote", NAME, "-n", rollout.namespace)
    status = rollout.wait_stable("3.0.0")
    assert [(h["version"], h["outcome"], h["reason"]) for h in status["history"]][-1] == ("3.0.0", "Promoted", "promoted by a user")


def test_pause_and_resume(rollout: Rollout, kubectl: Kubectl) -> None:
    document = manifest(rollout.namespace, steps=[{"setWeight": 20}, {"setWeight": 50}])
    start_stable(rollout, document)
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("the canary to start", lambda s: s.get("rollout") is not None)
    modelops(kubectl, "pause", NAME, "-n", rollout.namespace)
    status = rollout.wait_for_status("Paused", lambda s: s.get("phase") == "Paused")
    step = status["rollout"]["step"]
    time.sleep(INTERVAL_SECONDS * 2 + 2)
    assert rollout.status()["rollout"]["step"] == step  # held
    modelops(kubectl, "resume", NAME, "-n", rollout.namespace)
    rollout.wait_stable("2.0.0", timeout=120)


def test_the_operator_exports_its_own_metrics(rollout: Rollout, operator: Operator) -> None:
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 30}, {"pause": {"duration": "1h"}}]))
    rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    rollout.wait_for_status("step 1", lambda s: (s.get("rollout") or {}).get("step") == 1)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
    }
    ours = (("modeldeployment", NAME), ("namespace", rollout.namespace))
    # The effective weight: at 30 % the replicas router runs round(4 x 30 / 70) = 2 canary pods beside 4: 33 %.
    assert samples[("modelops_canary_weight", ours)] == 33
    assert samples[("modelops_analysis_checks_total", tuple(sorted((*ours, ("check", "latency"), ("verdict", "Pass")))))] >= 1
    # Two checks (latency, errors) share one sample-count query: three queries per tick.
    assert samples[("modelops_analysis_tick_queries", ())] == 3
    assert samples[("modelops_reconcile_duration_seconds_count", ())] > 0


SUCCESS_RATIO = (
    'sum(rate(mlserve_requests_total{namespace="{{namespace}}", model="{{model}}", version="{{version}}", outcome="success"}[10s]))'
    ' / sum(rate(mlserve_requests_total{namespace="{{namespace}}", model="{{model}}", version="{{version}}"}[10s]))'
)


@pytest.fixture
def metric_template(admin_api: client.ApiClient, namespace: str) -> Iterator[str]:
    custom = client.CustomObjectsApi(admin_api)
    name = f"success-ratio-{namespace}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterMetricTemplate", "metadata": {"name": name},
            "spec": {"query": SUCCESS_RATIO, "description": "share of successful requests"}}
    custom.create_cluster_custom_object(GROUP, VERSION, "clustermetrictemplates", body)
    yield name
    custom.delete_cluster_custom_object(GROUP, VERSION, "clustermetrictemplates", name)


def test_a_check_from_an_admin_template_gates_the_canary(rollout: Rollout, metric_template: str) -> None:
    checks = [{"name": "success", "type": "template", "template": metric_template, "min": 0.9}]
    start_stable(rollout, manifest(rollout.namespace, steps=[{"setWeight": 20}, {"pause": {"duration": "5m"}}], checks=checks))
    canary = rollout.serve("2.0.0", latency_seconds=0.07)
    rollout.release("2.0.0")
    status = rollout.wait_for_status("the template check to pass", lambda s: (s.get("rollout") or {}).get("step") == 1)
    [check] = status["rollout"]["checks"]
    assert check["query"] == SUCCESS_RATIO.replace('"{{namespace}}"', f'"{rollout.namespace}"').replace(
        '"{{model}}"', f'"{NAME}"').replace('"{{version}}"', '"2.0.0"')
    assert check["value"] == pytest.approx(1.0)
    canary.set(error_ratio=0.5)
    status = rollout.wait_for_status("the rollback", lambda s: s.get("blockedRevision") is not None, timeout=60)
    assert "check success" in status["blockedRevision"]["reason"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('rate(x{model="{{model}}"}[{{window}}])', "placeholders are {{namespace}}, {{model}} and {{version}}"),
        ("rate(x{model={{model}}}[1m])", "each only as a quoted label value"),
        ('rate(x{model=~"{{model}}"}[1m])', "never in a regular expression"),
        ('rate(x{namespace="{{namespace}}", model=~ "{{model}}"}[1m])', "never in a regular expression"),
        ('rate(x{namespace="{{namespace}}", version!~\t"{{version}}"}[1m])', "never in a regular expression"),
        ('rate(x{model="{{model}}", version="{{version}}"}[1m])', "the query must select the namespace"),
    ],
)
def test_templates_with_placeholders_outside_label_values_are_rejected(
    operator: Operator, admin_api: client.ApiClient, query: str, message: str
) -> None:
    custom = client.CustomObjectsApi(admin_api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterMetricTemplate", "metadata": {"name": "bad-template"},
            "spec": {"query": query}}
    with pytest.raises(client.ApiException) as rejected:
        custom.create_cluster_custom_object(GROUP, VERSION, "clustermetrictemplates", body)
    assert rejected.value.status == 422
    assert message in rejected.value.body
