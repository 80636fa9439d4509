"""Tests for the sans-IO transaction layer (RFC 3261 section 17, RFC 6026).

Time is virtual: every call gets a ``now`` number, so nothing here sleeps.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.dialog import create_cancel
from sip.errors import TransactionError
from sip.message import Headers, Request, Response, build_response
from sip.parser import parse_message
from sip.transaction import (
    _TABLES,
    ACCEPTED,
    CALLING,
    COMPLETED,
    CONFIRMED,
    INPUTS,
    PROCEEDING,
    STATES,
    TERMINATED,
    TRYING,
    AckTimeout,
    CancelReceived,
    ClientTransaction,
    IncomingRequest,
    IncomingResponse,
    Outgoing,
    ServerTransaction,
    TransactionManager,
    TransactionTimeout,
    TransportFailure,
)

PEER = ("192.0.2.10", 5062)
ME = ("192.0.2.1", 5060)
T1 = 0.5


# ---- helpers -------------------------------------------------------------------------------


def req_bytes(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKabc1",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    via_host: str = "192.0.2.10",
    via_port: int | None = 5062,
    via_params: str = "",
    transport: str = "UDP",
    to_tag: str | None = None,
    from_tag: str = "fromtag1",
    uri: str = "sip:1002@192.0.2.1",
    extra: str = "",
    body: bytes = b"",
) -> bytes:
    port = f":{via_port}" if via_port is not None else ""
    branch_param = f";branch={branch}" if branch is not None else ""
    to = "<sip:1002@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via_host}{port}{branch_param}{via_params}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:1001@192.0.2.1>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        f"Contact: <sip:1001@192.0.2.10:5062>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def client_request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKcli1",
    cseq: int = 1,
    transport: str = "UDP",
    routes: tuple[str, ...] = (),
) -> Request:
    headers = Headers(
        [
            ("Via", f"SIP/2.0/{transport} 192.0.2.1:5060;branch={branch};rport"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in routes),
            ("From", "<sip:1001@192.0.2.1>;tag=ourtag"),
            ("To", "<sip:1002@192.0.2.10>"),
            ("Call-ID", "out-call-1"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", "<sip:switch@192.0.2.1:5060>"),
        ]
    )
    return Request(method=method, uri="sip:1002@192.0.2.10:5062", headers=headers)


def response_to(request: Request, status: int, *, to_tag: str | None = "remote1") -> bytes:
    """The peer's response to our request (Via as we sent it)."""
    resp = build_response(request, status, to_tag=to_tag if status != 100 else None)
    if 100 < status < 300:
        resp.headers.add("Contact", "<sip:1002@192.0.2.10:5062>")
    return resp.to_bytes()


def parsed(out: Outgoing) -> Request | Response:
    return parse_message(out.data)


def only(outs: list[Outgoing]) -> Outgoing:
    assert len(outs) == 1, outs
    return outs[0]


def fire_until(mgr: TransactionManager, end: float) -> list[tuple[float, list[object]]]:
    """Fire timers at their deadlines up to ``end``; return (time, events) per firing."""
    fired: list[tuple[float, list[object]]] = []
    while True:
        deadline = mgr.next_timer()
        if deadline is None or deadline > end:
            return fired
        fired.append((deadline, list(mgr.handle_timer(deadline))))


def run_timers(mgr: TransactionManager, end: float) -> tuple[list[float], list[object]]:
    """Fire timers at their deadlines up to ``end``: (times something was sent, events)."""
    times: list[float] = []
    events: list[object] = []
    mgr.take_outgoing()
    while True:
        deadline = mgr.next_timer()
        if deadline is None or deadline > end:
            return times, events
        events.extend(mgr.handle_timer(deadline))
        if mgr.take_outgoing():
            times.append(round(deadline, 6))


def send_times(mgr: TransactionManager, end: float) -> list[float]:
    """Times at which timers put something on the wire, up to ``end``."""
    return run_timers(mgr, end)[0]


def new_server_invite(
    mgr: TransactionManager, now: float = 0.0, transport: str = "udp", **kw: object
) -> ServerTransaction:
    events = mgr.receive(
        req_bytes("INVITE", transport=transport.upper(), **kw),  # type: ignore[arg-type]
        PEER, transport, now,
    )
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    return ev.tx


# ---- tables --------------------------------------------------------------------------------


def test_tables_cover_every_state_input_pair() -> None:
    for kind, table in _TABLES.items():
        assert set(table) == {(s, i) for s in STATES[kind] for i in INPUTS[kind]}


# ---- client INVITE -------------------------------------------------------------------------


def test_client_invite_timer_a_doubles_and_timer_b_times_out() -> None:
    mgr = TransactionManager()
    tx = mgr.send_request(client_request(), PEER, "udp", 0.0)
    out = only(mgr.take_outgoing())
    assert out.dest == PEER and out.transport == "udp"
    assert tx.state == CALLING
    times, events = run_timers(mgr, 64 * T1)
    # RFC 3261 17.1.1.2: Timer A = T1, doubling: 0.5, 1, 2, 4, 8, 16 (sent at 0.5, 1.5, ...).
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert len(events) == 1 and isinstance(events[0], TransactionTimeout)
    assert events[0].tx is tx
    assert tx.state == TERMINATED
    assert mgr.next_timer() is None
    assert mgr.client_transactions == 0


