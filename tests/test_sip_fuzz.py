"""Property-based tests: the parser never fails with anything but SipParseError, what it
accepts survives a round trip, and stream framing does not depend on how bytes arrive."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.message import Request
from sip.parser import StreamFramer, parse_message
from sip.uri import parse_name_addr, parse_uri, parse_via, split_list

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE = (
    b"INVITE sip:bob@biloxi.com;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com:5060;branch=z9hG4bK776asdhds;rport,"
    b" SIP/2.0/TCP [2001:db8::1];received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.com>\r\n'
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.com>;expires=60, sip:x@y;q=0.5\r\n"
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"Allow: INVITE, ACK\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 10\r\n"
    b"\r\n"
    b"v=0\r\ns=-\r\n"
)
RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n"
    b"To: <sip:bob@biloxi.com>;tag=a6c85cf\r\n"
    b"f: <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"l: 0\r\n"
    b"\r\n"
)

_TORTURE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rfc4475"
CORPUS = [BASE, RESPONSE]
if _TORTURE.is_dir():
    CORPUS += [p.read_bytes() for p in sorted(_TORTURE.glob("*.dat"))]

# Bytes that matter to the grammar, to make mutations interesting.
SPECIAL = [
    b",", b";", b":", b"<", b">", b'"', b"\\", b" ", b"\t", b"\r\n", b"\n", b"\r", b"%",
    b"=", b"@", b"[", b"]", b"?", b"/", b"\r\n ", b"\x00", b"\xff", b"9", b"-",
]  # fmt: skip


def check(data: bytes) -> None:
    """parse_message either returns a message that round-trips or raises SipParseError."""
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert exc.status in (400, 413, 416, 505)
        return
    again = parse_message(message.to_bytes())
    assert again.start_line() == message.start_line()
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"
    ]
    assert again.body == message.body
    # The structured parsers must hold up on whatever the parser let through.
    for name in ("From", "To", "Contact", "Route", "Record-Route"):
        for value in message.headers.get_all(name):
            try:
                parse_name_addr(value)
            except SipParseError:
                pass
    for value in message.headers.get_all("Via"):
        parse_via(value)  # validated by the parser: must not raise
    if isinstance(message, Request):
        parse_uri(message.uri)
    message.cseq  # noqa: B018


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    # positions drawn uniformly: Hypothesis' own integers lean towards 0 (the start line)
    rnd = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 4))
        pos = rnd.randint(0, len(data))
        if kind == 0:  # insert a grammar-relevant byte sequence
            data[pos:pos] = draw(st.sampled_from(SPECIAL))
        elif kind == 1:  # replace a byte with a random one
            if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
        elif kind == 2:  # delete a short range
            data[pos : pos + draw(st.integers(1, 8))] = b""
        elif kind == 3:  # duplicate a short range
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
        else:  # insert random bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.text(max_size=80))
def test_structured_parsers_only_raise_parse_errors(text: str) -> None:
    for parser in (parse_uri, parse_name_addr, parse_via):
        try:
            parser(text)
        except SipParseError:
            pass
    pieces = split_list(text)
    assert all(p == p.strip(" \t") for p in pieces)

    def squash(value: str) -> str:
        return value.replace(" ", "").replace("\t", "").replace(",", "")

    assert squash("".join(pieces)) == squash(text)
    assert len(pieces) <= text.count(",") + 1


# ---- stream framing ------------------------------------------------------------------------


def _content_length_ok(message: bytes) -> bool:
    try:
        return StreamFramer().feed(message) == [message]
    except SipParseError:
        return False


FRAMEABLE = [m for m in CORPUS if _content_length_ok(m)]


@st.composite
def stream(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    messages = draw(st.lists(st.sampled_from(FRAMEABLE), min_size=1, max_size=4))
    parts: list[bytes] = []
    for message in messages:
        parts.append(draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\n"])))
        parts.append(message)
    return messages, b"".join(parts)


@SETTINGS
@given(stream(), st.lists(st.integers(1, 200), min_size=1, max_size=50))
def test_framer_chunking_is_irrelevant(sample: tuple[list[bytes], bytes], sizes: list[int]) -> None:
    messages, data = sample
    whole = StreamFramer().feed(data)
    assert whole == messages

    chunked: list[bytes] = []
    framer = StreamFramer()
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunked += framer.feed(data[pos : pos + size])
        pos += size
        i += 1
    assert chunked == messages

    by_byte: list[bytes] = []
    framer = StreamFramer()
    for k in range(len(data)):
        by_byte += framer.feed(data[k : k + 1])
    assert by_byte == messages


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_framer_random_input(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_message_bytes=2000)
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                assert isinstance(message, bytes) and message
    except SipParseError:
        pass
