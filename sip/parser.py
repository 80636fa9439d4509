"""SIP message parsing (RFC 3261 sections 7, 18.3, 20 and 25) and TCP stream framing.

:func:`parse_message` turns one datagram (or one framed stream message) into a
:class:`~sip.message.Request` or :class:`~sip.message.Response`, or raises
:class:`~sip.errors.SipParseError` whose ``status`` is the response a server should send
for a broken request (400, 413, 416 or 505).

Header values are kept as text (unfolded, surrounding whitespace removed); list headers
(:data:`sip.message.LIST_HEADERS`) are split into one entry per element. The headers the
stack relies on (Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Contact,
Route, Record-Route, Date) are checked with the structured parsers of :mod:`sip.uri`, so
later layers can parse them without failing.
"""

from __future__ import annotations

import re

from sip.errors import SipParseError
from sip.message import (
    LIST_HEADERS,
    SINGLE_HEADERS,
    Headers,
    Request,
    Response,
    canonical_name,
)
from sip.uri import is_token, parse_uri, parse_via, split_list, validate_name_addr

__all__ = [
    "MAX_BRANCH_BYTES",
    "MAX_CALL_ID_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_NAME_BYTES",
    "MAX_LINE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_METHOD_BYTES",
    "MAX_REASON_BYTES",
    "MAX_TAG_BYTES",
    "MAX_URI_BYTES",
    "MAX_VIAS",
    "StreamFramer",
    "parse_message",
    "salvage_request",
]

# Limits (RFC 3261 leaves them to implementations; 65535 is the largest UDP payload).
MAX_MESSAGE_BYTES = 65535
MAX_LINE_BYTES = 8192
MAX_HEADERS = 256
# A Content-Length above this cannot be satisfied by any message we accept.
_MAX_CONTENT_LENGTH = MAX_MESSAGE_BYTES
# Per-field limits. RFC 3261 sets no sizes, but every field a stack copies into a dialog,
# transaction key or log line needs one: the SIP-stack CVEs behind
# tests/test_sip_cve_corpus.py are overlong tags, branches, Call-IDs and method names
# overflowing fixed buffers. Each limit is well above what real peers send and above what RFC
# 4475 "longreq" (section 3.1.1.7, the long-values torture message: a 155-octet tag, a
# 215-octet branch, a 141-octet Call-ID) carries. Over a limit the request gets 400 (414 for
# the Request-URI, RFC 3261 section 21.4.12).
MAX_METHOD_BYTES = 64  # method and CSeq method
MAX_URI_BYTES = 4096  # Request-URI
MAX_REASON_BYTES = 512  # Reason-Phrase of a status line
MAX_HEADER_NAME_BYTES = 128
MAX_CALL_ID_BYTES = 256
MAX_TAG_BYTES = 256  # the tag parameter of From and To
MAX_BRANCH_BYTES = 256  # the branch parameter of each Via
MAX_VIAS = 128  # Via entries (RFC 4475 longreq has 34)

# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT (RFC 3261 section 25.1)
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
# SIP-date = rfc1123-date (RFC 3261 section 25.1); only "GMT" is allowed (section 20.17).
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]+[0-9]{1,2}[ \t]+"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]+[0-9]{4}[ \t]+"
    r"[0-9]{2}:[0-9]{2}:[0-9]{2}[ \t]+GMT"
)

# Header names seen before -> canonical name (bounded so hostile input cannot grow it).
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 2048

# Control characters other than HTAB (and LF/CR, handled as line ends). RFC 3261 section 25.1
# allows them in a header section only as the second octet of a quoted-pair
# ("\\" %x00-09 / %x0B-0C / %x0E-7F) inside a quoted-string: RFC 4475 intmeth's display
# name "BEL:\\<07> NUL:\\<00> DEL:\\<7F>" is valid; a bare NUL or VT (before a colon or
# anywhere else) is not.
_CTL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# The tag parameter of a From/To value (LWS around "=" allowed, RFC 3261 section 25.1 EQUAL).
_TAG_RE = re.compile(r"(?i);[ \t]*tag[ \t]*=[ \t]*([^; \t,]*)")

