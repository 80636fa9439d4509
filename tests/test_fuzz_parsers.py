"""Fuzzing of the three parsers that read attacker-controlled bytes: SIP messages
(:func:`sip.parser.parse_message`, :class:`sip.parser.StreamFramer`), SDP bodies
(:meth:`media.sdp.SessionDescription.parse`) and digest headers
(:func:`sip.digest.parse_auth_header`, :meth:`sip.digest.DigestServer.verify`,
:meth:`sip.digest.DigestClient.answer`).

Two engines, one set of invariants (:func:`check_sip`, :func:`check_sdp`, :func:`check_digest`):

* **Hypothesis** (always, in CI): grammar-aware generators and mutations of valid seeds. The
  number of examples per test is ``FUZZ_EXAMPLES`` (default 150: a short run).
* **atheris** (coverage-guided, libFuzzer; ``pip install atheris``): this file is also a fuzz
  target. ``test_atheris_short_run`` runs it for ``ATHERIS_RUNS`` inputs (default 20000) in a
  subprocess when atheris is installed, and is skipped otherwise.

A long run (documented here; not in CI)::

    # Hypothesis, many examples per test:
    FUZZ_EXAMPLES=200000 python -m pytest tests/test_fuzz_parsers.py -k "not atheris" -x

    # atheris, coverage-guided, one hour, keeping a corpus and any crashing input:
    mkdir -p fuzz-corpus
    python tests/test_fuzz_parsers.py -max_total_time=3600 -max_len=8192 \\
        -artifact_prefix=fuzz- fuzz-corpus/

An input that breaks an invariant is written by libFuzzer as ``fuzz-crash-*``; replay it with
``python tests/test_fuzz_parsers.py fuzz-crash-<hash>``.

Invariants: the parsers raise nothing but their documented error (SipParseError with a status
a server can send, SdpError, ValueError); what the SIP parser accepts round-trips and respects
the size limits of :mod:`sip.parser`; no header value it accepts carries an unescaped control
character; digest verification never raises and never accepts a forged header.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # when run as a script (atheris)
    sys.path.insert(0, str(ROOT))
if __name__ == "__main__":  # pragma: no cover - the atheris target: instrument the parsers
    import atheris

    with atheris.instrument_imports(include=["sip", "media"]):
        import media.sdp  # noqa: F401
        import sip.digest
        import sip.parser  # noqa: F401

from media.sdp import SdpError, SessionDescription  # noqa: E402
from sip.digest import DigestClient, DigestServer, parse_auth_header  # noqa: E402
from sip.errors import SipParseError  # noqa: E402
from sip.message import Request  # noqa: E402
from sip.parser import (  # noqa: E402
    MAX_BRANCH_BYTES,
    MAX_CALL_ID_BYTES,
    MAX_TAG_BYTES,
    StreamFramer,
    parse_message,
)
from sip.uri import parse_name_addr, parse_via  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
ATHERIS_RUNS = int(os.environ.get("ATHERIS_RUNS", "20000"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SERVER_STATUSES = frozenset({400, 413, 414, 416, 505})
_UNESCAPED_CTL = re.compile(r"(?<!\\)[\x00-\x08\x0a-\x1f\x7f]")

SIP_SEED = (
    b"INVITE sip:1002@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKseed;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "A" <sip:1001@127.0.0.1>;tag=abc\r\n'
    b"To: <sip:1002@127.0.0.1>\r\n"
    b"Call-ID: seed@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:1001@127.0.0.1:5060>\r\n"
    b'Authorization: Digest username="1001", realm="r", nonce="n", uri="sip:x", response="0"\r\n'
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 139\r\n\r\n"
)
SDP_SEED = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000"
    b"\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
)
SIP_SEED += SDP_SEED[:139]
AUTH_SEED = ('Digest username="1001", realm="switch", nonce="abc", uri="sip:127.0.0.1", '
             'response="0123456789abcdef0123456789abcdef", algorithm=MD5, qop=auth, '
             'nc=00000001, cnonce="xyz", opaque="o"')

_SERVER = DigestServer("switch", b"s" * 32, algorithms=("SHA-256", "MD5"))


# ---- invariants (shared by Hypothesis and atheris) -------------------------------------------


def check_sip(data: bytes) -> None:
    """parse_message: a message that round-trips within the limits, or a SipParseError."""
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert exc.status in SERVER_STATUSES, exc.status
    else:
        again = parse_message(message.to_bytes())
        assert again.start_line() == message.start_line()
        assert again.body == message.body
        assert len(message.call_id) <= MAX_CALL_ID_BYTES
        for name, value in message.headers:
            assert _UNESCAPED_CTL.search(value) is None, (name, value)
        for value in message.headers.get_all("Via"):
            branch = parse_via(value).branch
            assert branch is None or len(branch) <= MAX_BRANCH_BYTES
        for name in ("From", "To"):
            try:
                tag = parse_name_addr(message.first(name)).tag
            except SipParseError:
                continue  # an unknown URI scheme (416 later), still valid syntax
            assert tag is None or len(tag) <= MAX_TAG_BYTES
        message.cseq  # noqa: B018 - validated: must not raise
        if isinstance(message, Request):
            check_sdp(message.body)
            for name in ("Authorization", "Proxy-Authorization"):
                for value in message.headers.get_all(name):
                    check_digest(value)
    # The stream framer on the same bytes, cut in two: messages or a SipParseError.
    framer = StreamFramer()
    half = len(data) // 2
    try:
        framer.feed(data[:half])
        framer.feed(data[half:])
    except SipParseError as exc:
        assert exc.status in (400, 413)


def check_sdp(data: bytes) -> None:
    """SessionDescription.parse: a description that re-parses identically, or SdpError."""
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    again = SessionDescription.parse(sdp.to_bytes())
    assert len(again.media) == len(sdp.media)


def check_digest(value: str) -> None:
    """parse_auth_header raises only ValueError; verify never raises and never accepts a
    header nobody computed; DigestClient.answer raises only ValueError."""
    try:
        parse_auth_header(value)
    except ValueError:
        pass
    result = _SERVER.verify(value, "REGISTER", lambda user: "secret", 1_000_000.0)
    assert not result.ok, value
    try:
        DigestClient.answer(value, method="REGISTER", uri="sip:x", username="u",
                            password="p", cnonce="c")
    except ValueError:
        pass


def fuzz_one(data: bytes) -> None:
    """The atheris entry point: the first byte picks the parser, the rest is its input."""
    if not data:
        return
    kind, rest = data[0] % 3, data[1:]
    if kind == 0:
        check_sip(rest)
    elif kind == 1:
        check_sdp(rest)
    else:
        check_digest(rest.decode("utf-8", "surrogateescape"))


# ---- Hypothesis generators ------------------------------------------------------------------

_SPECIAL = [b"\r\n", b"\n", b"\r", b"\x00", b"\x0b", b" ", b"\t", b":", b";", b",", b"=",
            b'"', b"\\", b"<", b">", b"\r\n ", b"\xff", b"-", b"9" * 12, b"a" * 300]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few insertions, deletions, byte changes and duplications."""
    data = bytearray(seed)
    rnd = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 4))):
        pos = rnd.randint(0, len(data))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            data[pos:pos] = draw(st.sampled_from(_SPECIAL))
        elif kind == 1 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


