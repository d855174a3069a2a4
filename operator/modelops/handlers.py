"""kopf handlers: the only module that imports kopf. Each handler is a few lines: find the
ModelDeployment, run one pass of ``reconciler.reconcile``, report.

Triggers, all running the same idempotent pass (level-based, not edge-based):

- any watch event of a ModelDeployment (creation, spec change, resume after restart);
- any watch event of a Deployment the operator manages (pods becoming Ready, a child
  deleted or edited by hand), mapped to its ModelDeployment through an in-memory index;
- a periodic pass every ``MODELOPS_RESYNC_SECONDS`` (default 60), which repairs drift that
  no event announced.

kopf itself writes nothing to a ModelDeployment: no finalizer (no timers or daemons), no
progress or diff-base annotations (``on.event`` keeps no state), and no Events for INFO
logs (posting level is WARNING); the operator posts its own Events for real transitions. A per-object lock
keeps two triggers from running a pass on the same object at once.
"""

import asyncio
import datetime
import logging
import os
import threading
from collections import defaultdict
from typing import Any

import kopf
from kubernetes import client, config

from modelops.api import v1alpha1
from modelops.kube.api import ApiError, KubernetesClusterApi
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelops.reconciler import reconcile

RESYNC_SECONDS = float(os.environ.get("MODELOPS_RESYNC_SECONDS", "60"))
FINALIZER = "modelops.dev/finalizer"

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()
_known: set[tuple[str, str]] = set()  # (namespace, name) of every ModelDeployment seen and not deleted
log = logging.getLogger("modelops")


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
        try:
            body = memo.cluster.get_modeldeployment(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # children go with the owner (ownerReferences); nothing to reconcile
            outcome = reconcile(memo.cluster, body, _now())
        except ApiError as error:
            if error.status == 404:
                return  # deleted during the pass
            # The next trigger or periodic pass retries; one line, no traceback, for a known failure.
            logger.warning("pass of %s/%s failed: %s", namespace, name, error)
            return
    for event in outcome.events:
        memo.cluster.post_event(body, event.type, event.reason, event.message)
    if outcome.errors:
        memo.cluster.post_event(body, "Warning", "ReconcileFailed", "; ".join(outcome.errors))
    if outcome.wrote:
        logger.info(
            "reconciled: applied %s, deleted %s, status %s",
            outcome.applied or "nothing",
            outcome.deleted or "nothing",
            "written" if outcome.status_written else "unchanged",
        )


@kopf.on.event(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
def modeldeployment_changed(
    type: str | None, namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    key = (namespace, name)
    with _locks_guard:
        if type == "DELETED":
            _known.discard(key)
        else:
            _known.add(key)
    if type != "DELETED":
        _run_pass(namespace, name, memo, logger)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    namespace, owner = body.metadata.namespace, (body.metadata.labels or {}).get(LABEL_DEPLOYMENT)
    with _locks_guard:
        known = (namespace, owner) in _known
    if owner and known:
        _run_pass(namespace, owner, memo, logger)


async def _periodic_passes(memo: kopf.Memo) -> None:
    """Every RESYNC_SECONDS, one pass over every known ModelDeployment, one at a time.

    One loop for the whole operator rather than a kopf timer per object: timers would make
    kopf put a finalizer on every ModelDeployment (so deleting one would hang while the
    operator is down) and keep a task per object.
    """
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        with _locks_guard:
            keys = sorted(_known)
        for namespace, name in keys:
            try:
                await asyncio.to_thread(_run_pass, namespace, name, memo, log)
            except Exception:  # noqa: BLE001 - one broken object must not stop the periodic pass
                log.exception("periodic pass of %s/%s failed", namespace, name)


@kopf.on.startup()
async def start_periodic_passes(memo: kopf.Memo, **_: Any) -> None:
    memo.periodic = asyncio.get_running_loop().create_task(_periodic_passes(memo))


@kopf.on.cleanup()
async def stop_periodic_passes(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("periodic")
    if task is not None:
        task.cancel()
