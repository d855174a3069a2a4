"""Builders for planning tests: specs, and a simulated cluster that holds what was applied."""

import copy
from typing import Any

from modelops.api.v1alpha1 import ModelDeploymentSpec
from modelops.planning import reconcile as planning
from modelops.planning import revisions
from modelops.planning.children import LABEL_MODEL_VERSION, Owner

OWNER = Owner(name="fraud-detector", namespace="ml", uid="uid-1")
NOW = "2026-11-26T12:00:00Z"
LATER = "2026-11-26T12:05:00Z"


def at(seconds: int) -> str:
    """RFC 3339 time ``seconds`` after NOW."""
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2026-11-26T{12 + hours:02d}:{minutes:02d}:{rest:02d}Z"


def spec(**overrides: Any) -> ModelDeploymentSpec:
    document: dict[str, Any] = {
        "model": {"version": "2.1.0", "uri": "s3://models/fraud/2.1.0/", "format": "sklearn"},
        "runtime": {"image": "registry.example/server:1"},
        "scaling": {"replicas": 2},
    }
    for key, value in overrides.items():
        document[key] = value
    return ModelDeploymentSpec.model_validate(document)


class World:
    """Objects as the apiserver would hold them after the operator's applies, with controllable readiness."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.ready: dict[str, int] = {}
        self.progress_deadline_exceeded: set[str] = set()

    def apply(self, writes: list[planning.Apply]) -> None:
        for write in writes:
            key = (write.manifest["kind"], write.manifest["metadata"]["name"])
            merged = copy.deepcopy(self.objects.get(key, {}))
            _merge(merged, copy.deepcopy(write.manifest))
            merged["metadata"].setdefault("generation", 0)
            merged["metadata"]["generation"] += 1
            self.objects[key] = merged

    def delete(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            self.objects.pop(key)

    def observed(self) -> planning.Observed:
        deployments = {}
        for (kind, name), item in self.objects.items():
            if kind != "Deployment":
                continue
            replicas = item["spec"].get("replicas", 1)
            ready = min(self.ready.get(name, 0), replicas)
            deployments[name] = planning.ObservedDeployment(
                name=name,
                version=item["metadata"]["labels"][LABEL_MODEL_VERSION],
                release_track=item["metadata"].get("annotations", {}).get("modelops.dev/release-track"),  # type: ignore[arg-type]
                replicas=replicas,
                ready_replicas=ready,
                updated_replicas=replicas,
                total_replicas=replicas,
                generation=item["metadata"]["generation"],
                observed_generation=item["metadata"]["generation"],
                progress_deadline_exceeded=name in self.progress_deadline_exceeded,
                manifest=item,
            )
        return planning.Observed(
            deployments=deployments,
            services={name: item for (kind, name), item in self.objects.items() if kind == "Service"},
            autoscalers={name: item for (kind, name), item in self.objects.items() if kind == "HorizontalPodAutoscaler"},
            routes={name: item for (kind, name), item in self.objects.items() if kind == "HTTPRoute"},
            revisions={name: revisions.observe_revision(item) for (kind, name), item in self.objects.items() if kind == revisions.KIND},
            versions_by_child={
                key: item["metadata"]["labels"][LABEL_MODEL_VERSION]
                for key, item in self.objects.items()
                if LABEL_MODEL_VERSION in item["metadata"].get("labels", {})
            },
        )


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
