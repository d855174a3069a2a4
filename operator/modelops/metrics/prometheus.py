"""Prometheus as a metric provider: instant queries with a timeout, typed results, no leaked credentials.

Written on httpx rather than prometheus-api-client: analysis needs a hard timeout per query,
a distinction between "no data" and "error", and refusal of ambiguous answers (several
series for one version), which that client does not offer.

Connection settings are operator configuration (:class:`PrometheusConfig`), never part of a
ModelDeployment. Credential files (bearer token, or ``user:password`` for basic auth) are
read at every query, so a rotated Secret mounted as a file takes effect without a restart;
their content never appears in errors, logs or status.
"""

import math
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelops.planning.analysis import QueryResult, SeriesKey

DEFAULT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ca_file: Path | None = None
    bearer_token_file: Path | None = None
    basic_auth_file: Path | None = None  # one line: user:password


class Prometheus:
    """Runs instant queries; every failure becomes ``QueryResult(error=...)``, never an exception."""

    def __init__(self, config: PrometheusConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._client = httpx.Client(
            base_url=config.url.rstrip("/"),
            verify=verify,
            timeout=httpx.Timeout(config.timeout_seconds + 1.0, connect=min(config.timeout_seconds, 3.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _headers(self) -> dict[str, str]:
        if self.config.bearer_token_file is not None:
            return {"Authorization": f"Bearer {self.config.bearer_token_file.read_text().strip()}"}
        return {}

    def _auth(self) -> httpx.BasicAuth | None:
        if self.config.basic_auth_file is None:
            return None
        user, _, password = self.config.basic_auth_file.read_text().strip().partition(":")
        return httpx.BasicAuth(user, password)

    def query(self, promql: str) -> QueryResult:
        """Values by (namespace, model, version) for a query grouped by those labels."""
        try:
            response = self._client.get(
                "/api/v1/query",
                params={"query": promql, "timeout": f"{self.config.timeout_seconds:g}s"},
                headers=self._headers(),
                auth=self._auth() or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException:
            return QueryResult({}, error=f"Prometheus did not answer within {self.config.timeout_seconds:g}s")
        except httpx.HTTPError as error:
            return QueryResult({}, error=f"Prometheus unreachable: {type(error).__name__}")
        except OSError as error:  # a credential file that cannot be read
            return QueryResult({}, error=f"cannot read Prometheus credentials: {error.strerror or type(error).__name__}")
        if response.status_code in (401, 403):
            return QueryResult({}, error=f"Prometheus refused the credentials (HTTP {response.status_code})")
        try:
            answer = response.json()
        except ValueError:
            return QueryResult({}, error=f"Prometheus answered HTTP {response.status_code} without JSON")
        if answer.get("status") != "success":
            return QueryResult({}, error=f"query failed: {str(answer.get('error', 'unknown error'))[:200]}")
        return parse_vector(answer.get("data", {}))


def parse_vector(data: dict[str, Any]) -> QueryResult:
    """An instant-vector answer as values by series key; several series for one key is an error."""
    if data.get("resultType") != "vector":
        return QueryResult({}, error=f"expected an instant vector, got {data.get('resultType')!r}")
    values: dict[SeriesKey, float] = {}
    for sample in data.get("result", []):
        metric = sample.get("metric", {})
        key = (metric.get("namespace", ""), metric.get("model", ""), metric.get("version", ""))
        if key in values:
            return QueryResult({}, error=f"several series for {key[0]}/{key[1]} version {key[2]}: the query is ambiguous")
        try:
            values[key] = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            values[key] = math.nan
    return QueryResult(values)
