"""Benchmark 4: from a metric breach to a completed rollback, for analysis intervals of 10 s and 60 s.

Each run is one ModelDeployment in a namespace of its own, with stand-in metrics endpoints
(``tests/support/model_metrics.py``) for its stable (1.0.0) and canary (2.0.0) versions, scraped
by the devcluster's Prometheus. The canary has one check, ``latencyP99`` with ``max: 0.25`` over
a 10 s window (``minSampleCount: 20``, ``failureLimit: 0``), the ``gatewayAPI`` router (an
HTTPRoute the operator owns, so the traffic split is an object one can watch), and the steps
``setWeight: 20`` then a 30-minute pause, so it sits in the pause with analysis every
``interval`` until the breach. The stand-in's latency then jumps from 0.07 s to 0.8 s, at a known moment.

Where the breach lands relative to the analysis schedule decides most of the result, so it is
placed, not left to chance: run *i* of *n* breaches at ``(i + 0.5) / n`` of the interval after
an analysis (``status.rollout.nextAnalysisAt`` minus the interval). With 3 runs that is 1/6,
1/2 and 5/6 of the interval, and the median run is the middle phase, the expected case.

"Rollback completed" is the later of two moments, both seen by admin-side watches:
the status says so (phase Degraded, condition Degraded=True reason RolledBack,
``blockedRevision`` 2.0.0), and the HTTPRoute gives the canary's Service no weight
(all traffic back on stable). The canary's Deployment stays for ``abortScaleDownDelay``
afterwards, by design; that is not counted.

Every run of every interval runs at the same time, each in its own namespace, on one operator
(production defaults: ``--resync-seconds 60 --analysis-tick-seconds 1``).

    .venv/bin/python -m bench.rollback [--state-dir .devcluster] [--runs 3] [--intervals 10 60]

Writes bench/results/rollback.json and prints a table.
"""

import argparse
import datetime
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml
from kubernetes import client

from bench import common
from modelops.devcluster import bootstrap, cluster
from modelops.devcluster.cluster import ClusterState
from modelops.metrics.prometheus import Prometheus, PrometheusConfig
from modelops.planning.names import child_name
from modelops.planning.routers import GATEWAY_GROUP, route_weights
from tests.support.model_metrics import ModelMetricsEndpoint, VersionMetrics

NAME = "model"
STABLE, CANARY = "1.0.0", "2.0.0"
HEALTHY_LATENCY_SECONDS, BREACHED_LATENCY_SECONDS = 0.07, 0.8
CHECK = {"name": "latency", "type": "latencyP99", "max": 0.25, "window": "10s", "minSampleCount": 20}


def manifest(namespace: str, version: str, interval_seconds: int) -> dict[str, Any]:
    document = common.minimal_modeldeployment(NAME, namespace, version, replicas=2)
    document["spec"]["rollout"] = {
        "router": {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}], "hostnames": ["model.example.com"]}},
        "steps": [{"setWeight": 20}, {"pause": {"duration": "30m"}}],
        "analysis": {"interval": f"{interval_seconds}s", "failureLimit": 0, "checks": [CHECK]},
    }
    return document


