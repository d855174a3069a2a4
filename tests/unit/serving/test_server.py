"""The reference server's protocol contract, error paths, digest refusal and metrics, over real HTTP."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelops.serving.drift import build_profile
from modelops.serving.server import ServerConfig
from tests.unit.serving.helpers import RunningServer, artifact


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    uri, digest = artifact(tmp_path)
    config = ServerConfig("fraud", "2.0", uri, digest, "custom", sensitive_attributes=("sex",))
    running = RunningServer(config)
    yield running
    running.close()


def infer(server: RunningServer, rows: list[list[float]], **extra: Any) -> httpx.Response:
    data = [value for row in rows for value in row]
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": data}, *extra.get("inputs", [])]}
    return server.http.post("/v2/models/fraud/infer", json=body)


def test_health_metadata_and_inference(server: RunningServer) -> None:
    assert server.http.get("/v2/health/live").json() == {"live": True}
    assert server.http.get("/v2/health/ready").status_code == 200
    assert server.http.get("/v2/models/fraud/ready").json() == {"name": "fraud", "ready": True}
    metadata = server.http.get("/v2/models/fraud").json()
    assert metadata["versions"] == ["2.0"] and metadata["inputs"][0]["shape"] == [-1, 2]
    answer = infer(server, [[2.0, 1.0], [0.0, 3.0]])
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model_name"], body["model_version"]) == ("fraud", "2.0")
    assert body["outputs"][0] == {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "the body is not JSON"),
        ({}, 400, '"inputs": a non-empty list'),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64"}]}, 400, "has no data"),
        ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3]}]}, 400, "needs 4 values, got 3"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 400, "expects 2 features per row, got 3"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BOOL", "data": [1, 2]}]}, 400, "datatype 'BOOL' is not one of"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": ["a", "b"]}]}, 400, "data is not FP64"),
        ({"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP64", "data": [1, 2]}]}, 400, "shape must be"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, float("nan")]}]}, 400, "NaN or infinite"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(server: RunningServer, body: Any, status: int, message: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    answer = server.http.post("/v2/models/fraud/infer", content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert server.http.get("/v2/health/live").status_code == 200  # still alive


def test_unknown_model_and_oversized_body(server: RunningServer) -> None:
    answer = server.http.post("/v2/models/other/infer", json={"inputs": []})
    assert answer.status_code == 404 and "unknown model 'other'" in answer.json()["error"]
    huge = b'{"inputs": [' + b" " * (16 * 1024 * 1024) + b"]}"  # just over the 16 MiB limit
    answer = server.http.post(
        "/v2/models/fraud/infer", content=huge, headers={"Content-Type": "application/json", "Connection": "close"}
    )
    assert answer.status_code == 413
    assert "larger than" in answer.json()["error"]


def test_a_digest_mismatch_is_refused_and_never_ready(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, _ = artifact(tmp_path)
    running = RunningServer(ServerConfig("fraud", "2.0", uri, "sha256:" + "0" * 64, "custom"))
    try:
        ready = running.http.get("/v2/models/fraud/ready")
        assert ready.status_code == 503
        assert "digest mismatch: MODEL_DIGEST is sha256:000" in ready.json()["error"]
        assert running.http.get("/v2/health/live").status_code == 200
        assert infer(running, [[1.0, 2.0]]).status_code == 503
        assert running.metrics()[("mlserve_model_ready", (("model", "fraud"), ("version", "2.0")))] == 0
    finally:
        running.close()
    assert any("NOT ready: digest mismatch" in record.getMessage() for record in caplog.records)


def test_metrics_after_a_known_sequence_of_requests(server: RunningServer) -> None:
    sexes = {"name": "sex", "shape": [3], "datatype": "BYTES", "data": ["f", "m", "f"]}
    assert infer(server, [[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]], inputs=[sexes]).status_code == 200
    assert infer(server, [[1.0, 2.0, 3.0]]).status_code == 400
    samples = server.metrics()
    model = (("model", "fraud"), ("version", "2.0"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted((*model, *labels.items()))))]

    assert value("mlserve_requests_total", protocol="rest", api="infer", outcome="success") == 1
    assert value("mlserve_requests_total", protocol="rest", api="infer", outcome="client_error") == 1
    assert value("mlserve_request_duration_seconds_count", protocol="rest", api="infer") == 2
    assert value("mlserve_predictions_total", **{"class": "1"}) == 2
    assert value("mlserve_predictions_total", **{"class": "0"}) == 1
    assert value("mlserve_group_predictions_total", attribute="sex", group="f", predicted="1") == 2
    assert value("mlserve_group_predictions_total", attribute="sex", group="m", predicted="0") == 1
    digest = server.state.digest
    assert value("mlserve_model_info", framework="custom", artifact_digest=digest or "") == 1


def test_drift_scores_appear_only_with_enough_samples_and_rise_with_a_shift(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = {"a": [str(v) for v in rng.normal(0, 1, 3000)], "b": [str(v) for v in rng.normal(0, 1, 3000)]}
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(build_profile(reference, bins=10).to_json()))
    uri, digest = artifact(tmp_path)
    config = ServerConfig(
        "fraud", "2.0", uri, digest, "custom", profile_uri=profile_path.as_uri(), drift_interval_seconds=3600,
        drift_methods=("psi", "ks"),
    )
    running = RunningServer(config)
    try:
        from modelops.serving.server import evaluate_drift

        infer(running, rng.normal(0, 1, (100, 2)).tolist())
        evaluate_drift(running.state, 1.0)
        samples = running.metrics()
        assert not [key for key in samples if key[0] == "mlmon_feature_drift_score"]  # 100 < 500: no score at all
        assert samples[("mlmon_window_samples", (("model", "fraud"), ("version", "2.0"), ("window", "current")))] == 100
        infer(running, rng.normal(0, 1, (900, 2)).tolist())
        evaluate_drift(running.state, 2.0)
        quiet = running.metrics()[("mlmon_feature_drift_score", (("feature", "a"), ("method", "psi"), ("model", "fraud"), ("version", "2.0")))]
        infer(running, rng.normal(2, 1, (2000, 2)).tolist())  # the window (2000) now holds only shifted data
        evaluate_drift(running.state, 3.0)
        shifted = running.metrics()[("mlmon_feature_drift_score", (("feature", "a"), ("method", "psi"), ("model", "fraud"), ("version", "2.0")))]
        assert quiet < 0.1 < 1.0 < shifted
        ks = running.metrics()[("mlmon_feature_drift_score", (("feature", "a"), ("method", "ks"), ("model", "fraud"), ("version", "2.0")))]
        assert 0.5 < ks <= 1.0  # a two-sigma shift: most of the mass has moved
        assert running.metrics()[("mlmon_last_run_timestamp_seconds", (("model", "fraud"), ("version", "2.0")))] == 3.0
    finally:
        running.close()


def _profiled_config(tmp_path: Path, interval: float) -> ServerConfig:
    rng = np.random.default_rng(0)
    reference = {"a": [str(v) for v in rng.normal(0, 1, 3000)], "b": [str(v) for v in rng.normal(0, 1, 3000)]}
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(build_profile(reference, bins=10).to_json()))
    uri, digest = artifact(tmp_path)
    return ServerConfig("fraud", "2.0", uri, digest, "custom", profile_uri=profile_path.as_uri(), drift_interval_seconds=interval)


MODEL_LABELS = (("model", "fraud"), ("version", "2.0"))


def test_a_failed_drift_run_is_counted_logged_in_one_line_and_leaves_the_last_run_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from modelops.serving import server as module

    running = RunningServer(_profiled_config(tmp_path, interval=3600))
    try:
        infer(running, np.random.default_rng(0).normal(0, 1, (600, 2)).tolist())
        assert module.evaluate_drift_safely(running.state, 100.0)
        before = running.metrics()
        assert before[("mlmon_drift_interval_seconds", MODEL_LABELS)] == 3600
        assert before[("mlmon_drift_errors_total", MODEL_LABELS)] == 0  # exported from the start

        def broken(*_: Any, **__: Any) -> float:
            raise FloatingPointError("overflow in a bin")

        monkeypatch.setattr(module, "score", broken)
        caplog.clear()
        assert not module.evaluate_drift_safely(running.state, 200.0)
        after = running.metrics()
        assert after[("mlmon_drift_errors_total", MODEL_LABELS)] == 1
        assert after[("mlmon_last_run_timestamp_seconds", MODEL_LABELS)] == 100.0  # the scores now age
        [record] = [r for r in caplog.records if r.name == "modelops.serve"]
        assert "FloatingPointError: overflow in a bin" in record.getMessage() and "\n" not in record.getMessage()
        assert record.exc_info is None
    finally:
        running.close()


def test_the_drift_loop_keeps_running_after_exceptions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelops.serving import server as module

    calls: list[float] = []

    def failing_then_working(state: Any, now: float) -> None:
        calls.append(now)
        if len(calls) <= 3:
            raise RuntimeError(f"run {len(calls)} failed")
        state.metrics.last_run.labels(*state.metrics.labels).set(now)

    monkeypatch.setattr(module, "evaluate_drift", failing_then_working)
    running = RunningServer(_profiled_config(tmp_path, interval=0.01))
    try:
        deadline = time.monotonic() + 30
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics = running.metrics()
        assert metrics[("mlmon_drift_errors_total", MODEL_LABELS)] == 3
        assert ("mlmon_last_run_timestamp_seconds", MODEL_LABELS) in metrics  # the fourth run, after three failures
    finally:
        running.close()


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "ten"])
def test_the_drift_interval_must_be_a_positive_number(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MODEL_NAME": "m", "MODEL_VERSION": "1", "MODEL_URI": "file:///m", "MODELOPS_DRIFT_INTERVAL_SECONDS": text}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match="MODELOPS_DRIFT_INTERVAL_SECONDS"):
        ServerConfig.from_environment()


def test_a_scikit_learn_artifact_is_served(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (200, 3))
    labels = (features[:, 0] > 0).astype(int)
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(features, labels), path)
    running = RunningServer(ServerConfig("fraud", "3.0", path.as_uri(), None, "sklearn"))
    try:
        answer = infer(running, [[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
        assert answer.json()["outputs"][0]["data"] == [1, 0]
    finally:
        running.close()
