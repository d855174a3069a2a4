"""The real `modelops serve` process on loopback, under the hostile request list of issue 11.

Each request of the list gets a 4xx, no answer and no line of the process's log shows the
credentials in ``MODEL_URI``, the declared fairness groups stay exported, and neither the
process's memory nor ``/metrics`` grows with what hostile clients send. The memory bound is a
safety property (a hostile client cannot make the pod grow without limit), not a speed claim:
it is generous on purpose (before the fix, forty 4 MiB values added 172 MiB).
"""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelops.serving.drift import build_profile

SECRETS = ("modeluser", "S3cr3tT0ken", "S1gnatur3", "AKIAEXAMPLE", "X-Amz", "the-bearer-token")
MODEL = json.dumps({"type": "linear", "kind": "classifier", "features": ["a", "b"], "coefficients": [1.0, -1.0]}).encode()
TOKEN = "the-bearer-token"
MAX_RSS_GROWTH = 50 * 1024 * 1024
MAX_METRICS_BYTES = 64 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ArtifactServer:
    """Serves the model at ``/models/fraud.json``, to any credentials (it is the URI that must stay secret)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                found = self.path.startswith("/models/fraud.json")
                self.send_response(200 if found else 404)
                self.end_headers()
                self.wfile.write(MODEL if found else b"")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.uri = f"http://modeluser:S3cr3tT0ken@127.0.0.1:{port}/models/fraud.json?X-Amz-Signature=S1gnatur3&X-Amz-Credential=AKIAEXAMPLE"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    log: Path
    http: httpx.Client

    def rss(self) -> int:
        """Resident set size in bytes, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def wait_ready(self, timeout: float = 60) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                answer = self.http.get("/v2/models/fraud/ready")
                if answer.status_code == 200 or "loading" not in answer.text:
                    return answer
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout}s: {self.log.read_text()}")

    def stop(self) -> str:
        self.http.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.log.read_text(errors="replace")


def start(tmp_path: Path, name: str, environment: dict[str, str]) -> ServeProcess:
    port = free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "modelops.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **environment}, stdout=output, stderr=subprocess.STDOUT,
        )
    return ServeProcess(process, log, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))


@pytest.fixture
def artifacts() -> Iterator[ArtifactServer]:
    served = ArtifactServer()
    yield served
    served.close()


def rows_body(groups: list[str], **overrides: Any) -> dict[str, Any]:
    rows = len(groups)
    return {"inputs": [
        {"name": "x", "shape": [rows, 2], "datatype": "FP64", "data": [2.0, 1.0] * rows},
        {"name": "sex", "shape": [rows], "datatype": "BYTES", "data": groups},
        {"name": "country", "shape": [rows], "datatype": "BYTES", "data": ["fr"] * rows},
    ], **overrides}


def hostile_requests() -> list[tuple[str, str, bytes | dict[str, Any], dict[str, str]]]:
    """(what, path, body, extra headers): the list of issue 11 and more."""
    four_mib = "v" * (4 << 20)
    requests: list[tuple[str, str, bytes | dict[str, Any], dict[str, str]]] = []
    requests += [(f"a 4 MiB group #{i}", "fraud", rows_body([four_mib]), {}) for i in range(20)]
    requests += [(f"a 4 MiB category #{i}", "fraud", {"inputs": [*rows_body(["f"])["inputs"][:2], {
        "name": "country", "shape": [1], "datatype": "BYTES", "data": [four_mib]}]}, {}) for i in range(20)]
    requests += [
        ("nested data", "fraud", {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [[1, 2], [3]]}]}, {}),
        ("INT64 overflow", "fraud", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [2**64, 1]}]}, {}),
        ("the wrong datatype", "fraud", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}]}, {}),
        ("a shape mismatch", "fraud", {"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP64", "data": [1, 2]}]}, {}),
        ("not JSON", "fraud", b"\x00not json", {}),
        ("nested a million deep", "fraud", b"[" * 1_000_000, {}),
        ("a body over 16 MiB", "fraud", b'{"inputs": "' + b"x" * (17 << 20) + b'"}', {"Connection": "close"}),
        ("an unknown model", "m" * 2000, rows_body(["f"]), {}),
        ("no token", "fraud", rows_body(["f"]), {"Authorization": ""}),
        ("a wrong token", "fraud", rows_body(["f"]), {"Authorization": "Bearer guess"}),
        ("a lone surrogate", "fraud", json.dumps(rows_body(["\ud800"])).encode(), {}),
        ("a 4 MiB id", "fraud", rows_body(["f"], id="i" * (4 << 20)), {}),
    ]
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    inflating = bomb.compress(b'{"inputs": "' + b"0" * (256 << 20)) + bomb.flush()  # 256 MiB in about 256 KiB
    requests.append(("a gzip bomb", "fraud", inflating, {"Content-Encoding": "gzip", "Connection": "close"}))
    million = {"inputs": [{"name": "x", "shape": [10_000, 100], "datatype": "FP64", "data": [0.5] * 1_000_000}]}
    requests += [(f"a million values for the wrong model #{i}", "fraud", million, {}) for i in range(5)]
    return requests


