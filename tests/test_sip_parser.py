"""Unit tests for sip.uri and sip.parser."""

from __future__ import annotations

import pytest

from sip.errors import SipParseError
from sip.message import Request, Response, build_response
from sip.parser import (
    MAX_MESSAGE_BYTES,
    StreamFramer,
    parse_message,
    salvage_request,
)
from sip.uri import (
    NameAddr,
    SipURI,
    Via,
    header_tag,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
    validate_name_addr,
)

# ---- URIs ----------------------------------------------------------------------------------


def test_parse_full_sip_uri() -> None:
    uri = parse_uri("sip:alice:secret@Atlanta.COM:5070;transport=TCP;lr;maddr=[::1]?subject=x&h=")
    assert uri == SipURI(
        scheme="sip",
        user="alice",
        password="secret",
        host="atlanta.com",
        port=5070,
        params={"transport": "TCP", "lr": None, "maddr": "[::1]"},
        headers={"subject": "x", "h": ""},
    )
    assert uri.transport == "tcp"
    assert uri.host_port() == ("atlanta.com", 5070)
    assert str(uri) == "sip:alice:secret@atlanta.com:5070;transport=TCP;lr;maddr=[::1]?subject=x&h="


def test_uri_defaults() -> None:
    uri = parse_uri("SIPS:example.com")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sips", None, "example.com", None)
    assert uri.transport == "udp"
    assert uri.host_port() == ("example.com", 5061)
    assert parse_uri("sip:h").host_port() == ("h", 5060)


def test_uri_ipv6() -> None:
    uri = parse_uri("sip:[2001:DB8::1]:5080;transport=udp")
    assert uri.host == "[2001:db8::1]"
    assert uri.host_port() == ("2001:db8::1", 5080)
    assert str(uri) == "sip:[2001:db8::1]:5080;transport=udp"
    # RFC 5118 4.4: an IPv6 address without brackets is not a host.
    with pytest.raises(SipParseError):
        parse_uri("sip:2001:db8::1")


