"""kopf handlers: the only module that imports kopf. Each handler is a few lines: find the
ModelDeployment, run one pass of ``reconciler.reconcile``, report.

Triggers, all running the same idempotent pass (level-based, not edge-based):

- any watch event of a ModelDeployment (creation, spec change, annotation for a manual
  action, resume after restart);
- any watch event of a Deployment the operator manages (pods becoming Ready, a child
  deleted or edited by hand), mapped to its ModelDeployment;
- a periodic pass every ``MODELOPS_RESYNC_SECONDS`` (default 60), which repairs drift that
  no event announced;
- the analysis tick (every ``MODELOPS_ANALYSIS_TICK_SECONDS``, default 1): for every live
  canary whose analysis is due, one grouped Prometheus query per distinct check, then a pass
  with the verdicts.

kopf itself writes nothing to a ModelDeployment: no finalizer (no timers or daemons), no
progress or diff-base annotations (``on.event`` keeps no state), and no Events for INFO
logs (posting level is WARNING); the operator posts its own Events for real transitions.
A per-object lock keeps two triggers from running a pass on the same object at once.
"""

import asyncio
import datetime
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config

from modelops.analysis_runner import CanaryUnderAnalysis, Watched, due_canaries, due_monitors, parse_watched, run_tick
from modelops.api import v1alpha1
from modelops.api.timestamps import format_timestamp
from modelops.kube.api import ApiError, KubernetesClusterApi
from modelops.metrics import operator_metrics as metrics
from modelops.metrics.prometheus import Prometheus, PrometheusConfig
from modelops.planning.analysis import Evaluation, QueryResult
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelops.reconciler import Outcome, reconcile

RESYNC_SECONDS = float(os.environ.get("MODELOPS_RESYNC_SECONDS", "60"))
MINIMUM_PAUSE_SECONDS = 1.0  # between periodic passes, even when one overran the resync period
ANALYSIS_TICK_SECONDS = float(os.environ.get("MODELOPS_ANALYSIS_TICK_SECONDS", "1"))
FINALIZER = "modelops.dev/finalizer"

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_guard = threading.Lock()
# Every live ModelDeployment, with the spec and status last seen on the watch, parsed once on arrival
# (None when the models refuse it): the analysis tick reads these instead of re-parsing every body.
_watched: dict[tuple[str, str], Watched | None] = {}
log = logging.getLogger("modelops")


def _lock(namespace: str, name: str) -> threading.Lock:
    with _guard:
        return _locks[(namespace, name)]