def test_client_invite_provisional_stops_retransmissions() -> None:
    mgr = TransactionManager()
    req = client_request()
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.take_outgoing()
    events = mgr.receive(response_to(req, 100), PEER, "udp", 0.1)
    assert [type(e) for e in events] == [IncomingResponse]
    assert tx.state == PROCEEDING
    events = mgr.receive(response_to(req, 180), PEER, "udp", 0.2)
    assert isinstance(events[0], IncomingResponse) and events[0].response.status == 180
    # No retransmissions and no Timer B in Proceeding.
    assert mgr.next_timer() is None
    assert mgr.take_outgoing() == []


def test_client_invite_non_2xx_acked_by_transaction() -> None:
    mgr = TransactionManager()
    req = client_request(routes=("<sip:proxy.example;lr>",))
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.take_outgoing()
    mgr.receive(response_to(req, 180), PEER, "udp", 0.1)
    events = mgr.receive(response_to(req, 486), PEER, "udp", 0.3)
    assert len(events) == 1 and isinstance(events[0], IncomingResponse)
    assert events[0].response.status == 486
    assert tx.state == COMPLETED
    ack_out = only(mgr.take_outgoing())
    assert ack_out.dest == PEER
    ack = parsed(ack_out)
    # RFC 3261 17.1.1.3
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == req.uri
    assert ack.headers.get_all("Via") == [req.headers.get("Via")]
    assert ack.cseq == (1, "ACK")
    assert ack.call_id == req.call_id
    assert ack.headers.get("From") == req.headers.get("From")
    assert ack.headers.get("To") == "<sip:1002@192.0.2.10>;tag=remote1"
    assert ack.headers.get_all("Route") == ["<sip:proxy.example;lr>"]
    # A retransmitted final re-sends the ACK and is absorbed.
    assert mgr.receive(response_to(req, 486), PEER, "udp", 1.0) == []
    assert parsed(only(mgr.take_outgoing())).method == "ACK"  # type: ignore[union-attr]
    assert mgr.counters["retransmissions_absorbed"] == 1
    # Timer D (32 s for UDP) ends it.
    assert mgr.next_timer() == pytest.approx(0.3 + 32)
    assert mgr.handle_timer(32.3) == []
    assert tx.state == TERMINATED


def test_client_invite_2xx_accepted_and_ack_retransmitted() -> None:
    mgr = TransactionManager()
    req = client_request()
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.take_outgoing()
    events = mgr.receive(response_to(req, 200), PEER, "udp", 0.2)
    assert isinstance(events[0], IncomingResponse)
    assert tx.state == ACCEPTED
    assert mgr.take_outgoing() == []  # the TU ACKs a 2xx, not the transaction
    # Before the TU sent its ACK, a retransmitted 2xx is surfaced again.
    events = mgr.receive(response_to(req, 200), PEER, "udp", 0.3)
    assert len(events) == 1 and isinstance(events[0], IncomingResponse)
    ack = Request(
        method="ACK",
        uri="sip:1002@192.0.2.10:5062",
        headers=Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack1"),
                ("From", "<sip:1001@192.0.2.1>;tag=ourtag"),
                ("To", "<sip:1002@192.0.2.10>;tag=remote1"),
                ("Call-ID", "out-call-1"),
                ("CSeq", "1 ACK"),
            ]
        ),
    )
    mgr.send_ack(tx, ack, 0.35)
    sent = only(mgr.take_outgoing())
    assert sent.dest == PEER and parsed(sent).method == "ACK"  # type: ignore[union-attr]
    # Now retransmitted 2xx re-send that ACK and are not surfaced.
    assert mgr.receive(response_to(req, 200), PEER, "udp", 0.5) == []
    assert only(mgr.take_outgoing()).data == sent.data
    # A 2xx from another fork (other To tag) is new to the TU.
    events = mgr.receive(response_to(req, 200, to_tag="fork2"), PEER, "udp", 0.6)
    assert len(events) == 1 and isinstance(events[0], IncomingResponse)
    # Timer M = 64*T1 after the first 2xx.
    assert mgr.next_timer() == pytest.approx(0.2 + 64 * T1)
    mgr.handle_timer(0.2 + 64 * T1)
    assert tx.state == TERMINATED
    assert mgr.receive(response_to(req, 200), PEER, "udp", 40.0) == []
    assert mgr.counters["stray_responses"] == 1


