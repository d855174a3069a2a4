"""`modelops serve`: the reference model server, on aiohttp (already a dependency of kopf).

Open Inference Protocol (KServe V2) REST:

- ``GET /v2/health/live``, ``GET /v2/health/ready``
- ``GET /v2/models/<name>``, ``GET /v2/models/<name>/ready``
- ``POST /v2/models/<name>/infer``
- ``GET /metrics``: the metrics contract (docs/metrics.md)

The server listens first and loads the artifact in the background: it is live at once and
ready once the artifact is fetched, verified and decoded, so a slow download never trips the
liveness probe. An artifact that cannot be loaded, or whose digest differs from
``MODEL_DIGEST``, keeps the server live but never ready, with the reason (its URI redacted:
:mod:`modelops.serving.redaction`) in the log and in the ready endpoints' answers.

Clients are not trusted (:mod:`modelops.serving.inputs`): every malformed request gets a 4xx
with ``{"error": "..."}`` naming the problem, never a 5xx, and every request is bounded. The
label values a client chooses (fairness groups) are bounded too (:mod:`modelops.serving.labels`).
With ``MODELOPS_SERVE_TOKEN_FILE`` the inference and metadata endpoints need a bearer token
(:mod:`modelops.serving.auth`); health, readiness and ``/metrics`` stay open.

Inference request: one numeric tensor (``FP32``/``FP64``/``INT32``/``INT64``, shape
``[rows, features]``) with the model's features, plus optional ``BYTES`` tensors of shape
``[rows]`` named after sensitive attributes (``MODEL_SENSITIVE_ATTRIBUTES``, for fairness
metrics) or after categorical features of the reference profile (for drift); those are never
passed to the model.
"""

import asyncio
import ctypes
import json
import logging
import math
import os
import time
import uuid
from collections import Counter as Tally
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelops.serving import artifacts
from modelops.serving.auth import TokenFile, TokenUnavailable
from modelops.serving.drift import ReferenceProfile, score
from modelops.serving.inputs import Limits, RequestError, decode_json, parse_request, shown
from modelops.serving.labels import TrackedValues
from modelops.serving.redaction import redact_uri, scrub_uris

log = logging.getLogger("modelops.serve")

MAX_CLASSES = 50  # distinct predicted classes exported; further ones count as __other__
MAX_UNDECLARED_GROUPS = 20  # groups tracked per sensitive attribute when the profile declares none
# The HTTP server never inflates a compressed request body: one 64 KiB gzip chunk can expand to
# 64 MiB before the body limit is checked. Such requests are refused with 415 instead.
HANDLER_OPTIONS: dict[str, Any] = {"auto_decompress": False}
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024
MEASURED_ROUTES = {"infer": "infer", "metadata": "metadata", "model-ready": "metadata"}  # route name: endpoint label
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    token_file: Path | None = None  # MODELOPS_SERVE_TOKEN_FILE: a bearer token for infer and metadata
    load_wait_seconds: float = 5.0  # how long an infer request that arrives while the artifact loads waits for it
    limits: Limits = field(default_factory=Limits)

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
            token_file=Path(environment["MODELOPS_SERVE_TOKEN_FILE"]) if environment.get("MODELOPS_SERVE_TOKEN_FILE") else None,
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
    loading: bool = True
    load_error: str | None = None
    profile: ReferenceProfile | None = None
    windows: dict[str, deque[Any]] = field(default_factory=dict)
    classes: TrackedValues = field(default_factory=lambda: TrackedValues.of(None, MAX_CLASSES))
    groups: dict[str, TrackedValues] = field(default_factory=dict)
    token: TokenFile | None = None
    token_problem: str | None = None  # the last TokenUnavailable message logged, so it is logged once
    load_finished: asyncio.Event = field(default_factory=asyncio.Event)  # set once loading succeeded or failed

    def __post_init__(self) -> None:
        if self.config.token_file is not None:
            self.token = TokenFile(self.config.token_file)


@dataclass(frozen=True)
class Loaded:
    model: artifacts.Predictor
    digest: str
    profile: ReferenceProfile | None


def load_artifacts(config: ServerConfig) -> Loaded:
    """Fetch, verify and decode the model and its profile (blocking: run it in a thread).

    Raises ArtifactError with a message fit for clients and logs: URIs redacted.
    """
    model, digest = artifacts.load(config.model_uri, config.model_digest, config.model_format)
    if not config.profile_uri:
        return Loaded(model, digest, None)
    try:
        profile = ReferenceProfile.from_json(json.loads(artifacts.fetch(config.profile_uri)))
    except artifacts.ArtifactError as error:
        raise artifacts.ArtifactError(f"reference profile {error}") from None
    except (ValueError, KeyError, TypeError) as error:
        message = scrub_uris(str(error))[:200]
        raise artifacts.ArtifactError(f"reference profile {redact_uri(config.profile_uri)}: {type(error).__name__}: {message}") from None
    return Loaded(model, digest, profile)


