"""Sans-IO SIP transaction layer (RFC 3261 section 17, with the RFC 6026 corrections).

The :class:`TransactionManager` never touches a socket or a clock. The driver feeds it
received datagrams / framed stream messages (:meth:`TransactionManager.receive`) and timer
ticks (:meth:`TransactionManager.handle_timer`), each with the current time ``now`` in
seconds; it collects what to send with :meth:`TransactionManager.take_outgoing` and arms one
timer for :meth:`TransactionManager.next_timer`.

The four state machines are tables keyed by ``(state, input)`` (see ``_TABLES`` at the end
of the module). Every pair has an entry: the ones the RFC does not define are explicit
"unexpected" entries that ignore the input and count it in
``counters["unexpected_input"]``; nothing raises out of :meth:`receive` or
:meth:`handle_timer`.

State names are those of RFC 3261 figures 5-8 and RFC 6026 figures 5 and 7:

* client INVITE: Calling, Proceeding, Completed, Accepted, Terminated (timers A, B, D, M)
* client non-INVITE: Trying, Proceeding, Completed, Terminated (timers E, F, K)
* server INVITE: Proceeding, Completed, Confirmed, Accepted, Terminated (timers G, H, I, L,
  plus "Trying" for the automatic 100 and "2xx" for the 2xx retransmissions)
* server non-INVITE: Trying, Proceeding, Completed, Terminated (timer J)
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from sip.errors import SipParseError, TransactionError
from sip.message import (
    REASONS,
    Headers,
    Message,
    Request,
    Response,
    build_response,
)
from sip.parser import parse_message, salvage_request
from sip.uri import Via, header_tag, parse_via

Address: TypeAlias = tuple[str, int]

#: What :attr:`_Transaction.request` points at once a transaction only absorbs
#: retransmissions (see :meth:`TransactionManager._retire`): a well-formed stand-in, so a TU
#: that still builds a response from it gets one (which the state machine then discards).
RETIRED_REQUEST: Final = Request(method="RETIRED", uri="sip:retired.invalid", headers=Headers([
    ("Via", "SIP/2.0/UDP retired.invalid;branch=z9hG4bKretired"),
    ("From", "<sip:retired.invalid>;tag=retired"),
    ("To", "<sip:retired.invalid>"),
    ("Call-ID", "retired"),
    ("CSeq", "1 RETIRED"),
]))

# RFC 3261 section 8.1.1.7: branches of RFC 3261 elements start with this cookie.
MAGIC_COOKIE: Final = "z9hG4bK"

# Transports with their own reliability (RFC 3261 section 17.1.1.2 and table 4).
RELIABLE_TRANSPORTS: Final = frozenset({"tcp", "tls", "sctp", "ws", "wss"})

# State names (RFC 3261 figures 5-8, RFC 6026).
CALLING: Final = "Calling"
TRYING: Final = "Trying"
PROCEEDING: Final = "Proceeding"
COMPLETED: Final = "Completed"
CONFIRMED: Final = "Confirmed"
ACCEPTED: Final = "Accepted"
TERMINATED: Final = "Terminated"

# Transaction kinds (one state table each).
CLIENT_INVITE: Final = "client_invite"
CLIENT_NON_INVITE: Final = "client_non_invite"
SERVER_INVITE: Final = "server_invite"
SERVER_NON_INVITE: Final = "server_non_invite"

STATES: Final[dict[str, tuple[str, ...]]] = {
    CLIENT_INVITE: (CALLING, PROCEEDING, COMPLETED, ACCEPTED, TERMINATED),
    CLIENT_NON_INVITE: (TRYING, PROCEEDING, COMPLETED, TERMINATED),
    SERVER_INVITE: (PROCEEDING, COMPLETED, CONFIRMED, ACCEPTED, TERMINATED),
    SERVER_NON_INVITE: (TRYING, PROCEEDING, COMPLETED, TERMINATED),
}

INPUTS: Final[dict[str, tuple[str, ...]]] = {
    CLIENT_INVITE: (
        "1xx", "2xx", "3xx-6xx", "timer_A", "timer_B", "timer_D", "timer_M", "transport_error",
    ),
    CLIENT_NON_INVITE: ("1xx", "final", "timer_E", "timer_F", "timer_K", "transport_error"),
    SERVER_INVITE: (
        "request", "ack", "send_1xx", "send_2xx", "send_final", "timer_Trying", "timer_2xx",
        "timer_G", "timer_H", "timer_I", "timer_L", "transport_error",
    ),
    SERVER_NON_INVITE: (
        "request", "send_1xx", "send_final", "timer_J", "transport_error",
    ),
}

# RFC 3261 section 17.2.1: a 100 Trying is sent if the TU has not answered within 200 ms.
TRYING_DELAY: Final = 0.2


@dataclass(slots=True, frozen=True)
class Outgoing:
    """Bytes to send to ``dest`` over ``transport`` ("udp" / "tcp")."""

    data: bytes
    dest: Address
    transport: str


# ---- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class IncomingRequest:
    """A new request for the TU. ``tx`` is None only for an ACK matching no server transaction
    that absorbs it (the ACK to a 2xx, RFC 3261 section 13.3.1.4 / RFC 6026)."""

    request: Request
    tx: ServerTransaction | None
    source: Address
    transport: str


@dataclass(slots=True)
class IncomingResponse:
    """A response the client transaction passes to its TU."""

    response: Response
    tx: ClientTransaction


@dataclass(slots=True)
class TransactionTimeout:
    """Timer B or F fired: the TU acts as if a 408 was received (RFC 3261 section 8.1.3.1)."""

    tx: ClientTransaction


@dataclass(slots=True)
class TransportFailure:
    """The transport reported a failure for this transaction (RFC 3261 section 17.1.4/17.2.4)."""

    tx: ClientTransaction | ServerTransaction


@dataclass(slots=True)
class AckTimeout:
    """A 2xx to an INVITE was not ACKed within 64*T1 (RFC 3261 section 13.3.1.4): the TU
    should end the session (send BYE)."""

    tx: ServerTransaction


@dataclass(slots=True)
class CancelReceived:
    """A CANCEL matched an INVITE server transaction that has not sent a final response.

    The manager already answered the CANCEL with 200 (RFC 3261 section 9.2); the TU must
    answer the INVITE with 487.
    """

    request: Request
    invite_tx: ServerTransaction


Event: TypeAlias = (
    IncomingRequest
    | IncomingResponse
    | TransactionTimeout
    | TransportFailure
    | AckTimeout
    | CancelReceived
)


# ---- transactions --------------------------------------------------------------------------


class _Transaction:
    """State common to both sides. ``_timers`` maps a timer name to its heap entry's id."""

    __slots__ = (
        "_interval",
        "_timers",
        "key",
        "kind",
        "last_response",
        "reliable",
        "request",
        "state",
        "transport",
        "user_data",
    )

    def __init__(self, request: Request, transport: str, kind: str, key: Any, state: str) -> None:
        self.request = request
        self.transport = transport
        self.kind = kind
        self.key = key
        self.state = state
        self.user_data: Any = None
        self.last_response: Response | None = None
        self.reliable = transport in RELIABLE_TRANSPORTS
        self._timers: dict[str, int] = {}
        self._interval = 0.0

    @property
    def is_invite(self) -> bool:
        """True for INVITE transactions."""
        return self.kind in (CLIENT_INVITE, SERVER_INVITE)

    @property
    def terminated(self) -> bool:
        """True once the transaction reached the Terminated state."""
        return self.state == TERMINATED

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.state} {self.key!r}>"