def wall_time(timestamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp from status (the operator writes whole seconds)."""
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def rolled_back(status: dict[str, Any]) -> bool:
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    degraded = conditions.get("Degraded") or {}
    return (
        (status.get("blockedRevision") or {}).get("version") == CANARY
        and status.get("phase") == "Degraded"
        and degraded.get("status") == "True"
        and degraded.get("reason") == "RolledBack"
    )


@dataclass
class Observations:
    """What the watches saw of one run's ModelDeployment and HTTPRoute, with arrival times (monotonic)."""

    status: dict[str, Any] = field(default_factory=dict)
    rolled_back_at: float | None = None
    canary_weighted: bool = False  # the route gave the canary traffic
    stable_only_again_at: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def modeldeployment(self, kind: str, body: dict[str, Any], arrived: float) -> None:
        if kind == "DELETED" or body["metadata"]["name"] != NAME:
            return
        with self.changed:
            self.status = body.get("status") or {}
            if self.rolled_back_at is None and rolled_back(self.status):
                self.rolled_back_at = arrived
            self.changed.notify_all()

    def route(self, kind: str, body: dict[str, Any], arrived: float) -> None:
        if kind == "DELETED" or body["metadata"]["name"] != NAME:
            return
        canary_weight = route_weights(body).get(child_name(NAME, CANARY), 0)
        with self.changed:
            if canary_weight > 0:
                self.canary_weighted = True
            elif self.canary_weighted and self.stable_only_again_at is None:
                self.stable_only_again_at = arrived
            self.changed.notify_all()

    def wait(self, what: str, predicate: Any, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout=timeout):
                raise TimeoutError(f"{what} did not happen within {timeout:.0f}s; last status: {self.status.get('message')}")


@dataclass
class Run:
    interval: int
    phase: float  # where in the interval after an analysis the breach is placed (0..1)
    namespace: str

    def execute(self, state: ClusterState, prometheus: Prometheus) -> dict[str, Any]:
        with bootstrap.api_client(state.kubeconfig) as api:
            common.ensure_namespace(api, self.namespace)
            endpoints = [self._endpoint(state, version) for version in (STABLE, CANARY)]
            seen = Observations()
            watchers = [
                common.Watcher(common.custom_list(api), self.namespace, seen.modeldeployment),
                common.Watcher(common.custom_list(api, GATEWAY_GROUP, "v1", "httproutes"), self.namespace, seen.route),
            ]
            try:
                with common.watching(watchers):
                    return self._measure(api, prometheus, seen, endpoints[1].metrics)
            finally:
                for endpoint in endpoints:
                    endpoint.stop()

    def _endpoint(self, state: ClusterState, version: str) -> ModelMetricsEndpoint:
        metrics = VersionMetrics(self.namespace, NAME, version)
        metrics.set(latency_seconds=HEALTHY_LATENCY_SECONDS)
        return ModelMetricsEndpoint(state.layout.prometheus_targets, metrics, f"{NAME}-{version.replace('.', '-')}-stand-in")

    def _measure(self, api: client.ApiClient, prometheus: Prometheus, seen: Observations, canary: VersionMetrics) -> dict[str, Any]:
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            common.GROUP, common.VERSION, self.namespace, common.PLURAL, manifest(self.namespace, STABLE, self.interval),
            _request_timeout=common.REQUEST_TIMEOUT_SECONDS,
        )
        seen.wait("stable Healthy", lambda s: s.status.get("phase") == "Healthy", timeout=120)
        wait_scraped(prometheus, self.namespace, CANARY)
        release = {"spec": {"model": {"version": CANARY, "uri": f"file:///models/{NAME}-{CANARY}.json"}}}
        custom.patch_namespaced_custom_object(
            common.GROUP, common.VERSION, self.namespace, common.PLURAL, NAME, release,
            _content_type="application/merge-patch+json", _request_timeout=common.REQUEST_TIMEOUT_SECONDS,
        )
        seen.wait("the canary to reach the pause step", lambda s: (s.status.get("rollout") or {}).get("step") == 1, timeout=3 * self.interval + 120)
        next_analysis = wall_time(seen.status["rollout"]["nextAnalysisAt"])
        planned = next_analysis - self.interval + self.phase * self.interval
        time.sleep(max(0.0, planned - time.time()))
        canary.set(latency_seconds=BREACHED_LATENCY_SECONDS)
        breached, breached_wall = time.monotonic(), time.time()
        seen.wait(
            "the rollback", lambda s: s.rolled_back_at is not None and s.stable_only_again_at is not None, timeout=2 * self.interval + 120
        )
        assert seen.rolled_back_at is not None and seen.stable_only_again_at is not None
        decided = wall_time(seen.status["blockedRevision"]["at"])
        return {
            "interval_seconds": self.interval,
            "namespace": self.namespace,
            "planned_phase": round(self.phase, 3),
            "actual_phase": round(1 - (next_analysis - breached_wall) / self.interval, 3),
            "breach_to_status_seconds": round(seen.rolled_back_at - breached, 2),
            "breach_to_traffic_on_stable_seconds": round(seen.stable_only_again_at - breached, 2),
            "breach_to_rollback_seconds": round(max(seen.rolled_back_at, seen.stable_only_again_at) - breached, 2),
            "breach_to_scheduled_analysis_seconds": round(next_analysis - breached_wall, 2),
            "breach_to_decision_seconds": round(decided - breached_wall, 1),  # blockedRevision.at has whole seconds
            "reason": seen.status["blockedRevision"]["reason"],
        }


