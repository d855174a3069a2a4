"""A tenant cannot forge another namespace's (or another version's) check data.

On the devcluster, Prometheus scrapes with ``honor_labels: false`` and each stand-in pod is
registered with the target labels the documented PodMonitor sets (``namespace``, ``pod``, and
``model``/``version`` from the pod's modelops labels). Two forgers serve healthy traffic and a
low drift score for the victim's canary version, which has no traffic of its own:

- a pod of another namespace, labelled as the victim's model and canary version, whose series
  also say ``namespace=<victim>``;
- a pod of the victim's own namespace labelled as the stable version, whose series say they are
  the canary's.

Had the operator keyed on the served labels, the canary would pass. It stays NoData, evaluation
after evaluation, and the operator's own grouped query, run against Prometheus, has no series
for the canary while it does have the forgers' (under their pods' namespace and labels).
"""

import math
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client

from modelops.api.v1alpha1 import Check
from modelops.devcluster import bootstrap
from modelops.devcluster.cluster import ClusterState
from modelops.metrics.prometheus import Prometheus, PrometheusConfig
from modelops.planning.analysis import evaluate, sample_query, value_query
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MODEL_VERSION
from tests.cluster.conftest import Operator
from tests.cluster.test_rollout import CHECKS, NAME, Rollout, manifest, start_stable
from tests.support.model_metrics import ModelMetricsEndpoint, VersionMetrics

pytestmark = pytest.mark.cluster

CANARY = "2.0.0"
# The request checks of the other rollout tests, and a drift check (the same query monitoring runs).
FORGERY_CHECKS = [*CHECKS, {"name": "drift", "type": "featureDrift", "feature": "a", "max": 0.2, "window": "10s", "minSampleCount": 100}]
EVALUATIONS = 3  # NoData this many times in a row, with the forged series in Prometheus all along


@pytest.fixture
def rollout(operator: Operator, admin_api: client.ApiClient, devcluster: ClusterState, namespace: str) -> Iterator[Rollout]:
    handle = Rollout(admin_api, devcluster, namespace)
    yield handle
    handle.close()


@pytest.fixture
def attacker_namespace(admin_api: client.ApiClient) -> Iterator[str]:
    name = f"t-attacker-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)), _request_timeout=10)
    yield name
    core.delete_namespace(name, _request_timeout=10)


@pytest.fixture
def forgers(rollout: Rollout, attacker_namespace: str, devcluster: ClusterState) -> Iterator[list[ModelMetricsEndpoint]]:
    """Healthy traffic served as the victim's canary, by pods that are not the canary's."""
    healthy: dict[str, float] = {"requests_per_second": 50.0, "latency_seconds": 0.07, "error_ratio": 0.0, "drift_score": 0.01}
    other_namespace = VersionMetrics(attacker_namespace, NAME, CANARY, extra_labels={"namespace": rollout.namespace})
    same_namespace = VersionMetrics(rollout.namespace, NAME, CANARY)
    endpoints = []
    for metrics, pod, pod_labels in (
        (other_namespace, "forger-0", {LABEL_DEPLOYMENT: NAME, LABEL_MODEL_VERSION: CANARY}),
        (same_namespace, "forger-stable-0", {LABEL_DEPLOYMENT: NAME, LABEL_MODEL_VERSION: "1.0.0"}),
    ):
        metrics.set(**healthy)
        endpoints.append(ModelMetricsEndpoint(devcluster.layout.prometheus_targets, metrics, pod, pod_labels))
    yield endpoints
    for endpoint in endpoints:
        endpoint.stop()


