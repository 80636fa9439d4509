"""RFC 4475 / RFC 5118 torture messages sent to a RUNNING switch over UDP and TCP.

The parser-level expectations are in tests/test_sip_torture.py; here every message travels
through real sockets into ``python -m switch run`` (tests/peers/switchproc.py) and the test
checks what comes back on the wire, that the switch keeps serving (``/healthz``, an OPTIONS,
and afterwards a SIPp REGISTER with digest and a SIPp call to a SIPp trunk), and that its log
holds no traceback.

How a reply is attributed to a message: each message goes out on its OWN socket (a fresh UDP
socket, or a fresh TCP connection), followed on the same socket by a "sentinel" OPTIONS with
its own Call-ID. The switch handles the messages of one socket in order and answers
synchronously, so when the sentinel's 200 arrives everything the switch had to say about the
torture message has arrived before it. No reply before the sentinel's means "no reply" (a
silent drop) without waiting for a timeout.

UDP: RFC 3261 section 18.2.2 sends a UDP response to the top Via's sent-by (received / rport
aside), and the torture Vias name hosts such as ``host5.example.com``. So for UDP the top Via's
sent-by is rewritten to ``127.0.0.1:<this socket's port>`` and ``;rport`` is appended, keeping
the branch, the whitespace and the line folding of the original (``with_local_via``); only
``badinv01``, whose broken Via is the thing under test, goes unmodified. Rewriting the sent-by
also keeps the transaction keys apart: several torture messages share branch and sent-by
(``cparam01``/``cparam02``, ``escnull``/``regescrt``), and RFC 3261 section 17.2.3 would match
the second as a retransmission of the first. Over TCP every message goes unmodified (TCP is the
strong check: responses go back on the connection); ``baddn.wire.dat`` replaces ``baddn.dat``
(the archive copy lacks its final CRLF and cannot be framed on a stream).

The messages are read from the shared test data folder next to the repository; the tests skip
with a clear message when it is absent.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import sipp
    from peers.ports import free_udp_tcp_port
    from peers.switchproc import SwitchProcess
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import sipp
    from tests.peers.ports import free_udp_tcp_port
    from tests.peers.switchproc import SwitchProcess

pytestmark = pytest.mark.peer

DATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
RFC4475 = DATA / "rfc4475"
RFC5118 = DATA / "rfc5118"

needs_4475 = pytest.mark.skipif(
    not RFC4475.is_dir(),
    reason=f"RFC 4475 torture messages not found in {RFC4475} (the shared test data folder)",
)
needs_5118 = pytest.mark.skipif(
    not (RFC5118 / "wire-crlf").is_dir(),
    reason=f"RFC 5118 torture messages not found in {RFC5118 / 'wire-crlf'}",
)
needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)

HOST = "127.0.0.1"
# How long one exchange may take before we stop waiting (a bound, never asserted on).
REPLY_WAIT = 3.0

# ---- what each RFC 4475 message must produce -----------------------------------------------

# Valid messages (RFC 4475 3.1.1, 3.2, 3.3 and 3.4): the final status(es) acceptable from this
# switch (a registrar challenging REGISTER with 401, a B2BUA challenging INVITE with 407,
# answering OPTIONS itself, 405 for methods it does not implement). None: the message is a
# response, which matches no client transaction and must be dropped without any reply.
VALID: dict[str, frozenset[int] | None] = {
    "wsinv": frozenset({481}),  # 3.1.1.1 INVITE with a To tag but no such dialog (12.2.2)
    "intmeth": frozenset({405}),  # 3.1.1.2 unknown method
    "esc01": frozenset({407}),  # 3.1.1.3 escapes; INVITE from an unknown user
    "escnull": frozenset({401}),  # 3.1.1.4 REGISTER with %00 in Contacts
    "esc02": frozenset({405}),  # 3.1.1.5 method "RE%47IST%45R" is not REGISTER
    "lwsdisp": frozenset({200}),  # 3.1.1.6 OPTIONS
    "longreq": frozenset({407}),  # 3.1.1.7 long values, 34 Vias
    "dblreq": frozenset({401}),  # 3.1.1.8 REGISTER; the INVITE after Content-Length ignored
    "semiuri": frozenset({200}),  # 3.1.1.9 OPTIONS
    "transports": frozenset({200}),  # 3.1.1.10 OPTIONS with unusual transports in Vias
    "mpart01": frozenset({405}),  # 3.1.1.11 MESSAGE (not implemented here)
    "unreason": None,  # 3.1.1.12 response with UTF-8 reason phrase
    "noreason": None,  # 3.1.1.13 response with empty reason phrase
    "badbranch": frozenset({200}),  # 3.2.1 branch is just the magic cookie
    "unksm2": frozenset({416}),  # 3.3.4 REGISTER with To: isbn:...
    "bext01": frozenset({420}),  # 3.3.5 Require of unknown option tags
    "invut": frozenset({415}),  # 3.3.6 INVITE with an unknown body type
    "regaut01": frozenset({401}),  # 3.3.7 unknown auth scheme: ignored, challenged
    "bcast": None,  # 3.3.11 response with a broadcast Via
    "zeromf": frozenset({200, 483}),  # 3.3.12 OPTIONS with Max-Forwards: 0
    "cparam01": frozenset({401}),  # 3.3.13 REGISTER
    "cparam02": frozenset({401}),  # 3.3.14 REGISTER
    "regescrt": frozenset({401}),  # 3.3.15 REGISTER, escaped headers in the Contact URI
    "sdp01": frozenset({406, 407}),  # 3.3.10 Accept lacks application/sdp
    "inv2543": frozenset({407}),  # 3.4.1 RFC 2543 INVITE (no branch, Max-Forwards, CL)
}

# Invalid messages (RFC 4475 3.1.2 and the 3.3 ones a parser rejects) with the status of
# tests/test_sip_torture.py. None: an invalid response, dropped without a reply.
INVALID: dict[str, int | None] = {
    "badinv01": 400,  # 3.1.2.1 extraneous header field separators (in the Via)
    "clerr": 400,  # 3.1.2.2 Content-Length larger than the message
    "ncl": 400,  # 3.1.2.3 negative Content-Length
    "scalar02": 400,  # 3.1.2.4 overlarge CSeq / Max-Forwards
    "scalarlg": None,  # 3.1.2.5 overlarge values in a response
    "quotbal": 400,  # 3.1.2.6 unterminated quoted string
    "ltgtruri": 400,  # 3.1.2.7 <> around the Request-URI
    "lwsruri": 400,  # 3.1.2.8 LWS inside the Request-URI
    "lwsstart": 400,  # 3.1.2.9 several SP between Request-Line elements
    "trws": 400,  # 3.1.2.10 SP at the end of the Request-Line
    "escruri": 400,  # 3.1.2.11 (escaped) headers in the Request-URI
    "baddate": 400,  # 3.1.2.12 non-GMT Date
    "regbadct": 400,  # 3.1.2.13 URI with "?" not enclosed in <>
    "badaspec": 400,  # 3.1.2.14 spaces inside <>
    "baddn": 400,  # 3.1.2.15 non-token characters in a display name (archive copy)
    "baddn.wire": 400,  # the same with the archive's missing final CRLF restored
    "badvers": 505,  # 3.1.2.16 SIP/7.0
    "mismatch01": 400,  # 3.1.2.17 CSeq method != Request-Line method
    "mismatch02": 400,  # 3.1.2.18 same with an unknown method
    "bigcode": None,  # 3.1.2.19 overlarge response code
    "insuf": 400,  # 3.3.1 missing To, From, Call-ID, Max-Forwards
    "multi01": 400,  # 3.3.8 several values in single-value headers
    "mcl01": 400,  # 3.3.9 several Content-Length values
    "unkscm": 416,  # 3.3.2 unknown Request-URI scheme
    "novelsc": 416,  # 3.3.3 scheme we do not serve in the Request-URI
}

# No Call-ID, From or To: no response can be built (RFC 3261 8.2.6.2 copies them), so a silent
# drop is acceptable (on TCP too: the message was framed, the stream is still in sync).
UNANSWERABLE = frozenset({"insuf"})
# Over TCP the Content-Length is the framing (RFC 3261 18.3): a negative or duplicated one
# makes the stream unframeable: 400 or the connection closed.
TCP_BAD_FRAMING = frozenset({"ncl", "mcl01"})
# RFC 4475 3.1.2.2: over a stream, a Content-Length beyond the data just means "wait for more".
TCP_WAITS_FOR_MORE = frozenset({"clerr"})
# The top Via is what is broken: sent over UDP unmodified.
VIA_UNDER_TEST = frozenset({"badinv01"})
# Fixed parts of dblreq (RFC 4475 3.1.1.8).
DBLREQ_REGISTER_CALL_ID = "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
DBLREQ_INVITE_CALL_ID = "dblreq.0ha0isnda977644900765@192.0.2.15"


def _read4475(name: str) -> bytes:
    return (RFC4475 / f"{name}.dat").read_bytes()


def _names_4475() -> list[str]:
    return sorted(p.stem for p in RFC4475.glob("*.dat")) if RFC4475.is_dir() else []


def _head(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end]


def has_content_length(data: bytes) -> bool:
    """Whether the header section carries Content-Length (or its compact form ``l``)."""
    return re.search(rb"(?im)^(?:content-length|l)[ \t]*:", _head(data)) is not None


# ---- the wire: replies, sockets, sentinels --------------------------------------------------

_COMPACT = {"i": "call-id", "l": "content-length", "v": "via", "f": "from", "t": "to"}


@dataclass
class Reply:
    """One SIP message the switch sent us (parsed loosely, independently of the switch)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get_all(self, name: str) -> list[str]:
        want = name.lower()
        return [v for n, v in self.headers if _COMPACT.get(n.lower(), n.lower()) == want]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    @property
    def call_id(self) -> str | None:
        return self.get("call-id")

    def __str__(self) -> str:
        return f"{self.status} {self.reason} (Call-ID {self.call_id})"


def parse_reply(raw: bytes) -> Reply:
    """Parse a message the switch sent; anything but a status line gives status -1."""
    text = _head(raw).decode("utf-8", "replace")
    lines = text.split("\r\n")
    m = re.fullmatch(r"SIP/2\.0 (\d{3}) ?(.*)", lines[0])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    if m is None:
        return Reply(-1, lines[0][:80], headers, raw)
    return Reply(int(m.group(1)), m.group(2), headers, raw)


def split_stream(buf: bytearray) -> list[bytes]:
    """Take every complete message (framed by Content-Length) off the front of ``buf``."""
    out: list[bytes] = []
    while True:
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out
        m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", bytes(buf[:end]))
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(buf) < total:
            return out
        out.append(bytes(buf[:total]))
        del buf[:total]


def options_request(transport: str, local: tuple[str, int], call_id: str,
                    max_forwards: int = 70) -> bytes:
    """A plain OPTIONS from ``local`` (the sentinel, and the liveness probe)."""
    return (
        f"OPTIONS sip:sentinel@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)}"
        ";rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:probe@{HOST}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:sentinel@{HOST}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def invite_request(transport: str, local: tuple[str, int], call_id: str,
                   max_forwards: int) -> bytes:
    """An INVITE with an SDP offer from ``local``."""
    sdp = (
        f"v=0\r\no=probe 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()
    head = (
        f"INVITE sip:1002@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)}"
        ";rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:1001@{HOST}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:1002@{HOST}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:1001@{local[0]}:{local[1]}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    ).encode()
    return head + sdp


@dataclass
class Outcome:
    """What came back for one message sent on its own socket."""

    replies: list[Reply] = field(default_factory=list)  # everything but the sentinel's reply
    sentinel: Reply | None = None  # the sentinel's reply (None: never came)
    closed: bool = False  # TCP: the switch closed (or reset) the connection

    @property
    def finals(self) -> list[Reply]:
        return [r for r in self.replies if r.status >= 200 or r.status < 100]

    def all_replies(self) -> list[Reply]:
        return self.replies + ([self.sentinel] if self.sentinel else [])

    def describe(self) -> str:
        got = ", ".join(str(r) for r in self.replies) or "no reply"
        return (f"{got}; sentinel {'answered' if self.sentinel else 'NOT answered'}"
                f"{'; connection closed' if self.closed else ''}")


# After the sentinel's reply, how long to go on listening when the message itself got no
# final reply yet (in case the switch answers it asynchronously). Bounds the wait only.
GRACE = 0.3


class _Reader:
    """Collects replies for one exchange and decides when to stop listening."""

    def __init__(self, sentinel_id: str | None, wait: float, stop_on_final: bool,
                 grace: float) -> None:
        self.outcome = Outcome()
        self.sentinel_id = sentinel_id
        self.deadline = time.monotonic() + wait
        self.stop_on_final = stop_on_final
        self.grace = grace
        self._sentinel_at: float | None = None

    def take(self, raw: bytes) -> None:
        reply = parse_reply(raw)
        if self.sentinel_id is not None and reply.call_id == self.sentinel_id:
            if self.outcome.sentinel is None:
                self.outcome.sentinel = reply
                self._sentinel_at = time.monotonic()
        else:
            self.outcome.replies.append(reply)

    def time_left(self) -> float:
        """Seconds to go on listening (<= 0: stop)."""
        now = time.monotonic()
        if self._sentinel_at is not None or self.stop_on_final:
            if self.outcome.finals:
                return 0.0
        if self._sentinel_at is not None:
            return min(self.deadline, self._sentinel_at + self.grace) - now
        return self.deadline - now


def udp_exchange(port: int, data: bytes | None, *, rewrite_via: bool = True,
                 wait: float = REPLY_WAIT, grace: float = GRACE) -> Outcome:
    """Send ``data`` (optionally with ``with_local_via``) and a sentinel from a fresh socket;
    listen until the sentinel's reply (plus GRACE if the message got no reply) or ``wait``."""
    sentinel_id = f"sentinel-{secrets.token_hex(6)}"
    reader = _Reader(sentinel_id, wait, stop_on_final=False, grace=grace)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        local = sock.getsockname()
        if data is not None:
            sock.sendto(with_local_via(data, local) if rewrite_via else data, (HOST, port))
        sock.sendto(options_request("UDP", local, sentinel_id), (HOST, port))
        while (left := reader.time_left()) > 0:
            sock.settimeout(left)
            try:
                raw, _ = sock.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                break
            reader.take(raw)
    return reader.outcome


def tcp_exchange(port: int, data: bytes, *, sentinel: bool = True, byte_by_byte: bool = False,
                 half_close: bool = False, wait: float = REPLY_WAIT,
                 grace: float = GRACE) -> Outcome:
    """Send ``data`` on a fresh TCP connection, then a sentinel OPTIONS (and/or a half-close),
    and listen until the sentinel's reply (plus GRACE if the message got no reply), the
    connection closing, or ``wait`` seconds. Without sentinel and half-close: until the first
    final reply."""
    sentinel_id = f"sentinel-{secrets.token_hex(6)}" if sentinel else None
    reader = _Reader(sentinel_id, wait, stop_on_final=not sentinel and not half_close,
                     grace=grace)
    outcome = reader.outcome
    buf = bytearray()
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = sock.getsockname()
        try:
            if byte_by_byte:
                for i in range(len(data)):
                    sock.send(data[i : i + 1])
            else:
                sock.sendall(data)
            if sentinel_id is not None:
                sock.sendall(options_request("TCP", local, sentinel_id))
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the switch closed on us mid-way (e.g. a framing error)
            outcome.closed = True
        while (left := reader.time_left()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:  # reset
                outcome.closed = True
                break
            if not chunk:
                outcome.closed = True
                break
            buf += chunk
            for raw in split_stream(buf):
                reader.take(raw)
        for raw in split_stream(buf):
            reader.take(raw)
        if buf.strip():
            outcome.replies.append(Reply(-1, "incomplete message", [], bytes(buf)))
    return outcome


# ---- UDP Via rewriting ----------------------------------------------------------------------

_VIA_NAME = re.compile(rb"(?i)(?:via|v)[ \t]*:")
# sent-protocol (any LWS around the slashes, folding included) then LWS then sent-by
_SENT_BY = re.compile(rb"(SIP\s*/\s*[^/\s]+\s*/\s*[!-~]+?\s+)([^;,\s]+)")


def with_local_via(data: bytes, local: tuple[str, int]) -> bytes:
    """The message with its top Via's sent-by set to ``local`` and ``;rport`` added.

    Only those two things change: the branch, the other parameters, whitespace and line
    folding of the original stay, so what the message tests is still tested.
    """
    end = data.find(b"\r\n\r\n")
    head, rest = (data, b"") if end < 0 else (data[:end], data[end:])
    lines = head.split(b"\r\n")
    first = next((i for i, line in enumerate(lines) if i and _VIA_NAME.match(line)), None)
    if first is None:
        return data
    last = first
    while last + 1 < len(lines) and lines[last + 1][:1] in (b" ", b"\t"):
        last += 1
    value = b"\r\n".join(lines[first : last + 1])
    colon = value.index(b":")
    name, body = value[: colon + 1], value[colon + 1 :]
    body, count = _SENT_BY.subn(
        lambda m: m.group(1) + f"{local[0]}:{local[1]}".encode(), body, count=1)
    if not count:
        return data
    first_value_end = body.find(b",")
    top_value = body if first_value_end < 0 else body[:first_value_end]
    if not re.search(rb";\s*rport\b", top_value):
        kept = top_value.rstrip(b" \t")
        body = kept + b";rport" + body[len(kept) :]
    lines[first : last + 1] = [name + body]
    return b"\r\n".join(lines) + rest


# ---- the switch -----------------------------------------------------------------------------


@contextlib.contextmanager
def running_switch(workdir: Path, **kwargs: object) -> Iterator[SwitchProcess]:
    """A switch process (SIPp-compatible MD5 digest) stopped by PID on exit."""
    kwargs.setdefault("auth", {"algorithms": ["MD5", "SHA-256"]})
    sw = SwitchProcess(workdir, **kwargs)  # type: ignore[arg-type]
    sw.start()
    try:
        yield sw
    finally:
        sw.stop()


def healthz_status(sw: SwitchProcess) -> int:
    try:
        with urllib.request.urlopen(f"{sw.base_url}/healthz", timeout=3.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:
        pytest.fail(f"/healthz unreachable: {exc}\n--- switch log tail:\n{sw.log()[-3000:]}")


def assert_still_serving(sw: SwitchProcess) -> None:
    """The process runs, /healthz is 200, an OPTIONS over UDP gets 200, no traceback."""
    tail = sw.log()[-4000:]
    assert sw.running(), f"the switch exited\n--- log tail:\n{tail}"
    assert healthz_status(sw) == 200, tail
    probe = udp_exchange(sw.sip_port, None)
    assert probe.sentinel is not None and probe.sentinel.status == 200, (
        f"OPTIONS over UDP: {probe.describe()}\n--- log tail:\n{tail}")
    assert_no_traceback(sw)


def assert_no_traceback(sw: SwitchProcess) -> None:
    log = sw.log()
    if "Traceback" in log:
        at = log.index("Traceback")
        pytest.fail("the switch logged a traceback:\n" + log[max(0, at - 300) : at + 3000])


def assert_no_500(outcomes: dict[str, Outcome]) -> None:
    """An internal error (500) means a bug in the switch, whatever the input."""
    bad = [f"{name}: {r}" for name, o in outcomes.items() for r in o.all_replies()
           if r.status == 500]
    assert not bad, "500 responses:\n" + "\n".join(bad)


# ---- judging one RFC 4475 outcome -----------------------------------------------------------


def judge(name: str, outcome: Outcome, transport: str, data: bytes) -> list[str]:
    """Problems with ``outcome`` for message ``name`` (empty list: as RFC 4475 wants)."""
    tcp = transport == "tcp"
    problems: list[str] = []
    finals = outcome.finals
    statuses = [r.status for r in finals]

    def bad(why: str) -> None:
        problems.append(f"{name} over {transport.upper()}: {why} (got {outcome.describe()})")

    if any(r.status >= 500 and r.status != 505 for r in outcome.replies):
        bad("a 5xx response")
    if not tcp and outcome.sentinel is None:
        bad("the sentinel OPTIONS sent after it got no 200")

    if name in VALID:
        allowed = VALID[name]
        if allowed is None:  # a response: never answered, the connection survives
            if outcome.replies:
                bad("a response was answered")
            if outcome.sentinel is None:
                bad("the connection did not survive a valid response")
            return problems
        if tcp and not has_content_length(data):
            # RFC 3261 18.3: unframeable on a stream (inv2543).
            if (statuses and statuses != [400]) or (not statuses and not outcome.closed):
                bad("no Content-Length on TCP: expected 400 or the connection closed")
            return problems
        if name == "dblreq":
            register = [r for r in finals if r.call_id == DBLREQ_REGISTER_CALL_ID]
            invite = [r for r in finals if r.call_id == DBLREQ_INVITE_CALL_ID]
            if [r.status for r in register] != [401]:
                bad("expected exactly one 401 to the REGISTER")
            if not tcp and invite:
                bad("the INVITE after Content-Length was not ignored")
            if tcp and any(r.status == 400 or r.status >= 500 for r in invite):
                bad("the INVITE that follows on the stream was rejected")
            if len(register) + len(invite) != len(finals) or (not tcp and len(finals) != 1):
                bad("expected exactly one response")
            return problems
        if tcp and outcome.sentinel is None:
            bad("the connection did not survive a valid request")
        if len(finals) != 1:
            bad("expected exactly one final response")
            return problems
        reply = finals[0]
        if reply.status == 400 or reply.status >= 500 or reply.status not in allowed:
            bad(f"expected {sorted(allowed)}")
        if name == "bext01" and reply.status == 420:
            tags = {t.strip() for v in reply.get_all("Unsupported") for t in v.split(",")}
            if tags != {"nothingSupportsThis", "nothingSupportsThisEither"}:
                bad(f"420 must list both option tags in Unsupported, got {sorted(tags)}")
        if name == "invut" and reply.status == 415 and not reply.get_all("Accept"):
            bad("415 without Accept (RFC 3261 21.4.13)")
        if name == "regaut01" and reply.status == 401 and not any(
                v.lower().startswith("digest") for v in reply.get_all("WWW-Authenticate")):
            bad("401 without a Digest WWW-Authenticate challenge")
        return problems

    expected = INVALID[name]
    if expected is None:  # an invalid response: dropped, never answered
        if outcome.replies:
            bad("a malformed response was answered")
        return problems
    if len(finals) > 1:
        bad("more than one response")
    if statuses and statuses[0] != expected:
        bad(f"expected {expected}")
    if not statuses:
        silent_ok = name in UNANSWERABLE
        if tcp:
            silent_ok = silent_ok or outcome.closed or name in TCP_WAITS_FOR_MORE
        if not silent_ok:
            bad(f"expected {expected}" + (" or the connection closed" if tcp else ""))
    if tcp and name in TCP_BAD_FRAMING and not statuses and not outcome.closed:
        bad("unframeable stream left open")
    return problems


# ---- RFC 4475 over UDP and TCP --------------------------------------------------------------


@needs_4475
def test_every_rfc4475_file_is_classified() -> None:
    assert set(_names_4475()) == set(VALID) | set(INVALID)


def test_with_local_via_keeps_the_rest() -> None:
    local = ("127.0.0.1", 40000)
    msg = (b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\nVia  : SIP  /   2.0\r\n /UDP\r\n"
           b"    192.0.2.2;branch=390skdjuw\r\nv: SIP/2.0/TCP x.example.com;branch=z9hG4bK1,"
           b" SIP/2.0/UDP y\r\nl: 0\r\n\r\n")
    out = with_local_via(msg, local)
    assert (b"Via  : SIP  /   2.0\r\n /UDP\r\n    127.0.0.1:40000;branch=390skdjuw;rport\r\n"
            in out)
    assert b"v: SIP/2.0/TCP x.example.com;branch=z9hG4bK1, SIP/2.0/UDP y\r\n" in out
    two = b"X sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bKx , SIP/2.0/UDP k\r\n\r\n"
    assert with_local_via(two, local) == (
        b"X sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKx;rport ,"
        b" SIP/2.0/UDP k\r\n\r\n")
    has = b"X sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch=z9hG4bKx;rport\r\n\r\n"
    assert with_local_via(has, local).count(b"rport") == 1


@needs_4475
def test_rfc4475_over_udp(tmp_path: Path) -> None:
    """Every message (baddn and baddn.wire both) over UDP, one fresh socket each."""
    outcomes: dict[str, Outcome] = {}
    problems: list[str] = []
    with running_switch(tmp_path / "sw") as sw:
        for name in _names_4475():
            data = _read4475(name)
            outcome = udp_exchange(sw.sip_port, data, rewrite_via=name not in VIA_UNDER_TEST)
            outcomes[name] = outcome
            problems += judge(name, outcome, "udp", data)
        assert_still_serving(sw)
        log_tail = sw.log()[-3000:]
    assert_no_500(outcomes)
    assert not problems, "\n".join(problems) + "\n--- switch log tail:\n" + log_tail


@needs_4475
def test_rfc4475_over_tcp(tmp_path: Path) -> None:
    """Every message unmodified over TCP, a fresh connection each (baddn.wire for baddn)."""
    outcomes: dict[str, Outcome] = {}
    problems: list[str] = []
    with running_switch(tmp_path / "sw") as sw:
        for name in _names_4475():
            if name == "baddn":  # no final CRLF in the archive: not a stream message
                continue
            data = _read4475(name)
            outcome = tcp_exchange(sw.sip_port, data,
                                   wait=1.0 if name in TCP_WAITS_FOR_MORE else REPLY_WAIT)
            outcomes[name] = outcome
            problems += judge(name, outcome, "tcp", data)
        assert_still_serving(sw)
        log_tail = sw.log()[-3000:]
    assert_no_500(outcomes)
    assert not problems, "\n".join(problems) + "\n--- switch log tail:\n" + log_tail


@needs_4475
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dblreq_second_request_is_ignored_on_udp_and_framed_on_tcp(
        tmp_path: Path, transport: str) -> None:
    """RFC 4475 3.1.1.8 on its own: over UDP the INVITE after Content-Length is ignored;
    over TCP the bytes after Content-Length are the next message on the stream, and the
    REGISTER before them is answered whatever follows."""
    data = _read4475("dblreq")
    with running_switch(tmp_path / "sw") as sw:
        if transport == "udp":
            outcome = udp_exchange(sw.sip_port, data)
        else:
            outcome = tcp_exchange(sw.sip_port, data)
        problems = judge("dblreq", outcome, transport, data)
        assert_still_serving(sw)
    assert not problems, "\n".join(problems)


def with_true_content_length(data: bytes) -> bytes:
    """The message with Content-Length set to the length of the body it carries.

    The wire-crlf copies of the three RFC 5118 messages with SDP (ipv4-mapped-ipv6,
    ipv6-in-sdp, mult-ip-in-sdp) keep a Content-Length counted with LF line ends (236, 241,
    181) for CRLF bodies of 245, 251 and 189 octets. On a stream the surplus would be the
    start of the next message (RFC 3261 18.3) and swallow the sentinel, so it is corrected.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    body = len(data) - end - 4
    head = re.sub(rb"(?im)^(content-length|l)([ \t]*:[ \t]*)\d+",
                  lambda m: m.group(1) + m.group(2) + str(body).encode(), data[:end], count=1)
    return head + data[end:]


@needs_4475
def test_udp_responses_follow_the_via(tmp_path: Path) -> None:
    """Where a UDP response goes (RFC 3261 18.2.2, RFC 3581 4): to the source address
    (received) and the Via's sent-by port; with ``rport`` to the source port. lwsdisp (an
    OPTIONS) is sent from socket A with its top Via naming socket B's port, or a non-existent
    host, and the reply is looked for on both sockets."""
    base = _read4475("lwsdisp")
    with running_switch(tmp_path / "sw") as sw, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        port_a, port_b = a.getsockname()[1], b.getsockname()[1]
        cases = [  # (sent-by, rport, socket the reply must reach, received= expected)
            (f"{HOST}:{port_b}", False, "B", False),
            (f"funky.example.com:{port_b}", False, "B", True),
            (f"funky.example.com:{port_b}", True, "A", True),
            ("funky.example.com", True, "A", True),
        ]
        problems: list[str] = []
        for sent_by, rport, where, received in cases:
            via = f"SIP/2.0/UDP {sent_by};branch=z9hG4bK{secrets.token_hex(6)}"
            via += ";rport" if rport else ""
            data, count = re.subn(rb"(?m)^Via: [^\r]*", b"Via: " + via.encode(), base, count=1)
            assert count == 1
            a.sendto(data, (HOST, sw.sip_port))
            sentinel_id = f"sentinel-{secrets.token_hex(6)}"
            a.sendto(options_request("UDP", (HOST, port_a), sentinel_id), (HOST, sw.sip_port))
            got: dict[str, list[Reply]] = {"A": [], "B": []}
            deadline = time.monotonic() + REPLY_WAIT
            sentinel_seen = False
            while (left := deadline - time.monotonic()) > 0:
                if sentinel_seen and (got["A"] or got["B"]):
                    break
                ready, _, _ = select.select([a, b], [], [], left)
                for sock in ready:
                    reply = parse_reply(sock.recv(65535))
                    if reply.call_id == sentinel_id:
                        sentinel_seen = True
                    else:
                        got["A" if sock is a else "B"].append(reply)
                if not ready:
                    break
            label = f"Via {via}"
            if [r.status for r in got[where]] != [200] or got["B" if where == "A" else "A"]:
                problems.append(f"{label}: expected one 200 on socket {where} (A={port_a}, "
                                f"B={port_b}); got A={[str(r) for r in got['A']]}, "
                                f"B={[str(r) for r in got['B']]}")
                continue
            top = got[where][0].get("via") or ""
            if received != (f"received={HOST}" in top):
                problems.append(f"{label}: received= {'missing' if received else 'added'}: "
                                f"{top}")
            if rport and f"rport={port_a}" not in top:
                problems.append(f"{label}: rport not filled with the source port: {top}")
        assert_still_serving(sw)
    assert not problems, "\n".join(problems)


@needs_5118
def test_rfc5118_over_tcp(tmp_path: Path) -> None:
    """RFC 5118 wire-crlf messages over TCP: all answered without 400 except ipv6-bad."""
    folder = RFC5118 / "wire-crlf"
    outcomes: dict[str, Outcome] = {}
    problems: list[str] = []
    with running_switch(tmp_path / "sw") as sw:
        for path in sorted(folder.iterdir()):
            outcome = tcp_exchange(sw.sip_port, with_true_content_length(path.read_bytes()))
            outcomes[path.name] = outcome
            statuses = [r.status for r in outcome.finals]
            want_400 = path.name == "ipv6-bad"
            if len(statuses) != 1:
                problems.append(f"{path.name}: expected one final response, {outcome.describe()}")
            elif want_400 and statuses[0] != 400:
                problems.append(f"{path.name}: expected 400, {outcome.describe()}")
            elif not want_400 and (statuses[0] == 400 or statuses[0] >= 500):
                problems.append(f"{path.name}: expected no 400/5xx, {outcome.describe()}")
            if outcome.sentinel is None:
                problems.append(f"{path.name}: the connection did not survive it")
        assert_still_serving(sw)
    assert_no_500(outcomes)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_invite_with_max_forwards_zero_gets_483(tmp_path: Path, transport: str) -> None:
    """RFC 3261 16.3 step 2 (the switch applies it so loops die): Max-Forwards 0 -> 483."""
    with running_switch(tmp_path / "sw", extensions=["1001", "1002"]) as sw:
        call_id = f"mf0-{secrets.token_hex(6)}"
        # The Via's sent-by: rewritten to the sending socket (UDP), irrelevant on TCP.
        data = invite_request(transport.upper(), (HOST, 5060), call_id, 0)
        if transport == "udp":
            outcome = udp_exchange(sw.sip_port, data)
        else:
            outcome = tcp_exchange(sw.sip_port, data)
        assert [r.status for r in outcome.finals] == [483], outcome.describe()
        assert outcome.finals[0].call_id == call_id
        assert_still_serving(sw)


# ---- the switch still serves real peers afterwards ------------------------------------------


@needs_4475
@needs_sipp
async def test_switch_serves_sipp_after_every_torture_message(tmp_path: Path) -> None:
    """All RFC 4475 messages unmodified over UDP and TCP, then a SIPp REGISTER with digest and
    a SIPp call from an authenticated extension to a SIPp UAS standing in for the trunk."""
    trunk_port = free_udp_tcp_port()
    with running_switch(
        tmp_path / "sw", extensions=["1001", "1002"],
        trunks=[{"name": "pstn", "host": HOST, "port": trunk_port}],
        routes=[{"pattern": r"^\+", "trunk": "pstn"}],
        auth={"algorithms": ["MD5"]},
    ) as sw:
        outcomes: dict[str, Outcome] = {}
        for name in _names_4475():
            data = _read4475(name)
            # Unmodified: the replies go to the Via's sent-by, so do not wait for them.
            outcomes[f"{name}/udp"] = udp_exchange(sw.sip_port, data, rewrite_via=False,
                                                   wait=1.0, grace=0.0)
            if name != "baddn":
                outcomes[f"{name}/tcp"] = tcp_exchange(sw.sip_port, data, half_close=True,
                                                       wait=1.0, grace=0.0)
        assert_no_500(outcomes)
        assert healthz_status(sw) == 200

        reg = await sipp.arun("register_auth", sw.sip_port, service="1001",
                              auth_user="1001", auth_pass=sw.password("1001"),
                              keys={"expires": 120}, workdir=tmp_path / "reg", timeout=20)
        assert reg.ok, reg.describe() + "\n--- switch log tail:\n" + sw.log()[-3000:]
        assert reg.received("SIP/2.0 401") and reg.received("SIP/2.0 200")

        uas = sipp.start("uas_answer", local_port=trunk_port, workdir=tmp_path / "uas")
        try:
            await uas.wait_ready()
            call = await sipp.arun("uac_auth_call", sw.sip_port, service="+905321234567",
                                   auth_user="1001", auth_pass=sw.password("1001"),
                                   keys={"caller": "1001"}, duration_ms=300,
                                   workdir=tmp_path / "uac", timeout=25)
            uas_result = await uas.wait_async(10)
        finally:
            uas.stop()
        tail = "\n--- switch log tail:\n" + sw.log()[-3000:]
        assert call.ok, call.describe() + tail
        assert uas_result.ok, uas_result.describe() + tail
        assert call.received("SIP/2.0 407")
        trunk_invites = uas_result.received("INVITE")
        assert trunk_invites and "+905321234567" in trunk_invites[0].splitlines()[0]
        assert uas_result.received("BYE")
        assert_still_serving(sw)


# ---- Hypothesis at the network level --------------------------------------------------------

_INSERTS = [b"\r", b"\n", b"\x00", b"\r\n", b"\r\n\r\n", b"\r\n ", b",", b";", b":", b"\xff"]


@st.composite
def mutated_message(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid RFC 4475 message with byte flips, truncations, duplications and insertions."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["flip", "truncate", "duplicate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            span = draw(st.integers(1, 400))
            data[pos:pos] = data[pos : pos + span]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(_INSERTS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


_LINES = st.sampled_from([
    "INVITE sip:1001@127.0.0.1 SIP/2.0", "OPTIONS sip:x@y SIP/2.0", "SIP/2.0 200 OK",
    "REGISTER sip:127.0.0.1 SIP/2.0", "Via: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKfuzz",
    "From: <sip:a@b>;tag=1", "To: <sip:c@d>", "Call-ID: fuzz", "CSeq: 1 INVITE",
    "CSeq: 1 OPTIONS", "Content-Length: 0", "Content-Length: 5", "l: 99999999999",
    "Max-Forwards: 0", "Require: 100rel", "Contact: *", "", "v=0",
])


@st.composite
def random_message(draw: st.DrawFn) -> bytes:
    """Random bytes, or a random arrangement of SIP-looking lines."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=600))
    lines = draw(st.lists(st.one_of(_LINES, st.text(max_size=40)), min_size=1, max_size=14))
    return "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n"


@needs_4475
def test_fuzzed_messages_over_tcp_leave_the_switch_serving(tmp_path: Path) -> None:
    """Mutated and random messages over TCP, whole or one byte per segment; no 500 ever;
    afterwards /healthz is 200, an OPTIONS over UDP gets 200, and a valid OPTIONS sent one
    byte per TCP segment is framed and answered."""
    seeds = [_read4475(n) for n, allowed in VALID.items()
             if allowed is not None and has_content_length(_read4475(n))]
    statuses: list[int] = []
    with running_switch(tmp_path / "sw") as sw:

        @settings(max_examples=100, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.one_of(mutated_message(seeds), random_message()),
               byte_by_byte=st.booleans())
        def send_one(data: bytes, byte_by_byte: bool) -> None:
            outcome = tcp_exchange(sw.sip_port, data, sentinel=False, half_close=True,
                                   byte_by_byte=byte_by_byte, wait=2.0)
            statuses.extend(r.status for r in outcome.all_replies())
            assert 500 not in statuses, f"500 for {data!r}\n{sw.log()[-3000:]}"

        send_one()
        assert_still_serving(sw)
        options = options_request("TCP", (HOST, 5060), f"bytewise-{secrets.token_hex(4)}")
        bytewise = tcp_exchange(sw.sip_port, options, sentinel=False, byte_by_byte=True)
        assert [r.status for r in bytewise.replies] == [200], bytewise.describe()
        assert_no_traceback(sw)
