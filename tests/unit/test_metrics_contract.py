"""The metrics contract works with ``honor_labels: false``, so a workload cannot forge its keys.

The scraper sets ``namespace`` (and ``pod``, ``container``, ``endpoint``, ...) on every target;
the documented scrape configs also set ``model`` and ``version`` from the pod's modelops labels.
With ``honor_labels: false`` those target labels win over what a server exports. These tests hold
the three parts together: the server exports no label only a scraper should set, the operator's
queries key on the target's labels, and the scrape configs (the devcluster's and the documented
ones) set exactly those labels without honouring the workload's.
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from modelops.api.v1alpha1 import Check
from modelops.devcluster import components, targets
from modelops.devcluster.layout import StateLayout
from modelops.planning.analysis import GROUPING, sample_query, value_query
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MODEL_VERSION
from modelops.serving.server import Metrics, ServerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Target labels Prometheus or the Prometheus Operator set on a pod's scrape.
SCRAPER_LABELS = {"namespace", "pod", "container", "endpoint", "service", "job", "instance"}
# The keys of every typed query: all three come from the target.
TARGET_KEYS = {"namespace", "model", "version"}
CHECKS: list[dict[str, Any]] = [
    {"type": "latencyP99"}, {"type": "errorRate"}, {"type": "requestRate"},
    {"type": "featureDrift", "feature": "age"}, {"type": "fairnessGap", "attribute": "sex"},
]


def _server_label_names() -> set[str]:
    metrics = Metrics(ServerConfig("model", "1", "file:///dev/null"))
    collectors = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert len(collectors) >= 10
    return {label for collector in collectors for label in collector._labelnames}  # prometheus_client keeps them here


def test_the_server_exports_no_label_a_scraper_sets() -> None:
    labels = _server_label_names()
    assert labels & SCRAPER_LABELS == set()
    assert "api" in labels  # the contract's name for what was `endpoint`


def test_the_keys_of_the_queries_are_the_labels_the_scrape_sets() -> None:
    assert {label.strip() for label in GROUPING.split(",")} == TARGET_KEYS
    assert TARGET_KEYS == {"namespace", *targets.POD_LABEL_TO_TARGET_LABEL.values()}
    assert set(targets.POD_LABEL_TO_TARGET_LABEL) == {LABEL_DEPLOYMENT, LABEL_MODEL_VERSION}


@pytest.mark.parametrize("fields", CHECKS, ids=[check["type"] for check in CHECKS])
def test_typed_queries_match_no_label_only_a_scraper_or_a_forger_would_set(fields: dict[str, Any]) -> None:
    check = Check.model_validate({"name": "c", "window": "1m", "max": 1, **fields})
    for query in (value_query(check), sample_query(check)):
        assert query is not None
        matched = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"", query))
        assert matched & (SCRAPER_LABELS | {"exported_namespace", "exported_model", "exported_version"}) == set(), query
        if fields["type"] in ("latencyP99", "errorRate", "requestRate"):
            assert 'api="infer"' in query
        assert "endpoint" not in query


def test_the_devcluster_prometheus_does_not_honor_the_servers_labels(tmp_path: Path) -> None:
    [job] = components.prometheus_config(StateLayout(tmp_path))["scrape_configs"]
    assert job["honor_labels"] is False


def test_a_model_pods_target_labels_are_its_namespace_name_and_modelops_labels() -> None:
    labels = targets.pod_target_labels("ml", "fraud-1-0-0-abc", {LABEL_DEPLOYMENT: "fraud", LABEL_MODEL_VERSION: "1.0.0", "team": "x"})
    assert labels == {"namespace": "ml", "pod": "fraud-1-0-0-abc", "container": "model-server", "endpoint": "http",
                      "model": "fraud", "version": "1.0.0"}
    assert "model" not in targets.pod_target_labels("ml", "p", {}) and "version" not in targets.pod_target_labels("ml", "p", {})


def _yaml_blocks(markdown: Path) -> list[Any]:
    return [document for block in re.findall(r"```yaml\n(.*?)```", markdown.read_text(), re.S)
            for document in yaml.safe_load_all(block) if document]


def _pod_monitor(name: str) -> dict[str, Any]:
    [monitor] = [d for d in _yaml_blocks(DOCS / "operating.md") if d.get("kind") == "PodMonitor" and d["metadata"]["name"] == name]
    return monitor


def test_the_documented_pod_monitor_does_not_honor_labels_and_sets_model_and_version_from_the_pod() -> None:
    [endpoint] = _pod_monitor("modelops-model-servers")["spec"]["podMetricsEndpoints"]
    assert endpoint.get("honorLabels", False) is False
    relabelled = {rule["targetLabel"]: rule["sourceLabels"] for rule in endpoint["relabelings"]}
    assert relabelled["model"] == ["__meta_kubernetes_pod_label_modelops_dev_deployment"]
    assert relabelled["version"] == ["__meta_kubernetes_pod_label_modelops_dev_version"]
    expressions = _pod_monitor("modelops-model-servers")["spec"]["selector"]["matchExpressions"]
    assert {(e["key"], e["operator"]) for e in expressions} == {(LABEL_DEPLOYMENT, "Exists"), (LABEL_MODEL_VERSION, "Exists")}


def test_the_documented_prometheus_job_sets_every_key_from_service_discovery() -> None:
    [config] = [d for d in _yaml_blocks(DOCS / "operating.md") if "scrape_configs" in d]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "modelops-model-servers"]
    assert job.get("honor_labels", False) is False
    sources = {rule["target_label"]: rule["source_labels"] for rule in job["relabel_configs"] if "target_label" in rule}
    assert sources["namespace"] == ["__meta_kubernetes_namespace"]
    assert sources["model"] == ["__meta_kubernetes_pod_label_modelops_dev_deployment"]
    assert sources["version"] == ["__meta_kubernetes_pod_label_modelops_dev_version"]