def test_uri_user_may_contain_separators() -> None:
    uri = parse_uri("sip:user;phone-context=x?y,z@example.com;p")
    assert uri.user == "user;phone-context=x?y,z"
    assert uri.params == {"p": None}
    assert parse_uri("sip:*67%23#1@h").user == "*67%23#1"


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+1-201-555-0123"
    assert uri.host == ""
    assert uri.params == {"phone-context": "example.com"}
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:host:",
        "sip:host:65536",
        "sip:host:12a",
        "sip:ho st",
        "sip: host",
        "sip:host;",
        "sip:host;;lr",
        "sip:host;=x",
        "sip:host;a=",
        "sip:host?",
        "sip:host?a",
        "sip:us%zzer@host",
        'sip:us"er@host',
        "sip:[::1",
        "sip:[zz::1]",
        "sip:host>",
        "<sip:host>",
        "sip",
        ":host",
        "1sip:host",
        "tel:",
        "tel:12 34",
    ],
)
def test_bad_uris_are_400(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


@pytest.mark.parametrize("text", ["http://example.com/", "mailto:a@b", "urn:uuid:1234", "im:x"])
def test_unknown_schemes_are_416(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.status == 416


# ---- name-addr -----------------------------------------------------------------------------


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Alice \\"A\\" Smith" <sip:alice@atlanta.com;transport=tcp>;tag=9fx')
    assert na.display == 'Alice "A" Smith'
    assert na.uri.params == {"transport": "tcp"}
    assert na.tag == "9fx"
    assert str(na) == '"Alice \\"A\\" Smith" <sip:alice@atlanta.com;transport=tcp>;tag=9fx'

    bare = parse_name_addr("<sip:bob@biloxi.com>")
    assert bare.display is None and bare.params == {} and bare.tag is None

    tokens = parse_name_addr("Bob  Smith<sip:bob@biloxi.com> ; Tag = 1 ; q=0.5;flag")
    assert tokens.display == "Bob  Smith"
    assert tokens.params == {"tag": "1", "q": "0.5", "flag": None}


def test_addr_spec_parameters_belong_to_the_header() -> None:
    # RFC 3261 section 20.10
    na = parse_name_addr("sip:bob@biloxi.com;tag=abc;transport=tcp")
    assert na.uri.params == {}
    assert na.params == {"tag": "abc", "transport": "tcp"}
    assert str(na) == "<sip:bob@biloxi.com>;tag=abc;transport=tcp"


def test_name_addr_quoted_param_and_roundtrip() -> None:
    text = '<sip:a@b>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    na = parse_name_addr(text)
    assert na.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert str(na) == text
    assert parse_name_addr(str(na)) == na


def test_name_addr_display_with_controls_is_requoted() -> None:
    na = NameAddr(parse_uri("sip:a@b"), 'x"\\\x07', {})
    assert parse_name_addr(str(na)).display == 'x"\\\x07'


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        "Bell, Alexander <sip:a@b>",
        "< sip:a@b>",
        "<sip:a@b >",
        "sip:a@b?x=y",
        "<sip:a@b>;",
        "<sip:a@b>;;tag=1",
        "<sip:a@b>;tag=",
        "<sip:a@b> junk",
        '"x" sip:a@b',
    ],
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_name_addr(text)
    assert info.value.status == 400
    with pytest.raises(SipParseError):
        validate_name_addr(text)


def test_validate_name_addr_accepts_unknown_scheme() -> None:
    validate_name_addr("<http://www.example.com>;tag=1")
    validate_name_addr("isbn:2983792873")
    with pytest.raises(SipParseError) as info:
        parse_name_addr("<http://www.example.com>")
    assert info.value.status == 416
    with pytest.raises(SipParseError):
        validate_name_addr("sip:a@b", require_brackets=True)


def test_memoised_parses_are_the_callers_own() -> None:
    """Parses are memoised by text; what a caller gets must still be its own to change."""
    text = '"Bob" <sip:bob@biloxi.example.com;transport=tcp>;tag=a6c85cf'
    first = parse_name_addr(text)
    first.params["tag"] = "changed"
    first.uri.params["transport"] = "udp"
    first.uri.host = "elsewhere.example.com"
    second = parse_name_addr(text)
    assert second.tag == "a6c85cf"
    assert second.uri.params == {"transport": "tcp"}
    assert second.uri.host == "biloxi.example.com"
    assert header_tag(text) == "a6c85cf"
    assert header_tag("<sip:bob@biloxi.example.com>") is None
    uri = parse_uri("sip:carol@chicago.example.com;lr?subject=x")
    uri.params.clear()
    uri.headers["subject"] = "y"
    again = parse_uri("sip:carol@chicago.example.com;lr?subject=x")
    assert again.params == {"lr": None} and again.headers == {"subject": "x"}
    via = parse_via("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8")
    via.params["received"] = "192.0.2.1"
    assert parse_via("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8").received is None


def test_memoised_parses_still_reject_bad_values() -> None:
    """A bad value is refused every time (failures are not memoised), and a flood of
    distinct values keeps the memo bounded."""
    from sip import uri as uri_module

    for _ in range(2):
        with pytest.raises(SipParseError):
            parse_name_addr("<sip:bob@bad host>")
        with pytest.raises(SipParseError):
            header_tag("<sip:bob@biloxi.example.com;tag=1")
    for i in range(3 * 4096):
        assert header_tag(f"<sip:u{i}@example.com>;tag=t{i}") == f"t{i}"
    memo = uri_module._NAME_ADDR_MEMO
    assert len(memo._young) + len(memo._old) <= 2 * 4096


# ---- Via -----------------------------------------------------------------------------------


def test_via_basic() -> None:
    via = parse_via("SIP/2.0/udp PC33.Atlanta.com:5066;branch=z9hG4bK776asdhds;rport")
    params: dict[str, str | None] = {"branch": "z9hG4bK776asdhds", "rport": None}
    assert via == Via("UDP", "pc33.atlanta.com", 5066, params)
    assert via.branch == "z9hG4bK776asdhds"
    assert via.rport == ""
    assert via.received is None
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport"


def test_via_received_rport_and_lws() -> None:
    via = parse_via(" SIP / 2.0 / TCP  host.example.com : 5060 ; received = 192.0.2.1;rport=5071 ")
    assert (via.transport, via.host, via.port) == ("TCP", "host.example.com", 5060)
    assert via.received == "192.0.2.1"
    assert via.rport == "5071"
    v6 = parse_via("SIP/2.0/UDP [2001:db8::1];received=2001:db8::2;branch=z9hG4bKx")
    assert v6.host == "[2001:db8::1]" and v6.port is None
    assert v6.received == "2001:db8::2"
    # rebuilt Via parses back to the same thing
    assert parse_via(str(v6)) == v6


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host;",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host junk",
        "SIP/3.0/UDP host",
        "HTTP/2.0/UDP host",
        "SIP/2.0/UDP host;branch=a b",
    ],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


