"""Generates the ModelDeployment CustomResourceDefinition from the pydantic models.

Written by hand rather than taken from a library: no maintained package turns pydantic v2
JSON Schema into a Kubernetes *structural* schema (inlined ``$ref``s, no ``anyOf`` for
optionals, no ``additionalProperties`` beside ``properties``, ``x-kubernetes-*`` extensions).
The conversion is small and fully covered by the CRD freshness test and the admission tests.
"""

from typing import Any

import yaml

from modelops.api import v1alpha1

PRINTER_COLUMNS = [
    {"name": "Stable", "type": "string", "jsonPath": ".status.stable.version", "description": "The stable version"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canary.version", "description": "The version rolling out"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weight", "description": "Canary traffic, percent"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pending, Progressing, Healthy, Degraded or Paused"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED_KEYS = {"title", "$defs"}


def _is_scalar(schema: Any) -> bool:
    """A map's value schema the apiserver can check (``dict[str, float]``); other maps stay free-form."""
    return isinstance(schema, dict) and schema.get("type") in ("number", "integer", "string", "boolean")


def _structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON Schema node as a structural OpenAPI v3 node."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
        return _structural(merged, definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return _structural({**options[0], **rest}, definitions)
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and not _is_scalar(value):
            continue  # free-form or nested: preserved below
        if key == "properties":
            result[key] = {name: _structural(child, definitions) for name, child in value.items()}
        elif key == "items":
            result[key] = _structural(value, definitions)
        elif key == "additionalProperties":
            result[key] = _structural(value, definitions)  # a typed map (dict[str, float]): the apiserver checks its values
        else:
            result[key] = value
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(result.get(bound), (int, float)) and not isinstance(result[bound], bool):
            result[limit], result[bound] = result[bound], True  # OpenAPI v3.0 form, which Kubernetes expects
    if result.get("type") == "object" and "properties" not in result and "additionalProperties" not in result:
        result["x-kubernetes-preserve-unknown-fields"] = True  # free-form: dict[str, Any]
    if "description" in result:
        result["description"] = " ".join(result["description"].split())
    return result


def _root_schema(model: type[v1alpha1.ApiModel], kind: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    schema["properties"] = {
        "apiVersion": {"type": "string", "description": f"APIVersion of this object: {v1alpha1.API_VERSION}."},
        "kind": {"type": "string", "description": f"Kind of this object: {kind}."},
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    schema["required"] = ["spec"]
    return schema


def openapi_schema() -> dict[str, Any]:
    """The structural schema of a ModelDeployment, as the CRD's ``openAPIV3Schema``."""
    return _root_schema(v1alpha1.ModelDeployment, v1alpha1.KIND)


LABELS = {"app.kubernetes.io/name": "modelops", "app.kubernetes.io/part-of": "modelops"}


def _definition(
    *, plural: str, kind: str, scope: str, short_names: list[str], schema: dict[str, Any], version: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{v1alpha1.GROUP}", "labels": LABELS},
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["modelops"],
            },
            "versions": [
                {"name": v1alpha1.VERSION, "served": True, "storage": True, **version, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }


def custom_resource_definition() -> dict[str, Any]:
    """The ModelDeployment CustomResourceDefinition."""
    return _definition(
        plural=v1alpha1.PLURAL,
        kind=v1alpha1.KIND,
        scope="Namespaced",
        short_names=v1alpha1.SHORT_NAMES,
        schema=openapi_schema(),
        version={"subresources": {"status": {}}, "additionalPrinterColumns": PRINTER_COLUMNS},
    )


def metric_template_definition() -> dict[str, Any]:
    """The ClusterMetricTemplate CustomResourceDefinition (cluster-scoped, admin-owned PromQL)."""
    return _definition(
        plural="clustermetrictemplates",
        kind="ClusterMetricTemplate",
        scope="Cluster",
        short_names=["cmt"],
        schema=_root_schema(v1alpha1.ClusterMetricTemplate, "ClusterMetricTemplate"),
        version={"additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
    )


def definitions() -> dict[str, dict[str, Any]]:
    """File name in crds/ -> CRD."""
    return {
        f"{crd['metadata']['name']}.yaml": crd for crd in (custom_resource_definition(), metric_template_definition())
    }


def render_yaml(crd: dict[str, Any] | None = None) -> str:
    """One CRD (default: ModelDeployment) as YAML, exactly as committed in ``crds/``."""
    header = "# Generated by `modelops crd` from operator/modelops/api/v1alpha1.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd or custom_resource_definition(), sort_keys=False, width=120)
