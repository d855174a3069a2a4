"""`modelops serve`: the reference model server, on aiohttp (already a dependency of kopf).

Open Inference Protocol (KServe V2) REST:

- ``GET /v2/health/live``, ``GET /v2/health/ready``
- ``GET /v2/models/<name>``, ``GET /v2/models/<name>/ready``
- ``POST /v2/models/<name>/infer``
- ``GET /metrics``: the metrics contract (docs/metrics.md)

An artifact that cannot be loaded, or whose digest differs from ``MODEL_DIGEST``, keeps the
server live but never ready, with the reason in the log and in the ready endpoints' answers.
Bad requests get a 4xx with ``{"error": "..."}`` naming the problem; they never crash the server.

Inference request: one numeric tensor (``FP32``/``FP64``/``INT32``/``INT64``, shape
``[rows, features]``) with the model's features, plus optional ``BYTES`` tensors of shape
``[rows]`` named after sensitive attributes (``MODEL_SENSITIVE_ATTRIBUTES``, for fairness
metrics) or after categorical features of the reference profile (for drift); those are never
passed to the model.
"""

import asyncio
import logging
import math
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelops.serving import artifacts
from modelops.serving.drift import ReferenceProfile, score

log = logging.getLogger("modelops.serve")

NUMERIC_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
MAX_ROWS = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_LABEL_VALUES = 50
OTHER = "__other__"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServerConfig:
    model_name: str
    model_version: str
    model_uri: str
    model_digest: str | None = None
    model_format: str = "custom"
    profile_uri: str | None = None
    sensitive_attributes: tuple[str, ...] = ()
    positive_class: str = "1"
    monitoring: bool = True
    drift_interval_seconds: float = 10.0
    drift_window: int = 2000
    drift_methods: tuple[str, ...] = ("psi",)

    @classmethod
    def from_environment(cls) -> "ServerConfig":
        environment = os.environ
        missing = [name for name in ("MODEL_NAME", "MODEL_VERSION", "MODEL_URI") if not environment.get(name)]
        if missing:
            raise SystemExit(f"modelops serve needs {', '.join(missing)} in the environment (the operator sets them)")
        attributes = tuple(a.strip() for a in environment.get("MODEL_SENSITIVE_ATTRIBUTES", "").split(",") if a.strip())
        return cls(
            model_name=environment["MODEL_NAME"],
            model_version=environment["MODEL_VERSION"],
            model_uri=environment["MODEL_URI"],
            model_digest=environment.get("MODEL_DIGEST") or None,
            model_format=environment.get("MODEL_FORMAT", "custom"),
            profile_uri=environment.get("MODEL_PROFILE_URI") or None,
            sensitive_attributes=attributes[:5],
            positive_class=environment.get("MODEL_POSITIVE_CLASS", "1"),
            monitoring=environment.get("MODELOPS_MONITORING", "on") != "off",
            drift_interval_seconds=_positive_seconds("MODELOPS_DRIFT_INTERVAL_SECONDS", environment.get("MODELOPS_DRIFT_INTERVAL_SECONDS", "10")),
            drift_window=int(environment.get("MODELOPS_DRIFT_WINDOW", "2000")),
            drift_methods=_drift_methods(environment.get("MODELOPS_DRIFT_METHODS", "psi")),
        )


def _positive_seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise SystemExit(f"{name}: {text!r} is not a positive number of seconds")
    return seconds


def _drift_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in ("psi", "ks", "wasserstein")]
    if unknown or not methods:
        raise SystemExit(f"MODELOPS_DRIFT_METHODS: unknown method(s) {unknown}: choose from psi, ks, wasserstein")
    return methods