# Headers whose values are validated structurally after the header loop.
_ADDRESS_HEADERS = frozenset({"From", "To", "Contact", "Route", "Record-Route"})
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")


def _bad(reason: str) -> SipParseError:
    return SipParseError(reason, 400)


def _header_name(raw: str) -> str:
    """Canonical header name; the raw name must be a token (RFC 3261 section 25.1)."""
    known = _NAME_CACHE.get(raw)
    if known is not None:
        return known
    if len(raw) > MAX_HEADER_NAME_BYTES:
        raise _bad("Header name too long")
    if not is_token(raw):
        raise _bad("Bad header name")
    name = canonical_name(raw)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw] = name
    return name


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _split_head(data: bytes) -> tuple[int, int, int]:
    """(start of the start-line, end of the header section, start of the body)."""
    n = len(data)
    start = 0
    # RFC 3261 section 7.5: CRLFs before the start-line are ignored (keepalives).
    while start < n and data[start] in (13, 10):
        start += 1
    if start == n:
        raise _bad("Empty message")
    crlf = data.find(b"\r\n\r\n", start)
    # Bare-LF line ends are tolerated (RFC 3261 section 7.5 asks for CRLF, but RFC 5118's
    # own archive uses LF and robust receivers accept it).
    lf = data.find(b"\n\n", start, crlf if crlf >= 0 else n)
    if lf >= 0:
        head_end = lf - 1 if data[lf - 1] == 13 else lf
        return start, head_end, lf + 2
    if crlf >= 0:
        return start, crlf, crlf + 4
    # No empty line at all: the headers run to the end of the datagram and there is no
    # body (RFC 5118 section 4.2/4.3 messages are like this).
    end = n
    while end > start and data[end - 1] in (13, 10):
        end -= 1
    return start, end, n


def _head_lines(data: bytes, start: int, head_end: int) -> list[str]:
    head = data[start:head_end].decode("utf-8", "surrogateescape")
    if "\r" in head:
        head = head.replace("\r\n", "\n")
        if "\r" in head:
            raise _bad("Bare CR in header section")
    if _CTL_RE.search(head) is not None:
        _check_controls(head)
    lines = head.split("\n")
    if "\n " in head or "\n\t" in head:
        # RFC 3261 section 7.3.1: a line starting with whitespace continues the previous
        # one; the line break and the leading whitespace count as a single SP.
        groups: list[list[str]] = []
        for line in lines:
            if line and line[0] in " \t" and groups:
                group = groups[-1]
                group[-1] = group[-1].rstrip(" \t")
                group.append(line.lstrip(" \t"))
            else:
                groups.append([line])
        lines = [group[0] if len(group) == 1 else " ".join(group) for group in groups]
    # A (logical, unfolded) header line is limited to MAX_LINE_BYTES characters.
    if len(head) > MAX_LINE_BYTES and any(len(line) > MAX_LINE_BYTES for line in lines):
        raise _bad("Header line too long")
    return lines


