"""Analysis ticks run their queries at once: a slow query holds up only the canaries that need it,
and one that outlasts the tick's budget is an Error verdict, never a Pass."""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelops.analysis_runner import CanaryUnderAnalysis, run_tick, run_tick_concurrently
from modelops.api.v1alpha1 import Check
from modelops.planning.analysis import Evaluation, QueryResult

SLOW = 'slow{namespace="{{namespace}}", model="{{model}}", version="{{version}}"}'
TEMPLATE = Check.model_validate({"name": "slow", "type": "template", "template": "slow", "max": 1})
ERRORS = Check.model_validate({"name": "errors", "type": "errorRate", "max": 0.1, "minSampleCount": 1})
SLOW_CANARY = CanaryUnderAnalysis("ml", "slowpoke", "1", "2", [TEMPLATE])
FAST_CANARY = CanaryUnderAnalysis("ml", "fast", "1", "2", [ERRORS])


def _answer(promql: str) -> QueryResult:
    """Half a percent of errors for every version of every model, with enough samples."""
    return QueryResult({(ns, model, version): 0.005 if "rate" in promql and "[1m]" in promql and "/" in promql else 50.0
                        for ns, model, version in [("ml", "fast", "1"), ("ml", "fast", "2")]})


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True)


def test_a_canary_is_handed_its_verdicts_while_another_canarys_query_still_hangs(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    handed: list[tuple[str, dict[str, Evaluation], bool]] = []

    def query(promql: str) -> QueryResult:
        if promql.startswith("slow"):
            release.wait(10)  # hangs until the fast canary has had its verdicts
            return QueryResult({("", "", ""): 0.5})
        return _answer(promql)

    def evaluated(canary: CanaryUnderAnalysis, evaluations: dict[str, Evaluation]) -> None:
        handed.append((canary.name, evaluations, release.is_set()))
        release.set()

    run_tick_concurrently([SLOW_CANARY, FAST_CANARY], query, {"slow": SLOW}, pool, 10, evaluated)
    assert [(name, released) for name, _, released in handed] == [("fast", False), ("slowpoke", True)]
    assert handed[0][1]["errors"].verdict == "Pass"
    assert handed[1][1]["slow"].verdict == "Pass"


def test_a_query_that_outlasts_the_budget_is_an_error_and_the_others_are_not_held(pool: ThreadPoolExecutor) -> None:
    never = threading.Event()
    handed: dict[str, dict[str, Evaluation]] = {}

    def query(promql: str) -> QueryResult:
        if promql.startswith("slow"):
            never.wait(5)
        return _answer(promql)

    try:
        count = run_tick_concurrently([SLOW_CANARY, FAST_CANARY], query, {"slow": SLOW}, pool, 0.2,
                                      lambda canary, evaluations: handed.__setitem__(canary.name, evaluations))
    finally:
        never.set()
    slow = handed["slowpoke"]["slow"]
    assert slow.verdict == "Error" and "no answer within the analysis budget of 0.2s" in slow.reason
    assert handed["fast"]["errors"].verdict == "Pass"
    assert count == 4  # the template for the canary and the stable version, errorRate's value and sample queries


def test_a_query_function_that_raises_is_an_error_verdict(pool: ThreadPoolExecutor) -> None:
    handed: dict[str, dict[str, Evaluation]] = {}

    def broken(promql: str) -> QueryResult:
        raise RuntimeError("bug")

    run_tick_concurrently([FAST_CANARY], broken, {}, pool, 5, lambda canary, evaluations: handed.__setitem__(canary.name, evaluations))
    assert handed["fast"]["errors"].verdict == "Error"


def test_concurrent_and_sequential_ticks_agree(pool: ThreadPoolExecutor) -> None:
    canaries = [SLOW_CANARY, FAST_CANARY]
    sequential = run_tick(canaries, _answer, {"slow": SLOW}).evaluations
    concurrent: dict[tuple[str, str], dict[str, Evaluation]] = {}
    run_tick_concurrently(canaries, _answer, {"slow": SLOW}, pool, 5,
                          lambda canary, evaluations: concurrent.__setitem__((canary.namespace, canary.name), evaluations))
    assert concurrent == sequential
