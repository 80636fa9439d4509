"""The B2BUA: every call is two legs, each a full SIP dialog owned by the switch.

Leg A is the dialog with the caller (we are its UAS); leg B is the dialog we create toward the
callee (we are its UAC; an extension with several contacts is forked in parallel and the first
2xx wins). Media is anchored: each leg has its own RTP endpoint in the switch and the SDP on
each leg names the switch, never the other party (RFC 3264 offer/answer on each leg).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from media.dtmf import DtmfEvent
from media.engine import MediaEngine, RtpEndpoint
from media.recording import CallRecorder
from media.sdp import (
    DEFAULT_CODECS,
    Codec,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    audio_codecs,
    build_answer,
    build_offer,
    negotiate,
    remote_rtp_address,
)
from sip.dialog import Dialog, create_cancel
from sip.digest import DigestClient, choose_challenge
from sip.errors import SipParseError
from sip.message import Headers, Request, Response, build_response
from sip.stack import SipStack, new_tag
from sip.transaction import ClientTransaction, ServerTransaction
from sip.uri import header_tag, parse_uri
from switch.config import Trunk
from switch.legmedia import LegMedia

log = logging.getLogger(__name__)

Address = tuple[str, int]
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER"


class Outcome(enum.StrEnum):
    """The normalised end of a leg."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELED = "canceled"


# RFC 3398 section 8.2.6.1: SIP status -> ISDN (Q.850) cause.
_Q850 = {
    400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102, 410: 22,
    413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127, 480: 18, 481: 41,
    482: 25, 483: 25, 484: 28, 485: 1, 486: 17, 487: 127, 488: 127, 500: 41, 501: 79, 502: 38,
    503: 41, 504: 102, 505: 127, 600: 17, 603: 21, 604: 1, 606: 58,
}


def q850_for(status: int) -> int:
    """The Q.850 cause for a final SIP status (16, normal clearing, for 2xx)."""
    if status < 300:
        return 16
    return _Q850.get(status, 31 if status < 500 else 41)


def outcome_for(status: int, *, no_answer: bool = False, canceled: bool = False) -> Outcome:
    """Map a final SIP status to a normalised outcome."""
    if status < 300:
        return Outcome.ANSWERED
    if canceled or status == 487:
        return Outcome.CANCELED
    if no_answer or status in (408, 480):
        return Outcome.NO_ANSWER
    if status in (486, 600):
        return Outcome.BUSY
    if status in (403, 404, 484, 485, 603, 604, 606, 488, 415, 416, 420):
        return Outcome.REJECTED
    return Outcome.FAILED


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One event of a call, in order: ``seq`` increases by one per event switch-wide."""

    seq: int
    time: float  # Unix time
    name: str  # initiated, ringing, early-media, answered, bridged, dtmf, hangup, completed, ...
    call_id: str
    leg_id: str | None
    data: dict[str, Any]


class LegState(enum.StrEnum):
    """Where a leg's INVITE dialog stands."""

    TRYING = "trying"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(eq=False)
class Leg:
    """One SIP dialog of a call, with its media endpoint."""

    call: Call
    role: str  # "uas" (the caller's leg) or "uac" (a leg we placed)
    transport: str
    dest: Address  # where requests in this dialog are sent
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: LegState = LegState.TRYING
    dialog: Dialog | None = None
    invite: Request | None = None
    server_tx: ServerTransaction | None = None
    client_tx: ClientTransaction | None = None
    rtp: RtpEndpoint | None = None
    codecs: list[Codec] = field(default_factory=list)
    local_sdp: SessionDescription | None = None
    trunk: Trunk | None = None
    auth_tries: int = 0
    got_provisional: bool = False
    cancel_pending: bool = False
    canceled: bool = False
    final_status: int | None = None
    outcome: Outcome | None = None
    q850: int | None = None
    target: str = ""
    answered_at: float | None = None
    ended_at: float | None = None
    media: LegMedia | None = None
    digits: list[str] = field(default_factory=list)
    late_offer: bool = False  # INVITE without SDP: we offer in the 2xx, the ACK answers
    group: Group | None = None  # a leg the switch originated (see B2BUA.originate)
    bridged_to: Leg | None = None


