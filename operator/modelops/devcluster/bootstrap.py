"""What ``up`` does through the API once the control plane answers: fake nodes and CRDs.

Uses the admin kubeconfig (``system:masters``). Every call has a timeout; every
wait has a deadline and says what it was waiting for when it gives up.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from modelops.devcluster.errors import DevclusterError

REQUEST_TIMEOUT_SECONDS = 10
NODE_LABELS = {"type": "kwok", "modelops.dev/devcluster": "true"}


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def wait_for(what: str, check: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> None:
    """Polls ``check`` until it returns True; raises naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
            last_error = None
        except (ApiException, OSError) as error:  # the API may still be warming up
            last_error = error
        time.sleep(interval)
    detail = f": last error: {str(last_error).splitlines()[0]}" if last_error else ""
    raise DevclusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def node_names(count: int) -> list[str]:
    return [f"kwok-node-{index}" for index in range(count)]


def create_nodes(api: client.ApiClient, count: int) -> None:
    """Creates untainted fake Nodes; kwok's node-initialize stage fills in status."""
    core = client.CoreV1Api(api)
    for name in node_names(count):
        body = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={**NODE_LABELS, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                annotations={"kwok.x-k8s.io/node": "fake"},
            )
        )
        try:
            core.create_node(body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status != 409:
                raise


def nodes_ready(api: client.ApiClient, count: int) -> bool:
    """True when every fake node is Ready and carries no taint (not-ready taints are gone)."""
    core = client.CoreV1Api(api)
    nodes = core.list_node(label_selector="type=kwok", _request_timeout=REQUEST_TIMEOUT_SECONDS).items
    ready = [node for node in nodes if _is_ready(node) and not (node.spec.taints or [])]
    return len(ready) >= count


def ready_node_count(api: client.ApiClient) -> tuple[int, int]:
    core = client.CoreV1Api(api)
    nodes = core.list_node(_request_timeout=REQUEST_TIMEOUT_SECONDS).items
    return sum(1 for node in nodes if _is_ready(node)), len(nodes)


def _is_ready(node: client.V1Node) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(condition.type == "Ready" and condition.status == "True" for condition in conditions)


def default_service_account_exists(api: client.ApiClient) -> bool:
    """The controller-manager's serviceaccount controller is working."""
    try:
        client.CoreV1Api(api).read_namespaced_service_account(
            "default", "default", _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def crd_documents(folder: Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in the YAML files of ``folder`` (other kinds are skipped)."""
    documents: list[dict[str, Any]] = []
    for file in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                documents.append(document)
    return documents


def install_crds(api: client.ApiClient, folder: Path) -> list[str]:
    """Creates the CRDs found in ``folder`` (leaving existing ones alone); returns their names."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for document in crd_documents(folder):
        try:
            extensions.create_custom_resource_definition(document, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status != 409:
                raise
        names.append(document["metadata"]["name"])
    return names


def crds_established(api: client.ApiClient, names: list[str]) -> bool:
    extensions = client.ApiextensionsV1Api(api)
    for name in names:
        crd = extensions.read_custom_resource_definition(name, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        conditions = (crd.status.conditions if crd.status else None) or []
        if not any(condition.type == "Established" and condition.status == "True" for condition in conditions):
            return False
    return True