# ---- split_list ----------------------------------------------------------------------------


def test_split_list() -> None:
    assert split_list("a") == ["a"]
    assert split_list(" a , b ,c") == ["a", "b", "c"]
    assert split_list('"Doe, John" <sip:j@d>, <sip:x@y;a=1,2>;q=1') == [
        '"Doe, John" <sip:j@d>',
        "<sip:x@y;a=1,2>;q=1",
    ]
    assert split_list('"a\\", b" <sip:x>, c') == ['"a\\", b" <sip:x>', "c"]
    assert split_list("a,,b,") == ["a", "", "b", ""]
    # unbalanced input still terminates
    assert split_list('"abc, d') == ['"abc, d']
    assert split_list("<abc, d") == ["<abc, d"]


# ---- messages ------------------------------------------------------------------------------

BASIC = (
    "INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@biloxi.com>\r\n"
    "From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.com>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n"
    "\r\n"
    "v=0\n"
)


def msg(text: str, body: bytes = b"") -> bytes:
    return text.encode() + body


def test_parse_basic_request() -> None:
    m = parse_message(msg(BASIC))
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.version) == ("INVITE", "sip:bob@biloxi.com", "SIP/2.0")
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert m.cseq == (314159, "INVITE")
    assert m.body == b"v=0\n"
    assert [n for n, _ in m.headers][:3] == ["Via", "Max-Forwards", "To"]


def test_parse_response() -> None:
    text = BASIC.replace("INVITE sip:bob@biloxi.com SIP/2.0", "SIP/2.0 180 Ringing Now")
    m = parse_message(msg(text))
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (180, "Ringing Now")


def test_compact_forms_and_case() -> None:
    text = (
        "OPTIONS sip:a@b SIP/2.0\r\n"
        "v: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        "f: <sip:x@y>;tag=1\r\n"
        "T: <sip:a@b>\r\n"
        "i: cid\r\n"
        "cseq: 1 OPTIONS\r\n"
        "m: <sip:x@h>\r\n"
        "k: timer, 100rel\r\n"
        "l: 0\r\n\r\n"
    )
    m = parse_message(text.encode())
    assert m.headers.get("Via") == "SIP/2.0/UDP h;branch=z9hG4bK1"
    assert m.headers.get("From") == "<sip:x@y>;tag=1"
    assert m.headers.get("To") == "<sip:a@b>"
    assert m.call_id == "cid"
    assert m.headers.get_all("Supported") == ["timer", "100rel"]
    assert m.headers.get("Contact") == "<sip:x@h>"
    assert [n for n, _ in m.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Supported",
        "Content-Length",
    ]  # fmt: skip


