"""Canary analysis without I/O: the PromQL each check type runs, and the verdict it earns.

**One query per check type serves every live canary.** A query is grouped
``by (namespace, model, version)`` and carries no per-canary selector, so one
evaluation answers for all canaries and their stable versions at once. Queries that
differ only in their window or parameters are separate groups (:func:`group_key`);
the number of queries per tick grows with the variety of checks, never with the
number of canaries. A (namespace, model, version) missing from a result is NoData
for that canary alone.

Verdicts:

- **Pass**: enough samples, and the value (or its ratio to stable) within bounds.
- **Fail**: enough samples, and a bound crossed.
- **NoData**: no series, NaN or Inf, or fewer samples than ``minSampleCount``. Never a pass.
  A gauge the model server computes on its own schedule (the drift score) also needs to be
  fresh: a series whose ``mlmon_last_run_timestamp_seconds`` is older than
  ``FRESHNESS_INTERVALS`` of that server's ``mlmon_drift_interval_seconds`` is left out of
  the result, so a stopped or crashing drift loop reads NoData, not its last score.
- **Error**: the query itself failed (Prometheus down, timeout, bad answer). Never a pass.

**The keys are the scrape target's labels, never the workload's.** ``namespace`` is the
pod's namespace, and ``model`` and ``version`` are the pod's ``modelops.dev/deployment`` and
``modelops.dev/version`` labels (which the operator sets), all attached by the scraper with
``honor_labels: false``, so they overwrite whatever the server exports under those names (that
becomes ``exported_namespace`` and so on). A pod can therefore reach only the checks of its own
namespace, and only of the version its pod labels name (docs/metrics.md, "Labels").
Request series are selected by the server's ``api="infer"``, a name no scraper sets.

Label values that come from users (a feature or attribute name) are emitted only as
escaped string literals in ``=`` matchers, never in regular expressions; the CRD pattern
restricts them further.
"""

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelops.api.v1alpha1 import Check, Verdict, duration_seconds

SeriesKey = tuple[str, str, str]  # (namespace, model, version)
GROUPING = "namespace, model, version"
FRESHNESS_INTERVALS = 3  # a drift score older than this many of its server's evaluation intervals is NoData


@dataclass(frozen=True)
class QueryResult:
    """One executed query: values by (namespace, model, version), or the error that prevented it."""

    values: Mapping[SeriesKey, float]
    error: str | None = None