def _check_controls(head: str) -> None:
    """Reject a control character that is not escaped by a backslash (see ``_CTL_RE``).

    This is how a header name with a NUL, VT or FF before its colon is refused (the name is
    not a token either), and a value carrying raw control octets: RFC 3261 section 25.1
    TEXT-UTF8char, qdtext and token all exclude CTLs.
    """
    for match in _CTL_RE.finditer(head):
        at = match.start()
        if at == 0 or head[at - 1] != "\\":
            raise _bad("Control character in header section")


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (section 7.2)
        parts = line.split(" ", 2)
        if len(parts) < 2 or _VERSION_RE.fullmatch(parts[0]) is None:
            raise _bad("Bad status line")
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError("Version Not Supported", 505)
        code = parts[1]
        # Status-Code = 3DIGIT, first digit 1-6 (sections 7.2 and 21)
        if len(code) != 3 or not _is_digits(code) or not "1" <= code[0] <= "6":
            raise _bad("Bad status code")
        if len(parts) == 3 and len(parts[2]) > MAX_REASON_BYTES:
            raise _bad("Reason phrase too long")
        return Response(status=int(code), reason=parts[2] if len(parts) == 3 else "")
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF (section 7.1): exactly one SP
    # between elements, no leading or trailing whitespace (RFC 4475 lwsstart, trws).
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise _bad("Bad request line")
    method, uri, version = parts
    if len(method) > MAX_METHOD_BYTES:
        raise _bad("Method too long")
    if not is_token(method):
        raise _bad("Bad method")
    if len(uri) > MAX_URI_BYTES:
        raise SipParseError("Request-URI Too Long", 414)
    if _VERSION_RE.fullmatch(version) is None:
        raise _bad("Bad request line")
    if version.upper() != "SIP/2.0":
        raise SipParseError("Version Not Supported", 505)
    return Request(method=method, uri=uri)


def _check_cseq(value: str, method: str | None) -> None:
    # CSeq = 1*DIGIT LWS Method; the number is below 2**31 (RFC 3261 section 8.1.1.5).
    parts = value.split()
    if len(parts) != 2 or not _is_digits(parts[0]) or not is_token(parts[1]):
        raise _bad("Bad CSeq")
    if len(parts[1]) > MAX_METHOD_BYTES:
        raise _bad("CSeq method too long")
    if len(parts[0]) > 10 or int(parts[0]) > 2**31 - 1:
        raise _bad("CSeq number out of range")
    if method is not None and parts[1] != method:
        # Section 8.1.1.5: the CSeq method matches the request method (RFC 4475 mismatch01).
        raise _bad("CSeq method does not match request method")


def _validate(name: str, value: str) -> None:
    """Structural checks of one header entry (see module docstring)."""
    if name == "Via":
        branch = parse_via(value).branch
        if branch is not None and len(branch) > MAX_BRANCH_BYTES:
            raise _bad("Via branch too long")
    elif name in ("From", "To"):
        validate_name_addr(value)
        if any(len(tag.group(1)) > MAX_TAG_BYTES for tag in _TAG_RE.finditer(value)):
            raise _bad(f"{name} tag too long")
    elif name == "Contact":
        if value != "*":
            validate_name_addr(value)
    elif name in ("Route", "Record-Route"):
        validate_name_addr(value, require_brackets=True)
    elif name == "Max-Forwards":
        # Max-Forwards = 1*DIGIT, 0-255 (RFC 3261 section 20.22; RFC 4475 scalar02)
        if not _is_digits(value) or len(value) > 8 or int(value) > 255:
            raise _bad("Bad Max-Forwards")
    elif name == "Call-ID":
        # callid = word [ "@" word ]: not empty, no whitespace
        if not value or " " in value or "\t" in value:
            raise _bad("Bad Call-ID")
        if len(value) > MAX_CALL_ID_BYTES:
            raise _bad("Call-ID too long")
    elif name == "Date" and _DATE_RE.fullmatch(value) is None:
        raise _bad("Bad Date")  # RFC 4475 baddate: only GMT is allowed


# Header values that passed _validate (a pure function of name and value) and Request-URIs
# that parsed: a dialog repeats its From, To, Contact, Route and Via values in every message,
# and re-checking them was half of parse_message's time (bench.micro profile). Bounded: cleared
# when full, so a flood of distinct values costs only the cache's benefit.
_VALID_CACHE: dict[tuple[str, str], None] = {}
_RURI_CACHE: dict[str, None] = {}
_CACHE_MAX = 4096