@dataclass(eq=False)
class Call:
    """A B2BUA call: the caller's leg and the leg(s) placed for it."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    a: Leg | None = None
    forks: list[Leg] = field(default_factory=list)
    b: Leg | None = None
    caller: str = ""
    callee: str = ""
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    ring_timer: asyncio.TimerHandle | None = None
    ended: bool = False
    b_rtp: RtpEndpoint | None = None
    early_answered: bool = False
    max_forwards: int = 70
    recorders: list[CallRecorder] = field(default_factory=list)
    recordings: list[dict[str, Any]] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)  # legs the switch originated
    endpoints: list[RtpEndpoint] = field(default_factory=list)  # their RTP endpoints
    variables: dict[str, str] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)  # front-end ids, tenant, caller ID...
    answered_locally: bool = False


@dataclass(eq=False)
class Group:
    """A leg the switch originated: one public leg id, one RTP endpoint, and the SIP forks
    that ring in parallel for it (every contact of an extension, every member of a ring group);
    the first fork to answer becomes the leg."""

    call: Call
    id: str
    destination: str
    forks: list[Leg] = field(default_factory=list)
    endpoint: RtpEndpoint | None = None
    winner: Leg | None = None
    ring_timer: asyncio.TimerHandle | None = None
    result: asyncio.Future[Outcome] | None = None
    early_media: bool = False
    outcome: Outcome | None = None
    status: int | None = None
    q850: int | None = None
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None

    @property
    def leg(self) -> Leg | None:
        """The leg that answered, else the first fork (for its state and outcome)."""
        return self.winner or (self.forks[0] if self.forks else None)


@dataclass(frozen=True, slots=True)
class ForkTarget:
    """Where to send one branch of leg B."""

    request_uri: str
    to_uri: str
    dest: Address
    transport: str
    trunk: Trunk | None = None


class B2BUA:
    """Creates and tears down calls; owns the dialog index for in-dialog requests."""

    def __init__(
        self,
        stack: SipStack,
        media: MediaEngine,
        *,
        ring_timeout: float,
        user_agent: str,
        max_forwards: int,
        on_event: Callable[[CallEvent], None] | None = None,
        inband_dtmf: str = "auto",
        record_dir: Path | None = None,
        record_calls: bool = False,
    ) -> None:
        self.stack = stack
        self.media = media
        self.ring_timeout = ring_timeout
        self.user_agent = user_agent
        self.max_forwards = max_forwards
        self.calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str, str], Leg] = {}
        self._on_event = on_event
        self.accepting = True
        self.inband_dtmf = inband_dtmf
        self.record_dir = record_dir
        self.record_calls = record_calls
        self._seq = 0
        self.legs: dict[str, Leg] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_call_end: Callable[[Call], None] | None = None

    # ---- helpers ---------------------------------------------------------------------------

    def emit(self, name: str, call: Call, leg: Leg | None = None, **data: Any) -> None:
        """Publish a call event (for the call-control layer's own events)."""
        self._emit(name, call, leg, **data)

    def _emit(self, name: str, call: Call, leg: Leg | None = None, **data: Any) -> None:
        self._seq += 1
        if self._on_event is None:
            return
        event = CallEvent(self._seq, time.time(), name, call.id, leg.id if leg else None, data)
        try:
            self._on_event(event)
        except Exception:
            log.exception("event hook failed")

    def _attach_media(self, leg: Leg, endpoint: RtpEndpoint, codecs: list[Codec]) -> None:
        """Give a leg its DTMF detection, playback and recording taps."""
        if leg.media is not None:
            leg.media.set_codecs(codecs)
            return
        call = leg.call

        def on_dtmf(event: DtmfEvent) -> None:
            leg.digits.append(event.digit)
            self._emit("dtmf", call, leg, digit=event.digit, duration_ms=event.duration_ms,
                       transport=event.transport)

        leg.media = LegMedia(endpoint, codecs, on_dtmf, inband=self.inband_dtmf)
        for recorder in call.recorders:
            self._tap(call, recorder, leg)

    def _tap(self, call: Call, recorder: CallRecorder, leg: Leg) -> None:
        if leg.media is None:
            return
        first = call.a if call.a is not None else (
            call.groups[0].winner if call.groups else None)
        index = 0 if leg is first else 1
        pts = {c.payload_type: c.name.upper() for c in leg.codecs
               if c.name.upper() in ("PCMU", "PCMA")}
        leg.media.taps.append(recorder.packet_hook(index, pts or None))

    def start_recording(self, call: Call, path: Path, *, stereo: bool = True) -> CallRecorder:
        """Record the call to ``path``: one channel per leg (A left, B right), or a mono mix."""
        path.parent.mkdir(parents=True, exist_ok=True)
        recorder = CallRecorder(path, stereo=stereo, legs=2)
        call.recorders.append(recorder)
        for leg in [call.a, call.b]:
            if leg is not None:
                self._tap(call, recorder, leg)
        return recorder

    def _respond(self, leg: Leg, status: int, *, body: bytes = b"", reason: str | None = None,
                 extra: list[tuple[str, str]] | None = None) -> None:
        """Answer leg A's INVITE."""
        assert leg.server_tx is not None and leg.invite is not None and leg.dialog is not None
        headers = list(extra or [])
        if status < 300 or (100 < status < 200):
            headers.append(("Contact", f"<{self.stack.contact_uri(leg.transport)}>"))
        if body:
            headers.append(("Content-Type", "application/sdp"))
        if status >= 300:
            headers.append(("Reason", f"Q.850;cause={q850_for(status)}"))
        headers.append(("Allow", ALLOW))
        headers.append(("Server", self.user_agent))
        response = build_response(
            leg.invite, status, reason, to_tag=leg.dialog.local_tag if status > 100 else None,
            body=body, extra=headers,
        )
        self.stack.send_response(leg.server_tx, response)

    def _index(self, leg: Leg) -> None:
        d = leg.dialog
        if d is not None and d.remote_tag:
            self._dialogs[(d.call_id, d.local_tag, d.remote_tag)] = leg

    def _unindex(self, leg: Leg) -> None:
        d = leg.dialog
        if d is not None and d.remote_tag:
            self._dialogs.pop((d.call_id, d.local_tag, d.remote_tag), None)

    def find_leg(self, request: Request) -> Leg | None:
        """The leg an in-dialog request belongs to (To tag is ours, From tag is theirs)."""
        try:
            to_tag = header_tag(request.first("To"))
            from_tag = header_tag(request.first("From"))
        except SipParseError:
            return None
        if not to_tag or not from_tag:
            return None
        return self._dialogs.get((request.call_id, to_tag, from_tag))

    def resolve(self, uri_text: str, transport_hint: str | None = None) -> tuple[Address, str]:
        """Next-hop address and transport for a URI (RFC 3263 reduced to numeric hosts).

        A ``sips:`` URI is reached over TLS whatever its transport parameter says (RFC 5630
        section 3.1.3); TLS without a port means 5061 (RFC 3263 section 4.2).
        """
        uri = parse_uri(uri_text)
        host, port = uri.host_port()
        transport = str(uri.params.get("transport") or transport_hint or "udp").lower()
        if uri.scheme == "sips":
            transport = "tls"
        if transport == "tls" and uri.port is None:
            port = 5061
        return (host, port), transport

    # ---- incoming INVITE (new call) --------------------------------------------------------

    def new_call(
        self,
        request: Request,
        tx: ServerTransaction,
        source: Address,
        transport: str,
        *,
        caller: str,
        caller_name: str | None,
        targets: list[ForkTarget],
        callee: str,
        local: Callable[[Call], object] | None = None,
    ) -> Call:
        """Accept an authenticated, routed INVITE and place leg B toward ``targets``.

        With ``local`` (a service of the switch itself: a call flow, quick dial...), no leg B is
        placed: the switch answers leg A and calls ``local(call)``, which drives the call
        (play, gather, originate and bridge) through the call-control verbs.
        """
        call = Call(caller=caller, callee=callee)
        a = Leg(call=call, role="uas", transport=transport, dest=source, invite=request,
                server_tx=tx, target=caller)
        call.a = a
        self.legs[a.id] = a
        tx.user_data = a
        contact = self.stack.contact_uri(transport)
        a.dialog = Dialog.uas(request, new_tag(), contact)
        self._fix_leg_dest(a)
        self._index(a)
        self.calls[call.id] = call
        mf = request.headers.get("Max-Forwards")
        call.max_forwards = (int(mf) - 1) if mf is not None and mf.isdigit() else self.max_forwards
        self._respond(a, 100)
        self._emit("initiated", call, a, caller=caller, callee=callee)
        asyncio.get_running_loop().create_task(
            self._start_call(call, request, targets, caller, caller_name, callee, local)
        )
        return call

    def _fix_leg_dest(self, leg: Leg) -> None:
        """Requests in leg A's dialog go to its remote target, or back on its TCP/TLS flow."""
        if leg.dialog is None:
            return
        if leg.transport in ("tcp", "tls") and self.stack.has_connection(leg.dest, leg.transport):
            return
        try:
            leg.dest, leg.transport = self.resolve(leg.dialog.next_hop(), leg.transport)
        except SipParseError:
            pass

    async def _start_call(
        self,
        call: Call,
        request: Request,
        targets: list[ForkTarget],
        caller: str,
        caller_name: str | None,
        callee: str,
        local: Callable[[Call], object] | None = None,
    ) -> None:
        a = call.a
        assert a is not None
        try:
            offer = SessionDescription.parse(request.body) if request.body else None
        except SdpError:
            self._fail_a(call, 400, "Bad SDP")
            return
        if offer is None:
            # Late offer (RFC 3261 section 13.2.1): leg B gets our own offer; leg A gets an
            # offer in our 2xx and answers in its ACK.
            a.late_offer = True
            codecs_a = list(DEFAULT_CODECS)
        else:
            try:
                codecs_a = negotiate(offer)
            except SdpNegotiationError:
                self._fail_a(call, 488, "Not Acceptable Here")
                return
        try:
            a.rtp = await self.media.allocate()
            if local is None:
                call.b_rtp = await self.media.allocate()
        except Exception:
            log.exception("no RTP ports for call %s", call.id)
            self._fail_a(call, 503, "No media ports")
            return
        if call.ended or a.state == LegState.TERMINATED:
            self._release_media(call)
            return
        a.codecs = codecs_a
        try:
            if offer is not None:
                a.rtp.set_remote(remote_rtp_address(offer), codecs_a)
        except ValueError:
            # c= names a host name or the other address family: we cannot send there.
            self._release_media(call)
            self._fail_a(call, 488, "Unusable media address")
            return
        a.local_sdp = None
        if local is not None:
            self._answer_locally(call, local)
            return
        assert call.b_rtp is not None
        # Leg B is offered the caller's codecs first, then any G.711 law the caller lacks:
        # if the callee only speaks the other law, the relay transcodes (PCMU <-> PCMA).
        have = {c.name.upper() for c in codecs_a}
        extra = [c for c in DEFAULT_CODECS if c.name.upper() not in have]
        used_pts = {c.payload_type for c in codecs_a}
        codecs_b = list(codecs_a) + [c for c in extra if c.payload_type not in used_pts]
        b_offer = build_offer(
            call.b_rtp.local_address[0], call.b_rtp.local_address[1], codecs_b,
            session_id=secrets.randbelow(2**31),
        )
        self._send_forks(call, targets, b_offer.to_bytes(), caller, caller_name)
        loop = asyncio.get_running_loop()
        call.ring_timer = loop.call_later(self.ring_timeout, self._ring_timeout, call)

    def _send_forks(self, call: Call, targets: list[ForkTarget], body: bytes, caller: str,
                    caller_name: str | None, group: Group | None = None) -> None:
        """Send one INVITE per target, all in one Call-ID with one From tag (parallel forking,
        RFC 3261 section 16.7 done by the UAC side of a B2BUA)."""
        call_id = f"{uuid.uuid4().hex}@{self.stack.address}"
        from_tag = new_tag()
        display = f"{quote_display(caller_name)} " if caller_name else ""
        from_host = self.stack.address
        for target in targets:
            user = caller
            if target.trunk is not None and target.trunk.from_user:
                user = target.trunk.from_user
            headers = Headers(
                [
                    ("Via", self.stack.via(target.transport)),
                    ("Max-Forwards", str(call.max_forwards)),
                    ("From", f"{display}<sip:{user}@{from_host}>;tag={from_tag}"),
                    ("To", f"<{target.to_uri}>"),
                    ("Call-ID", call_id),
                    ("CSeq", "1 INVITE"),
                    ("Contact", f"<{self.stack.contact_uri(target.transport, user)}>"),
                    ("Allow", ALLOW),
                    ("User-Agent", self.user_agent),
                    ("Content-Type", "application/sdp"),
                ]
            )
            invite = Request(method="INVITE", uri=target.request_uri, headers=headers, body=body)
            leg = Leg(call=call, role="uac", transport=target.transport, dest=target.dest,
                      invite=invite, trunk=target.trunk, target=target.request_uri, group=group)
            call.forks.append(leg)
            if group is not None:
                # Every fork of an originated leg carries the leg's public id.
                leg.id = group.id
                group.forks.append(leg)
                self.legs.setdefault(group.id, leg)
            else:
                self.legs[leg.id] = leg
                self._emit("leg-initiated", call, leg, target=target.request_uri)
            leg.client_tx = self.stack.send_request(invite, target.dest, target.transport, leg)

    def _fail_a(self, call: Call, status: int, reason: str | None = None,
                *, outcome: Outcome | None = None) -> None:
        """Answer leg A with a final failure and end the call."""
        a = call.a
        assert a is not None
        if a.state in (LegState.TRYING, LegState.EARLY):
            self._respond(a, status, reason=reason)
            a.final_status = status
            a.outcome = outcome or outcome_for(status)
            a.q850 = q850_for(status)
            a.state = LegState.TERMINATED
        self._end_call(call)

    # ---- calls answered by the switch itself, legs the switch originates -------------------

    def _answer_locally(self, call: Call, service: Callable[[Call], object]) -> None:
        """Answer leg A from our own endpoint and hand the call to a switch service."""
        a = call.a
        assert a is not None
        try:
            body = self._a_answer_sdp(call)
        except (SdpError, ValueError):
            self._fail_a(call, 488, "Not Acceptable Here")
            return
        now = time.time()
        call.answered_locally = True
        call.answered_at = a.answered_at = now
        a.state = LegState.CONFIRMED
        a.final_status = 200
        a.outcome = Outcome.ANSWERED
        a.q850 = 16
        self._respond(a, 200, body=body)
        self._emit("answered", call, a, status=200, local=True)
        try:
            service(call)
        except Exception:
            log.exception("service for call %s failed", call.id)
            self.hangup(call)

    def originate(
        self,
        targets: list[ForkTarget],
        *,
        destination: str,
        caller: str,
        caller_name: str | None = None,
        call: Call | None = None,
        ring_timeout: float | None = None,
        leg_id: str | None = None,
    ) -> Group:
        """Place a leg from the switch toward ``targets`` (forked in parallel; the first to
        answer is the leg). Returns at once with the leg's id; ``group.result`` resolves with
        the leg's outcome when it answers or ends. Without ``call`` a new call is created."""
        loop = asyncio.get_running_loop()
        if call is None:
            call = Call(caller=caller, callee=destination)
            call.max_forwards = self.max_forwards
            self.calls[call.id] = call
            self._emit("initiated", call, None, caller=caller, callee=destination,
                       originated=True)
        if call.ended:
            raise RuntimeError(f"call {call.id} has ended")
        group = Group(call=call, id=leg_id or str(uuid.uuid4()), destination=destination)
        group.result = loop.create_future()
        call.groups.append(group)
        self._emit_leg("leg-initiated", call, group.id, destination=destination)
        task = loop.create_task(self._place_group(group, targets, caller, caller_name,
                                                  ring_timeout or self.ring_timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return group

    async def _place_group(self, group: Group, targets: list[ForkTarget], caller: str,
                           caller_name: str | None, ring_timeout: float) -> None:
        call = group.call
        if not targets:
            self._group_fail(group, 480, "Temporarily Unavailable")
            return
        try:
            endpoint = await self.media.allocate()
        except Exception:
            log.exception("no RTP ports for leg %s", group.id)
            self._group_fail(group, 503, "No media ports")
            return
        if call.ended or (group.result is not None and group.result.done()):
            endpoint.close()
            self._group_fail(group, 487, "Request Terminated", outcome=Outcome.CANCELED)
            return
        group.endpoint = endpoint
        call.endpoints.append(endpoint)
        offer = build_offer(endpoint.local_address[0], endpoint.local_address[1],
                            list(DEFAULT_CODECS), session_id=secrets.randbelow(2**31))
        self._send_forks(call, targets, offer.to_bytes(), caller, caller_name, group)
        group.ring_timer = asyncio.get_running_loop().call_later(
            ring_timeout, self._group_ring_timeout, group)

    def _emit_leg(self, name: str, call: Call, leg_id: str, **data: Any) -> None:
        self._seq += 1
        if self._on_event is None:
            return
        event = CallEvent(self._seq, time.time(), name, call.id, leg_id, data)
        try:
            self._on_event(event)
        except Exception:
            log.exception("event hook failed")

    def _group_response(self, leg: Leg, response: Response, tx: ClientTransaction | None) -> None:
        group = leg.group
        assert group is not None
        call = leg.call
        status = response.status
        if status < 200:
            leg.got_provisional = True
            if leg.cancel_pending:
                self._send_cancel(leg)
                return
            if call.ended or leg.state == LegState.TERMINATED or group.winner is not None:
                return
            self._early_dialog(leg, response)
            first = not any(f.state == LegState.EARLY for f in group.forks)
            leg.state = LegState.EARLY
            if first:
                self._emit("ringing", call, leg, status=status)
            if response.body and not group.early_media and self._take_answer(leg, response):
                group.early_media = True
                self._emit("early-media", call, leg)
            return
        if status < 300:
            assert tx is not None
            self._group_answered(leg, response, tx)
            return
        if status in (401, 407) and self._retry_with_auth(leg, response):
            return
        leg.final_status = status
        if leg.outcome is None:
            leg.outcome = outcome_for(status)
        leg.q850 = q850_for(status)
        leg.state = LegState.TERMINATED
        leg.ended_at = time.time()
        self._unindex(leg)
        if any(f.state in (LegState.TRYING, LegState.EARLY) for f in group.forks):
            return
        finals = [f.final_status for f in group.forks if f.final_status]
        best = _best_status([s for s in finals if s is not None]) or status
        outcomes = {f.outcome for f in group.forks}
        outcome = Outcome.NO_ANSWER if Outcome.NO_ANSWER in outcomes else None
        if best in (401, 407):
            best = 502
        self._group_fail(group, best, response.reason if best == status else None,
                         outcome=outcome)

    def _take_answer(self, leg: Leg, response: Response) -> bool:
        """Point an originated leg's endpoint at the SDP answer in ``response``."""
        group = leg.group
        assert group is not None
        if group.endpoint is None:
            return False
        try:
            answer = SessionDescription.parse(response.body)
            codecs = audio_codecs(answer)
            if not codecs:
                return False
            group.endpoint.set_remote(remote_rtp_address(answer), codecs)
        except (SdpError, ValueError):
            return False
        leg.codecs = codecs
        leg.rtp = group.endpoint
        if leg.media is None:
            for other in group.forks:  # an early-media fork lost: its detector moves over
                if other is not leg and other.media is not None:
                    leg.media, other.media = other.media, None
                    other.rtp = None
        self._attach_media(leg, group.endpoint, codecs)
        return True

    def _group_answered(self, leg: Leg, response: Response, tx: ClientTransaction) -> None:
        group = leg.group
        assert group is not None and leg.invite is not None
        call = leg.call
        self._confirm_dialog(leg, response, tx)
        done = group.result is not None and group.result.done()
        if call.ended or group.winner is not None or done:
            leg.state = LegState.CONFIRMED
            self._send_bye(leg)  # too late: another fork won or the leg was given up
            return
        leg.state = LegState.CONFIRMED
        if not response.body or not self._take_answer(leg, response):
            if not group.early_media:
                self._send_bye(leg)
                self._group_fail(group, 488, "Not Acceptable Here")
                return
            leg.rtp = group.endpoint
        group.winner = leg
        self.legs[group.id] = leg
        if group.ring_timer is not None:
            group.ring_timer.cancel()
            group.ring_timer = None
        for other in group.forks:
            if other is not leg and other.state in (LegState.TRYING, LegState.EARLY):
                other.outcome = Outcome.CANCELED
                self._cancel_fork(other)
        now = time.time()
        leg.final_status = response.status
        leg.outcome = group.outcome = Outcome.ANSWERED
        leg.q850 = group.q850 = 16
        group.status = response.status
        leg.answered_at = group.answered_at = now
        if call.answered_at is None:
            call.answered_at = now
        self._emit("answered", call, leg, status=response.status)
        if group.result is not None and not group.result.done():
            group.result.set_result(Outcome.ANSWERED)

    def _group_ring_timeout(self, group: Group) -> None:
        group.ring_timer = None
        if group.winner is not None:
            return
        for fork in group.forks:
            if fork.state in (LegState.TRYING, LegState.EARLY):
                fork.outcome = Outcome.NO_ANSWER
                self._cancel_fork(fork)
        self._group_fail(group, 480, "No Answer", outcome=Outcome.NO_ANSWER)

    def _group_fail(self, group: Group, status: int, reason: str | None = None,
                    *, outcome: Outcome | None = None) -> None:
        """An originated leg ended without answering."""
        if group.result is not None and group.result.done():
            return
        call = group.call
        if group.ring_timer is not None:
            group.ring_timer.cancel()
            group.ring_timer = None
        group.status = status
        group.outcome = outcome or outcome_for(status)
        group.q850 = q850_for(status)
        group.ended_at = time.time()
        for fork in group.forks:
            if fork.state in (LegState.TRYING, LegState.EARLY):
                fork.outcome = group.outcome
                self._cancel_fork(fork)
        rep = group.leg
        if rep is not None:
            rep.final_status, rep.outcome, rep.q850 = status, group.outcome, group.q850
        self._emit_leg("leg-completed", call, group.id, outcome=group.outcome.value,
                       sip_status=status, q850=group.q850, reason=reason)
        if group.result is not None:
            group.result.set_result(group.outcome)
        if not self._call_alive(call):
            self._end_call(call)

    def fail_unplaced(self, call: Call, leg_id: str, destination: str, reason: str) -> None:
        """A leg that never went out (held back by limits): record it failed (503) and end
        the call, so the CDR shows the attempt."""
        group = Group(call=call, id=leg_id, destination=destination)
        group.result = asyncio.get_running_loop().create_future()
        call.groups.append(group)
        self._group_fail(group, 503, reason)
        self._end_call(call)

    def _call_alive(self, call: Call) -> bool:
        """True while any leg of the call is up or still ringing."""
        a = call.a
        if a is not None and a.state != LegState.TERMINATED:
            return True
        for group in call.groups:
            if group.result is not None and not group.result.done():
                return True
            if group.winner is not None and group.winner.state == LegState.CONFIRMED:
                return True
        return False

    def bridge(self, x: Leg, y: Leg) -> None:
        """Connect the media of two answered legs (of one call, or of two calls, which then
        become one: one CDR links both legs)."""
        for leg in (x, y):
            if leg.state != LegState.CONFIRMED or leg.rtp is None or leg.media is None:
                raise ValueError(f"leg {leg.id} is not answered")
        if x is y:
            raise ValueError("cannot bridge a leg to itself")
        if x.call is not y.call:
            self._merge(x.call, y.call)
        call = x.call
        for leg in (x, y):
            other = leg.bridged_to
            if other is not None and other not in (x, y):
                other.bridged_to = None
                if other.media is not None:
                    other.media.peer = None
            assert leg.media is not None
            leg.media.stop_playback()
        assert x.rtp is not None and y.rtp is not None and x.media and y.media
        self.media.bridge(x.rtp, y.rtp)
        x.media.peer, y.media.peer = y.media, x.media
        x.bridged_to, y.bridged_to = y, x
        if call.answered_at is None:
            call.answered_at = time.time()
        call.tags.setdefault("bridged_at", time.time())
        want = call.tags.get("record")
        if (want is True or (want is None and self.record_calls)) and not call.recorders \
                and self.record_dir is not None:
            self.start_recording(call, self.record_dir / f"{call.id}.wav")
        else:
            for recorder in call.recorders:  # a leg joined a recorded call
                for leg in (x, y):
                    self._tap(call, recorder, leg)
        self._emit("bridged", call, x, a_leg=x.id, b_leg=y.id)

    def _merge(self, dst: Call, src: Call) -> None:
        """Move every leg of ``src`` into ``dst`` (bridging legs of two calls)."""
        moved = ([src.a] if src.a is not None else []) + src.forks
        for leg in moved:
            leg.call = dst
        dst.forks.extend(moved)
        for group in src.groups:
            group.call = dst
        dst.groups.extend(src.groups)
        dst.endpoints.extend(src.endpoints)
        for ep in (src.a.rtp if src.a else None, src.b_rtp):
            if ep is not None:
                dst.endpoints.append(ep)
        dst.recorders.extend(src.recorders)
        dst.recordings.extend(src.recordings)
        for key, value in src.variables.items():
            dst.variables.setdefault(key, value)
        if src.ring_timer is not None:
            src.ring_timer.cancel()
        src.ended = True
        self.calls.pop(src.id, None)
        self._emit("merged", dst, None, from_call=src.id)

    def hangup_leg(self, leg: Leg) -> None:
        """End one leg (BYE when answered, CANCEL or a final response while it rings); the
        call ends when no leg is left."""
        call = leg.call
        group = leg.group
        if group is not None and group.winner is None:
            self._group_fail(group, 487, "Request Terminated", outcome=Outcome.CANCELED)
            return
        if leg is call.a and leg.state in (LegState.TRYING, LegState.EARLY):
            self.hangup(call)
            return
        if leg.state == LegState.CONFIRMED:
            self._send_bye(leg)
            if group is not None:
                group.ended_at = leg.ended_at
            other = leg.bridged_to
            if other is not None:
                other.bridged_to = None
                if other.media is not None:
                    other.media.peer = None
                if leg.rtp is not None:
                    self.media.unbridge(leg.rtp)
            self._emit("hangup", call, leg, by="switch")
        if not self._call_alive(call):
            self._end_call(call)

    # ---- responses on leg B ----------------------------------------------------------------

    def on_response(self, leg: Leg, response: Response, tx: ClientTransaction) -> None:
        """A response for one of our INVITEs (a fork of leg B)."""
        if leg.group is not None:
            if response.status != 100:
                self._group_response(leg, response, tx)
            return
        call = leg.call
        status = response.status
        if status == 100:
            return
        if status < 200:
            self._b_provisional(call, leg, response)
        elif status < 300:
            self._b_answered(call, leg, response, tx)
        else:
            self._b_failed(call, leg, response)

    def _b_provisional(self, call: Call, leg: Leg, response: Response) -> None:
        leg.got_provisional = True
        if leg.cancel_pending:
            self._send_cancel(leg)
            return
        if call.ended or leg.state == LegState.TERMINATED:
            return
        self._early_dialog(leg, response)
        leg.state = LegState.EARLY
        a = call.a
        assert a is not None
        if a.state not in (LegState.TRYING, LegState.EARLY):
            return
        body = b""
        if response.body and not call.early_answered and a.late_offer:
            # No offer may go out in an unreliable provisional: anchor leg B only.
            self._apply_b_answer(call, leg, response)
        elif response.body and not call.early_answered:
            # Early media (RFC 3960): anchor it now and answer leg A in the 183.
            if self._apply_b_answer(call, leg, response):
                body = self._a_answer_sdp(call)
                call.early_answered = True
        status = 183 if body else (180 if response.status in (180, 183) else response.status)
        if not body and response.status == 183:
            status = 180
        a.state = LegState.EARLY
        self._respond(a, status, body=body)
        self._emit("ringing", call, leg)
        if body:
            self._emit("early-media", call, leg)

    def _apply_b_answer(self, call: Call, leg: Leg, response: Response) -> bool:
        """Take leg B's SDP answer: point its endpoint there and bridge."""
        try:
            answer = SessionDescription.parse(response.body)
        except SdpError:
            return False
        codecs = audio_codecs(answer)
        if not codecs or call.b_rtp is None or call.a is None or call.a.rtp is None:
            return False
        leg.codecs = codecs
        leg.rtp = call.b_rtp
        try:
            call.b_rtp.set_remote(remote_rtp_address(answer), codecs)
        except ValueError:
            return False
        self.media.bridge(call.a.rtp, call.b_rtp)
        self._attach_media(leg, call.b_rtp, codecs)
        return True

    def _a_answer_sdp(self, call: Call) -> bytes:
        """Our answer to leg A's offer: leg B's chosen codecs with leg A's payload types."""
        a = call.a
        assert a is not None and a.rtp is not None and a.invite is not None
        if a.local_sdp is not None:
            return a.local_sdp.to_bytes()
        chosen_names = [c.name.lower() for c in (call.b.codecs if call.b else [])]
        if not chosen_names:
            for fork in call.forks:
                if fork.codecs:
                    chosen_names = [c.name.lower() for c in fork.codecs]
                    break
        codecs = [c for c in a.codecs if c.name.lower() in chosen_names] or list(a.codecs)
        if not any(c.name.upper() in ("PCMU", "PCMA") for c in codecs):
            # The callee chose a law the caller did not offer: answer the caller with its own
            # first G.711 codec and let the relay transcode.
            first = next((c for c in a.codecs if c.name.upper() in ("PCMU", "PCMA")), None)
            if first is not None:
                codecs.insert(0, first)
        if a.late_offer:
            late = build_offer(a.rtp.local_address[0], a.rtp.local_address[1], codecs,
                               session_id=secrets.randbelow(2**31))
            a.local_sdp = late
            a.codecs = codecs
            self._attach_media(a, a.rtp, codecs)
            return late.to_bytes()
        offer = SessionDescription.parse(a.invite.body)
        answer = build_answer(offer, a.rtp.local_address[0], a.rtp.local_address[1], codecs,
                              session_id=secrets.randbelow(2**31))
        a.local_sdp = answer
        a.rtp.set_remote(remote_rtp_address(offer), codecs)
        a.codecs = codecs
        self._attach_media(a, a.rtp, codecs)
        return answer.to_bytes()

    def _b_answered(self, call: Call, leg: Leg, response: Response, tx: ClientTransaction) -> None:
        assert leg.invite is not None
        self._confirm_dialog(leg, response, tx)
        a = call.a
        assert a is not None
        if call.ended or call.b is not None or a.state not in (LegState.TRYING, LegState.EARLY):
            # Too late (caller gone, or another fork won): hang this one up (RFC 3261 16.7).
            leg.state = LegState.CONFIRMED
            self._send_bye(leg)
            return
        leg.state = LegState.CONFIRMED
        leg.final_status = response.status
        leg.outcome = Outcome.ANSWERED
        leg.q850 = 16
        leg.answered_at = time.time()
        call.b = leg
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        for other in call.forks:
            if other is not leg and other.state in (LegState.TRYING, LegState.EARLY):
                other.outcome = Outcome.CANCELED
                self._cancel_fork(other)
        if not self._apply_b_answer(call, leg, response) and not call.early_answered:
            # A 2xx without a usable answer to our offer: the call cannot carry media.
            self._send_bye(leg)
            self._fail_a(call, 488, "Not Acceptable Here")
            return
        body = self._a_answer_sdp(call)
        if a.media is not None and leg.media is not None:
            a.media.peer = leg.media
            leg.media.peer = a.media
        if self.record_calls and self.record_dir is not None and not call.recorders:
            self.start_recording(call, self.record_dir / f"{call.id}.wav")
        call.answered_at = leg.answered_at
        a.answered_at = leg.answered_at
        a.state = LegState.CONFIRMED
        a.final_status = 200
        a.outcome = Outcome.ANSWERED
        a.q850 = 16
        self._respond(a, 200, body=body)
        self._emit("answered", call, leg, status=response.status)
        self._emit("bridged", call, leg, a_leg=a.id, b_leg=leg.id)

    def _early_dialog(self, leg: Leg, response: Response) -> None:
        """A provisional response with a To tag creates an early dialog (RFC 3261 12.1.2)."""
        if leg.dialog is not None or leg.invite is None:
            return
        try:
            to_tag = header_tag(response.first("To"))
        except SipParseError:
            to_tag = None
        if to_tag:
            leg.dialog = Dialog.uac(leg.invite, response)
            self._index(leg)

    def _confirm_dialog(self, leg: Leg, response: Response, tx: ClientTransaction) -> None:
        """A 2xx confirms the dialog (a new one if another fork's tag answered) and is ACKed
        (RFC 3261 section 13.2.2.4)."""
        assert leg.invite is not None
        if leg.dialog is None or leg.dialog.remote_tag != header_tag(response.first("To")):
            self._unindex(leg)
            leg.dialog = Dialog.uac(leg.invite, response)
        else:
            leg.dialog.update_remote_target(response)
        self._index(leg)
        leg.dest, leg.transport = self._dialog_dest(leg)
        cseq, _ = response.cseq
        self.stack.send_ack(tx, leg.dialog.create_ack(cseq, via=self.stack.via(leg.transport)))

    def _dialog_dest(self, leg: Leg) -> tuple[Address, str]:
        assert leg.dialog is not None
        if leg.transport in ("tcp", "tls") and self.stack.has_connection(leg.dest, leg.transport):
            return leg.dest, leg.transport
        try:
            return self.resolve(leg.dialog.next_hop(), leg.transport)
        except SipParseError:
            return leg.dest, leg.transport

    def _b_failed(self, call: Call, leg: Leg, response: Response) -> None:
        status = response.status
        if status in (401, 407) and self._retry_with_auth(leg, response):
            return
        leg.final_status = status
        if leg.outcome is None:
            leg.outcome = outcome_for(status)
        leg.q850 = q850_for(status)
        leg.state = LegState.TERMINATED
        self._unindex(leg)
        self._emit("leg-completed", call, leg)
        pending = [f for f in call.forks if f.state in (LegState.TRYING, LegState.EARLY)]
        if pending or call.b is not None or call.ended:
            return
        # Every fork failed: pass the best response back (RFC 3261 section 16.7 step 6).
        finals = [f.final_status for f in call.forks if f.final_status]
        best = _best_status([s for s in finals if s is not None]) or status
        reason = response.reason if best == status else None
        if best in (401, 407):
            best, reason = 502, "Trunk authentication failed"
        if best == 487 and not any(f.canceled for f in call.forks):
            best = 480
        self._fail_a(call, best, reason)

    def _retry_with_auth(self, leg: Leg, response: Response) -> bool:
        """Answer a trunk's challenge with that trunk's credentials, once."""
        trunk = leg.trunk
        if trunk is None or not trunk.username or leg.auth_tries >= 1 or leg.invite is None:
            return False
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = choose_challenge(response.headers.get_all(header))
        if challenge is None:
            return False
        leg.auth_tries += 1
        old = leg.invite
        headers = old.headers.copy()
        cseq, _ = old.cseq
        headers.set("CSeq", f"{cseq + 1} INVITE")
        headers.set("Via", self.stack.via(leg.transport))
        auth_name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        headers.set(auth_name, DigestClient.answer(
            challenge, method="INVITE", uri=old.uri, username=trunk.username,
            password=trunk.password, cnonce=secrets.token_hex(8),
        ))
        invite = Request(method="INVITE", uri=old.uri, headers=headers, body=old.body)
        leg.invite = invite
        leg.client_tx = self.stack.send_request(invite, leg.dest, leg.transport, leg)
        return True

    def on_timeout(self, leg: Leg) -> None:
        """A client INVITE transaction timed out (Timer B): treat as 408."""
        if leg.state in (LegState.TRYING, LegState.EARLY):
            timeout = Response(status=408, reason="Request Timeout")
            if leg.group is not None:
                self._group_response(leg, timeout, None)
            else:
                self._b_failed(leg.call, leg, timeout)

    # ---- ending --------------------------------------------------------------------------

    def _ring_timeout(self, call: Call) -> None:
        call.ring_timer = None
        if call.b is not None or call.ended:
            return
        for fork in call.forks:
            if fork.state in (LegState.TRYING, LegState.EARLY):
                fork.outcome = Outcome.NO_ANSWER
                self._cancel_fork(fork)
        self._fail_a(call, 480, "No Answer", outcome=Outcome.NO_ANSWER)

    def cancel_from_a(self, leg: Leg) -> None:
        """The caller sent CANCEL (RFC 3261 section 9.2): 487 to A and CANCEL every fork."""
        call = leg.call
        if leg.state not in (LegState.TRYING, LegState.EARLY):
            return
        for fork in call.forks:
            if fork.state in (LegState.TRYING, LegState.EARLY):
                fork.outcome = Outcome.CANCELED
                self._cancel_fork(fork)
        self._fail_a(call, 487, "Request Terminated", outcome=Outcome.CANCELED)

    def _cancel_fork(self, leg: Leg) -> None:
        if leg.canceled:
            return  # RFC 3261 section 9.1: one CANCEL per INVITE (its transaction retransmits)
        leg.canceled = True
        if leg.got_provisional:
            self._send_cancel(leg)
        else:
            # RFC 3261 section 9.1: no CANCEL before a provisional response has arrived.
            leg.cancel_pending = True

    def _send_cancel(self, leg: Leg) -> None:
        if leg.invite is None or leg.state == LegState.TERMINATED:
            return
        leg.cancel_pending = False
        cancel = create_cancel(leg.invite)
        self.stack.send_request(cancel, leg.dest, leg.transport, None)

    def _send_bye(self, leg: Leg) -> None:
        if leg.dialog is None or leg.state == LegState.TERMINATED:
            return
        dest, transport = self._dialog_dest(leg) if leg.role == "uac" else (leg.dest, leg.transport)
        bye = leg.dialog.create_request("BYE", via=self.stack.via(transport))
        bye.headers.add("User-Agent", self.user_agent)
        self.stack.send_request(bye, dest, transport, None)
        leg.state = LegState.TERMINATED
        leg.ended_at = time.time()
        self._unindex(leg)

    def on_bye(self, leg: Leg, request: Request, tx: ServerTransaction) -> None:
        """BYE on either leg: 200, then BYE the other leg (RFC 3261 section 15.1.2)."""
        self.stack.send_response(tx, build_response(request, 200))
        call = leg.call
        leg.state = LegState.TERMINATED
        leg.ended_at = time.time()
        self._unindex(leg)
        self._emit("hangup", call, leg)
        self._end_call(call)

    def hangup(self, call: Call) -> None:
        """End a call from the switch side (shutdown, API)."""
        a = call.a
        if a is not None and a.state in (LegState.TRYING, LegState.EARLY):
            for fork in call.forks:
                if fork.state in (LegState.TRYING, LegState.EARLY):
                    fork.outcome = Outcome.CANCELED
                    self._cancel_fork(fork)
            self._fail_a(call, 503, "Service Unavailable")
            return
        self._end_call(call)

    def _end_call(self, call: Call) -> None:
        if call.ended:
            return
        call.ended = True
        call.ended_at = time.time()
        if call.ring_timer is not None:
            call.ring_timer.cancel()
            call.ring_timer = None
        legs = ([call.a] if call.a else []) + call.forks
        for leg in legs:
            try:
                if leg.state == LegState.CONFIRMED:
                    self._send_bye(leg)
                elif leg.state in (LegState.TRYING, LegState.EARLY) and leg.role == "uac":
                    if leg.outcome is None:
                        leg.outcome = Outcome.CANCELED
                    self._cancel_fork(leg)
            except Exception:
                # One leg that cannot be torn down must not leak the call and its ports.
                log.exception("ending leg %s of call %s failed", leg.id, call.id)
            if leg.ended_at is None:
                leg.ended_at = call.ended_at
        for group in call.groups:
            if group.ring_timer is not None:
                group.ring_timer.cancel()
                group.ring_timer = None
            if group.ended_at is None:
                group.ended_at = call.ended_at
            if group.result is not None and not group.result.done():
                group.outcome = group.outcome or Outcome.CANCELED
                group.status = group.status or 487
                group.q850 = q850_for(group.status)
                group.result.set_result(group.outcome)
        self._release_media(call)
        self.calls.pop(call.id, None)
        for leg in legs:
            self.legs.pop(leg.id, None)
            # Transactions outlive the call by up to 64*T1 (absorbing retransmissions); let
            # them forget the leg so the finished call is freed young instead of surviving
            # into the oldest GC generation. A leg whose INVITE is still pending keeps its
            # link: a late 2xx must still be ACKed and hung up.
            if leg.state not in (LegState.TRYING, LegState.EARLY):
                for tx in (leg.server_tx, leg.client_tx):
                    if tx is not None:
                        tx.user_data = None
        if self.on_call_end is not None:
            try:
                self.on_call_end(call)
            except Exception:
                log.exception("call-end hook failed for call %s", call.id)
        self._emit("completed", call, None, legs=self.leg_summaries(call))
        if all(leg.state not in (LegState.TRYING, LegState.EARLY) for leg in legs):
            self._unlink(call, legs)

    @staticmethod
    def _unlink(call: Call, legs: list[Leg]) -> None:
        """Cut the references from a finished call to its legs (and between legs), so the
        call, its dialogs and SDP are freed by reference counting when the last transaction
        lets go of a leg, instead of waiting for the cyclic collector: at a few hundred calls
        per second that garbage made its full collections take 100-350 ms, stalling signalling
        and media alike. A leg keeps ``leg.call`` (late responses to our BYE still find it);
        only calls with no INVITE in progress are cut (a late 2xx still needs the call)."""
        for leg in legs:
            leg.bridged_to = None
        call.a = None
        call.b = None
        call.forks = []

    @staticmethod
    def leg_summaries(call: Call) -> list[dict[str, Any]]:
        """One entry per public leg: the caller's, each fork of an inbound call's leg B, and
        each leg the switch originated (its forks folded into one)."""
        out: list[dict[str, Any]] = []
        for leg in ([call.a] if call.a else []) + [f for f in call.forks if f.group is None]:
            out.append({
                "leg_id": leg.id, "role": leg.role, "target": leg.target,
                "outcome": leg.outcome.value if leg.outcome else None,
                "sip_status": leg.final_status, "q850": leg.q850,
                "answered_at": leg.answered_at, "ended_at": leg.ended_at,
            })
        for group in call.groups:
            out.append({
                "leg_id": group.id, "role": "originated", "target": group.destination,
                "outcome": group.outcome.value if group.outcome else None,
                "sip_status": group.status, "q850": group.q850,
                "answered_at": group.answered_at,
                "ended_at": (group.winner.ended_at if group.winner else None) or group.ended_at,
            })
        return out

    def _release_media(self, call: Call) -> None:
        for leg in [call.a, *call.forks]:
            if leg is not None and leg.media is not None:
                leg.media.close()
                leg.media = None
        for recorder in call.recorders:
            try:
                meta = dict(recorder.close())
            except Exception:
                log.exception("closing the recording of call %s failed", call.id)
                continue
            meta["path"] = str(meta.get("path", recorder.path))
            meta.setdefault("id", uuid.uuid4().hex)
            meta.setdefault("call_id", call.id)
            call.recordings.append(meta)
            self._emit("recording-ready", call, None, **meta)
        call.recorders.clear()
        for ep in (call.a.rtp if call.a else None, call.b_rtp, *call.endpoints):
            if ep is not None:
                try:
                    self.media.unbridge(ep)
                except Exception:
                    pass
                ep.close()
        if call.a is not None:
            call.a.rtp = None
        call.b_rtp = None
        call.endpoints.clear()

    def on_ack_timeout(self, leg: Leg) -> None:
        """Our 2xx to leg A was never ACKed (RFC 3261 section 13.3.1.4): end the call."""
        self._end_call(leg.call)

    # ---- other in-dialog requests ----------------------------------------------------------

    def on_in_dialog(self, leg: Leg, request: Request, tx: ServerTransaction) -> None:
        """re-INVITE, UPDATE, INFO, OPTIONS inside a call's dialog."""
        assert leg.dialog is not None
        method = request.method
        if method == "INVITE" or (method == "UPDATE" and request.body):
            # Session refresh / address change: answer from our own endpoint (the media stays
            # anchored, so the other leg does not need to renegotiate).
            body = b""
            if request.body:
                try:
                    offer = SessionDescription.parse(request.body)
                    codecs = negotiate(offer)
                except (SdpError, SdpNegotiationError):
                    self.stack.send_response(tx, build_response(request, 488))
                    return
                ep = leg.rtp if leg.rtp is not None else None
                if ep is None:
                    self.stack.send_response(tx, build_response(request, 488))
                    return
                try:
                    ep.set_remote(remote_rtp_address(offer), codecs)
                    answer = build_answer(offer, ep.local_address[0], ep.local_address[1],
                                          codecs, session_id=secrets.randbelow(2**31))
                except (ValueError, SdpError):
                    self.stack.send_response(tx, build_response(request, 488))
                    return
                body = answer.to_bytes()
            leg.dialog.update_remote_target(request)
            extra = [("Contact", f"<{self.stack.contact_uri(leg.transport)}>"), ("Allow", ALLOW)]
            if body:
                extra.append(("Content-Type", "application/sdp"))
            self.stack.send_response(
                tx, build_response(request, 200, body=body, extra=extra)
            )
            return
        if method == "INFO" and leg.media is not None and request.body:
            ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            dtmf_type = ctype in ("application/dtmf-relay", "application/dtmf")
            if not leg.media.info(ctype, request.body) and dtmf_type:
                self.stack.send_response(tx, build_response(request, 400, "Bad DTMF body"))
                return
        self.stack.send_response(tx, build_response(request, 200, extra=[("Allow", ALLOW)]))

    def on_ack(self, leg: Leg, request: Request) -> None:
        """The ACK for our 2xx on leg A arrived; after a late offer it carries the answer."""
        if not leg.late_offer or leg.rtp is None or leg.rtp.remote is not None:
            return
        try:
            answer = SessionDescription.parse(request.body) if request.body else None
            codecs = audio_codecs(answer) if answer is not None else []
            if answer is None or not codecs:
                raise SdpError("no usable answer in the ACK")
            leg.rtp.set_remote(remote_rtp_address(answer), codecs)
        except (SdpError, ValueError) as exc:
            # RFC 3261 section 13.2.2.4 leaves no way to renegotiate here: end the call.
            log.info("call %s: ACK without a usable SDP answer (%s)", leg.call.id, exc)
            self._end_call(leg.call)
            return
        leg.codecs = codecs
        if leg.media is not None:
            leg.media.set_codecs(codecs)

    async def shutdown(self) -> None:
        """End every call (BYE answered calls, CANCEL/503 the rest)."""
        self.accepting = False
        for call in list(self.calls.values()):
            self.hangup(call)


def quote_display(name: str) -> str:
    """A display name as an RFC 3261 quoted-string (section 25.1): quotes and backslashes
    escaped, control characters (CR, LF...) dropped so nothing can break out of the header."""
    clean = "".join(ch for ch in name if ch >= " " and ch != "\x7f")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _best_status(statuses: list[int]) -> int | None:
    """RFC 3261 section 16.7: prefer 6xx, then the lowest class, 408 least among 4xx."""
    if not statuses:
        return None
    six = [s for s in statuses if s >= 600]
    if six:
        return six[0]

    def rank(s: int) -> tuple[int, int]:
        return (s // 100, 1 if s in (408, 487, 503) else 0)

    return min(statuses, key=rank)


__all__ = ["B2BUA", "Call", "CallEvent", "ForkTarget", "Group", "Leg", "LegState", "Outcome",
           "quote_display"]
