"""Artifacts over HTTP, `modelops profile build`, and candidate notifications, against local servers."""

import asyncio
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from modelops import notify
from modelops.api.v1alpha1 import Candidate, RetrainingRun
from modelops.cli import main
from modelops.serving import artifacts
from modelops.serving.drift import ReferenceProfile

MODEL = json.dumps({"type": "linear", "coefficients": [1.0, 2.0], "intercept": 0.5}).encode()


class Local:
    """A local HTTP server answering GETs with ``body`` and POSTs with the next status in ``statuses``."""

    def __init__(self, body: bytes = b"", statuses: list[int] | None = None) -> None:
        self.posts: list[bytes] = []
        local = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200 if self.path == "/model.json" else 404)
                self.end_headers()
                self.wfile.write(body if self.path == "/model.json" else b"")

            def do_POST(self) -> None:  # noqa: N802
                local.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response((statuses or [200]).pop(0) if statuses else 200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served_model() -> Iterator[Local]:
    local = Local(MODEL)
    yield local
    local.close()


def test_an_artifact_is_fetched_over_http_and_verified(served_model: Local) -> None:
    digest = "sha256:" + hashlib.sha256(MODEL).hexdigest()
    model, actual = artifacts.load(f"{served_model.url}/model.json", digest, "custom")
    assert actual == digest
    assert model.n_features == 2
    with pytest.raises(artifacts.ArtifactError, match="download failed"):
        artifacts.load(f"{served_model.url}/missing.json", None, "custom")
    with pytest.raises(artifacts.ArtifactError, match="digest mismatch"):
        artifacts.load(f"{served_model.url}/model.json", "sha256:" + "1" * 64, "custom")


@pytest.mark.parametrize(
    ("uri", "message"),
    [("s3://bucket/model", "file:// and http(s):// URIs only"), ("file:///nonexistent/model.json", "no such file")],
)
def test_unsupported_or_missing_artifacts_are_named(uri: str, message: str) -> None:
    with pytest.raises(artifacts.ArtifactError, match=re.escape(message)):
        artifacts.fetch(uri)


def test_profile_build_from_csv(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("age,country,label\n" + "".join(f"{20 + i % 50},{'fr' if i % 3 else 'de'},{i % 2}\n" for i in range(300)))
    output = tmp_path / "profile.json"
    result = CliRunner().invoke(main, ["profile", "build", str(data), "-o", str(output), "--bins", "5", "--exclude", "label"])
    assert result.exit_code == 0, result.output
    profile = ReferenceProfile.from_json(json.loads(output.read_text()))
    assert [(f.name, f.kind) for f in profile.features] == [("age", "numeric"), ("country", "categorical")]
    assert profile.rows == 300 and len(profile.feature("age").shares) == 5


def test_profile_build_names_an_empty_cell(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("age,country\n30,fr\n,de\n")
    result = CliRunner().invoke(main, ["profile", "build", str(data), "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 1
    assert "bad.csv:3: column age is empty" in result.output


def _announce(url: str, run: RetrainingRun) -> bool:
    async def deliver() -> bool:
        async with httpx.AsyncClient() as client:
            return await notify.deliver(client, notify.notification(url, "ml", "m", run), notify.DeliverySettings(backoff_seconds=0.01, allowed_hosts=("127.0.0.1",)))

    return asyncio.run(deliver())


def test_a_candidate_is_announced_with_retries() -> None:
    receiver = Local(statuses=[503, 500, 202])
    run = RetrainingRun(job="m-retrain-1", trigger="drift", started_at="2026-11-26T11:00:00Z",
                        candidate=Candidate(version="1.1", uri="s3://m/1.1/", metrics={"auc": 0.9}))
    try:
        assert _announce(f"{receiver.url}/hook", run)
        assert len(receiver.posts) == 3
        body = json.loads(receiver.posts[-1])
        assert body["candidate"]["version"] == "1.1" and body["modelDeployment"] == {"namespace": "ml", "name": "m"}
    finally:
        receiver.close()
    refusing = Local(statuses=[500, 500, 500])
    try:
        assert not _announce(f"{refusing.url}/hook", run)
    finally:
        refusing.close()
