"""A regression corpus of malformed SIP messages modelled on the input classes behind SIP-stack
CVEs, checked at the parser and sent to a RUNNING switch over UDP and TCP.

The messages are written here as data (none is copied from another project): each one takes
a plain, valid request and breaks it the way published SIP-stack vulnerabilities were
triggered: overlong To/From tags, Via branches and Call-IDs (fixed-size buffer overflows),
CSeq numbers and Content-Lengths that overflow or go negative (integer overflows, reads past
the datagram), multipart bodies with empty, overlong or missing boundaries, SDP attributes
with no value, Authorization headers with parameters that have no ``=``, LF-only and CR-only
line ends, control characters and whitespace in header names, duplicated single-value
headers, and every field over its size limit.

Each entry states what the parser must do (accept it, or reject it with a status) and what the
switch must answer on the wire. Over the network the rules are those of
tests/test_interop_torture.py (whose exchange helpers are reused): one fresh socket per
message followed by a sentinel OPTIONS; a rejected request gets exactly one response with the
parser's status, or a silent drop when no response can be built; over TCP a message whose
Content-Length cannot frame the stream gets that status or the connection closed (RFC 3261
section 18.3); never a 5xx, never a traceback in the switch's log, and the switch still
answers ``/healthz`` and an OPTIONS afterwards.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from media.sdp import SdpError, SessionDescription
from sip.digest import DigestClient, DigestServer, parse_auth_header
from sip.errors import SipParseError
from sip.message import Request, build_response
from sip.parser import StreamFramer, parse_message

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from test_interop_torture import (
        HOST,
        Outcome,
        Reply,
        assert_no_500,
        assert_still_serving,
        parse_reply,
        running_switch,
        tcp_exchange,
        udp_exchange,
    )
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.test_interop_torture import (
        HOST,
        Outcome,
        Reply,
        assert_no_500,
        assert_still_serving,
        parse_reply,
        running_switch,
        tcp_exchange,
        udp_exchange,
    )

# ---- building the messages ------------------------------------------------------------------

# Replaced in every message by a fresh value per send, so that no two sends share a
# transaction (RFC 3261 section 17.2.3) or a dialog.
CID = "@CID@"
BRANCH = "@BRANCH@"

SDP = (
    "v=0\r\no=cve 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
)


def headers_for(method: str, *, uri: str = "sip:1002@127.0.0.1") -> list[str]:
    """The header lines of a plain, valid request (before any breakage)."""
    return [
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{BRANCH};rport",
        "Max-Forwards: 70",
        "From: <sip:1001@127.0.0.1>;tag=cve1",
        f"To: <{uri}>",
        f"Call-ID: {CID}",
        f"CSeq: 1 {method}",
        "Contact: <sip:1001@127.0.0.1:5060>",
    ]


def request(method: str = "OPTIONS", *, uri: str = "sip:1002@127.0.0.1",
            replace: dict[str, str] | None = None, add: list[str] | None = None,
            drop: tuple[str, ...] = (), body: str = "", content_length: str | None = None,
            content_type: str | None = None, eol: str = "\r\n",
            start_line: str | None = None) -> bytes:
    """A request with the given breakage. ``replace`` maps a header name (as in
    :func:`headers_for`) to a whole new line; ``content_length`` overrides the true one."""
    lines = headers_for(method, uri=uri)
    replace = replace or {}
    out = [start_line if start_line is not None else f"{method} {uri} SIP/2.0"]
    for line in lines:
        name = line.split(":", 1)[0]
        if name in drop:
            continue
        out.append(replace.get(name, line))
    out += add or []
    if content_type is not None:
        out.append(f"Content-Type: {content_type}")
    length = str(len(body.encode())) if content_length is None else content_length
    out.append(f"Content-Length: {length}")
    return (eol.join(out) + eol + eol + body).encode("utf-8", "surrogateescape")


def response(*, replace: dict[str, str] | None = None, reason: str = "OK") -> bytes:
    """A 200 response matching no transaction (to be dropped), with the given breakage."""
    lines = [
        f"SIP/2.0 200 {reason}",
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{BRANCH}",
        "From: <sip:1001@127.0.0.1>;tag=cve1",
        "To: <sip:1002@127.0.0.1>;tag=cve2",
        f"Call-ID: {CID}",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
    ]
    replace = replace or {}
    lines = [replace.get(line.split(":", 1)[0], line) for line in lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def multipart(boundary_param: str, parts: str) -> tuple[str, str]:
    """(Content-Type, body) of a multipart/mixed INVITE body."""
    return f"multipart/mixed;{boundary_param}", parts


# ---- the corpus ---------------------------------------------------------------------------

# Statuses of an unauthenticated request from an unknown source that the switch serves:
# OPTIONS is answered by the switch itself, INVITE is challenged (407) or refused for its body
# (415/488: the body is looked at before or after the challenge), REGISTER is challenged
# (401) or, for a malformed Authorization, refused (400/403).
OPTIONS_OK = frozenset({200})
INVITE_OK = frozenset({407, 415, 488})
REGISTER_OK = frozenset({400, 401, 403})


@dataclass(frozen=True)
class Case:
    """One corpus message.

    ``status``: None if the parser must accept it (then ``answers`` lists the switch's
    acceptable final statuses), else the SipParseError status the parser must give.
    ``framing``: over TCP the stream cannot be framed (Content-Length broken): the status or
    the connection closed. ``response``: a response, dropped on the wire without a reply.
    ``udp``/``tcp``: whether to send it over that transport.
    """

    name: str
    cve_class: str
    data: bytes
    status: int | None = None
    answers: frozenset[int] = frozenset()
    framing: bool = False
    response: bool = False
    udp: bool = True
    tcp: bool = True
    tags: tuple[str, ...] = field(default=())


LONG = "a" * 300  # over MAX_TAG_BYTES / MAX_BRANCH_BYTES / MAX_CALL_ID_BYTES (256)
HUGE = "x" * 7000  # under MAX_LINE_BYTES: only the field limit stops it

CASES: list[Case] = [
    # -- overlong identifiers (buffer overflows on tags, branches, Call-IDs) -----------------
    Case("from-tag-300", "overlong tag", request(
        replace={"From": f"From: <sip:1001@127.0.0.1>;tag={LONG}"}), 400),
    Case("from-tag-7000", "overlong tag", request(
        replace={"From": f"From: <sip:1001@127.0.0.1>;tag={HUGE}"}), 400),
    Case("to-tag-300", "overlong tag", request(
        replace={"To": f"To: <sip:1002@127.0.0.1>;tag={LONG}"}), 400),
    Case("to-tag-spaced-300", "overlong tag", request(
        replace={"To": f"To: <sip:1002@127.0.0.1> ; tag = {LONG}"}), 400),
    Case("tag-256-ok", "overlong tag (boundary)", request(
        replace={"From": f"From: <sip:1001@127.0.0.1>;tag={'t' * 256}"}), None, OPTIONS_OK),
    Case("branch-300", "overlong branch", request(
        replace={"Via": f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{BRANCH}{LONG};rport"}),
        400),
    Case("branch-7000", "overlong branch", request(
        replace={"Via": f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{BRANCH}{HUGE};rport"}),
        400),
    Case("call-id-300", "overlong Call-ID", request(
        replace={"Call-ID": f"Call-ID: {CID}{LONG}"}), 400),
    Case("method-100", "overlong method", request(
        "A" * 100, replace={"CSeq": f"CSeq: 1 {'A' * 100}"}), 400),
    Case("request-uri-5000", "overlong Request-URI", request(
        start_line=f"OPTIONS sip:{'u' * 5000}@127.0.0.1 SIP/2.0"), 414),
    Case("header-name-200", "overlong header name", request(add=[f"{'X' * 200}: 1"]), 400),
    Case("via-300-entries", "too many Vias", request(
        add=[f"Via: SIP/2.0/UDP 192.0.2.{i % 250 + 1};branch=z9hG4bKv{i}" for i in range(300)]),
        400, tcp=True),
    Case("headers-400", "too many headers", request(add=[f"X-H{i}: {i}" for i in range(400)]),
         400),
    Case("line-9000", "overlong header line", request(add=[f"X-Long: {'y' * 9000}"]), 400),
    # -- integer overflows: CSeq, Max-Forwards, Content-Length -------------------------------
    Case("cseq-2^31", "huge CSeq", request(replace={"CSeq": "CSeq: 2147483648 OPTIONS"}), 400),
    Case("cseq-2^31-1-ok", "huge CSeq (boundary)", request(
        replace={"CSeq": "CSeq: 2147483647 OPTIONS"}), None, OPTIONS_OK),
    Case("cseq-2^32", "huge CSeq", request(replace={"CSeq": "CSeq: 4294967296 OPTIONS"}), 400),
    Case("cseq-20-digits", "huge CSeq", request(
        replace={"CSeq": "CSeq: 99999999999999999999 OPTIONS"}), 400),
    Case("cseq-negative", "huge CSeq", request(replace={"CSeq": "CSeq: -1 OPTIONS"}), 400),
    Case("cseq-no-method", "huge CSeq", request(replace={"CSeq": "CSeq: 1"}), 400),
    Case("max-forwards-2^32", "huge Max-Forwards", request(
        replace={"Max-Forwards": "Max-Forwards: 4294967296"}), 400),
    Case("content-length-negative", "negative Content-Length", request(
        content_length="-1"), 400, framing=True),
    Case("content-length-negative-big", "negative Content-Length", request(
        content_length="-4294967295"), 400, framing=True),
    Case("content-length-2^32", "huge Content-Length", request(
        content_length="4294967296"), 400, framing=True),
    Case("content-length-2^31", "huge Content-Length", request(
        content_length="2147483648"), 400, framing=True),
    Case("content-length-20-digits", "huge Content-Length", request(
        content_length="99999999999999999999"), 400, framing=True),
    Case("content-length-hex", "huge Content-Length", request(content_length="0x10"), 400,
         framing=True),
    Case("content-length-plus", "huge Content-Length", request(content_length="+0"), 400,
         framing=True),
    Case("content-length-over-body", "Content-Length past the datagram", request(
        "INVITE", body=SDP, content_length=str(len(SDP) + 40), content_type="application/sdp"),
        400, udp=True, tcp=False),  # on a stream it only means "more to come"
    Case("content-length-twice", "duplicate Content-Length", request(
        add=["l: 0"]), 400, framing=True),
    # -- duplicated single-value headers (which one wins?) -----------------------------------
    *[Case(f"duplicate-{name.lower()}", "duplicate single-value header", request(add=[line]),
           400)
      for name, line in [
          ("To", "To: <sip:other@127.0.0.1>"),
          ("From", "From: <sip:other@127.0.0.1>;tag=x2"),
          ("Call-ID", "i: second-call-id"),
          ("CSeq", "CSeq: 2 OPTIONS"),
          ("Max-Forwards", "Max-Forwards: 69"),
          ("Expires", "Expires: 60\r\nExpires: 3600"),
          ("Content-Type", "Content-Type: text/plain\r\nc: text/plain"),
      ]],
    # -- header grammar: control characters and whitespace before the colon ------------------
    Case("nul-in-name", "control character in header name", request(add=["X-A\x00b: 1"]), 400),
    Case("nul-before-colon", "control character in header name", request(
        replace={"Max-Forwards": "Max-Forwards\x00: 70"}), 400),
    Case("vt-before-colon", "whitespace before the colon", request(
        replace={"Max-Forwards": "Max-Forwards\x0b: 70"}), 400),
    Case("ff-before-colon", "whitespace before the colon", request(
        replace={"Max-Forwards": "Max-Forwards\x0c: 70"}), 400),
    Case("nbsp-before-colon", "whitespace before the colon", request(
        replace={"Max-Forwards": "Max-Forwards\u00a0: 70"}), 400),
    Case("space-in-name", "whitespace in header name", request(add=["X Bad: 1"]), 400),
    Case("sp-htab-before-colon-ok", "whitespace before the colon (HCOLON allows SP/HTAB)",
         request(replace={"Max-Forwards": "Max-Forwards \t : 70"}), None, OPTIONS_OK),
    Case("nul-in-value", "control character in value", request(add=["Subject: a\x00b"]), 400),
    Case("esc-in-value", "control character in value", request(add=["Subject: \x1b[2J"]), 400),
    Case("quoted-pair-ctl-ok", "control character in value (escaped in a quoted-string)",
         request(replace={"From": 'From: "a\\\x07b" <sip:1001@127.0.0.1>;tag=cve1'}),
         None, OPTIONS_OK),
    Case("continuation-first", "folding before any header", request(
        start_line="OPTIONS sip:1002@127.0.0.1 SIP/2.0\r\n Max-Forwards: 70"), 400,
        tags=("unanswerable-ok",)),
    Case("no-colon", "header without colon", request(add=["JustAName"]), 400),
    # -- line ends ---------------------------------------------------------------------------
    Case("lf-only", "LF-only lines", request(eol="\n"), None, OPTIONS_OK),
    Case("lf-only-invite-sdp", "LF-only lines", request(
        "INVITE", eol="\n", body=SDP.replace("\r\n", "\n"), content_type="application/sdp"),
        None, INVITE_OK),
    Case("cr-only", "CR-only lines", request(eol="\r"), 400, udp=True, tcp=False,
         tags=("unanswerable-ok",)),
    Case("bare-cr-in-header", "bare CR", request(add=["Subject: a\rb"]), 400),
    # A datagram ending in a lone CR (the sofia-sip class): no empty line, so the header
    # section runs to the end of the datagram and the trailing CR/LF octets are line ends.
    Case("lone-cr-at-end", "bare CR at the end", request()[:-4] + b"\r\n\r\r\n", None,
         OPTIONS_OK, tcp=False),
    Case("truncated-after-cr", "bare CR at the end", request()[:-3], None, OPTIONS_OK,
         tcp=False),
    # -- Authorization without "=" (digest parameter parsing) --------------------------------
    *[Case(f"auth-{label}", "Authorization without '='", request(
        "REGISTER", uri="sip:127.0.0.1", add=[f"Authorization: {value}"],
        replace={"To": "To: <sip:1001@127.0.0.1>", "From": "From: <sip:1001@127.0.0.1>;tag=r1"}),
        None, REGISTER_OK)
      for label, value in [
          ("scheme-only", "Digest"),
          ("bare-name", "Digest username"),
          ("names-only", "Digest username, realm, nonce, uri, response"),
          ("trailing-name", 'Digest username="1001", realm="x", nonce="n", uri="sip:x", '
                            'response="0", algorithm'),
          ("empty-params", "Digest ,,,,"),
          ("equals-only", "Digest ="),
          ("unterminated-quote", 'Digest username="1001'),
          ("long-name", "Digest " + "u" * 5000),
      ]],
    Case("proxy-auth-bare-name", "Authorization without '='", request(
        "INVITE", add=["Proxy-Authorization: Digest username"], body=SDP,
        content_type="application/sdp"), None, INVITE_OK | {400, 403}),
    # -- multipart boundaries ----------------------------------------------------------------
    *[Case(f"multipart-{label}", "multipart boundary", request(
        "INVITE", content_type=multipart(param, body)[0], body=multipart(param, body)[1]),
        None, INVITE_OK)
      for label, param, body in [
          ("empty-boundary", 'boundary=""', "--\r\n\r\nv=0\r\n----\r\n"),
          ("no-boundary-param", "x=1", "--b\r\n\r\nv=0\r\n--b--\r\n"),
          ("boundary-2000", "boundary=" + "b" * 2000, "--" + "b" * 2000 + "\r\n\r\nv=0\r\n"),
          ("boundary-missing-in-body", "boundary=zzz", SDP),
          ("unterminated", "boundary=b",
           "--b\r\nContent-Type: application/sdp\r\n\r\n" + SDP),
          ("nested-empty", "boundary=b",
           "--b\r\nContent-Type: multipart/mixed;boundary=\r\n\r\n--\r\n--b--\r\n"),
          ("part-without-blank-line", "boundary=b",
           "--b\r\nContent-Type: application/sdp\r\nv=0\r\n--b--"),
      ]],
    # -- SDP attributes with no value (the switch sees these after the challenge; see
    # test_sdp_corpus_from_a_trunk for an INVITE whose SDP is really negotiated) -------------
    *[Case(f"sdp-{label}", "SDP attribute with no value", request(
        "INVITE", body=SDP + extra, content_type="application/sdp"), None, INVITE_OK)
      for label, extra in [
          ("rtpmap-empty", "a=rtpmap:\r\n"),
          ("rtpmap-no-colon", "a=rtpmap\r\n"),
          ("fmtp-empty", "a=fmtp:\r\n"),
          ("a-empty", "a=\r\n"),
          ("rtpmap-pt-only", "a=rtpmap:0\r\n"),
          ("rtcp-empty", "a=rtcp:\r\n"),
      ]],
    # -- responses (matched to no transaction: dropped, never answered) ----------------------
    Case("response-to-tag-300", "overlong tag", response(
        replace={"To": f"To: <sip:1002@127.0.0.1>;tag={LONG}"}), 400, response=True),
    Case("response-reason-600", "overlong reason phrase", response(reason="r" * 600), 400,
         response=True),
    Case("response-cseq-2^32", "huge CSeq", response(
        replace={"CSeq": "CSeq: 4294967296 OPTIONS"}), 400, response=True),
    Case("response-content-length-negative", "negative Content-Length", response(
        replace={"Content-Length": "Content-Length: -5"}), 400, response=True, framing=True),
]

# SDP bodies whose attributes have no value, for the SDP parser and the trunk test.
SDP_NO_VALUE = {case.name: case.data for case in CASES if case.name.startswith("sdp-")}


def fresh(data: bytes) -> bytes:
    """The message with a new Call-ID and branch."""
    return (data.replace(CID.encode(), f"cve-{secrets.token_hex(8)}".encode())
            .replace(BRANCH.encode(), secrets.token_hex(6).encode()))


def _ids() -> list[str]:
    return [case.name for case in CASES]


def test_corpus_names_are_unique() -> None:
    assert len(set(_ids())) == len(CASES)


# ---- the parser -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_parser_on_corpus(case: Case) -> None:
    data = fresh(case.data)
    if case.status is None:
        message = parse_message(data)
        assert isinstance(message, Request)
        # what the parser accepted survives a round trip
        assert parse_message(message.to_bytes()).start_line() == message.start_line()
    else:
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert info.value.status == case.status, info.value.reason


@pytest.mark.parametrize("case", [c for c in CASES if c.framing], ids=lambda c: c.name)
def test_framer_refuses_broken_content_length(case: Case) -> None:
    """RFC 3261 section 18.3: a stream framed by a broken Content-Length is unframeable."""
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(fresh(case.data))


def test_framer_waits_for_a_body_it_can_hold_and_refuses_one_it_cannot() -> None:
    framer = StreamFramer()
    assert framer.feed(fresh(request(content_length="65000"))) == []
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(fresh(request(content_length="70000")))
    assert info.value.status == 413


@pytest.mark.parametrize("name", sorted(SDP_NO_VALUE))
def test_sdp_attributes_without_value_never_crash_the_sdp_parser(name: str) -> None:
    message = parse_message(fresh(SDP_NO_VALUE[name]))
    try:
        sdp = SessionDescription.parse(message.body)
    except SdpError:
        return
    # accepted: the valueless attribute was ignored, the offer is still usable
    assert sdp.media


@pytest.mark.parametrize(
    "value", [c.data.split(b"Authorization: ", 1)[1].split(b"\r\n", 1)[0].decode()
              for c in CASES if c.name.startswith("auth-")])
def test_authorization_without_equals(value: str) -> None:
    """parse_auth_header raises ValueError only; DigestServer.verify never raises and fails."""
    try:
        parse_auth_header(value)
    except ValueError:
        pass
    server = DigestServer("cve.example", secret=b"k" * 32)
    result = server.verify(value, "REGISTER", lambda user: "pw", time.time())
    assert not result.ok


# ---- the running switch ---------------------------------------------------------------------


def judge(case: Case, outcome: Outcome, transport: str) -> list[str]:
    """Problems with what the switch did with ``case`` (empty: as expected)."""
    tcp = transport == "tcp"
    finals = [r.status for r in outcome.finals]
    problems: list[str] = []

    def bad(why: str) -> None:
        problems.append(f"{case.name} ({case.cve_class}) over {transport.upper()}: {why}; "
                        f"got {outcome.describe()}")

    if any(500 <= s < 600 for s in finals):
        bad("a 5xx")
    if case.response:
        if outcome.replies:
            bad("a response was answered")
        if not tcp and outcome.sentinel is None:
            bad("the sentinel after it was not answered")
        return problems
    if case.status is None:
        if finals and len(finals) == 1 and finals[0] in case.answers:
            pass
        else:
            bad(f"expected one of {sorted(case.answers)}")
        if outcome.sentinel is None:
            bad("the sentinel after it was not answered")
        return problems
    if len(finals) > 1:
        bad("more than one final response")
    elif finals and finals[0] != case.status:
        bad(f"expected {case.status}")
    elif not finals:
        silent_ok = "unanswerable-ok" in case.tags or (tcp and outcome.closed)
        if not silent_ok:
            bad(f"expected {case.status}" + (" or the connection closed" if tcp else ""))
    if not tcp and outcome.sentinel is None:
        bad("the sentinel after it was not answered")
    if tcp and case.framing and not finals and not outcome.closed:
        bad("an unframeable stream was left open")
    return problems


@pytest.mark.peer
@pytest.mark.timeout(400)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_corpus_against_running_switch(tmp_path: Path, transport: str) -> None:
    """Every corpus message on its own socket: the expected answer or drop, no 5xx, no
    traceback, and the switch serves /healthz and OPTIONS afterwards."""
    outcomes: dict[str, Outcome] = {}
    problems: list[str] = []
    sent = 0
    with running_switch(tmp_path / "sw", extensions=["1001", "1002"]) as sw:
        for case in CASES:
            if not (case.udp if transport == "udp" else case.tcp):
                continue
            data = fresh(case.data)
            if transport == "udp":
                outcome = udp_exchange(sw.sip_port, data)
            else:
                outcome = tcp_exchange(sw.sip_port, data)
            sent += 1
            outcomes[case.name] = outcome
            problems += judge(case, outcome, transport)
        assert_still_serving(sw)
        log_tail = sw.log()[-3000:]
    assert sent >= 60, sent
    assert_no_500(outcomes)
    assert not problems, "\n".join(problems) + "\n--- switch log tail:\n" + log_tail


def _recv_final(sock: socket.socket, call_id: str, wait: float = 5.0) -> list[Reply]:
    """Messages for ``call_id`` until its first final response (requests included)."""
    got: list[Reply] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            raw = sock.recv(65535)
        except TimeoutError:
            break
        reply = parse_reply(raw)
        if reply.call_id == call_id or reply.status < 0:
            got.append(reply)
            if reply.status >= 200:
                break
    return got


def _register(sock: socket.socket, switch_port: int, user: str, password: str) -> None:
    """REGISTER ``user`` with its contact at ``sock`` (answering the digest challenge)."""
    local = sock.getsockname()
    call_id = f"reg-{secrets.token_hex(6)}"

    def register(cseq: int, auth: str | None) -> bytes:
        lines = [
            f"REGISTER sip:{HOST} SIP/2.0",
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70", f"From: <sip:{user}@{HOST}>;tag=r{cseq}",
            f"To: <sip:{user}@{HOST}>", f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{user}@{local[0]}:{local[1]}>", "Expires: 300",
        ]
        if auth is not None:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()

    sock.sendto(register(1, None), (HOST, switch_port))
    challenge = next(r for r in _recv_final(sock, call_id) if r.status == 401)
    auth = DigestClient.answer(challenge.get("www-authenticate") or "", method="REGISTER",
                               uri=f"sip:{HOST}", username=user, password=password,
                               cnonce=secrets.token_hex(4))
    sock.sendto(register(2, auth), (HOST, switch_port))
    assert [r.status for r in _recv_final(sock, call_id) if r.status >= 200] == [200]


@pytest.mark.peer
@pytest.mark.timeout(200)
def test_sdp_corpus_from_a_trunk(tmp_path: Path) -> None:
    """INVITEs whose SDP has attributes without a value, from a trunk (not challenged) to a
    DID of a registered phone, so the SDP really is parsed and negotiated: the offer is
    refused (400/488) or the phone is called (it answers 486); one final answer to the trunk
    each, never a 5xx, and the switch keeps serving."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        sock.bind((HOST, 0))
        phone.bind((HOST, 0))
        trunk_port = sock.getsockname()[1]
        with running_switch(tmp_path / "sw", extensions=["1001", "1002"],
                            auth={"algorithms": ["MD5"]},
                            trunks=[{"name": "carrier", "host": HOST, "port": trunk_port,
                                     "dids": {"5551000": "1001"}}]) as sw:
            _register(phone, sw.sip_port, "1001", sw.password("1001"))
            problems: list[str] = []
            outcomes: dict[str, int] = {}
            for name, data in sorted(SDP_NO_VALUE.items()):
                msg = fresh(data).replace(b"sip:1002@127.0.0.1", b"sip:5551000@127.0.0.1")
                msg = msg.replace(b"127.0.0.1:5060;branch",
                                  f"{HOST}:{trunk_port};branch".encode())
                call_id = parse_message(msg).call_id
                sock.sendto(msg, (HOST, sw.sip_port))
                # The phone: answer leg B's INVITE (if any) with 486; skip the ACKs of the
                # earlier calls' 486s.
                deadline = time.monotonic() + 2.0
                while (left := deadline - time.monotonic()) > 0:
                    phone.settimeout(left)
                    try:
                        raw = phone.recv(65535)
                    except TimeoutError:
                        break
                    if raw.startswith(b"INVITE "):
                        leg_b = parse_message(raw)
                        assert isinstance(leg_b, Request)
                        phone.sendto(build_response(leg_b, 486, to_tag="busy").to_bytes(),
                                     (HOST, sw.sip_port))
                        break
                finals = [r.status for r in _recv_final(sock, call_id) if r.status >= 200]
                outcomes[name] = finals[0] if finals else 0
                if len(finals) != 1 or finals[0] not in (400, 486, 488):
                    problems.append(f"{name}: {finals}")
            assert_still_serving(sw)
            assert not problems, "\n".join(problems) + f"\n{outcomes}\n" + sw.log()[-3000:]