def refuse(state: ServerState, message: str) -> None:
    """Live but never ready: the reason goes to the log and to the ready endpoints' answers."""
    config = state.config
    state.load_error, state.loading = message, False
    state.load_finished.set()
    log.error("model %s version %s is NOT ready: %s", config.model_name, config.model_version, message)
    state.metrics.ready.labels(*state.metrics.labels).set(0)


def apply_loaded(state: ServerState, loaded: Loaded) -> None:
    """Serve ``loaded``: set up the drift windows and the tracked groups, then turn ready."""
    config = state.config
    if loaded.profile is not None:
        state.profile = loaded.profile
        state.windows = {f.name: deque(maxlen=config.drift_window) for f in loaded.profile.features}
    for attribute in config.sensitive_attributes:
        declared = loaded.profile.declared_groups(attribute) if loaded.profile is not None else None
        state.groups[attribute] = TrackedValues.of(declared, MAX_UNDECLARED_GROUPS)
        if declared is None and config.monitoring:
            log.warning(
                "sensitive attribute %s: no groups declared in the reference profile, so the first %d distinct values "
                "clients send are tracked and a client can take those places (declare them: modelops profile build "
                "--sensitive-attribute %s)", attribute, MAX_UNDECLARED_GROUPS, attribute,
            )
    state.model, state.digest, state.loading = loaded.model, loaded.digest, False
    state.load_finished.set()
    state.metrics.info.labels(*state.metrics.labels, config.model_format, state.digest or "").set(1)
    state.metrics.ready.labels(*state.metrics.labels).set(1)
    log.info("model %s version %s ready (digest %s)", config.model_name, config.model_version, state.digest)


async def load_in_background(state: ServerState) -> None:
    """Load the artifacts off the event loop, so the server answers probes meanwhile."""
    state.metrics.ready.labels(*state.metrics.labels).set(0)
    try:
        loaded = await asyncio.to_thread(load_artifacts, state.config)
    except artifacts.ArtifactError as error:
        refuse(state, str(error))
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises, the server stays live and says why
        refuse(state, f"the artifact could not be loaded ({type(error).__name__}: {scrub_uris(str(error))[:200]})")
    else:
        apply_loaded(state, loaded)