class Metrics:
    """The contract's metrics in a registry of their own (several servers can share a process).

    No label name here may be one the scraper sets on the target (``namespace``, ``pod``,
    ``container``, ``endpoint``, ``service``, ``job``, ``instance``): the contract works with
    ``honor_labels: false``, where those come from the scrape and a workload cannot forge them
    (docs/metrics.md). Hence ``api`` (``infer``/``metadata``), not ``endpoint``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.registry = CollectorRegistry()
        model = ("model", "version")
        r = self.registry
        self.requests = Counter("mlserve_requests", "Requests by outcome.", (*model, "protocol", "api", "outcome"), registry=r)
        self.duration = Histogram(
            "mlserve_request_duration_seconds", "Request duration.", (*model, "protocol", "api"), buckets=DURATION_BUCKETS, registry=r
        )
        self.predictions = Counter("mlserve_predictions", "Predictions by class.", (*model, "class"), registry=r)
        self.group_predictions = Counter(
            "mlserve_group_predictions", "Predictions by sensitive-attribute group.", (*model, "attribute", "group", "predicted"), registry=r
        )
        self.info = Gauge("mlserve_model_info", "The model served (always 1).", (*model, "framework", "artifact_digest"), registry=r)
        self.ready = Gauge("mlserve_model_ready", "1 when the model is loaded and verified.", model, registry=r)
        self.drift = Gauge("mlmon_feature_drift_score", "Drift per feature; higher is more drift.", (*model, "feature", "method"), registry=r)
        self.window = Gauge("mlmon_window_samples", "Samples in the drift window.", (*model, "window"), registry=r)
        self.last_run = Gauge("mlmon_last_run_timestamp_seconds", "When drift was last evaluated.", model, registry=r)
        self.drift_interval = Gauge(
            "mlmon_drift_interval_seconds", "How often drift is evaluated; a score older than 3 intervals is stale.", model, registry=r
        )
        self.drift_errors = Counter("mlmon_drift_errors", "Drift evaluations that raised (the loop keeps running).", model, registry=r)
        self.labels = (config.model_name, config.model_version)
        self.drift_errors.labels(*self.labels)  # exported at 0 from the start, so increase() counts the first error


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics
    model: artifacts.Predictor | None = None
    digest: str | None = None
    load_error: str | None = None
    profile: ReferenceProfile | None = None
    windows: dict[str, deque[Any]] = field(default_factory=dict)
    seen_classes: set[str] = field(default_factory=set)
    seen_groups: dict[str, set[str]] = field(default_factory=dict)


def load_model(state: ServerState) -> None:
    config = state.config
    try:
        state.model, state.digest = artifacts.load(config.model_uri, config.model_digest, config.model_format)
    except artifacts.ArtifactError as error:
        state.load_error = str(error)
        log.error("model %s version %s is NOT ready: %s", config.model_name, config.model_version, error)
        state.metrics.ready.labels(*state.metrics.labels).set(0)
        return
    if config.profile_uri:
        try:
            import json

            state.profile = ReferenceProfile.from_json(json.loads(artifacts.fetch(config.profile_uri)))
        except (artifacts.ArtifactError, ValueError, KeyError) as error:
            state.load_error = f"reference profile {config.profile_uri}: {error}"
            log.error("model %s is NOT ready: %s", config.model_name, state.load_error)
            state.metrics.ready.labels(*state.metrics.labels).set(0)
            return
        state.windows = {f.name: deque(maxlen=config.drift_window) for f in state.profile.features}
    state.metrics.info.labels(*state.metrics.labels, config.model_format, state.digest or "").set(1)
    state.metrics.ready.labels(*state.metrics.labels).set(1)
    log.info("model %s version %s ready (digest %s)", config.model_name, config.model_version, state.digest)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bounded(seen: set[str], value: str) -> str:
    """A label value, or __other__ once MAX_LABEL_VALUES distinct values have been seen."""
    if value in seen or len(seen) < MAX_LABEL_VALUES:
        seen.add(value)
        return value
    return OTHER


def _tensor(spec: Any, index: int) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise RequestError(400, f"inputs[{index}] must be an object with name, shape, datatype and data")
    for key in ("name", "shape", "datatype", "data"):
        if key not in spec:
            raise RequestError(400, f"inputs[{index}] has no {key}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not 1 <= len(shape) <= 2:
        raise RequestError(400, f"inputs[{index}] ({spec['name']}): shape must be [rows] or [rows, features], got {shape}")
    if not isinstance(spec["data"], list):
        raise RequestError(400, f"inputs[{index}] ({spec['name']}): data must be a flat list")
    expected = math.prod(shape)
    if len(spec["data"]) != expected:
        raise RequestError(400, f"inputs[{index}] ({spec['name']}): shape {shape} needs {expected} values, got {len(spec['data'])}")
    return spec


def parse_request(body: Any, state: ServerState) -> tuple[np.ndarray, dict[str, list[str]]]:
    """The numeric feature matrix and the named BYTES columns of an OIP infer request."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError(400, 'the request needs "inputs": a non-empty list of tensors')
    assert state.model is not None
    named: dict[str, list[str]] = {}
    features: np.ndarray | None = None
    for index, spec in enumerate(body["inputs"][:16]):
        tensor = _tensor(spec, index)
        if tensor["datatype"] == "BYTES":
            named[str(tensor["name"])] = [str(v) for v in tensor["data"]]
            continue
        if tensor["datatype"] not in NUMERIC_TYPES:
            raise RequestError(400, f"inputs[{index}] ({tensor['name']}): datatype {tensor['datatype']} is not one of {sorted(NUMERIC_TYPES)} or BYTES")
        if features is not None:
            raise RequestError(400, "only one numeric input tensor is accepted")
        try:
            flat = np.asarray(tensor["data"], dtype=NUMERIC_TYPES[tensor["datatype"]])
        except (TypeError, ValueError) as error:
            raise RequestError(400, f"inputs[{index}] ({tensor['name']}): data is not {tensor['datatype']}: {error}") from error
        shape = tensor["shape"] if len(tensor["shape"]) == 2 else [1, tensor["shape"][0]]
        features = flat.reshape(shape).astype(np.float64)
    if features is None:
        raise RequestError(400, "the request has no numeric input tensor")
    rows, columns = features.shape
    if rows > MAX_ROWS:
        raise RequestError(413, f"{rows} rows in one request; at most {MAX_ROWS}")
    if state.model.n_features and columns != state.model.n_features:
        raise RequestError(400, f"the model expects {state.model.n_features} features per row, got {columns}")
    if not np.all(np.isfinite(features)):
        raise RequestError(400, "the input contains NaN or infinite values")
    for name, values in named.items():
        if len(values) != rows:
            raise RequestError(400, f"input {name} has {len(values)} values for {rows} rows")
    return features, named


