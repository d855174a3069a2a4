"""Announcing retraining candidates to ``spec.retraining.notify.url``, outside every reconcile pass.

The receiver is someone else's server, so nothing about it may hold the operator:

- **An outbox.** A pass only *submits* a :class:`Notification`; an :class:`Outbox` with its own
  thread and event loop delivers it. The outbox holds at most ``capacity`` notifications;
  when full, the oldest is dropped with a log line and recorded as not delivered.
- **A total deadline per attempt** (``deadline_seconds``), covering connect, headers and
  body together: a receiver that drips one byte every 2 s is cut at the deadline, whereas
  a per-read timeout would never fire.
- **A small reply.** The body is streamed and at most ``body_limit_bytes`` are read, then
  the connection is closed: a 256 MiB answer costs nothing.
- **Retries with backoff** (``attempts``; ``backoff_seconds``, doubling), then the outcome is
  kept in memory until a pass folds it into ``status.retraining.lastRun.notified`` and
  :meth:`Outbox.settle` drops it. ``on_result`` is called with the object's key so the
  handlers can trigger that pass.
- **No credentials in logs.** A webhook URL is often a secret (Slack-style hooks carry
  the token in the path): logs show its scheme and host only (:func:`redacted`).

Delivery is at least once: a notification whose outcome was not yet written when the
operator stopped is sent again by the next operator.
"""

import asyncio
import ipaddress
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from modelops.api.v1alpha1 import RetrainingRun
from modelops.metrics import operator_metrics as metrics

log = logging.getLogger("modelops")
NotificationKey = tuple[str, str, str]  # namespace, ModelDeployment, Job


@dataclass(frozen=True)
class DeliverySettings:
    deadline_seconds: float = 10.0
    """Total time for one attempt: connect, send, status line, headers and the capped body."""

    attempts: int = 3
    """Attempts per notification, the first included."""

    backoff_seconds: float = 1.0
    """Wait before the second attempt; doubles for each further one."""

    body_limit_bytes: int = 4096
    """The most of a reply that is read before the connection is closed."""

    capacity: int = 256
    """Notifications waiting for delivery; when full, the oldest is dropped (not delivered)."""

    concurrency: int = 4
    """Deliveries in progress at once."""

    allowed_hosts: tuple[str, ...] = ()
    """Hosts a notification may go to (``--notify-allowed-hosts``): exact names, or ``*.example.com`` for
    any subdomain. Empty: any host except loopback, link-local and unspecified addresses."""


@dataclass(frozen=True)
class Notification:
    namespace: str
    name: str
    job: str
    url: str
    payload: Mapping[str, Any]

    @property
    def key(self) -> NotificationKey:
        return (self.namespace, self.name, self.job)


def notification(url: str, namespace: str, name: str, run: RetrainingRun) -> Notification:
    """The JSON announced for a finished run: its ModelDeployment, Job, trigger and candidate."""
    payload = {
        "modelDeployment": {"namespace": namespace, "name": name},
        "job": run.job,
        "trigger": run.trigger,
        "candidate": run.candidate.model_dump(mode="json", by_alias=True) if run.candidate else None,
    }
    return Notification(namespace, name, run.job, url, payload)