def test_send_ack_to_other_destination() -> None:
    mgr = TransactionManager()
    req = client_request()
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.receive(response_to(req, 200), PEER, "udp", 0.1)
    mgr.take_outgoing()
    ack = Request(method="ACK", uri="sip:x@198.51.100.7", headers=Headers(
        [("To", "<sip:1002@192.0.2.10>;tag=remote1"), ("CSeq", "1 ACK")]))
    mgr.send_ack(tx, ack, 0.2, dest=("198.51.100.7", 5060))
    assert only(mgr.take_outgoing()).dest == ("198.51.100.7", 5060)
    mgr.receive(response_to(req, 200), PEER, "udp", 0.3)
    assert only(mgr.take_outgoing()).dest == ("198.51.100.7", 5060)


def test_client_invite_over_tcp_no_retransmissions() -> None:
    mgr = TransactionManager()
    req = client_request(transport="TCP")
    tx = mgr.send_request(req, PEER, "tcp", 0.0)
    assert only(mgr.take_outgoing()).transport == "tcp"
    # Only Timer B is armed.
    assert mgr.next_timer() == pytest.approx(64 * T1)
    assert send_times(mgr, 10.0) == []
    mgr.receive(response_to(req, 404), PEER, "tcp", 11.0)
    assert parsed(only(mgr.take_outgoing())).method == "ACK"  # type: ignore[union-attr]
    # Timer D = 0 for reliable transports.
    assert tx.state == TERMINATED
    assert mgr.next_timer() is None


def test_send_request_rejects_misuse() -> None:
    mgr = TransactionManager()
    with pytest.raises(TransactionError):
        mgr.send_request(client_request("ACK"), PEER, "udp", 0.0)
    with pytest.raises(TransactionError):
        mgr.send_request(client_request(branch="nocookie"), PEER, "udp", 0.0)
    mgr.send_request(client_request(), PEER, "udp", 0.0)
    with pytest.raises(TransactionError):
        mgr.send_request(client_request(), PEER, "udp", 0.0)


# ---- client non-INVITE ---------------------------------------------------------------------


def test_client_non_invite_timer_e_capped_at_t2_then_timer_f() -> None:
    mgr = TransactionManager()
    tx = mgr.send_request(client_request("OPTIONS"), PEER, "udp", 0.0)
    assert tx.state == TRYING
    times, events = run_timers(mgr, 64 * T1)
    # 17.1.2.2: E = T1, MIN(2E, T2): intervals 0.5, 1, 2, 4, 4, 4, ...
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert all(b - a == pytest.approx(4.0) for a, b in itertools.pairwise(times[3:]))
    assert [type(e) for e in events] == [TransactionTimeout]
    assert tx.state == TERMINATED


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    mgr = TransactionManager()
    req = client_request("BYE")
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.take_outgoing()
    events = mgr.receive(response_to(req, 100), PEER, "udp", 0.1)
    assert isinstance(events[0], IncomingResponse) and tx.state == PROCEEDING
    assert send_times(mgr, 13.0) == [0.5, 4.5, 8.5, 12.5]


def test_client_non_invite_final_completed_then_timer_k() -> None:
    mgr = TransactionManager()
    req = client_request("BYE")
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.take_outgoing()
    events = mgr.receive(response_to(req, 200), PEER, "udp", 0.1)
    assert isinstance(events[0], IncomingResponse) and tx.state == COMPLETED
    assert tx.last_response is not None and tx.last_response.status == 200
    # Retransmitted finals are absorbed, nothing is sent.
    assert mgr.receive(response_to(req, 200), PEER, "udp", 0.2) == []
    assert mgr.take_outgoing() == []
    assert mgr.next_timer() == pytest.approx(0.1 + 5.0)  # Timer K = T4
    mgr.handle_timer(5.1)
    assert tx.state == TERMINATED


def test_client_non_invite_tcp() -> None:
    mgr = TransactionManager()
    req = client_request("BYE", transport="TCP")
    tx = mgr.send_request(req, PEER, "tcp", 0.0)
    mgr.take_outgoing()
    assert mgr.next_timer() == pytest.approx(32.0)  # only Timer F
    mgr.receive(response_to(req, 200), PEER, "tcp", 0.1)
    assert tx.state == TERMINATED  # Timer K = 0


def test_transport_error_fails_client_transaction() -> None:
    mgr = TransactionManager()
    tx = mgr.send_request(client_request(transport="TCP"), PEER, "tcp", 0.0)
    events = mgr.transport_error(PEER, "tcp", 0.1)
    assert len(events) == 1 and isinstance(events[0], TransportFailure) and events[0].tx is tx
    assert tx.state == TERMINATED


# ---- responses that are not ours ----------------------------------------------------------


def test_stray_responses_dropped() -> None:
    mgr = TransactionManager()
    req = client_request()
    mgr.send_request(req, PEER, "udp", 0.0)
    other = client_request(branch="z9hG4bKunknown")
    assert mgr.receive(response_to(other, 200), PEER, "udp", 0.1) == []
    two_vias = build_response(req, 200, to_tag="x")
    two_vias.headers.add("Via", "SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKz")
    assert mgr.receive(two_vias.to_bytes(), PEER, "udp", 0.1) == []
    # Same branch, other CSeq method: not this transaction (17.1.3).
    cancel_resp = response_to(req, 200).replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    assert mgr.receive(cancel_resp, PEER, "udp", 0.1) == []
    assert mgr.counters["stray_responses"] == 3


