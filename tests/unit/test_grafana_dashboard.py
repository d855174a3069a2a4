"""The Grafana dashboard in manifests/grafana/: a valid dashboard whose every query reads metrics the code exports.

The metric names and label names are collected from the code, never listed here: the
operator's collectors in ``modelops.metrics.operator_metrics`` and the model server's in
``modelops.serving.server.Metrics``. Renaming a metric or a label in the code without
updating the dashboard fails this test, and so does a new metric that no panel shows.
"""

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from modelops.metrics import operator_metrics
from modelops.serving.server import Metrics, ServerConfig

GRAFANA = Path(__file__).resolve().parents[2] / "manifests" / "grafana"
DASHBOARD_FILE = GRAFANA / "modelops-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Labels Prometheus attaches at scrape time (docs/metrics.md: the namespace comes from the scrape).
SCRAPE_LABELS = {"namespace", "pod", "instance", "job"}
# Grafana's own variables that may appear in a query.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}
# The sample names each metric type exposes (the OpenMetrics "_created" samples are not for dashboards).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}

STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
RANGE = re.compile(r"\[[^\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def _series(collectors: Iterable[Any]) -> dict[str, set[str]]:
    """Every sample name the collectors expose, with its label names."""
    series: dict[str, set[str]] = {}
    for collector in collectors:
        labels = set(collector._labelnames)  # prometheus_client keeps a metric's label names here
        for family in collector.describe():
            for suffix in SUFFIXES[family.type]:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def _collectors(namespace: object) -> list[MetricWrapperBase]:
    return [value for value in vars(namespace).values() if isinstance(value, MetricWrapperBase)]


OPERATOR_SERIES = _series(_collectors(operator_metrics))
SERVER_SERIES = _series(_collectors(Metrics(ServerConfig("model", "1", "file:///dev/null"))))
EXPORTED = OPERATOR_SERIES | SERVER_SERIES


def _family(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def parse(expression: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The metric selectors of a PromQL expression as (metric name, label names in its matchers), and the
    label names of its by/without/on/ignoring clauses. Enough PromQL for dashboards: no ``{__name__=...}``."""
    text = RANGE.sub(" ", STRING.sub('""', expression))
    grouping = {label.strip() for clause in GROUPING.findall(text) for label in clause.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    selectors: list[tuple[str, set[str]]] = []

    def take(match: re.Match[str]) -> str:
        assert match.group(1), f"a selector without a metric name in {expression!r}"
        selectors.append((match.group(1), set(MATCHER.findall(match.group(2)))))
        return " "

    text = SELECTOR.sub(take, text)
    for name, call in IDENTIFIER.findall(text):
        if not call and name not in PROMQL_KEYWORDS:
            selectors.append((name, set()))
    return selectors, grouping


def test_the_parser_finds_metrics_labels_and_groupings() -> None:
    selectors, grouping = parse(
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{x="1", y=~"$v"}[$__rate_interval]))) '
        "/ on (namespace) group_left b or time() - c offset 5m"
    )
    assert selectors == [("a_bucket", {"x", "y"}), ("b", set()), ("c", set())]
    assert grouping == {"namespace", "le"}


def test_the_collected_series_are_the_ones_the_code_exports() -> None:
    assert "modelops_canary_weight" in OPERATOR_SERIES and OPERATOR_SERIES["modelops_canary_weight"] == {"namespace", "modeldeployment"}
    assert "mlserve_request_duration_seconds_bucket" in SERVER_SERIES
    assert "le" in SERVER_SERIES["mlserve_request_duration_seconds_bucket"]
    assert "mlserve_requests_total" in SERVER_SERIES and "api" in SERVER_SERIES["mlserve_requests_total"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def _expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every Prometheus annotation."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_dashboard_model_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36  # Grafana 10 writes 37 and later
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == DATASOURCE, f"panel {panel['title']!r} must use the ${{datasource}} variable"
        assert panel.get("description"), f"panel {panel['title']!r} needs a description"
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no query"
        assert len({target["refId"] for target in targets}) == len(targets)
        for target in targets:
            assert target.get("datasource", DATASOURCE) == DATASOURCE
            assert target["expr"].strip()


def test_templating_has_the_datasource_namespace_and_model_variables(dashboard: dict[str, Any]) -> None:
    variables = _variables(dashboard)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name, label in (("namespace", "namespace"), ("model", "model")):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
        assert match and match.group(2) == label, variable["query"]
        [(metric, matchers)], _ = parse(match.group(1))
        assert metric in EXPORTED and label in EXPORTED[metric] | SCRAPE_LABELS
        assert matchers <= EXPORTED[metric] | SCRAPE_LABELS


def test_every_query_reads_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    variables = set(_variables(dashboard)) | GRAFANA_VARIABLES
    for where, expression in _expressions(dashboard):
        unknown_variables = set(VARIABLE.findall(expression)) - variables
        assert not unknown_variables, f"{where}: undefined variables {unknown_variables}"
        selectors, grouping = parse(expression)
        assert selectors, f"{where}: no metric in {expression!r}"
        available = set(SCRAPE_LABELS)
        for metric, matchers in selectors:
            assert metric in EXPORTED, f"{where}: {metric} is not exported by the operator or the model server"
            unknown = matchers - EXPORTED[metric] - SCRAPE_LABELS
            assert not unknown, f"{where}: {metric} has no label {unknown}"
            available |= EXPORTED[metric]
        assert grouping <= available, f"{where}: grouping by {grouping - available}, which no metric of the query has"


def test_every_exported_metric_has_a_panel(dashboard: dict[str, Any]) -> None:
    used = {_family(metric) for _, expression in _expressions(dashboard) for metric, _ in parse(expression)[0]}
    exported = {_family(name) for name in EXPORTED}
    assert exported - used == set(), "metrics the code exports but the dashboard does not show"


def test_the_operator_and_server_filters_use_the_variables(dashboard: dict[str, Any]) -> None:
    """Per-ModelDeployment metrics follow the namespace and model variables (the operator's label is modeldeployment)."""
    for where, expression in _expressions(dashboard):
        for metric, matchers in parse(expression)[0]:
            labels = EXPORTED[metric]
            if "model" in labels:
                assert {"namespace", "model"} <= matchers, f"{where}: {metric} is not filtered by $namespace and $model"
            elif "modeldeployment" in labels:
                assert {"namespace", "modeldeployment"} <= matchers, f"{where}: {metric} is not filtered by $namespace and $model"


def test_the_configmap_kustomization_wraps_the_json_for_the_grafana_sidecar() -> None:
    kustomization = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD_FILE.name]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert generator["options"]["disableNameSuffixHash"] is True
    root = yaml.safe_load((GRAFANA.parent / "kustomization.yaml").read_text())
    assert "grafana" not in root["resources"], "the dashboard is optional: manifests/ must install without Grafana"
