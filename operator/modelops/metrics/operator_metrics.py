"""The operator's own Prometheus metrics, served on ``--metrics-port``."""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LABELS = ("namespace", "modeldeployment")

canary_weight = Gauge("modelops_canary_weight", "Traffic the canary receives, percent (0 without a canary).", LABELS)
analysis_checks = Counter(
    "modelops_analysis_checks_total", "Check evaluations by verdict.", (*LABELS, "check", "verdict")
)
promotions = Counter("modelops_promotions_total", "Revisions promoted to stable.", LABELS)
rollbacks = Counter("modelops_rollbacks_total", "Revisions rolled back or aborted.", LABELS)
reconcile_seconds = Histogram(
    "modelops_reconcile_duration_seconds",
    "Duration of one reconciliation pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
reconcile_passes = Counter("modelops_reconcile_total", "Reconciliation passes by result.", ("result",))
prometheus_queries = Counter("modelops_prometheus_queries_total", "Prometheus queries by result.", ("result",))
analysis_tick_queries = Gauge("modelops_analysis_tick_queries", "Prometheus queries made by the last analysis tick.")
analysis_tick_canaries = Gauge("modelops_analysis_tick_canaries", "Canaries evaluated by the last analysis tick.")
periodic_pass_seconds = Gauge("modelops_periodic_pass_seconds", "Duration of the last periodic pass over every ModelDeployment.")
periodic_pass_objects = Gauge("modelops_periodic_pass_objects", "ModelDeployments the last periodic pass reconciled.")
tracked_modeldeployments = Gauge(
    "modelops_tracked_modeldeployments", "ModelDeployments the operator keeps in memory (watched, not deleted)."
)
pass_retries = Counter(
    "modelops_pass_retries_total", "Passes scheduled again after a transient apiserver error (unreachable, 409, 429, 5xx)."
)
passes_skipped = Counter(
    "modelops_passes_skipped_total", "Passes skipped because another pass held the object's lock past the wait limit."
)
notifications = Counter(
    "modelops_notifications_total", "Retraining candidate notifications by outcome.", ("result",)
)
notify_queued = Gauge("modelops_notify_queued", "Notifications waiting in the outbox.")
for _result in ("ok", "error"):  # every result series exists from the start, at 0
    reconcile_passes.labels(_result)
    prometheus_queries.labels(_result)
for _result in ("delivered", "failed", "dropped"):
    notifications.labels(_result)

PER_OBJECT = (canary_weight, analysis_checks, promotions, rollbacks)


def forget(namespace: str, name: str) -> None:
    """Removes every series labelled with this ModelDeployment (it is gone: its series must not live on)."""
    for collector in PER_OBJECT:
        # prometheus_client keeps a labelled metric's children in ``_metrics``, keyed by label values,
        # guarded by ``_lock`` (which ``labels()`` and ``remove()`` take too).
        with collector._lock:
            labelled = [values for values in collector._metrics if values[:2] == (namespace, name)]
        for values in labelled:
            try:
                collector.remove(*values)
            except KeyError:
                pass  # removed meanwhile by another thread


def serve(port: int, address: str) -> None:
    """Starts the /metrics endpoint in a background thread."""
    start_http_server(port, addr=address)
