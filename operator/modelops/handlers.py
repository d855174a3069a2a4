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

What keeps one object, or one outside server, from stalling the others:

- A per-object lock keeps two triggers from running a pass on the same object at once; a
  pass waits for it at most ``LOCK_WAIT_SECONDS`` and is skipped with a log line.
- Periodic passes run on a bounded pool (``MODELOPS_PERIODIC_WORKERS``), not one at a time.
- Analysis runs on its own pools: the tick only dispatches due canaries; their queries run
  concurrently, each canary gets its pass as soon as its own queries have answered, and a
  query that outlasts ``MODELOPS_ANALYSIS_BUDGET_SECONDS`` is an Error verdict.
- The notify webhook is called by ``notify.Outbox``, never in a pass.
- A pass that fails on a transient apiserver error (unreachable, 409, 429, 5xx) logs one
  line and is retried with backoff (``tracking.RetryScheduler``); a 409 on the status patch
  (someone wrote the object since it was read) is re-read and re-run at once, a few times.

Everything kept per object is freed when it is deleted, found gone or being deleted, or
missing from the periodic pass's LIST (``tracking.ObjectRegistry``).
"""

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config

from modelops.analysis_runner import CanaryUnderAnalysis, Watched, due_canaries, due_monitors, parse_watched, run_tick_concurrently
from modelops.api import v1alpha1
from modelops.api.timestamps import format_timestamp
from modelops.kube.api import ApiError, KubernetesClusterApi
from modelops.metrics import operator_metrics as metrics
from modelops.metrics.prometheus import Prometheus, PrometheusConfig
from modelops.notify import DeliverySettings, Outbox
from modelops.planning.analysis import Evaluation, QueryResult
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelops.reconciler import Outcome, reconcile
from modelops.tracking import Dispatched, Key, ObjectRegistry, RetryScheduler

RESYNC_SECONDS = float(os.environ.get("MODELOPS_RESYNC_SECONDS", "60"))
MINIMUM_PAUSE_SECONDS = 1.0  # between periodic passes, even when one overran the resync period
ANALYSIS_TICK_SECONDS = float(os.environ.get("MODELOPS_ANALYSIS_TICK_SECONDS", "1"))
PROMETHEUS_TIMEOUT_SECONDS = float(os.environ.get("MODELOPS_PROMETHEUS_TIMEOUT_SECONDS", "5"))
# A query that has not answered this long after its tick began is an Error verdict.
ANALYSIS_BUDGET_SECONDS = float(os.environ.get("MODELOPS_ANALYSIS_BUDGET_SECONDS") or PROMETHEUS_TIMEOUT_SECONDS + 1)
NOTIFY_DEADLINE_SECONDS = float(os.environ.get("MODELOPS_NOTIFY_DEADLINE_SECONDS", "10"))
NOTIFY_ALLOWED_HOSTS = tuple(filter(None, os.environ.get("MODELOPS_NOTIFY_ALLOWED_HOSTS", "").lower().split(",")))
PERIODIC_WORKERS = int(os.environ.get("MODELOPS_PERIODIC_WORKERS", "4"))
QUERY_WORKERS = 16  # Prometheus queries in flight at once
ANALYSIS_WORKERS = 4  # analysis batches (one per tick with due canaries) in progress at once
TRIGGERED_WORKERS = 2  # passes started by a retry or a finished notification
LOCK_WAIT_SECONDS = 10.0  # a pass waits this long for another pass of the same object, then is skipped
CONFLICT_ATTEMPTS = 3  # a status patch refused with 409 is re-read and re-run this many times in all
NAMESPACES = tuple(filter(None, os.environ.get("MODELOPS_NAMESPACES", "").split(",")))
FINALIZER = "modelops.dev/finalizer"

# Every live ModelDeployment, with the spec and status last seen on the watch, parsed once on arrival
# (None when the models refuse it), and its lock: the analysis tick reads these instead of re-parsing.
_registry: ObjectRegistry[Watched] = ObjectRegistry()
_dispatched = Dispatched()  # analyses in progress, kept from being dispatched twice
log = logging.getLogger("modelops")


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
            timeout_seconds=PROMETHEUS_TIMEOUT_SECONDS,
            ca_file=_optional_path("MODELOPS_PROMETHEUS_CA_FILE"),
            bearer_token_file=_optional_path("MODELOPS_PROMETHEUS_TOKEN_FILE"),
            basic_auth_file=_optional_path("MODELOPS_PROMETHEUS_BASIC_AUTH_FILE"),
        )
    )


def prepare(memo: Any, cluster: Any, prometheus: Prometheus | None, notify_settings: DeliverySettings | None = None) -> None:
    """Puts the clients, pools, retry scheduler and notify outbox in ``memo`` (started: call :func:`shut_down`)."""
    memo.cluster = cluster
    memo.prometheus = prometheus
    memo.periodic_pool = ThreadPoolExecutor(PERIODIC_WORKERS, thread_name_prefix="modelops-periodic")
    memo.query_pool = ThreadPoolExecutor(QUERY_WORKERS, thread_name_prefix="modelops-query")
    memo.analysis_pool = ThreadPoolExecutor(ANALYSIS_WORKERS, thread_name_prefix="modelops-analysis")
    memo.triggered_pool = ThreadPoolExecutor(TRIGGERED_WORKERS, thread_name_prefix="modelops-triggered")
    memo.retries = RetryScheduler(lambda key: _trigger_pass(memo, key))
    memo.outbox = Outbox(notify_settings or DeliverySettings(deadline_seconds=NOTIFY_DEADLINE_SECONDS, allowed_hosts=NOTIFY_ALLOWED_HOSTS),
                         on_result=lambda namespace, name: _trigger_pass(memo, (namespace, name)))
    memo.retries.start()
    memo.outbox.start()


def shut_down(memo: Any) -> None:
    for name in ("retries", "outbox"):
        if memo.get(name) is not None:
            memo[name].stop()
    for name in ("periodic_pool", "query_pool", "analysis_pool", "triggered_pool"):
        if memo.get(name) is not None:
            memo[name].shutdown(wait=False, cancel_futures=True)


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
    prepare(memo, KubernetesClusterApi(_api_client()), _prometheus())
    port = int(os.environ.get("MODELOPS_METRICS_PORT", "0"))
    if port:
        metrics.serve(port, os.environ.get("MODELOPS_METRICS_ADDRESS", "0.0.0.0"))


def _now() -> str:
    """The one clock: every decision of a pass takes this ``now`` (planning reads no clock)."""
    return format_timestamp(datetime.datetime.now(datetime.UTC))


# --- forgetting ---------------------------------------------------------------------------------


def forget(memo: Any, namespace: str, name: str, *, unless_seen_after: float | None = None) -> bool:
    """Frees everything kept for the object: watched body, lock (once unused), pending analysis,
    retries, queued notifications, and every metric series labelled with it.

    With ``unless_seen_after`` (monotonic) an object the watch announced after that moment is
    kept: it is a new object of the same name, not the one found gone.
    """
    key = (namespace, name)
    if not _registry.forget(key, unless_seen_after=unless_seen_after):
        return False
    _dispatched.forget(("canary", *key))
    _dispatched.forget(("monitor", *key))
    if memo.get("retries") is not None:
        memo.retries.forget(key)
    if memo.get("outbox") is not None:
        memo.outbox.forget(namespace, name)
    metrics.forget(namespace, name)
    metrics.tracked_modeldeployments.set(len(_registry))
    return True


# --- one pass ----------------------------------------------------------------------------------


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
    key = (namespace, name)
    with _registry.hold(key, LOCK_WAIT_SECONDS) as acquired:
        if not acquired:
            metrics.passes_skipped.inc()
            logger.warning("skipped a pass of %s/%s: another pass has held it for over %gs", namespace, name, LOCK_WAIT_SECONDS)
            return
        started = _registry.now()
        try:
            found = _pass_with_conflict_retries(namespace, name, memo, evaluations, revision, monitoring_evaluations, monitored_version)
        except ApiError as error:
            metrics.reconcile_passes.labels("error").inc()
            if error.status == 404:
                forget(memo, namespace, name, unless_seen_after=started)  # deleted during the pass
                return
            _retry_later(memo, key, error, logger)
            return
        if found is None:
            forget(memo, namespace, name, unless_seen_after=started)  # gone, or being deleted: not ours any more
            return
    body, outcome, evaluations = found
    memo.retries.succeeded(key)
    metrics.reconcile_passes.labels("error" if outcome.errors else "ok").inc()
    _report(body, outcome, memo, logger, evaluations)


def _pass_with_conflict_retries(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    evaluations: Mapping[str, Evaluation] | None,
    revision: str | None,
    monitoring_evaluations: Mapping[str, Evaluation] | None,
    monitored_version: str | None,
) -> tuple[dict[str, Any], Outcome, Mapping[str, Evaluation] | None] | None:
    """Reads the object and reconciles it; on a 409 from the status patch, reads it again and
    re-runs, at most ``CONFLICT_ATTEMPTS`` times. None when the object is gone or being deleted."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        body = memo.cluster.get_modeldeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        status = body.get("status") or {}
        usable = evaluations if (status.get("rollout") or {}).get("revision") == revision else None
        monitoring = monitoring_evaluations if (status.get("stable") or {}).get("version") == monitored_version else None
        try:
            with metrics.reconcile_seconds.time():
                outcome = reconcile(memo.cluster, body, _now(), usable, monitoring, notifier=memo.get("outbox"))
        except ApiError as error:
            if error.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
            log.debug("status of %s/%s changed during the pass (409): reading it again", namespace, name)
            continue
        return body, outcome, usable
    raise AssertionError("unreachable")  # the loop returns or raises


