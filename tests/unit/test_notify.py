"""Candidate notifications: a total deadline per attempt, a capped reply, a bounded outbox,
redacted logs, and the outcome folded into status by a later pass (never during one)."""

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from modelops import notify
from modelops.api.v1alpha1 import Candidate, RetrainingRun
from modelops.reconciler import reconcile
from tests.support.dripping_receiver import DrippingReceiver
from tests.unit.test_reconciler import FakeCluster, body

SECRET_URL = "https://hooks.example.com/services/T000/B000/s3cr3t-t0ken?sig=abc"
RUN = RetrainingRun(job="m-retrain-1", trigger="drift", started_at="2026-11-26T12:00:00Z", outcome="Succeeded",
                    candidate=Candidate(version="1.1", uri="s3://m/1.1/", metrics={"auc": 0.9}))


def _deliver(item: notify.Notification, settings: notify.DeliverySettings, transport: httpx.AsyncBaseTransport | None = None) -> bool:
    async def run() -> bool:
        async with httpx.AsyncClient(transport=transport) as client:
            return await notify.deliver(client, item, settings)

    return asyncio.run(run())


@pytest.fixture
def dripping() -> Iterator[DrippingReceiver]:
    server = DrippingReceiver(gap=0.05)
    yield server
    server.close()


def test_a_dripping_receiver_is_cut_at_the_total_deadline(dripping: DrippingReceiver, caplog: pytest.LogCaptureFixture) -> None:
    settings = notify.DeliverySettings(deadline_seconds=0.5, attempts=2, backoff_seconds=0.01, allowed_hosts=("127.0.0.1",))
    assert not _deliver(notify.notification(f"{dripping.url}/hook", "ml", "m", RUN), settings)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2 and all("no complete answer within 0.5s" in line for line in lines)
    assert dripping.client_closed.wait(5)  # the operator hung up; it did not wait for the drip to end
    assert dripping.connections == 2


def test_a_huge_reply_is_read_only_up_to_the_cap() -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(100_000):  # 6.4 GB if it were read to the end
            sent.append(1)
            yield b"x" * 65536

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_Stream(endless())))
    settings = notify.DeliverySettings(body_limit_bytes=4096)
    assert _deliver(notify.notification("http://hook.example/x", "ml", "m", RUN), settings, transport)
    assert len(sent) == 1  # one chunk pulled, then the stream was closed


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk


def test_failures_are_retried_and_logged_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([503, 500, 202])
    posts: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(next(answers))

    settings = notify.DeliverySettings(backoff_seconds=0.01)
    assert _deliver(notify.notification(SECRET_URL, "ml", "m", RUN), settings, httpx.MockTransport(answer))
    assert len(posts) == 3 and posts[-1].url == httpx.URL(SECRET_URL)
    assert "https://hooks.example.com" in caplog.text
    assert "s3cr3t" not in caplog.text and "services" not in caplog.text and "sig=" not in caplog.text


def test_the_outbox_delivers_records_the_outcome_and_calls_back() -> None:
    delivered = threading.Event()
    called: list[tuple[str, str]] = []

    def on_result(namespace: str, name: str) -> None:
        called.append((namespace, name))
        delivered.set()

    outbox = notify.Outbox(notify.DeliverySettings(), on_result, httpx.MockTransport(lambda request: httpx.Response(204)))
    outbox.start()
    try:
        outbox.submit(notify.notification("http://hook.example/x", "ml", "m", RUN))
        outbox.submit(notify.notification("http://hook.example/x", "ml", "m", RUN))  # a second pass: not queued twice
        assert delivered.wait(10)
        assert outbox.result("ml", "m", "m-retrain-1") is True and called == [("ml", "m")]
        outbox.settle("ml", "m", "m-retrain-1")
        assert outbox.sizes() == {"queued": 0, "pending": 0, "results": 0}
    finally:
        outbox.stop()