def test_folding_and_hcolon_whitespace() -> None:
    text = (
        "OPTIONS sip:a@b SIP/2.0\r\n"
        "Via \t: SIP/2.0/UDP h;branch=z9hG4bK1,\r\n"
        "  SIP/2.0/TCP g\r\n"
        "From:\r\n\t<sip:x@y>;tag=1\r\n"
        "To: <sip:a@b>\r\n"
        "Subject: one  \r\n"
        "   two\r\n"
        "Call-ID: cid\r\n"
        "CSeq: 1\r\n OPTIONS\r\n"
        "\r\n"
    )
    m = parse_message(text.encode())
    assert m.headers.get_all("Via") == ["SIP/2.0/UDP h;branch=z9hG4bK1", "SIP/2.0/TCP g"]
    assert m.headers.get("From") == "<sip:x@y>;tag=1"
    assert m.headers.get("Subject") == "one two"
    assert m.cseq == (1, "OPTIONS")
    assert m.body == b""


def test_list_headers_split_only_when_listed() -> None:
    text = BASIC.replace(
        "Content-Type: application/sdp\r\n",
        "Content-Type: application/sdp\r\n"
        "Allow: INVITE, ACK,BYE\r\n"
        'Authorization: Digest username="a", realm="b"\r\n'
        "Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        'Contact: "x, y" <sip:c@d>, <sip:e@f>;q=0.1\r\n',
    )
    m = parse_message(msg(text))
    assert m.headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert m.headers.get_all("Authorization") == ['Digest username="a", realm="b"']
    assert m.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert m.headers.get_all("Contact") == [
        "<sip:alice@pc33.atlanta.com>",
        '"x, y" <sip:c@d>',
        "<sip:e@f>;q=0.1",
    ]


def test_bare_lf_and_leading_crlf() -> None:
    m = parse_message(b"\r\n\r\n" + msg(BASIC).replace(b"\r\n", b"\n"))
    assert isinstance(m, Request)
    assert m.body == b"v=0\n"


def test_no_empty_line_at_end() -> None:
    head = BASIC.split("Content-Type")[0]
    m = parse_message((head + "Content-Length: 0").encode())
    assert m.body == b""
    assert m.headers.get("Content-Length") == "0"


def test_body_truncated_to_content_length() -> None:
    m = parse_message(msg(BASIC, b"extra junk"))
    assert m.body == b"v=0\n"


def test_no_content_length_takes_whole_datagram() -> None:
    text = BASIC.replace("Content-Length: 4\r\n", "")
    m = parse_message(msg(text, b"more"))
    assert m.body == b"v=0\nmore"