def _retry_later(memo: kopf.Memo, key: Key, error: ApiError, logger: logging.Logger | kopf.Logger) -> None:
    """One log line, no traceback; a transient error gets a retry of this object with backoff."""
    namespace, name = key
    delay = memo.retries.failed(key) if error.transient else None
    if delay is None:
        logger.warning("pass of %s/%s failed: %s; the next trigger or periodic pass retries it", namespace, name, error)
        return
    metrics.pass_retries.inc()
    logger.warning("pass of %s/%s failed: %s; retrying in %gs", namespace, name, error, delay)


def _trigger_pass(memo: kopf.Memo, key: Key) -> None:
    """A pass soon, on a worker (never in the caller's thread: retries and the outbox must not block)."""
    if not _registry.knows(key):
        return
    try:
        memo.triggered_pool.submit(_guarded, _run_pass, key[0], key[1], memo, log)
    except RuntimeError:
        pass  # shutting down: the pool takes no more work, and the next operator runs the pass


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
    if not _registry.knows((namespace, name)):
        return  # forgotten during the pass: creating its series again would leak them
    for event in outcome.events:
        if event.reason == "Promoted":
            metrics.promotions.labels(namespace, name).inc()
        elif event.reason == "RolledBack":
            metrics.rollbacks.labels(namespace, name).inc()
    for check, evaluation in (evaluations or {}).items():
        metrics.analysis_checks.labels(namespace, name, check, evaluation.verdict).inc()
    if outcome.canary_weight is not None:
        metrics.canary_weight.labels(namespace, name).set(outcome.canary_weight)