def _api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG (or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _optional_path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _prometheus() -> Prometheus | None:
    url = os.environ.get("MODELOPS_PROMETHEUS_URL")
    if not url:
        return None
    return Prometheus(
        PrometheusConfig(
            url=url,
            timeout_seconds=float(os.environ.get("MODELOPS_PROMETHEUS_TIMEOUT_SECONDS", "5")),
            ca_file=_optional_path("MODELOPS_PROMETHEUS_CA_FILE"),
            bearer_token_file=_optional_path("MODELOPS_PROMETHEUS_TOKEN_FILE"),
            basic_auth_file=_optional_path("MODELOPS_PROMETHEUS_BASIC_AUTH_FILE"),
        )
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelops.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelops.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prometheus query is noise
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = int(os.environ.get("MODELOPS_WORKERS", "8"))
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    memo.cluster = KubernetesClusterApi(_api_client())
    memo.prometheus = _prometheus()
    port = int(os.environ.get("MODELOPS_METRICS_PORT", "0"))
    if port:
        metrics.serve(port, os.environ.get("MODELOPS_METRICS_ADDRESS", "0.0.0.0"))


def _now() -> str:
    """The one clock: every decision of a pass takes this ``now`` (planning reads no clock)."""
    return format_timestamp(datetime.datetime.now(datetime.UTC))


def _run_pass(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: logging.Logger | kopf.Logger,
    evaluations: Mapping[str, Evaluation] | None = None,
    revision: str | None = None,
    monitoring_evaluations: Mapping[str, Evaluation] | None = None,
    monitored_version: str | None = None,
) -> None:
    """One pass on the object as stored *now*: every trigger re-reads it under the lock, so a
    pass never works from a body older than the previous pass's status write. Verdicts are
    used only if they were computed for the revision still in progress."""
    with _lock(namespace, name):
        try:
            body = memo.cluster.get_modeldeployment(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # children go with the owner (ownerReferences); nothing to reconcile
            status = body.get("status") or {}
            if evaluations is not None and (status.get("rollout") or {}).get("revision") != revision:
                evaluations = None
            if monitoring_evaluations is not None and (status.get("stable") or {}).get("version") != monitored_version:
                monitoring_evaluations = None
            with metrics.reconcile_seconds.time():
                outcome = reconcile(memo.cluster, body, _now(), evaluations, monitoring_evaluations)
        except ApiError as error:
            metrics.reconcile_passes.labels("error").inc()
            if error.status == 404:
                return  # deleted during the pass
            # The next trigger or periodic pass retries; one line, no traceback, for a known failure.
            logger.warning("pass of %s/%s failed: %s", namespace, name, error)
            return
    metrics.reconcile_passes.labels("error" if outcome.errors else "ok").inc()
    _report(body, outcome, memo, logger, evaluations)


def _report(
    body: Mapping[str, Any],
    outcome: Outcome,
    memo: kopf.Memo,
    logger: logging.Logger | kopf.Logger,
    evaluations: Mapping[str, Evaluation] | None,
) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for event in outcome.events:
        memo.cluster.post_event(body, event.type, event.reason, event.message)
        if event.reason == "Promoted":
            metrics.promotions.labels(namespace, name).inc()
        elif event.reason == "RolledBack":
            metrics.rollbacks.labels(namespace, name).inc()
    for check, evaluation in (evaluations or {}).items():
        metrics.analysis_checks.labels(namespace, name, check, evaluation.verdict).inc()
    if outcome.canary_weight is not None:
        metrics.canary_weight.labels(namespace, name).set(outcome.canary_weight)
    if outcome.new_failure:
        # Only when the failure is new or different: a persisting failure must not post an Event on
        # every pass, even while other parts of status (a canary's progress) keep changing.
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
    type: str | None, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    key = (namespace, name)
    with _guard:
        if type == "DELETED":
            _watched.pop(key, None)
        else:
            _watched[key] = parse_watched({"spec": dict(body.spec), "status": dict(body.status)})
    if type == "DELETED":
        _forget_metrics(namespace, name)
        return
    # Counters start at 0 for every ModelDeployment, so increase() sees its first promotion and rollback.
    metrics.promotions.labels(namespace, name)
    metrics.rollbacks.labels(namespace, name)
    _run_pass(namespace, name, memo, logger)


def _forget_metrics(namespace: str, name: str) -> None:
    try:
        metrics.canary_weight.remove(namespace, name)
    except KeyError:
        pass  # never had a canary


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    namespace, owner = body.metadata.namespace, (body.metadata.labels or {}).get(LABEL_DEPLOYMENT)
    with _guard:
        known = (namespace, owner) in _watched
    if owner and known:
        _run_pass(namespace, owner, memo, logger)


async def _periodic_passes(memo: kopf.Memo) -> None:
    """Every RESYNC_SECONDS, one pass over every known ModelDeployment, one at a time.

    One loop for the whole operator rather than a kopf timer per object: timers would make
    kopf put a finalizer on every ModelDeployment (so deleting one would hang while the
    operator is down) and keep a task per object.
    """
    took = 0.0
    while True:
        # Passes start every RESYNC_SECONDS (right away when the last one took longer), not
        # RESYNC_SECONDS after the last one ended: a slow pass must not stretch the period.
        await asyncio.sleep(max(MINIMUM_PAUSE_SECONDS, RESYNC_SECONDS - took))
        started = time.monotonic()
        with _guard:
            keys = sorted(_watched)
        for namespace, name in keys:
            try:
                await asyncio.to_thread(_run_pass, namespace, name, memo, log)
            except Exception:  # noqa: BLE001 - one broken object must not stop the periodic pass
                log.exception("periodic pass of %s/%s failed", namespace, name)
        took = time.monotonic() - started
        metrics.periodic_pass_seconds.set(took)
        metrics.periodic_pass_objects.set(len(keys))
        if took > RESYNC_SECONDS:
            log.warning("the periodic pass over %d ModelDeployments took %.1fs, longer than --resync-seconds %s", len(keys), took, RESYNC_SECONDS)


def _query(memo: kopf.Memo, promql: str) -> QueryResult:
    prometheus: Prometheus | None = memo.prometheus
    if prometheus is None:
        metrics.prometheus_queries.labels("error").inc()
        return QueryResult({}, error="no Prometheus configured: start the operator with --prometheus-url")
    result = prometheus.query(promql)
    metrics.prometheus_queries.labels("error" if result.error else "ok").inc()
    return result


def _templates(memo: kopf.Memo, due: list[tuple[CanaryUnderAnalysis, str]]) -> dict[str, str | None]:
    """The ClusterMetricTemplates the due checks use, each read once per tick."""
    names = {check.template for canary, _ in due for check in canary.checks if check.template}
    templates: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            templates[name] = memo.cluster.get_metric_template(name)
        except ApiError as error:
            log.warning("cannot read ClusterMetricTemplate %s: %s", name, error)
            templates[name] = None
    return templates


def _analysis_tick(memo: kopf.Memo) -> None:
    """Canary analysis for every due canary, then monitoring for every due stable version."""
    with _guard:
        watched = dict(_watched)
    now = _now()
    due = due_canaries(watched, now)
    if due:
        tick = run_tick([canary for canary, _ in due], lambda promql: _query(memo, promql), _templates(memo, due))
        metrics.analysis_tick_queries.set(tick.queries)
        metrics.analysis_tick_canaries.set(len(due))
        for canary, revision in due:
            evaluations = tick.evaluations[(canary.namespace, canary.name)]
            _guarded(_run_pass, canary.namespace, canary.name, memo, log, evaluations, revision)
    monitors = due_monitors(watched, now)
    if monitors:
        tick = run_tick([monitor for monitor, _ in monitors], lambda promql: _query(memo, promql), _templates(memo, monitors))
        for monitor, version in monitors:
            evaluations = tick.evaluations[(monitor.namespace, monitor.name)]
            _guarded(_run_pass, monitor.namespace, monitor.name, memo, log, monitoring_evaluations=evaluations, monitored_version=version)


def _guarded(function: Any, namespace: str, name: str, *args: Any, **kwargs: Any) -> None:
    """Runs one object's pass; a failure is logged and never stops the passes of other objects."""
    try:
        function(namespace, name, *args, **kwargs)
    except Exception:  # noqa: BLE001 - isolation between objects is the point
        log.exception("pass of %s/%s failed", namespace, name)


async def _analysis_loop(memo: kopf.Memo) -> None:
    while True:
        await asyncio.sleep(ANALYSIS_TICK_SECONDS)
        try:
            await asyncio.to_thread(_analysis_tick, memo)
        except Exception:  # noqa: BLE001 - a broken tick must not stop analysis for good
            log.exception("analysis tick failed")


@kopf.on.startup()
async def start_loops(memo: kopf.Memo, **_: Any) -> None:
    loop = asyncio.get_running_loop()
    memo.loops = [loop.create_task(_periodic_passes(memo)), loop.create_task(_analysis_loop(memo))]


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("loops", []):
        task.cancel()
    prometheus: Prometheus | None = memo.get("prometheus")
    if prometheus is not None:
        prometheus.close()
