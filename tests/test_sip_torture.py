"""RFC 4475 and RFC 5118 torture messages at the parser level.

The messages are read from the shared test data folder (``/work/shared/testdata`` next to the
repository); the tests are skipped with a clear message when it is absent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sip.errors import SipParseError
from sip.message import Request, Response
from sip.parser import parse_message
from sip.uri import parse_name_addr, parse_uri, parse_via

DATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
RFC4475 = DATA / "rfc4475"
RFC5118 = DATA / "rfc5118"

needs_4475 = pytest.mark.skipif(
    not RFC4475.is_dir(), reason=f"RFC 4475 torture messages not found in {RFC4475}"
)
needs_5118 = pytest.mark.skipif(
    not RFC5118.is_dir(), reason=f"RFC 5118 torture messages not found in {RFC5118}"
)

# RFC 4475 section 3.1.1 (valid), 3.2 and 3.3/3.4 messages that are syntactically valid:
# the parser must accept all of them.
VALID_4475 = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
    "semiuri", "transports", "mpart01", "unreason", "noreason",  # 3.1.1
    "badbranch",  # 3.2.1: a transaction-layer matter
    "unksm2", "bext01", "invut", "regaut01", "bcast", "zeromf", "cparam01", "cparam02",
    "regescrt", "sdp01",  # 3.3: application-layer matters
    "inv2543",  # 3.4.1: RFC 2543 syntax must be accepted
]  # fmt: skip

# RFC 4475 section 3.1.2 (invalid) and the 3.3 messages a parser must reject, with the
# status a server answers (for responses the status is irrelevant: they are dropped).
INVALID_4475 = {
    "badinv01": 400,  # 3.1.2.1 extraneous header field separators
    "clerr": 400,  # 3.1.2.2 Content-Length larger than the message
    "ncl": 400,  # 3.1.2.3 negative Content-Length
    "scalar02": 400,  # 3.1.2.4 overlarge CSeq / Max-Forwards in a request
    "scalarlg": 400,  # 3.1.2.5 overlarge CSeq in a response
    "quotbal": 400,  # 3.1.2.6 unterminated quoted string in display name
    "ltgtruri": 400,  # 3.1.2.7 <> around the Request-URI
    "lwsruri": 400,  # 3.1.2.8 LWS inside the Request-URI
    "lwsstart": 400,  # 3.1.2.9 several SP between Request-Line elements
    "trws": 400,  # 3.1.2.10 SP at the end of the Request-Line
    "escruri": 400,  # 3.1.2.11 (escaped) headers in the Request-URI
    "baddate": 400,  # 3.1.2.12 non-GMT time zone in Date
    "regbadct": 400,  # 3.1.2.13 URI with "?" not enclosed in <>
    "badaspec": 400,  # 3.1.2.14 spaces inside <>
    "baddn": 400,  # 3.1.2.15 non-token characters in an unquoted display name
    "baddn.wire": 400,  # the same with the archive's missing final CRLF restored
    "badvers": 505,  # 3.1.2.16 unknown protocol version
    "mismatch01": 400,  # 3.1.2.17 CSeq method differs from the Request-Line method
    "mismatch02": 400,  # 3.1.2.18 same with an unknown method
    "bigcode": 400,  # 3.1.2.19 overlarge response code
    "insuf": 400,  # 3.3.1 missing required headers
    "multi01": 400,  # 3.3.8 several values in single-value headers
    "mcl01": 400,  # 3.3.9 several Content-Length values
    "unkscm": 416,  # 3.3.2 unknown Request-URI scheme
    "novelsc": 416,  # 3.3.3 scheme we do not support in the Request-URI
}


def _read4475(name: str) -> bytes:
    return (RFC4475 / f"{name}.dat").read_bytes()


@needs_4475
def test_every_rfc4475_file_is_classified() -> None:
    names = {p.stem for p in RFC4475.glob("*.dat")}
    assert names == set(VALID_4475) | set(INVALID_4475)


@needs_4475
@pytest.mark.parametrize("name", VALID_4475)
def test_rfc4475_valid_messages_parse(name: str) -> None:
    msg = parse_message(_read4475(name))
    assert isinstance(msg, Request | Response)
    # Every header a proxy relies on must be readable with the structured parsers.
    for via in msg.headers.get_all("Via"):
        parse_via(via)
    assert msg.call_id
    msg.cseq  # noqa: B018 - must not raise


@needs_4475
@pytest.mark.parametrize("name", sorted(INVALID_4475))
def test_rfc4475_invalid_messages_are_rejected(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_read4475(name))
    assert info.value.status == INVALID_4475[name]


@needs_4475
@pytest.mark.parametrize("name", VALID_4475)
def test_rfc4475_round_trip(name: str) -> None:
    first = parse_message(_read4475(name))
    second = parse_message(first.to_bytes())
    assert type(second) is type(first)
    assert second.start_line() == first.start_line()

    def headers(msg: Request | Response) -> list[tuple[str, str]]:
        return [(n, v) for n, v in msg.headers if n != "Content-Length"]

    assert headers(second) == headers(first)
    assert second.body == first.body
    # and serialising again is a fixed point
    assert second.to_bytes() == first.to_bytes()


# ---- message-specific checks ---------------------------------------------------------------


@needs_4475
def test_wsinv_whitespace_and_folding() -> None:
    msg = parse_message(_read4475("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    to = parse_name_addr(msg.first("To"))
    assert to.tag == "1918181833n"
    assert str(to.uri) == "sip:vivekg@chair-dnrc.example.com"
    frm = parse_name_addr(msg.first("From"))
    assert frm.display == 'J Rosenberg \\"'
    assert frm.tag == "98asjd8"
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.cseq == (9, "INVITE")
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    vias = [parse_via(v) for v in msg.headers.get_all("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = parse_name_addr(msg.first("Contact"))
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    route = parse_name_addr(msg.first("Route"))
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert len(msg.body) == 150


@needs_4475
def test_intmeth_unusual_characters() -> None:
    msg = parse_message(_read4475("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    to = parse_name_addr(msg.first("To"))
    assert to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    frm = parse_name_addr(msg.first("From"))
    assert frm.display == "token1~` token2'+_ token3*%!.-"
    assert frm.tag == "_token~1'+`*%!-."
    assert frm.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


@needs_4475
def test_escapes_are_kept() -> None:
    msg = parse_message(_read4475("esc01"))
    assert isinstance(msg, Request)
    uri = parse_uri(msg.uri)
    assert (uri.user, uri.host) == ("sips%3Auser%40example.com", "example.net")
    contact = parse_name_addr(msg.first("Contact"))
    assert contact.uri.user == "cal%6Cer"
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}

    null = parse_message(_read4475("escnull"))
    assert [parse_name_addr(c).uri.user for c in null.headers.get_all("Contact")] == [
        "%00",
        "%00%00",
    ]

    esc02 = parse_message(_read4475("esc02"))
    assert isinstance(esc02, Request)
    assert esc02.method == "RE%47IST%45R"
    assert esc02.cseq == (29344, "RE%47IST%45R")
    # "C%6Fntact" is an extension header, not Contact.
    assert len(esc02.headers.get_all("Contact")) == 2
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


@needs_4475
def test_lwsdisp_and_longreq() -> None:
    msg = parse_message(_read4475("lwsdisp"))
    assert parse_name_addr(msg.first("From")).display == "caller"

    long = parse_message(_read4475("longreq"))
    vias = long.headers.get_all("Via")
    assert len(vias) == 34
    assert parse_via(vias[0]).host == "sip33.example.com"
    assert parse_via(vias[-1]).received == "192.0.2.5"
    to = parse_name_addr(long.first("To"))
    assert to.uri.port == 6000
    assert to.display is not None and to.display.endswith("proportion")
    assert len(long.body) == 150


@needs_4475
def test_dblreq_ignores_bytes_after_content_length() -> None:
    msg = parse_message(_read4475("dblreq"))
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


@needs_4475
def test_semiuri_and_list_splitting() -> None:
    msg = parse_message(_read4475("semiuri"))
    assert isinstance(msg, Request)
    uri = parse_uri(msg.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert msg.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


@needs_4475
def test_transports_mpart_and_responses() -> None:
    msg = parse_message(_read4475("transports"))
    assert [parse_via(v).transport for v in msg.headers.get_all("Via")] == [
        "UDP", "SCTP", "TLS", "UNKNOWN", "TCP",
    ]  # fmt: skip

    mpart = parse_message(_read4475("mpart01"))
    assert len(mpart.body) == 553
    assert mpart.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert parse_via(mpart.first("Via")).rport == ""

    unreason = parse_message(_read4475("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но")
    noreason = parse_message(_read4475("noreason"))
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")

    bcast = parse_message(_read4475("bcast"))
    assert parse_via(bcast.headers.get_all("Via")[1]).host == "255.255.255.255"


@needs_4475
def test_inv2543_is_accepted() -> None:
    msg = parse_message(_read4475("inv2543"))
    assert isinstance(msg, Request)
    assert "Max-Forwards" not in msg.headers
    assert "Content-Length" not in msg.headers
    assert parse_via(msg.first("Via")).branch is None
    assert msg.body.startswith(b"v=0") and msg.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")


@needs_4475
def test_unknown_schemes_in_headers() -> None:
    # RFC 4475 3.3.4: valid message; a registrar answers based on the To URI scheme.
    msg = parse_message(_read4475("unksm2"))
    for name in ("To", "From", "Contact"):
        with pytest.raises(SipParseError) as info:
            parse_name_addr(msg.first(name))
        assert info.value.status == 416


@needs_4475
def test_contact_parameters_addr_spec_vs_name_addr() -> None:
    # RFC 3261 20.10: without <> the parameters belong to the header field.
    c1 = parse_name_addr(parse_message(_read4475("cparam01")).first("Contact"))
    assert c1.params == {"unknownparam": None}
    assert c1.uri.params == {}
    c2 = parse_name_addr(parse_message(_read4475("cparam02")).first("Contact"))
    assert c2.params == {}
    assert c2.uri.params == {"unknownparam": None}
    c3 = parse_name_addr(parse_message(_read4475("regescrt")).first("Contact"))
    assert c3.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}


@needs_4475
def test_misc_valid() -> None:
    assert parse_via(parse_message(_read4475("badbranch")).first("Via")).branch == "z9hG4bK"
    assert parse_message(_read4475("zeromf")).headers.get("Max-Forwards") == "0"
    reg = parse_message(_read4475("regaut01"))
    assert reg.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    bext = parse_message(_read4475("bext01"))
    assert bext.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]


# ---- RFC 5118 (IPv6) -----------------------------------------------------------------------

# archive/: byte for byte from the RFC, bare LF line ends. ipv6-bad has an unbracketed IPv6
# Request-URI (RFC 5118 section 4.4). The two *-in-sdp messages declare a Content-Length
# larger than the body they carry; RFC 3261 section 18.3 makes that an error (400), exactly
# like RFC 4475 clerr, so the archive copies are rejected and the corrected wire copies are
# accepted.
ARCHIVE_5118 = {
    "ipv4-mapped-ipv6": None,
    "ipv6-bad": 400,
    "ipv6-bug-abnf-3-colons": None,
    "ipv6-correct-abnf-2-colons": None,
    "ipv6-good": None,
    "ipv6-in-sdp": 400,
    "mult-ip-in-header": None,
    "mult-ip-in-sdp": 400,
    "port-ambiguous": None,
    "port-unambiguous": None,
    "via-received-param-no-delim": None,
    "via-received-param-with-delim": None,
}
WIRE_5118 = {name: (400 if name == "ipv6-bad" else None) for name in ARCHIVE_5118}


@needs_5118
def test_rfc5118_archive_is_intact() -> None:
    sums = (RFC5118 / "SHA256SUMS.archive").read_text().split("\n")
    for line in filter(None, sums):
        digest, name = line.split()
        data = (RFC5118 / "archive" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


@needs_5118
@pytest.mark.parametrize(
    ("folder", "name", "status"),
    [("archive", n, s) for n, s in ARCHIVE_5118.items()]
    + [("wire-crlf", n, s) for n, s in WIRE_5118.items()],
)
def test_rfc5118_messages(folder: str, name: str, status: int | None) -> None:
    data = (RFC5118 / folder / name).read_bytes()
    if status is None:
        msg = parse_message(data)
        for via in msg.headers.get_all("Via"):
            parse_via(via)
        if isinstance(msg, Request):
            parse_uri(msg.uri)
        assert parse_message(msg.to_bytes()).to_bytes() == msg.to_bytes()
    else:
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert info.value.status == status


def _5118(name: str, folder: str = "archive") -> Request | Response:
    return parse_message((RFC5118 / folder / name).read_bytes())


@needs_5118
def test_rfc5118_details() -> None:
    good = _5118("ipv6-good")
    assert isinstance(good, Request)
    assert parse_uri(good.uri).host_port() == ("2001:db8::10", 5060)
    assert parse_name_addr(good.first("Contact")).uri.host == "[2001:db8::1]"

    amb = _5118("port-ambiguous")
    assert isinstance(amb, Request)
    assert (parse_uri(amb.uri).host, parse_uri(amb.uri).port) == ("[2001:db8::10:5070]", None)
    unamb = _5118("port-unambiguous")
    assert isinstance(unamb, Request)
    assert (parse_uri(unamb.uri).host, parse_uri(unamb.uri).port) == ("[2001:db8::10]", 5070)

    three = _5118("ipv6-bug-abnf-3-colons")
    assert isinstance(three, Request)
    assert parse_uri(three.uri).host == "[2001:db8:::192.0.2.1]"

    mapped = _5118("ipv4-mapped-ipv6")
    top = parse_via(mapped.first("Via"))
    assert (top.host, top.port) == ("[::ffff:192.0.2.10]", 19823)

    no_delim = parse_via(_5118("via-received-param-no-delim").first("Via"))
    assert no_delim.received == "2001:db8::9:255"
    with_delim = parse_via(_5118("via-received-param-with-delim").first("Via"))
    assert with_delim.received == "[2001:db8::9:255]"

    multi = [parse_via(v) for v in _5118("mult-ip-in-header").headers.get_all("Via")]
    assert [(v.host, v.port) for v in multi] == [
        ("[2001:db8::9:1]", 6050),
        ("192.0.2.1", None),
        ("[2001:db8::9:255]", None),
    ]
    assert multi[2].received == "192.0.2.200"

    sdp = _5118("ipv6-in-sdp", "wire-crlf")
    assert len(sdp.body) == int(sdp.first("Content-Length"))
    assert b"c=IN IP6 2001:db8::20" in sdp.body