@pytest.mark.parametrize(
    ("old", "new", "status"),
    [
        ("Content-Length: 4", "Content-Length: 5", 400),
        ("Content-Length: 4", "Content-Length: -4", 400),
        ("Content-Length: 4", "Content-Length: four", 400),
        ("Content-Length: 4", "Content-Length: 99999999999999999999", 400),
        ("Content-Length: 4", "Content-Length: 70000", 400),
        ("Content-Length: 4", "Content-Length: ٤", 400),
        ("CSeq: 314159 INVITE", "CSeq: 314159 BYE", 400),
        ("CSeq: 314159 INVITE", "CSeq: 2147483648 INVITE", 400),
        ("CSeq: 314159 INVITE", "CSeq: x INVITE", 400),
        ("CSeq: 314159 INVITE", "CSeq: 1", 400),
        ("Max-Forwards: 70", "Max-Forwards: 256", 400),
        ("Max-Forwards: 70", "Max-Forwards: -1", 400),
        ("Call-ID: a84b4c76e66710@pc33.atlanta.com", "Call-ID: a b", 400),
        ("Call-ID: a84b4c76e66710@pc33.atlanta.com", "Call-ID:", 400),
        ("To: Bob <sip:bob@biloxi.com>", "To: Bob <sip:bob@biloxi.com", 400),
        ("From: Alice", 'From: "Alice', 400),
        ("Via: SIP/2.0/UDP pc33", "Via: SIP/2.0/UDP pc33;;", 400),
        ("Via: SIP/2.0/UDP pc33.atlanta.com;", "Via: SIP/2.0/UDP pc33.atlanta.com;, ;", 400),
        ("Contact: <sip:alice@pc33.atlanta.com>", "Contact: <sip:alice@pc33>,,", 400),
        ("Contact: <sip:alice@pc33.atlanta.com>", "Record-Route: sip:p1.example.com", 400),
        ("Max-Forwards: 70", "Max-Forwards: 70\r\nMax-Forwards: 70", 400),
        ("Max-Forwards: 70", "Expires: 1\r\nExpires: 2", 400),
        ("Max-Forwards: 70", "Date: Sat, 13 Nov 2010 23:29:00 PST", 400),
        ("Max-Forwards: 70", "Bad Header: x", 400),
        ("Max-Forwards: 70", "Bad(Header): x", 400),
        ("Max-Forwards: 70", ": x", 400),
        ("Max-Forwards: 70", "NoColon", 400),
        ("Max-Forwards: 70", "X: a\rb", 400),
        ("Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n", "", 400),
        ("To: Bob <sip:bob@biloxi.com>\r\n", "", 400),
        ("From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n", "", 400),
        ("Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n", "", 400),
        ("CSeq: 314159 INVITE\r\n", "", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE sip:bob@biloxi.com SIP/2.1", 505),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE sip:bob@biloxi.com HTTP/1.1", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE sip:bob@biloxi.com", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE  sip:bob@biloxi.com SIP/2.0", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INV@TE sip:bob@biloxi.com SIP/2.0", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE sip:bob@biloxi.com?a=b SIP/2.0", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE sip:bob@ SIP/2.0", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE mailto:bob@biloxi.com SIP/2.0", 416),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "SIP/2.0 1000 Big", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "SIP/2.0 099 Small", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "SIP/2.0", 400),
        ("INVITE sip:bob@biloxi.com SIP/2.0", "SIP/3.0 200 OK", 505),
    ],
)
def test_invalid_requests(old: str, new: str, status: int) -> None:
    assert old in BASIC
    with pytest.raises(SipParseError) as info:
        parse_message(msg(BASIC.replace(old, new, 1)))
    assert info.value.status == status


def test_max_forwards_is_optional() -> None:
    m = parse_message(msg(BASIC.replace("Max-Forwards: 70\r\n", "")))
    assert "Max-Forwards" not in m.headers


def test_empty_and_garbage() -> None:
    for data in (b"", b"\r\n\r\n", b"\x00\x01\x02", b"hello world", b"SIP/2.0 200 OK\r\n\r\n"):
        with pytest.raises(SipParseError):
            parse_message(data)


def test_size_limits() -> None:
    big = msg(BASIC, b"x" * MAX_MESSAGE_BYTES)
    with pytest.raises(SipParseError) as info:
        parse_message(big)
    assert info.value.status == 413
    long_line = BASIC.replace("Max-Forwards: 70", "X-Long: " + "a" * 9000)
    with pytest.raises(SipParseError):
        parse_message(msg(long_line))
    many = BASIC.replace("Max-Forwards: 70", "\r\n".join(f"X-H{i}: v" for i in range(300)))
    with pytest.raises(SipParseError):
        parse_message(msg(many))
    many_values = BASIC.replace("Max-Forwards: 70", "Allow: " + ",".join(["A"] * 300))
    with pytest.raises(SipParseError):
        parse_message(msg(many_values))


def test_non_utf8_header_survives_round_trip() -> None:
    data = msg(BASIC.replace("Max-Forwards: 70", "X-Raw: caf")).replace(b"caf", b"caf\xe9")
    m = parse_message(data)
    assert parse_message(m.to_bytes()).headers.get("X-Raw") == m.headers.get("X-Raw")
    assert b"caf\xe9" in m.to_bytes()


