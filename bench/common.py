"""What the benchmarks on the devcluster share.

Two kinds of helpers live here:

- **pure** ones, unit-tested in ``tests/unit/test_bench_common.py``: percentiles, counting the
  operator's writes in the apiserver's audit log, reading a value from the operator's
  ``/metrics`` text, the resident memory line of ``/proc/<pid>/status``;
- **I/O** ones: a devcluster with the operator running under its ServiceAccount (never as
  admin), minimal ModelDeployments, and a watch that timestamps every event it sees.

Times measured here come from ``time.monotonic()`` on this machine; the apiserver's own
timestamps (second resolution) are never used for a latency.
"""

import atexit
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from modelops.api import v1alpha1
from modelops.devcluster import bootstrap, toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.layout import CacheLayout, cache_root
from modelops.devcluster.localoperator import Kubectl, LocalOperator, install_manifests, service_account_kubeconfig

RESULTS = Path(__file__).resolve().parent / "results"
REQUEST_TIMEOUT_SECONDS = 15
GROUP, VERSION, PLURAL = v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL
DIGEST = "sha256:" + "0" * 63 + "1"
BENCH_LABEL = "modelops.dev/bench"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# --- pure helpers --------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``fraction`` of the values at or below it.

    No interpolation, so it is always one of the measured values. With 20 samples p50 is the
    10th smallest and p99 is the largest (ceil(0.99 x 20) = 20).

    >>> percentile([5, 1, 4, 2, 3], 0.5)
    3
    >>> percentile(list(range(1, 21)), 0.99)
    20
    """
    if not values:
        raise ValueError("no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """p50, p99 (nearest rank), min, max and the sample count, rounded to milliseconds."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p99": round(percentile(values, 0.99), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


@dataclass(frozen=True)
class AuditFilter:
    """Which audit entries count as writes by ``user``.

    ``since`` and ``until`` are RFC 3339 timestamps compared with ``requestReceivedTimestamp``
    (the apiserver writes them with microseconds, in UTC, so text order is time order).
    ``namespaces`` None means any namespace, cluster-scoped objects included.
    """

    user: str
    since: str = ""
    until: str = "9999"
    namespaces: frozenset[str] | None = None


def audit_writes(lines: Iterable[str], selection: AuditFilter) -> list[dict[str, Any]]:
    """The completed write requests in audit-log ``lines`` (JSON, one entry each) that ``selection`` picks.

    Only the ``ResponseComplete`` stage counts, so a request is never counted twice; lines that
    are not JSON (a partly written last line) are skipped.
    """
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("stage") != "ResponseComplete" or entry.get("verb") not in WRITE_VERBS:
            continue
        if (entry.get("user") or {}).get("username") != selection.user:
            continue
        if not selection.since < entry.get("requestReceivedTimestamp", "") <= selection.until:
            continue
        namespace = (entry.get("objectRef") or {}).get("namespace")
        if selection.namespaces is not None and namespace not in selection.namespaces:
            continue
        found.append(entry)
    return found


def describe_writes(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts by ``verb resource[/subresource]``, for example ``{"patch modeldeployments/status": 3}``."""
    counts: Counter[str] = Counter()
    for entry in entries:
        reference = entry.get("objectRef") or {}
        resource = reference.get("resource", "?") + (f"/{reference['subresource']}" if reference.get("subresource") else "")
        counts[f"{entry.get('verb')} {resource}"] += 1
    return dict(sorted(counts.items()))


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in Prometheus text ``text``.

    ``name`` is the sample's own name (``modelops_reconcile_total``, ``..._seconds_sum``); 0 when absent.
    """
    wanted = labels or {}
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in wanted.items()):
                total += sample.value
    return total


def resident_kib(status_text: str) -> int:
    """VmRSS from the text of ``/proc/<pid>/status``, in KiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a kernel thread, or the process is a zombie)")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the machine and the report ------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when the run started."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), "")
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
    return {
        "arch": platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the operator's source differed from it (read-only git)."""
    repository = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "operator_modified": bool(git("status", "--porcelain", "--", "operator"))}


