"""An HTTP proxy in front of Prometheus that records every query and can hold chosen ones.

The operator reaches Prometheus through it, so a test can count the queries that mention a
model (``asked``), and make every query containing a marker hang (``hold``), as a slow
ClusterMetricTemplate would against an overloaded Prometheus. A held query is answered
only after ``hold_seconds`` (or never, if the client hangs up first).
"""

import http.server
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx


class QueryProxy:
    def __init__(self, upstream: str, hold_seconds: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_seconds = hold_seconds
        self.queries: list[tuple[float, str]] = []  # (monotonic time, PromQL)
        self.held: set[str] = set()  # markers: a query containing one is held
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hold(self, marker: str) -> None:
        with self._lock:
            self.held.add(marker)

    def asked(self, text: str, since: float = 0.0) -> int:
        """How many queries since ``since`` (monotonic) contained ``text``."""
        with self._lock:
            return sum(1 for at, query in self.queries if at >= since and text in query)

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = " ".join(parse_qs(urlsplit(handler.path).query).get("query", []))
        with self._lock:
            self.queries.append((time.monotonic(), query))
            held = any(marker in query for marker in self.held)
        if held:
            time.sleep(self.hold_seconds)
        try:
            answer = httpx.get(self.upstream + handler.path, headers={"Accept": "application/json"}, timeout=30)
            status, body = answer.status_code, answer.content
        except httpx.HTTPError:
            handler.close_connection = True  # Prometheus is away: hang up without an answer, as it would
            return
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting
