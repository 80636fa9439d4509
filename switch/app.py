"""The composition root: :class:`Switch` wires SIP, media, registrar, B2BUA and HTTP together.

Usable inside another asyncio program::

    async with Switch(config) as sw:
        ...

and from the CLI through :func:`run_switch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import signal
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from media.engine import MediaEngine
from media.playback import PlaybackHandle
from media.prompts import PromptLibrary
from media.wav import Prompt, load_prompt
from sip.digest import DigestClient, DigestServer, choose_challenge, parse_auth_header
from sip.errors import SipParseError
from sip.message import Headers, Request, Response, build_response
from sip.stack import SipStack, new_tag
from sip.transaction import (
    AckTimeout,
    CancelReceived,
    ClientTransaction,
    IncomingRequest,
    IncomingResponse,
    ServerTransaction,
    TransactionTimeout,
    TransportFailure,
)
from sip.uri import header_tag, parse_name_addr, parse_uri
from switch.audit import AuditLog
from switch.b2bua import ALLOW, B2BUA, Call, CallEvent, ForkTarget, Leg
from switch.calendar import ServiceHours
from switch.clock import Clock, SystemClock
from switch.config import Config, ConfigError, StoreConfig, Trunk
from switch.control import CallControl, CallRef, DestinationError
from switch.flows import Flow
from switch.journal import Journal
from switch.limits import LimitExceeded, Limits, Permit
from switch.policy import PolicyBook, acquire_now
from switch.registrar import LocationService, Registrar
from switch.routing import ExtensionTarget, Router, TrunkTarget, Unroutable
from switch.scheduler import Scheduler
from switch.security import SourceGuard
from switch.store import Store, StoreError
from switch.webhooks import HmacSha256Signer, WebhookDispatcher, WebhookTarget

log = logging.getLogger(__name__)

Address = tuple[str, int]


class TrunkRegistration:
    """Keeps the switch registered to a trunk that asks for it (RFC 3261 section 10.2)."""

    def __init__(self, switch: Switch, trunk: Trunk) -> None:
        self.switch = switch
        self.trunk = trunk
        self.call_id = f"{secrets.token_hex(8)}@{switch.config.sip.address}"
        self.from_tag = new_tag()
        self.cseq = 0
        self.registered = False
        self.last_status: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._auth_tries = 0
        self._result: asyncio.Future[int] | None = None

    def start(self) -> None:
        """Begin registering and refreshing in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop refreshing and unregister (Expires: 0), best effort."""
        if self._task is not None:
            self._task.cancel()
        if self.registered:
            try:
                await asyncio.wait_for(self._register(0), timeout=2.0)
            except (TimeoutError, OSError):
                pass

    async def _run(self) -> None:
        while True:
            try:
                expires = await self._register(self.trunk.register_expires)
            except Exception:
                log.exception("trunk %s registration failed", self.trunk.name)
                expires = 0
            # Refresh well before expiry; retry failures after a pause.
            await asyncio.sleep(max(expires * 0.8, 5.0) if expires > 0 else 30.0)

    async def _register(self, expires: int, authorization: tuple[str, str] | None = None) -> int:
        stack = self.switch.stack
        trunk = self.trunk
        self.cseq += 1
        aor = f"sip:{trunk.username or trunk.from_user or 'softswitch'}@{trunk.host}"
        headers = Headers(
            [
                ("Via", stack.via(trunk.transport)),
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag={self.from_tag}"),
                ("To", f"<{aor}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self.cseq} REGISTER"),
                ("Contact", f"<{stack.contact_uri(trunk.transport, trunk.username or None)}>"),
                ("Expires", str(expires)),
                ("User-Agent", self.switch.config.sip.user_agent),
            ]
        )
        if authorization is not None:
            headers.add(*authorization)
        uri = f"sip:{trunk.host}:{trunk.port}"
        request = Request(method="REGISTER", uri=uri, headers=headers)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        stack.send_request(request, (trunk.host, trunk.port), trunk.transport, future)
        response = await future
        self.last_status = response.status
        if response.status in (401, 407) and authorization is None and trunk.username:
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            challenge = choose_challenge(response.headers.get_all(header))
            if challenge is not None:
                name = "Authorization" if response.status == 401 else "Proxy-Authorization"
                value = DigestClient.answer(
                    challenge, method="REGISTER", uri=uri, username=trunk.username,
                    password=trunk.password, cnonce=secrets.token_hex(8),
                )
                return await self._register(expires, (name, value))
        if 200 <= response.status < 300:
            self.registered = expires > 0
            granted = response.headers.get("Expires")
            if granted and granted.isdigit():
                return int(granted)
            return expires
        self.registered = False
        log.warning("trunk %s answered REGISTER with %s", trunk.name, response.status)
        return 0


Service = Callable[[Call], Awaitable[None]]
_CDR_LINGER = 0.2  # seconds a CDR may wait to share its batch's commit


class ShuttingDown(RuntimeError):
    """Raised by :meth:`Switch.originate` while the switch drains for a shutdown."""


class Switch(CallControl):
    """The whole switch: SIP (UDP+TCP), RTP, registrar, B2BUA, call control, store,
    webhooks, scheduler and the HTTP server."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.counters: Counter[str] = Counter()
        secret = config.auth.secret.encode() if config.auth.secret else secrets.token_bytes(32)
        self.digest = DigestServer(
            config.sip.realm, secret, nonce_lifetime=float(config.auth.nonce_lifetime),
            algorithms=tuple(config.auth.algorithms),
        )
        self.router = Router(config)
        self._passwords = {e.number: e.digest_secret() for e in config.extensions}
        self._names = {e.number: e.name for e in config.extensions}
        self.location = LocationService()
        tls_server = tls_client = None
        if "tls" in config.sip.transports:
            # Read the certificate, key and CAs now (ConfigError naming the [sip] key).
            from switch.tls import client_context, server_context

            tls_server, tls_client = server_context(config.sip), client_context(config.sip)
        self.stack = SipStack(
            self._on_sip_event, address=config.sip.address, port=config.sip.port,
            transports=tuple(config.sip.transports), tls_port=config.sip.tls_port,
            tls_server_context=tls_server, tls_client_context=tls_client,
        )
        self.media = MediaEngine(
            config.rtp.address, config.rtp.port_min, config.rtp.port_max,
            symmetric_latch=config.rtp.symmetric_latch,
        )
        self.registrar = Registrar(
            self.location,
            is_extension=self.router.is_extension,
            authenticate=lambda req, now: self._authenticate(req, now, "REGISTER"),
            min_expires=config.registrar.min_expires,
            max_expires=config.registrar.max_expires,
            default_expires=config.registrar.default_expires,
            max_contacts=config.registrar.max_contacts,
            new_tag=new_tag,
        )
        self._subscribers: list[Callable[[CallEvent], object]] = []
        self.prompts = PromptLibrary(
            {k: Path(v) for k, v in config.prompts.files.items()},
            default_lang=config.prompts.language,
        )
        self.b2bua = B2BUA(
            self.stack, self.media, ring_timeout=float(config.calls.ring_timeout),
            user_agent=config.sip.user_agent, max_forwards=config.sip.max_forwards,
            on_event=self._publish, inband_dtmf=config.calls.inband_dtmf,
            record_dir=Path(config.calls.recordings_dir), record_calls=config.calls.record,
        )
        self._trunk_sources = {
            (t.host, t.port): t for t in config.trunks
        }
        self._trunk_ips = {t.host: t for t in config.trunks if t.identify == "ip"}
        # ---- signalling defences: flood bans and digest brute-force limits. Trunks and the
        # switch's own address are never banned (Kamailio's default config also skips pike
        # for `src_ip == myself`). A banned source is dropped before parsing and sent nothing.
        own = [config.sip.address] if config.sip.address not in ("0.0.0.0", "::") else [
            "127.0.0.1", "::1"]
        self.security = SourceGuard(
            config.security, extra_allow=[*own, *(t.host for t in config.trunks)])
        self._request_ip = ""  # source address of the request being handled, for the limits
        self.stack.idle_timeout = config.security.tcp_idle_timeout
        if config.security.enabled:
            self.stack.source_filter = self.security.admit
            self.stack.max_connections_per_source = config.security.tcp_max_per_source
            self.stack.message_timeout = config.security.tcp_message_timeout
            self.stack.limit_exempt = self.security.allow.__contains__
            # Garbage counts toward the flood limit like a request: a scanner or fuzzer that
            # sends only unparseable bytes is banned as fast as one that sends INVITEs.
            self.stack.manager.on_malformed = lambda source, now: self.security.request(
                source[0], now)
        # ---- call control: limits, flows, sessions, store, webhooks, scheduler -----------
        self.limits = Limits(config.limits, clock=self.clock)
        self.policy = PolicyBook(config.policies, config.calls.default_country)
        self.audit = AuditLog()
        self._tenants = {e.number: e.tenant for e in config.extensions}
        self.flows = _load_flows(config, self.prompts)
        self._sessions = {}
        self.recent_cdrs = OrderedDict()
        self.cdr_sinks = [self._store_cdr]
        self.b2bua.on_call_end = self._call_ended
        self.services: dict[str, Service] = {}
        for name, flow in self.flows.items():
            if flow.number:
                self.services[flow.number] = self._flow_service(name)
        for queue in config.queues:
            if queue.number:
                self.services[queue.number] = self._queue_service(queue.name)
        self.store = Store(_store_url(config.store.url))
        self.webhooks = WebhookDispatcher(self.store, [
            WebhookTarget(
                name=w.name, url=w.url, events=w.events,
                signer=HmacSha256Signer(w.secret) if w.secret else None,
                connect_timeout=w.connect_timeout, read_timeout=w.read_timeout,
                max_attempts=w.max_attempts,
            ) for w in config.webhooks
        ])
        self._webhook_events = {e for w in config.webhooks for e in w.events}
        self.calendars = {name: ServiceHours.from_config(dict(raw))
                          for name, raw in config.service_hours.items()}
        self.scheduler = Scheduler(self.store, self._place_scheduled, clock=self.clock,
                                   calendars=self.calendars, on_update=self._job_updated)
        self.outcomes: Counter[str] = Counter()
        self._store_ok = False
        self._background: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._cdr_queue: list[tuple[list[int], dict[str, Any]]] = []
        # Journal tokens of each call in progress ("call" at its start, "answer"), done with
        # its CDR: a call cut off by a crash gets an "interrupted" CDR at the next start.
        self._call_tokens: dict[str, list[int]] = {}
        self._cdr_writer: asyncio.Task[Any] | None = None
        self._audit_queue: list[tuple[int, dict[str, Any]]] = []
        self._audit_writer: asyncio.Task[Any] | None = None
        self.journal = Journal(_journal_path(config.store))
        self.audit.sinks.append(self._store_audit)
        self.trunk_registrations = [TrunkRegistration(self, t) for t in config.trunks if t.register]
        self._http: Any = None
        self.http_installers: list[Callable[[Any, Switch], None]] = []
        # Hooks the front-ends add: awaited at start (after the store opens) and at stop.
        self.on_start: list[Callable[[], Awaitable[None]]] = []
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        # Scheduled requests with {"handler": name} are placed by these (front-ends).
        self.job_handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[str]]] = {}
        self.job_listeners: list[Callable[[dict[str, Any]], object]] = []
        self._started = False
        from switch.frontends import install_all

        install_all(self)

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Switch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the store; bind SIP, RTP and HTTP; start trunk registrations, webhook
        delivery and the scheduler."""
        try:
            await self.store.start()
        except StoreError as exc:
            raise ConfigError("store.url", str(exc)) from None
        self._store_ok = True
        try:
            left = self.journal.recover()
        except OSError as exc:
            raise ConfigError("store.journal", f"cannot open {self.journal.path}: {exc}") from None
        await self._replay_journal(left)
        await self.media.start()
        await self.stack.start()
        await self.webhooks.start()
        self.subscribe(self._event_to_webhooks)
        self.subscribe(self._journal_call)
        if self.config.http.enabled:
            from switch.http import HttpServer

            self._http = HttpServer()
            await self._http.start(self.http_app(), self.config.http.address,
                                   self.config.http.port)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_store())
        for hook in self.on_start:
            await hook()
        await self.scheduler.start()
        for reg in self.trunk_registrations:
            reg.start()
        self._started = True
        log.info(
            "softswitch up: SIP %s:%s (%s), RTP %s:%s-%s, HTTP %s",
            self.config.sip.address, self.config.sip.port, "+".join(self.config.sip.transports),
            self.config.rtp.address, self.config.rtp.port_min, self.config.rtp.port_max,
            f"{self.config.http.address}:{self.config.http.port}" if self.config.http.enabled
            else "off",
        )

    #: True from :meth:`drain` on: new INVITEs get 503 and :meth:`originate` raises.
    draining: bool = False
    _drain_abort: bool = False

    async def drain(self, timeout: float | None = None) -> None:
        """Graceful shutdown: refuse new calls, let current ones finish, then :meth:`stop`.

        New INVITEs are answered 503 (RFC 3261 section 21.5.4: the server is temporarily
        unable to take the call, so a phone or proxy can try elsewhere), :meth:`originate`
        raises :class:`ShuttingDown` and the scheduler starts no more attempts (due jobs stay
        pending in the store for the next run). Calls in progress continue for up to
        ``timeout`` seconds (default ``[calls] drain_timeout``; 0 = hang up at once) or until
        :meth:`abort_drain`; whatever is left is then hung up with BYE/CANCEL by :meth:`stop`.
        """
        if not self._started:
            return
        limit = self.config.calls.drain_timeout if timeout is None else timeout
        self.draining = True
        self.b2bua.accepting = False
        self.scheduler.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(limit, 0.0)
        if self._busy():
            log.info("draining: waiting up to %.0f s for %d call(s) to end", limit,
                     sum(1 for c in self.b2bua.calls.values() if not c.ended))
        # Polled rather than event-driven: the wait is bounded by the deadline either way and
        # calls end through many paths (BYE, CANCEL, timeouts, API hangups).
        while not self._drain_abort and self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await self.stop()

    def abort_drain(self) -> None:
        """End a running :meth:`drain` now: the remaining calls are hung up."""
        self._drain_abort = True

    def _busy(self) -> bool:
        return self.scheduler.in_flight > 0 or any(
            not c.ended for c in self.b2bua.calls.values())

    def originate(self, destination: str, **options: Any) -> CallRef:
        """As :meth:`CallControl.originate`; raises :class:`ShuttingDown` while draining."""
        if self.draining:
            raise ShuttingDown("the switch is shutting down")
        return super().originate(destination, **options)

    async def stop(self) -> None:
        """BYE active calls, unregister from trunks and close every socket."""
        if not self._started:
            return
        self._started = False
        await self.scheduler.stop()
        await self.b2bua.shutdown()
        for hook in self.on_stop:  # after the calls ended, so their CDRs reach the front-ends
            try:
                await hook()
            except Exception:
                log.exception("front-end stop hook failed")
        for reg in self.trunk_registrations:
            await reg.stop()
        # Give the BYEs/CANCELs a moment on the wire before the sockets go.
        await asyncio.sleep(0.05)
        if self._http is not None:
            await self._http.stop()
        await self.stack.close()
        await self.media.close()
        # CDR and outbox writes started by the last calls finish before the store closes.
        if self._watch_task is not None:
            self._watch_task.cancel()
        pending = [t for t in self._background if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        await self.webhooks.stop()
        await self.store.close()
        self.journal.close()
        self._store_ok = False

    def http_app(self) -> Any:
        """The FastAPI application: /healthz, the native /v1 API, /metrics, /docs, and any
        routers the front-ends add."""
        from switch.http import create_app

        app = create_app(self.health)
        try:
            from switch.api import install_api
        except ImportError:  # pragma: no cover - the API module ships with the package
            return app
        install_api(app, self)
        for install in self.http_installers:
            install(app, self)
        return app

    def _spawn_bg(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            try:
                self._store_ok = await asyncio.wait_for(self.store.ping(), 5.0)
            except Exception:
                self._store_ok = False

    # ---- CDRs, webhooks, scheduled calls ---------------------------------------------------

    def _journal_call(self, event: CallEvent) -> None:
        """Journal a call's start and answer, so that a crash mid-call still leaves a CDR."""
        if event.name == "initiated" and event.call_id not in self._call_tokens:
            self._call_tokens[event.call_id] = []
            # Next loop turn: the call-control layer tags the call (tenant, caller ID,
            # front-end) right after the B2BUA announces it.
            asyncio.get_running_loop().call_soon(self._journal_call_record, event.call_id,
                                                 "call", {"started_at": event.time})
        elif event.name == "answered" and event.call_id in self._call_tokens:
            self._journal_call_record(event.call_id, "answer", {"answered_at": event.time})
        elif event.name == "merged":
            # Bridging two calls makes one CDR: the merged call's records end with it.
            src = str(event.data.get("from_call"))
            tokens = self._call_tokens.pop(src, [])
            tokens.append(self.journal.append("merged", {"call_id": src,
                                                         "into": event.call_id}))
            self._call_tokens.setdefault(event.call_id, []).extend(tokens)

    def _journal_call_record(self, call_id: str, kind: str, extra: dict[str, Any]) -> None:
        tokens = self._call_tokens.get(call_id)
        call = self.b2bua.calls.get(call_id)
        if tokens is None or call is None or (kind == "answer" and len(tokens) != 1):
            return  # over already, or not the first answer
        tags = call.tags
        record = {"call_id": call_id, "tenant": str(tags.get("tenant", "default")),
                  "caller": call.caller, "callee": call.callee,
                  "caller_id_number": tags.get("caller_id_number") or call.caller,
                  "frontend": tags.get("frontend"), "external_id": tags.get("external_id"),
                  **extra}
        tokens.append(self.journal.append(kind, record))

    def _store_cdr(self, cdr: dict[str, Any]) -> None:
        self.outcomes[str(cdr.get("outcome"))] += 1
        tokens = self._call_tokens.pop(str(cdr.get("call_id")), [])
        self._cdr_queue.append(([self.journal.append("cdr", cdr), *tokens], cdr))
        if self._cdr_writer is None or self._cdr_writer.done():
            self._cdr_writer = self._spawn_bg(self._write_cdrs())

    async def _write_cdrs(self) -> None:
        """Write queued CDRs in batches: every call ended while the previous batch was being
        committed goes into the next one, so at a high call rate one commit (one disk sync)
        serves many calls instead of one each (measured: one commit per call cost about 3 ms
        of CPU per call at 150 calls/s). A CDR waits at most about ``_CDR_LINGER`` plus one
        commit before it is in the store; ``recent_cdrs`` and ``wait_call`` have it at once,
        and the journal has it at once (so ``kill -9`` meanwhile does not lose it)."""
        while self._cdr_queue:
            # Let the calls ending meanwhile join this batch (bounded delay for the row).
            await asyncio.sleep(_CDR_LINGER)
            batch, self._cdr_queue = self._cdr_queue[:500], self._cdr_queue[500:]
            try:
                await self._store_cdr_batch([cdr for _, cdr in batch])
            except Exception:
                # Left open in the journal: the next start stores them.
                log.exception("storing %d CDRs failed (first call %s)", len(batch),
                              batch[0][1].get("call_id"))
            else:
                self.journal.done(token for tokens, _ in batch for token in tokens)

    async def _store_cdr_batch(self, batch: list[dict[str, Any]]) -> None:
        for cdr in batch:
            for rec in cdr.get("recordings", []):
                await self.store.add_recording({
                    "id": rec["id"], "call_id": cdr["call_id"], "path": rec.get("path"),
                    "started_at": rec.get("start"), "duration": rec.get("duration"),
                    "channels": rec.get("channels"),
                    "sample_rate": rec.get("sample_rate"),
                    "legs": [leg["leg_id"] for leg in cdr.get("legs", [])],
                })
            # The outbox row first: it carries the whole CDR, so a crash between the
            # commits can never leave a stored CDR whose webhook is lost
            # (tests/test_kill9.py).
            if "cdr" in self._webhook_events or "*" in self._webhook_events:
                await self.webhooks.emit("cdr", cdr, event_id=f"cdr-{cdr['call_id']}")
        await self.store.add_cdrs(batch)

    def _store_audit(self, entry: dict[str, Any]) -> None:
        """The audit log's sink: journal the entry now, commit it with the next batch."""
        self._audit_queue.append((self.journal.append("audit", entry), entry))
        if self._audit_writer is None or self._audit_writer.done():
            self._audit_writer = self._spawn_bg(self._write_audit())

    async def _write_audit(self) -> None:
        while self._audit_queue:
            await asyncio.sleep(_CDR_LINGER)
            batch, self._audit_queue = self._audit_queue[:500], self._audit_queue[500:]
            try:
                await self.store.add_audit([entry for _, entry in batch])
            except Exception:
                log.exception("storing %d audit entries failed", len(batch))
            else:
                self.journal.done(token for token, _ in batch)

    def _event_to_webhooks(self, event: CallEvent) -> None:
        if event.name not in self._webhook_events and "*" not in self._webhook_events:
            return
        payload = {"seq": event.seq, "time": event.time, "call_id": event.call_id,
                   "leg_id": event.leg_id, **event.data}
        record = {"event": event.name, "payload": payload,
                  "event_id": f"{event.call_id}-{event.seq}"}
        self._spawn_bg(self._emit_journaled(self.journal.append("event", record), record))

    async def _emit_journaled(self, token: int, record: dict[str, Any]) -> None:
        try:
            await self.webhooks.emit(record["event"], record["payload"],
                                     event_id=record["event_id"])
        except Exception:
            log.exception("queueing webhook event %s failed", record["event_id"])
        else:
            self.journal.done((token,))

    async def _interrupted_cdrs(self, entries: list[tuple[str, dict[str, Any]]],
                                have: set[str]) -> list[dict[str, Any]]:
        """CDRs for the calls a dead run had started and never finished: outcome
        ``interrupted``, ended when the journal was last written (about when the run died)."""
        calls: dict[str, dict[str, Any]] = {}
        merged = {r.get("call_id") for kind, r in entries if kind == "merged"}
        for kind, record in entries:
            call_id = record.get("call_id")
            if (kind in ("call", "answer") and isinstance(call_id, str) and call_id not in have
                    and call_id not in merged):
                calls.setdefault(call_id, {}).update(record)
        died = self.journal.recovered_mtime or time.time()
        out = []
        for call_id, rec in calls.items():
            if "started_at" not in rec or await self.store.get_cdr(call_id) is not None:
                continue
            started = float(rec["started_at"])
            answered = rec.get("answered_at")
            ended = max(died, started, float(answered or 0.0))
            out.append({**rec, "ended_at": ended, "duration": round(ended - started, 3),
                        "billsec": round(ended - float(answered), 3) if answered else 0.0,
                        "outcome": "interrupted", "sip_status": None, "q850": None,
                        "legs": [], "variables": {},
                        "failure": "the switch stopped during the call (crash or kill)"})
        return out

    async def _replay_journal(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Store what a killed run had journaled but not committed (idempotent: the store
        upserts CDRs by call id, the outbox skips event ids it has, audit rows carry ids)."""
        if not entries:
            self.journal.forget_recovered()
            return
        cdrs = [r for kind, r in entries if kind == "cdr" and isinstance(r.get("call_id"), str)]
        cdrs += await self._interrupted_cdrs(entries, {str(c["call_id"]) for c in cdrs})
        audit = [r for kind, r in entries if kind == "audit"]
        for kind, record in entries:
            if kind == "event":
                await self.webhooks.emit(str(record["event"]), record["payload"],
                                         event_id=str(record["event_id"]))
        for i in range(0, len(cdrs), 500):
            await self._store_cdr_batch(cdrs[i:i + 500])
        if audit:
            await self.store.add_audit(audit)
        log.info("journal: stored %d CDR(s), %d audit entries and %d webhook event(s) left "
                 "by the previous run", len(cdrs), len(audit),
                 sum(1 for kind, _ in entries if kind == "event"))
        self.journal.forget_recovered()

    async def _place_scheduled(self, job_id: str, request: dict[str, Any]) -> str:
        """The scheduler's hook: originate a stored request and wait for the first leg's
        outcome."""
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()

        def on_first(outcome: Any) -> None:
            if not first.done():
                first.set_result(str(outcome))

        options = dict(request)
        handler_name = options.pop("handler", None)
        if handler_name is not None:
            # A front-end's own placement logic (registered in job_handlers).
            handler = self.job_handlers.get(str(handler_name))
            if handler is None:
                log.warning("scheduled call %s: no handler %r", job_id, handler_name)
                return "failed"
            return await handler(job_id, options)
        destination = str(options.pop("destination"))
        tags = dict(options.pop("tags", {}) or {})
        tags["job_id"] = job_id
        try:
            self.originate(destination, tags=tags, on_first_outcome=on_first, **options)
        except (DestinationError, ValueError, TypeError) as exc:
            log.warning("scheduled call %s cannot be placed: %s", job_id, exc)
            return "rejected"
        return await first

    def spawn_for_call(self, call_id: str, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` for a call: it is cancelled when the call ends."""
        call = self.b2bua.calls.get(call_id)
        if call is None:
            raise KeyError(f"no such call: {call_id}")
        return self._spawn(self._session(call), coro)

    def _job_updated(self, job: dict[str, Any]) -> None:
        for listener in list(self.job_listeners):
            try:
                listener(job)
            except Exception:
                log.exception("scheduled-call listener failed")
        if "schedule" in self._webhook_events or "*" in self._webhook_events:
            self._spawn_bg(self.webhooks.emit("schedule", job))

    # ---- services: numbers answered by the switch itself -----------------------------------

    def add_service(self, number: str, service: Service, *, replace: bool = False) -> None:
        """Answer calls to ``number`` locally and run ``service(call)`` (front-ends use this:
        quick dial, IVRs). The number must not be an extension, nor another service's number
        unless ``replace``."""
        if self.router.is_extension(number):
            raise ValueError(f"{number} is an extension")
        if number in self.services and not replace:
            raise ValueError(f"{number} is already the number of another service")
        self.services[number] = service

    def _flow_service(self, name: str) -> Service:
        async def service(call: Call) -> None:
            assert call.a is not None
            await self.run_flow(call.a, name)
        return service

    def _queue_service(self, name: str) -> Service:
        async def service(call: Call) -> None:
            assert call.a is not None
            outcome = await self.connect(call.a, f"queue:{name}")
            if outcome.value != "answered" and not call.ended:
                with contextlib.suppress(Exception):
                    await self.play_and_wait(call.a.id, "unavailable")
                self.b2bua.hangup(call)
        return service

    def _start_service(self, service: Service) -> Callable[[Call], None]:
        def start(call: Call) -> None:
            session = self._session(call)
            self._spawn(session, service(call))
        return start

    def health(self) -> dict[str, bool]:
        """Component health for /healthz."""
        return {
            "sip": self.stack.running,
            "rtp": self.media.running,
            "store": self._store_ok,
        }

    # ---- call control (Python API) -------------------------------------------------------------

    def subscribe(self, callback: Callable[[CallEvent], object]) -> Callable[[], None]:
        """Call ``callback`` with every :class:`CallEvent`, in order; returns an unsubscriber.

        Callbacks run on the event loop and must not block; an exception in one is logged and
        does not reach the switch.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _publish(self, event: CallEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed")

    def _leg(self, leg_id: str) -> Leg:
        leg = self.b2bua.legs.get(leg_id)
        if leg is None:
            raise KeyError(f"no such leg: {leg_id}")
        return leg

    def _call(self, call_id: str) -> Call:
        call = self.b2bua.calls.get(call_id)
        if call is None:
            raise KeyError(f"no such call: {call_id}")
        return call

    def play(
        self, leg_id: str, prompt: str | Path | Prompt, *, loop: bool = False,
        barge_in: bool = False, language: str | None = None,
    ) -> PlaybackHandle:
        """Play a prompt to a leg: a built-in or configured prompt name (``"connecting"``,
        ``"es/connecting"``), a WAV file path, or a loaded :class:`Prompt`. While it plays, the
        other leg's audio is not relayed to this leg. ``barge_in``: the leg's first DTMF digit
        stops it."""
        leg = self._leg(leg_id)
        if leg.media is None:
            raise RuntimeError("the leg has no media yet (not answered)")
        if isinstance(prompt, Prompt):
            loaded = prompt
        elif isinstance(prompt, Path) or str(prompt).lower().endswith(".wav"):
            loaded = load_prompt(Path(prompt))
        else:
            loaded = self.prompts.load(str(prompt), language)
        return leg.media.play(loaded, loop=loop, barge_in=barge_in)

    def stop_playback(self, leg_id: str) -> None:
        """Stop every prompt playing or queued for a leg."""
        leg = self._leg(leg_id)
        if leg.media is not None:
            leg.media.stop_playback()

    def send_dtmf(self, leg_id: str, digits: str, *, duration_ms: int = 100) -> float:
        """Send DTMF digits to a leg (RFC 4733 if negotiated, else in-band tones); returns
        the seconds until the last digit is out."""
        if not digits or any(d not in "0123456789*#ABCD" for d in digits):
            raise ValueError(f"not DTMF digits: {digits!r}")
        leg = self._leg(leg_id)
        if leg.media is None:
            raise RuntimeError("the leg has no media yet (not answered)")
        return leg.media.send_dtmf(digits, duration_ms=duration_ms)

    def record(self, call_id: str, path: str | Path | None = None, *,
               stereo: bool = True) -> Path:
        """Start recording a call (stereo: one channel per leg); returns the file path. A
        ``recording-ready`` event with its metadata follows when the call ends."""
        call = self._call(call_id)
        target = Path(path) if path is not None else (
            Path(self.config.calls.recordings_dir) / f"{call.id}.wav"
        )
        self.b2bua.start_recording(call, target, stereo=stereo)
        return target

    def hangup(self, call_id: str) -> None:
        """End a call: BYE answered legs, CANCEL/503 ringing ones."""
        self.b2bua.hangup(self._call(call_id))

    # ---- authentication ---------------------------------------------------------------------

    def _authenticate(self, request: Request, now: float, kind: str) -> str | Response:
        """Digest-authenticate a request from a phone: the username, or the response to send.

        REGISTER is challenged with 401/WWW-Authenticate, everything else with
        407/Proxy-Authenticate (RFC 3261 sections 22.2 and 22.3). Unknown users and wrong
        passwords get the same 403, so extensions cannot be enumerated.
        """
        is_register = kind == "REGISTER"
        header = "Authorization" if is_register else "Proxy-Authorization"
        # Credentials in another scheme or for another realm are not for us (RFC 3261
        # section 22.1; RFC 4475 section 3.3.3 "regaut01"): challenge as if they were absent.
        credentials = [
            v for v in request.headers.get_all(header) if self._is_our_digest(v)
        ]
        stale = False
        ip = self._request_ip
        for value in credentials:
            account = _digest_username(value)
            if account is not None and not self.security.auth_allowed(ip, account, now):
                # A throttled account (switch.security) is answered exactly like a wrong
                # password without checking it, so guessing during the throttle is useless.
                self.security.auth_failed(ip, account, now)
                self.counters["auth_failures"] += 1
                continue
            result = self.digest.verify(
                value, request.method, self._passwords.get, now, body=request.body
            )
            if result.ok and result.username:
                self.security.auth_succeeded(ip, result.username, now)
                return result.username
            stale = stale or result.stale
            if not result.stale:  # good credentials on an old nonce are no guess
                self.security.auth_failed(ip, result.username, now)
            self.counters["auth_failures"] += 1
        if credentials and not stale:
            return build_response(request, 403, "Forbidden", to_tag=new_tag())
        status = 401 if is_register else 407
        challenge_header = "WWW-Authenticate" if is_register else "Proxy-Authenticate"
        extra = [(challenge_header, c) for c in self.digest.challenges(now, stale=stale)]
        return build_response(request, status, to_tag=new_tag(), extra=extra)

    def _is_our_digest(self, value: str) -> bool:
        try:
            scheme, params = parse_auth_header(value)
        except ValueError:
            return True  # malformed Digest: verify() reports it and it counts as a failure
        return scheme.lower() == "digest" and params.get("realm") == self.config.sip.realm

    # ---- SIP event dispatch -----------------------------------------------------------------

    def _on_sip_event(self, event: Any) -> None:
        if isinstance(event, IncomingRequest):
            self._on_request(event)
        elif isinstance(event, IncomingResponse):
            self._on_response(event.tx, event.response)
        elif isinstance(event, TransactionTimeout):
            self._on_response(event.tx, Response(status=408, reason="Request Timeout"))
        elif isinstance(event, TransportFailure):
            if isinstance(event.tx, ClientTransaction):
                self._on_response(event.tx, Response(status=503, reason="Transport Failure"))
        elif isinstance(event, CancelReceived):
            leg = event.invite_tx.user_data
            if isinstance(leg, Leg):
                self.b2bua.cancel_from_a(leg)
        elif isinstance(event, AckTimeout):
            leg = event.tx.user_data
            if isinstance(leg, Leg):
                self.b2bua.on_ack_timeout(leg)

    def _on_response(self, tx: ClientTransaction, response: Response) -> None:
        target = tx.user_data
        if isinstance(target, Leg):
            if response.status == 408 and response.headers.get("Via") is None:
                self.b2bua.on_timeout(target)
            else:
                self.b2bua.on_response(target, response, tx)
        elif isinstance(target, asyncio.Future):
            if not target.done() and response.status >= 200:
                target.set_result(response)

    def _on_request(self, event: IncomingRequest) -> None:
        request = event.request
        tx = event.tx
        method = request.method
        if tx is None:
            # An ACK outside any transaction: the ACK for a 2xx (RFC 3261 section 13.2.2.4).
            leg = self.b2bua.find_leg(request)
            if leg is not None:
                self.b2bua.on_ack(leg, request)
            return
        try:
            to_tag = header_tag(request.first("To"))
        except SipParseError as exc:
            # 416 for a To URI in a scheme we do not serve (RFC 4475 section 3.3.4).
            self.stack.send_response(tx, build_response(request, exc.status, exc.reason))
            return
        if method not in ("ACK", "CANCEL"):
            unsupported = _unsupported_requirements(request)
            if unsupported:
                # RFC 3261 section 8.2.2.3: we support no option tags a request may require.
                self.stack.send_response(
                    tx,
                    build_response(request, 420, to_tag=None if to_tag else new_tag(),
                                   extra=[("Unsupported", ", ".join(unsupported))]),
                )
                return
        if to_tag:
            self._in_dialog(request, tx)
            return
        loop_now = asyncio.get_running_loop().time()
        self._request_ip = event.source[0]
        if not self.security.request(self._request_ip, loop_now):
            # This request got its source banned (flood): end the transaction; the answer
            # is not sent (the stack's source filter drops it).
            self.stack.send_response(tx, build_response(request, 403, to_tag=new_tag()))
            return
        if method == "REGISTER":
            self.stack.send_response(
                tx, self.registrar.handle(request, event.source, event.transport, loop_now)
            )
        elif method == "INVITE":
            self._new_invite(request, tx, event.source, event.transport, loop_now)
        elif method == "OPTIONS":
            self.stack.send_response(
                tx,
                build_response(
                    request, 200, to_tag=new_tag(),
                    extra=[("Allow", ALLOW), ("Accept", "application/sdp")],
                ),
            )
        elif method in ("BYE", "INFO", "UPDATE", "PRACK"):
            self.stack.send_response(tx, build_response(request, 481, to_tag=new_tag()))
        elif method == "ACK":
            return
        else:
            self.stack.send_response(
                tx, build_response(request, 405, to_tag=new_tag(), extra=[("Allow", ALLOW)])
            )

    def _in_dialog(self, request: Request, tx: ServerTransaction) -> None:
        leg = self.b2bua.find_leg(request)
        if leg is None or leg.dialog is None:
            # RFC 3261 section 12.2.2: no matching dialog.
            self.stack.send_response(tx, build_response(request, 481))
            return
        if not leg.dialog.check_remote_cseq(request):
            self.stack.send_response(tx, build_response(request, 500, "CSeq out of order"))
            return
        if request.method == "BYE":
            self.b2bua.on_bye(leg, request, tx)
        else:
            self.b2bua.on_in_dialog(leg, request, tx)

    def trunk_for_source(self, source: Address) -> Trunk | None:
        """The trunk a request came from: by its configured address and port, or by its IP
        alone for a trunk with ``identify = "ip"``."""
        return self._trunk_sources.get(source) or self._trunk_ips.get(source[0])

    def _new_invite(
        self, request: Request, tx: ServerTransaction, source: Address, transport: str,
        now: float,
    ) -> None:
        if not self.b2bua.accepting:
            self.stack.send_response(tx, build_response(request, 503, to_tag=new_tag()))
            return
        mf = request.headers.get("Max-Forwards")
        if mf is not None:
            if not mf.strip().isdigit():
                self.stack.send_response(tx, build_response(request, 400, "Bad Max-Forwards"))
                return
            if int(mf) == 0:
                # RFC 3261 section 16.3 step 2 (applied by our B2BUA so loops die).
                self.stack.send_response(tx, build_response(request, 483, to_tag=new_tag()))
                return
        ctype = (request.headers.get("Content-Type") or "application/sdp").split(";")[0].strip()
        if request.body and ctype.lower() != "application/sdp":
            self.stack.send_response(
                tx, build_response(request, 415, to_tag=new_tag(),
                                   extra=[("Accept", "application/sdp")]),
            )
            return
        try:
            ruri = parse_uri(request.uri)
            from_na = parse_name_addr(request.first("From"))
        except SipParseError as exc:
            self.stack.send_response(tx, build_response(request, exc.status, exc.reason))
            return
        dialled = ruri.user or ""
        admission: tuple[str, Permit] | None = None  # a phone's call: (tenant, limits permit)
        trunk = self.trunk_for_source(source)
        if trunk is not None:
            caller = from_na.uri.user or "anonymous"
            caller_name = from_na.display
            target = self.router.route_inbound(trunk, dialled)
            # A DID may point at a service number (flow, queue, front-end) or a ring group.
            if isinstance(target, ExtensionTarget) and not self.router.is_extension(
                    target.number) and self._local_number(
                    request, tx, source, transport, caller, caller_name, target.number, now):
                return
        else:
            auth = self._authenticate(request, now, "INVITE")
            if isinstance(auth, Response):
                self.stack.send_response(tx, auth)
                return
            if (from_na.uri.user or "") != auth:
                # The authenticated user may only call as itself.
                self.stack.send_response(
                    tx, build_response(request, 403, "From does not match credentials",
                                       to_tag=new_tag()),
                )
                return
            caller = auth
            caller_name = self._names.get(auth) or from_na.display
            admission = self._admit_phone_call(request, tx, source, auth, dialled)
            if admission is None:
                return
            if self._local_number(request, tx, source, transport, caller, caller_name,
                                  dialled, now):
                self._admitted(tx.user_data, admission)
                return
            target = self.router.route_outbound(dialled)
        if isinstance(target, Unroutable):
            self.stack.send_response(
                tx, build_response(request, target.status, target.reason, to_tag=new_tag())
            )
            if admission is not None:
                admission[1].release()
            return
        forks = self._fork_targets(target, now)
        if not forks:
            # RFC 3261 section 21.4.18: the user is known but not reachable right now.
            self.stack.send_response(
                tx, build_response(request, 480, "Not Registered", to_tag=new_tag())
            )
            if admission is not None:
                admission[1].release()
            return
        callee = target.number
        self.b2bua.new_call(
            request, tx, source, transport, caller=caller, caller_name=caller_name,
            targets=forks, callee=callee,
        )
        if admission is not None:
            self._admitted(tx.user_data, admission)

    def _admit_phone_call(self, request: Request, tx: ServerTransaction, source: Address,
                          caller: str, dialled: str) -> tuple[str, Permit] | None:
        """A phone's new call, before anything rings: its tenant's destination policy
        (``[policy.<tenant>]``, for numbers that leave through a trunk) and the tenant's and
        trunk's limits (``[limits]``). Returns (tenant, permit), or None once it has answered
        the INVITE with the refusal."""
        tenant = self._tenants.get(caller, "default")
        keys = [f"tenant:{tenant}"]
        routed = None
        if dialled not in self.services and not any(g.number == dialled
                                                    for g in self.config.groups):
            routed = self.router.route_outbound(dialled)
        if isinstance(routed, TrunkTarget):
            reason = self.policy.check(tenant, "number", routed.number)
            if reason is not None:
                self.audit.record("call", result="denied", tenant=tenant, caller=caller,
                                  destination=routed.number, source_ip=source[0],
                                  reason=reason)
                # RFC 3261 section 21.4.4: understood, and refused; retrying will not help.
                self.stack.send_response(tx, build_response(
                    request, 403, "Destination Not Allowed", to_tag=new_tag()))
                return None
            keys.append(f"trunk:{routed.trunk.name}")
        admitted = acquire_now(self.limits, keys)
        if isinstance(admitted, LimitExceeded):
            log.info("call from %s to %s refused: %s", caller, dialled, admitted)
            # RFC 3261 section 21.5.4: temporarily unable to take the call.
            self.stack.send_response(tx, build_response(
                request, 503, "Call Limit Exceeded", to_tag=new_tag()))
            return None
        return tenant, admitted

    def _admitted(self, leg: object, admission: tuple[str, Permit]) -> None:
        """Tie an admitted phone call to its tenant and hand its permit to the call's session
        (released when the call ends); released now when no call was created."""
        tenant, permit = admission
        if not isinstance(leg, Leg):
            permit.release()
            return
        leg.call.tags["tenant"] = tenant
        self._session(leg.call, tenant).permit = permit

    def _local_number(self, request: Request, tx: ServerTransaction, source: Address,
                      transport: str, caller: str, caller_name: str | None, number: str,
                      now: float) -> bool:
        """Calls to a service number (answered by the switch) or a ring group's number;
        False when ``number`` is neither."""
        service = self.services.get(number)
        if service is not None:
            self.b2bua.new_call(
                request, tx, source, transport, caller=caller, caller_name=caller_name,
                targets=[], callee=number, local=self._start_service(service),
            )
            return True
        group = next((g for g in self.config.groups if g.number == number), None)
        if group is None:
            return False
        forks = [f for m in group.members for f in self._fork_targets(ExtensionTarget(m), now)]
        if not forks:
            self.stack.send_response(tx, build_response(
                request, 480, "Not Registered", to_tag=new_tag()))
            return True
        self.b2bua.new_call(request, tx, source, transport, caller=caller,
                            caller_name=caller_name, targets=forks, callee=number)
        return True

    def _fork_targets(self, target: ExtensionTarget | TrunkTarget, now: float) -> list[ForkTarget]:
        host = self.config.sip.address
        if isinstance(target, TrunkTarget):
            trunk = target.trunk
            uri = f"sip:{target.number}@{trunk.host}:{trunk.port}"
            if trunk.transport in ("tcp", "tls"):
                uri += f";transport={trunk.transport}"
            return [ForkTarget(uri, uri, (trunk.host, trunk.port), trunk.transport, trunk)]
        forks: list[ForkTarget] = []
        to_uri = f"sip:{target.number}@{host}"
        for binding in self.location.lookup(target.number, now):
            try:
                dest, transport = self.b2bua.resolve(binding.contact, binding.transport)
            except SipParseError:
                continue
            if binding.transport in ("tcp", "tls") and self.stack.has_connection(
                    binding.source, binding.transport):
                # Reuse the flow the phone registered on (it may not accept new connections;
                # over TLS it has no certificate to accept them with), RFC 5626 section 4.
                dest, transport = binding.source, binding.transport
            forks.append(ForkTarget(binding.contact, to_uri, dest, transport))
        return forks


def _journal_path(store: StoreConfig) -> Path | None:
    """``[store] journal``: "" means beside a SQLite database file (none for a server)."""
    if store.journal == "off":
        return None
    if store.journal:
        return Path(store.journal)
    if store.url.startswith("sqlite:///") and ":memory:" not in store.url:
        return Path(store.url[len("sqlite:///"):] + ".journal")
    return None


def _store_url(url: str) -> str:
    """``sqlite:///x.db`` (the documented form) means the async SQLite driver."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    return url


def _load_flows(config: Config, prompts: PromptLibrary) -> dict[str, Flow]:
    """Validate the configured call flows now, so a flow that cannot run fails at start."""
    from switch.flows import FlowError, load_flows

    def exists(name: str) -> bool:
        try:
            prompts.resolve(name)
        except Exception:
            return False
        return True

    try:
        return load_flows([dict(f) for f in config.flows], exists)
    except FlowError as exc:
        raise ConfigError("flows", str(exc)) from None


def _digest_username(value: str) -> str | None:
    """The ``username`` of a Digest credentials header, None when it has none."""
    try:
        return parse_auth_header(value)[1].get("username")
    except ValueError:
        return None


def _unsupported_requirements(request: Request) -> list[str]:
    tags: list[str] = []
    for value in request.headers.get_all("Require"):
        tags.extend(t.strip() for t in value.split(",") if t.strip())
    return tags


async def run_switch(config: Config) -> None:
    """Run the switch until SIGINT or SIGTERM, then drain (see :meth:`Switch.drain`) and shut
    down; a second signal during the drain hangs up the remaining calls at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    switch = Switch(config)

    def on_signal() -> None:
        # The first signal drains ([calls] drain_timeout); a second one hangs up at once.
        if stop.is_set():
            log.info("second signal: hanging up the remaining calls now")
            switch.abort_drain()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):
            pass
    async with switch:
        # A long-running server: move start-up objects out of the collector's sight and make
        # young-generation collections rarer (per-call garbage dies young), which keeps the
        # long full collections off the signalling path (measured: 75-550 ms pauses at 300
        # calls per second with the defaults).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        await stop.wait()
        log.info("shutting down: no new calls; draining")
        await switch.drain()
