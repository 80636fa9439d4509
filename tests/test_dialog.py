"""Tests for dialogs (RFC 3261 section 12) and CANCEL construction (section 9.1)."""

from __future__ import annotations

from sip.dialog import Dialog, create_cancel
from sip.message import Headers, Request, Response, build_response
from sip.parser import parse_message
from sip.uri import parse_name_addr

VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnew1;rport"


def our_invite(*, routes: tuple[str, ...] = ()) -> Request:
    return Request(
        method="INVITE",
        uri="sip:bob@biloxi.example.com",
        headers=Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1;rport"),
                ("Max-Forwards", "70"),
                *(("Route", r) for r in routes),
                ("From", '"Alice Smith" <sip:alice@atlanta.example.com>;tag=9fxced76sl'),
                ("To", "Bob <sip:bob@biloxi.example.com>"),
                ("Call-ID", "3848276298220188511@atlanta.example.com"),
                ("CSeq", "314159 INVITE"),
                ("Contact", "<sip:alice@192.0.2.1:5060>"),
            ]
        ),
    )


def their_2xx(invite: Request, *, record_route: tuple[str, ...] = ()) -> Response:
    resp = build_response(invite, 200, to_tag="8321234356")
    for rr in record_route:
        resp.headers.add("Record-Route", rr)
    resp.headers.add("Contact", "<sip:bob@192.0.2.4:5062;transport=udp>")
    return resp


def their_invite(*, record_route: tuple[str, ...] = ()) -> Request:
    return Request(
        method="INVITE",
        uri="sip:1002@192.0.2.1",
        headers=Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKin1"),
                *(("Record-Route", rr) for rr in record_route),
                ("From", "<sip:1001@192.0.2.1>;tag=abc"),
                ("To", "<sip:1002@192.0.2.1>"),
                ("Call-ID", "in-1"),
                ("CSeq", "7 INVITE"),
                ("Contact", '"Phone" <sip:1001@192.0.2.10:5062;ob>;expires=60'),
            ]
        ),
    )


# ---- UAC -----------------------------------------------------------------------------------


def test_uac_dialog_from_2xx() -> None:
    invite = our_invite()
    resp = their_2xx(invite, record_route=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
    d = Dialog.uac(invite, resp)
    assert d.call_id == "3848276298220188511@atlanta.example.com"
    assert d.local_tag == "9fxced76sl"
    assert d.remote_tag == "8321234356"
    assert d.local_uri == "sip:alice@atlanta.example.com"
    assert d.remote_uri == "sip:bob@biloxi.example.com"
    assert d.remote_target == "sip:bob@192.0.2.4:5062;transport=udp"
    # 12.1.2: Record-Route reversed.
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert d.local_seq == 314159
    assert d.remote_seq is None
    assert not d.secure
    assert d.id == (d.call_id, "9fxced76sl", "8321234356")


def test_uac_record_route_in_one_header_value() -> None:
    invite = our_invite()
    resp = their_2xx(invite, record_route=("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",))
    d = Dialog.uac(invite, resp)
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]