def test_salvage_request() -> None:
    bad = BASIC.replace("INVITE sip:bob@biloxi.com SIP/2.0", "INVITE foo:bar SIP/2.0")
    with pytest.raises(SipParseError) as info:
        parse_message(msg(bad))
    assert info.value.status == 416
    req = salvage_request(msg(bad))
    assert req is not None
    resp = build_response(req, info.value.status, to_tag="abc")
    assert resp.status == 416
    assert resp.headers.get("To") == "Bob <sip:bob@biloxi.com>;tag=abc"
    assert resp.headers.get_all("Via") == ["SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds"]
    # nothing to answer with
    assert salvage_request(b"garbage") is None
    assert salvage_request(msg(BASIC.replace("Call-ID", "X-Call-ID"))) is None


def test_build_response_detects_existing_to_tag() -> None:
    m = parse_message(msg(BASIC.replace("To: Bob <sip:bob@biloxi.com>", "To: <sip:b@c> ; TAG = x")))
    assert isinstance(m, Request)
    assert build_response(m, 200, to_tag="new").headers.get("To") == "<sip:b@c> ; TAG = x"
    # a "tag" URI parameter inside <> is not a To tag
    m.headers.set("To", "<sip:b@c;tag=uri>")
    assert build_response(m, 200, to_tag="new").headers.get("To") == "<sip:b@c;tag=uri>;tag=new"


# ---- StreamFramer --------------------------------------------------------------------------


def test_framer_splits_and_skips_keepalives() -> None:
    one = msg(BASIC)
    two = msg(BASIC.replace("314159", "314160"))
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + one + b"\r\n" + two[:10]) == [one]
    assert framer.feed(b"") == []
    assert framer.feed(two[10:] + b"\r\n\r\n") == [two]
    assert framer.feed(b"\r\n") == []
    assert [parse_message(m).cseq for m in (one, two)] == [(314159, "INVITE"), (314160, "INVITE")]


def test_framer_byte_by_byte() -> None:
    stream = msg(BASIC) * 3
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    assert out == [msg(BASIC)] * 3


def test_framer_ignores_datagram_extra_and_uses_compact_length() -> None:
    text = BASIC.replace("Content-Length: 4", "l : 4")
    framer = StreamFramer()
    assert framer.feed(msg(text) + b"INVITE") == [msg(text)]


def test_framer_folded_content_length() -> None:
    text = BASIC.replace("Content-Length: 4", "Content-Length:\r\n 4")
    assert StreamFramer().feed(msg(text) + b"junk") == [msg(text)]
    assert parse_message(msg(text)).body == b"v=0\n"


def test_framer_requires_content_length() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(msg(BASIC.replace("Content-Length: 4\r\n", "")))
    with pytest.raises(SipParseError):
        StreamFramer().feed(msg(BASIC.replace("Content-Length: 4", "Content-Length: x")))
    with pytest.raises(SipParseError):
        StreamFramer().feed(msg(BASIC.replace("Content-Length: 4", "l: 4\r\nl: 4")))


def test_framer_size_limit() -> None:
    framer = StreamFramer(max_message_bytes=1000)
    with pytest.raises(SipParseError) as info:
        framer.feed(msg(BASIC.replace("Content-Length: 4", "Content-Length: 5000")))
    assert info.value.status == 413
    framer = StreamFramer(max_message_bytes=1000)
    with pytest.raises(SipParseError):
        for _ in range(100):
            framer.feed(b"X-Header-Without-End: " + b"a" * 50 + b"\r\n")


def test_framer_returns_messages_completed_before_a_framing_error() -> None:
    good = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nTo: <sip:a@b>\r\n"
        b"From: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    framer = StreamFramer()
    out = framer.feed(good + b"C\r\n\r\n")  # stray bytes with no Content-Length follow
    assert out == [good]
    assert framer.error is not None
    with pytest.raises(SipParseError):
        framer.feed(good)
