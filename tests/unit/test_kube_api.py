"""KubernetesClusterApi maps every failure to ApiError: transport failures to status 0, in one line."""

from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelops.kube.api import ApiError, KubernetesClusterApi

TRANSPORT_FAILURES = [
    urllib3.exceptions.MaxRetryError(None, "/apis", reason=urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")),  # type: ignore[arg-type]
    urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer")),
    urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out. (read timeout=15)"),  # type: ignore[arg-type]
    ConnectionRefusedError(111, "Connection refused"),
]


def _raising(error: Exception) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise error

    return call


@pytest.mark.parametrize("error", TRANSPORT_FAILURES, ids=lambda e: type(e).__name__)
def test_transport_failures_become_one_line_api_errors_with_status_0(error: Exception) -> None:
    api = KubernetesClusterApi(client.ApiClient())
    api._custom.get_namespaced_custom_object = _raising(error)  # type: ignore[method-assign]
    api._custom.patch_namespaced_custom_object_status = _raising(error)  # type: ignore[method-assign]
    api._custom.list_cluster_custom_object = _raising(error)  # type: ignore[method-assign]
    for call in (lambda: api.get_modeldeployment("ns", "m"), lambda: api.patch_status("ns", "m", {}, "7"),
                 lambda: api.list_modeldeployments()):
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status == 0 and raised.value.transient
        assert raised.value.message.startswith("apiserver unreachable: ") and "\n" not in raised.value.message


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (409, True), (403, False), (422, False)])
def test_http_errors_keep_their_status(status: int, transient: bool) -> None:
    api = KubernetesClusterApi(client.ApiClient())
    api._custom.get_namespaced_custom_object = _raising(ApiException(status=status, reason="x"))  # type: ignore[method-assign]
    with pytest.raises(ApiError) as raised:
        api.get_modeldeployment("ns", "m")
    assert (raised.value.status, raised.value.transient) == (status, transient)


def test_the_status_patch_carries_the_resource_version_it_was_computed_from() -> None:
    api = KubernetesClusterApi(client.ApiClient())
    sent: list[dict[str, Any]] = []
    api._custom.patch_namespaced_custom_object_status = lambda *args, **kwargs: sent.append(args[5])  # type: ignore[method-assign]
    api.patch_status("ns", "m", {"phase": "Healthy"}, resource_version="42")
    assert sent == [{"status": {"phase": "Healthy"}, "metadata": {"resourceVersion": "42"}}]


def test_the_periodic_list_is_paginated_and_skips_objects_being_deleted() -> None:
    api = KubernetesClusterApi(client.ApiClient())
    pages = {
        None: {"items": [{"metadata": {"namespace": "a", "name": "one"}}], "metadata": {"continue": "t1"}},
        "t1": {"items": [{"metadata": {"namespace": "b", "name": "ghost", "deletionTimestamp": "2026-11-26T12:00:00Z"}},
                         {"metadata": {"namespace": "b", "name": "two"}}], "metadata": {}},
    }
    api._custom.list_cluster_custom_object = lambda *args, **kwargs: pages[kwargs.get("_continue")]  # type: ignore[method-assign]
    assert api.list_modeldeployments() == {("a", "one"), ("b", "two")}


def test_every_call_of_the_cluster_api_maps_transport_failures_once() -> None:
    """Each method of the ClusterApi protocol either carries the transport-error wrapper exactly once
    or handles transport failures itself (post_event logs them): none lets a urllib3 error through."""
    from modelops.kube.api import ClusterApi

    methods = [name for name in vars(ClusterApi) if not name.startswith("_") and callable(getattr(ClusterApi, name))]
    for name in methods:
        method = getattr(KubernetesClusterApi, name)
        if name == "post_event":
            continue  # never raises: failures are logged
        assert hasattr(method, "__wrapped__"), f"{name} lets transport errors through"
        assert not hasattr(method.__wrapped__, "__wrapped__"), f"{name} is wrapped twice"
