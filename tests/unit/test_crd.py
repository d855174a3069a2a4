"""The CRD is generated from the pydantic models, and the committed file is current."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelops.api import crd, v1alpha1

COMMITTED = Path(__file__).resolve().parents[2] / "crds" / "modeldeployments.modelops.dev.yaml"


def test_committed_crds_are_current() -> None:
    for file_name, definition in crd.definitions().items():
        committed = COMMITTED.parent / file_name
        assert committed.read_text() == crd.render_yaml(definition), f"crds/{file_name} is stale: run `make crd`"
    listed = set(yaml.safe_load((COMMITTED.parent / "kustomization.yaml").read_text())["resources"])
    assert listed == set(crd.definitions())


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, child in (schema.get("properties") or {}).items():
        nodes += _walk(child, f"{path}.{name}")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    return nodes


def test_schema_is_structural_and_bounded() -> None:
    for path, node in _walk(crd.openapi_schema()):
        assert "anyOf" not in node and "$ref" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if node.get("type") == "string" and path.startswith(".spec") and "enum" not in node:
            assert "maxLength" in node, f"{path} has no maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{path}: {bound} must be a boolean in OpenAPI v3.0"


def test_every_spec_field_is_documented() -> None:
    undocumented = [path for path, node in _walk(crd.openapi_schema()) if path.startswith(".spec") and not node.get("description")]
    undocumented = [path for path in undocumented if not path.endswith("[]")]
    assert undocumented == []


def test_printer_columns_show_stable_canary_weight_phase_age() -> None:
    version = crd.custom_resource_definition()["spec"]["versions"][0]
    visible = [column["name"] for column in version["additionalPrinterColumns"] if not column.get("priority")]
    assert visible == ["Stable", "Canary", "Weight", "Phase", "Age"]


def test_names_and_status_subresource() -> None:
    spec = crd.custom_resource_definition()["spec"]
    assert spec["names"]["shortNames"] == ["mdep"]
    assert spec["scope"] == "Namespaced"
    assert spec["versions"][0]["subresources"] == {"status": {}}


def test_the_example_parses_with_the_models() -> None:
    example = yaml.safe_load((COMMITTED.parents[1] / "examples" / "fraud-detector.yaml").read_text())
    parsed = v1alpha1.ModelDeployment.model_validate(example)
    assert parsed.spec.model.version == "2.1.0"
    assert parsed.spec.scaling.autoscaled


def test_pydantic_refuses_unknown_fields_like_the_schema() -> None:
    with pytest.raises(ValidationError, match="checksum"):
        v1alpha1.ModelSpec.model_validate({"version": "1", "uri": "s3://x/", "checksum": "abc"})


def test_every_example_parses_with_the_models() -> None:
    for path in sorted((COMMITTED.parents[1] / "examples").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        assert document["kind"] == "ModelDeployment", path
        v1alpha1.ModelDeployment.model_validate(document)


def test_committed_api_reference_is_current() -> None:
    from modelops.api import reference

    committed = COMMITTED.parents[1] / "docs" / "api-reference.md"
    assert committed.read_text() == reference.render(), "docs/api-reference.md is stale: run `make crd`"
    text = committed.read_text()
    for section in ("## ModelDeployment.spec.rollout.analysis.checks", "## ModelDeployment.status.rollout", "## ClusterMetricTemplate.spec"):
        assert section in text