def test_malformed_response_dropped() -> None:
    mgr = TransactionManager()
    data = b"SIP/2.0 200 OK\r\nVia: garbage\r\nCSeq: x\r\n\r\n"
    assert mgr.receive(data, PEER, "udp", 0.0) == []
    assert mgr.take_outgoing() == []
    assert mgr.counters["malformed_dropped"] == 1


# ---- server INVITE -------------------------------------------------------------------------


def test_server_invite_automatic_100_trying() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    assert tx.state == PROCEEDING
    assert mgr.take_outgoing() == []
    assert mgr.next_timer() == pytest.approx(0.2)
    assert mgr.handle_timer(0.2) == []
    trying = parsed(only(mgr.take_outgoing()))
    assert isinstance(trying, Response) and trying.status == 100
    # A retransmitted INVITE re-sends the 100.
    assert mgr.receive(req_bytes(), PEER, "udp", 0.5) == []
    assert parsed(only(mgr.take_outgoing())).status == 100  # type: ignore[union-attr]


def test_server_invite_tu_answer_suppresses_100() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 180, to_tag="us1"), 0.05)
    assert parsed(only(mgr.take_outgoing())).status == 180  # type: ignore[union-attr]
    assert mgr.handle_timer(0.2) == []
    assert mgr.take_outgoing() == []
    # Retransmitted INVITE in Proceeding: the last provisional again, not to the TU.
    assert mgr.receive(req_bytes(), PEER, "udp", 0.5) == []
    assert parsed(only(mgr.take_outgoing())).status == 180  # type: ignore[union-attr]
    assert mgr.counters["retransmissions_absorbed"] == 1


def test_server_invite_retransmission_before_answer_gets_100() -> None:
    mgr = TransactionManager()
    new_server_invite(mgr)
    assert mgr.receive(req_bytes(), PEER, "udp", 0.1) == []
    assert parsed(only(mgr.take_outgoing())).status == 100  # type: ignore[union-attr]


def test_server_invite_failure_timer_g_and_ack() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 486, to_tag="us1"), 0.1)
    assert tx.state == COMPLETED
    assert send_times(mgr, 8.2) == [0.6, 1.6, 3.6, 7.6]  # G: 0.5, 1, 2, 4 (capped at T2)
    assert send_times(mgr, 16.2) == [11.6, 15.6]
    # Lost ACK: the retransmitted INVITE re-sends the final response.
    assert mgr.receive(req_bytes(), PEER, "udp", 16.3) == []
    assert parsed(only(mgr.take_outgoing())).status == 486  # type: ignore[union-attr]
    ack = req_bytes("ACK", cseq_method="ACK", to_tag="us1")
    assert mgr.receive(ack, PEER, "udp", 16.4) == []  # not passed to the TU
    assert tx.state == CONFIRMED
    assert mgr.take_outgoing() == []
    assert mgr.receive(ack, PEER, "udp", 16.5) == []  # absorbed in Confirmed
    assert mgr.next_timer() == pytest.approx(16.4 + 5.0)  # Timer I = T4
    mgr.handle_timer(21.4)
    assert tx.state == TERMINATED


def test_server_invite_timer_h_without_ack() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 480, to_tag="us1"), 1.0)
    fired = fire_until(mgr, 1.0 + 64 * T1)
    assert all(evs == [] for _, evs in fired)
    assert tx.state == TERMINATED
    assert mgr.counters["timer_h_expired"] == 1
    assert mgr.next_timer() is None


def test_server_invite_2xx_retransmitted_until_ack() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    ok = build_response(tx.request, 200, to_tag="us1")
    mgr.send_response(tx, ok, 0.1)
    assert tx.state == ACCEPTED
    assert parsed(only(mgr.take_outgoing())).status == 200  # type: ignore[union-attr]
    assert send_times(mgr, 8.2) == [0.6, 1.6, 3.6, 7.6]
    # A retransmitted INVITE is absorbed in Accepted (RFC 6026).
    assert mgr.receive(req_bytes(), PEER, "udp", 8.3) == []
    assert mgr.take_outgoing() == []
    # An ACK with a different To tag does not stop the retransmissions.
    wrong = req_bytes("ACK", branch="z9hG4bKack9", to_tag="other")
    events = mgr.receive(wrong, PEER, "udp", 8.4)
    assert len(events) == 1 and isinstance(events[0], IncomingRequest) and events[0].tx is None
    # The right ACK (new branch, 13.2.2.4) stops them and goes to the TU, tx=None.
    ack = req_bytes("ACK", branch="z9hG4bKack1", to_tag="us1")
    events = mgr.receive(ack, PEER, "udp", 8.5)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is None and ev.request.method == "ACK"
    assert ev.source == PEER
    assert mgr.counters["acks_2xx_matched"] == 1
    assert send_times(mgr, 20.0) == []
    # Duplicate ACKs still reach the TU (which ignores them).
    events = mgr.receive(ack, PEER, "udp", 20.5)
    assert len(events) == 1 and isinstance(events[0], IncomingRequest) and events[0].tx is None
    # Timer L ends the transaction without AckTimeout.
    fired = fire_until(mgr, 100.0)
    assert all(evs == [] for _, evs in fired)
    assert tx.state == TERMINATED


