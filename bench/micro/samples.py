"""Inputs shared by the micro-benchmarks and the parser profile: typical wire messages.

The SIP messages are what the switch sees on a basic call leg (the shape SIPp and common
phones send): an INVITE with an SDP offer, the 200 OK with the answer, the ACK and the BYE.
"""

from __future__ import annotations

SDP_OFFER = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

SDP_ANSWER = (
    b"v=0\r\n"
    b"o=- 4242 1 IN IP4 127.0.0.2\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.2\r\n"
    b"t=0 0\r\n"
    b"m=audio 46000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendrecv\r\n"
)

_CALL_ID = b"1-4711@127.0.0.1"
_FROM = b'From: "Alice" <sip:alice@127.0.0.1:5070>;tag=4711SIPpTag001\r\n'
_TO = b"To: <sip:+905321234567@127.0.0.2:5060>\r\n"
_TO_TAGGED = b"To: <sip:+905321234567@127.0.0.2:5060>;tag=as58f4201b\r\n"


def _with_body(head: bytes, body: bytes) -> bytes:
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


INVITE = _with_body(
    b"INVITE sip:+905321234567@127.0.0.2:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4711-1-0;rport\r\n"
    b"Max-Forwards: 70\r\n"
    + _FROM
    + _TO
    + b"Call-ID: " + _CALL_ID + b"\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: micro-bench\r\n"
    b"Content-Type: application/sdp\r\n",
    SDP_OFFER,
)

OK_200 = _with_body(
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4711-1-0;rport=5070;received=127.0.0.1\r\n"
    b"Record-Route: <sip:127.0.0.2:5060;lr>\r\n"
    + _FROM
    + _TO_TAGGED
    + b"Call-ID: " + _CALL_ID + b"\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:+905321234567@127.0.0.2:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"Content-Type: application/sdp\r\n",
    SDP_ANSWER,
)

ACK = _with_body(
    b"ACK sip:+905321234567@127.0.0.2:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4711-1-5\r\n"
    b"Route: <sip:127.0.0.2:5060;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    + _FROM
    + _TO_TAGGED
    + b"Call-ID: " + _CALL_ID + b"\r\n"
    b"CSeq: 1 ACK\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070;transport=udp>\r\n",
    b"",
)

BYE = _with_body(
    b"BYE sip:+905321234567@127.0.0.2:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4711-1-7\r\n"
    b"Route: <sip:127.0.0.2:5060;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    + _FROM
    + _TO_TAGGED
    + b"Call-ID: " + _CALL_ID + b"\r\n"
    b"CSeq: 2 BYE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070;transport=udp>\r\n",
    b"",
)

#: name -> wire bytes, in call order.
SIP_MESSAGES: dict[str, bytes] = {"invite": INVITE, "200": OK_200, "ack": ACK, "bye": BYE}


def _template(message: bytes) -> bytes:
    """``message`` with the per-call parts (Call-ID, tags, branches) turned into ``%(n)d``."""
    text = message.replace(b"%", b"%%")
    for old, new in (
        (b"1-4711@", b"%(n)d-4711@"),
        (b"tag=4711SIPpTag001", b"tag=%(n)dSIPpTag001"),
        (b"tag=as58f4201b", b"tag=as%(n)d"),
        (b"z9hG4bK-4711-", b"z9hG4bK-%(n)d-"),
    ):
        text = text.replace(old, new)
    return text


_FLOW_TEMPLATES = [_template(m) for m in SIP_MESSAGES.values()]


def call_flow(n: int) -> list[bytes]:
    """INVITE, 200, ACK and BYE of call number ``n``: every call has its own Call-ID, tags and
    branches (as on a real switch), while the URIs, Contact and Route repeat across calls."""
    key = {b"n": n}
    return [t % key for t in _FLOW_TEMPLATES]
