"""Query building (one grouped query per check type, escaped labels) and verdicts."""

import math

import pytest

from modelops.api.v1alpha1 import Check
from modelops.planning.analysis import (
    QueryResult,
    escape_label_value,
    evaluate,
    group_key,
    sample_query,
    scope_matchers,
    threshold_text,
    value_query,
)

CANARY = ("ml", "fraud", "2.2.0")
STABLE = ("ml", "fraud", "2.1.0")


def check(**fields: object) -> Check:
    return Check.model_validate({"name": "c", "type": "latencyP99", "max": 0.25} | fields)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", '"plain"'),
        ('x"} or vector(1) #', '"x\\"} or vector(1) #"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
    ],
)
def test_label_values_are_escaped_string_literals(value: str, literal: str) -> None:
    assert escape_label_value(value) == literal


def test_hostile_feature_and_attribute_names_are_refused_by_the_api() -> None:
    with pytest.raises(ValueError):
        check(type="featureDrift", feature='x"} or vector(0) #')
    with pytest.raises(ValueError):
        check(type="fairnessGap", attribute="a\"}")


def test_queries_are_grouped_and_carry_no_per_canary_selector() -> None:
    for kind, extra in [("latencyP99", {}), ("errorRate", {}), ("requestRate", {}), ("featureDrift", {}), ("fairnessGap", {"attribute": "sex"})]:
        query = value_query(check(type=kind, **extra))
        assert "namespace, model, version" in query
        assert "2.2.0" not in query and "fraud" not in query and 'namespace="' not in query


def test_latency_query_keeps_le_and_uses_the_window() -> None:
    query = value_query(check(window="2m"))
    assert query == (
        "histogram_quantile(0.99, sum by (namespace, model, version, le) "
        '(rate(mlserve_request_duration_seconds_bucket{api="infer"}[2m])))'
    )


def test_error_rate_query_counts_zero_errors_as_zero_not_no_data() -> None:
    query = value_query(check(type="errorRate", max=0.01))
    assert 'outcome=~"server_error|timeout"' in query
    assert " or 0 * " in query


def test_feature_and_attribute_are_matched_as_escaped_equals() -> None:
    assert 'feature="age"' in value_query(check(type="featureDrift", feature="age"))
    fairness = value_query(check(type="fairnessGap", attribute="sex", max=0.1))
    assert 'attribute="sex"' in fairness and "=~" not in fairness.replace('outcome=~', "")


def test_a_drift_score_counts_only_while_its_servers_last_run_is_within_three_intervals() -> None:
    """Freshness is joined per server process (every label but the gauge's own) before aggregating."""
    fresh = "(time() - mlmon_last_run_timestamp_seconds < 3 * mlmon_drift_interval_seconds)"
    assert value_query(check(type="featureDrift", feature="age")) == (
        f'max by (namespace, model, version) (mlmon_feature_drift_score{{method="psi", feature="age"}} and ignoring(feature, method) {fresh})'
    )
    assert sample_query(check(type="featureDrift")) == (
        f'min by (namespace, model, version) (mlmon_window_samples{{window="current"}} and ignoring(window) {fresh})'
    )


def test_drift_freshness_is_narrowed_to_the_same_scope_and_keeps_label_values_escaped() -> None:
    scope = scope_matchers([("ml", "fraud"), ("ml", "churn")])
    query = value_query(check(type="featureDrift", feature="a.b:c-d_1"), scope)
    assert query == (
        'max by (namespace, model, version) (mlmon_feature_drift_score{method="psi", feature="a.b:c-d_1", namespace=~"ml", model=~"churn|fraud"}'
        ' and ignoring(feature, method) (time() - mlmon_last_run_timestamp_seconds{namespace=~"ml", model=~"churn|fraud"}'
        ' < 3 * mlmon_drift_interval_seconds{namespace=~"ml", model=~"churn|fraud"}))'
    )
    assert query.count("(") == query.count(")")


def test_one_drift_query_serves_every_canary_of_a_tick_and_a_stale_one_is_no_data() -> None:
    from modelops.analysis_runner import CanaryUnderAnalysis, run_tick

    drift = check(name="drift", type="featureDrift", max=0.2, minSampleCount=500)
    canaries = [CanaryUnderAnalysis("ml", name, "1", "2", [drift]) for name in ("a", "b", "c")]
    asked: list[str] = []

    def query(promql: str) -> QueryResult:
        asked.append(promql)
        if promql.startswith("max"):  # a's score is fresh; b's went stale, so Prometheus left it out
            return result({("ml", "a", "2"): 0.05})
        return result({("ml", "a", "2"): 900, ("ml", "b", "2"): 900})

    tick = run_tick(canaries, query)
    assert len(asked) == 2 and all("mlmon_last_run_timestamp_seconds" in promql for promql in asked)
    verdicts = {name: tick.evaluations[("ml", name)]["drift"] for name in ("a", "b", "c")}
    assert verdicts["a"].verdict == "Pass"
    assert verdicts["b"].verdict == verdicts["c"].verdict == "NoData"
    assert "no fresh drift score for version 2" in verdicts["b"].reason and "3 drift intervals" in verdicts["b"].reason