_NAMES = st.sampled_from(["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq",
                          "Max-Forwards", "Content-Length", "l", "Contact", "m", "Route",
                          "Expires", "Subject", "X-Custom", "Authorization"])
_VALUE_ATOMS = st.sampled_from([
    "SIP/2.0/UDP 127.0.0.1", ";branch=z9hG4bK", ";tag=", "<sip:a@b>", '"d"', "1 INVITE",
    "70", "0", "-1", "4294967296", "Digest ", "username", "=", ",", ";", " ", "\t", "\\",
    "\x00", "\x07", "a" * 257, "sip:x@y", "@", "*",
])


@st.composite
def sip_from_grammar(draw: st.DrawFn) -> bytes:
    """A start line and header lines assembled from grammar atoms (names, separators,
    values, control characters, overlong runs) with LF or CRLF line ends."""
    start = draw(st.sampled_from(["INVITE sip:1002@127.0.0.1 SIP/2.0", "SIP/2.0 200 OK",
                                  "OPTIONS sip:x SIP/2.0", "REGISTER sip:h SIP/2.0"]))
    lines = [start]
    for _ in range(draw(st.integers(0, 12))):
        name = draw(_NAMES)
        sep = draw(st.sampled_from([":", " :", ":\t", "\x0b:", ""]))
        value = "".join(draw(st.lists(_VALUE_ATOMS, max_size=6)))
        lines.append(f"{name}{sep} {value}")
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    body = draw(st.binary(max_size=64))
    return (eol.join(lines) + eol + eol).encode("utf-8", "surrogateescape") + body