class ClientTransaction(_Transaction):
    """A client transaction (RFC 3261 section 17.1). Created by
    :meth:`TransactionManager.send_request`.

    ``key`` is ``(branch, method)``; ``last_response`` the last response received.
    """

    __slots__ = ("_ack_data", "_acks", "_data", "dest")

    def __init__(
        self, request: Request, dest: Address, transport: str, kind: str, key: Any, state: str
    ) -> None:
        super().__init__(request, transport, kind, key, state)
        self.dest = dest
        self._data = b""
        # ACK for a non-2xx final (RFC 3261 section 17.1.1.3), built once.
        self._ack_data: bytes | None = None
        # ACKs the TU sent for 2xx responses, by To tag: (data, dest, transport).
        self._acks: dict[str, tuple[bytes, Address, str]] = {}


class ServerTransaction(_Transaction):
    """A server transaction (RFC 3261 section 17.2), handed to the TU in
    :class:`IncomingRequest`.

    ``key`` is ``("3261", branch, sent-by host, sent-by port, method)`` or, for requests
    without the magic cookie, the RFC 2543 tuple (section 17.2.3). ``response_dest`` is where
    responses go (RFC 3261 section 18.2.2).
    """

    __slots__ = ("_ack_key", "_acked", "_final_to_tag", "_response_data", "response_dest",
                 "source")

    def __init__(
        self,
        request: Request,
        source: Address,
        transport: str,
        kind: str,
        key: Any,
        state: str,
        response_dest: Address,
    ) -> None:
        super().__init__(request, transport, kind, key, state)
        self.source = source
        self.response_dest = response_dest
        self._response_data = b""
        self._ack_key: tuple[str, int, str] | None = None
        self._acked = False
        self._final_to_tag: str | None = None  # kept when the final response is retired


Transaction: TypeAlias = ClientTransaction | ServerTransaction
_Handler: TypeAlias = Callable[..., list[Event]]


_TAG_RE: Final = re.compile(r";[ \t]*tag[ \t]*=[ \t]*([^; \t,]+)", re.IGNORECASE)


def _tag(header_value: str) -> str:
    """The tag of a From/To value ("" when absent). Raises SipParseError when unparsable."""
    try:
        return header_tag(header_value) or ""
    except SipParseError as exc:
        if exc.status != 416:
            raise
    # A URI of a scheme we do not parse (RFC 3261 allows any absoluteURI in From/To): the
    # tag is among the header parameters after the "<...>" or after the addr-spec.
    gt = header_value.rfind(">")
    match = _TAG_RE.search(header_value, gt + 1 if gt >= 0 else 0)
    return match.group(1) if match else ""


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _response_dest(via: Via, source: Address, transport: str) -> Address:
    """Where a response to a request with top Via ``via`` goes (RFC 3261 section 18.2.2,
    RFC 3581 section 4)."""
    if transport in RELIABLE_TRANSPORTS:
        # Back over the connection the request came in on.
        return source
    # The request came from source[0]: that is the "received" address (18.2.1), whether or
    # not the parameter was needed.
    rport = via.rport
    if rport is not None:
        return (source[0], int(rport) if rport.isdigit() else source[1])
    return (source[0], via.port or 5060)


def _clean_reason(text: str, status: int) -> str:
    cleaned = "".join(ch for ch in text if " " <= ch <= "~")[:80].strip()
    return cleaned or REASONS.get(status, "Bad Request")


