"""The Prometheus provider: parsing, errors as values, credentials sent but never echoed."""

from pathlib import Path

import httpx

from modelops.metrics.prometheus import Prometheus, PrometheusConfig, parse_vector


def vector(*samples: tuple[dict[str, str], str]) -> dict:
    return {"resultType": "vector", "result": [{"metric": m, "value": [1.0, v]} for m, v in samples]}


def test_parse_vector_keys_by_namespace_model_version() -> None:
    result = parse_vector(vector(({"namespace": "ml", "model": "m", "version": "1"}, "0.5"), ({"namespace": "ml", "model": "m", "version": "2"}, "NaN")))
    assert result.error is None
    assert result.values[("ml", "m", "1")] == 0.5
    assert result.values[("ml", "m", "2")] != result.values[("ml", "m", "2")]  # NaN: evaluate() makes it NoData


def test_two_series_for_one_version_are_an_error() -> None:
    labels = {"namespace": "ml", "model": "m", "version": "1"}
    result = parse_vector(vector((labels | {"pod": "a"}, "1"), (labels | {"pod": "b"}, "2")))
    assert result.error == "several series for ml/m version 1: the query is ambiguous"


def test_a_matrix_is_an_error() -> None:
    assert parse_vector({"resultType": "matrix", "result": []}).error == "expected an instant vector, got 'matrix'"


def _client(handler, tmp_path: Path, **config: object) -> Prometheus:
    return Prometheus(PrometheusConfig(url="http://prometheus.invalid:9090", **config), transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_bearer_token_is_read_from_its_file_on_every_query_and_never_echoed(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-one\n")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] != "Bearer s3cr3t-two":
            return httpx.Response(401, text="unauthorized: s3cr3t-one is not valid")
        return httpx.Response(200, json={"status": "success", "data": vector()})

    prometheus = _client(handler, tmp_path, bearer_token_file=token)
    refused = prometheus.query("up")
    assert refused.error == "Prometheus refused the credentials (HTTP 401)"
    assert "s3cr3t" not in refused.error
    token.write_text("s3cr3t-two\n")  # rotated Secret: picked up without a restart
    assert prometheus.query("up").error is None
    assert seen == ["Bearer s3cr3t-one", "Bearer s3cr3t-two"]


def test_timeouts_and_unreachable_servers_become_errors(tmp_path: Path) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert _client(slow, tmp_path, timeout_seconds=2).query("up").error == "Prometheus did not answer within 2s"
    assert _client(refused, tmp_path).query("up").error == "Prometheus unreachable: ConnectError"


def test_query_errors_and_the_timeout_parameter(tmp_path: Path) -> None:
    params: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params.append(dict(request.url.params))
        return httpx.Response(400, json={"status": "error", "error": "parse error at char 3"})

    result = _client(handler, tmp_path, timeout_seconds=5).query("up{")
    assert result.error == "query failed: parse error at char 3"
    assert params == [{"query": "up{", "timeout": "5s"}]


def test_basic_auth_from_a_file(tmp_path: Path) -> None:
    credentials = tmp_path / "basic"
    credentials.write_text("reader:pa:ss\n")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == httpx.BasicAuth("reader", "pa:ss")._auth_header
        return httpx.Response(200, json={"status": "success", "data": vector()})

    assert _client(handler, tmp_path, basic_auth_file=credentials).query("up").error is None
