"""The desired child objects of a ModelDeployment, as plain manifests for server-side apply.

Children of a ModelDeployment ``m`` serving version ``v`` (see ``names.child_name``):

- Deployment ``m-<v>``: the model server pods of that version.
- Service ``m-<v>``: that version alone (the target of weighted routing).
- HorizontalPodAutoscaler ``m-<v>``: when ``spec.scaling.maxReplicas`` is set.
- Service ``m``: the stable entry point, selecting the stable version's pods.

Each manifest holds only the fields the operator owns; server-side apply with the field
manager ``modelops`` merges them, and ``compare.is_applied`` decides whether a write is needed.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelops.api import v1alpha1
from modelops.api.v1alpha1 import ModelDeploymentSpec, ModelSpec, Track
from modelops.planning.names import child_name

FIELD_MANAGER = "modelops"
REPLICAS_FIELD_MANAGER = "modelops-replicas"  # owns Deployment replicas only, so "modelops" never fights an HPA
CONTAINER_NAME = "model-server"
SERVICE_PORT = 80
DEFAULT_CPU_TARGET = 80

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "modelops.dev/deployment"
LABEL_MODEL_VERSION = "modelops.dev/version"
LABEL_TRACK = "modelops.dev/track"
ANNOTATION_RELEASE_TRACK = "modelops.dev/release-track"
MANAGED_BY = "modelops"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(owner: Owner, version: str) -> dict[str, str]:
    """The labels that select the pods of one version (immutable in a Deployment's selector)."""
    return {LABEL_DEPLOYMENT: owner.name, LABEL_MODEL_VERSION: version}


def common_labels(owner: Owner, version: str | None = None) -> dict[str, str]:
    labels = {LABEL_NAME: owner.name, LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: owner.name}
    if version is not None:
        labels |= {LABEL_VERSION: version, LABEL_MODEL_VERSION: version}
    return labels


def _metadata(owner: Owner, name: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _variable(name: str, value: str | None) -> dict[str, Any]:
    """An env entry; an empty value is left out, as the apiserver would store it."""
    return {"name": name, "value": value} if value else {"name": name}


def _environment(owner: Owner, spec: ModelDeploymentSpec, model: ModelSpec, release_track: Track) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        _variable("MODEL_NAME", owner.name),
        _variable("MODEL_VERSION", model.version),
        _variable("MODEL_URI", model.uri),
        _variable("MODEL_DIGEST", model.digest),
        _variable("MODEL_FORMAT", model.format),
        _variable("MODELOPS_TRACK", release_track),
    ]
    for variable in spec.runtime.env:
        if variable.value_from is not None:
            source = variable.value_from
            reference = source.secret_key_ref or source.config_map_key_ref
            key = "secretKeyRef" if source.secret_key_ref else "configMapKeyRef"
            assert reference is not None  # guaranteed by the CEL rule "exactly one"
            env.append({"name": variable.name, "valueFrom": {key: {"name": reference.name, "key": reference.key}}})
        else:
            env.append(_variable(variable.name, variable.value))
    return env


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kind in ("requests", "limits"):
        values = getattr(spec.runtime.resources, kind)
        if values is not None:
            quantities = {name: value for name, value in (("cpu", values.cpu), ("memory", values.memory)) if value}
            if quantities:
                result[kind] = quantities
    return result


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _container(owner: Owner, spec: ModelDeploymentSpec, model: ModelSpec, release_track: Track) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.runtime.image,
        "imagePullPolicy": spec.runtime.image_pull_policy,
        "ports": [{"name": "http", "containerPort": spec.runtime.port, "protocol": "TCP"}],
        "env": _environment(owner, spec, model, release_track),
        "readinessProbe": {
            "httpGet": {"path": f"/v2/models/{owner.name}/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.runtime.command:
        container["command"] = list(spec.runtime.command)
    if spec.runtime.args:
        container["args"] = list(spec.runtime.args)
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def replicas(spec: ModelDeploymentSpec) -> int | None:
    """The replica count the operator writes, or None when an HPA owns it."""
    if spec.scaling.autoscaled:
        return None
    return 1 if spec.scaling.replicas is None else spec.scaling.replicas


def deployment(owner: Owner, spec: ModelDeploymentSpec, model: ModelSpec, track: Track, release_track: Track) -> dict[str, Any]:
    """The versioned Deployment. ``release_track`` (in the pod template) never changes after creation;
    ``track`` (on the Deployment's own labels) does, without restarting pods."""
    name = child_name(owner.name, model.version)
    pod_labels = common_labels(owner, model.version)
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            owner, name, pod_labels | {LABEL_TRACK: track}, {ANNOTATION_RELEASE_TRACK: release_track}
        ),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner, model.version)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [_container(owner, spec, model, release_track)],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    return manifest  # replicas are applied separately (REPLICAS_FIELD_MANAGER)


def version_service(owner: Owner, version: str, track: Track) -> dict[str, Any]:
    """The Service of one version: the backend of weighted routing."""
    name = child_name(owner.name, version)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, common_labels(owner, version) | {LABEL_TRACK: track}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, version),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def entry_service(owner: Owner, stable_version: str) -> dict[str, Any]:
    """The stable entry point ``<name>``: selects the stable version's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, common_labels(owner)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, stable_version),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(owner: Owner, spec: ModelDeploymentSpec, version: str, track: Track) -> dict[str, Any] | None:
    """The version's autoscaling/v2 HPA, or None without ``maxReplicas``."""
    scaling = spec.scaling
    if not scaling.autoscaled:
        return None
    name = child_name(owner.name, version)
    metrics = scaling.metrics
    if not metrics:
        target = scaling.target_cpu_utilization_percentage or DEFAULT_CPU_TARGET
        metrics = [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}
        ]
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": scaling.min_replicas or 1,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
    }
    if scaling.behavior:
        hpa_spec["behavior"] = scaling.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, name, common_labels(owner, version) | {LABEL_TRACK: track}),
        "spec": hpa_spec,
    }