def test_a_full_outbox_drops_the_oldest_and_records_it_as_not_delivered(caplog: pytest.LogCaptureFixture) -> None:
    called: list[tuple[str, str]] = []
    outbox = notify.Outbox(notify.DeliverySettings(capacity=2), lambda namespace, name: called.append((namespace, name)))
    for name in ("a", "b", "c"):  # not started: nothing is delivered
        outbox.submit(notify.Notification("ml", name, f"{name}-retrain-1", SECRET_URL, {}))
    assert outbox.sizes()["queued"] == 2
    assert outbox.result("ml", "a", "a-retrain-1") is False and called == [("ml", "a")]
    assert "notify outbox full (2): dropped the oldest notification, for ml/a" in caplog.text
    outbox.forget("ml", "b")
    assert outbox.sizes() == {"queued": 1, "pending": 1, "results": 1}


def test_redaction_keeps_only_scheme_and_host() -> None:
    assert notify.redacted(SECRET_URL) == "https://hooks.example.com"
    assert notify.redacted("http://user:password@10.0.0.1:8080/x") == "http://10.0.0.1:8080"


class RecordingNotifier:
    def __init__(self) -> None:
        self.submitted: list[notify.Notification] = []
        self.results: dict[tuple[str, str, str], bool] = {}
        self.settled: list[tuple[str, str, str]] = []

    def submit(self, item: notify.Notification) -> None:
        self.submitted.append(item)

    def result(self, namespace: str, name: str, job: str) -> bool | None:
        return self.results.get((namespace, name, job))

    def settle(self, namespace: str, name: str, job: str) -> None:
        self.settled.append((namespace, name, job))
        self.results.pop((namespace, name, job), None)


def _with_finished_run(notified: bool | None = None, target: dict[str, Any] | None = None) -> FakeCluster:
    retraining: dict[str, Any] = {"jobTemplate": {"template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}}},
                                  "notify": target or {"url": SECRET_URL}}
    cluster = FakeCluster(body(retraining=retraining))
    reconcile(cluster, cluster.body, "2026-11-26T12:00:00Z")
    run = RUN.model_dump(mode="json", by_alias=True) | {"notified": notified}
    cluster.body["status"]["retraining"] = {"runs": 1, "lastRun": run}
    return cluster


def test_a_pass_submits_the_candidate_and_a_later_pass_folds_the_outcome_into_status() -> None:
    cluster = _with_finished_run()
    notifier = RecordingNotifier()
    cluster.calls.clear()
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:01Z", notifier=notifier)  # type: ignore[arg-type]
    [item] = notifier.submitted
    assert item.url == SECRET_URL and item.payload["candidate"]["version"] == "1.1"
    assert cluster.body["status"]["retraining"]["lastRun"].get("notified") is None
    notifier.results[("ns", "m", "m-retrain-1")] = False  # the outbox gave up
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:02Z", notifier=notifier)  # type: ignore[arg-type]
    assert cluster.body["status"]["retraining"]["lastRun"]["notified"] is False
    assert notifier.settled == [("ns", "m", "m-retrain-1")] and len(notifier.submitted) == 1
    cluster.calls.clear()
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:03Z", notifier=notifier)  # type: ignore[arg-type]
    assert "patch status" not in cluster.calls and len(notifier.submitted) == 1  # recorded: never sent again


def test_a_recorded_outcome_is_never_announced_again() -> None:
    cluster = _with_finished_run(notified=True)
    notifier = RecordingNotifier()
    reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:01Z", notifier=notifier)  # type: ignore[arg-type]
    assert notifier.submitted == []


@pytest.mark.parametrize(
    ("url", "allowed", "problem"),
    [
        ("https://hooks.example.com/x", (), None),
        ("https://hooks.example.com/x", ("hooks.example.com",), None),
        ("https://a.b.example.com/x", ("*.example.com",), None),
        ("https://example.com.evil.test/x", ("*.example.com",), "host example.com.evil.test is not in --notify-allowed-hosts"),
        ("https://evilexample.com/x", ("*.example.com",), "host evilexample.com is not in --notify-allowed-hosts"),
        ("http://127.0.0.1:8080/x", (), "host 127.0.0.1 is a loopback, link-local or unspecified address"),
        ("http://[::1]/x", (), "host ::1 is a loopback, link-local or unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", (), "host 169.254.169.254 is a loopback, link-local or unspecified address"),
        ("http://0.0.0.0/x", (), "host 0.0.0.0 is a loopback, link-local or unspecified address"),
        ("http://127.0.0.1:8080/x", ("127.0.0.1",), None),  # listed exactly by the admin: allowed
        ("file:///etc/passwd", (), "only http and https URLs with a host are allowed"),
    ],
)
def test_destinations_are_checked_before_any_connection(url: str, allowed: tuple[str, ...], problem: str | None) -> None:
    assert notify.destination_problem(url, allowed) == problem


def test_a_refused_destination_is_never_contacted_and_its_url_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    posts: list[httpx.Request] = []
    settings = notify.DeliverySettings(allowed_hosts=("hooks.example.com",), backoff_seconds=0.01)
    url = "https://internal.corp.test/admin/reset?token=s3cr3t"
    transport = httpx.MockTransport(lambda request: posts.append(request) or httpx.Response(204))  # type: ignore[func-returns-value]
    assert not _deliver(notify.notification(url, "ml", "m", RUN), settings, transport)
    assert posts == []
    assert "refused: host internal.corp.test is not in --notify-allowed-hosts" in caplog.text
    assert "s3cr3t" not in caplog.text and "/admin" not in caplog.text


def test_redirects_are_not_followed() -> None:
    posts: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})

    settings = notify.DeliverySettings(attempts=1)
    assert not _deliver(notify.notification("https://hooks.example.com/x", "ml", "m", RUN), settings, httpx.MockTransport(answer))
    assert [str(request.url) for request in posts] == ["https://hooks.example.com/x"]


