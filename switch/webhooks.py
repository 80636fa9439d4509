"""Durable webhook delivery: events go to an outbox table first, then a worker POSTs them.

:meth:`WebhookDispatcher.emit` writes one outbox row per subscribed target and commits it
before returning, so an event acknowledged to the caller survives a crash or restart. The
worker POSTs due rows, marks them delivered on a 2xx answer and otherwise retries with
capped exponential backoff until the item's ``max_attempts``, after which it is "dead".
Delivery is at-least-once: receivers deduplicate on the ``X-Event-Id`` header.

Signatures are pluggable (:func:`register_signer`); the built-in ``hmac-sha256`` signer
sends ``X-Softswitch-Signature: t=<unix>,v1=<hex hmac-sha256 of "<t>." + body>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import httpx

from switch.store import OutboxItem, Store

__all__ = [
    "HmacSha256Signer",
    "Signer",
    "WebhookDispatcher",
    "WebhookTarget",
    "make_signer",
    "register_signer",
]

logger = logging.getLogger(__name__)

USER_AGENT: Final = "softswitch"
_MAX_ERROR_LEN: Final = 500
# When a row is pending but not yet due, the worker still looks again this often, so a clock
# that jumped (or a virtual clock in tests) does not leave it waiting.
_MAX_IDLE: Final = 1.0
# With nothing pending at all, every row can only come from emit()/send() in this process,
# which wake the worker; it looks again this rarely in case another process shares the
# database. Polling every second cost a 2 ms database round trip (SQLAlchemy, on the event
# loop) each time: a stall of the RTP relay that showed as its p99 delay (bench.relay).
_EMPTY_IDLE: Final = 30.0
# Pause after an unexpected error (e.g. the database is unavailable) before trying again.
_ERROR_PAUSE: Final = 0.5


# --------------------------------------------------------------------------- signing


@runtime_checkable
class Signer(Protocol):
    """Computes signature headers for one delivery attempt.

    ``body`` is the exact request body, ``event`` the decoded JSON body (``{}`` when it is
    not a JSON object) for vendors that sign selected fields, ``timestamp`` the send time.
    """

    def headers(self, body: bytes, event: dict[str, Any], timestamp: float) -> dict[str, str]:
        """Headers to add to the request."""
        ...


class HmacSha256Signer:
    """``<header>: t=<unix int>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``.

    The timestamp is inside the MAC so a receiver can refuse replays of old requests.
    """

    def __init__(self, secret: str, header: str = "X-Softswitch-Signature") -> None:
        if not secret:
            raise ValueError("HMAC signer needs a non-empty secret")
        self._key = secret.encode()
        self.header = header

    def __repr__(self) -> str:  # never show the secret
        return f"HmacSha256Signer(header={self.header!r})"

    def sign(self, body: bytes, timestamp: int) -> str:
        """The hex MAC for ``body`` sent at ``timestamp``."""
        return hmac.new(self._key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()

    def headers(self, body: bytes, event: dict[str, Any], timestamp: float) -> dict[str, str]:
        """The signature header for ``body``."""
        t = int(timestamp)
        return {self.header: f"t={t},v1={self.sign(body, t)}"}

    def verify(self, body: bytes, value: str, *, now: float | None = None,
               tolerance: float = 300.0) -> bool:
        """Receiver side: True when ``value`` (the header) signs ``body`` and its timestamp
        is within ``tolerance`` seconds of ``now`` (default: the current time)."""
        fields: dict[str, list[str]] = {}
        for part in value.split(","):
            key, sep, val = part.strip().partition("=")
            if sep:
                fields.setdefault(key, []).append(val)
        try:
            t = int(fields["t"][0])
        except (KeyError, ValueError):
            return False
        current = time.time() if now is None else now
        if abs(current - t) > tolerance:
            return False
        expected = self.sign(body, t)
        return any(hmac.compare_digest(expected, mac) for mac in fields.get("v1", []))


def _hmac_factory(options: dict[str, Any]) -> Signer:
    secret = options.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ValueError("hmac-sha256 signer needs a non-empty string option 'secret'")
    header = options.get("header", "X-Softswitch-Signature")
    if not isinstance(header, str) or not header:
        raise ValueError("hmac-sha256 signer option 'header' must be a non-empty string")
    return HmacSha256Signer(secret, header)


_SIGNERS: dict[str, Callable[[dict[str, Any]], Signer]] = {"hmac-sha256": _hmac_factory}


def register_signer(name: str, factory: Callable[[dict[str, Any]], Signer]) -> None:
    """Make a signer available to :func:`make_signer` under ``name`` (replacing any
    previous registration of that name). ``factory`` receives the options dict."""
    if not name:
        raise ValueError("signer name must be non-empty")
    _SIGNERS[name] = factory


def make_signer(name: str, options: dict[str, Any]) -> Signer:
    """Build a registered signer; ``"hmac-sha256"`` takes ``{"secret": ...}``.

    Raises ValueError for an unknown name or bad options.
    """
    factory = _SIGNERS.get(name)
    if factory is None:
        known = ", ".join(sorted(_SIGNERS))
        raise ValueError(f"unknown webhook signer {name!r} (known: {known})")
    return factory(dict(options))


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class WebhookTarget:
    """A configured webhook receiver.

    ``events`` are event names or shell-style patterns (``"*"`` = everything,
    ``"call.*"``). Backoff before retry n (1-based) is
    ``min(backoff_initial * 2**(n-1), backoff_max)`` plus up to 10% jitter.
    """

    name: str
    url: str
    events: tuple[str, ...] = ("*",)
    signer: Signer | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_attempts: int = 10
    backoff_initial: float = 1.0
    backoff_max: float = 300.0

    def wants(self, event: str) -> bool:
        """True when this target subscribes to ``event``."""
        return any(fnmatch.fnmatchcase(event, pattern) for pattern in self.events)


# Delivery policy for ad-hoc URLs and for rows whose target is no longer configured.
_DEFAULT_TARGET: Final = WebhookTarget(name="", url="")


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid webhook URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"webhook URL must be http(s)://host/..., not {url!r}")


def _envelope(event_id: str, event: str, now: float, payload: dict[str, Any]) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and would break strict receivers.
    return json.dumps({"id": event_id, "event": event, "time": now, "data": payload},
                      separators=(",", ":"), allow_nan=False).encode()


# --------------------------------------------------------------------------- dispatcher


class WebhookDispatcher:
    """Fans events out to :class:`WebhookTarget` s through the store's durable outbox.

    ``clock`` is used for event times, due times and signature timestamps (tests inject a
    fake one); ``transport`` replaces httpx's network transport (e.g. ``httpx.MockTransport``).
    ``stats`` counts "enqueued", "delivered", "failed_attempts" and "dead".
    """

    #: Deliveries in flight at once.
    max_concurrency: int = 16
    #: How long :meth:`stop` lets in-flight deliveries finish before cancelling them.
    stop_grace: float = 2.0

    def __init__(self, store: Store, targets: Sequence[WebhookTarget] = (), *,
                 clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate webhook target names in {names}")
        for target in targets:
            if not target.name:
                raise ValueError("webhook target name must be non-empty")
            _check_url(target.url)
            if target.max_attempts < 1:
                raise ValueError(f"webhook {target.name!r}: max_attempts must be >= 1")
        self._store = store
        self._targets: dict[str, WebhookTarget] = {t.name: t for t in targets}
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        # Item ids claimed by a running delivery task: the guard against sending (and
        # marking) the same row twice when the worker and flush() poll concurrently.
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Signers passed to send(): not storable, so only known until this process ends
        # (the row also carries headers signed at enqueue time as a fallback).
        self._adhoc_signers: dict[str, Signer] = {}
        self.stats: Counter[str] = Counter()

    @property
    def targets(self) -> tuple[WebhookTarget, ...]:
        """The configured targets."""
        return tuple(self._targets.values())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the delivery worker; rows left pending by a previous run are picked up."""
        if self._worker is not None:
            return
        self._ensure_client()
        self._worker = asyncio.create_task(self._run(), name="webhook-dispatcher")
        self._wake.set()

    async def stop(self) -> None:
        """Stop the worker and close the HTTP client; undelivered rows stay pending.

        In-flight deliveries get :attr:`stop_grace` seconds to finish, then are cancelled
        (they will be retried by the next run, so a receiver may see them twice).
        """
        worker, self._worker = self._worker, None
        if worker is not None:
            # Let the worker leave at its loop boundary rather than cancelling it in the middle
            # of a store transaction (a cancelled SQLAlchemy/aiosqlite checkout can leave the
            # connection unusable for the store's next reader); cancel only if it is stuck.
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(worker), self.stop_grace)
            except TimeoutError:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            self._stopping = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.stop_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> WebhookDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ enqueueing

    async def emit(self, event: str, payload: dict[str, Any], *,
                   event_id: str | None = None) -> str:
        """Queue ``event`` for every target subscribed to it and return the event id.

        The body is ``{"id", "event", "time", "data": payload}`` as compact JSON. The rows
        are committed before this returns; an event no target wants is not stored.
        """
        eid = event_id or str(uuid.uuid4())
        now = self._clock()
        body = _envelope(eid, event, now, payload)
        items = [
            OutboxItem(id=f"{eid}:{t.name}", event_id=eid, target=t.name, url=t.url,
                       body=body, headers={}, created_at=now, next_at=now,
                       max_attempts=t.max_attempts)
            for t in self._targets.values() if t.wants(event)
        ]
        if items:
            await self._store.outbox_add_many(items)
            self.stats["enqueued"] += len(items)
            self._wake.set()
        return eid

    async def send(self, url: str, payload: dict[str, Any], *, event_id: str | None = None,
                   signer: Signer | None = None, headers: dict[str, str] | None = None,
                   body: bytes | None = None, target: str = "",
                   max_attempts: int = 10) -> str:
        """Queue one delivery to ``url`` (e.g. a callback URL named in an API request).

        ``body`` replaces the default ``{"id","event","time","data"}`` envelope (whose
        ``event`` is ``"callback"``) for vendors with their own JSON shape. ``signer``
        signs each attempt; if this process restarts before delivery, the signature
        computed now is sent instead. A ``target`` naming a configured target lends its
        signer (when ``signer`` is None), timeouts and backoff. Returns the event id.
        Sending the same event id to the same URL twice queues it once.
        """
        _check_url(url)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        eid = event_id or str(uuid.uuid4())
        now = self._clock()
        data = body if body is not None else _envelope(eid, "callback", now, payload)
        extra = dict(headers or {})
        if signer is not None:
            extra.update(signer.headers(data, _decode_event(data), now))
        if target:
            item_id = f"{eid}:{target}"
        else:
            # The URL is part of the id so one event can go to several ad-hoc URLs.
            item_id = f"{eid}:url:{hashlib.sha256(url.encode()).hexdigest()[:16]}"
        item = OutboxItem(id=item_id, event_id=eid, target=target, url=url, body=data,
                          headers=extra, created_at=now, next_at=now,
                          max_attempts=max_attempts)
        await self._store.outbox_add(item)
        if signer is not None:
            self._adhoc_signers[item_id] = signer
        self.stats["enqueued"] += 1
        self._wake.set()
        return eid

    # ------------------------------------------------------------------ delivering

    async def flush(self, timeout: float = 5.0) -> None:
        """Deliver everything due at ``clock()`` now and wait for in-flight attempts.

        Failed attempts are rescheduled into the future and not waited for. Works with or
        without :meth:`start`. Raises TimeoutError if work remains after ``timeout``.
        """
        self._ensure_client()
        async with asyncio.timeout(timeout):
            while True:
                started = await self._pump()
                if started == 0 and not self._tasks:
                    return
                if self._tasks:
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            # Timeouts are set per request from the target; one client keeps the pool.
            self._client = httpx.AsyncClient(transport=self._transport,
                                             follow_redirects=False, trust_env=False)
        return self._client

    async def _run(self) -> None:
        """The worker: start due deliveries, then sleep until the next one is due."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self._pump()
                delay = await self._idle_delay()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broken database must not kill delivery for good: log and poll again.
                logger.exception("webhook worker error")
                delay = _ERROR_PAUSE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _idle_delay(self) -> float:
        if len(self._inflight) >= self.max_concurrency:
            return _MAX_IDLE  # a finishing delivery sets _wake
        next_at = await self._store.outbox_next_due(exclude=self._inflight)
        if next_at is None:
            return _EMPTY_IDLE
        return min(max(next_at - self._clock(), 0.001), _MAX_IDLE)

    async def _pump(self) -> int:
        """Claim due items and start a delivery task for each; returns how many started."""
        room = self.max_concurrency - len(self._inflight)
        if room <= 0:
            return 0
        due = await self._store.outbox_due(self._clock(), limit=room + len(self._inflight))
        started = 0
        for item in due:
            if item.id in self._inflight or len(self._inflight) >= self.max_concurrency:
                continue
            self._inflight.add(item.id)
            task = asyncio.create_task(self._deliver(item), name=f"webhook {item.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            # `item` may be a snapshot read before another task finished with the row;
            # re-read now that it is claimed so a delivered row is never sent again.
            fresh = await self._store.outbox_get(item.id)
            if fresh is None or fresh.state != "pending" or fresh.attempts != item.attempts:
                return
            await self._attempt(fresh)
        except Exception:
            logger.exception("webhook delivery %s failed unexpectedly", item.id)
            # Typically the store is failing; holding the claim a moment keeps the row
            # (still pending and due) from being re-sent in a tight loop.
            await asyncio.sleep(_ERROR_PAUSE)
        finally:
            self._inflight.discard(item.id)
            self._wake.set()

    async def _attempt(self, item: OutboxItem) -> None:
        policy = self._targets.get(item.target, _DEFAULT_TARGET)
        error, retry_after = await self._post(item, policy)
        now = self._clock()
        item.attempts += 1
        if error is None:
            item.state, item.delivered_at, item.last_error = "delivered", now, None
            self.stats["delivered"] += 1
        else:
            item.last_error = error[:_MAX_ERROR_LEN]
            self.stats["failed_attempts"] += 1
            if item.attempts >= item.max_attempts:
                item.state = "dead"
                self.stats["dead"] += 1
                logger.warning("webhook %s to %s dead after %d attempts: %s",
                               item.id, item.url, item.attempts, item.last_error)
            else:
                item.next_at = now + max(_backoff(policy, item.attempts), retry_after)
                logger.info("webhook %s attempt %d failed (%s); retry in %.2fs", item.id,
                            item.attempts, item.last_error, item.next_at - now)
        await self._store.outbox_update(item)
        if item.state != "pending":
            self._adhoc_signers.pop(item.id, None)

    async def _post(self, item: OutboxItem, policy: WebhookTarget) -> tuple[str | None, float]:
        """One POST; returns (error or None on 2xx, server-requested retry delay)."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "X-Event-Id": item.event_id}
        headers.update(item.headers)
        signer = self._adhoc_signers.get(item.id) or policy.signer
        if signer is not None:
            try:
                headers.update(signer.headers(item.body, _decode_event(item.body),
                                              self._clock()))
            except Exception as exc:
                logger.exception("webhook signer for %s failed", item.id)
                return f"signer error: {type(exc).__name__}: {exc}", 0.0
        timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
        try:
            response = await self._ensure_client().post(
                item.url, content=item.body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}".rstrip(": "), 0.0
        if 200 <= response.status_code < 300:
            return None, 0.0
        retry_after = _retry_after(response, policy.backoff_max)
        return f"HTTP {response.status_code}", retry_after


def _backoff(policy: WebhookTarget, failures: int) -> float:
    """Delay before the next attempt after ``failures`` failed ones (>= 1)."""
    base = min(policy.backoff_initial * (2.0 ** min(failures - 1, 60)), policy.backoff_max)
    # Jitter spreads retries of many events that failed together (receiver outage).
    return base * (1.0 + random.uniform(0.0, 0.1))


def _retry_after(response: httpx.Response, cap: float) -> float:
    if response.status_code not in (429, 503):
        return 0.0
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return 0.0  # HTTP-date form: not worth parsing, the normal backoff applies
    return min(max(seconds, 0.0), cap) if math.isfinite(seconds) else 0.0


def _decode_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
