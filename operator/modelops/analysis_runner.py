"""One analysis tick for every due canary at once: each distinct query runs once.

:func:`run_tick_concurrently` is what the operator runs: the tick's queries go out at once, and
each canary is evaluated as soon as its own queries have answered, within a per-tick budget.
:func:`run_tick` is the same evaluation, sequential (benchmarks and tests).

The grouping is what makes analysis scale: queries are grouped by namespace, model and
version, so ``n`` canaries with the same kind of checks cost the same few queries as one.
Each query is narrowed to the due canaries' namespaces and models (``scope_matchers``), so
Prometheus reads only their series, not every model's in the cluster.
"""

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from modelops.api import v1alpha1
from modelops.api.v1alpha1 import Check
from modelops.planning.analysis import (
    Evaluation,
    QueryResult,
    evaluate,
    render_template,
    sample_query,
    scope_matchers,
    single_sample,
    value_query,
)
from modelops.planning.monitoring import monitoring_due
from modelops.planning.rollout import analysis_due


@dataclass(frozen=True)
class CanaryUnderAnalysis:
    namespace: str
    name: str
    stable_version: str
    canary_version: str
    checks: Sequence[Check]


@dataclass(frozen=True)
class TickResult:
    evaluations: dict[tuple[str, str], dict[str, Evaluation]]
    queries: int


def _template_queries(canary: CanaryUnderAnalysis, check: Check, templates: Mapping[str, str | None]) -> tuple[str, str] | None:
    text = templates.get(check.template or "")
    if text is None:
        return None
    return (
        render_template(text, canary.namespace, canary.name, canary.canary_version),
        render_template(text, canary.namespace, canary.name, canary.stable_version),
    )


@dataclass(frozen=True)
class TickQueries:
    """The distinct queries of one tick, and which of them each canary needs."""

    scope: str
    queries: list[str]
    needs: dict[tuple[str, str], frozenset[str]]


def plan_queries(canaries: Sequence[CanaryUnderAnalysis], templates: Mapping[str, str | None] | None = None) -> TickQueries:
    """Every distinct PromQL the canaries' checks need, in a stable order."""
    templates = templates or {}
    scope = scope_matchers((canary.namespace, canary.name) for canary in canaries)
    wanted: list[str] = []
    needs: dict[tuple[str, str], frozenset[str]] = {}
    for canary in canaries:
        mine: list[str] = []
        for check in canary.checks:
            rendered = _template_queries(canary, check, templates) if check.type == "template" else None
            candidates = rendered or ((value_query(check, scope), sample_query(check, scope)) if check.type != "template" else ())
            mine += [promql for promql in candidates if promql is not None]
        needs[(canary.namespace, canary.name)] = frozenset(mine)
        for promql in mine:
            if promql not in wanted:
                wanted.append(promql)
    return TickQueries(scope, wanted, needs)


def evaluate_canary(
    canary: CanaryUnderAnalysis, scope: str, templates: Mapping[str, str | None], results: Mapping[str, QueryResult]
) -> dict[str, Evaluation]:
    """The verdict of each of the canary's checks, from the results of the tick's queries."""
    canary_key = (canary.namespace, canary.name, canary.canary_version)
    stable_key = (canary.namespace, canary.name, canary.stable_version)
    verdicts: dict[str, Evaluation] = {}
    for check in canary.checks:
        if check.type == "template":
            verdicts[check.name] = _evaluate_template(check, canary, canary_key, stable_key, templates, results)
            continue
        sample = sample_query(check, scope)
        verdicts[check.name] = evaluate(
            check, canary_key, stable_key, results[value_query(check, scope)], results[sample] if sample else None
        )
    return verdicts


def run_tick(
    canaries: Sequence[CanaryUnderAnalysis],
    query: Callable[[str], QueryResult],
    templates: Mapping[str, str | None] | None = None,
) -> TickResult:
    """Evaluates every check of every canary, running each distinct PromQL once, one after the other.

    ``templates`` maps ClusterMetricTemplate names to their query (None: not found). Template
    checks are the one exception to grouping: their queries are rendered per version.
    """
    templates = templates or {}
    planned = plan_queries(canaries, templates)
    results = {promql: query(promql) for promql in planned.queries}
    evaluations = {(c.namespace, c.name): evaluate_canary(c, planned.scope, templates, results) for c in canaries}
    return TickResult(evaluations, queries=len(planned.queries))