def test_server_invite_2xx_never_acked() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 200, to_tag="us1"), 0.0)
    events = [e for _, evs in fire_until(mgr, 100.0) for e in evs]
    assert len(events) == 1 and isinstance(events[0], AckTimeout) and events[0].tx is tx
    assert tx.state == TERMINATED
    # Later ACKs still reach the TU as dialog-level ACKs.
    late = mgr.receive(req_bytes("ACK", branch="z9hG4bKack1", to_tag="us1"), PEER, "udp", 40.0)
    assert isinstance(late[0], IncomingRequest) and late[0].tx is None


def test_server_invite_ack_reusing_invite_branch_in_accepted() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 200, to_tag="us1"), 0.0)
    events = mgr.receive(req_bytes("ACK", to_tag="us1"), PEER, "udp", 0.3)
    assert isinstance(events[0], IncomingRequest) and events[0].tx is None
    mgr.take_outgoing()
    assert send_times(mgr, 10.0) == []


def test_server_invite_tcp_no_retransmissions() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr, transport="tcp")
    mgr.send_response(tx, build_response(tx.request, 200, to_tag="us1"), 0.0)
    out = only(mgr.take_outgoing())
    assert out.dest == PEER and out.transport == "tcp"
    assert send_times(mgr, 31.0) == []
    events = mgr.receive(
        req_bytes("ACK", branch="z9hG4bKa2", to_tag="us1", transport="TCP"), PEER, "tcp", 1.0
    )
    assert isinstance(events[0], IncomingRequest) and events[0].tx is None
    assert [e for _, evs in fire_until(mgr, 100.0) for e in evs] == []

    tx2 = new_server_invite(mgr, transport="tcp", branch="z9hG4bKt2", call_id="c2")
    mgr.send_response(tx2, build_response(tx2.request, 603, to_tag="us2"), 0.0)
    mgr.take_outgoing()
    assert mgr.next_timer() == pytest.approx(64 * T1)  # Timer H only, no G
    ack = req_bytes("ACK", branch="z9hG4bKt2", call_id="c2", to_tag="us2", transport="TCP")
    assert mgr.receive(ack, PEER, "tcp", 0.5) == []
    assert tx2.state == TERMINATED  # Timer I = 0


# ---- server non-INVITE ---------------------------------------------------------------------


