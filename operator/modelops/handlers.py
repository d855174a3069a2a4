"""kopf handlers: the only module that imports kopf. Each handler is a few lines: find the
ModelDeployment, run one pass of ``reconciler.reconcile``, report.

Triggers, all running the same idempotent pass (level-based, not edge-based):

- any watch event of a ModelDeployment (creation, spec change, resume after restart);
- any watch event of a Deployment the operator manages (pods becoming Ready, a child
  deleted or edited by hand), mapped to its ModelDeployment through an in-memory index;
- a periodic pass every ``MODELOPS_RESYNC_SECONDS`` (default 60), which repairs drift that
  no event announced.

kopf itself writes nothing to a ModelDeployment: no progress or diff-base annotations
(``on.event`` and timers keep no state), and no Events for INFO logs (posting level is
WARNING); the operator posts its own Events for real transitions only. A per-object lock
keeps two triggers from running a pass on the same object at once.
"""

import datetime
import logging
import os
import threading
from collections import defaultdict
from typing import Any

import kopf
from kubernetes import client, config

from modelops.api import v1alpha1
from modelops.kube.api import KubernetesClusterApi
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelops.reconciler import reconcile

RESYNC_SECONDS = float(os.environ.get("MODELOPS_RESYNC_SECONDS", "60"))
FINALIZER = "modelops.dev/finalizer"

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def _api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG (or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelops.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelops.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = int(os.environ.get("MODELOPS_WORKERS", "8"))
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    memo.cluster = KubernetesClusterApi(_api_client())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _run_pass(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger | kopf.Logger) -> None:
    """One pass on the object as stored *now*: every trigger re-reads it under the lock, so a
    pass never works from a body older than the previous pass's status write."""
    with _lock(namespace, name):
        body = memo.cluster.get_modeldeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # children go with the owner (ownerReferences); nothing to reconcile
        outcome = reconcile(memo.cluster, body, _now())
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.errors:
        kopf.warn(body, reason="ReconcileFailed", message="; ".join(outcome.errors)[:1024])
    if outcome.wrote:
        logger.info(
            "reconciled: applied %s, deleted %s, status %s",
            outcome.applied or "nothing",
            outcome.deleted or "nothing",
            "written" if outcome.status_written else "unchanged",
        )


@kopf.index(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
def modeldeployments_by_name(namespace: str, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    """Which ModelDeployments exist, so a child's event finds its owner without an API call."""
    return {(namespace, name): True}


@kopf.on.event(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
def modeldeployment_changed(
    type: str | None, namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    if type != "DELETED":
        _run_pass(namespace, name, memo, logger)


@kopf.timer(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def periodic_pass(namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    _run_pass(namespace, name, memo, logger)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
def child_changed(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, modeldeployments_by_name: kopf.Index, **_: Any
) -> None:
    namespace, owner = body.metadata.namespace, (body.metadata.labels or {}).get(LABEL_DEPLOYMENT)
    if owner and (namespace, owner) in modeldeployments_by_name:
        _run_pass(namespace, owner, memo, logger)
