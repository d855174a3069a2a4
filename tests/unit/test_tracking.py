"""The operator's per-object memory: locks that are pruned without racing a holder, vanished objects,
dispatched analyses, and retries with backoff (all without kopf, threads or clocks of their own)."""

import threading

from modelops.tracking import Dispatched, ObjectRegistry, RetryScheduler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_forgetting_frees_the_body_and_the_lock() -> None:
    registry: ObjectRegistry[str] = ObjectRegistry()
    registry.remember(("ns", "a"), "parsed")
    with registry.hold(("ns", "a"), timeout=1) as acquired:
        assert acquired
    assert registry.sizes() == {"watched": 1, "seen": 1, "locks": 1}
    assert registry.forget(("ns", "a"))
    assert registry.sizes() == {"watched": 0, "seen": 0, "locks": 0}
    assert not registry.forget(("ns", "a"))  # forgetting twice is harmless


def test_a_lock_in_use_is_pruned_only_when_its_last_user_leaves() -> None:
    registry: ObjectRegistry[str] = ObjectRegistry()
    key = ("ns", "a")
    registry.remember(key, "parsed")
    holding, release = threading.Event(), threading.Event()

    def first_pass() -> None:
        with registry.hold(key, timeout=1):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=first_pass)
    thread.start()
    holding.wait(5)
    registry.forget(key)  # deleted while a pass holds its lock
    assert registry.sizes()["locks"] == 1
    with registry.hold(key, timeout=0.05) as acquired:
        assert not acquired  # the same lock, still held: never a fresh one beside it
    release.set()
    thread.join(5)
    assert registry.sizes() == {"watched": 0, "seen": 0, "locks": 0}


def test_a_pass_that_cannot_get_the_lock_is_told_so() -> None:
    registry: ObjectRegistry[str] = ObjectRegistry()
    with registry.hold(("ns", "a"), timeout=1) as first:
        with registry.hold(("ns", "a"), timeout=0.01) as second:
            assert first and not second
    assert registry.sizes()["locks"] == 0  # never remembered: nothing stays


def test_objects_missing_from_a_list_are_vanished_unless_announced_after_it_began() -> None:
    clock = Clock()
    registry: ObjectRegistry[str] = ObjectRegistry(clock)
    registry.remember(("ns", "old"), "x")
    registry.remember(("ns", "kept"), "x")
    clock.now = 110.0
    listed_at = registry.now()
    clock.now = 111.0
    registry.remember(("ns", "new"), "x")  # created after the LIST began: not in it, but not gone
    assert registry.vanished([("ns", "kept")], listed_at) == [("ns", "old")]


def test_forgetting_spares_an_object_announced_after_the_pass_began() -> None:
    clock = Clock()
    registry: ObjectRegistry[str] = ObjectRegistry(clock)
    started = registry.now()
    clock.now += 1
    registry.remember(("ns", "a"), "recreated")
    assert not registry.forget(("ns", "a"), unless_seen_after=started)
    assert registry.knows(("ns", "a"))


def test_a_dispatched_analysis_waits_for_a_new_body_or_the_settle_time() -> None:
    clock = Clock()
    dispatched = Dispatched(settle_seconds=5, clock=clock)
    body, newer = object(), object()
    dispatched.start("k", body)
    assert dispatched.blocked("k", body) and dispatched.blocked("k", newer)  # running
    dispatched.finish("k")
    assert dispatched.blocked("k", body)  # done, but its status has not come back on the watch yet
    assert not dispatched.blocked("k", newer)  # it has
    dispatched.start("k", body)
    dispatched.finish("k")
    clock.now += 5
    assert not dispatched.blocked("k", body)  # the pass wrote nothing: not held for ever
    assert len(dispatched) == 0


def test_retries_back_off_and_stop_after_the_last_delay() -> None:
    clock = Clock()
    ran: list[tuple[str, str]] = []
    retries = RetryScheduler(ran.append, delays=(1, 2, 5), clock=clock)
    key = ("ns", "a")
    assert retries.failed(key) == 1
    assert retries.due() == []
    clock.now += 1
    assert retries.due() == [key]
    assert [retries.failed(key), retries.failed(key)] == [2, 5]  # the second is merged with the scheduled one
    assert retries.failed(key) is None  # used up: the periodic pass retries it
    clock.now += 2
    assert retries.due() == [key]
    retries.succeeded(key)
    assert retries.failed(key) == 1  # a success starts the count again
    retries.forget(key)
    clock.now += 10
    assert retries.due() == [] and retries.pending() == 0