def observe(state: ServerState, features: np.ndarray, named: dict[str, list[str]], predictions: np.ndarray) -> None:
    """Counts predictions by class and by sensitive group, and feeds the drift windows."""
    if not state.config.monitoring:
        return
    labels = state.metrics.labels
    classes, counts = np.unique(predictions.astype(str), return_counts=True)
    for value, count in zip(classes, counts, strict=True):
        state.metrics.predictions.labels(*labels, _bounded(state.seen_classes, str(value))).inc(int(count))
    positive = predictions.astype(str) == state.config.positive_class
    for attribute in state.config.sensitive_attributes:
        groups = named.get(attribute)
        if groups is None:
            continue
        seen = state.seen_groups.setdefault(attribute, set())
        for group, is_positive in zip(groups, positive, strict=True):
            state.metrics.group_predictions.labels(*labels, attribute, _bounded(seen, group), "1" if is_positive else "0").inc()
    if state.profile is None:
        return
    numeric = [f for f in state.profile.features if f.kind == "numeric"]
    for position, feature in enumerate(numeric[: features.shape[1]]):
        state.windows[feature.name].extend(features[:, position].tolist())
    for feature in state.profile.features:
        if feature.kind == "categorical" and feature.name in named:
            state.windows[feature.name].extend(named[feature.name])


def evaluate_drift(state: ServerState, now: float) -> None:
    """Exports a score per feature and method with enough samples; below the minimum sample, no score at all."""
    if state.profile is None or not state.config.monitoring:
        return
    labels = state.metrics.labels
    sizes = []
    for feature in state.profile.features:
        window = list(state.windows[feature.name])
        sizes.append(len(window))
        for method in state.config.drift_methods:
            if method != "psi" and feature.kind != "numeric":
                continue  # KS and Wasserstein apply to numeric features only
            value = score(feature, window, method)  # type: ignore[arg-type]
            gauge = state.metrics.drift
            if value is None:
                try:
                    gauge.remove(*labels, feature.name, method)
                except KeyError:
                    pass
            else:
                gauge.labels(*labels, feature.name, method).set(value)
    state.metrics.window.labels(*labels, "current").set(min(sizes) if sizes else 0)
    state.metrics.last_run.labels(*labels).set(now)
    state.metrics.drift_interval.labels(*labels).set(state.config.drift_interval_seconds)


