"""Tests for switch.webhooks against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from switch.store import OutboxItem, Store
from switch.webhooks import (
    HmacSha256Signer,
    Signer,
    WebhookDispatcher,
    WebhookTarget,
    make_signer,
    register_signer,
)

# --------------------------------------------------------------------------- helpers


class FakeClock:
    """A controllable clock: due times only move when the test says so."""

    def __init__(self, start: float = 1_700_000_000.25) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    action: str


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server. Each request consumes the next action of ``plan``
    ("ok", an HTTP status such as "500", "drop" = close without answering, "hang" = never
    answer), then ``default``. One request per connection (Connection: close)."""

    plan: list[str] = field(default_factory=list)
    default: str = "ok"
    requests: list[Received] = field(default_factory=list)
    ok_by_id: Counter[str] = field(default_factory=Counter)  # 2xx answers per X-Event-Id

    def __post_init__(self) -> None:
        # Bound but not listening: connections are refused until start(), yet the port is
        # ours for the whole test (a restarted receiver must be at the same URL).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    async def close(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        else:
            self._sock.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            action = self.plan.pop(0) if self.plan else self.default
            self.requests.append(Received(method, path, headers, body, action))
            if action == "drop":
                return
            if action == "hang":
                await self._stopping.wait()
                return
            status = 200 if action == "ok" else int(action)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            if 200 <= status < 300:
                self.ok_by_id[headers.get("x-event-id", "")] += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(str(tmp_path / "hooks.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll until ``predicate`` holds (a bound on waiting, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


def fast_target(name: str, url: str, **kw: Any) -> WebhookTarget:
    options: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.05,
                               "connect_timeout": 2.0, "read_timeout": 5.0}
    options.update(kw)
    return WebhookTarget(name=name, url=url, **options)


async def items_of(store: Store, event_id: str, target: str) -> OutboxItem:
    item = await store.outbox_get(f"{event_id}:{target}")
    assert item is not None
    return item


# --------------------------------------------------------------------------- delivery


async def test_every_event_delivered_exactly_once_despite_failures(
        store: Store, receiver: Receiver) -> None:
    receiver.plan = ["500", "drop", "500", "drop", "503"]
    dispatcher = WebhookDispatcher(store, [fast_target("crm", receiver.url())])
    await dispatcher.start()
    try:
        ids = [await dispatcher.emit("completed", {"call_id": f"c{n}", "n": n})
               for n in range(20)]
        # flush() racing the worker must not deliver anything twice either.
        await asyncio.gather(dispatcher.flush(), dispatcher.flush())

        async def all_delivered() -> bool:
            return (await store.outbox_counts())["delivered"] == 20

        await wait_until(all_delivered)
    finally:
        await dispatcher.stop()

    assert len(set(ids)) == 20
    assert set(receiver.ok_by_id) == set(ids)
    assert all(count == 1 for count in receiver.ok_by_id.values()), receiver.ok_by_id
    assert len(receiver.requests) == 25
    assert dispatcher.stats["enqueued"] == 20
    assert dispatcher.stats["delivered"] == 20
    assert dispatcher.stats["failed_attempts"] == 5
    assert dispatcher.stats["dead"] == 0
    for req in receiver.requests:
        envelope = json.loads(req.body)
        assert set(envelope) == {"id", "event", "time", "data"}
        assert envelope["id"] == req.headers["x-event-id"]
        assert envelope["event"] == "completed"
        assert envelope["data"]["call_id"] == f"c{envelope['data']['n']}"
        assert req.method == "POST" and req.path == "/hook"
        assert req.headers["content-type"] == "application/json"
        assert req.headers["user-agent"] == "softswitch"
    assert await store.outbox_counts() == {"pending": 0, "delivered": 20, "dead": 0}


async def test_pending_events_survive_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "restart.db")
    clock = FakeClock()
    receiver = Receiver()  # down: connections refused
    try:
        store1 = Store(db)
        await store1.start()
        targets = [fast_target("crm", receiver.url())]
        d1 = WebhookDispatcher(store1, targets, clock=clock)
        await d1.start()
        ids = [await d1.emit("cdr", {"n": n}) for n in range(3)]
        await d1.flush()
        for eid in ids:
            item = await items_of(store1, eid, "crm")
            assert item.state == "pending" and item.attempts == 1
            assert item.last_error is not None and "Connect" in item.last_error
        await d1.stop()
        await store1.close()

        await receiver.start()
        clock.advance(60.0)
        store2 = Store(db)
        await store2.start()
        d2 = WebhookDispatcher(store2, targets, clock=clock)
        await d2.start()
        try:
            async def all_delivered() -> bool:
                return (await store2.outbox_counts())["delivered"] == 3

            await wait_until(all_delivered)
        finally:
            await d2.stop()
        for eid in ids:
            item = await items_of(store2, eid, "crm")
            assert item.state == "delivered" and item.attempts == 2
            assert item.delivered_at == clock.now and item.last_error is None
        await store2.close()
    finally:
        await receiver.close()
    assert receiver.ok_by_id == Counter(dict.fromkeys(ids, 1))
    assert d2.stats["delivered"] == 3


