"""A traffic generator that routes like a Gateway API implementation would (dev only).

Each second it reads the HTTPRoute the operator owns, follows every ``backendRef`` to its
Service, the Service's selector to the Ready pods, and each pod to the loopback port where the
devcluster's pod runner serves it. Requests go to the backends in proportion to the route's
weights, round-robin over each backend's pods. ``shift`` moves the mean of the input
distribution, which is how the demo makes the data drift.

Run on its own (``python -m modelops.demo.traffic``) it reads ``{"shift": x}`` from a control
file every second, so a shell (or ``modelops demo --keep``) can change it while it runs.
"""

import argparse
import bisect
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from kubernetes import client

from modelops.devcluster.podrunner import endpoints
from modelops.planning.routers import route_weights

log = logging.getLogger(__name__)
GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES = "gateway.networking.k8s.io", "v1", "httproutes"
REQUEST_TIMEOUT_SECONDS = 5
API_TIMEOUT_SECONDS = 10
VERSION_LABEL = "modelops.dev/version"


@dataclass(frozen=True)
class Backend:
    """One weighted backendRef, resolved to the ports of its Ready pods."""

    service: str
    version: str
    weight: int
    ports: tuple[int, ...]


def pick(backends: list[Backend], draw: float) -> Backend | None:
    """The backend a uniform draw in [0, 1) selects, by weight; backends without weight or pods get nothing."""
    live = [b for b in backends if b.weight > 0 and b.ports]
    total = sum(b.weight for b in live)
    if not total:
        return None
    bounds, running = [], 0
    for backend in live:
        running += backend.weight
        bounds.append(running / total)
    return live[min(bisect.bisect_right(bounds, draw), len(live) - 1)]


def transaction_rows(rng: np.random.Generator, count: int, features: int, shift: float) -> list[float]:
    """``count`` rows of standard-normal features, moved by ``shift``, flattened row-major."""
    return rng.normal(shift, 1.0, (count, features)).ravel().tolist()


def _ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions if pod.status else None
    return any(c.type == "Ready" and c.status == "True" for c in conditions or [])


class Gateway:
    """Resolves an HTTPRoute to weighted backends through the Kubernetes API, as a Gateway would."""

    def __init__(self, api: client.ApiClient, state_dir: Path, namespace: str, route: str) -> None:
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.state_dir, self.namespace, self.route = state_dir, namespace, route

    def weights(self) -> dict[str, int]:
        """backendRef Service name → weight; empty while the route does not exist."""
        try:
            route = self.custom.get_namespaced_custom_object(
                GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, HTTPROUTES, self.route, _request_timeout=API_TIMEOUT_SECONDS)
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise
        return route_weights(route)

    def backends(self) -> list[Backend]:
        published = {e["pod"]: int(e["port"]) for e in endpoints(self.state_dir, self.namespace) if e.get("ready")}
        resolved = []
        for service_name, weight in self.weights().items():
            service = self.core.read_namespaced_service(service_name, self.namespace, _request_timeout=API_TIMEOUT_SECONDS)
            selector = ",".join(f"{k}={v}" for k, v in (service.spec.selector or {}).items())
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=API_TIMEOUT_SECONDS).items
            ports = tuple(published[p.metadata.name] for p in pods if _ready(p) and p.metadata.name in published)
            version = (service.metadata.labels or {}).get(VERSION_LABEL, service_name)
            resolved.append(Backend(service_name, version, weight, ports))
        return resolved


@dataclass
class Counts:
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)


class TrafficGenerator:
    """Sends OIP inference requests at ``rate`` per second through a :class:`Gateway`."""

    def __init__(self, gateway: Gateway, model: str, features: int, *, rate: float = 20, rows_per_request: int = 20,
                 workers: int = 6, seed: int = 0) -> None:
        self.gateway, self.model, self.features = gateway, model, features
        self.rate, self.rows_per_request = rate, rows_per_request
        self.shift = 0.0
        self.counts = Counts()
        self._backends: list[Backend] = []
        self._rng = np.random.default_rng(seed)
        self._random = random.Random(seed)
        self._cursor: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="traffic")
        self._http = httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, limits=httpx.Limits(max_connections=workers * 2))
        self._threads = [threading.Thread(target=self._refresh_loop, daemon=True), threading.Thread(target=self._send_loop, daemon=True)]

    def start(self) -> "TrafficGenerator":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._backends = self.gateway.backends()
            except (client.ApiException, OSError) as error:
                log.warning("cannot resolve the route: %s", error)
            self._stop.wait(1)

    def _send_loop(self) -> None:
        interval = 1 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            backend = pick(self._backends, self._random.random())
            if backend is not None:
                port = self._next_port(backend)
                with self._lock:
                    rows = transaction_rows(self._rng, self.rows_per_request, self.features, self.shift)
                self._pool.submit(self._send, backend.version, port, rows)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _next_port(self, backend: Backend) -> int:
        position = self._cursor.get(backend.service, 0)
        self._cursor[backend.service] = position + 1
        return backend.ports[position % len(backend.ports)]

    def _send(self, version: str, port: int, rows: list[float]) -> None:
        body = {"inputs": [{"name": "transactions", "shape": [self.rows_per_request, self.features], "datatype": "FP64", "data": rows}]}
        try:
            ok = self._http.post(f"http://127.0.0.1:{port}/v2/models/{self.model}/infer", json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        with self._lock:
            self.counts.sent[version] = self.counts.sent.get(version, 0) + 1
            if not ok:
                self.counts.failed[version] = self.counts.failed.get(version, 0) + 1


def _read_shift(control: Path) -> float | None:
    try:
        return float(json.loads(control.read_text())["shift"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> None:
    from modelops.devcluster import bootstrap
    from modelops.devcluster.cluster import load_state
    from modelops.devcluster.layout import state_layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".devcluster"))
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--route", required=True, help="The HTTPRoute (the ModelDeployment's name).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--control", type=Path, help='A JSON file {"shift": x}, re-read every second.')
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = load_state(state_layout(arguments.state_dir))
    if state is None:
        raise SystemExit(f"no devcluster in {arguments.state_dir}: run `modelops devcluster up` first")
    with bootstrap.api_client(state.kubeconfig) as api:
        generator = TrafficGenerator(Gateway(api, state.root, arguments.namespace, arguments.route), arguments.model,
                                     arguments.features, rate=arguments.rate).start()
        try:
            while True:
                if arguments.control and (shift := _read_shift(arguments.control)) is not None:
                    generator.shift = shift
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            generator.stop()


if __name__ == "__main__":
    main()
