"""SIP message model: headers, requests, responses and their wire form (RFC 3261 section 7).

The model keeps header values as strings exactly as received (after unfolding), so a message
that is relayed or re-serialised changes only where we change it. Structured views (Via, From,
To, URIs) are parsed on demand by :mod:`sip.uri`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sip.errors import SipParseError
from sip.uri import header_tag

# RFC 3261 section 7.3.3: compact forms.
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "a": "Accept-Contact",
    "b": "Referred-By",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

# Headers whose value may legally be a comma-separated list (RFC 3261 section 7.3.1). Only
# these are split into several values by the parser; the rest (notably the auth headers and
# Date, whose values contain commas) are kept whole.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Allow-Events",
        "Content-Encoding",
        "Content-Language",
        "In-Reply-To",
        "Warning",
        "Error-Info",
        "Alert-Info",
        "Call-Info",
        "Reply-To",
    }
)

# Headers that must appear at most once; a duplicate is a 400. RFC 3261 section 20 (and the
# extensions' own grammars: RFC 3262 RSeq/RAck, RFC 3265 Event, RFC 3515 Refer-To, RFC 4028
# Session-Expires/Min-SE) give each of these a single value. Refusing a second copy closes the
# "which one wins" ambiguity between stacks (two Content-Lengths, two To tags, two CSeqs...).
SINGLE_HEADERS: frozenset[str] = frozenset(
    {
        "Call-ID",
        "CSeq",
        "From",
        "To",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Content-Disposition",
        "Expires",
        "Min-Expires",
        "Date",
        "MIME-Version",
        "Retry-After",
        "Timestamp",
        "Subject",
        "Priority",
        "Event",
        "Refer-To",
        "Session-Expires",
        "Min-SE",
        "RSeq",
        "RAck",
    }
)


# Spellings seen before -> canonical name: the lookups of the layers above (one "Via" or "To"
# after another, hundreds per call) cost one dict hit. Bounded, as names can come off the wire.
_SPELLINGS: dict[str, str] = {}
_SPELLINGS_MAX = 2048


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name (compact forms expanded)."""
    known = _SPELLINGS.get(name)
    if known is not None:
        return known
    canonical = _canonical_name(name)
    if len(_SPELLINGS) < _SPELLINGS_MAX:
        _SPELLINGS[name] = canonical
    return canonical


def _canonical_name(name: str) -> str:
    lowered = name.lower()
    if len(lowered) == 1 and lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    known = _CANONICAL.get(lowered)
    if known is not None:
        return known
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


class Headers:
    """An ordered multi-map of SIP headers with case-insensitive, compact-form-aware names.

    Each entry is one header value (a list header received as ``Via: a, b`` is two entries).
    Order is preserved as received; it matters for Via, Route and Record-Route.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    @classmethod
    def _canonical(cls, items: list[tuple[str, str]]) -> Headers:
        """Headers taking ``items`` as they are: every name already canonical (the parser)."""
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        return any(n == key for n, _ in self._items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name``, or ``default``."""
        key = canonical_name(name)
        for n, v in self._items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = canonical_name(name)
        return [v for n, v in self._items if n == key]

    def add(self, name: str, value: str) -> None:
        """Append a value after any existing ones."""
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a value before the first existing value of the same header (e.g. a Via)."""
        key = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items.insert(i, (key, value))
                return
        self._items.append((key, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one value, kept at the first one's position."""
        key = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items[i] = (key, value)
                self._items = [
                    item for j, item in enumerate(self._items) if j <= i or item[0] != key
                ]
                return
        self._items.append((key, value))

    def remove(self, name: str) -> None:
        """Drop every value of ``name``."""
        key = canonical_name(name)
        self._items = [item for item in self._items if item[0] != key]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of ``name``."""
        key = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if n == key:
                del self._items[i]
                return v
        return None

    def copy(self) -> Headers:
        """A shallow copy (values are immutable strings)."""
        new = Headers()
        new._items = list(self._items)
        return new


@dataclass(slots=True)
class Message:
    """Fields common to requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    # ---- convenience accessors for the headers every layer needs -------------------------

    @property
    def call_id(self) -> str:
        """The Call-ID, or raise :class:`SipParseError` when absent."""
        value = self.headers.get("Call-ID")
        if value is None:
            raise SipParseError("Missing Call-ID")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq (RFC 3261 section 20.16)."""
        value = self.headers.get("CSeq")
        if value is None:
            raise SipParseError("Missing CSeq")
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError("Bad CSeq")
        number = int(parts[0])
        if number > 2**31 - 1:
            raise SipParseError("CSeq number out of range")
        return number, parts[1]

    def first(self, name: str) -> str:
        """First value of a header that must be present."""
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"Missing {canonical_name(name)}")
        return value

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise for the wire. Content-Length is always (re)written to match the body."""
        lines = [self.start_line()]
        for name, value in self.headers:
            if name == "Content-Length":
                continue
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


@dataclass(slots=True)
class Request(Message):
    """A SIP request. ``uri`` is the Request-URI as text."""

    method: str = ""
    uri: str = ""

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


@dataclass(slots=True)
class Response(Message):
    """A SIP response."""

    status: int = 0
    reason: str = ""

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"


REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}


def _has_tag(to_value: str) -> bool:
    """True if a To/From value carries a tag parameter (parsed, RFC 3261 section 19.3)."""
    try:
        return header_tag(to_value) is not None
    except SipParseError:
        return ";tag=" in to_value.lower().replace(" ", "")


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    extra: Iterable[tuple[str, str]] = (),
) -> Response:
    """Build a response to ``request`` per RFC 3261 section 8.2.6.2.

    Via, From, Call-ID and CSeq are copied; To is copied and gets ``to_tag`` when the To has
    no tag yet (never for 100 Trying, which the caller signals by passing no tag).
    Record-Route is copied for responses that can establish a dialog (RFC 3261 section 12.1.1).
    """
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag and status != 100 and not _has_tag(value):
            value = f"{value};tag={to_tag}"
        headers.add(name, value)
    if request.method in ("INVITE", "SUBSCRIBE") and 100 < status < 300:
        for value in request.headers.get_all("Record-Route"):
            headers.add("Record-Route", value)
    for name, value in extra:
        headers.add(name, value)
    return Response(
        headers=headers,
        body=body,
        status=status,
        reason=reason if reason is not None else REASONS.get(status, "Unknown"),
    )