_VALIDATED = frozenset({"Via", "Max-Forwards", "Call-ID", "Date"} | _ADDRESS_HEADERS)


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message from a datagram or a framed stream message.

    Bytes after ``Content-Length`` octets of body are ignored (RFC 3261 section 18.3); with
    no Content-Length the body is the rest of the datagram. Raises :class:`SipParseError`.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("Message Too Large", 413)
    start, head_end, body_start = _split_head(data)
    lines = _head_lines(data, start, head_end)
    message = _parse_start_line(lines[0])
    if len(lines) > MAX_HEADERS + 1:
        raise _bad("Too many headers")

    items: list[tuple[str, str]] = []
    singles: dict[str, str] = {}
    to_check: list[tuple[str, str]] = []
    for line in lines[1:]:
        raw, colon, value = line.partition(":")
        if not colon:
            raise _bad("Header line without colon")
        # HCOLON = *( SP / HTAB ) ":" SWS (section 25.1)
        name = _header_name(raw.rstrip(" \t"))
        value = value.strip(" \t")
        if name in SINGLE_HEADERS:
            if name in singles:
                # Section 20 / RFC 4475 multi01, mcl01: these appear at most once.
                raise _bad(f"Duplicate {name}")
            singles[name] = value
        if name in LIST_HEADERS and "," in value:
            for piece in split_list(value):
                if piece:
                    items.append((name, piece))
                elif name in _ADDRESS_HEADERS or name == "Via":
                    raise _bad(f"Empty {name} element")
                if name in _VALIDATED:
                    to_check.append((name, piece))
        else:
            items.append((name, value))
            if name in _VALIDATED:
                to_check.append((name, value))
    if len(items) > MAX_HEADERS:
        raise _bad("Too many headers")

    # Body framing (section 18.3).
    cl_text = singles.get("Content-Length")
    if cl_text is not None:
        if not _is_digits(cl_text) or len(cl_text) > 10:
            raise _bad("Bad Content-Length")
        length = int(cl_text)
        if length > _MAX_CONTENT_LENGTH:
            raise _bad("Content-Length too large")
        body = data[body_start : body_start + length]
        if len(body) < length:
            raise _bad("Body shorter than Content-Length")
    else:
        body = data[body_start:]

    # Mandatory headers (section 8.1.1; responses copy them, section 8.2.6.2).
    vias = sum(1 for name, _ in to_check if name == "Via")
    if not vias:
        raise _bad("Missing Via")
    if vias > MAX_VIAS:
        raise _bad("Too many Via entries")
    for name in _MANDATORY[1:]:
        if name not in singles:
            raise _bad(f"Missing {name}")
    _check_cseq(singles["CSeq"], message.method if isinstance(message, Request) else None)
    valid = _VALID_CACHE
    for entry in to_check:
        if entry not in valid:
            _validate(*entry)
            if len(valid) >= _CACHE_MAX:
                valid.clear()
            valid[entry] = None

    message.headers = Headers._canonical(items)
    message.body = body
    if isinstance(message, Request) and message.uri not in _RURI_CACHE:
        # Last, so that a 416 is only reported for a request that is otherwise answerable.
        uri = parse_uri(message.uri)
        if uri.headers:
            # Section 19.1.1 table: headers are not allowed in a Request-URI (RFC 4475
            # escruri).
            raise _bad("Headers in Request-URI")
        if len(_RURI_CACHE) >= _CACHE_MAX:
            _RURI_CACHE.clear()
        _RURI_CACHE[message.uri] = None
    return message


def salvage_request(data: bytes) -> Request | None:
    """Best-effort parse of a request that :func:`parse_message` rejected.

    Returns a Request holding whatever header lines could be read when it has the headers a
    stateless error response needs (Via, From, To, Call-ID, CSeq), else None. Nothing in it
    is validated; use it only to build the error response (RFC 3261 section 8.2.6).
    """
    try:
        if len(data) > MAX_MESSAGE_BYTES:
            data = data[:MAX_MESSAGE_BYTES]
        start, head_end, _ = _split_head(data)
        head = data[start:head_end].decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        lines = head.split("\n")
        first = lines[0].split(" ")
        if len(first) < 3 or not is_token(first[0]):
            return None
        items: list[tuple[str, str]] = []
        for line in lines[1 : MAX_HEADERS + 1]:
            if line[:1] in (" ", "\t") and items:
                name, value = items[-1]
                items[-1] = (name, value + " " + line.strip(" \t"))
                continue
            raw, colon, value = line.partition(":")
            raw = raw.rstrip(" \t")
            if not colon or not is_token(raw):
                continue
            name = canonical_name(raw)
            if name == "Via":
                items.extend((name, v) for v in split_list(value) if v)
            else:
                items.append((name, value.strip(" \t")))
        headers = Headers(items)
        if any(name not in headers for name in _MANDATORY):
            return None
        return Request(method=first[0], uri=first[1], headers=headers)
    except SipParseError:
        return None