def test_checks_with_the_same_query_share_a_group() -> None:
    assert group_key(check(name="a")) == group_key(check(name="b", max=0.5))
    assert group_key(check(window="1m")) != group_key(check(window="5m"))


def test_sample_guard_queries() -> None:
    assert "increase(mlserve_requests_total" in (sample_query(check()) or "")
    assert 'mlmon_window_samples{window="current"}' in (sample_query(check(type="featureDrift")) or "")
    assert "min by (namespace, model, version)" in (sample_query(check(type="fairnessGap", attribute="g")) or "")


def result(values: dict[tuple[str, str, str], float]) -> QueryResult:
    return QueryResult(values)


ENOUGH = result({CANARY: 500, STABLE: 5000})


@pytest.mark.parametrize(
    ("spec", "values", "samples", "verdict"),
    [
        ({"max": 0.25}, {CANARY: 0.1}, ENOUGH, "Pass"),
        ({"max": 0.25}, {CANARY: 0.3}, ENOUGH, "Fail"),
        ({"max": 0.25}, {CANARY: 0.25}, ENOUGH, "Pass"),
        ({"min": 5.0, "type": "requestRate"}, {CANARY: 4.0}, ENOUGH, "Fail"),
        ({"max": 0.25}, {}, ENOUGH, "NoData"),
        ({"max": 0.25}, {CANARY: math.nan}, ENOUGH, "NoData"),
        ({"max": 0.25}, {CANARY: math.inf}, ENOUGH, "NoData"),
        ({"max": 0.25}, {CANARY: 0.1}, result({CANARY: 20}), "NoData"),
        ({"max": 0.25}, {CANARY: 0.1}, result({}), "NoData"),
        ({"maxRatioToStable": 1.2}, {CANARY: 0.13, STABLE: 0.1}, ENOUGH, "Fail"),
        ({"maxRatioToStable": 1.2}, {CANARY: 0.11, STABLE: 0.1}, ENOUGH, "Pass"),
        ({"maxRatioToStable": 1.2}, {CANARY: 0.11}, ENOUGH, "NoData"),
        ({"maxRatioToStable": 1.2, "max": 1.0}, {CANARY: 0.13, STABLE: 0.1}, ENOUGH, "Fail"),
        ({"maxRatioToStable": 1.2, "max": 0.12}, {CANARY: 0.115, STABLE: 0.1}, ENOUGH, "Pass"),
    ],
)
def test_verdicts(spec: dict[str, object], values: dict, samples: QueryResult, verdict: str) -> None:
    fields = {"max": None} | spec
    evaluation = evaluate(check(**fields), CANARY, STABLE, result(values), samples)
    assert evaluation.verdict == verdict, evaluation


def test_errors_never_pass_and_name_the_cause() -> None:
    evaluation = evaluate(check(), CANARY, STABLE, QueryResult({}, error="timeout after 5s"), ENOUGH)
    assert (evaluation.verdict, evaluation.reason) == ("Error", "timeout after 5s")
    evaluation = evaluate(check(), CANARY, STABLE, result({CANARY: 0.1}), QueryResult({}, error="connection refused"))
    assert evaluation.verdict == "Error"


def test_no_data_reason_names_the_sample_count() -> None:
    evaluation = evaluate(check(minSampleCount=100), CANARY, STABLE, result({CANARY: 0.1}), result({CANARY: 7}))
    assert evaluation.reason == "7 samples in 1m, need 100"


def test_a_nan_stable_value_never_reaches_status() -> None:
    evaluation = evaluate(check(), CANARY, STABLE, result({CANARY: 0.1, STABLE: math.nan}), ENOUGH)
    assert evaluation.stable_value is None


def test_threshold_text() -> None:
    assert threshold_text(check(min=1, max=2, maxRatioToStable=1.2)) == ">= 1 and <= 2 and <= 1.2 x stable"


def test_template_queries_are_rendered_per_version_with_escaped_literals() -> None:
    from modelops.analysis_runner import CanaryUnderAnalysis, run_tick

    template_check = Check.model_validate({"name": "custom", "type": "template", "template": "ok-ratio", "min": 0.9})
    canaries = [CanaryUnderAnalysis("ml", "fraud", "2.1.0", "2.2.0", [template_check])]
    asked: list[str] = []

    def query(promql: str) -> QueryResult:
        asked.append(promql)
        return QueryResult({("", "", ""): 0.95 if 'version="2.2.0"' in promql else 0.99})

    text = 'sum(rate(ok{namespace="{{namespace}}", model="{{model}}", version="{{version}}"}[1m]))'
    tick = run_tick(canaries, query, {"ok-ratio": text})
    assert asked == [
        'sum(rate(ok{namespace="ml", model="fraud", version="2.2.0"}[1m]))',
        'sum(rate(ok{namespace="ml", model="fraud", version="2.1.0"}[1m]))',
    ]
    evaluation = tick.evaluations[("ml", "fraud")]["custom"]
    assert (evaluation.verdict, evaluation.value, evaluation.stable_value) == ("Pass", 0.95, 0.99)
    assert evaluation.query == asked[0]


