"""`modelops serve` facing hostile clients: every malformed request is a 4xx naming the problem, nothing leaks, nothing grows."""

import http.server
import json
import logging
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from modelops.cli import main
from modelops.serving.drift import build_profile
from modelops.serving.inputs import Limits
from modelops.serving.server import ServerConfig
from tests.unit.serving.helpers import RunningServer, artifact

MODEL = ("model", "fraud"), ("version", "2.0")
SECRET_URI = "http://modeluser:S3cr3tT0ken@127.0.0.1:{port}/models/fraud.json?X-Amz-Signature=S1gnatur3&X-Amz-Credential=AKIAEXAMPLE"
SECRETS = ("modeluser", "S3cr3tT0ken", "S1gnatur3", "AKIAEXAMPLE", "X-Amz")


def requests(outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of ``mlserve_requests_total`` for the infer endpoint and ``outcome`` in RunningServer.metrics()."""
    labels = {"api": "infer", "outcome": outcome, "protocol": "rest", **dict(MODEL)}
    return "mlserve_requests_total", tuple(sorted(labels.items()))


def tensor(name: str = "x", shape: Any = (1, 2), datatype: str = "FP64", data: Any = (1.0, 2.0)) -> dict[str, Any]:
    return {"name": name, "shape": list(shape) if isinstance(shape, tuple) else shape, "datatype": datatype,
            "data": list(data) if isinstance(data, tuple) else data}


def body(*inputs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **fields}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    uri, digest = artifact(tmp_path)
    running = RunningServer(ServerConfig("fraud", "2.0", uri, digest, "custom", sensitive_attributes=("sex",)))
    yield running
    running.close()


HOSTILE: list[tuple[str, Any, int, str]] = [
    ("not JSON", b"{nope", 400, "the body is not JSON: Expecting property name"),
    ("not UTF-8", b'{"inputs": "\xff\xfe"}', 400, "not valid UTF-8"),
    ("nested a million deep", b"[" * 1_000_000 + b"]" * 1_000_000, 400, "nests too deeply"),
    ("an integer of 5000 digits", b'{"inputs": [' + b"9" * 5000 + b"]}", 400, "the body is not JSON this server accepts"),
    ("no inputs", body(), 400, '"inputs": a non-empty list'),
    ("a tensor that is not an object", body("x"), 400, "inputs[0] must be an object"),
    ("a tensor with no data", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64"}]}, 400, "inputs[0] has no data"),
    ("a name that is not a string", body(tensor(name=["x"])), 400, "name must be a string of 1 to 128"),  # type: ignore[arg-type]
    ("a 4 MiB name", body(tensor(name="n" * (4 << 20))), 400, "name must be a string of 1 to 128"),
    ("an unknown datatype", body(tensor(datatype="BOOL")), 400, "datatype 'BOOL' is not one of"),
    ("a 4 MiB datatype", body(tensor(datatype="B" * (4 << 20))), 400, "is not one of"),
    ("a shape of strings", body(tensor(shape=["1", "2"])), 400, "shape must be [rows] or [rows, features]"),
    ("a shape of booleans", body(tensor(shape=[True, 2])), 400, "shape must be"),
    ("a negative shape", body(tensor(shape=[-1, 2])), 400, "shape must be"),
    ("a shape of three dimensions", body(tensor(shape=[1, 1, 2])), 400, "shape must be"),
    ("a shape the data does not fill", body(tensor(shape=(2, 2))), 400, "shape [2, 2] needs 4 values, got 2"),
    ("no rows", body(tensor(shape=(0, 2), data=())), 400, "holds no values"),
    ("data that is not a list", body(tensor(data={"a": 1})), 400, "data must be a list"),
    ("nested data unlike the shape", body(tensor(shape=(2, 2), data=[[1, 2], [3]])), 400, "nested data must be 2 lists of 2 values"),
    ("nested data in a flat shape", body(tensor(shape=[2], data=[[1], [2]])), 400, "nested lists where numbers belong"),
    ("ragged nesting", body(tensor(shape=[2], data=[[1, 2], [3]])), 400, "nested lists where numbers belong"),
    ("strings as FP64", body(tensor(data=["a", "b"])), 400, "data is not FP64: it holds strings"),
    ("numbers as strings", body(tensor(data=["1", "2"])), 400, "data is not FP64: it holds strings"),
    ("nulls", body(tensor(data=[1, None])), 400, "holds strings, nulls or objects"),
    ("booleans", body(tensor(data=[True, False])), 400, "it holds booleans"),
    ("INT64 overflow", body(tensor(datatype="INT64", data=[2**63, 1])), 400, "out of range for INT64"),
    ("INT64 beyond 64 bits", body(tensor(datatype="INT64", data=[2**70, 1])), 400, "out of range for INT64"),
    ("INT64 underflow", body(tensor(datatype="INT64", data=[-(2**63) - 1, 1])), 400, "out of range for INT64"),
    ("INT32 overflow", body(tensor(datatype="INT32", data=[2**31, 1])), 400, "out of range for INT32"),
    ("fractions as INT64", body(tensor(datatype="INT64", data=[1.5, 2])), 400, "non-integer numbers"),
    ("FP32 overflow", body(tensor(datatype="FP32", data=[1e39, 1])), 400, "out of range for FP32"),
    ("NaN", b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [NaN, 1]}]}', 400, "NaN or infinite"),
    ("infinity", body(tensor(data=[1e400, 1])), 400, "NaN or infinite"),
    ("the wrong number of features", body(tensor(shape=(1, 3), data=(1, 2, 3))), 400, "expects 2 features per row, got 3"),
    ("two numeric tensors", body(tensor(), tensor(name="y")), 400, "only one numeric input tensor"),
    ("no numeric tensor", body(tensor(name="sex", shape=[1], datatype="BYTES", data=["f"])), 400, "no numeric input tensor"),
    ("two tensors of one name", body(tensor(), tensor(name="x", shape=[1], datatype="BYTES", data=["f"])), 400, "two inputs are named 'x'"),
    ("too many inputs", body(*[tensor(name=f"b{i}", shape=[1], datatype="BYTES", data=["v"]) for i in range(17)]), 413, "17 input tensors; at most 16"),
    ("too many rows", body(tensor(shape=(10_001, 2), data=())), 413, "10001 rows in one request; at most 10000"),
    ("too many features", body(tensor(shape=(1, 5000), data=())), 413, "5000 features per row; at most 4096"),
    ("too many values", body(tensor(shape=(1000, 1001), data=())), 413, "1001000 values in one tensor; at most 1000000"),
    ("a 4 MiB BYTES value", body(tensor(), tensor(name="sex", shape=[1], datatype="BYTES", data=["v" * (4 << 20)])), 413, "at most 256 bytes"),
    ("a BYTES value of 257 bytes in 129 characters", body(tensor(), tensor(name="sex", shape=[1], datatype="BYTES", data=["é" * 128 + "x"])), 413,
     "a BYTES value of 257 bytes; at most 256"),
    ("a BYTES value that is a list", body(tensor(), tensor(name="sex", shape=[1], datatype="BYTES", data=[["f"]])), 400, "BYTES values must be strings"),
    ("a lone surrogate", b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}, '
     b'{"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}', 400, "not valid Unicode"),
    ("BYTES for other rows", body(tensor(), tensor(name="sex", shape=[2], datatype="BYTES", data=["f", "m"])), 400, "has 2 values for 1 rows"),
    ("a BYTES tensor of two columns", body(tensor(), tensor(name="sex", shape=[1, 2], datatype="BYTES", data=["f", "m"])), 400,
     "one value per row"),
    ("an id that is an object", body(tensor(), id={"a": 1}), 400, '"id" must be a string'),
    ("a 4 MiB id", body(tensor(), id="i" * (4 << 20)), 400, '"id" must be a string of at most 256'),
]


@pytest.mark.parametrize(("request_body", "status", "message"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_each_malformed_request_gets_a_4xx_with_a_short_specific_message(
    server: RunningServer, request_body: Any, status: int, message: str
) -> None:
    content = request_body if isinstance(request_body, bytes) else json.dumps(request_body).encode()
    answer = server.http.post("/v2/models/fraud/infer", content=content, headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.headers["Content-Type"]) == (status, "application/json; charset=utf-8")
    assert message in answer.json()["error"]
    assert len(answer.content) < 512  # nothing the client sent is echoed back at length
    metrics = server.metrics()
    assert metrics[requests("client_error")] == 1
    assert requests("server_error") not in metrics


def test_a_compressed_body_is_refused_without_being_inflated(server: RunningServer) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    content = bomb.compress(b'{"inputs": "' + b"0" * (64 << 20)) + bomb.flush()  # 64 MiB in about 64 KiB
    answer = server.http.post("/v2/models/fraud/infer", content=content, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 415
    assert answer.json() == {"error": "Content-Encoding 'gzip' is not accepted: send the JSON body uncompressed"}
    assert server.metrics()[requests("client_error")] == 1


def test_nested_data_shaped_like_the_tensor_is_accepted(server: RunningServer) -> None:
    answer = server.http.post("/v2/models/fraud/infer", json=body(tensor(shape=(2, 2), data=[[2, 1], [0, 3]]), id="r-1"))
    assert answer.status_code == 200
    assert answer.json()["id"] == "r-1" and answer.json()["outputs"][0]["data"] == [1, 0]


def test_unknown_models_paths_and_methods_get_json_4xx_without_echoing_at_length(server: RunningServer) -> None:
    answer = server.http.post(f"/v2/models/{'m' * 4000}/infer", json=body(tensor()))
    assert answer.status_code == 404 and "unknown model 'mmmm" in answer.json()["error"] and len(answer.content) < 512
    answer = server.http.get("/v2/models/fraud/infer")
    assert answer.status_code == 405 and "method 'GET' is not allowed" in answer.json()["error"]
    answer = server.http.get("/v2/nothing/here")
    assert answer.status_code == 404 and "no such endpoint" in answer.json()["error"]
    assert not [key for key in server.metrics() if key[0] == "mlserve_requests_total" and ("outcome", "server_error") in key[1]]


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    uri, digest = artifact(tmp_path)
    running = RunningServer(ServerConfig("fraud", "2.0", uri, digest, "custom", limits=Limits(body_bytes=1024)))
    try:
        answer = running.http.post("/v2/models/fraud/infer", content=b"[" * 2048, headers={"Connection": "close"})
        assert answer.status_code == 413 and answer.json() == {"error": "request body larger than 1024 bytes"}
    finally:
        running.close()


class Artifacts:
    """A local HTTP server answering ``/models/fraud.json`` with ``body`` (or 403 when ``body`` is None)."""

    def __init__(self, body: bytes | None, delay: threading.Event | None = None) -> None:
        self.requests: list[str] = []
        artifacts = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                artifacts.requests.append(self.path)
                if delay is not None:
                    delay.wait(30)
                self.send_response(403 if body is None else 200)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.uri = SECRET_URI.format(port=self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("forbidden", "http://127.0.0.1:{port}/models/fraud.json: download failed (HTTP 403)"),
        ("digest mismatch", "digest mismatch: MODEL_DIGEST is sha256:000"),
        ("unreachable", "http://127.0.0.1:{port}/models/fraud.json: download failed (ConnectError"),
    ],
)
def test_no_answer_and_no_log_line_shows_the_credentials_in_model_uri(
    case: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = Artifacts(None if case == "forbidden" else json.dumps({"type": "linear", "coefficients": [1.0, -1.0]}).encode())
    port = source.server.server_address[1]
    if case == "unreachable":
        source.close()
    running = RunningServer(ServerConfig("fraud", "2.0", source.uri, "sha256:" + "0" * 64, "custom"))
    try:
        answers = [running.http.get(path) for path in ("/v2/health/ready", "/v2/models/fraud/ready", "/v2/models/fraud", "/metrics")]
        answers.append(running.http.post("/v2/models/fraud/infer", json=body(tensor())))
        assert [a.status_code for a in answers] == [503, 503, 200, 200, 503]
        assert expected.format(port=port) in answers[0].json()["error"]
        assert expected.format(port=port) in answers[4].json()["error"]
        text = "\n".join([*(a.text for a in answers), *(r.getMessage() for r in caplog.records), caplog.text])
        assert [secret for secret in SECRETS if secret in text] == []
        assert any("NOT ready" in r.getMessage() for r in caplog.records)
    finally:
        running.close()
        if case != "unreachable":
            source.close()


def test_the_server_listens_before_the_artifact_is_loaded() -> None:
    release = threading.Event()
    source = Artifacts(json.dumps({"type": "linear", "coefficients": [1.0, -1.0]}).encode(), delay=release)
    config = ServerConfig("fraud", "2.0", source.uri, None, "custom", load_wait_seconds=0.2)
    running = RunningServer(config, wait_loaded=False)
    try:
        assert running.http.get("/v2/health/live").status_code == 200
        ready = running.http.get("/v2/models/fraud/ready")
        assert (ready.status_code, ready.json()["error"]) == (503, "loading the model artifact")
        infer = running.http.post("/v2/models/fraud/infer", json=body(tensor()))  # waits 0.2 s for the load, then refused
        assert (infer.status_code, infer.json()["error"]) == (503, "model not ready: loading the model artifact")
        release.set()
        running.wait_loaded()
        assert running.http.get("/v2/models/fraud/ready").status_code == 200
        assert running.http.post("/v2/models/fraud/infer", json=body(tensor())).status_code == 200
    finally:
        release.set()
        running.close()
        source.close()


def test_a_request_that_arrives_while_the_artifact_loads_waits_for_it() -> None:
    release = threading.Event()
    source = Artifacts(json.dumps({"type": "linear", "coefficients": [1.0, -1.0]}).encode(), delay=release)
    running = RunningServer(ServerConfig("fraud", "2.0", source.uri, None, "custom", load_wait_seconds=60), wait_loaded=False)
    answers: list[httpx.Response] = []
    try:
        assert running.http.get("/v2/models/fraud/ready").status_code == 503
        waiting = threading.Thread(target=lambda: answers.append(running.http.post("/v2/models/fraud/infer", json=body(tensor()))))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and answers == []  # held while the artifact loads, not refused
        release.set()
        waiting.join(30)
        assert [a.status_code for a in answers] == [200]
    finally:
        release.set()
        running.close()
        source.close()


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    uri, digest = artifact(tmp_path)
    token = tmp_path / "token"
    token.write_text("first-token\n")
    running = RunningServer(ServerConfig("fraud", "2.0", uri, digest, "custom", token_file=token))
    yield running, token
    running.close()


def test_a_bearer_token_guards_inference_and_metadata_but_not_probes_or_metrics(guarded: tuple[RunningServer, Path]) -> None:
    running, _ = guarded
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic first-token"}, {"Authorization": "first-token"}):
        answer = running.http.post("/v2/models/fraud/infer", json=body(tensor()), headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "first-token" not in answer.text
        assert running.http.get("/v2/models/fraud", headers=headers).status_code == 401
    good = {"Authorization": "Bearer first-token"}
    assert running.http.post("/v2/models/fraud/infer", json=body(tensor()), headers=good).status_code == 200
    assert running.http.get("/v2/models/fraud", headers=good).status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/fraud/ready", "/metrics"):
        assert running.http.get(path).status_code == 200, path
    samples = running.metrics()
    assert samples[requests("client_error")] == 4


def test_a_rotated_token_is_used_at_once_and_a_missing_one_closes_inference(guarded: tuple[RunningServer, Path]) -> None:
    running, token = guarded
    replacement = token.with_name("token.new")
    replacement.write_text("second-token")
    replacement.replace(token)  # how a Secret volume swaps its files
    assert running.http.post("/v2/models/fraud/infer", json=body(tensor()), headers={"Authorization": "Bearer first-token"}).status_code == 401
    assert running.http.post("/v2/models/fraud/infer", json=body(tensor()), headers={"Authorization": "Bearer second-token"}).status_code == 200
    token.unlink()
    answer = running.http.post("/v2/models/fraud/infer", json=body(tensor()), headers={"Authorization": "Bearer second-token"})
    assert answer.status_code == 503 and "token file is not usable" in answer.json()["error"]
    ready = running.http.get("/v2/models/fraud/ready")
    assert ready.status_code == 503 and "MODELOPS_SERVE_TOKEN_FILE" in ready.json()["error"]
    token.write_text("")
    assert "is empty" in running.http.get("/v2/models/fraud/ready").json()["error"]


def profiled_server(tmp_path: Path, profile: dict[str, Any]) -> RunningServer:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    uri, digest = artifact(tmp_path)
    config = ServerConfig("fraud", "2.0", uri, digest, "custom", profile_uri=path.as_uri(), sensitive_attributes=("sex",),
                          drift_interval_seconds=3600)
    return RunningServer(config)


def test_junk_groups_never_displace_declared_ones_and_are_counted_as_one_overflow_group(tmp_path: Path) -> None:
    reference = {"a": [str(v % 7) for v in range(300)], "b": [str(v % 5) for v in range(300)], "sex": ["f", "m", "x"] * 100}
    running = profiled_server(tmp_path, build_profile(reference, sensitive_attributes=["sex"]).to_json())
    try:
        def send(groups: list[str]) -> None:
            rows = [[2.0, 1.0]] * len(groups)
            answer = running.http.post("/v2/models/fraud/infer", json=body(
                tensor(shape=(len(rows), 2), data=[v for row in rows for v in row]),
                tensor(name="sex", shape=[len(groups)], datatype="BYTES", data=groups),
            ))
            assert answer.status_code == 200

        send([f"junk-{i}-" + "j" * 200 for i in range(50)])
        send(["f", "m", "x", "f"])
        groups = {dict(labels)["group"]: value for (name, labels), value in running.metrics().items()
                  if name == "mlserve_group_predictions_total"}
        assert groups == {"__other__": 50, "f": 2, "m": 1, "x": 1}
    finally:
        running.close()


def test_undeclared_groups_are_tracked_first_come_up_to_a_bound(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, digest = artifact(tmp_path)
    running = RunningServer(ServerConfig("fraud", "2.0", uri, digest, "custom", sensitive_attributes=("sex",)))
    try:
        groups = [f"g{i}" for i in range(30)]
        answer = running.http.post("/v2/models/fraud/infer", json=body(
            tensor(shape=(30, 2), data=[1.0] * 60), tensor(name="sex", shape=[30], datatype="BYTES", data=groups),
        ))
        assert answer.status_code == 200
        seen = {dict(labels)["group"]: value for (name, labels), value in running.metrics().items() if name == "mlserve_group_predictions_total"}
        assert seen == {**{f"g{i}": 1 for i in range(20)}, "__other__": 10}
        assert any("no groups declared in the reference profile" in r.getMessage() for r in caplog.records)
    finally:
        running.close()


def test_a_drift_window_keeps_the_profiles_categories_never_the_clients_strings(tmp_path: Path) -> None:
    reference = {"a": [str(v % 7) for v in range(300)], "b": [str(v % 5) for v in range(300)], "country": ["fr", "de"] * 150}
    running = profiled_server(tmp_path, build_profile(reference).to_json())
    try:
        countries = ["fr", "de", "x" * 256]
        answer = running.http.post("/v2/models/fraud/infer", json=body(
            tensor(shape=(3, 2), data=[1.0] * 6), tensor(name="country", shape=[3], datatype="BYTES", data=countries),
        ))
        assert answer.status_code == 200
        assert list(running.state.windows["country"]) == ["fr", "de", "__unseen__"]
        profile = running.state.profile
        assert profile is not None
        kept = running.state.windows["country"][0]
        assert kept is next(c for c in profile.feature("country").categories if c == "fr")  # the profile's object
    finally:
        running.close()


def test_profile_build_declares_the_groups_of_a_sensitive_attribute(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("age,sex,label\n" + "".join(f"{20 + i % 50},{'f' if i % 3 else 'm'},{i % 2}\n" for i in range(300)))
    output = tmp_path / "profile.json"
    result = CliRunner().invoke(main, ["profile", "build", str(data), "-o", str(output), "--exclude", "label", "--sensitive-attribute", "sex"])
    assert result.exit_code == 0, result.output
    assert "2 groups of sex" in result.output
    document = json.loads(output.read_text())
    assert document["groups"] == {"sex": ["f", "m"]}
    assert [f["name"] for f in document["features"]] == ["age"]
    many = tmp_path / "many.csv"
    many.write_text("age,sex\n" + "".join(f"{i},g{i}\n" for i in range(60)))
    result = CliRunner().invoke(main, ["profile", "build", str(many), "-o", str(output), "--sensitive-attribute", "sex"])
    assert result.exit_code == 1 and "sex has 60 distinct values; at most 50 groups can be declared" in result.output


@pytest.mark.parametrize(
    ("groups", "message"),
    [({"sex": [f"g{i}" for i in range(51)]}, "51 groups; at most 50"), ({"sex": ["x" * 257]}, "longer than 256 bytes"),
     ({"sex": "f,m"}, "a list of strings"), (["sex"], "must map each sensitive attribute")],
)
def test_a_profile_declaring_unbounded_groups_is_refused(tmp_path: Path, groups: Any, message: str) -> None:
    document = build_profile({"a": [str(v) for v in range(300)], "b": [str(v) for v in range(300)]}).to_json()
    document.pop("digest")
    document["groups"] = groups
    running = profiled_server(tmp_path, document)
    try:
        ready = running.http.get("/v2/health/ready")
        assert ready.status_code == 503 and message in ready.json()["error"]
    finally:
        running.close()


def test_http_errors_never_show_the_artifact_uri_with_its_secrets() -> None:
    from modelops.serving import artifacts

    with pytest.raises(artifacts.ArtifactError) as raised:
        artifacts.fetch("https://user:pa55@[::1]:1/x?sig=abc")
    assert "pa55" not in str(raised.value) and "sig=" not in str(raised.value) and raised.value.__cause__ is None
    with pytest.raises(artifacts.ArtifactError, match=r"^s3://bucket/model: this server loads file:// and http\(s\):// URIs only$"):
        artifacts.fetch("s3://key:secret@bucket/model?token=abc")
    assert httpx  # the transport whose exception texts embed the full URL