def test_server_non_invite_flow() -> None:
    mgr = TransactionManager()
    events = mgr.receive(req_bytes("OPTIONS"), PEER, "udp", 0.0)
    ev = events[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    tx = ev.tx
    assert tx.state == TRYING
    assert mgr.next_timer() is None  # no automatic 100 for non-INVITE
    # Retransmission in Trying: discarded.
    assert mgr.receive(req_bytes("OPTIONS"), PEER, "udp", 0.3) == []
    assert mgr.take_outgoing() == []
    mgr.send_response(tx, build_response(tx.request, 100), 0.4)
    assert tx.state == PROCEEDING
    mgr.take_outgoing()
    assert mgr.receive(req_bytes("OPTIONS"), PEER, "udp", 0.5) == []
    assert parsed(only(mgr.take_outgoing())).status == 100  # type: ignore[union-attr]
    mgr.send_response(tx, build_response(tx.request, 200, to_tag="us"), 0.6)
    assert tx.state == COMPLETED
    mgr.take_outgoing()
    assert mgr.receive(req_bytes("OPTIONS"), PEER, "udp", 0.7) == []
    assert parsed(only(mgr.take_outgoing())).status == 200  # type: ignore[union-attr]
    # A second final from the TU is discarded.
    mgr.send_response(tx, build_response(tx.request, 500), 0.8)
    assert mgr.take_outgoing() == []
    assert mgr.counters["unexpected_input"] == 1
    assert mgr.next_timer() == pytest.approx(0.6 + 64 * T1)  # Timer J
    mgr.handle_timer(0.6 + 64 * T1)
    assert tx.state == TERMINATED
    # After Timer J the same request is a new transaction.
    again = mgr.receive(req_bytes("OPTIONS"), PEER, "udp", 40.0)
    assert isinstance(again[0], IncomingRequest) and again[0].tx is not tx


def test_server_non_invite_tcp_timer_j_zero() -> None:
    mgr = TransactionManager()
    ev = mgr.receive(req_bytes("BYE", transport="TCP"), PEER, "tcp", 0.0)[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    mgr.send_response(ev.tx, build_response(ev.tx.request, 200), 0.1)
    assert only(mgr.take_outgoing()).dest == PEER
    assert ev.tx.state == TERMINATED


# ---- Via handling and response routing (18.2.1, 18.2.2, RFC 3581) --------------------------


def test_received_added_when_sent_by_differs() -> None:
    mgr = TransactionManager()
    data = req_bytes("OPTIONS", via_host="pc33.example.com", via_port=5070)
    ev = mgr.receive(data, ("198.51.100.4", 33333), "udp", 0.0)[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    via = ev.request.headers.get("Via")
    assert via is not None and "received=198.51.100.4" in via
    mgr.send_response(ev.tx, build_response(ev.request, 200), 0.0)
    out = only(mgr.take_outgoing())
    assert out.dest == ("198.51.100.4", 5070)
    assert b"received=198.51.100.4" in out.data


def test_rport_filled_and_used() -> None:
    mgr = TransactionManager()
    data = req_bytes("OPTIONS", via_params=";rport")
    ev = mgr.receive(data, ("192.0.2.10", 40001), "udp", 0.0)[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    via = ev.request.headers.get("Via")
    assert via is not None and "rport=40001" in via and "received=192.0.2.10" in via
    mgr.send_response(ev.tx, build_response(ev.request, 200), 0.0)
    assert only(mgr.take_outgoing()).dest == ("192.0.2.10", 40001)


def test_via_untouched_when_sent_by_matches() -> None:
    mgr = TransactionManager()
    data = req_bytes("OPTIONS", via_port=None)
    ev = mgr.receive(data, ("192.0.2.10", 40001), "udp", 0.0)[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    assert ev.request.headers.get("Via") == "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKabc1"
    mgr.send_response(ev.tx, build_response(ev.request, 200), 0.0)
    assert only(mgr.take_outgoing()).dest == ("192.0.2.10", 5060)  # sent-by default port


def test_respond_stateless_routes_per_via() -> None:
    mgr = TransactionManager()
    ev = mgr.receive(req_bytes("OPTIONS", via_params=";rport"), ("192.0.2.10", 7000), "udp", 0)
    assert isinstance(ev[0], IncomingRequest)
    mgr.respond_stateless(ev[0].request, 403, ("192.0.2.10", 7000), "udp")
    out = only(mgr.take_outgoing())
    resp = parsed(out)
    assert isinstance(resp, Response) and resp.status == 403
    assert out.dest == ("192.0.2.10", 7000)
    to = resp.headers.get("To")
    assert to is not None and ";tag=" in to


# ---- CANCEL (9.2) --------------------------------------------------------------------------


def test_cancel_matching_invite() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 180, to_tag="us1"), 0.05)
    mgr.take_outgoing()
    events = mgr.receive(req_bytes("CANCEL"), PEER, "udp", 1.0)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, CancelReceived) and ev.invite_tx is tx
    assert ev.request.method == "CANCEL"
    ok = parsed(only(mgr.take_outgoing()))
    assert isinstance(ok, Response) and ok.status == 200 and ok.cseq == (1, "CANCEL")
    assert ok.headers.get("To") == "<sip:1002@192.0.2.1>;tag=us1"
    # A retransmitted CANCEL gets the 200 again, no second event.
    assert mgr.receive(req_bytes("CANCEL"), PEER, "udp", 1.5) == []
    assert parsed(only(mgr.take_outgoing())).status == 200  # type: ignore[union-attr]
    # The TU answers the INVITE with 487; the ACK completes it.
    mgr.send_response(tx, build_response(tx.request, 487, to_tag="us1"), 1.6)
    assert parsed(only(mgr.take_outgoing())).status == 487  # type: ignore[union-attr]
    mgr.receive(req_bytes("ACK", to_tag="us1"), PEER, "udp", 1.7)
    assert tx.state == CONFIRMED


def test_cancel_after_final_gets_200_without_event() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr)
    mgr.send_response(tx, build_response(tx.request, 200, to_tag="us1"), 0.05)
    mgr.take_outgoing()
    assert mgr.receive(req_bytes("CANCEL"), PEER, "udp", 0.1) == []
    assert parsed(only(mgr.take_outgoing())).status == 200  # type: ignore[union-attr]


def test_cancel_without_transaction_gets_481() -> None:
    mgr = TransactionManager()
    assert mgr.receive(req_bytes("CANCEL"), PEER, "udp", 0.0) == []
    resp = parsed(only(mgr.take_outgoing()))
    assert isinstance(resp, Response) and resp.status == 481
    assert mgr.counters["cancel_unmatched"] == 1


def test_client_cancel_is_its_own_transaction() -> None:
    mgr = TransactionManager()
    invite = client_request()
    itx = mgr.send_request(invite, PEER, "udp", 0.0)
    mgr.receive(response_to(invite, 180), PEER, "udp", 0.1)
    cancel = create_cancel(invite)
    ctx = mgr.send_request(cancel, PEER, "udp", 0.2)
    assert ctx is not itx and ctx.kind == "client_non_invite"
    mgr.take_outgoing()
    events = mgr.receive(response_to(cancel, 200), PEER, "udp", 0.3)
    assert len(events) == 1 and isinstance(events[0], IncomingResponse) and events[0].tx is ctx
    events = mgr.receive(response_to(invite, 487), PEER, "udp", 0.4)
    assert len(events) == 1 and isinstance(events[0], IncomingResponse) and events[0].tx is itx
    ack = parsed(only(mgr.take_outgoing()))
    assert isinstance(ack, Request) and ack.method == "ACK" and ack.cseq == (1, "ACK")


def test_terminate_drops_transaction_quietly() -> None:
    mgr = TransactionManager()
    req = client_request()
    tx = mgr.send_request(req, PEER, "udp", 0.0)
    mgr.receive(response_to(req, 180), PEER, "udp", 0.1)
    mgr.terminate(tx)
    assert tx.state == TERMINATED and mgr.client_transactions == 0
    assert mgr.next_timer() is None
    assert mgr.receive(response_to(req, 487), PEER, "udp", 0.2) == []
    assert mgr.counters["stray_responses"] == 1


# ---- RFC 2543 fallback matching (17.2.3) ---------------------------------------------------


def test_rfc2543_matching_without_magic_cookie() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr, branch=None)
    assert tx.key[0] == "2543"
    mgr.send_response(tx, build_response(tx.request, 486, to_tag="us1"), 0.05)
    mgr.take_outgoing()
    assert mgr.receive(req_bytes(branch=None), PEER, "udp", 0.5) == []  # retransmission
    assert parsed(only(mgr.take_outgoing())).status == 486  # type: ignore[union-attr]
    ack = req_bytes("ACK", branch=None, to_tag="us1")
    assert mgr.receive(ack, PEER, "udp", 0.6) == []
    assert tx.state == CONFIRMED