def run_tick_concurrently(
    canaries: Sequence[CanaryUnderAnalysis],
    query: Callable[[str], QueryResult],
    templates: Mapping[str, str | None] | None,
    pool: Executor,
    budget_seconds: float,
    on_evaluated: Callable[[CanaryUnderAnalysis, dict[str, Evaluation]], None],
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Runs the tick's queries at once on ``pool`` and hands each canary its verdicts as soon as
    *its* queries are answered, so one slow query delays only the canaries that need it.

    A query that has not answered ``budget_seconds`` after the tick began counts as an error
    (an Error verdict, never a Pass) and the canaries waiting for it are evaluated then; the
    query itself runs on until its own timeout, unawaited. Returns the number of queries.
    """
    templates = templates or {}
    planned = plan_queries(canaries, templates)
    deadline = clock() + budget_seconds
    futures: dict[Future[QueryResult], str] = {pool.submit(query, promql): promql for promql in planned.queries}
    results: dict[str, QueryResult] = {}
    waiting = list(canaries)
    running = set(futures)
    while waiting:
        waiting = _hand_over_answered(waiting, planned, templates, results, on_evaluated)
        if not waiting:
            break
        remaining = deadline - clock()
        if remaining <= 0 or not running:
            break
        done, running = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
        for future in done:
            results[futures[future]] = _outcome(future)
    late = QueryResult({}, error=f"no answer within the analysis budget of {budget_seconds:g}s")
    for promql in planned.queries:
        results.setdefault(promql, late)
    _hand_over_answered(waiting, planned, templates, results, on_evaluated)
    return len(planned.queries)


def _outcome(future: "Future[QueryResult]") -> QueryResult:
    error = future.exception()
    if error is not None:  # the query function returns errors as values; this is a bug, not a verdict
        return QueryResult({}, error=f"query failed: {type(error).__name__}")
    return future.result()


def _hand_over_answered(
    waiting: Sequence[CanaryUnderAnalysis],
    planned: TickQueries,
    templates: Mapping[str, str | None],
    results: Mapping[str, QueryResult],
    on_evaluated: Callable[[CanaryUnderAnalysis, dict[str, Evaluation]], None],
) -> list[CanaryUnderAnalysis]:
    """Evaluates and hands over every waiting canary whose queries are all answered; returns the others."""
    still: list[CanaryUnderAnalysis] = []
    for canary in waiting:
        if planned.needs[(canary.namespace, canary.name)] <= results.keys():
            on_evaluated(canary, evaluate_canary(canary, planned.scope, templates, results))
        else:
            still.append(canary)
    return still


def _evaluate_template(
    check: Check,
    canary: CanaryUnderAnalysis,
    canary_key: tuple[str, str, str],
    stable_key: tuple[str, str, str],
    templates: Mapping[str, str | None],
    results: Mapping[str, QueryResult],
) -> Evaluation:
    rendered = _template_queries(canary, check, templates)
    if rendered is None:
        return Evaluation("Error", reason=f"ClusterMetricTemplate {check.template} not found")
    canary_query, stable_query = rendered
    canary_result = single_sample(results[canary_query], canary_key)
    stable_result = single_sample(results[stable_query], stable_key)
    error = canary_result.error or stable_result.error
    merged = QueryResult({**canary_result.values, **stable_result.values}, error=error)
    return replace(evaluate(check, canary_key, stable_key, merged, None), query=canary_query)


Watched = tuple[v1alpha1.ModelDeploymentSpec, v1alpha1.ModelDeploymentStatus]


def parse_watched(body: Mapping[str, Any]) -> Watched | None:
    """A watched body's spec and status, parsed once when it arrives (None when the models refuse it)."""
    try:
        spec = v1alpha1.ModelDeploymentSpec.model_validate(body.get("spec") or {})
        status = v1alpha1.ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None
    return spec, status


def _parsed(watched: Mapping[tuple[str, str], Watched | None]) -> Iterator[tuple[str, str, v1alpha1.ModelDeploymentSpec, v1alpha1.ModelDeploymentStatus]]:
    for (namespace, name), parsed in watched.items():
        if parsed is not None:
            yield namespace, name, *parsed


def due_canaries(watched: Mapping[tuple[str, str], Watched | None], now: str) -> list[tuple[CanaryUnderAnalysis, str]]:
    """Live canaries whose checks should run now, with the revision they are for."""
    due = []
    for namespace, name, spec, status in _parsed(watched):
        if status.stable is None or status.rollout is None or not analysis_due(status, now):
            continue
        if status.rollout.revision != spec.model.version or spec.rollout.skip_analysis:
            continue
        revision = status.rollout.revision
        due.append((CanaryUnderAnalysis(namespace, name, status.stable.version, revision, spec.rollout.analysis.checks), revision))
    return due


def due_monitors(watched: Mapping[tuple[str, str], Watched | None], now: str) -> list[tuple[CanaryUnderAnalysis, str]]:
    """Stable versions whose monitoring checks should run now, with the version they are for."""
    due = []
    for namespace, name, spec, status in _parsed(watched):
        if spec.monitoring is None or status.stable is None or not monitoring_due(spec, status, now):
            continue
        version = status.stable.version
        due.append((CanaryUnderAnalysis(namespace, name, version, version, spec.monitoring.checks), version))
    return due