def test_uac_in_dialog_request_loose_routing() -> None:
    invite = our_invite()
    resp = their_2xx(invite, record_route=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
    d = Dialog.uac(invite, resp)
    bye = d.create_request("BYE", via=VIA)
    assert bye.method == "BYE"
    # 12.2.1.1: loose routing -> Request-URI = remote target, Route = route set.
    assert bye.uri == "sip:bob@192.0.2.4:5062;transport=udp"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert bye.cseq == (314160, "BYE")
    assert d.local_seq == 314160
    assert bye.call_id == d.call_id
    assert bye.headers.get("Via") == VIA
    assert bye.headers.get("Max-Forwards") == "70"
    frm = parse_name_addr(bye.first("From"))
    to = parse_name_addr(bye.first("To"))
    assert frm.tag == "9fxced76sl" and str(frm.uri) == "sip:alice@atlanta.example.com"
    assert frm.display == "Alice Smith"
    assert to.tag == "8321234356" and str(to.uri) == "sip:bob@biloxi.example.com"
    assert "Contact" not in bye.headers
    assert d.next_hop() == "sip:p2.example.com;lr"
    # The request goes on the wire and parses back.
    again = parse_message(bye.to_bytes())
    assert isinstance(again, Request) and again.cseq == (314160, "BYE")
    # CSeq keeps increasing.
    assert d.create_request("INFO", via=VIA).cseq == (314161, "INFO")


def test_reinvite_carries_contact_and_body() -> None:
    d = Dialog.uac(our_invite(), their_2xx(our_invite()))
    reinvite = d.create_request("INVITE", via=VIA, body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.headers.get("Contact") == "<sip:alice@192.0.2.1:5060>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.body == b"v=0\r\n"
    assert reinvite.uri == d.remote_target
    assert reinvite.headers.get_all("Route") == []
    assert d.next_hop() == d.remote_target


def test_strict_routing() -> None:
    invite = our_invite()
    resp = their_2xx(invite, record_route=("<sip:p1.example.com;lr>", "<sip:strict.example.com>"))
    d = Dialog.uac(invite, resp)
    assert d.route_set[0] == "<sip:strict.example.com>"
    bye = d.create_request("BYE", via=VIA)
    # 12.2.1.1 strict routing: Request-URI = first route, remote target last in Route.
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:bob@192.0.2.4:5062;transport=udp>",
    ]
    assert d.next_hop() == "sip:strict.example.com"


def test_create_ack_uses_invite_cseq() -> None:
    invite = our_invite()
    resp = their_2xx(invite, record_route=("<sip:p1.example.com;lr>",))
    d = Dialog.uac(invite, resp)
    ack = d.create_ack(314159, via=VIA)
    assert ack.method == "ACK"
    assert ack.cseq == (314159, "ACK")
    assert d.local_seq == 314159  # not incremented
    assert ack.uri == d.remote_target
    assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    to = parse_name_addr(ack.first("To"))
    assert to.tag == "8321234356"


def test_uac_early_dialog_without_contact_uses_request_uri() -> None:
    invite = our_invite()
    ringing = build_response(invite, 180, to_tag="early1")
    d = Dialog.uac(invite, ringing)
    assert d.remote_tag == "early1"
    assert d.remote_target == "sip:bob@biloxi.example.com"
    d.update_remote_target(their_2xx(invite))
    assert d.remote_target == "sip:bob@192.0.2.4:5062;transport=udp"


def test_secure_dialog_for_sips() -> None:
    invite = our_invite()
    invite.uri = "sips:bob@biloxi.example.com"
    assert Dialog.uac(invite, their_2xx(invite)).secure


# ---- UAS -----------------------------------------------------------------------------------


def test_uas_dialog() -> None:
    request = their_invite(record_route=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
    d = Dialog.uas(request, "ourtag", "<sip:switch@192.0.2.1:5060>")
    assert d.call_id == "in-1"
    assert d.local_tag == "ourtag" and d.remote_tag == "abc"
    assert d.local_uri == "sip:1002@192.0.2.1" and d.remote_uri == "sip:1001@192.0.2.1"
    assert d.remote_target == "sip:1001@192.0.2.10:5062;ob"
    # 12.1.1: Record-Route in order.
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.remote_seq == 7
    assert d.local_seq == 0
    bye = d.create_request("BYE", via=VIA)
    assert bye.cseq == (1, "BYE")
    assert bye.uri == "sip:1001@192.0.2.10:5062;ob"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert parse_name_addr(bye.first("From")).tag == "ourtag"
    assert parse_name_addr(bye.first("To")).tag == "abc"
    reinvite = d.create_request("INVITE", via=VIA)
    assert reinvite.cseq == (2, "INVITE")
    assert reinvite.headers.get("Contact") == "<sip:switch@192.0.2.1:5060>"
    explicit = d.create_request("NOTIFY", via=VIA, contact="<sip:other@192.0.2.1>")
    assert explicit.headers.get("Contact") == "<sip:other@192.0.2.1>"


def test_remote_cseq_ordering() -> None:
    d = Dialog.uas(their_invite(), "ourtag", "<sip:switch@192.0.2.1>")

    def req(n: int, method: str = "BYE") -> Request:
        return Request(method=method, uri="sip:x@192.0.2.1",
                       headers=Headers([("CSeq", f"{n} {method}")]))

    assert d.check_remote_cseq(req(8))
    assert d.remote_seq == 8
    assert d.check_remote_cseq(req(8, "ACK"))  # equal is not out of order
    assert not d.check_remote_cseq(req(5))  # lower: 500 (12.2.2)
    assert d.remote_seq == 8
    assert d.check_remote_cseq(req(100))
    assert d.remote_seq == 100
    empty = Dialog.uac(our_invite(), their_2xx(our_invite()))
    assert empty.remote_seq is None
    assert empty.check_remote_cseq(req(1))  # empty remote sequence: any number is fine
    assert empty.remote_seq == 1


def test_update_remote_target_from_refresh() -> None:
    d = Dialog.uas(their_invite(), "ourtag", "<sip:switch@192.0.2.1>")
    refresh = their_invite()
    refresh.headers.set("Contact", "<sip:1001@198.51.100.9:6000>")
    d.update_remote_target(refresh)
    assert d.remote_target == "sip:1001@198.51.100.9:6000"
    no_contact = Request(method="UPDATE", uri="sip:x@y", headers=Headers())
    d.update_remote_target(no_contact)
    assert d.remote_target == "sip:1001@198.51.100.9:6000"
    broken = Request(method="UPDATE", uri="sip:x@y", headers=Headers([("Contact", "<<>")]))
    d.update_remote_target(broken)
    assert d.remote_target == "sip:1001@198.51.100.9:6000"


# ---- CANCEL --------------------------------------------------------------------------------


def test_create_cancel() -> None:
    invite = our_invite(routes=("<sip:p1.example.com;lr>",))
    invite.headers.add("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKlower")
    invite.body = b"v=0\r\n"
    cancel = create_cancel(invite)
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.headers.get_all("Via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1;rport"]
    assert cancel.cseq == (314159, "CANCEL")
    for name in ("From", "To", "Call-ID"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert cancel.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    assert cancel.headers.get("Max-Forwards") == "70"
    assert cancel.body == b""
    parsed = parse_message(cancel.to_bytes())
    assert isinstance(parsed, Request) and parsed.method == "CANCEL"