class StreamFramer:
    """Split a TCP byte stream into SIP messages by Content-Length (RFC 3261 section 18.3).

    Content-Length is mandatory on streams; its absence (or a malformed value, or a message
    over ``max_message_bytes``) raises :class:`SipParseError`, after which the connection
    should be closed. CRLFs between messages (RFC 5626 keepalives) are skipped.
    """

    __slots__ = ("_buf", "_max", "_need", "_scanned", "error")

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes
        self._need: int | None = None  # total length of the current message once known
        self._scanned = 0  # bytes of the current header section already searched
        self.error: SipParseError | None = None  # set once the stream cannot be framed

    @property
    def buffered(self) -> int:
        """Bytes of a message received only in part (0 between messages)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message completed by them (raw bytes).

        When the stream cannot be framed any further, the messages completed before the bad
        bytes are still returned and :attr:`error` is set (the caller answers them, then
        closes the connection: RFC 3261 section 18.3 gives no way to resynchronise). Feeding
        again after an error raises that error.
        """
        if self.error is not None:
            raise self.error
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while True:
            if self._need is None:
                if not self._skip_keepalives():
                    break
                try:
                    need = self._find_head()
                except SipParseError as exc:
                    self.error = exc
                    if not out:
                        raise
                    break
                if need is None:
                    break
                self._need = need
            if len(buf) < self._need:
                break
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = None
            self._scanned = 0
        return out

    def _skip_keepalives(self) -> bool:
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n and buf[i] in (13, 10):
            i += 1
        if i:
            del buf[:i]
            self._scanned = 0
        return bool(buf)

    def _fail(self, reason: str, status: int = 400) -> SipParseError:
        self._buf.clear()
        self._need = None
        self._scanned = 0
        return SipParseError(reason, status)

    def _find_head(self) -> int | None:
        """Total message length once the header section is complete, else None."""
        buf = self._buf
        from_pos = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", from_pos)
        lf = buf.find(b"\n\n", from_pos, end if end >= 0 else len(buf))
        if lf >= 0:
            head_end, body_start = lf, lf + 2
        elif end >= 0:
            head_end, body_start = end, end + 4
        else:
            self._scanned = len(buf)
            if len(buf) > self._max:
                raise self._fail("Message Too Large", 413)
            return None
        length = self._content_length(bytes(buf[:head_end]))
        total = body_start + length
        if total > self._max:
            raise self._fail("Message Too Large", 413)
        return total

    def _content_length(self, head: bytes) -> int:
        value: bytes | None = None
        lines = head.split(b"\n")
        for i, line in enumerate(lines):
            name, colon, rest = line.partition(b":")
            if colon and name.rstrip(b" \t").lower() in (b"content-length", b"l"):
                if value is not None:
                    raise self._fail("Duplicate Content-Length")
                parts = [rest]
                for cont in lines[i + 1 :]:  # folded value (section 7.3.1)
                    if cont[:1] not in (b" ", b"\t"):
                        break
                    parts.append(cont)
                value = b"".join(p.strip(b" \t\r") for p in parts)
        if value is None:
            # Section 18.3 / 20.14: Content-Length is mandatory over stream transports.
            raise self._fail("Missing Content-Length")
        if not value.isdigit() or len(value) > 10:
            raise self._fail("Bad Content-Length")
        return int(value)