def _series(prometheus_url: str, query: str) -> list[dict[str, str]]:
    """The full label sets of an instant query's answer (the operator's client keeps only its keys)."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
    response.raise_for_status()
    return [sample["metric"] for sample in response.json()["data"]["result"]]


def _no_traffic(value: float | None) -> bool:
    """Absent, NaN (0/0 over a window without requests) or zero."""
    return value is None or not math.isfinite(value) or value == 0


def _checks(status: dict[str, Any]) -> list[dict[str, Any]]:
    return list((status.get("rollout") or {}).get("checks") or [])


def test_series_forged_by_another_namespace_or_version_never_reach_the_canarys_checks(
    rollout: Rollout, forgers: list[ModelMetricsEndpoint], attacker_namespace: str, devcluster: ClusterState
) -> None:
    victim = rollout.namespace
    url = devcluster.prometheus_url
    prometheus = Prometheus(PrometheusConfig(url))
    try:
        # The forged series are in Prometheus, with the scrape's labels and the forger's as exported_*.
        forged = f'mlserve_requests_total{{exported_namespace="{victim}", exported_version="{CANARY}", outcome="success"}}'
        bootstrap.wait_for("Prometheus to scrape the forger of another namespace",
                           lambda: bool(_series(url, forged)), timeout=60)
        [scraped] = _series(url, forged)
        assert (scraped["namespace"], scraped["model"], scraped["version"]) == (attacker_namespace, NAME, CANARY)
        relabelled = f'mlserve_requests_total{{namespace="{victim}", exported_version="{CANARY}", outcome="success"}}'
        bootstrap.wait_for("Prometheus to scrape the same-namespace forger",
                           lambda: bool(_series(url, relabelled)), timeout=60)
        [scraped] = _series(url, relabelled)
        assert (scraped["model"], scraped["version"], scraped["pod"]) == (NAME, "1.0.0", "forger-stable-0")

        start_stable(rollout, manifest(victim, steps=[{"setWeight": 20}, {"setWeight": 50}], checks=FORGERY_CHECKS, progressDeadline="10m"))
        rollout.serve(CANARY, requests_per_second=0)  # the canary's own pod: no traffic
        rollout.release(CANARY)

        def settled(status: dict[str, Any]) -> bool:
            """Every check evaluated EVALUATIONS times, or the forgery worked (a verdict, a step or a promotion)."""
            checks = _checks(status)
            if any(m["verdict"] != "NoData" for c in checks for m in c.get("measurements") or []):
                return True
            if (status.get("rollout") or {}).get("step", 0) != 0 or (status.get("stable") or {}).get("version") != "1.0.0":
                return True
            return len(checks) == len(FORGERY_CHECKS) and all(len(c.get("measurements") or []) >= EVALUATIONS for c in checks)

        status = rollout.wait_for_status(f"{EVALUATIONS} evaluations of every check", settled, timeout=120)
        assert status["stable"]["version"] == "1.0.0" and status.get("rollout"), status
        for check in _checks(status):
            assert [m["verdict"] for m in check["measurements"]] == ["NoData"] * len(check["measurements"]), check
            assert check["passedInStep"] is False
        assert (status["rollout"]["step"], status["rollout"]["weight"]) == (0, 20)  # held at the first step
        assert status["stable"]["version"] == "1.0.0"

        # The operator's grouped queries: no traffic for the canary (its own pod serves none); the
        # forgers' traffic is keyed where their pods are, and there it would pass these very checks.
        for fields in FORGERY_CHECKS:
            check = Check.model_validate(fields)
            values = prometheus.query(value_query(check))
            samples_query = sample_query(check)
            assert samples_query is not None
            samples = prometheus.query(samples_query)
            assert values.error is None and samples.error is None
            canary = (victim, NAME, CANARY)
            assert _no_traffic(values.values.get(canary)) and _no_traffic(samples.values.get(canary)), (values, samples)
            stolen = (attacker_namespace, NAME, CANARY)
            assert evaluate(check, stolen, (attacker_namespace, NAME, "1.0.0"), values, samples).verdict == "Pass", values
            assert (victim, NAME, "1.0.0") in values.values  # the stable's, with the same-namespace forger's traffic
    finally:
        prometheus.close()