def wait_scraped(prometheus: Prometheus, namespace: str, version: str, timeout: float = 60) -> None:
    """Until Prometheus holds enough of the stand-in's samples for the check to have data."""
    selector = f'namespace="{namespace}", model="{NAME}", version="{version}", endpoint="infer"'
    query = f"sum(increase(mlserve_requests_total{{{selector}}}[10s]))"

    def scraped() -> bool:
        result = prometheus.query(query)
        return not result.error and any(value >= 2 * CHECK["minSampleCount"] for value in result.values.values())

    bootstrap.wait_for(f"Prometheus to scrape {namespace} {version}", scraped, timeout=timeout, interval=0.5)


def scrape_interval(state: ClusterState) -> str:
    config = yaml.safe_load((state.layout.config / "prometheus.yml").read_text())
    return str(config["global"]["scrape_interval"])


def summary_rows(results: list[dict[str, Any]], intervals: list[int]) -> list[dict[str, Any]]:
    rows = []
    for interval in intervals:
        runs = [r for r in results if r["interval_seconds"] == interval]
        totals = [r["breach_to_rollback_seconds"] for r in runs]
        rows.append({
            "interval_seconds": interval,
            "runs": len(runs),
            "median_seconds": round(statistics.median(totals), 1),
            "min_seconds": round(min(totals), 1),
            "max_seconds": round(max(totals), 1),
            "by_phase": {str(r["planned_phase"]): r["breach_to_rollback_seconds"] for r in runs},
            # from the moment the analysis was due (status.rollout.nextAnalysisAt) to the rollback complete
            "reaction_seconds_median": round(
                statistics.median(r["breach_to_rollback_seconds"] - r["breach_to_scheduled_analysis_seconds"] for r in runs), 1
            ),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=".devcluster")
    parser.add_argument("--intervals", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()

    began = time.monotonic()
    report: dict[str, Any] = {"benchmark": "rollback", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": common.machine(), "source": common.source()}
    state = cluster.up(arguments.state_dir, progress=lambda message: common.log(f"[devcluster] {message}"))
    run_id = time.strftime("%H%M%S")
    runs = [
        Run(interval, (index + 0.5) / arguments.runs, f"bench-rb-{run_id}-{interval}s-{index}")
        for interval in arguments.intervals
        for index in range(arguments.runs)
    ]
    prometheus = Prometheus(PrometheusConfig(url=state.prometheus_url, timeout_seconds=5))
    settings = common.OperatorSettings()
    with bootstrap.api_client(state.kubeconfig) as admin:
        operator = common.start_operator(state, admin, settings, common.RESULTS / "rollback-operator.log")
        try:
            with ThreadPoolExecutor(len(runs)) as pool:
                results = list(pool.map(lambda run: run.execute(state, prometheus), runs))
            report["operator_problems"] = operator.logged_problems()[:20]
        finally:
            operator.stop()
            prometheus.close()
            report["cleanup_seconds"] = round(common.delete_namespaces(admin, [run.namespace for run in runs], timeout=300), 1)
    report |= {
        "operator": {"resync_seconds": settings.resync_seconds, "analysis_tick_seconds": settings.analysis_tick_seconds},
        "prometheus": {
            "version": httpx.get(f"{state.prometheus_url}/api/v1/status/buildinfo", timeout=5).json()["data"]["version"],
            "scrape_interval": scrape_interval(state),
        },
        "check": CHECK,
        "runs": sorted(results, key=lambda r: (r["interval_seconds"], r["planned_phase"])),
        "rows": summary_rows(results, arguments.intervals),
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    common.write_report("rollback", report)
    print()
    print(common.markdown_table(
        ["analysis interval", "breach to rollback, median", "min", "max", "by breach phase", "analysis due to rollback, median"],
        [
            [f"{row['interval_seconds']} s", f"{row['median_seconds']} s", f"{row['min_seconds']} s", f"{row['max_seconds']} s",
             ", ".join(f"{phase}: {seconds} s" for phase, seconds in row["by_phase"].items()), f"{row['reaction_seconds_median']} s"]
            for row in report["rows"]
        ],
    ))
    print(f"\nPrometheus {report['prometheus']['version']}, scrape interval {report['prometheus']['scrape_interval']}; wall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