@SETTINGS
@given(st.one_of(mutated(SIP_SEED), sip_from_grammar(), st.binary(max_size=512)))
def test_sip_parser(data: bytes) -> None:
    check_sip(data)


_SDP_LINES = st.sampled_from([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "c=IN IP6 ::1", "c=", "t=0 0",
    "m=audio 40000 RTP/AVP 0", "m=audio 99999 RTP/AVP", "m=video 0 RTP/AVP 96", "a=", "a=rtpmap:",
    "a=rtpmap", "a=rtpmap:0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/", "a=fmtp:",
    "a=fmtp:101 0-15", "a=ptime:", "a=ptime:99999999999", "a=rtcp:", "a=sendonly", "b=AS:",
    "b=AS:99999999999999", "x", "=", "m=audio -1 RTP/AVP 0", "a=rtpmap:300 X/0",
])


@SETTINGS
@given(st.one_of(
    mutated(SDP_SEED),
    st.lists(_SDP_LINES, max_size=16).map(lambda ls: "\r\n".join(ls).encode()),
    st.binary(max_size=256),
))
def test_sdp_parser(data: bytes) -> None:
    check_sdp(data)


_AUTH_ATOMS = st.sampled_from([
    "Digest ", "username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce",
    "algorithm", "opaque", "=", '"', ",", " ", "\\", "MD5", "SHA-256", "auth", "00000001",
    "x" * 300, "\x00", "Basic ",
])


@SETTINGS
@given(st.one_of(
    st.lists(_AUTH_ATOMS, max_size=20).map("".join),
    mutated(AUTH_SEED.encode()).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(max_size=200),
))
def test_digest_parsers(value: str) -> None:
    check_digest(value)


@SETTINGS
@given(user=st.text(min_size=1, max_size=30).filter(lambda s: '"' not in s and "\\" not in s),
       password=st.text(max_size=30))
def test_digest_round_trip(user: str, password: str) -> None:
    """A challenge answered with the right password verifies; with another one it does not."""
    challenge = _SERVER.challenges(1_000_000.0)[0]
    good = DigestClient.answer(challenge, method="REGISTER", uri="sip:h", username=user,
                               password=password, cnonce="c1")
    assert _SERVER.verify(good, "REGISTER", lambda u: password if u == user else None,
                          1_000_000.0).ok
    bad = DigestClient.answer(challenge, method="REGISTER", uri="sip:h", username=user,
                              password=password + "x", cnonce="c2")
    assert not _SERVER.verify(bad, "REGISTER", lambda u: password if u == user else None,
                              1_000_000.0).ok


def test_fuzz_one_dispatches_to_every_parser() -> None:
    for kind in range(3):
        fuzz_one(bytes([kind]) + SIP_SEED)
    fuzz_one(b"\x01" + SDP_SEED)
    fuzz_one(b"\x02" + AUTH_SEED.encode())
    fuzz_one(b"")


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _atheris_available(), reason="atheris not installed (pip install atheris)")
@pytest.mark.timeout(600)
def test_atheris_short_run(tmp_path: Path) -> None:
    """Coverage-guided: libFuzzer drives fuzz_one for ATHERIS_RUNS inputs, seeded with the
    three seeds; any invariant broken (an exception) fails the run with its input saved."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "sip").write_bytes(b"\x00" + SIP_SEED)
    (corpus / "sdp").write_bytes(b"\x01" + SDP_SEED)
    (corpus / "auth").write_bytes(b"\x02" + AUTH_SEED.encode())
    proc = subprocess.run(
        [sys.executable, __file__, f"-runs={ATHERIS_RUNS}", "-max_len=4096", "-seed=1",
         f"-artifact_prefix={tmp_path}/crash-", str(corpus)],
        capture_output=True, text=True, timeout=540, cwd=ROOT, check=False)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert "Done" in tail, tail
    assert not list(tmp_path.glob("crash-*")), tail


def _main() -> None:  # pragma: no cover - run by libFuzzer in a subprocess
    import atheris

    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _main()
