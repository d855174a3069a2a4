"""A reference server running in-process on loopback, and artifacts for it."""

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from modelops.serving.server import HANDLER_OPTIONS, ServerConfig, create

LINEAR = {"type": "linear", "kind": "classifier", "features": ["a", "b"], "coefficients": [1.0, -1.0], "intercept": 0.0}


class RunningServer:
    """An aiohttp app on 127.0.0.1 in a thread of its own."""

    def __init__(self, config: ServerConfig, *, wait_loaded: bool = True) -> None:
        self.app, self.state = create(config)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app, **HANDLER_OPTIONS)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        if wait_loaded:
            self.wait_loaded()

    def wait_loaded(self, timeout: float = 30) -> None:
        """The artifact loads in the background after the server listens: wait for the outcome."""
        deadline = time.monotonic() + timeout
        while self.state.loading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.state.loading, "the artifact did not finish loading"

    def close(self) -> None:
        self.http.close()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.http.get("/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def artifact(tmp_path: Path, document: dict[str, Any] = LINEAR) -> tuple[str, str]:
    path = tmp_path / "model.json"
    path.write_bytes(json.dumps(document).encode())
    return path.as_uri(), "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