async def test_hmac_signature_verifies_on_receiver(store: Store, receiver: Receiver) -> None:
    clock = FakeClock(1_700_000_123.75)
    signer = make_signer("hmac-sha256", {"secret": "s3cret"})
    dispatcher = WebhookDispatcher(
        store, [fast_target("crm", receiver.url(), signer=signer)], clock=clock)
    eid = await dispatcher.emit("answered", {"call_id": "x", "text": "ünïcode"})
    await dispatcher.flush()
    await dispatcher.stop()

    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    value = req.headers["x-softswitch-signature"]
    parts = dict(p.split("=", 1) for p in value.split(","))
    assert parts["t"] == "1700000123"
    expected = hmac.new(b"s3cret", b"1700000123." + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert req.headers["x-event-id"] == eid
    assert json.loads(req.body)["data"]["text"] == "ünïcode"
    verifier = HmacSha256Signer("s3cret")
    assert verifier.verify(req.body, value, now=clock.now)
    assert not verifier.verify(req.body + b" ", value, now=clock.now)
    assert not verifier.verify(req.body, value, now=clock.now + 3600)
    assert not HmacSha256Signer("other").verify(req.body, value, now=clock.now)


async def test_max_attempts_then_dead(store: Store, receiver: Receiver) -> None:
    receiver.default = "500"
    clock = FakeClock()
    dispatcher = WebhookDispatcher(
        store, [fast_target("crm", receiver.url(), max_attempts=3)], clock=clock)
    eid = await dispatcher.emit("completed", {})
    for _ in range(6):
        await dispatcher.flush()
        clock.advance(10.0)
    await dispatcher.stop()

    item = await items_of(store, eid, "crm")
    assert item.state == "dead" and item.attempts == 3
    assert item.last_error == "HTTP 500"
    assert len(receiver.requests) == 3
    assert dispatcher.stats["dead"] == 1 and dispatcher.stats["failed_attempts"] == 3
    assert dispatcher.stats["delivered"] == 0
    assert await store.outbox_counts() == {"pending": 0, "delivered": 0, "dead": 1}


async def test_backoff_is_exponential_capped_and_respected(
        store: Store, receiver: Receiver) -> None:
    receiver.default = "500"
    clock = FakeClock()
    dispatcher = WebhookDispatcher(
        store, [WebhookTarget("crm", receiver.url(), backoff_initial=2.0, backoff_max=5.0)],
        clock=clock)
    eid = await dispatcher.emit("completed", {})
    delays = []
    for _ in range(4):
        await dispatcher.flush()
        item = await items_of(store, eid, "crm")
        delays.append(item.next_at - clock.now)
        # Not due yet: another flush at the same instant sends nothing.
        sent = len(receiver.requests)
        await dispatcher.flush()
        assert len(receiver.requests) == sent
        clock.advance(item.next_at - clock.now)
    await dispatcher.stop()
    assert len(receiver.requests) == 4
    for delay, base in zip(delays, (2.0, 4.0, 5.0, 5.0), strict=True):
        assert base <= delay <= base * 1.1 + 1e-9


async def test_event_filtering_by_target(store: Store, receiver: Receiver) -> None:
    dispatcher = WebhookDispatcher(store, [
        fast_target("billing", receiver.url("/billing"), events=("completed", "cdr")),
        fast_target("all", receiver.url("/all")),
        fast_target("calls", receiver.url("/calls"), events=("call.*",)),
    ])
    ringing = await dispatcher.emit("ringing", {})
    completed = await dispatcher.emit("completed", {})
    answered = await dispatcher.emit("call.answered", {})
    nobody = WebhookDispatcher(store, [fast_target("b", receiver.url(), events=("cdr",))])
    unwanted = await nobody.emit("ringing", {})
    await dispatcher.flush()
    await dispatcher.stop()

    got = {(r.path, r.headers["x-event-id"]) for r in receiver.requests}
    assert got == {
        ("/all", ringing), ("/all", completed), ("/all", answered),
        ("/billing", completed), ("/calls", answered),
    }
    assert len(receiver.requests) == 5
    assert await store.outbox_get(f"{unwanted}:b") is None
    assert dispatcher.stats["enqueued"] == 5 and nobody.stats["enqueued"] == 0


async def test_read_timeout_is_retried(store: Store, receiver: Receiver) -> None:
    receiver.plan = ["hang"]
    clock = FakeClock()
    dispatcher = WebhookDispatcher(
        store, [fast_target("crm", receiver.url(), read_timeout=0.2)], clock=clock)
    eid = await dispatcher.emit("completed", {})
    await dispatcher.flush()
    item = await items_of(store, eid, "crm")
    assert item.state == "pending" and item.last_error is not None
    assert "Timeout" in item.last_error
    clock.advance(10.0)
    await dispatcher.flush()
    await dispatcher.stop()
    assert [r.action for r in receiver.requests] == ["hang", "ok"]
    assert receiver.ok_by_id == Counter({eid: 1})
    assert (await items_of(store, eid, "crm")).state == "delivered"


# --------------------------------------------------------------------------- ad-hoc sends


async def test_send_custom_body_headers_and_signer(store: Store, receiver: Receiver) -> None:
    clock = FakeClock()
    dispatcher = WebhookDispatcher(store, clock=clock)
    signer = HmacSha256Signer("k", header="X-Sig")
    body = b'{"vendor":"shape","status":"done"}'
    eid = await dispatcher.send(receiver.url("/cb"), {"ignored": True}, event_id="ev-1",
                                body=body, headers={"X-Vendor": "v1"}, signer=signer)
    # The same event to the same URL is queued once; to another URL it is a new delivery.
    await dispatcher.send(receiver.url("/cb"), {}, event_id="ev-1", body=body)
    await dispatcher.send(receiver.url("/other"), {"a": 1}, event_id="ev-1")
    await dispatcher.flush()
    await dispatcher.stop()

    assert eid == "ev-1"
    by_path = {r.path: r for r in receiver.requests}
    assert sorted(by_path) == ["/cb", "/other"] and len(receiver.requests) == 2
    cb = by_path["/cb"]
    assert cb.body == body
    assert cb.headers["x-vendor"] == "v1" and cb.headers["x-event-id"] == "ev-1"
    assert signer.verify(cb.body, cb.headers["x-sig"], now=clock.now)
    other = json.loads(by_path["/other"].body)
    assert other["id"] == "ev-1" and other["data"] == {"a": 1}
    assert "x-sig" not in by_path["/other"].headers
    assert await store.outbox_counts() == {"pending": 0, "delivered": 2, "dead": 0}


async def test_send_signature_survives_restart(tmp_path: Path, receiver: Receiver) -> None:
    # The signer object is gone after a restart; the headers signed at enqueue time are kept.
    db = str(tmp_path / "s.db")
    clock = FakeClock()
    s1 = Store(db)
    await s1.start()
    signer = HmacSha256Signer("k")
    await WebhookDispatcher(s1, clock=clock).send(receiver.url(), {"x": 1}, signer=signer)
    await s1.close()
    s2 = Store(db)
    await s2.start()
    try:
        d2 = WebhookDispatcher(s2, clock=clock)
        await d2.flush()
        await d2.stop()
    finally:
        await s2.close()
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert signer.verify(req.body, req.headers["x-softswitch-signature"], now=clock.now)


async def test_send_rejects_bad_arguments(store: Store) -> None:
    dispatcher = WebhookDispatcher(store)
    with pytest.raises(ValueError):
        await dispatcher.send("ftp://example.com/x", {})
    with pytest.raises(ValueError):
        await dispatcher.send("http://127.0.0.1:9/x", {}, max_attempts=0)
    assert await store.outbox_counts() == {"pending": 0, "delivered": 0, "dead": 0}


# --------------------------------------------------------------------------- robustness


class FlakySigner:
    """Raises on its first call, then signs with a constant header."""

    def __init__(self) -> None:
        self.calls = 0

    def headers(self, body: bytes, event: dict[str, Any], timestamp: float) -> dict[str, str]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("boom")
        return {"X-Flaky": str(event["data"]["n"])}


async def test_signer_error_counts_as_failed_attempt(store: Store, receiver: Receiver) -> None:
    clock = FakeClock()
    flaky = FlakySigner()
    assert isinstance(flaky, Signer)
    dispatcher = WebhookDispatcher(
        store, [fast_target("crm", receiver.url(), signer=flaky)], clock=clock)
    eid = await dispatcher.emit("completed", {"n": 7})
    await dispatcher.flush()
    item = await items_of(store, eid, "crm")
    assert item.attempts == 1 and item.last_error is not None
    assert "signer error" in item.last_error and receiver.requests == []
    clock.advance(10.0)
    await dispatcher.flush()
    await dispatcher.stop()
    assert [r.headers["x-flaky"] for r in receiver.requests] == ["7"]


class FailingStore(Store):
    """outbox_due raises the first ``failures`` times, as a broken database would."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    async def outbox_due(self, now: float, limit: int = 50) -> list[OutboxItem]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("database on fire")
        return await super().outbox_due(now, limit)


async def test_worker_survives_store_errors(tmp_path: Path, receiver: Receiver) -> None:
    flaky = FailingStore(str(tmp_path / "f.db"), failures=2)
    await flaky.start()
    dispatcher = WebhookDispatcher(flaky, [fast_target("crm", receiver.url())])
    await dispatcher.start()
    try:
        first = await dispatcher.emit("completed", {})
        second = await dispatcher.emit("completed", {})

        async def both_delivered() -> bool:
            return (await flaky.outbox_counts())["delivered"] == 2

        await wait_until(both_delivered)
    finally:
        await dispatcher.stop()
        await flaky.close()
    assert flaky.failures == 0
    assert receiver.ok_by_id == Counter({first: 1, second: 1})


# --------------------------------------------------------------------------- signers/config


def test_signer_registry() -> None:
    class VendorSigner:
        def __init__(self, field_name: str) -> None:
            self.field_name = field_name

        def headers(self, body: bytes, event: dict[str, Any],
                    timestamp: float) -> dict[str, str]:
            return {"X-Vendor-Sig": str(event["data"][self.field_name])}

    register_signer("test-vendor", lambda opts: VendorSigner(opts["field"]))
    signer = make_signer("test-vendor", {"field": "call_id"})
    assert signer.headers(b"", {"data": {"call_id": "c9"}}, 0.0) == {"X-Vendor-Sig": "c9"}

    hmac_signer = make_signer("hmac-sha256", {"secret": "abc", "header": "X-H"})
    header = hmac_signer.headers(b"{}", {}, 1000.9)
    expected = hmac.new(b"abc", b"1000.{}", hashlib.sha256).hexdigest()
    assert header == {"X-H": f"t=1000,v1={expected}"}
    with pytest.raises(ValueError, match="unknown"):
        make_signer("no-such-signer", {})
    with pytest.raises(ValueError):
        make_signer("hmac-sha256", {})
    assert "abc" not in repr(hmac_signer)


async def test_vendor_signer_used_for_delivery(store: Store, receiver: Receiver) -> None:
    class FieldSigner:
        def headers(self, body: bytes, event: dict[str, Any],
                    timestamp: float) -> dict[str, str]:
            return {"X-Call": event["data"]["call_id"], "X-Len": str(len(body))}

    register_signer("field-signer", lambda opts: FieldSigner())
    dispatcher = WebhookDispatcher(
        store, [fast_target("v", receiver.url(), signer=make_signer("field-signer", {}))])
    await dispatcher.emit("completed", {"call_id": "abc"})
    await dispatcher.flush()
    await dispatcher.stop()
    (req,) = receiver.requests
    assert req.headers["x-call"] == "abc" and req.headers["x-len"] == str(len(req.body))


async def test_dispatcher_rejects_bad_targets(store: Store) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        WebhookDispatcher(store, [WebhookTarget("a", "http://h/"),
                                  WebhookTarget("a", "http://h/2")])
    with pytest.raises(ValueError):
        WebhookDispatcher(store, [WebhookTarget("a", "not a url")])
    with pytest.raises(ValueError):
        WebhookDispatcher(store, [WebhookTarget("a", "http://h/", max_attempts=0)])


async def test_emit_body_is_strict_json(store: Store) -> None:
    dispatcher = WebhookDispatcher(store, [WebhookTarget("a", "http://127.0.0.1:9/")])
    with pytest.raises(ValueError):
        await dispatcher.emit("completed", {"x": float("nan")})
    eid = await dispatcher.emit("completed", {"x": 1.5})
    item = await items_of(store, eid, "a")
    assert b" " not in item.body
    assert json.loads(item.body)["data"] == {"x": 1.5}
