"""The pure helpers of the benchmarks: percentiles, audit-log counting, metrics text, VmRSS."""

import doctest
import json
from typing import Any

import pytest

from bench import common
from bench.common import AuditFilter, audit_writes, describe_writes, metric_value, percentile, resident_kib, summarize

USER = "system:serviceaccount:modelops-system:modelops"


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([7.0], 0.5, 7.0),
        ([7.0], 0.99, 7.0),
        ([3, 1, 2], 0.5, 2),
        ([1, 2, 3, 4], 0.5, 2),  # nearest rank: ceil(0.5 x 4) = 2nd, no interpolation
        ([1, 2, 3, 4], 0.51, 3),
        (list(range(1, 21)), 0.5, 10),
        (list(range(1, 21)), 0.95, 19),
        (list(range(1, 21)), 0.99, 20),  # with 20 samples p99 is the maximum
        (list(range(1, 101)), 0.99, 99),
        (list(range(1, 201)), 0.99, 198),
        ([5, 5, 1, 9], 1.0, 9),
    ],
)
def test_percentile_is_the_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == expected


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 0.5)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(("values", "fraction"), [([], 0.5), ([1.0], 0.0), ([1.0], 1.5), ([1.0], -0.1)])
def test_percentile_refuses_what_has_no_answer(values: list[float], fraction: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, fraction)


def test_summarize_rounds_to_milliseconds() -> None:
    assert summarize([0.1234, 0.5, 0.2, 2.00049]) == {"n": 4, "p50": 0.2, "p99": 2.0, "min": 0.123, "max": 2.0}


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(common)
    assert result.attempted > 0 and result.failed == 0


def entry(
    *, verb: str = "patch", user: str = USER, at: str = "2026-11-26T10:00:05.000000Z", namespace: str | None = "ns-a",
    resource: str = "modeldeployments", subresource: str | None = None, stage: str = "ResponseComplete",
) -> str:
    reference: dict[str, Any] = {"resource": resource, "name": "m"}
    if namespace is not None:
        reference["namespace"] = namespace
    if subresource:
        reference["subresource"] = subresource
    return json.dumps({
        "kind": "Event", "stage": stage, "verb": verb, "user": {"username": user},
        "requestReceivedTimestamp": at, "objectRef": reference,
    })


WINDOW = AuditFilter(user=USER, since="2026-11-26T10:00:00.000000Z", until="2026-11-26T10:01:00.000000Z")


def test_audit_writes_counts_completed_writes_by_the_user_inside_the_window() -> None:
    lines = [
        entry(),  # counted
        entry(verb="create", resource="events"),  # counted: an Event is a write too
        entry(stage="ResponseStarted"),  # the same request's other stage: never counted twice
        entry(user="system:admin"),  # someone else
        entry(at="2026-11-26T09:59:59.999999Z"),  # before
        entry(at="2026-11-26T10:01:00.000001Z"),  # after
        entry(verb="get"),  # not a write (the devcluster's audit policy logs none, but be sure)
        entry(verb="watch"),
    ]
    found = audit_writes(lines, WINDOW)
    assert [(e["verb"], e["objectRef"]["resource"]) for e in found] == [("patch", "modeldeployments"), ("create", "events")]


def test_audit_window_bounds_are_exclusive_then_inclusive() -> None:
    lines = [entry(at=WINDOW.since), entry(at=WINDOW.until)]
    assert [e["requestReceivedTimestamp"] for e in audit_writes(lines, WINDOW)] == [WINDOW.until]


def test_audit_writes_can_be_limited_to_namespaces() -> None:
    lines = [entry(namespace="ns-a"), entry(namespace="ns-b"), entry(namespace=None, resource="namespaces", verb="delete")]
    everywhere = audit_writes(lines, WINDOW)
    only_a = audit_writes(lines, AuditFilter(user=USER, since=WINDOW.since, until=WINDOW.until, namespaces=frozenset({"ns-a"})))
    assert len(everywhere) == 3
    assert [e["objectRef"]["namespace"] for e in only_a] == ["ns-a"]


def test_audit_writes_skip_a_torn_last_line() -> None:
    lines = [entry(), entry()[:40]]
    assert len(audit_writes(lines, WINDOW)) == 1


def test_every_write_verb_counts() -> None:
    verbs = ["create", "update", "patch", "delete", "deletecollection"]
    assert [e["verb"] for e in audit_writes([entry(verb=v) for v in verbs], WINDOW)] == verbs


def test_describe_writes_groups_by_verb_and_resource() -> None:
    entries = [json.loads(line) for line in (
        entry(subresource="status"), entry(subresource="status"), entry(verb="create", resource="events"), entry(resource="deployments"),
    )]
    assert describe_writes(entries) == {"create events": 1, "patch deployments": 1, "patch modeldeployments/status": 2}


METRICS = """# HELP modelops_reconcile_total Reconciliation passes by result.
# TYPE modelops_reconcile_total counter
modelops_reconcile_total{result="ok"} 1200.0
modelops_reconcile_total{result="error"} 3.0
# HELP modelops_reconcile_duration_seconds Duration of one reconciliation pass.
# TYPE modelops_reconcile_duration_seconds histogram
modelops_reconcile_duration_seconds_bucket{le="0.005"} 10.0
modelops_reconcile_duration_seconds_bucket{le="+Inf"} 1203.0
modelops_reconcile_duration_seconds_count 1203.0
modelops_reconcile_duration_seconds_sum 48.5
"""


def test_metric_value_sums_matching_samples() -> None:
    assert metric_value(METRICS, "modelops_reconcile_total") == 1203
    assert metric_value(METRICS, "modelops_reconcile_total", {"result": "error"}) == 3
    assert metric_value(METRICS, "modelops_reconcile_duration_seconds_sum") == 48.5
    assert metric_value(METRICS, "modelops_reconcile_duration_seconds_bucket", {"le": "+Inf"}) == 1203
    assert metric_value(METRICS, "modelops_rollbacks_total") == 0


def test_resident_kib_reads_vmrss() -> None:
    status = "Name:\tpython\nVmPeak:\t  900000 kB\nVmRSS:\t  123456 kB\nRssAnon:\t  100000 kB\n"
    assert resident_kib(status) == 123456


def test_resident_kib_without_the_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        resident_kib("Name:\tkthreadd\nState:\tS (sleeping)\n")


def test_minimal_modeldeployment_is_valid_for_the_api_models() -> None:
    from modelops.api.v1alpha1 import ModelDeploymentSpec
    from modelops.planning.children import replicas

    manifest = common.minimal_modeldeployment("m-0001", "ns", replicas=2)
    spec = ModelDeploymentSpec.model_validate(manifest["spec"])
    assert replicas(spec) == 2 and spec.scaling.max_replicas is None  # fixed replicas: no HPA


@pytest.mark.parametrize(
    ("generation", "observed", "ready", "expected"),
    [(1, 1, "True", True), (2, 1, "True", False), (1, 1, "False", False), (1, None, "True", False)],
)
def test_is_ready_needs_the_condition_for_the_current_generation(generation: int, observed: int | None, ready: str, expected: bool) -> None:
    body = {"metadata": {"generation": generation}, "status": {"observedGeneration": observed, "conditions": [{"type": "Ready", "status": ready}]}}
    assert common.is_ready(body) is expected
