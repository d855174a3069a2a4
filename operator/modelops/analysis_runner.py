"""One analysis tick for every due canary at once: each distinct query runs once.

The grouping is what makes analysis scale: queries are grouped by namespace, model and
version, so ``n`` canaries with the same kind of checks cost the same few queries as one.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelops.api.v1alpha1 import Check
from modelops.planning.analysis import Evaluation, QueryResult, evaluate, sample_query, value_query


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


def run_tick(canaries: Sequence[CanaryUnderAnalysis], query: Callable[[str], QueryResult]) -> TickResult:
    """Evaluates every check of every canary, running each distinct PromQL once."""
    wanted: list[str] = []
    for canary in canaries:
        for check in canary.checks:
            for promql in (value_query(check), sample_query(check)):
                if promql is not None and promql not in wanted:
                    wanted.append(promql)
    results = {promql: query(promql) for promql in wanted}
    evaluations: dict[tuple[str, str], dict[str, Evaluation]] = {}
    for canary in canaries:
        canary_key = (canary.namespace, canary.name, canary.canary_version)
        stable_key = (canary.namespace, canary.name, canary.stable_version)
        evaluations[(canary.namespace, canary.name)] = {
            check.name: evaluate(
                check,
                canary_key,
                stable_key,
                results[value_query(check)],
                results[sample] if (sample := sample_query(check)) is not None else None,
            )
            for check in canary.checks
        }
    return TickResult(evaluations, queries=len(wanted))


__all__ = ["CanaryUnderAnalysis", "Check", "TickResult", "run_tick"]
