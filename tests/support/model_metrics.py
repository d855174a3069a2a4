"""A stand-in for model server pods: serves the metrics contract for one version, with values a test controls.

It is a real HTTP endpoint on 127.0.0.1 that Prometheus scrapes, registered through file_sd
with the target labels the documented PodMonitor gives a model pod
(``modelops.devcluster.targets.pod_target_labels``: ``namespace``, ``pod``, ``container``,
``endpoint``, and ``model``/``version`` from the pod's modelops labels). Prometheus scrapes with
``honor_labels: false``, so those win over the same names in the served text.

Counters grow with time at the configured request rate, so ``rate()`` and ``increase()`` behave
as they do for a real server; every request of the current behaviour lands in the first
histogram bucket at or above ``latency_seconds``.

With ``drift_score`` set it also serves the drift gauges of one feature (``a``): the score, the
window size, ``mlmon_drift_interval_seconds`` and ``mlmon_last_run_timestamp_seconds``, which
follows the wall clock until ``freeze_drift()`` stops it, as a server whose drift loop died.

A forger is a stand-in whose served labels lie: ``model``/``version`` other than its pod's
labels, and ``extra_labels`` such as ``{"namespace": "victim"}`` on every series.
"""

import http.server
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelops.devcluster import targets
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MODEL_VERSION

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Behaviour:
    requests_per_second: float = 50.0
    latency_seconds: float = 0.07  # p99 reads about 0.1 (the 0.05-0.1 bucket)
    error_ratio: float = 0.0
    drift_score: float | None = None  # None: no drift gauges at all
    drift_window_samples: float = 1000.0
    drift_interval_seconds: float = 2.0


@dataclass
class VersionMetrics:
    namespace: str  # the pod's namespace (a target label, never served)
    model: str  # served as the ``model`` label (and, unless the endpoint is told otherwise, the pod's label)
    version: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    extra_labels: Mapping[str, str] = field(default_factory=dict)  # served on every series, e.g. a forged namespace
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: {le: 0.0 for le in BUCKETS})
    duration_sum: float = 0.0
    updated: float = field(default_factory=time.monotonic)
    drift_frozen_at: float | None = None  # wall-clock time the drift loop "stopped" (None: it runs)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def freeze_drift(self) -> None:
        """From now on the last-run timestamp stays where it is (the score keeps being served)."""
        with self.lock:
            self.drift_frozen_at = time.time()

    def thaw_drift(self) -> None:
        with self.lock:
            self.drift_frozen_at = None

    def _drift_lines(self) -> list[str]:
        behaviour = self.behaviour
        if behaviour.drift_score is None:
            return []
        model = self._identity()
        last_run = self.drift_frozen_at if self.drift_frozen_at is not None else time.time()
        return [
            "# TYPE mlmon_feature_drift_score gauge",
            f'mlmon_feature_drift_score{{{model},feature="a",method="psi"}} {behaviour.drift_score}',
            "# TYPE mlmon_window_samples gauge",
            f'mlmon_window_samples{{{model},window="current"}} {behaviour.drift_window_samples}',
            "# TYPE mlmon_last_run_timestamp_seconds gauge",
            f"mlmon_last_run_timestamp_seconds{{{model}}} {last_run:.3f}",
            "# TYPE mlmon_drift_interval_seconds gauge",
            f"mlmon_drift_interval_seconds{{{model}}} {behaviour.drift_interval_seconds}",
        ]

    def _identity(self) -> str:
        """The labels this server writes on every series: its model and version, and any extra ones."""
        labels = {**self.extra_labels, "model": self.model, "version": self.version}
        return ",".join(f'{name}="{value}"' for name, value in labels.items())

    def _advance(self) -> None:
        now = time.monotonic()
        count = self.behaviour.requests_per_second * (now - self.updated)
        self.updated = now
        self.requests += count
        self.errors += count * self.behaviour.error_ratio
        self.duration_sum += count * self.behaviour.latency_seconds
        for le in BUCKETS:
            if self.behaviour.latency_seconds <= le:
                self.buckets[le] += count

    def set(self, **changes: float) -> None:
        """Changes the behaviour from now on (what was counted so far stays)."""
        with self.lock:
            self._advance()
            for key, value in changes.items():
                setattr(self.behaviour, key, value)

    def render(self) -> str:
        with self.lock:
            self._advance()
            labels = f'{self._identity()},api="infer",protocol="rest"'
            ok = self.requests - self.errors
            lines = [
                "# TYPE mlserve_requests_total counter",
                f'mlserve_requests_total{{{labels},outcome="success"}} {ok:.6f}',
                f'mlserve_requests_total{{{labels},outcome="server_error"}} {self.errors:.6f}',
                "# TYPE mlserve_request_duration_seconds histogram",
            ]
            lines += [f'mlserve_request_duration_seconds_bucket{{{labels},le="{le}"}} {n:.6f}' for le, n in self.buckets.items()]
            lines += [
                f'mlserve_request_duration_seconds_bucket{{{labels},le="+Inf"}} {self.requests:.6f}',
                f"mlserve_request_duration_seconds_sum{{{labels}}} {self.duration_sum:.6f}",
                f"mlserve_request_duration_seconds_count{{{labels}}} {self.requests:.6f}",
            ]
            lines += self._drift_lines()
            return "\n".join(lines) + "\n"


class ModelMetricsEndpoint:
    """One scrape target per version; ``stop()`` unregisters and closes it.

    ``pod_labels`` are the labels of the pod it stands in for; by default those the operator
    gives a pod of ``metrics.model`` at ``metrics.version``.
    """

    def __init__(self, targets_dir: Path, metrics: VersionMetrics, pod: str, pod_labels: Mapping[str, str] | None = None) -> None:
        self.metrics = metrics
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = endpoint.metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._targets_dir = targets_dir
        self.target_name = f"{metrics.namespace}-{pod}".lower()[:63].rstrip("-")
        address = f"127.0.0.1:{self._server.server_address[1]}"
        if pod_labels is None:
            pod_labels = {LABEL_DEPLOYMENT: metrics.model, LABEL_MODEL_VERSION: metrics.version}
        self.target_labels = targets.pod_target_labels(metrics.namespace, pod, pod_labels)
        targets.register(targets_dir, self.target_name, address, self.target_labels)

    def stop(self) -> None:
        targets.unregister(self._targets_dir, self.target_name)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
