"""The operator's memory of the objects it watches, and how that memory is freed.

Everything the operator keeps per ModelDeployment lives here, keyed by ``(namespace, name)``,
so that one call (:meth:`ObjectRegistry.forget`) frees all of it:

- the spec and status last seen on the watch (parsed once, read by the analysis tick);
- the per-object lock that keeps two passes of one object apart;
- when the watch last announced the object (to tell a vanished object from a new one).

An object is forgotten when the watch says DELETED, when it carries a ``deletionTimestamp``
(a foreign finalizer may keep it for hours: it is no longer ours to reconcile or analyse),
when a pass reads it and gets 404, and when the periodic pass's LIST no longer contains it
(kopf announces no DELETED for objects removed while its watch was relisting).

Locks are reference-counted: a lock is dropped only when no pass holds or waits for it, so
pruning never hands a second pass a fresh lock while the first still holds the old one. A
pass waits for a lock at most ``timeout`` seconds and is skipped after that: a stuck pass on
one object must not stall the passes of the others.

No kopf and no I/O here; the handlers wire it to the watch.
"""

import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Key = tuple[str, str]
T = TypeVar("T")
log = logging.getLogger("modelops")


@dataclass
class _Lock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # passes holding or waiting for it


class ObjectRegistry(Generic[T]):
    """The watched objects with their parsed bodies and locks; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._guard = threading.Lock()
        self._watched: dict[Key, T | None] = {}
        self._seen_at: dict[Key, float] = {}
        self._locks: dict[Key, _Lock] = {}

    # --- what the watch announced ------------------------------------------------------------

    def remember(self, key: Key, parsed: T | None) -> None:
        with self._guard:
            self._watched[key] = parsed
            self._seen_at[key] = self._clock()

    def forget(self, key: Key, unless_seen_after: float | None = None) -> bool:
        """Drops everything kept for ``key``; True when it was known. Its lock goes once no pass uses it.

        With ``unless_seen_after``, an object the watch announced after that moment is kept (and
        False returned): it is a new object of the same name, not the one found gone.
        """
        with self._guard:
            seen = self._seen_at.get(key)
            if unless_seen_after is not None and seen is not None and seen > unless_seen_after:
                return False
            known = key in self._watched
            self._watched.pop(key, None)
            self._seen_at.pop(key, None)
            entry = self._locks.get(key)
            if entry is not None and entry.users == 0:
                del self._locks[key]
        return known

    def __len__(self) -> int:
        with self._guard:
            return len(self._watched)

    def knows(self, key: Key) -> bool:
        with self._guard:
            return key in self._watched

    def snapshot(self) -> dict[Key, T | None]:
        with self._guard:
            return dict(self._watched)

    def keys(self) -> list[Key]:
        with self._guard:
            return sorted(self._watched)

    def now(self) -> float:
        return self._clock()

    def vanished(self, live: Iterable[Key], listed_at: float) -> list[Key]:
        """Known objects missing from a LIST started at ``listed_at`` (monotonic) and not announced
        since: an object the watch announced after the LIST began may simply be newer than it."""
        present = set(live)
        with self._guard:
            return sorted(key for key, seen in self._seen_at.items() if key not in present and seen < listed_at)

    # --- per-object locks ----------------------------------------------------------------------

    @contextmanager
    def hold(self, key: Key, timeout: float) -> Iterator[bool]:
        """The object's lock, waited for at most ``timeout`` seconds; yields False when it was not acquired."""
        with self._guard:
            entry = self._locks.setdefault(key, _Lock())
            entry.users += 1
        acquired = entry.lock.acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                entry.lock.release()
            with self._guard:
                entry.users -= 1
                if entry.users == 0 and key not in self._watched and self._locks.get(key) is entry:
                    del self._locks[key]

    def sizes(self) -> dict[str, int]:
        """How many entries each structure holds (for tests and benchmarks)."""
        with self._guard:
            return {"watched": len(self._watched), "seen": len(self._seen_at), "locks": len(self._locks)}


class Dispatched:
    """Analyses handed to a worker, kept out of the next ticks until their result is seen.

    A canary's status says when its next analysis is due; that status changes only once the
    pass with the verdicts has written it and the watch has delivered it. Until then the
    same canary must not be dispatched again. An entry stays while its analysis runs, and
    afterwards until the watch brings a new body (``current is not dispatched_with``) or
    ``settle_seconds`` pass (the pass wrote nothing, or was skipped).
    """

    def __init__(self, settle_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._settle = settle_seconds
        self._clock = clock
        self._guard = threading.Lock()
        self._entries: dict[Hashable, tuple[object, float | None]] = {}  # key -> (body seen, finished at)

    def blocked(self, key: Hashable, current: object) -> bool:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                return False
            seen, finished = entry
            if finished is not None and (current is not seen or self._clock() - finished >= self._settle):
                del self._entries[key]
                return False
            return True

    def start(self, key: Hashable, current: object) -> None:
        with self._guard:
            self._entries[key] = (current, None)

    def finish(self, key: Hashable) -> None:
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = (entry[0], self._clock())

    def forget(self, key: Hashable) -> None:
        with self._guard:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)


RETRY_DELAYS_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class RetryScheduler:
    """Runs a failed object's pass again after a backoff (1, 2, 5, 10, 30 s), at most
    ``len(delays)`` times in a row; after that the periodic pass is its retry.

    At most one retry is scheduled per object; a pass that succeeds resets its count. One
    daemon thread sleeps until the earliest retry is due and hands it to ``run`` (which
    must not block: it submits the pass to a worker pool).
    """

    def __init__(self, run: Callable[[Key], Any], delays: tuple[float, ...] = RETRY_DELAYS_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run = run
        self._delays = delays
        self._clock = clock
        self._condition = threading.Condition()
        self._heap: list[tuple[float, Key]] = []
        self._scheduled: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    def failed(self, key: Key) -> float | None:
        """Records a failed pass; the delay until its retry, or None when the retries are used up."""
        with self._condition:
            count = self._failures.get(key, 0)
            if count >= len(self._delays):
                return None
            self._failures[key] = count + 1
            delay = self._delays[count]
            if key not in self._scheduled:
                due = self._clock() + delay
                self._scheduled[key] = due
                heapq.heappush(self._heap, (due, key))
                self._condition.notify()
            return delay

    def succeeded(self, key: Key) -> None:
        with self._condition:
            self._failures.pop(key, None)

    def forget(self, key: Key) -> None:
        with self._condition:
            self._failures.pop(key, None)
            self._scheduled.pop(key, None)  # its heap entry is skipped when it comes up

    def pending(self) -> int:
        with self._condition:
            return len(self._scheduled) + len(self._failures)

    def due(self) -> list[Key]:
        """Pops the retries due now (the thread calls this; tests may too)."""
        now = self._clock()
        ready: list[Key] = []
        with self._condition:
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                if self._scheduled.get(key) == due:
                    del self._scheduled[key]
                    ready.append(key)
        return ready

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="modelops-retries", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def _loop(self) -> None:
        while True:
            with self._condition:
                if self._stopped:
                    return
                wait = (self._heap[0][0] - self._clock()) if self._heap else None
                if wait is None or wait > 0:
                    self._condition.wait(timeout=wait)
                    continue
            for key in self.due():
                try:
                    self._run(key)
                except Exception:  # noqa: BLE001 - the retry thread must survive a broken submit
                    log.exception("could not start the retry of %s/%s", *key)
