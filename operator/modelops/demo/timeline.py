"""The demo's timeline: traffic weight, p99 latency and drift per version, sampled as it runs.

Weights come from the HTTPRoute the operator owns; latency and drift come from Prometheus, the
same series the operator judges. :func:`draw` renders the samples as a PNG with matplotlib.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelops.planning.analysis import escape_label_value

QUERY_TIMEOUT_SECONDS = 5


@dataclass
class Sample:
    at: float
    """Seconds since the demo started."""
    weights: dict[str, int] = field(default_factory=dict)
    p99_seconds: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Marker:
    at: float
    label: str


def latency_query(namespace: str, model: str, window: str = "20s") -> str:
    selector = f"namespace={escape_label_value(namespace)}, model={escape_label_value(model)}, api=\"infer\""
    return f"histogram_quantile(0.99, sum by (version, le) (rate(mlserve_request_duration_seconds_bucket{{{selector}}}[{window}])))"


def drift_query(namespace: str, model: str) -> str:
    selector = f"namespace={escape_label_value(namespace)}, model={escape_label_value(model)}, method=\"psi\""
    return f"max by (version) (mlmon_feature_drift_score{{{selector}}})"


def by_version(answer: dict[str, object]) -> dict[str, float]:
    """A Prometheus instant-vector answer as version → value (NaN dropped)."""
    values = {}
    for series in answer.get("data", {}).get("result", []):  # type: ignore[union-attr]
        value = float(series["value"][1])
        if not math.isnan(value):
            values[series["metric"].get("version", "")] = value
    return values


def query(prometheus_url: str, promql: str) -> dict[str, float]:
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=QUERY_TIMEOUT_SECONDS)
    answer.raise_for_status()
    return by_version(answer.json())


def versions_in(samples: list[Sample]) -> list[str]:
    seen: dict[str, None] = {}
    for sample in samples:
        for mapping in (sample.weights, sample.p99_seconds, sample.drift):
            seen.update(dict.fromkeys(mapping))
    return sorted(seen, key=_version_key)


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in version.replace("-", ".").split("."))


def weight_series(samples: list[Sample], version: str) -> list[float]:
    """A version's route weight over time: NaN before it first appears, 0 once it has left the route."""
    series, seen = [], False
    for sample in samples:
        seen = seen or version in sample.weights
        series.append(float(sample.weights[version]) if version in sample.weights else (0.0 if seen else math.nan))
    return series


def draw(samples: list[Sample], markers: list[Marker], path: Path, *, title: str, latency_limit: float, drift_limit: float) -> Path:
    """Three stacked panels sharing the time axis; dashed lines are the checks' thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = versions_in(samples)
    figure, (weights, latency, drift) = plt.subplots(3, 1, sharex=True, figsize=(11, 8), constrained_layout=True)
    for version in versions:
        times = [s.at for s in samples]
        weights.step(times, weight_series(samples, version), where="post", label=version)
        latency.plot(times, [1000 * s.p99_seconds.get(version, math.nan) for s in samples], label=version)
        drift.plot(times, [s.drift.get(version, math.nan) for s in samples], label=version)
    latency.axhline(1000 * latency_limit, linestyle="--", color="grey", linewidth=1)
    drift.axhline(drift_limit, linestyle="--", color="grey", linewidth=1)
    weights.set(ylabel="traffic weight (%)", ylim=(-5, 105), title=title)
    latency.set(ylabel="p99 latency (ms)", yscale="log")
    drift.set(ylabel="drift (max PSI)", xlabel="seconds since the demo started")
    for axis in (weights, latency, drift):
        axis.grid(True, alpha=0.3)
        for marker in markers:
            axis.axvline(marker.at, color="black", linewidth=0.6, alpha=0.5)
    for marker in markers:
        weights.annotate(marker.label, (marker.at, 100), xytext=(3, -12), textcoords="offset points", fontsize=8)
    weights.legend(title="version", loc="center left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