def escape_label_value(value: str) -> str:
    """A PromQL string literal for ``value``, quotes included.

    >>> escape_label_value('x"} or vector(1) #')
    '"x\\\\"} or vector(1) #"'
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _window(check: Check) -> str:
    duration_seconds(check.window)  # validates
    return check.window


def render_template(query: str, namespace: str, model: str, version: str) -> str:
    """A ClusterMetricTemplate's query for one version: each quoted placeholder becomes an escaped literal.

    >>> print(render_template('up{model="{{model}}", version="{{version}}"}', "ml", "m", 'v"1'))
    up{model="m", version="v\\"1"}
    """
    for placeholder, value in (("namespace", namespace), ("model", model), ("version", version)):
        query = query.replace(f'"{{{{{placeholder}}}}}"', escape_label_value(value))
    return query


def single_sample(result: QueryResult, key: SeriesKey) -> QueryResult:
    """A per-version template answer as a result keyed like grouped ones: one sample, or NoData, or Error."""
    if result.error is not None:
        return result
    if len(result.values) > 1:
        return QueryResult({}, error=f"the template returned {len(result.values)} series for version {key[2]}, need one")
    return QueryResult({key: value for value in result.values.values()})


SCOPE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


SCOPE_LIMIT = 10  # beyond this many alternatives a regex costs Prometheus more than reading every series


def scope_matchers(keys: Iterable[tuple[str, str]]) -> str:
    """Extra matchers that limit a grouped query to the given (namespace, model) pairs' series.

    Namespaces and ModelDeployment names are DNS labels, so they are safe in a regular
    expression as they are; anything else disables the narrowing rather than risk it. Each
    label is narrowed only while it has at most ``SCOPE_LIMIT`` values (bench/README.md).

    >>> scope_matchers([("ml", "fraud"), ("ml", "churn")])
    ', namespace=~"ml", model=~"churn|fraud"'
    """
    pairs = list(keys)
    namespaces, models = sorted({pair[0] for pair in pairs}), sorted({pair[1] for pair in pairs})
    if not namespaces or not all(SCOPE_NAME.match(name) for name in (*namespaces, *models)):
        return ""
    matchers = [(label, values) for label, values in (("namespace", namespaces), ("model", models)) if len(values) <= SCOPE_LIMIT]
    return "".join(f', {label}=~"{"|".join(values)}"' for label, values in matchers)


def fresh_drift(scope: str = "") -> str:
    """The series of model server processes whose drift loop ran within ``FRESHNESS_INTERVALS`` of its interval.

    Joined with ``and ignoring(<the gauge's own labels>)`` to a gauge the same process
    exports, it keeps each process's series only while that process's drift loop is fresh,
    before any aggregation: a stale replica cannot lend its old score to a version whose other
    replicas are fresh. A server that exports no ``mlmon_drift_interval_seconds`` has no fresh
    series at all (its checks read NoData: the interval is part of the metrics contract).
    ``time()`` is Prometheus's evaluation time, so no clock of the operator is involved.

    >>> print(fresh_drift(', namespace=~"ml"'))
    (time() - mlmon_last_run_timestamp_seconds{namespace=~"ml"} < 3 * mlmon_drift_interval_seconds{namespace=~"ml"})
    """
    matchers = f"{{{scope.removeprefix(', ')}}}" if scope else ""
    return f"(time() - mlmon_last_run_timestamp_seconds{matchers} < {FRESHNESS_INTERVALS} * mlmon_drift_interval_seconds{matchers})"


# The server counts values it was not told to track (see ``serving.labels``) under one overflow group.
# Clients choose those values, so the overflow group never enters a fairness gap: it stays visible on
# the dashboard, but junk values cannot widen (or narrow) the gap between the declared groups.
DECLARED_GROUPS = 'group!="__other__"'


def value_query(check: Check, scope: str = "") -> str:
    """The PromQL for the check's value, grouped by namespace, model and version.

    Template checks have no grouped query: their text comes from a ClusterMetricTemplate and is
    rendered per version (:func:`render_template`); this returns a reference to it.
    """
    if check.type == "template":
        return f"ClusterMetricTemplate/{check.template}"
    window = _window(check)
    if check.type == "latencyP99":
        return (
            f"histogram_quantile(0.99, sum by ({GROUPING}, le) "
            f'(rate(mlserve_request_duration_seconds_bucket{{api="infer"{scope}}}[{window}])))'
        )
    if check.type == "errorRate":
        requests = f'sum by ({GROUPING}) (rate(mlserve_requests_total{{api="infer"{scope}}}[{window}]))'
        errors = (
            f"sum by ({GROUPING}) (rate(mlserve_requests_total"
            f'{{api="infer", outcome=~"server_error|timeout"{scope}}}[{window}]))'
        )
        # "or 0 * requests": a version with traffic and no errors has no error series at all.
        return f"({errors} or 0 * {requests}) / {requests}"
    if check.type == "requestRate":
        return f'sum by ({GROUPING}) (rate(mlserve_requests_total{{api="infer"{scope}}}[{window}]))'
    if check.type == "featureDrift":
        feature = f", feature={escape_label_value(check.feature)}" if check.feature else ""
        scores = f'mlmon_feature_drift_score{{method="psi"{feature}{scope}}}'
        return f"max by ({GROUPING}) ({scores} and ignoring(feature, method) {fresh_drift(scope)})"
    if check.type == "fairnessGap":
        assert check.attribute is not None  # guaranteed by the CRD's CEL rule
        attribute = escape_label_value(check.attribute)
        positive = f'sum by ({GROUPING}, group) (rate(mlserve_group_predictions_total{{attribute={attribute}, {DECLARED_GROUPS}, predicted="1"{scope}}}[{window}]))'
        total = f"sum by ({GROUPING}, group) (rate(mlserve_group_predictions_total{{attribute={attribute}, {DECLARED_GROUPS}{scope}}}[{window}]))"
        rate = f"(({positive} or 0 * {total}) / {total})"
        return f"max by ({GROUPING}) {rate} - min by ({GROUPING}) {rate}"
    raise ValueError(f"unknown check type {check.type!r}")


def sample_query(check: Check, scope: str = "") -> str | None:
    """The PromQL counting the samples behind the check's value (None: no sample guard applies;
    a template encodes its own guard by returning nothing when data is insufficient)."""
    if check.type == "template":
        return None
    window = _window(check)
    if check.type in ("latencyP99", "errorRate", "requestRate"):
        return f'sum by ({GROUPING}) (increase(mlserve_requests_total{{api="infer"{scope}}}[{window}]))'
    if check.type == "featureDrift":
        samples = f'mlmon_window_samples{{window="current"{scope}}}'
        return f"min by ({GROUPING}) ({samples} and ignoring(window) {fresh_drift(scope)})"
    if check.type == "fairnessGap":
        assert check.attribute is not None
        attribute = escape_label_value(check.attribute)
        per_group = f"sum by ({GROUPING}, group) (increase(mlserve_group_predictions_total{{attribute={attribute}, {DECLARED_GROUPS}{scope}}}[{window}]))"
        return f"min by ({GROUPING}) ({per_group})"  # the smallest group decides
    return None


def group_key(check: Check) -> str:
    """Checks with equal keys share one query per tick."""
    return value_query(check)


def threshold_text(check: Check) -> str:
    """The rule in words, for status."""
    parts = []
    if check.min is not None:
        parts.append(f">= {check.min:g}")
    if check.max is not None:
        parts.append(f"<= {check.max:g}")
    if check.max_ratio_to_stable is not None:
        parts.append(f"<= {check.max_ratio_to_stable:g} x stable")
    return " and ".join(parts)


@dataclass(frozen=True)
class Evaluation:
    """A check's verdict for one canary (``query``: the PromQL behind it, when not the grouped one)."""

    verdict: Verdict
    value: float | None = None
    stable_value: float | None = None
    reason: str = ""
    query: str = ""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _missing_value_reason(check: Check, version: str) -> str:
    if check.type == "featureDrift":
        return (
            f"no fresh drift score for version {version}: none exported, or its last run"
            f" (mlmon_last_run_timestamp_seconds) is older than {FRESHNESS_INTERVALS} drift intervals"
        )
    return f"no value for version {version}: is it receiving traffic?"


def evaluate(
    check: Check,
    canary: SeriesKey,
    stable: SeriesKey,
    values: QueryResult,
    samples: QueryResult | None,
) -> Evaluation:
    """The verdict of ``check`` for the ``canary`` series, given the grouped query results."""
    for result in (values, samples):
        if result is not None and result.error is not None:
            return Evaluation("Error", reason=result.error)
    value = values.values.get(canary)
    if not _finite(value):
        return Evaluation("NoData", reason=_missing_value_reason(check, canary[2]))
    if samples is not None:
        count = samples.values.get(canary)
        if not _finite(count) or count < check.min_sample_count:  # type: ignore[operator]
            seen = 0 if not _finite(count) else int(count)  # type: ignore[arg-type]
            return Evaluation("NoData", value, reason=f"{seen} samples in {check.window}, need {check.min_sample_count}")
    assert value is not None
    stable_value = values.values.get(stable)
    stable_value = stable_value if _finite(stable_value) else None
    if check.max_ratio_to_stable is not None:
        if not _finite(stable_value):
            return Evaluation("NoData", value, reason=f"no value for the stable version {stable[2]} to compare with")
        assert stable_value is not None
        if value > stable_value * check.max_ratio_to_stable:
            return Evaluation("Fail", value, stable_value, f"{value:g} > {check.max_ratio_to_stable:g} x stable {stable_value:g}")
    if check.max is not None and value > check.max:
        return Evaluation("Fail", value, stable_value, f"{value:g} > max {check.max:g}")
    if check.min is not None and value < check.min:
        return Evaluation("Fail", value, stable_value, f"{value:g} < min {check.min:g}")
    return Evaluation("Pass", value, stable_value)