def redacted(url: str) -> str:
    """Scheme and host (with port) only: paths, queries and user info of webhooks are credentials.

    >>> redacted("https://user:pw@hooks.example.com:8443/services/T0/B0/XXXX?token=1")
    'https://hooks.example.com:8443'
    >>> redacted("not a url")
    '(invalid URL)'
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"
    if not parsed.scheme or not parsed.host:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


async def _nothing() -> AsyncIterator[bytes]:
    """No body to read (a reply that was already read, as test transports build them)."""
    return
    yield b""


def destination_problem(url: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why the operator must not POST to ``url`` (None: it may).

    The URL comes from a tenant, and the operator sits inside the cluster: without a check it is a
    proxy into places the tenant cannot reach. Only http(s) goes out; with ``allowed_hosts`` set, only
    to those hosts; IP literals of the node itself (loopback, link-local such as a cloud metadata
    service at 169.254.169.254, unspecified) only when listed exactly.

    >>> destination_problem("https://hooks.example.com/x", ("*.example.com",)) is None
    True
    >>> destination_problem("https://evil.test/x", ("*.example.com",))
    'host evil.test is not in --notify-allowed-hosts'
    >>> destination_problem("http://169.254.169.254/latest/meta-data", ())
    'host 169.254.169.254 is a loopback, link-local or unspecified address'
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "not a URL"
    host = (parsed.host or "").lower().rstrip(".")
    if parsed.scheme not in ("http", "https") or not host:
        return "only http and https URLs with a host are allowed"
    if host in allowed_hosts:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and (address.is_loopback or address.is_link_local or address.is_unspecified):
        return f"host {host} is a loopback, link-local or unspecified address"
    if allowed_hosts and not any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in allowed_hosts):
        return f"host {host} is not in --notify-allowed-hosts"
    return None


async def attempt(client: httpx.AsyncClient, item: Notification, settings: DeliverySettings) -> str | None:
    """One POST under a total deadline; None when the receiver answered 2xx, else why not.
    Redirects are not followed (a 3xx is not a delivery): the destination check would not see them."""
    try:
        async with asyncio.timeout(settings.deadline_seconds):
            async with client.stream("POST", item.url, json=dict(item.payload), timeout=settings.deadline_seconds) as response:
                read = 0
                async for chunk in response.aiter_raw() if not response.is_stream_consumed else _nothing():
                    read += len(chunk)
                    if read >= settings.body_limit_bytes:
                        break  # the rest is discarded when the stream closes
                return None if response.is_success else f"HTTP {response.status_code}"
    except TimeoutError:
        return f"no complete answer within {settings.deadline_seconds:g}s"
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as error:
        return type(error).__name__


async def deliver(client: httpx.AsyncClient, item: Notification, settings: DeliverySettings) -> bool:
    """Up to ``settings.attempts`` attempts with doubling backoff; one log line per failed attempt.
    A destination the operator may not reach is refused without any attempt."""
    refused = destination_problem(item.url, settings.allowed_hosts)
    if refused is not None:
        log.warning("notify %s for %s/%s (%s) refused: %s", redacted(item.url), item.namespace, item.name, item.job, refused)
        return False
    for number in range(1, settings.attempts + 1):
        problem = await attempt(client, item, settings)
        if problem is None:
            return True
        log.warning("notify %s for %s/%s (%s): %s (attempt %d/%d)", redacted(item.url), item.namespace, item.name,
                    item.job, problem, number, settings.attempts)
        if number < settings.attempts:
            await asyncio.sleep(settings.backoff_seconds * 2 ** (number - 1))
    return False


class Outbox:
    """A bounded queue of notifications, delivered by a thread of its own; thread-safe."""

    def __init__(
        self,
        settings: DeliverySettings = DeliverySettings(),
        on_result: Callable[[str, str], None] = lambda namespace, name: None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._on_result = on_result
        self._transport = transport
        self._guard = threading.Lock()
        self._queue: deque[Notification] = deque()
        self._pending: set[NotificationKey] = set()  # queued or being delivered
        self._results: dict[NotificationKey, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- called by passes ----------------------------------------------------------------------

    def submit(self, item: Notification) -> None:
        """Queues ``item`` unless it is already queued, being delivered, or has an outcome."""
        dropped: Notification | None = None
        with self._guard:
            if item.key in self._pending or item.key in self._results:
                return
            if len(self._queue) >= self.settings.capacity:
                dropped = self._queue.popleft()
                self._pending.discard(dropped.key)
                self._results[dropped.key] = False
            self._queue.append(item)
            self._pending.add(item.key)
            metrics.notify_queued.set(len(self._queue))
        if dropped is not None:
            metrics.notifications.labels("dropped").inc()
            log.warning("notify outbox full (%d): dropped the oldest notification, for %s/%s (%s)",
                        self.settings.capacity, dropped.namespace, dropped.name, dropped.job)
            self._on_result(dropped.namespace, dropped.name)
        self._wake_up()

    def result(self, namespace: str, name: str, job: str) -> bool | None:
        """True: delivered; False: given up; None: not submitted or still pending."""
        with self._guard:
            return self._results.get((namespace, name, job))

    def settle(self, namespace: str, name: str, job: str) -> None:
        """The outcome is in status now: forget it."""
        with self._guard:
            self._results.pop((namespace, name, job), None)

    def forget(self, namespace: str, name: str) -> None:
        """The ModelDeployment is gone: drop its queued notifications and outcomes."""
        with self._guard:
            self._queue = deque(item for item in self._queue if (item.namespace, item.name) != (namespace, name))
            self._pending = {key for key in self._pending if key[:2] != (namespace, name)}
            self._results = {key: value for key, value in self._results.items() if key[:2] != (namespace, name)}

    def sizes(self) -> dict[str, int]:
        with self._guard:
            return {"queued": len(self._queue), "pending": len(self._pending), "results": len(self._results)}

    # --- the delivery thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="modelops-notify", daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake_up()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _wake_up(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the loop has ended (stopping)

    def _take(self) -> Notification | None:
        with self._guard:
            item = self._queue.popleft() if self._queue else None
            metrics.notify_queued.set(len(self._queue))
            return item

    async def _serve(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        slots = asyncio.Semaphore(self.settings.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(transport=self._transport, follow_redirects=False) as client:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while not self._stopping:
                    await slots.acquire()
                    item = self._take()
                    if item is None:
                        slots.release()
                        break
                    task = asyncio.create_task(self._deliver(client, item, slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, client: httpx.AsyncClient, item: Notification, slots: asyncio.Semaphore) -> None:
        try:
            delivered = await deliver(client, item, self.settings)
        finally:
            slots.release()
        with self._guard:
            if item.key not in self._pending:
                return  # forgotten meanwhile: the object is gone
            self._pending.discard(item.key)
            self._results[item.key] = delivered
        metrics.notifications.labels("delivered" if delivered else "failed").inc()
        self._on_result(item.namespace, item.name)
