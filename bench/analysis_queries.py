"""Benchmark: Prometheus cost of one analysis tick, grouped (modelops) vs one query set per canary.

Flagger and Argo Rollouts run each canary's metric queries separately. modelops runs each
distinct check query once, grouped by (namespace, model, version), and reads every canary's
value from that one answer. This measures both against the devcluster's real Prometheus,
with N stand-in models (stable and canary versions each serving the metrics contract).

    make bench            # or: .venv/bin/python -m bench.analysis_queries --canaries 1 10 50 100

Writes bench/results/analysis_queries.json and prints a table (medians over --runs).
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

from modelops.analysis_runner import CanaryUnderAnalysis, run_tick
from modelops.api.v1alpha1 import Check
from modelops.devcluster import cluster
from modelops.metrics.prometheus import Prometheus, PrometheusConfig
from modelops.planning.analysis import escape_label_value
from tests.support.model_metrics import ModelMetricsEndpoint, VersionMetrics

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench"
CHECKS = [
    Check.model_validate({"name": "latency", "type": "latencyP99", "max": 0.25, "window": "10s", "minSampleCount": 10}),
    Check.model_validate({"name": "errors", "type": "errorRate", "max": 0.05, "window": "10s", "minSampleCount": 10}),
]


def per_canary_queries(model: str, version: str) -> list[str]:
    """What a per-canary analysis runs: each check's query with this canary's selectors, plus its sample count."""
    selector = f"namespace={escape_label_value(NAMESPACE)}, model={escape_label_value(model)}, version={escape_label_value(version)}"
    requests = f'sum(rate(mlserve_requests_total{{{selector}, endpoint="infer"}}[10s]))'
    return [
        f'histogram_quantile(0.99, sum by (le) (rate(mlserve_request_duration_seconds_bucket{{{selector}, endpoint="infer"}}[10s])))',
        f'(sum(rate(mlserve_requests_total{{{selector}, endpoint="infer", outcome=~"server_error|timeout"}}[10s])) or 0 * {requests}) / {requests}',
        f'sum(increase(mlserve_requests_total{{{selector}, endpoint="infer"}}[10s]))',
    ]


def all_pass(tick) -> bool:  # type: ignore[no-untyped-def]
    return all(e.verdict == "Pass" for verdicts in tick.evaluations.values() for e in verdicts.values())


def not_passing(tick) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{key[1]}/{name}: {e.verdict} {e.reason}" for key, verdicts in tick.evaluations.items() for name, e in verdicts.items() if e.verdict != "Pass"]


def timed(function) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canaries", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--state-dir", default=".devcluster")
    arguments = parser.parse_args()

    state = cluster.up(arguments.state_dir, progress=lambda message: print(f"[devcluster] {message}"))
    largest = max(arguments.canaries)
    endpoints = []
    for index in range(largest):
        for version in ("1", "2"):
            metrics = VersionMetrics(NAMESPACE, f"model-{index}", version)
            endpoints.append(ModelMetricsEndpoint(state.layout.prometheus_targets, metrics, f"model-{index}-{version}"))
    prometheus = Prometheus(PrometheusConfig(url=state.prometheus_url, timeout_seconds=10))
    try:
        print(f"waiting for Prometheus to scrape {len(endpoints)} targets ...")
        everything = [CanaryUnderAnalysis(NAMESPACE, f"model-{i}", "1", "2", CHECKS) for i in range(largest)]
        deadline = time.monotonic() + 120
        while not all_pass(run_tick(everything, prometheus.query)):
            if time.monotonic() > deadline:
                raise SystemExit("Prometheus has not scraped every stand-in after 120 s")
            time.sleep(1)
        rows = []
        for count in arguments.canaries:
            canaries = [CanaryUnderAnalysis(NAMESPACE, f"model-{i}", "1", "2", CHECKS) for i in range(count)]
            grouped_times, separate_times, grouped_queries = [], [], 0
            incomplete_runs = 0
            while len(grouped_times) < arguments.runs:
                started = time.perf_counter()
                tick = run_tick(canaries, prometheus.query)
                elapsed = time.perf_counter() - started
                grouped_queries = tick.queries
                if not all_pass(tick):  # a scrape gap: this run would not compare like with like
                    incomplete_runs += 1
                    if incomplete_runs > 3 * arguments.runs:
                        raise SystemExit(f"checks keep failing: {not_passing(tick)[:3]}")
                    time.sleep(1)
                    continue
                grouped_times.append(elapsed)
                separate = [q for i in range(count) for q in per_canary_queries(f"model-{i}", "2")]
                separate_times.append(timed(lambda: [prometheus.query(q) for q in separate]))
            grouped, per_canary = statistics.median(grouped_times), statistics.median(separate_times)
            rows.append(
                {
                    "canaries": count,
                    "grouped_queries": grouped_queries,
                    "per_canary_queries": len(per_canary_queries("m", "2")) * count,
                    "grouped_seconds_median": round(grouped, 4),
                    "per_canary_seconds_median": round(per_canary, 4),
                    "speedup": round(per_canary / grouped, 1),
                    "runs_repeated_for_scrape_gaps": incomplete_runs,
                }
            )
            print(rows[-1])
    finally:
        prometheus.close()
        for endpoint in endpoints:
            endpoint.stop()
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "analysis_queries",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "prometheus": httpx.get(f"{state.prometheus_url}/api/v1/status/buildinfo", timeout=5).json()["data"]["version"],
        "runs": arguments.runs,
        "rows": rows,
    }
    (RESULTS / "analysis_queries.json").write_text(json.dumps(report, indent=2))
    print("\n| canaries | queries per tick (grouped) | queries per tick (per canary) | grouped, median | per canary, median | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['canaries']} | {row['grouped_queries']} | {row['per_canary_queries']} | "
            f"{row['grouped_seconds_median'] * 1000:.1f} ms | {row['per_canary_seconds_median'] * 1000:.1f} ms | {row['speedup']}x |"
        )


if __name__ == "__main__":
    main()