# --- watch events ------------------------------------------------------------------------------


@kopf.on.event(v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
def modeldeployment_changed(
    type: str | None, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        # Gone, or held only by someone else's finalizer: nothing of it is ours to reconcile or analyse.
        forget(memo, namespace, name)
        return
    _registry.remember((namespace, name), parse_watched({"spec": dict(body.spec), "status": dict(body.status)}))
    metrics.tracked_modeldeployments.set(len(_registry))
    # Counters start at 0 for every ModelDeployment, so increase() sees its first promotion and rollback.
    metrics.promotions.labels(namespace, name)
    metrics.rollbacks.labels(namespace, name)
    _run_pass(namespace, name, memo, logger)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    namespace, owner = body.metadata.namespace, (body.metadata.labels or {}).get(LABEL_DEPLOYMENT)
    if owner and _registry.knows((namespace, owner)):
        _run_pass(namespace, owner, memo, logger)


# --- the periodic pass -------------------------------------------------------------------------


def forget_vanished(memo: Any) -> int | None:
    """Forgets known objects that a fresh LIST no longer contains (their DELETED event was missed,
    for example across a relist). One LIST per period, paginated. None when the LIST failed:
    then nothing is forgotten (the operator cannot know)."""
    listed_at = _registry.now()
    try:
        live = memo.cluster.list_modeldeployments(NAMESPACES)
    except ApiError as error:
        log.warning("cannot list ModelDeployments to find deleted ones: %s", error)
        return None
    vanished = _registry.vanished(live, listed_at)
    for namespace, name in vanished:
        if forget(memo, namespace, name, unless_seen_after=listed_at):
            log.info("forgot %s/%s: it is no longer listed (deleted while the watch was away)", namespace, name)
    return len(vanished)


async def _periodic_passes(memo: kopf.Memo) -> None:
    """Every RESYNC_SECONDS, one pass over every known ModelDeployment, ``PERIODIC_WORKERS`` at once.

    One loop for the whole operator rather than a kopf timer per object: timers would make
    kopf put a finalizer on every ModelDeployment (so deleting one would hang while the
    operator is down) and keep a task per object. Passes run on a bounded pool, so one slow
    object (its lock held, an apiserver call at its timeout) holds up one worker, not the pass.
    """
    took = 0.0
    loop = asyncio.get_running_loop()
    while True:
        # Passes start every RESYNC_SECONDS (right away when the last one took longer), not
        # RESYNC_SECONDS after the last one ended: a slow pass must not stretch the period.
        await asyncio.sleep(max(MINIMUM_PAUSE_SECONDS, RESYNC_SECONDS - took))
        started = time.monotonic()
        await loop.run_in_executor(memo.periodic_pool, forget_vanished, memo)
        keys = _registry.keys()
        await asyncio.gather(*(
            loop.run_in_executor(memo.periodic_pool, _guarded, _run_pass, namespace, name, memo, log) for namespace, name in keys
        ))
        took = time.monotonic() - started
        metrics.periodic_pass_seconds.set(took)
        metrics.periodic_pass_objects.set(len(keys))
        if took > RESYNC_SECONDS:
            log.warning("the periodic pass over %d ModelDeployments took %.1fs, longer than --resync-seconds %s", len(keys), took, RESYNC_SECONDS)


# --- analysis ----------------------------------------------------------------------------------


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
    """Dispatches canary analysis for every due canary, then monitoring for every due stable
    version, to the analysis pool; returns at once. A canary whose last analysis is still
    running, or whose result the watch has not yet delivered, is not due again."""
    watched = _registry.snapshot()
    now = _now()
    for kind, found, run in (("canary", due_canaries(watched, now), _analyse_canaries),
                             ("monitor", due_monitors(watched, now), _analyse_monitors)):
        due = [(item, version) for item, version in found
               if not _dispatched.blocked((kind, item.namespace, item.name), watched.get((item.namespace, item.name)))]
        for item, _ in due:
            _dispatched.start((kind, item.namespace, item.name), watched.get((item.namespace, item.name)))
        if due:
            memo.analysis_pool.submit(_guarded_batch, kind, run, memo, due)


def _guarded_batch(kind: str, run: Callable[[kopf.Memo, list[tuple[CanaryUnderAnalysis, str]]], None], memo: kopf.Memo,
                   due: list[tuple[CanaryUnderAnalysis, str]]) -> None:
    try:
        run(memo, due)
    except Exception:  # noqa: BLE001 - a broken batch must not stop analysis for good
        log.exception("analysis of %d %ss failed", len(due), kind)
    finally:
        for item, _ in due:
            _dispatched.finish((kind, item.namespace, item.name))


def _pass_arguments(kind: str, evaluations: dict[str, Evaluation], judged: str) -> dict[str, Any]:
    """How ``_run_pass`` takes a batch's verdicts: a canary's with the revision they judged, a
    monitor's with the stable version they judged (a pass drops them if that changed meanwhile)."""
    if kind == "canary":
        return {"evaluations": evaluations, "revision": judged}
    return {"monitoring_evaluations": evaluations, "monitored_version": judged}


def _analyse(kind: str, memo: kopf.Memo, due: list[tuple[CanaryUnderAnalysis, str]]) -> int:
    """Runs the batch's queries concurrently; each object gets its pass as soon as its own verdicts are in.
    Returns how many queries the batch ran."""
    judged = {(item.namespace, item.name): version for item, version in due}

    def evaluated(item: CanaryUnderAnalysis, evaluations: dict[str, Evaluation]) -> None:
        key = (item.namespace, item.name)
        try:
            _guarded(_run_pass, item.namespace, item.name, memo, log, **_pass_arguments(kind, evaluations, judged[key]))
        finally:
            _dispatched.finish((kind, *key))

    return run_tick_concurrently([item for item, _ in due], lambda promql: _query(memo, promql),
                                 _templates(memo, due), memo.query_pool, ANALYSIS_BUDGET_SECONDS, evaluated)


def _analyse_canaries(memo: kopf.Memo, due: list[tuple[CanaryUnderAnalysis, str]]) -> None:
    metrics.analysis_tick_queries.set(_analyse("canary", memo, due))
    metrics.analysis_tick_canaries.set(len(due))


def _analyse_monitors(memo: kopf.Memo, due: list[tuple[CanaryUnderAnalysis, str]]) -> None:
    _analyse("monitor", memo, due)


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
            _analysis_tick(memo)  # no I/O: it only dispatches
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
    shut_down(memo)
    prometheus: Prometheus | None = memo.get("prometheus")
    if prometheus is not None:
        prometheus.close()