def test_a_missing_template_or_an_ambiguous_answer_is_an_error() -> None:
    from modelops.analysis_runner import CanaryUnderAnalysis, run_tick

    template_check = Check.model_validate({"name": "custom", "type": "template", "template": "gone", "max": 1})
    canaries = [CanaryUnderAnalysis("ml", "fraud", "1", "2", [template_check])]
    tick = run_tick(canaries, lambda q: QueryResult({}), {"gone": None})
    assert tick.evaluations[("ml", "fraud")]["custom"].verdict == "Error"
    two = QueryResult({("a", "", ""): 1.0, ("b", "", ""): 2.0})
    tick = run_tick(canaries, lambda q: two, {"gone": 'x{version="{{version}}"}'})
    assert tick.evaluations[("ml", "fraud")]["custom"].reason == "the template returned 2 series for version 2, need one"


def test_one_tick_makes_the_same_queries_for_one_canary_or_fifty() -> None:
    from modelops.analysis_runner import CanaryUnderAnalysis, run_tick

    checks = [check(name="latency"), check(name="errors", type="errorRate", max=0.01), check(name="rate", type="requestRate", min=1)]
    counts = []
    for count in (1, 50):
        canaries = [CanaryUnderAnalysis("ml", f"model-{i}", "1", "2", checks) for i in range(count)]
        counts.append(run_tick(canaries, lambda q: QueryResult({})).queries)
    assert counts == [4, 4]  # three value queries and one shared sample-count query


def test_grouped_queries_are_narrowed_to_the_due_canaries() -> None:
    from modelops.planning.analysis import scope_matchers

    scope = scope_matchers([("ml", "fraud"), ("risk", "churn")])
    assert scope == ', namespace=~"ml|risk", model=~"churn|fraud"'
    query = value_query(check(type="errorRate", max=0.1), scope)
    assert query.count('namespace=~"ml|risk", model=~"churn|fraud"') == 3  # every selector in the query
    assert scope_matchers([("ml", "Not.A.Label")]) == ""  # never a regex built from unexpected text
    assert scope_matchers(pair for pair in [("ml", "fraud")]) == ', namespace=~"ml", model=~"fraud"'  # any iterable


def test_due_canaries_and_monitors_are_found_from_watched_bodies() -> None:
    from modelops.analysis_runner import due_canaries, due_monitors, parse_watched

    spec = {
        "model": {"version": "2", "uri": "s3://m/2/"},
        "runtime": {"image": "registry.example/server:1"},
        "rollout": {"analysis": {"checks": [{"name": "latency", "type": "latencyP99", "max": 0.2}]}},
        "monitoring": {"checks": [{"name": "drift", "type": "featureDrift", "max": 0.2}]},
    }
    live = {"stable": {"version": "1", "deployment": "m-1"},
            "rollout": {"revision": "2", "stepStartedAt": "2026-11-26T11:00:00Z", "lastProgressAt": "2026-11-26T11:00:00Z", "nextAnalysisAt": "2026-11-26T12:00:00Z",
                        "checks": [{"name": "latency", "type": "latencyP99"}]}}
    bodies = {key: parse_watched(body) for key, body in {
        ("ml", "m"): {"spec": spec, "status": live}, ("ml", "broken"): {"spec": {"model": {}}, "status": {}},
    }.items()}
    [(canary, revision)] = due_canaries(bodies, "2026-11-26T12:00:01Z")
    assert (canary.name, canary.stable_version, canary.canary_version, revision) == ("m", "1", "2", "2")
    assert due_canaries(bodies, "2026-11-26T11:59:59Z") == []  # not yet due
    [(monitor, version)] = due_monitors(bodies, "2026-11-26T12:00:01Z")
    assert (monitor.canary_version, version, [c.name for c in monitor.checks]) == ("1", "1", ["drift"])


def test_the_overflow_group_never_enters_a_fairness_gap() -> None:
    """Values clients send that the profile does not declare are counted under __other__: they must
    not widen the gap (a client could fail a canary) or hide a small group in the sample guard."""
    fairness = check(type="fairnessGap", attribute="sex", max=0.1)
    value, samples = value_query(fairness), sample_query(fairness) or ""
    for query in (value, samples):
        selectors = query.count("mlserve_group_predictions_total{")
        assert selectors > 0 and query.count('group!="__other__"') == selectors  # every selector leaves it out