class TransactionManager:
    """All client and server transactions of one SIP endpoint (sans-IO).

    Timer values are RFC 3261 table 4 defaults (seconds). ``counters`` counts what was
    absorbed, dropped or unexpected; keys used: ``malformed_dropped``, ``malformed_answered``,
    ``stray_responses``, ``retransmissions_absorbed``, ``retransmissions_sent``,
    ``unexpected_input``, ``keepalives``, ``cancel_unmatched``, ``acks_2xx_matched``,
    ``timeouts``, ``ack_timeouts``, ``timer_h_expired``, ``parser_errors``.
    """

    def __init__(
        self,
        *,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        trying_delay: float = TRYING_DELAY,
    ) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.trying_delay = trying_delay
        self.counters: collections.Counter[str] = collections.Counter()
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[Any, ServerTransaction] = {}
        # 2xx responses to INVITE waiting for their ACK: (Call-ID, CSeq number, To tag).
        self._ack_wait: dict[tuple[str, int, str], ServerTransaction] = {}
        self._out: list[Outgoing] = []
        # Timer heap: (deadline, id, transaction, name); an entry is live only while
        # transaction._timers[name] == id (lazy deletion).
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._next_id = 0
        self._live = 0
        # Told ``(source, now)`` of every message rejected as malformed, so the transaction
        # user can count garbage toward a flood limit like any other request.
        self.on_malformed: Callable[[Address, float], object] | None = None

    # ---- introspection ---------------------------------------------------------------------

    @property
    def client_transactions(self) -> int:
        """Number of live client transactions."""
        return len(self._clients)

    @property
    def server_transactions(self) -> int:
        """Number of live server transactions."""
        return len(self._servers)

    # ---- timers ----------------------------------------------------------------------------

    def _arm(self, tx: Transaction, name: str, delay: float, now: float) -> None:
        self._next_id += 1
        ident = self._next_id
        if name not in tx._timers:
            self._live += 1
        tx._timers[name] = ident
        heapq.heappush(self._heap, (now + delay, ident, tx, name))
        if len(self._heap) > 1024 and len(self._heap) > 4 * self._live:
            self._compact()

    def _cancel(self, tx: Transaction, *names: str) -> None:
        timers = tx._timers
        for name in names:
            if timers.pop(name, None) is not None:
                self._live -= 1

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2]._timers.get(e[3]) == e[1]]
        heapq.heapify(self._heap)

    def next_timer(self) -> float | None:
        """The earliest pending timer deadline, or None."""
        heap = self._heap
        while heap:
            _, ident, tx, name = heap[0]
            if tx._timers.get(name) == ident:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``; returns the resulting events."""
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, ident, tx, name = heapq.heappop(heap)
            if tx._timers.get(name) != ident:
                continue
            del tx._timers[name]
            self._live -= 1
            events.extend(self._feed(tx, "timer_" + name, None, now))
        return events

    # ---- table dispatch --------------------------------------------------------------------

    def _feed(
        self, tx: Transaction, inp: str, msg: Message | None, now: float,
        origin: tuple[Address, str] | None = None,
    ) -> list[Event]:
        handler = _TABLES[tx.kind].get((tx.state, inp))
        if handler is None:  # not reachable: the tables are complete
            return self._unexpected(tx, msg, now, origin, inp)
        return handler(self, tx, msg, now, origin, inp)

    def _unexpected(
        self, tx: Transaction, msg: Message | None, now: float,
        origin: tuple[Address, str] | None, inp: str,
    ) -> list[Event]:
        """An input the RFC does not define for this state: ignored and counted."""
        self.counters["unexpected_input"] += 1
        self.counters[f"unexpected:{tx.kind}:{tx.state}:{inp}"] += 1
        return []

    def _absorb(
        self, tx: Transaction, msg: Message | None, now: float,
        origin: tuple[Address, str] | None, inp: str,
    ) -> list[Event]:
        """A retransmission the RFC says to discard."""
        self.counters["retransmissions_absorbed"] += 1
        return []

    def _terminate(self, tx: Transaction) -> None:
        tx.state = TERMINATED
        self._live -= len(tx._timers)
        tx._timers.clear()
        # Stale timer entries keep a terminated transaction referenced until their deadline
        # (lazy deletion, up to 64*T1): do not let them keep its messages too.
        self._retire(tx)
        if isinstance(tx, ClientTransaction):
            if self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
            tx._acks.clear()
        else:
            if self._servers.get(tx.key) is tx:
                del self._servers[tx.key]
            if tx._ack_key is not None and self._ack_wait.get(tx._ack_key) is tx:
                del self._ack_wait[tx._ack_key]

    def terminate(self, tx: Transaction) -> None:
        """Drop a transaction now, without events (e.g. a TU giving up on an INVITE stuck in
        Proceeding after its CANCEL, RFC 3261 section 9.1)."""
        if tx.state != TERMINATED:
            self._terminate(tx)

    # ---- sending ---------------------------------------------------------------------------

    def _queue(self, data: bytes, dest: Address, transport: str) -> None:
        self._out.append(Outgoing(data, dest, transport))

    def take_outgoing(self) -> list[Outgoing]:
        """Everything queued for sending since the last call, in order."""
        out = self._out
        self._out = []
        return out

    def send_stateless(self, message: Request | Response, dest: Address, transport: str) -> None:
        """Send a message outside any transaction (e.g. a proxied ACK)."""
        self._queue(message.to_bytes(), dest, transport.lower())

    def respond_stateless(
        self,
        request: Request,
        status: int,
        source: Address,
        transport: str,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Answer ``request`` without a transaction (RFC 3261 section 8.2.6), routed per 18.2.2.

        Without ``to_tag`` a tag derived from Call-ID, From and the top Via is used, so
        retransmissions get the same tag (RFC 3261 section 8.2.6.2). Never answers an ACK.
        """
        if request.method == "ACK":
            return
        transport = transport.lower()
        self._queue_response(build_response(
            request, status, reason, to_tag=to_tag or self._stateless_tag(request.headers),
            extra=extra,
        ), request.headers.get("Via"), source, transport)

    def _queue_response(
        self, response: Response, top_via: str | None, source: Address, transport: str
    ) -> None:
        dest = source
        if top_via is not None and transport not in RELIABLE_TRANSPORTS:
            try:
                dest = _response_dest(parse_via(top_via), source, transport)
            except (SipParseError, ValueError):
                dest = source
        self._queue(response.to_bytes(), dest, transport)

    @staticmethod
    def _stateless_tag(headers: Headers) -> str:
        seed = "\x00".join(headers.get(n) or "" for n in ("Call-ID", "From", "Via"))
        return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()

    def send_request(
        self, request: Request, dest: Address, transport: str, now: float
    ) -> ClientTransaction:
        """Start a client transaction and send ``request``.

        The caller put the top Via with a branch starting "z9hG4bK" (RFC 3261 section 8.1.1.7).
        Raises :class:`TransactionError` for an ACK (never a transaction, see
        :meth:`send_ack`), a missing branch, or a branch/method already in use.
        """
        if request.method == "ACK":
            raise TransactionError("ACK is not sent in a client transaction")
        top = request.headers.get("Via")
        if top is None:
            raise TransactionError("request has no Via")
        try:
            branch = parse_via(top).branch
        except SipParseError as exc:
            raise TransactionError(f"bad top Via: {exc.reason}") from exc
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise TransactionError("top Via needs a branch starting with z9hG4bK")
        key = (branch, request.method)
        if key in self._clients:
            raise TransactionError(f"client transaction {key} already exists")
        transport = transport.lower()
        invite = request.method == "INVITE"
        tx = ClientTransaction(
            request, dest, transport, CLIENT_INVITE if invite else CLIENT_NON_INVITE, key,
            CALLING if invite else TRYING,
        )
        tx._data = request.to_bytes()
        self._clients[key] = tx
        self._queue(tx._data, dest, transport)
        if invite:
            # RFC 3261 section 17.1.1.2: Timer A (unreliable only) and Timer B.
            if not tx.reliable:
                tx._interval = self.t1
                self._arm(tx, "A", self.t1, now)
            self._arm(tx, "B", 64 * self.t1, now)
        else:
            # RFC 3261 section 17.1.2.2: Timer E (unreliable only) and Timer F.
            if not tx.reliable:
                tx._interval = self.t1
                self._arm(tx, "E", self.t1, now)
            self._arm(tx, "F", 64 * self.t1, now)
        return tx

    def send_response(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Pass the TU's response to its server transaction.

        A 2xx to an INVITE moves it to Accepted (RFC 6026); the manager then retransmits the
        2xx (unreliable transports: T1 doubling up to T2, RFC 3261 section 13.3.1.4) until the
        ACK (same Call-ID, CSeq number and To tag) arrives, and raises :class:`AckTimeout` if
        none arrives within 64*T1. Responses the transaction may no longer send (e.g. after
        its final response, or once Terminated) are ignored and counted as unexpected.
        """
        status = response.status
        if status < 200:
            inp = "send_1xx"
        elif status < 300 and tx.kind == SERVER_INVITE:
            inp = "send_2xx"
        else:
            inp = "send_final"
        self._feed(tx, inp, response, now)

    def send_ack(
        self,
        tx: ClientTransaction,
        ack: Request,
        now: float,
        *,
        dest: Address | None = None,
        transport: str | None = None,
        ack_dest: Address | None = None,
    ) -> None:
        """Send the TU's ACK for a 2xx received on ``tx`` (RFC 3261 section 13.2.2.4).

        Goes to ``dest`` (alias ``ack_dest``) or else ``tx.dest``. While ``tx`` is Accepted,
        retransmissions of the 2xx with the same To tag re-send this ACK and are not surfaced
        again.
        """
        target = dest or ack_dest or tx.dest
        via_transport = (transport or tx.transport).lower()
        data = ack.to_bytes()
        self._queue(data, target, via_transport)
        if tx.state == ACCEPTED:
            try:
                tag = _tag(ack.first("To"))
            except SipParseError:
                return
            tx._acks[tag] = (data, target, via_transport)

    def transport_error(self, dest: Address, transport: str, now: float) -> list[Event]:
        """The driver could not send to ``dest`` over ``transport`` (e.g. a TCP connect
        failed, ICMP unreachable): every live transaction using it fails (RFC 3261 section
        17.1.4 / 17.2.4). Returns the :class:`TransportFailure` events."""
        transport = transport.lower()
        events: list[Event] = []
        hit: list[Transaction] = [
            tx for tx in self._clients.values() if tx.dest == dest and tx.transport == transport
        ]
        hit.extend(
            tx for tx in self._servers.values()
            if tx.response_dest == dest and tx.transport == transport
        )
        for tx in hit:
            events.extend(self._feed(tx, "transport_error", None, now))
        return events

    # ---- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, transport: str, now: float) -> list[Event]:
        """Process one received message (a datagram, or one framed stream message)."""
        transport = transport.lower()
        if not data.strip(b"\r\n \t"):
            # RFC 5626 section 3.5.1 CRLF keep-alive.
            self.counters["keepalives"] += 1
            return []
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            return self._malformed(data, exc, source, transport, now)
        except Exception:  # a parser bug must not take the transport down
            self.counters["parser_errors"] += 1
            return self._malformed(data, SipParseError("Bad Request"), source, transport,
                                   now)
        if isinstance(msg, Request):
            return self._receive_request(msg, data, source, transport, now)
        return self._receive_response(msg, now)

    def _malformed(
        self, data: bytes, exc: SipParseError, source: Address, transport: str, now: float
    ) -> list[Event]:
        """A message parse_message rejected: answer it statelessly with ``exc.status`` when it
        is a request (not ACK) with enough headers for a response (RFC 3261 section 8.2.6),
        else drop it. Both outcomes are counted, and reported to :attr:`on_malformed`."""
        if self.on_malformed is not None:
            self.on_malformed(source, now)
        try:
            request = salvage_request(data)
        except Exception:  # best effort only
            request = None
        if request is None or request.method == "ACK":
            self.counters["malformed_dropped"] += 1
            return []
        status = exc.status if 400 <= exc.status <= 699 else 400
        response = build_response(
            request, status, _clean_reason(exc.reason, status),
            to_tag=self._stateless_tag(request.headers),
        )
        self._queue_response(response, request.headers.get("Via"), source, transport)
        self.counters["malformed_answered"] += 1
        return []

    def _receive_request(
        self, request: Request, data: bytes, source: Address, transport: str, now: float
    ) -> list[Event]:
        headers = request.headers
        try:
            top = headers.get("Via")
            if top is None:
                raise SipParseError("Missing Via")
            via = parse_via(top)
            cseq_num, cseq_method = request.cseq
            _ = request.call_id  # presence check
            request.first("From")
            request.first("To")
            if cseq_method != request.method:
                raise SipParseError("CSeq method does not match the request method")
        except SipParseError as exc:
            return self._malformed(data, exc, source, transport, now)

        # RFC 3261 section 18.2.1 and RFC 3581 section 4: received / rport.
        src_ip = source[0]
        changed = False
        if via.rport is not None:
            via.params["received"] = src_ip
            via.params["rport"] = str(source[1])
            changed = True
        elif _unbracket(via.host) != src_ip:
            via.params["received"] = src_ip
            changed = True
        if changed:
            top = str(via)
            request.headers = _replace_top_via(headers, top)

        method = request.method
        try:
            if method == "ACK":
                return self._receive_ack(request, via, top, source, transport, now)
            if method == "CANCEL":
                return self._receive_cancel(request, via, top, cseq_num, source, transport, now)
            key = self._server_key(request, via, top, method, None)
        except SipParseError as exc:
            return self._malformed(data, exc, source, transport, now)
        tx = self._servers.get(key)
        if tx is not None:
            return self._feed(tx, "request", request, now)
        invite = method == "INVITE"
        tx = ServerTransaction(
            request, source, transport, SERVER_INVITE if invite else SERVER_NON_INVITE, key,
            PROCEEDING if invite else TRYING, _response_dest(via, source, transport),
        )
        self._servers[key] = tx
        if invite:
            # RFC 3261 section 17.2.1: 100 Trying unless the TU answers within 200 ms.
            self._arm(tx, "Trying", self.trying_delay, now)
        return [IncomingRequest(request, tx, source, transport)]

    def _server_key(
        self, request: Request, via: Via, top: str, method: str, to_tag: str | None
    ) -> Any:
        """The matching key of RFC 3261 section 17.2.3 (``method`` is INVITE for an ACK)."""
        branch = via.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            return ("3261", branch, via.host.lower(), via.port, method)
        # RFC 2543 fallback: Request-URI, To tag, From tag, Call-ID, CSeq, top Via.
        if to_tag is None:
            to_tag = _tag(request.first("To"))
        return (
            "2543", request.uri, to_tag, _tag(request.first("From")), request.call_id,
            request.cseq[0], method, top,
        )

    def _receive_ack(
        self, ack: Request, via: Via, top: str, source: Address, transport: str, now: float
    ) -> list[Event]:
        ack_tag = _tag(ack.first("To"))
        key = self._server_key(ack, via, top, "INVITE", ack_tag)
        tx = self._servers.get(key)
        if tx is None and key[0] == "2543" and ack_tag:
            # The INVITE had no To tag; the ACK carries the tag of our response (17.2.3).
            candidate = self._servers.get(self._server_key(ack, via, top, "INVITE", ""))
            if candidate is not None and candidate.last_response is not None:
                resp_to = candidate.last_response.headers.get("To")
                if resp_to is not None and _tag(resp_to) == ack_tag:
                    tx = candidate
        origin = (source, transport)
        if tx is not None:
            return self._feed(tx, "ack", ack, now, origin)
        return self._ack_for_2xx(ack, ack_tag, source, transport)

    def _ack_for_2xx(
        self, ack: Request, ack_tag: str, source: Address, transport: str
    ) -> list[Event]:
        """An ACK for a 2xx (RFC 3261 section 13.3.1.4): stops the 2xx retransmissions of the
        matching INVITE and always goes to the TU with ``tx=None``."""
        tx = self._ack_wait.pop((ack.call_id, ack.cseq[0], ack_tag), None)
        if tx is not None:
            tx._acked = True
            self._cancel(tx, "2xx")
            self.counters["acks_2xx_matched"] += 1
        return [IncomingRequest(ack, None, source, transport)]

    def _receive_cancel(
        self, cancel: Request, via: Via, top: str, cseq_num: int, source: Address,
        transport: str, now: float,
    ) -> list[Event]:
        key = self._server_key(cancel, via, top, "CANCEL", None)
        ctx = self._servers.get(key)
        if ctx is not None:  # retransmitted CANCEL
            return self._feed(ctx, "request", cancel, now)
        invite_key = self._server_key(cancel, via, top, "INVITE", None)
        invite_tx = self._servers.get(invite_key)
        if invite_tx is None:
            # RFC 3261 section 9.2: no matching transaction -> 481.
            self.counters["cancel_unmatched"] += 1
            self.respond_stateless(cancel, 481, source, transport)
            return []
        ctx = ServerTransaction(
            cancel, source, transport, SERVER_NON_INVITE, key, TRYING,
            _response_dest(via, source, transport),
        )
        self._servers[key] = ctx
        # RFC 3261 section 9.2: the To tag of the 200 should be the one of our INVITE response.
        to_tag: str | None = invite_tx._final_to_tag
        if invite_tx.last_response is not None:
            resp_to = invite_tx.last_response.headers.get("To")
            if resp_to is not None:
                try:
                    to_tag = _tag(resp_to) or None
                except SipParseError:
                    to_tag = None
        self._feed(ctx, "send_final", build_response(
            cancel, 200, to_tag=to_tag or self._stateless_tag(cancel.headers)
        ), now)
        if invite_tx.state == PROCEEDING:
            return [CancelReceived(cancel, invite_tx)]
        return []

    def _receive_response(self, response: Response, now: float) -> list[Event]:
        vias = response.headers.get_all("Via")
        if len(vias) != 1:
            # RFC 3261 section 18.1.2: more than one Via is not for us (we are no proxy).
            self.counters["stray_responses" if vias else "malformed_dropped"] += 1
            return []
        try:
            branch = parse_via(vias[0]).branch
            _, method = response.cseq
        except SipParseError:
            self.counters["malformed_dropped"] += 1
            return []
        status = response.status
        if not 100 <= status <= 699:
            self.counters["malformed_dropped"] += 1
            return []
        tx = self._clients.get((branch or "", method))
        if tx is None:
            self.counters["stray_responses"] += 1
            return []
        if status < 200:
            inp = "1xx"
        elif tx.kind == CLIENT_NON_INVITE:
            inp = "final"
        elif status < 300:
            inp = "2xx"
        else:
            inp = "3xx-6xx"
        return self._feed(tx, inp, response, now)

    @staticmethod
    def _retire(tx: Transaction) -> None:
        """Let go of the parsed request and response of a transaction that from now on only
        absorbs retransmissions (with the bytes it keeps) for up to 64*T1. Thousands of such
        transactions are alive at a few hundred calls per second; their messages were most
        of the objects the garbage collector had to scan, and its pauses grew with them."""
        if isinstance(tx, ServerTransaction) and tx.last_response is not None:
            try:
                to = tx.last_response.headers.get("To")
                tx._final_to_tag = (_tag(to) or None) if to is not None else None
            except SipParseError:
                tx._final_to_tag = None
        tx.request = RETIRED_REQUEST
        tx.last_response = None

    # ---- client INVITE (RFC 3261 section 17.1.1, RFC 6026 section 8.4) ----------------------

    def _ci_provisional(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.1.2: Calling -> Proceeding; no more retransmissions; Timer B only in Calling.
        self._cancel(tx, "A", "B")
        tx.state = PROCEEDING
        tx.last_response = resp
        return [IncomingResponse(resp, tx)]

    def _ci_failure(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.1.2: 300-699 -> ACK, to TU, Completed; Timer D (>= 32 s unreliable, 0 reliable).
        self._cancel(tx, "A", "B")
        tx.last_response = resp
        tx._ack_data = self._build_failure_ack(tx.request, resp).to_bytes()
        self._queue(tx._ack_data, tx.dest, tx.transport)
        tx.state = COMPLETED
        if tx.reliable:
            self._terminate(tx)
        else:
            self._arm(tx, "D", max(32.0, 64 * self.t1), now)
        return [IncomingResponse(resp, tx)]

    @staticmethod
    def _build_failure_ack(request: Request, resp: Response) -> Request:
        """17.1.1.3: ACK for a non-2xx: same Request-URI, Call-ID, From, CSeq number and
        top Via (branch) as the INVITE, To from the response, Route copied."""
        src = request.headers
        headers = Headers()
        top = src.get("Via")
        if top is not None:
            headers.add("Via", top)
        headers.add("Max-Forwards", src.get("Max-Forwards") or "70")
        for route in src.get_all("Route"):
            headers.add("Route", route)
        for name in ("From", "Call-ID"):
            value = src.get(name)
            if value is not None:
                headers.add(name, value)
        to = resp.headers.get("To") or src.get("To")
        if to is not None:
            headers.add("To", to)
        headers.add("CSeq", f"{request.cseq[0]} ACK")
        return Request(method="ACK", uri=request.uri, headers=headers)

    def _ci_failure_retransmit(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.1.2: retransmitted final in Completed -> re-send the ACK, not to the TU.
        if tx._ack_data is not None:
            self._queue(tx._ack_data, tx.dest, tx.transport)
        self.counters["retransmissions_absorbed"] += 1
        return []

    def _ci_success(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 section 8.4: 2xx -> to TU, Accepted, Timer M = 64*T1.
        self._cancel(tx, "A", "B")
        tx.state = ACCEPTED
        self._arm(tx, "M", 64 * self.t1, now)
        # Accepted needs only the TU's ACK bytes (send_ack) to answer 2xx retransmissions.
        self._retire(tx)
        return [IncomingResponse(resp, tx)]

    def _ci_success_retransmit(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 section 8.4: 2xx in Accepted go to the TU; we answer retransmissions with
        # the TU's ACK ourselves when we have it (13.2.2.4) and surface only new To tags.
        to = resp.headers.get("To")
        try:
            tag = _tag(to) if to is not None else ""
        except SipParseError:
            self.counters["malformed_dropped"] += 1
            return []
        ack = tx._acks.get(tag)
        if ack is None:
            return [IncomingResponse(resp, tx)]
        self._queue(*ack)
        self.counters["retransmissions_absorbed"] += 1
        return []

    def _ci_timer_a(
        self, tx: ClientTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.1.2: retransmit, double Timer A (no cap for INVITE).
        self._queue(tx._data, tx.dest, tx.transport)
        self.counters["retransmissions_sent"] += 1
        tx._interval *= 2
        self._arm(tx, "A", tx._interval, now)
        return []

    def _c_timeout(
        self, tx: ClientTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # Timer B (17.1.1.2) / Timer F (17.1.2.2): inform the TU, Terminated.
        self._terminate(tx)
        self.counters["timeouts"] += 1
        return [TransactionTimeout(tx)]

    def _end(
        self, tx: Transaction, msg: Message | None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # Timers D, M, K, I, J: the transaction ends quietly.
        self._terminate(tx)
        return []

    def _c_transport_error(
        self, tx: ClientTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.4: inform the TU (when it still waits for a final response), Terminated.
        waiting = tx.state in (CALLING, TRYING, PROCEEDING)
        self._terminate(tx)
        return [TransportFailure(tx)] if waiting else []

    # ---- client non-INVITE (RFC 3261 section 17.1.2) ------------------------------------------

    def _cn_provisional(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        tx.state = PROCEEDING
        tx.last_response = resp
        return [IncomingResponse(resp, tx)]

    def _cn_final(
        self, tx: ClientTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.2.2: final -> to TU, Completed, Timer K (T4 unreliable, 0 reliable).
        self._cancel(tx, "E", "F")
        tx.last_response = resp
        tx.state = COMPLETED
        if tx.reliable:
            self._terminate(tx)
        else:
            self._arm(tx, "K", self.t4, now)
        return [IncomingResponse(resp, tx)]

    def _cn_timer_e(
        self, tx: ClientTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.1.2.2: Trying: MIN(2E, T2); Proceeding: T2.
        self._queue(tx._data, tx.dest, tx.transport)
        self.counters["retransmissions_sent"] += 1
        if tx.state == TRYING:
            tx._interval = min(2 * tx._interval, self.t2)
        else:
            tx._interval = self.t2
        self._arm(tx, "E", tx._interval, now)
        return []

    # ---- server INVITE (RFC 3261 section 17.2.1, RFC 6026 section 8.5-8.7) -------------------

    def _send_server(self, tx: ServerTransaction, resp: Response) -> None:
        tx.last_response = resp
        tx._response_data = resp.to_bytes()
        self._queue(tx._response_data, tx.response_dest, tx.transport)

    def _resend_server(self, tx: ServerTransaction) -> None:
        self._queue(tx._response_data, tx.response_dest, tx.transport)

    def _si_retransmission(
        self, tx: ServerTransaction, req: Request, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1: INVITE retransmission in Proceeding -> re-send the last provisional. If the
        # TU has not answered yet the 100 goes now: the peer is evidently waiting for it.
        self.counters["retransmissions_absorbed"] += 1
        if tx.last_response is None:
            self._cancel(tx, "Trying")
            self._send_server(tx, build_response(tx.request, 100))
        else:
            self._resend_server(tx)
        return []

    def _si_trying(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1: the TU did not answer within 200 ms -> 100 Trying.
        if tx.last_response is None:
            self._send_server(tx, build_response(tx.request, 100))
        return []

    def _si_send_provisional(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        self._cancel(tx, "Trying")
        self._send_server(tx, resp)
        return []

    def _si_send_2xx(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 section 8.5: 2xx -> Accepted, Timer L = 64*T1. The 2xx retransmissions
        # (RFC 3261 section 13.3.1.4, unreliable transports) run until the ACK arrives.
        self._cancel(tx, "Trying")
        self._send_server(tx, resp)
        tx.state = ACCEPTED
        self._arm(tx, "L", 64 * self.t1, now)
        try:
            to = resp.headers.get("To")
            ack_key = (tx.request.call_id, tx.request.cseq[0], _tag(to) if to else "")
        except SipParseError:
            ack_key = None
        if ack_key is not None:
            tx._ack_key = ack_key
            self._ack_wait[ack_key] = tx
        if not tx.reliable:
            tx._interval = self.t1
            self._arm(tx, "2xx", self.t1, now)
        # Accepted re-sends the 2xx bytes and matches the ACK by ack_key (and a CANCEL
        # still gets our To tag).
        self._retire(tx)
        return []

    def _si_send_2xx_again(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 section 8.6: a 2xx from the TU in Accepted is passed to the transport.
        self._send_server(tx, resp)
        return []

    def _si_timer_2xx(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 3261 section 13.3.1.4: T1 doubling up to T2 until the ACK.
        if tx._acked:
            return []
        self._resend_server(tx)
        self.counters["retransmissions_sent"] += 1
        tx._interval = min(2 * tx._interval, self.t2)
        self._arm(tx, "2xx", tx._interval, now)
        return []

    def _si_accepted_ack(
        self, tx: ServerTransaction, ack: Request, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 section 8.7: an ACK matching the transaction in Accepted goes to the TU
        # (a peer that reused the INVITE branch for its 2xx ACK).
        source, transport = origin
        return self._ack_for_2xx(ack, _tag(ack.first("To")), source, transport)

    def _si_timer_l(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # RFC 6026 Timer L = 64*T1 = the 13.3.1.4 ACK wait: no ACK by now -> AckTimeout.
        acked = tx._acked
        self._terminate(tx)
        if acked:
            return []
        self.counters["ack_timeouts"] += 1
        return [AckTimeout(tx)]

    def _si_send_failure(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1: 300-699 -> Completed, Timer G (unreliable) and Timer H = 64*T1.
        self._cancel(tx, "Trying")
        self._send_server(tx, resp)
        tx.state = COMPLETED
        if not tx.reliable:
            tx._interval = self.t1
            self._arm(tx, "G", self.t1, now)
        self._arm(tx, "H", 64 * self.t1, now)
        return []

    def _s_resend_final(
        self, tx: ServerTransaction, req: Request, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1 / 17.2.2: a request retransmission in Completed re-sends the final response.
        self._resend_server(tx)
        self.counters["retransmissions_absorbed"] += 1
        return []

    def _si_timer_g(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        self._resend_server(tx)
        self.counters["retransmissions_sent"] += 1
        tx._interval = min(2 * tx._interval, self.t2)
        self._arm(tx, "G", tx._interval, now)
        return []

    def _si_timer_h(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1: the ACK never came; Terminated (the failure was already reported upstream
        # by our final response, so no event).
        self._terminate(tx)
        self.counters["timer_h_expired"] += 1
        return []

    def _si_ack(
        self, tx: ServerTransaction, ack: Request, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.1: ACK in Completed -> Confirmed, Timer I (T4 unreliable, 0 reliable). The ACK
        # to a non-2xx is hop-by-hop and not passed to the TU.
        self._cancel(tx, "G", "H")
        tx.state = CONFIRMED
        if tx.reliable:
            self._terminate(tx)
        else:
            self._arm(tx, "I", self.t4, now)
        return []

    def _s_transport_error(
        self, tx: ServerTransaction, msg: None, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.4: inform the TU while the outcome still matters to it.
        matters = tx.state in (TRYING, PROCEEDING) or (tx.state == ACCEPTED and not tx._acked)
        self._terminate(tx)
        return [TransportFailure(tx)] if matters else []

    # ---- server non-INVITE (RFC 3261 section 17.2.2) ------------------------------------------

    def _sn_send_provisional(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        self._send_server(tx, resp)
        tx.state = PROCEEDING
        return []

    def _sn_send_final(
        self, tx: ServerTransaction, resp: Response, now: float, origin: Any, inp: str
    ) -> list[Event]:
        # 17.2.2: final -> Completed, Timer J (64*T1 unreliable, 0 reliable).
        self._send_server(tx, resp)
        tx.state = COMPLETED
        if tx.reliable:
            self._terminate(tx)
        else:
            self._arm(tx, "J", 64 * self.t1, now)
            self._retire(tx)  # Completed re-sends the final's bytes, nothing more
        return []

    def _sn_resend_provisional(
        self, tx: ServerTransaction, req: Request, now: float, origin: Any, inp: str
    ) -> list[Event]:
        self._resend_server(tx)
        self.counters["retransmissions_absorbed"] += 1
        return []


def _replace_top_via(headers: Headers, value: str) -> Headers:
    """A copy of ``headers`` with the first Via value replaced (order kept)."""
    items: list[tuple[str, str]] = []
    done = False
    for name, old in headers:
        if not done and name == "Via":
            items.append((name, value))
            done = True
        else:
            items.append((name, old))
    return Headers(items)


def _table(kind: str, entries: dict[tuple[str, str], _Handler]) -> dict[tuple[str, str], _Handler]:
    """Complete a state table: every (state, input) pair the RFC does not define maps to
    :meth:`TransactionManager._unexpected`."""
    table: dict[tuple[str, str], _Handler] = {
        (state, inp): TransactionManager._unexpected
        for state in STATES[kind]
        for inp in INPUTS[kind]
    }
    for pair in entries:
        if pair not in table:  # pragma: no cover - guards typos in the tables below
            raise AssertionError(f"{kind}: unknown pair {pair}")
    table.update(entries)
    return table


_M = TransactionManager

_TABLES: Final[dict[str, dict[tuple[str, str], _Handler]]] = {
    CLIENT_INVITE: _table(CLIENT_INVITE, {
        (CALLING, "1xx"): _M._ci_provisional,
        (CALLING, "2xx"): _M._ci_success,
        (CALLING, "3xx-6xx"): _M._ci_failure,
        (CALLING, "timer_A"): _M._ci_timer_a,
        (CALLING, "timer_B"): _M._c_timeout,
        (CALLING, "transport_error"): _M._c_transport_error,
        (PROCEEDING, "1xx"): _M._ci_provisional,
        (PROCEEDING, "2xx"): _M._ci_success,
        (PROCEEDING, "3xx-6xx"): _M._ci_failure,
        (PROCEEDING, "transport_error"): _M._c_transport_error,
        (COMPLETED, "3xx-6xx"): _M._ci_failure_retransmit,
        (COMPLETED, "1xx"): _M._absorb,
        (COMPLETED, "timer_D"): _M._end,
        (COMPLETED, "transport_error"): _M._c_transport_error,
        (ACCEPTED, "2xx"): _M._ci_success_retransmit,
        (ACCEPTED, "1xx"): _M._absorb,
        (ACCEPTED, "timer_M"): _M._end,
        (ACCEPTED, "transport_error"): _M._c_transport_error,
    }),
    CLIENT_NON_INVITE: _table(CLIENT_NON_INVITE, {
        (TRYING, "1xx"): _M._cn_provisional,
        (TRYING, "final"): _M._cn_final,
        (TRYING, "timer_E"): _M._cn_timer_e,
        (TRYING, "timer_F"): _M._c_timeout,
        (TRYING, "transport_error"): _M._c_transport_error,
        (PROCEEDING, "1xx"): _M._cn_provisional,
        (PROCEEDING, "final"): _M._cn_final,
        (PROCEEDING, "timer_E"): _M._cn_timer_e,
        (PROCEEDING, "timer_F"): _M._c_timeout,
        (PROCEEDING, "transport_error"): _M._c_transport_error,
        (COMPLETED, "1xx"): _M._absorb,
        (COMPLETED, "final"): _M._absorb,
        (COMPLETED, "timer_K"): _M._end,
        (COMPLETED, "transport_error"): _M._c_transport_error,
    }),
    SERVER_INVITE: _table(SERVER_INVITE, {
        (PROCEEDING, "request"): _M._si_retransmission,
        (PROCEEDING, "send_1xx"): _M._si_send_provisional,
        (PROCEEDING, "send_2xx"): _M._si_send_2xx,
        (PROCEEDING, "send_final"): _M._si_send_failure,
        (PROCEEDING, "timer_Trying"): _M._si_trying,
        (PROCEEDING, "transport_error"): _M._s_transport_error,
        (COMPLETED, "request"): _M._s_resend_final,
        (COMPLETED, "ack"): _M._si_ack,
        (COMPLETED, "timer_G"): _M._si_timer_g,
        (COMPLETED, "timer_H"): _M._si_timer_h,
        (COMPLETED, "transport_error"): _M._s_transport_error,
        (CONFIRMED, "request"): _M._absorb,
        (CONFIRMED, "ack"): _M._absorb,
        (CONFIRMED, "timer_I"): _M._end,
        (CONFIRMED, "transport_error"): _M._s_transport_error,
        (ACCEPTED, "request"): _M._absorb,
        (ACCEPTED, "ack"): _M._si_accepted_ack,
        (ACCEPTED, "send_2xx"): _M._si_send_2xx_again,
        (ACCEPTED, "timer_2xx"): _M._si_timer_2xx,
        (ACCEPTED, "timer_L"): _M._si_timer_l,
        (ACCEPTED, "transport_error"): _M._s_transport_error,
    }),
    SERVER_NON_INVITE: _table(SERVER_NON_INVITE, {
        (TRYING, "request"): _M._absorb,
        (TRYING, "send_1xx"): _M._sn_send_provisional,
        (TRYING, "send_final"): _M._sn_send_final,
        (TRYING, "transport_error"): _M._s_transport_error,
        (PROCEEDING, "request"): _M._sn_resend_provisional,
        (PROCEEDING, "send_1xx"): _M._sn_send_provisional,
        (PROCEEDING, "send_final"): _M._sn_send_final,
        (PROCEEDING, "transport_error"): _M._s_transport_error,
        (COMPLETED, "request"): _M._s_resend_final,
        (COMPLETED, "timer_J"): _M._end,
        (COMPLETED, "transport_error"): _M._s_transport_error,
    }),
}
