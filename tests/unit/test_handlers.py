"""The handlers over the in-memory ClusterApi: what is freed when an object goes, how a failed pass
is logged and retried, and how a conflicting status write is re-run."""

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import pytest

from modelops import handlers
from modelops.analysis_runner import parse_watched
from modelops.kube.api import ApiError
from modelops.metrics import operator_metrics as metrics
from modelops.notify import Notification, Outbox
from modelops.planning.analysis import Evaluation
from modelops.reconciler import reconcile
from modelops.tracking import Dispatched, ObjectRegistry, RetryScheduler
from tests.unit.test_reconciler import FakeCluster, body

TRANSIENT = [
    ApiError(0, "apiserver unreachable: NewConnectionError: Connection refused"),
    ApiError(0, "apiserver unreachable: ProtocolError: ('Connection aborted.', ConnectionResetError(104))"),
    ApiError(0, "apiserver unreachable: ReadTimeoutError: Read timed out. (read timeout=15)"),
    ApiError(429, "Too many requests"),
    ApiError(500, "Internal error"),
    ApiError(503, "service unavailable"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[kopf.Memo]:
    monkeypatch.setattr(handlers, "_registry", ObjectRegistry())
    monkeypatch.setattr(handlers, "_dispatched", Dispatched())
    pool = ThreadPoolExecutor(4)
    memo = kopf.Memo()
    memo.cluster = None
    memo.prometheus = None
    memo.retries = RetryScheduler(lambda key: None, clock=clock)  # not started: tests pop due retries themselves
    memo.outbox = Outbox()  # not started: submissions only queue
    memo.periodic_pool = memo.query_pool = memo.analysis_pool = memo.triggered_pool = pool
    yield memo
    pool.shutdown(wait=True)


def _cluster(memo: kopf.Memo, name: str) -> FakeCluster:
    document = body()
    document["metadata"]["name"] = name
    memo.cluster = FakeCluster(document)
    return memo.cluster  # type: ignore[no-any-return]


def _event(memo: kopf.Memo, kind: str, document: dict[str, Any]) -> None:
    metadata = document["metadata"]
    handlers.modeldeployment_changed(type=kind, body=kopf.Body(document), namespace=metadata["namespace"],
                                     name=metadata["name"], memo=memo, logger=logging.getLogger("modelops"))


def _into_canary(cluster: FakeCluster, name: str) -> None:
    """Makes the stable version Ready, then starts a canary of 2.0 with one analysed check."""
    cluster.objects[("Deployment", f"{name}-1-0")]["status"] = {"readyReplicas": 1, "updatedReplicas": 1, "replicas": 1}
    reconcile(cluster, cluster.get_modeldeployment("ns", name), "2026-11-26T12:00:01Z")  # type: ignore[arg-type]
    cluster.body["spec"]["model"] = {"version": "2.0", "uri": "s3://m/2.0/"}
    cluster.body["spec"]["rollout"] = {"steps": [{"setWeight": 20}], "analysis": {
        "interval": "10s", "checks": [{"name": "errors", "type": "errorRate", "max": 0.1}]}}


def _series(namespace: str, name: str) -> list[tuple[str, ...]]:
    return [values for collector in metrics.PER_OBJECT for values in list(collector._metrics) if values[:2] == (namespace, name)]


def _nothing_kept(memo: kopf.Memo, name: str) -> None:
    assert handlers._registry.sizes() == {"watched": 0, "seen": 0, "locks": 0}
    assert len(handlers._dispatched) == 0
    assert memo.retries.pending() == 0
    assert memo.outbox.sizes() == {"queued": 0, "pending": 0, "results": 0}
    assert _series("ns", name) == []


def _known_with_every_kind_of_state(memo: kopf.Memo, name: str) -> FakeCluster:
    """An object the operator has seen, analysed, retried and queued a notification for."""
    cluster = _cluster(memo, name)
    _event(memo, "ADDED", cluster.body)
    _into_canary(cluster, name)
    _event(memo, "MODIFIED", cluster.get_modeldeployment("ns", name))  # type: ignore[arg-type]
    handlers._run_pass("ns", name, memo, logging.getLogger("modelops"), {"errors": Evaluation("Pass", value=0.0)}, "2.0")
    handlers._dispatched.start(("canary", "ns", name), None)
    memo.retries.failed(("ns", name))
    memo.outbox.submit(Notification("ns", name, f"{name}-retrain-1", "http://hook.example/x", {}))
    assert handlers._registry.sizes()["watched"] == 1
    assert {values[2:] for values in _series("ns", name)} >= {(), ("errors", "Pass")}  # promotions, weight, checks
    return cluster


def test_a_deleted_event_frees_everything_kept_for_the_object(memo: kopf.Memo) -> None:
    cluster = _known_with_every_kind_of_state(memo, "deleted")
    _event(memo, "DELETED", cluster.body)
    _nothing_kept(memo, "deleted")


def test_a_pass_that_finds_the_object_gone_frees_it(memo: kopf.Memo) -> None:
    cluster = _known_with_every_kind_of_state(memo, "gone")
    cluster.remove("ns", "gone")  # deleted; the DELETED event is never seen
    handlers._run_pass("ns", "gone", memo, logging.getLogger("modelops"))
    _nothing_kept(memo, "gone")


def test_an_object_being_deleted_is_forgotten_and_never_due_for_analysis(memo: kopf.Memo) -> None:
    cluster = _known_with_every_kind_of_state(memo, "ghost")
    handlers._dispatched.forget(("canary", "ns", "ghost"))
    due = cluster.get_modeldeployment("ns", "ghost")
    due["status"]["rollout"]["nextAnalysisAt"] = "2026-11-26T12:00:00Z"  # type: ignore[index]
    handlers._registry.remember(("ns", "ghost"), parse_watched(due))  # type: ignore[arg-type]
    handlers._analysis_tick(memo)
    assert len(handlers._dispatched) == 1  # due while alive: dispatched
    cluster.body["metadata"] |= {"deletionTimestamp": "2026-11-26T12:01:00Z", "finalizers": ["someone.else/keep"]}
    _event(memo, "MODIFIED", cluster.get_modeldeployment("ns", "ghost"))  # type: ignore[arg-type]
    _nothing_kept(memo, "ghost")
    calls = len(cluster.calls)
    for _ in range(3):
        handlers._analysis_tick(memo)
    assert len(handlers._dispatched) == 0 and len(cluster.calls) == calls  # no analysis, no pass, no query


def test_objects_missing_from_the_periodic_list_are_forgotten(memo: kopf.Memo, caplog: pytest.LogCaptureFixture) -> None:
    cluster = _known_with_every_kind_of_state(memo, "relisted")
    cluster.remove("ns", "relisted")  # deleted while the watch was relisting: no DELETED event
    caplog.set_level(logging.INFO, logger="modelops")
    assert handlers.forget_vanished(memo) == 1
    _nothing_kept(memo, "relisted")
    assert "forgot ns/relisted: it is no longer listed" in caplog.text


def test_a_failed_list_forgets_nothing(memo: kopf.Memo) -> None:
    cluster = _cluster(memo, "kept")
    _event(memo, "ADDED", cluster.body)
    cluster.fail_next["list_modeldeployments"] = [ApiError(0, "apiserver unreachable: connection refused")]
    assert handlers.forget_vanished(memo) is None
    assert handlers._registry.knows(("ns", "kept"))


@pytest.mark.parametrize("method", ["get_modeldeployment", "list_children", "patch_status"])
@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{e.status}-{e.message[:30]}")
def test_a_transient_error_is_one_log_line_and_a_retried_pass(
    memo: kopf.Memo, clock: Clock, caplog: pytest.LogCaptureFixture, method: str, error: ApiError
) -> None:
    cluster = _cluster(memo, "flaky")
    handlers._registry.remember(("ns", "flaky"), None)
    cluster.fail_next[method] = [error]
    caplog.set_level(logging.INFO, logger="modelops")
    handlers._run_pass("ns", "flaky", memo, logging.getLogger("modelops"))
    lines = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].exc_info is None and "Traceback" not in caplog.text
    assert "pass of ns/flaky failed" in lines[0].getMessage() and "retrying in 1s" in lines[0].getMessage()
    assert "status" not in cluster.body
    assert memo.retries.due() == []
    clock.now += 1
    assert memo.retries.due() == [("ns", "flaky")]  # the retry the scheduler hands to a worker
    handlers._run_pass("ns", "flaky", memo, logging.getLogger("modelops"))
    assert cluster.body["status"]["phase"] == "Pending"  # converged on the retry
    assert len([record for record in caplog.records if record.levelno >= logging.WARNING]) == 1


def test_retries_stop_after_the_last_backoff(memo: kopf.Memo, caplog: pytest.LogCaptureFixture) -> None:
    cluster = _cluster(memo, "down")
    handlers._registry.remember(("ns", "down"), None)
    cluster.fail_next["get_modeldeployment"] = [ApiError(0, "apiserver unreachable")] * 6
    for _ in range(6):
        handlers._run_pass("ns", "down", memo, logging.getLogger("modelops"))
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(messages) == 6
    assert [m.rsplit("; ", 1)[1] for m in messages] == [
        "retrying in 1s", "retrying in 2s", "retrying in 5s", "retrying in 10s", "retrying in 30s",
        "the next trigger or periodic pass retries it",
    ]


def test_a_permanent_error_is_logged_once_and_not_retried(memo: kopf.Memo, caplog: pytest.LogCaptureFixture) -> None:
    cluster = _cluster(memo, "forbidden")
    handlers._registry.remember(("ns", "forbidden"), None)
    cluster.fail_next["patch_status"] = [ApiError(403, "modeldeployments/status is forbidden")]
    handlers._run_pass("ns", "forbidden", memo, logging.getLogger("modelops"))
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert memo.retries.pending() == 0


def test_the_status_patch_is_conditional_on_the_version_read() -> None:
    cluster = FakeCluster(body())
    stale = cluster.get_modeldeployment("ns", "m")
    cluster.write_status_behind_the_operators_back("ns", "m")
    with pytest.raises(ApiError) as refused:
        reconcile(cluster, stale, "2026-11-26T12:00:00Z")  # type: ignore[arg-type]
    assert refused.value.status == 409


def test_a_conflicting_status_write_is_read_again_and_rerun_without_a_warning(
    memo: kopf.Memo, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = _cluster(memo, "contended")
    handlers._registry.remember(("ns", "contended"), None)
    original = cluster.get_modeldeployment

    def read_then_someone_writes(namespace: str, name: str) -> dict[str, Any] | None:
        found = original(namespace, name)
        if cluster.calls.count("patch status") == 0:
            cluster.write_status_behind_the_operators_back(namespace, name)  # between our read and our patch
        return found

    cluster.get_modeldeployment = read_then_someone_writes  # type: ignore[method-assign]
    handlers._run_pass("ns", "contended", memo, logging.getLogger("modelops"))
    assert cluster.calls.count("patch status") == 2  # refused once (409), then written from a fresh read
    assert cluster.body["status"]["phase"] == "Pending"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and memo.retries.pending() == 0


def test_a_lasting_conflict_becomes_a_retried_pass(memo: kopf.Memo, caplog: pytest.LogCaptureFixture) -> None:
    cluster = _cluster(memo, "contended")
    handlers._registry.remember(("ns", "contended"), None)
    cluster.fail_next["patch_status"] = [ApiError(409, "the object has been modified")] * handlers.CONFLICT_ATTEMPTS
    handlers._run_pass("ns", "contended", memo, logging.getLogger("modelops"))
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "409" in line and "retrying in 1s" in line


def test_a_pass_that_cannot_get_the_lock_is_skipped_with_a_log_line(
    memo: kopf.Memo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = _cluster(memo, "stuck")
    handlers._registry.remember(("ns", "stuck"), None)
    monkeypatch.setattr(handlers, "LOCK_WAIT_SECONDS", 0.01)
    holding, release = threading.Event(), threading.Event()

    def stuck_pass() -> None:
        with handlers._registry.hold(("ns", "stuck"), timeout=1):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=stuck_pass)
    thread.start()
    holding.wait(5)
    try:
        handlers._run_pass("ns", "stuck", memo, logging.getLogger("modelops"))
    finally:
        release.set()
        thread.join(5)
    assert cluster.calls == []
    assert "skipped a pass of ns/stuck" in caplog.text


def test_the_watch_parses_each_body_once_for_the_analysis_tick(memo: kopf.Memo) -> None:
    cluster = _cluster(memo, "parsed")
    _event(memo, "ADDED", cluster.body)
    assert handlers._registry.snapshot()[("ns", "parsed")] == parse_watched(cluster.get_modeldeployment("ns", "parsed") | {"status": {}})  # type: ignore[operator]