def test_the_url_can_come_from_the_namespaces_notify_secret_and_appears_nowhere_in_status_or_events() -> None:
    cluster = _with_finished_run(target={"urlFrom": {"secretKeyRef": {"name": "modelops-notify", "key": "slack"}}})
    cluster.secrets[("ns", "slack")] = SECRET_URL
    notifier = RecordingNotifier()
    outcome = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:01Z", notifier=notifier)  # type: ignore[arg-type]
    [item] = notifier.submitted
    assert item.url == SECRET_URL
    notifier.results[("ns", "m", "m-retrain-1")] = True
    later = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:02Z", notifier=notifier)  # type: ignore[arg-type]
    assert cluster.body["status"]["retraining"]["lastRun"]["notified"] is True
    for text in (str(cluster.body["status"]), *(e.message for e in outcome.events + later.events)):
        assert "s3cr3t" not in text and "hooks.example.com" not in text


def test_a_missing_notify_secret_key_is_recorded_as_not_delivered_with_a_warning() -> None:
    cluster = _with_finished_run(target={"urlFrom": {"secretKeyRef": {"name": "modelops-notify", "key": "slack"}}})
    notifier = RecordingNotifier()
    outcome = reconcile(cluster, cluster.get_modeldeployment("ns", "m"), "2026-11-26T12:00:01Z", notifier=notifier)  # type: ignore[arg-type]
    assert notifier.submitted == []
    assert cluster.body["status"]["retraining"]["lastRun"]["notified"] is False
    assert [(e.reason, e.message) for e in outcome.events] == [
        ("NotifyFailed", "1.1 not announced: Secret modelops-notify has no key 'slack' in namespace ns")]


def test_the_notify_secret_name_is_fixed_and_url_and_urlfrom_exclude_each_other() -> None:
    from pydantic import ValidationError

    from modelops.api.v1alpha1 import NotifySpec

    with pytest.raises(ValidationError, match="modelops-notify"):
        NotifySpec.model_validate({"urlFrom": {"secretKeyRef": {"name": "db-password", "key": "url"}}})
    assert NotifySpec.model_validate({"urlFrom": {"secretKeyRef": {"name": "modelops-notify", "key": "url"}}}).url is None