def evaluate_drift_safely(state: ServerState, now: float) -> bool:
    """One run of the drift loop that never ends the loop: an exception is logged in one line and counted.

    After a failed run ``mlmon_last_run_timestamp_seconds`` keeps its old value, so the scores
    age; once older than 3 intervals the operator reads them as NoData (docs/metrics.md).
    """
    try:
        evaluate_drift(state, now)
    except Exception as error:  # noqa: BLE001 - any failure of one run must not stop the next
        state.metrics.drift_errors.labels(*state.metrics.labels).inc()
        log.warning("drift evaluation failed, scores not updated (%s: %s); next run in %gs",
                    type(error).__name__, str(error)[:200], state.config.drift_interval_seconds)
        return False
    return True


def build_app(state: ServerState) -> web.Application:
    config = state.config
    labels = state.metrics.labels

    def ready_answer() -> web.Response:
        if state.model is not None and state.load_error is None:
            return web.json_response({"name": config.model_name, "ready": True})
        return web.json_response({"name": config.model_name, "ready": False, "error": state.load_error}, status=503)

    def known(request: web.Request) -> None:
        if request.match_info["name"] != config.model_name:
            raise RequestError(404, f"unknown model {request.match_info['name']!r}; this server serves {config.model_name!r}")

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        endpoint = "infer" if request.path.endswith("/infer") else "metadata" if request.path.startswith("/v2/models") else None
        started = time.perf_counter()
        outcome = "success"
        try:
            response = await handler(request)
            if response.status >= 500:
                outcome = "server_error"
            elif response.status >= 400:
                outcome = "client_error"
            return response
        except RequestError as error:
            outcome = "client_error" if error.status < 500 else "server_error"
            return _json_error(error.status, str(error))
        except web.HTTPRequestEntityTooLarge:
            outcome = "client_error"
            response = _json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            response.force_close()  # the rest of the body is never read: do not keep this connection
            return response
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - never crash on a request; log it and answer 500
            outcome = "server_error"
            log.exception("request %s failed", request.path)
            return _json_error(500, "internal error; see the server log")
        finally:
            if endpoint is not None:
                state.metrics.requests.labels(*labels, "rest", endpoint, outcome).inc()
                state.metrics.duration.labels(*labels, "rest", endpoint).observe(time.perf_counter() - started)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return ready_answer()

    async def model_ready(request: web.Request) -> web.Response:
        known(request)
        return ready_answer()

    async def metadata(request: web.Request) -> web.Response:
        known(request)
        features = state.model.n_features if state.model else -1
        return web.json_response(
            {
                "name": config.model_name,
                "versions": [config.model_version],
                "platform": f"modelops-{config.model_format}",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, features]}],
                "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
                "parameters": {"artifact_digest": state.digest},
            }
        )

    async def infer(request: web.Request) -> web.Response:
        known(request)
        if state.model is None:
            raise RequestError(503, f"model not ready: {state.load_error}")
        try:
            body = await request.json()
        except ValueError as error:
            raise RequestError(400, f"the body is not JSON: {error}") from error
        features, named = parse_request(body, state)
        predictions = state.model.predict(features)
        observe(state, features, named, predictions)
        integral = np.issubdtype(predictions.dtype, np.integer)
        return web.json_response(
            {
                "model_name": config.model_name,
                "model_version": config.model_version,
                "id": str(body.get("id") or uuid.uuid4()),
                "outputs": [
                    {
                        "name": "predict",
                        "shape": [int(predictions.shape[0])],
                        "datatype": "INT64" if integral else "FP64",
                        "data": predictions.tolist(),
                    }
                ],
            }
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def drift_loop(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(config.drift_interval_seconds)
                evaluate_drift_safely(state, time.time())

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()

    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(drift_loop)
    return app


def create(config: ServerConfig) -> tuple[web.Application, ServerState]:
    state = ServerState(config=config, metrics=Metrics(config))
    load_model(state)
    return build_app(state), state


def serve(config: ServerConfig, host: str, port: int) -> None:
    app, _ = create(config)
    web.run_app(app, host=host, port=port, access_log=None, print=None)