def test_rfc2543_cancel_matches() -> None:
    mgr = TransactionManager()
    tx = new_server_invite(mgr, branch="1234")
    events = mgr.receive(req_bytes("CANCEL", branch="1234"), PEER, "udp", 0.1)
    assert len(events) == 1 and isinstance(events[0], CancelReceived)
    assert events[0].invite_tx is tx


# ---- malformed input -----------------------------------------------------------------------


def test_malformed_request_answered_400() -> None:
    mgr = TransactionManager()
    bad = req_bytes("OPTIONS", extra="Max-Forwards: abc\r\n")
    assert mgr.receive(bad, PEER, "udp", 0.0) == []
    out = only(mgr.take_outgoing())
    resp = parsed(out)
    assert isinstance(resp, Response) and resp.status == 400
    assert out.dest == PEER
    assert mgr.counters["malformed_answered"] == 1


def test_malformed_request_status_from_parser() -> None:
    mgr = TransactionManager()
    mgr.receive(req_bytes("OPTIONS", uri="mailto:x@example.com"), PEER, "udp", 0.0)
    resp = parsed(only(mgr.take_outgoing()))
    assert isinstance(resp, Response) and resp.status == 416
    mgr.receive(req_bytes("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), PEER, "udp", 0)
    resp = parsed(only(mgr.take_outgoing()))
    assert isinstance(resp, Response) and resp.status == 505


def test_malformed_request_without_headers_dropped() -> None:
    mgr = TransactionManager()
    no_call_id = req_bytes("OPTIONS").replace(b"Call-ID: call-1@192.0.2.10\r\n", b"")
    assert mgr.receive(no_call_id, PEER, "udp", 0.0) == []
    assert mgr.receive(b"\x00\xffgarbage\r\n\r\n", PEER, "udp", 0.0) == []
    bad_ack = req_bytes("ACK", extra="Max-Forwards: abc\r\n")
    assert mgr.receive(bad_ack, PEER, "udp", 0.0) == []
    assert mgr.take_outgoing() == []
    assert mgr.counters["malformed_dropped"] == 3


def test_keepalive_ignored() -> None:
    mgr = TransactionManager()
    assert mgr.receive(b"\r\n\r\n", PEER, "udp", 0.0) == []
    assert mgr.take_outgoing() == []
    assert mgr.counters["keepalives"] == 1


def test_cseq_method_mismatch_answered() -> None:
    mgr = TransactionManager()
    mgr.receive(req_bytes("OPTIONS", cseq_method="INVITE"), PEER, "tcp", 0.0)
    out = only(mgr.take_outgoing())
    assert out.dest == PEER and out.transport == "tcp"
    assert parsed(out).status == 400  # type: ignore[union-attr]


# ---- timers --------------------------------------------------------------------------------


def test_next_timer_is_earliest_and_cancelled_timers_skipped() -> None:
    mgr = TransactionManager()
    assert mgr.next_timer() is None
    req = client_request()
    mgr.send_request(req, PEER, "udp", 0.0)
    mgr.send_request(client_request("OPTIONS", branch="z9hG4bKo"), PEER, "udp", 0.1)
    assert mgr.next_timer() == pytest.approx(0.5)
    mgr.receive(response_to(req, 180), PEER, "udp", 0.2)  # cancels A and B
    assert mgr.next_timer() == pytest.approx(0.6)


def test_many_transactions_heap_compaction() -> None:
    mgr = TransactionManager()
    for i in range(3000):
        req = client_request(branch=f"z9hG4bK{i}")
        mgr.send_request(req, PEER, "udp", 0.0)
        mgr.receive(response_to(req, 180), PEER, "udp", 0.0)
    assert mgr.next_timer() is None
    assert len(mgr._heap) < 3000


# ---- property tests: random input sequences --------------------------------------------------

_OPS = st.lists(
    st.tuples(st.integers(min_value=0, max_value=14), st.floats(min_value=0.0, max_value=20.0)),
    max_size=40,
)


def _check(mgr: TransactionManager, tx: ClientTransaction | ServerTransaction, now: float,
           events: list[object]) -> None:
    assert tx.state in STATES[tx.kind]
    known = (IncomingRequest, IncomingResponse, TransactionTimeout, TransportFailure,
             AckTimeout, CancelReceived)
    assert all(isinstance(e, known) for e in events)
    deadline = mgr.next_timer()
    assert deadline is None or deadline > now or deadline == pytest.approx(now)
    for out in mgr.take_outgoing():
        parse_message(out.data)  # everything we send parses


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_server_invite_random_inputs(transport: str, ops: list[tuple[int, float]]) -> None:
    mgr = TransactionManager()
    up = transport.upper()
    tx = new_server_invite(mgr, transport=transport)
    now = 0.0
    for op, value in ops:
        events: list[object] = []
        if op == 0:
            events = list(mgr.receive(req_bytes(transport=up), PEER, transport, now))
        elif op == 1:
            events = list(mgr.receive(req_bytes("ACK", to_tag="us1", transport=up),
                                      PEER, transport, now))
        elif op == 2:
            events = list(mgr.receive(req_bytes("ACK", branch="z9hG4bKack", to_tag="us1",
                                                transport=up), PEER, transport, now))
        elif op == 3:
            events = list(mgr.receive(req_bytes("CANCEL", transport=up), PEER, transport, now))
        elif op in (4, 5, 6, 7, 8):
            status = (100, 180, 200, 486, 503)[op - 4]
            mgr.send_response(tx, build_response(tx.request, status, to_tag="us1"), now)
        elif op == 9:
            events = list(mgr.transport_error(PEER, transport, now))
        elif op == 10:
            events = list(mgr.receive(b"INVITE sip:x SIP/2.0\r\n\r\n", PEER, transport, now))
        else:
            now += value
            events = list(mgr.handle_timer(now))
        _check(mgr, tx, now, events)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_server_non_invite_random_inputs(transport: str, ops: list[tuple[int, float]]) -> None:
    mgr = TransactionManager()
    up = transport.upper()
    ev = mgr.receive(req_bytes("BYE", to_tag="us1", transport=up), PEER, transport, 0.0)[0]
    assert isinstance(ev, IncomingRequest) and ev.tx is not None
    tx = ev.tx
    now = 0.0
    for op, value in ops:
        events: list[object] = []
        if op in (0, 1):
            events = list(mgr.receive(req_bytes("BYE", to_tag="us1", transport=up),
                                      PEER, transport, now))
        elif op in (2, 3, 4, 5):
            status = (100, 183, 200, 481)[op - 2]
            mgr.send_response(tx, build_response(tx.request, status), now)
        elif op == 6:
            events = list(mgr.transport_error(PEER, transport, now))
        elif op == 7:
            events = list(mgr.receive(req_bytes("CANCEL", transport=up), PEER, transport, now))
        else:
            now += value
            events = list(mgr.handle_timer(now))
        _check(mgr, tx, now, events)


@pytest.mark.parametrize("method", ["INVITE", "BYE"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_client_random_inputs(method: str, transport: str, ops: list[tuple[int, float]]) -> None:
    mgr = TransactionManager()
    req = client_request(method, transport=transport.upper())
    tx = mgr.send_request(req, PEER, transport, 0.0)
    now = 0.0
    ack = Request(method="ACK", uri=req.uri, headers=Headers(
        [("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack"),
         ("From", "<sip:1001@192.0.2.1>;tag=ourtag"),
         ("To", "<sip:1002@192.0.2.10>;tag=remote1"),
         ("Call-ID", "out-call-1"), ("CSeq", "1 ACK"), ("Max-Forwards", "70")]))
    for op, value in ops:
        events: list[object] = []
        if op <= 7:
            status = (100, 180, 183, 200, 200, 302, 486, 603)[op]
            tag = "fork2" if op == 4 else "remote1"
            events = list(mgr.receive(response_to(req, status, to_tag=tag), PEER, transport, now))
        elif op == 8:
            if method == "INVITE":
                mgr.send_ack(tx, ack, now)
        elif op == 9:
            events = list(mgr.transport_error(PEER, transport, now))
        elif op == 10:
            events = list(mgr.receive(b"SIP/2.0 200 OK\r\n\r\n", PEER, transport, now))
        else:
            now += value
            events = list(mgr.handle_timer(now))
        _check(mgr, tx, now, events)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    mgr = TransactionManager()
    assert isinstance(mgr.receive(data, PEER, "udp", 0.0), list)
    assert isinstance(mgr.receive(req_bytes("OPTIONS")[:40] + data, PEER, "udp", 0.0), list)