def write_report(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the cluster, the operator ---------------------------------------------------------------


def utc_now() -> str:
    """Now in the audit log's format (microseconds, UTC), for :class:`AuditFilter` bounds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def kubectl_for(state: ClusterState) -> Kubectl:
    binaries = toolchain.resolve(CacheLayout(cache_root()), progress=lambda _: None)
    return Kubectl(binaries.kubectl, state.kubeconfig)


@dataclass
class OperatorSettings:
    """``modelops run`` options; the defaults are the production defaults of the CLI."""

    resync_seconds: float = 60
    analysis_tick_seconds: float = 1
    prometheus_timeout_seconds: float = 5


def start_operator(state: ClusterState, admin: client.ApiClient, settings: OperatorSettings, log_path: Path) -> LocalOperator:
    """Installs CRDs and RBAC from ``manifests/`` and starts ``modelops run --all-namespaces`` as its ServiceAccount."""
    install_manifests(kubectl_for(state))
    # The token stays out of the repository: a private temporary folder, removed at exit.
    folder = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    kubeconfig = service_account_kubeconfig(state, admin, folder / "operator.kubeconfig")
    log_path.unlink(missing_ok=True)
    operator = LocalOperator(
        kubeconfig=kubeconfig,
        log=log_path,
        prometheus_url=state.prometheus_url,
        resync_seconds=settings.resync_seconds,
        analysis_tick_seconds=settings.analysis_tick_seconds,
        prometheus_timeout_seconds=settings.prometheus_timeout_seconds,
    )
    operator.start()
    return operator


def operator_rss_kib(operator: LocalOperator) -> int:
    return resident_kib(Path(f"/proc/{operator.pid}/status").read_text())


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={BENCH_LABEL: "true"}))
    try:
        core.create_namespace(body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    except ApiException as error:
        if error.status != 409:
            raise


def delete_namespaces(api: client.ApiClient, names: Iterable[str], timeout: float) -> float:
    """Deletes the namespaces and waits until they are gone (``timeout`` 0: does not wait); returns how long that took."""
    core = client.CoreV1Api(api)
    started = time.monotonic()
    names = list(names)
    for name in names:
        try:
            core.delete_namespace(name, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status != 404:
                raise
    if timeout <= 0:
        return 0.0

    def gone() -> bool:
        present = {item.metadata.name for item in core.list_namespace(_request_timeout=REQUEST_TIMEOUT_SECONDS).items}
        return not present & set(names)

    bootstrap.wait_for(f"namespaces {', '.join(names)} to be deleted", gone, timeout=timeout, interval=1)
    return time.monotonic() - started


def minimal_modeldeployment(name: str, namespace: str, version: str = "1.0.0", replicas: int = 1) -> dict[str, Any]:
    """The smallest valid ModelDeployment: fixed replicas, so its children are one Deployment and two Services."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: "true"}},
        "spec": {
            "model": {"version": version, "uri": f"file:///models/{name}.json", "digest": DIGEST, "format": "custom"},
            "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"},
            "scaling": {"replicas": replicas},
        },
    }


def is_ready(body: Mapping[str, Any]) -> bool:
    """Ready=True for the current generation: what ``kubectl wait --for=condition=Ready`` and Argo CD wait for."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def list_modeldeployments(api: client.ApiClient, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    answer = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=label_selector, _request_timeout=60)
    return list(answer.get("items") or [])


# --- watches ------------------------------------------------------------------------------------


Handler = Callable[[str, dict[str, Any], float], None]


@dataclass
class Watcher:
    """Streams one watch in a thread and calls ``handler(type, object, monotonic time)`` for each event.

    ``list_call`` is a namespaced list method of the official client (``list_namespaced_service``
    or, for custom objects, a partial of ``list_namespaced_custom_object``). Objects arrive as
    plain dicts. The stream is reopened after the server ends it (``timeout_seconds``).
    """

    list_call: Callable[..., Any]
    namespace: str
    handler: Handler
    label_selector: str = ""
    server_timeout_seconds: int = 60
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {self.namespace}")
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise TimeoutError(f"the watch in {self.namespace} did not start")

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                resource_version = self._stream(resource_version)
            except ApiException as error:
                if error.status != 410:
                    self.error = error
                    self._started.set()
                    return
                resource_version = ""  # expired: start over from a fresh list (ADDED for everything present)
            except BaseException as error:  # noqa: BLE001 - reported to the measuring thread
                self.error = error
                self._started.set()
                return

    def _stream(self, resource_version: str) -> str:
        """One watch request until the server ends it; returns the last resourceVersion seen."""
        stream = watch.Watch()
        options: dict[str, Any] = {
            "label_selector": self.label_selector,
            "timeout_seconds": self.server_timeout_seconds,
            "_request_timeout": self.server_timeout_seconds + 30,
        }
        if resource_version:
            options["resource_version"] = resource_version
        self._started.set()
        for event in stream.stream(self.list_call, self.namespace, **options):
            arrived = time.monotonic()
            body = event["raw_object"]
            resource_version = (body.get("metadata") or {}).get("resourceVersion", resource_version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self.handler(event["type"], body, arrived)
            if self._stop.is_set():
                stream.stop()
                break
        return resource_version


def custom_list(api: client.ApiClient, group: str = GROUP, version: str = VERSION, plural: str = PLURAL) -> Callable[..., Any]:
    """``list_namespaced_custom_object`` bound to one custom resource (ModelDeployments by default), shaped like
    the typed list methods."""
    custom = client.CustomObjectsApi(api)
    return lambda namespace, **options: custom.list_namespaced_custom_object(group, version, namespace, plural, **options)


@contextmanager
def watching(watchers: Sequence[Watcher]) -> Iterator[Sequence[Watcher]]:
    for watcher in watchers:
        watcher.start()
    try:
        yield watchers
    finally:
        for watcher in watchers:
            watcher.stop()
