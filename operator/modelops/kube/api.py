"""The operator's view of the Kubernetes API, behind a small interface.

``ClusterApi`` is what the reconciler needs: list a ModelDeployment's children, apply one
(server-side apply, field manager ``modelops``, forced: the operator owns what it
renders), delete one, and patch the ModelDeployment's status subresource.
``KubernetesClusterApi`` implements it with the official client; every call has a
timeout, and API errors become :class:`ApiError` with the status code and the
apiserver's message. Transport failures (connection refused or reset, read timeouts,
urllib3's ``MaxRetryError``) become ``ApiError`` with status 0, so callers handle one
exception type; :attr:`ApiError.transient` says whether trying again later can help.
"""

import base64
import datetime
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelops.api import v1alpha1
from modelops.planning.children import FIELD_MANAGER, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY

REQUEST_TIMEOUT_SECONDS = 15
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"  # set by the Job controller on the pods it creates
MAX_MESSAGES = 8  # distinct termination messages read from one Job's pods
LIST_PAGE_SIZE = 500
MAX_EVENTS_READ = 20
MAX_FAILURE_MESSAGE = 512
GATEWAY_GROUP = "gateway.networking.k8s.io"
log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failed API call: ``status`` is the HTTP status (0 when the apiserver was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Unreachable (0), conflict (409), throttled (429) or a server error (5xx): worth another pass soon."""
        return self.status in (0, 409, 429) or self.status >= 500


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _transport_error(error: Exception) -> ApiError:
    """One short line for a transport failure: the innermost cause (MaxRetryError wraps it), never a traceback."""
    cause = getattr(error, "reason", None) or error
    detail = str(cause).splitlines()[0] if str(cause) else ""
    return ApiError(0, f"apiserver unreachable: {type(cause).__name__}{': ' + detail[:200] if detail else ''}")


def _transport_errors_as_api_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Connection refused/reset, timeouts and retries given up become ``ApiError(0, ...)``."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise _transport_error(error) from error

    return wrapper


def _error(error: ApiException) -> ApiError:
    message = error.reason or "error"
    try:
        message = json.loads(error.body or "{}").get("message", message)
    except (ValueError, AttributeError):
        pass
    return ApiError(int(error.status or 0), str(message))


@dataclass(frozen=True)
class _Kind:
    """The client methods for one kind of child (``patch`` None: created, never updated)."""

    api_version: str
    list: Callable[..., Any]
    read: Callable[..., Any]
    patch: Callable[..., Any] | None
    delete: Callable[..., Any]
    create: Callable[..., Any] | None = None
    optional: bool = False  # its API may be absent from the cluster


class ClusterApi(Protocol):
    def get_modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list_children(self, namespace: str, owner: str, owner_uid: str) -> dict[str, list[dict[str, Any]]]: ...

    def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> None: ...

    def delete(self, namespace: str, kind: str, name: str) -> None: ...

    def owner_uids(self, namespace: str, kind: str, name: str) -> list[str] | None: ...

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None) -> None: ...

    def termination_messages(self, namespace: str, job: str, job_uid: str) -> list[str]: ...

    def notify_url(self, namespace: str, key: str) -> str | None: ...

    def get_namespace(self, name: str) -> dict[str, Any] | None: ...

    def pod_creation_failure(self, namespace: str, job: str) -> str | None: ...

    def post_event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...

    def list_modeldeployments(self, namespaces: Sequence[str] = ()) -> set[tuple[str, str]]: ...


class KubernetesClusterApi:
    """``ClusterApi`` over the official Kubernetes client (synchronous; run from kopf's thread pool)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._autoscaling = client.AutoscalingV2Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._batch = client.BatchV1Api(api_client)

    @_transport_errors_as_api_errors
    def get_modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as stored now (None when it is gone)."""
        try:
            return dict(
                self._custom.get_namespaced_custom_object(
                    v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(error) from error

    @_transport_errors_as_api_errors
    def get_namespace(self, name: str) -> dict[str, Any] | None:
        """Namespace ``name`` (its labels and annotations carry the admin's tenant limits); None when gone."""
        try:
            return self._serialize(self._core.read_namespace(name, _request_timeout=REQUEST_TIMEOUT_SECONDS))
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(error) from error

    @_transport_errors_as_api_errors
    def get_metric_template(self, name: str) -> str | None:
        """The query of ClusterMetricTemplate ``name`` (None when there is none)."""
        try:
            found = self._custom.get_cluster_custom_object(
                v1alpha1.GROUP, v1alpha1.VERSION, "clustermetrictemplates", name, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(error) from error
        return str((found.get("spec") or {}).get("query", "")) or None

    def _serialize(self, item: Any) -> dict[str, Any]:
        return dict(self._client.sanitize_for_serialization(item))

    def _kinds(self) -> dict[str, _Kind]:
        """How each child kind is listed, read, written and deleted: the one place that knows the client's methods."""
        custom = self._custom

        def route(method: Callable[..., Any]) -> Callable[..., Any]:
            """A custom-objects method bound to the Gateway API's group, version and plural."""
            return lambda namespace, *args, **kwargs: method(GATEWAY_GROUP, "v1", namespace, "httproutes", *args, **kwargs)

        return {
            "Deployment": _Kind(
                "apps/v1", self._apps.list_namespaced_deployment, self._apps.read_namespaced_deployment,
                self._apps.patch_namespaced_deployment, self._apps.delete_namespaced_deployment,
            ),
            "Service": _Kind(
                "v1", self._core.list_namespaced_service, self._core.read_namespaced_service,
                self._core.patch_namespaced_service, self._core.delete_namespaced_service,
            ),
            "HorizontalPodAutoscaler": _Kind(
                "autoscaling/v2", self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                self._autoscaling.read_namespaced_horizontal_pod_autoscaler,
                self._autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                self._autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            ),
            # The Gateway API may not be installed: listing routes then finds none.
            "HTTPRoute": _Kind(
                f"{GATEWAY_GROUP}/v1",
                route(custom.list_namespaced_custom_object),
                lambda name, namespace, **kw: route(custom.get_namespaced_custom_object)(namespace, name, **kw),
                lambda name, namespace, body, **kw: route(custom.patch_namespaced_custom_object)(namespace, name, body, **kw),
                lambda name, namespace, **kw: route(custom.delete_namespaced_custom_object)(namespace, name, **kw),
                optional=True,
            ),
            # Revision records: immutable, applied once under a name that hashes their content.
            "ControllerRevision": _Kind(
                "apps/v1", self._apps.list_namespaced_controller_revision, self._apps.read_namespaced_controller_revision,
                self._apps.patch_namespaced_controller_revision, self._apps.delete_namespaced_controller_revision,
            ),
            # Jobs are created, never updated: their template is immutable.
            "Job": _Kind(
                "batch/v1", self._batch.list_namespaced_job, self._batch.read_namespaced_job,
                None, self._batch.delete_namespaced_job, create=self._batch.create_namespaced_job,
            ),
        }

    @_transport_errors_as_api_errors
    def list_children(self, namespace: str, owner: str, owner_uid: str) -> dict[str, list[dict[str, Any]]]:
        """Children labelled for ``owner`` and controlled by its uid (a copied label alone is not enough)."""
        selector = f"{LABEL_DEPLOYMENT}={owner},{LABEL_MANAGED_BY}={MANAGED_BY}"
        result: dict[str, list[dict[str, Any]]] = {}
        for kind, operations in self._kinds().items():
            try:
                answer = self._serialize(operations.list(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_SECONDS))
            except ApiException as error:
                if error.status == 404 and operations.optional:
                    result[kind] = []
                    continue
                raise _error(error) from error
            # Items of a list carry no apiVersion/kind; put them back so objects compare like manifests.
            result[kind] = [
                {"apiVersion": operations.api_version, "kind": kind, **item}
                for item in answer.get("items") or []
                if _controlled_by(item, owner_uid)
            ]
        return result

    @_transport_errors_as_api_errors
    def notify_url(self, namespace: str, key: str) -> str | None:
        """``key`` of the namespace's Secret ``modelops-notify`` (None when the Secret or the key is missing).

        The only Secret the operator reads: its RBAC names it (resourceNames), so it cannot read any other.
        """
        try:
            found = self._core.read_namespaced_secret(v1alpha1.NOTIFY_SECRET, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(error) from error
        encoded = (found.data or {}).get(key)
        if encoded is None:
            return None
        return base64.b64decode(encoded).decode(errors="replace").strip()[:2048]

    @_transport_errors_as_api_errors
    def termination_messages(self, namespace: str, job: str, job_uid: str) -> list[str]:
        """The distinct termination messages of the Job's pods that exited 0, newest first ([]: none yet).

        Only the Job's own pods count: selected by the label the Job controller sets
        (``batch.kubernetes.io/controller-uid``) and checked for a controller ownerReference to
        that uid, so a pod someone labelled ``job-name=<job>`` is ignored. The Job controller
        does adopt an orphan pod that carries its uid label; such a pod's message then appears
        here beside the real one, and planning trusts no candidate when they differ.
        """
        if not job_uid:
            return []
        try:
            pods = self._core.list_namespaced_pod(
                namespace, label_selector=f"{JOB_UID_LABEL}={job_uid}", _request_timeout=REQUEST_TIMEOUT_SECONDS
            ).items
        except ApiException as error:
            raise _error(error) from error
        messages = []
        for pod in pods:
            if not _pod_of_job(pod, job_uid):
                continue
            for container in (pod.status.container_statuses or []) if pod.status else []:
                terminated = container.state.terminated if container.state else None
                if terminated is not None and terminated.message and terminated.exit_code == 0:
                    messages.append((str(terminated.finished_at or pod.metadata.creation_timestamp), terminated.message))
        newest_first = [message for _, message in sorted(messages, reverse=True)]
        return list(dict.fromkeys(newest_first))[:MAX_MESSAGES]

    @_transport_errors_as_api_errors
    def pod_creation_failure(self, namespace: str, job: str) -> str | None:
        """Why the Job controller could not create the Job's pods (its latest FailedCreate event), or None.

        The Job controller reports this only as events, never as a Job condition: a pod refused by
        Pod Security admission or a quota would otherwise leave the Job pending until its deadline.
        """
        selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
        try:
            events = self._core.list_namespaced_event(
                namespace, field_selector=selector, limit=MAX_EVENTS_READ, _request_timeout=REQUEST_TIMEOUT_SECONDS
            ).items
        except ApiException as error:
            raise _error(error) from error
        latest = max(events, key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp), default=None)
        return str(latest.message or "FailedCreate")[:MAX_FAILURE_MESSAGE] if latest is not None else None

    @_transport_errors_as_api_errors
    def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> None:
        """Server-side apply under ``field_manager``, forced. Kinds without patch are created; an existing one is kept."""
        operations, metadata = self._kinds()[manifest["kind"]], manifest["metadata"]
        try:
            if operations.patch is None:
                assert operations.create is not None
                operations.create(metadata["namespace"], dict(manifest), _request_timeout=REQUEST_TIMEOUT_SECONDS)
                return
            operations.patch(
                metadata["name"],
                metadata["namespace"],
                dict(manifest),
                field_manager=field_manager,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as error:
            if error.status == 409 and operations.patch is None:
                return
            raise _error(error) from error

    @_transport_errors_as_api_errors
    def owner_uids(self, namespace: str, kind: str, name: str) -> list[str] | None:
        """Controller uids of an existing object (None when there is no such object)."""
        try:
            found = self._serialize(self._kinds()[kind].read(name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS))
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(error) from error
        references = found.get("metadata", {}).get("ownerReferences") or []
        return [reference["uid"] for reference in references if reference.get("controller")]

    @_transport_errors_as_api_errors
    def delete(self, namespace: str, kind: str, name: str) -> None:
        try:
            self._kinds()[kind].delete(name, namespace, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status != 404:
                raise _error(error) from error

    @_transport_errors_as_api_errors
    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None) -> None:
        """A merge patch of the status subresource. With ``resource_version`` it is conditional: the
        apiserver answers 409 when someone wrote the object since that version was read."""
        patch: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        try:
            self._custom.patch_namespaced_custom_object_status(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                namespace,
                v1alpha1.PLURAL,
                name,
                patch,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as error:
            raise _error(error) from error

    def post_event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``owner`` (shown by ``kubectl describe``); failures are logged, never raised."""
        metadata = owner["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata['name']}.", namespace=metadata["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=owner.get("apiVersion", v1alpha1.API_VERSION),
                kind=owner.get("kind", v1alpha1.KIND),
                name=metadata["name"],
                namespace=metadata["namespace"],
                uid=metadata["uid"],
                resource_version=metadata.get("resourceVersion"),
            ),
            reason=reason[:128],
            message=message[:1024],
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER,
        )
        try:
            self._core.create_namespaced_event(metadata["namespace"], event, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            log.warning("could not post event %s on %s/%s: %s", reason, metadata["namespace"], metadata["name"], _error(error))
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("could not post event %s on %s/%s: %s", reason, metadata["namespace"], metadata["name"], _transport_error(error))

    @_transport_errors_as_api_errors
    def list_modeldeployments(self, namespaces: Sequence[str] = ()) -> set[tuple[str, str]]:
        """(namespace, name) of every ModelDeployment not being deleted, in ``namespaces`` (all when empty).

        Read in pages of ``LIST_PAGE_SIZE``: the periodic pass compares it with the objects the
        watch announced, to forget those whose DELETED event was missed across a relist.
        """
        live: set[tuple[str, str]] = set()
        for namespace in namespaces or (None,):
            token: str | None = None
            while True:
                page = self._list_modeldeployment_page(namespace, token)
                for item in page.get("items") or []:
                    metadata = item.get("metadata") or {}
                    if not metadata.get("deletionTimestamp"):
                        live.add((metadata.get("namespace", ""), metadata.get("name", "")))
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return live

    def _list_modeldeployment_page(self, namespace: str | None, token: str | None) -> dict[str, Any]:
        arguments: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "_request_timeout": REQUEST_TIMEOUT_SECONDS}
        if token:
            arguments["_continue"] = token
        try:
            if namespace is None:
                return dict(self._custom.list_cluster_custom_object(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL, **arguments))
            return dict(self._custom.list_namespaced_custom_object(v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, **arguments))
        except ApiException as error:
            raise _error(error) from error


def _pod_of_job(pod: Any, job_uid: str) -> bool:
    """Whether ``pod`` (a client model) is controlled by the Job with ``job_uid``."""
    references = (pod.metadata.owner_references if pod.metadata else None) or []
    return any(reference.controller and reference.kind == "Job" and reference.uid == job_uid for reference in references)


def _controlled_by(item: Mapping[str, Any], owner_uid: str) -> bool:
    references = item.get("metadata", {}).get("ownerReferences") or []
    return any(reference.get("uid") == owner_uid and reference.get("controller") for reference in references)