def test_the_serve_process_answers_hostile_requests_with_4xx_leaks_nothing_and_stays_bounded(
    tmp_path: Path, artifacts: ArtifactServer
) -> None:
    reference = {
        "a": [str(v % 7) for v in range(600)], "b": [str(v % 5) for v in range(600)],
        "country": ["fr", "de", "it"] * 200, "sex": ["f", "m"] * 300,
    }
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(build_profile(reference, sensitive_attributes=["sex"]).to_json()))
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    server = start(tmp_path, "serve", {
        "MODEL_NAME": "fraud", "MODEL_VERSION": "2.0", "MODEL_URI": artifacts.uri,
        "MODEL_DIGEST": "sha256:" + hashlib.sha256(MODEL).hexdigest(), "MODEL_FORMAT": "custom",
        "MODEL_PROFILE_URI": profile.as_uri(), "MODEL_SENSITIVE_ATTRIBUTES": "sex", "MODELOPS_SERVE_TOKEN_FILE": str(token),
        "MODELOPS_DRIFT_INTERVAL_SECONDS": "3600",
    })
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[httpx.Response] = []
    try:
        assert server.wait_ready().status_code == 200
        for _ in range(20):  # warm up: the allocations of normal traffic are in the baseline
            assert server.http.post("/v2/models/fraud/infer", json=rows_body(["f", "m"] * 50), headers=authorized).status_code == 200
            server.http.get("/metrics")
        baseline = server.rss()

        hostile = hostile_requests()
        for what, model, body, headers in hostile:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            answer = server.http.post(f"/v2/models/{model}/infer", content=content, headers={**authorized, **headers})
            assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text[:300])
            assert len(answer.content) < 512, what
            answers.append(answer)
        junk = [f"junk-{i:02d}-" + "j" * 240 for i in range(50)]  # 50 junk groups, each within the value bound
        assert server.http.post("/v2/models/fraud/infer", json=rows_body(junk), headers=authorized).status_code == 200
        assert server.http.post("/v2/models/fraud/infer", json=rows_body(["f", "m", "m"]), headers=authorized).status_code == 200
        growth = server.rss() - baseline

        metrics_text = server.http.get("/metrics").text
        answers += [server.http.get(path) for path in ("/v2/health/ready", "/v2/models/fraud/ready")]
    finally:
        log = server.stop()

    print(f"RSS growth under hostile requests: {growth / 2**20:.1f} MiB; /metrics: {len(metrics_text.encode())} bytes")
    assert growth < MAX_RSS_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB under hostile requests"
    assert len(metrics_text.encode()) < MAX_METRICS_BYTES
    groups = {
        sample.labels["group"]: sample.value
        for family in text_string_to_metric_families(metrics_text) for sample in family.samples
        if sample.name == "mlserve_group_predictions_total"
    }
    assert groups == {"f": 20 * 50 + 1, "m": 20 * 50 + 2, "__other__": 50}
    outcomes = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics_text) for sample in family.samples
        if sample.name == "mlserve_requests_total" and sample.labels["api"] == "infer"
    }
    assert outcomes == {"success": 22, "client_error": len(hostile)}
    everything = "\n".join([*(a.text for a in answers), log])
    assert [secret for secret in SECRETS if secret in everything] == []
    assert "ready (digest sha256:" in log


def test_the_serve_process_never_shows_model_uri_credentials_when_the_artifact_is_refused(
    tmp_path: Path, artifacts: ArtifactServer
) -> None:
    server = start(tmp_path, "refused", {
        "MODEL_NAME": "fraud", "MODEL_VERSION": "2.0", "MODEL_URI": artifacts.uri, "MODEL_DIGEST": "sha256:" + "0" * 64,
        "MODEL_FORMAT": "custom",
    })
    try:
        ready = server.wait_ready()
        infer = server.http.post("/v2/models/fraud/infer", json=rows_body(["f"]))
        metadata = server.http.get("/v2/models/fraud")
    finally:
        log = server.stop()
    assert (ready.status_code, infer.status_code) == (503, 503)
    assert "digest mismatch" in ready.json()["error"] and "digest mismatch" in infer.json()["error"]
    assert "NOT ready: digest mismatch" in log
    everything = "\n".join([ready.text, infer.text, metadata.text, log])
    assert [secret for secret in SECRETS if secret in everything] == []