def _json_error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="modelops"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def observe(state: ServerState, features: np.ndarray, named: dict[str, list[str]], predictions: np.ndarray) -> None:
    """Counts predictions by class and by sensitive group, and feeds the drift windows.

    Group and category values are bounded before they are counted or kept: a group becomes
    a label value only when tracked (else ``__other__``), and a drift window keeps the
    profile's copy of a known category (else ``__unseen__``), never the client's string.
    """
    if not state.config.monitoring:
        return
    labels = state.metrics.labels
    predicted = predictions.astype(str)
    classes, counts = np.unique(predicted, return_counts=True)
    for value, count in zip(classes, counts, strict=True):
        state.metrics.predictions.labels(*labels, state.classes.label(str(value))).inc(int(count))
    positive = predicted == state.config.positive_class
    for attribute, tracked in state.groups.items():
        groups = named.get(attribute)
        if groups is None:
            continue
        tally = Tally((tracked.label(group), "1" if is_positive else "0") for group, is_positive in zip(groups, positive, strict=True))
        for (group, outcome), count in tally.items():
            state.metrics.group_predictions.labels(*labels, attribute, group, outcome).inc(count)
    if state.profile is None:
        return
    numeric = [f for f in state.profile.features if f.kind == "numeric"]
    for position, feature in enumerate(numeric[: features.shape[1]]):
        state.windows[feature.name].extend(features[:, position].tolist())
    for feature in state.profile.features:
        if feature.kind == "categorical" and feature.name in named:
            state.windows[feature.name].extend(feature.known(value) for value in named[feature.name])


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
    limits = config.limits

    def ready_answer() -> web.Response:
        problem = state.load_error or ("loading the model artifact" if state.loading else None) or token_problem()
        if problem is None and state.model is not None:
            return web.json_response({"name": config.model_name, "ready": True})
        return web.json_response({"name": config.model_name, "ready": False, "error": problem}, status=503)

    def token_problem() -> str | None:
        """Why the token file cannot be used (logged once per distinct problem), or None."""
        if state.token is None:
            return None
        try:
            state.token.token()
        except TokenUnavailable as error:
            if str(error) != state.token_problem:
                log.error("inference refused until the token file is usable: %s", error)
            state.token_problem = str(error)
            return str(error)
        state.token_problem = None
        return None

    def authorize(request: web.Request) -> None:
        if state.token is None:
            return
        problem = token_problem()
        if problem is not None:
            raise RequestError(503, "inference is closed: the server's bearer token file is not usable (see its log)")
        if not state.token.authorizes(request.headers.get("Authorization")):
            raise RequestError(401, "this endpoint needs Authorization: Bearer <token>; the token is missing or wrong")

    def known(request: web.Request) -> None:
        if request.match_info["name"] != config.model_name:
            raise RequestError(404, f"unknown model {shown(request.match_info['name'])}; this server serves {config.model_name!r}")

    async def wait_for_the_model() -> None:
        """Hold a request that arrives while the artifact loads, for at most ``load_wait_seconds``.

        Behind a Service no request arrives before the pod is ready; a client that calls the pod
        in the moment between listening and loaded (a local file loads in milliseconds) is
        served rather than refused.
        """
        if state.loading:
            try:
                await asyncio.wait_for(state.load_finished.wait(), config.load_wait_seconds)
            except TimeoutError:
                pass
        if state.model is None:
            raise RequestError(503, f"model not ready: {state.load_error or 'loading the model artifact'}")

    def outcome_of(status: int) -> str:
        return "server_error" if status >= 500 else "client_error" if status >= 400 else "success"

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        endpoint = MEASURED_ROUTES.get(request.match_info.route.name or "")  # None: not measured
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except RequestError as error:
            status = error.status
            return _json_error(error.status, str(error))
        except web.HTTPRequestEntityTooLarge:
            status = 413
            response = _json_error(413, f"request body larger than {limits.body_bytes} bytes")
            response.force_close()  # the rest of the body is never read: do not keep this connection
            return response
        except web.HTTPException as error:
            status = error.status
            if error.status == 404:
                return _json_error(404, "no such endpoint (see /v2/health/live, /v2/models/<name>/infer, /metrics)")
            if error.status == 405:
                return _json_error(405, f"method {shown(request.method, 16)} is not allowed on this endpoint")
            raise
        except Exception as error:  # noqa: BLE001 - never crash on a request; log it and answer 500
            log.error("request to %s failed: %s: %s", endpoint or "an endpoint", type(error).__name__, scrub_uris(str(error))[:300],
                      exc_info=True)
            return _json_error(500, "internal error; see the server log")
        finally:
            if endpoint is not None:
                state.metrics.requests.labels(*labels, "rest", endpoint, outcome_of(status)).inc()
                state.metrics.duration.labels(*labels, "rest", endpoint).observe(time.perf_counter() - started)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return ready_answer()

    async def model_ready(request: web.Request) -> web.Response:
        known(request)
        return ready_answer()

    async def metadata(request: web.Request) -> web.Response:
        authorize(request)
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
        authorize(request)
        known(request)
        await wait_for_the_model()
        assert state.model is not None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RequestError(415, f"Content-Encoding {shown(encoding, 20)} is not accepted: send the JSON body uncompressed")
        parsed = parse_request(decode_json(await request.read()), state.model.n_features, limits)
        predictions = state.model.predict(parsed.features)
        observe(state, parsed.features, parsed.named, predictions)
        integral = np.issubdtype(predictions.dtype, np.integer)
        return web.json_response(
            {
                "model_name": config.model_name,
                "model_version": config.model_version,
                "id": parsed.request_id or str(uuid.uuid4()),
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

    async def background(app: web.Application) -> Any:
        async def drift_loop() -> None:
            while True:
                await asyncio.sleep(config.drift_interval_seconds)
                evaluate_drift_safely(state, time.time())

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(load_in_background(state)), loop.create_task(drift_loop())]
        yield
        for task in tasks:
            task.cancel()

    app = web.Application(middlewares=[errors], client_max_size=limits.body_bytes)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", metadata, name="metadata")
    app.router.add_get("/v2/models/{name}/ready", model_ready, name="model-ready")
    app.router.add_post("/v2/models/{name}/infer", infer, name="infer")
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(background)
    return app


def create(config: ServerConfig) -> tuple[web.Application, ServerState]:
    """The app and its state; the artifact is loaded in the background once the app starts."""
    state = ServerState(config=config, metrics=Metrics(config))
    return build_app(state), state


def return_large_blocks_to_the_os() -> None:
    """Make freed large blocks (request bodies, parsed tensors) go back to the OS (glibc; elsewhere a no-op).

    glibc raises its mmap threshold whenever a large mapped block is freed; after that, blocks
    up to that size are carved from the heap and stay resident once freed. Measured on the
    hostile request list (tests/unit/serving/test_serve_process.py): about 47 MiB retained with
    the dynamic threshold, about 10 MiB with it fixed at 128 KiB (glibc's default), where each
    larger block gets a mapping of its own that is unmapped when freed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def serve(config: ServerConfig, host: str, port: int) -> None:
    return_large_blocks_to_the_os()
    app, _ = create(config)
    web.run_app(app, host=host, port=port, access_log=None, print=None, **HANDLER_OPTIONS)
