"""SIP/SIPS/tel URIs, name-addr values and Via values (RFC 3261 sections 19.1, 20, 25).

All parsers here work on one header *value* (a list header must be split first with
:func:`split_list`) and raise :class:`~sip.errors.SipParseError` on anything that does not
follow the RFC 3261 grammar. Values are kept as received (escapes are not decoded) so that
re-serialising a parsed object gives the same wire text; only scheme, host and parameter
names, which compare case-insensitively (RFC 3261 section 19.1.4), are lower-cased.

The regular expressions below use only single character classes or alternations of
disjoint first characters inside repetitions, so matching is linear in the input length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sip.errors import SipParseError

__all__ = [
    "NameAddr",
    "SipURI",
    "Via",
    "header_tag",
    "is_token",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
    "validate_name_addr",
]

# ---- character classes (RFC 3261 section 25.1) ---------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"A-Za-z0-9\-.!%*_+`'~"
# unreserved = alphanum / mark; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"

# user = 1*( unreserved / escaped / user-unreserved ); user-unreserved = & = + $ , ; ? /
# "#" is tolerated as well: dial strings such as "*67#" are common in the wild.
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/#]|{_ESCAPED})+")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
_PARAMCHARS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")
# hname = 1*( hnv-unreserved / unreserved / escaped ); hnv-unreserved = [ ] / ? : + $
_HNAME_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})+")
_HVALUE_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*")
# hostname = *( domainlabel "." ) toplabel [ "." ] -- "_" tolerated (seen in real networks).
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?")
# IPv6reference = "[" IPv6address "]". Checked loosely: RFC 5118 section 4.5 asks parsers to
# tolerate the malformed three-colon form ("2001:db8:::192.0.2.1") that RFC 3261's ABNF
# let slip through.
_IPV6REF_RE = re.compile(r"\[[0-9A-Fa-f]*:[0-9A-Fa-f:.]*\]")
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )  (RFC 3261 section 25.1, RFC 3986)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# tel: telephone-subscriber, checked loosely (RFC 3966 section 3): digits, hex digits for
# local numbers, "*", "#", "+" and the visual separators "-", ".", "(", ")".
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+")

_TOKEN_RE = re.compile(rf"[{_TOKEN}]+")
# display-name = *(token LWS) / quoted-string
_DISPLAY_TOKENS_RE = re.compile(rf"[{_TOKEN}]+(?:[ \t]+[{_TOKEN}]+)*")
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE; quoted-pair = "\" any but CR/LF
_QUOTED_RE = re.compile(r'"((?:[^"\\\r\n]|\\[^\r\n])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_QUOTING_RE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
# One header/Via parameter: SEMI token [ EQUAL ( token / host / quoted-string ) ], where
# SEMI = SWS ";" SWS and EQUAL = SWS "=" SWS (RFC 3261 section 25.1). An unquoted value
# may also be an IPv6 address with or without brackets (RFC 5118 section 4.5: received=).
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{_TOKEN}]+)"
    rf'(?:[ \t]*=[ \t]*("(?:[^"\\\r\n]|\\[^\r\n])*"|[{_TOKEN}:\[\]/]+))?[ \t]*'
)
# via-parm = sent-protocol LWS sent-by; sent-protocol = name SLASH version SLASH transport,
# SLASH = SWS "/" SWS; sent-by = host [ COLON port ], COLON = SWS ":" SWS.
_VIA_RE = re.compile(
    rf"([{_TOKEN}]+)[ \t]*/[ \t]*([{_TOKEN}]+)[ \t]*/[ \t]*([{_TOKEN}]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-.]+)(?:[ \t]*:[ \t]*([0-9]+))?"
)
# list splitting: a quoted string (possibly unterminated), an <...> span, a comma, or a run
# of anything else. Every alternative consumes at least one character.
_LIST_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^>]*>?|,|[^,"<]+', re.DOTALL)

_KNOWN_SCHEMES = frozenset({"sip", "sips", "tel"})


def _bad(reason: str) -> SipParseError:
    return SipParseError(reason, 400)


class _Memo:
    """Bounded memo of parse results by input text, in two generations.

    A dialog repeats its From, To, Contact and Via values in every message, and the layers
    above the parser look at them several times each (transaction matching, dialog and call
    lookup): at a few hundred calls per second, parsing the same strings again was the
    largest share of the switch's CPU per call (bench.cps profile). When the young
    generation is full it becomes the old one (the previous old one is dropped), so a flood
    of distinct values costs only the memo's benefit, while values still in use survive by
    being promoted on their next lookup.
    """

    __slots__ = ("_max", "_old", "_young")

    def __init__(self, max_entries: int = 4096) -> None:
        self._young: dict[str, Any] = {}
        self._old: dict[str, Any] = {}
        self._max = max_entries

    def get(self, key: str) -> Any:
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: str, value: Any) -> None:
        young = self._young
        if len(young) >= self._max:
            self._old = young
            self._young = young = {}
        young[key] = value


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_port(text: str) -> int:
    # port = 1*DIGIT; we also require it to fit in 16 bits.
    if not text or len(text) > 5 or not text.isascii() or not text.isdigit():
        raise _bad("Bad port")
    port = int(text)
    if port > 65535:
        raise _bad("Port out of range")
    return port


def _check_host(host: str) -> None:
    if host.startswith("["):
        if _IPV6REF_RE.fullmatch(host) is None:
            raise _bad("Bad IPv6 reference")
    elif _HOSTNAME_RE.fullmatch(host) is None:
        raise _bad("Bad host")


# ---- URIs ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SipURI:
    """A parsed ``sip:``, ``sips:`` or ``tel:`` URI (RFC 3261 section 19.1, RFC 3966).

    ``user``/``password`` keep their escapes as received. For ``tel:`` URIs the telephone
    number is in ``user`` and ``host`` is empty. IPv6 hosts keep their brackets.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{_format_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)

    @property
    def transport(self) -> str:
        """The ``transport`` URI parameter, lower-cased; ``"udp"`` when absent."""
        value = self.params.get("transport")
        return value.lower() if value else "udp"

    def host_port(self) -> tuple[str, int]:
        """(host without IPv6 brackets, port or the scheme's default port)."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        if self.port is not None:
            return host, self.port
        return host, 5061 if self.scheme == "sips" else 5060


def _parse_uri_params(text: str) -> dict[str, str | None]:
    """``;name[=value]`` pieces of a URI (``text`` starts with ";" or is empty)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for piece in text[1:].split(";"):
        name, eq, value = piece.partition("=")
        if _PARAMCHARS_RE.fullmatch(name) is None:
            raise _bad("Bad URI parameter")
        if eq:
            if _PARAMCHARS_RE.fullmatch(value) is None:
                raise _bad("Bad URI parameter value")
            params.setdefault(name.lower(), value)
        else:
            params.setdefault(name.lower(), None)
    return params


def _parse_uri_headers(text: str) -> dict[str, str]:
    """``?name=value&...`` of a URI (``text`` without the "?")."""
    headers: dict[str, str] = {}
    for piece in text.split("&"):
        name, eq, value = piece.partition("=")
        if not eq or _HNAME_RE.fullmatch(name) is None or _HVALUE_RE.fullmatch(value) is None:
            raise _bad("Bad URI header")
        headers[name] = value
    return headers


def _split_scheme(text: str) -> tuple[str, str]:
    colon = text.find(":")
    if colon <= 0:
        raise _bad("URI without scheme")
    scheme = text[:colon]
    if _SCHEME_RE.fullmatch(scheme) is None:
        raise _bad("Bad URI scheme")
    return scheme.lower(), text[colon + 1 :]


def parse_uri(text: str) -> SipURI:
    """Parse a SIP, SIPS or tel URI (RFC 3261 section 19.1.1, RFC 3966).

    Raises :class:`SipParseError` with status 416 for a well-formed URI of another scheme
    (RFC 3261 section 8.2.2.1) and 400 for a malformed one. The result is the caller's own
    (a copy when the text was parsed before).
    """
    return _copy_uri(_uri_shared(text))


_URI_MEMO = _Memo()


def _copy_uri(uri: SipURI) -> SipURI:
    headers = dict(uri.headers) if uri.headers else {}
    return SipURI(uri.scheme, uri.user, uri.password, uri.host, uri.port, dict(uri.params), headers)


def _uri_shared(text: str) -> SipURI:
    """The memo's parsed URI for ``text``: shared, so never to be modified or handed out."""
    uri: SipURI | None = _URI_MEMO.get(text)
    if uri is None:
        uri = _parse_uri(text)
        _URI_MEMO.put(text, uri)
    return uri


def _parse_uri(text: str) -> SipURI:
    scheme, rest = _split_scheme(text)
    if scheme not in _KNOWN_SCHEMES:
        # absoluteURI = scheme ":" ( hier-part / opaque-part ): must not be empty nor hold
        # whitespace or controls; anything else we cannot judge without knowing the scheme.
        if not rest or not rest.isprintable() or " " in rest:
            raise _bad("Bad URI")
        raise SipParseError(f"Unsupported URI scheme {scheme}", 416)
    if scheme == "tel":
        number, semi, ptext = rest.partition(";")
        if _TEL_NUMBER_RE.fullmatch(number) is None:
            raise _bad("Bad tel URI")
        return SipURI(scheme, number, None, "", None, _parse_uri_params(semi + ptext))

    user: str | None = None
    password: str | None = None
    # The userinfo ends at the first "@": no other part of a SIP URI may hold an unescaped
    # "@" (RFC 3261 section 25.1), while the user part may hold ";", "?" and "," itself.
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if _USER_RE.fullmatch(user) is None:
            raise _bad("Bad URI user part")
        if colon:
            if _PASSWORD_RE.fullmatch(pw) is None:
                raise _bad("Bad URI password")
            password = pw

    # hostport, then uri-parameters, then headers
    port: int | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _bad("Unterminated IPv6 reference")
        host = rest[: close + 1]
        rest = rest[close + 1 :]
        if rest.startswith(":"):
            end = len(rest)
            for sep in (";", "?"):
                i = rest.find(sep)
                if 0 <= i < end:
                    end = i
            port = _parse_port(rest[1:end])
            rest = rest[end:]
    else:
        end = len(rest)
        for sep in (";", "?"):
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        hostport = rest[:end]
        rest = rest[end:]
        host, colon, port_text = hostport.partition(":")
        if colon:
            # An IPv6 address without brackets ends up here and fails (RFC 5118 section 4.4).
            port = _parse_port(port_text)
    _check_host(host)

    ptext, qmark, htext = rest.partition("?")
    if ptext and ptext[0] != ";":
        raise _bad("Junk after host")
    params = _parse_uri_params(ptext)
    headers = _parse_uri_headers(htext) if qmark else {}
    return SipURI(scheme, user, password, host.lower(), port, params, headers)


# ---- header parameters, name-addr ----------------------------------------------------------


def _parse_header_params(text: str, pos: int) -> dict[str, str | None]:
    """``*( SEMI generic-param )`` from ``text[pos:]``; names lower-cased, values as received
    (a quoted-string value keeps its quotes)."""
    params: dict[str, str | None] = {}
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise _bad("Bad header parameter")
        params.setdefault(m.group(1).lower(), m.group(2))
        pos = m.end()
    return params


def _unquote(inner: str) -> str:
    return _QUOTED_PAIR_RE.sub(r"\1", inner) if "\\" in inner else inner


def _quote_display(text: str) -> str:
    """Body of a quoted-string for ``text``: '"', "\\" and controls become quoted-pairs;
    CR and LF, which no quoted-pair may carry, become spaces (RFC 3261 section 25.1)."""
    if _NEEDS_QUOTING_RE.search(text) is None:
        return text
    text = text.replace("\r", " ").replace("\n", " ")
    return _NEEDS_QUOTING_RE.sub(lambda m: "\\" + m.group(0), text)


def _split_name_addr(text: str) -> tuple[str | None, str, dict[str, str | None]]:
    """Split a From/To/Contact/Route value into (display name, URI text, header params).

    The URI itself is not parsed. In the addr-spec form the URI ends at the first ";" or
    whitespace: parameters after it belong to the header, not the URI (RFC 3261 section
    20.10), and such a URI must not contain "?" (nor "," or ";", which cannot be told apart).
    """
    s = text.strip(" \t")
    if not s:
        raise _bad("Empty address")
    display: str | None = None
    lt = -1
    if s[0] == '"':
        m = _QUOTED_RE.match(s)
        if m is None:
            raise _bad("Unterminated quoted display name")
        display = _unquote(m.group(1))
        pos = m.end()
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        if pos >= len(s) or s[pos] != "<":
            raise _bad("Quoted display name not followed by <")
        lt = pos
    else:
        lt = s.find("<")
        if lt >= 0:
            before = s[:lt].rstrip(" \t")
            if not before:
                display = None
            elif _DISPLAY_TOKENS_RE.fullmatch(before) is not None:
                display = before
            else:
                # Not a display name: not a name-addr either (the "<" may sit in a quoted
                # parameter value). Parse as addr-spec, which will complain if need be.
                lt = -1
    if lt >= 0:
        gt = s.find(">", lt + 1)
        if gt < 0:
            raise _bad("Unterminated <")
        uri_text = s[lt + 1 : gt]
        pos = gt + 1
    else:
        end = len(s)
        for sep in (";", " ", "\t"):
            i = s.find(sep)
            if 0 <= i < end:
                end = i
        uri_text = s[:end]
        if "?" in uri_text or "<" in uri_text or ">" in uri_text or '"' in uri_text:
            raise _bad("URI with special characters must be enclosed in <>")
        pos = end
    return display, uri_text, _parse_header_params(s, pos)


@dataclass(slots=True)
class NameAddr:
    """A From/To/Contact/Route/Record-Route value: [display] <uri> *(;param)."""

    uri: SipURI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 section 19.3), or None."""
        return self.params.get("tag")

    def __str__(self) -> str:
        head = ""
        if self.display is not None:
            head = f'"{_quote_display(self.display)}" '
        return f"{head}<{self.uri}>{_format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )`` (RFC 3261 sections 20.10, 25.1).

    Raises status 416 when the URI is of a scheme other than sip/sips/tel.
    """
    shared = _name_addr_shared(text)
    return NameAddr(_copy_uri(shared.uri), shared.display, dict(shared.params))


def header_tag(text: str) -> str | None:
    """The ``tag`` parameter of a From or To value (RFC 3261 section 19.3), or None.

    The same as ``parse_name_addr(text).tag`` without copying a memoised parse."""
    return _name_addr_shared(text).params.get("tag")


_NAME_ADDR_MEMO = _Memo()


def _name_addr_shared(text: str) -> NameAddr:
    """The memo's parsed name-addr for ``text``: shared, never to be modified or handed out."""
    parsed: NameAddr | None = _NAME_ADDR_MEMO.get(text)
    if parsed is None:
        display, uri_text, params = _split_name_addr(text)
        parsed = NameAddr(_uri_shared(uri_text), display, params)
        _NAME_ADDR_MEMO.put(text, parsed)
    return parsed


def validate_name_addr(text: str, *, require_brackets: bool = False) -> None:
    """Check the syntax of a name-addr/addr-spec value, accepting any URI scheme.

    Used by the message parser for From/To/Contact/Route: a URI of an unknown scheme in
    those headers does not make the message invalid (RFC 4475 section 3.3.4). A value with
    a SIP, SIPS or tel URI is parsed into the memo, where the layers above then find it.
    """
    if require_brackets and "<" not in text:
        raise _bad("Route value must be a name-addr")
    try:
        _name_addr_shared(text)
    except SipParseError as exc:
        if exc.status != 416:
            raise


# ---- Via -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 section 20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter, or None."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter (RFC 3261 section 18.2.1), or None."""
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """The ``rport`` parameter (RFC 3581): None if absent, "" if present without value."""
        if "rport" not in self.params:
            return None
        return self.params["rport"] or ""

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 section 20.42; LWS allowed around "/" and ":").

    The result is the caller's own (a copy when the text was parsed before)."""
    via: Via | None = _VIA_MEMO.get(text)
    if via is None:
        via = _parse_via(text)
        _VIA_MEMO.put(text, via)
    return Via(via.transport, via.host, via.port, dict(via.params))


_VIA_MEMO = _Memo()


def _parse_via(text: str) -> Via:
    s = text.strip(" \t")
    m = _VIA_RE.match(s)
    if m is None:
        raise _bad("Bad Via")
    name, version, transport, host, port_text = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise _bad("Bad Via protocol")
    _check_host(host)
    port = _parse_port(port_text) if port_text is not None else None
    params = _parse_header_params(s, m.end())
    return Via(transport.upper(), host.lower(), port, params)


# ---- lists ---------------------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...> (RFC 3261 7.3.1).

    Pieces are stripped of surrounding whitespace; empty pieces are kept (the caller
    decides whether an empty list element is an error).
    """
    if "," not in value:
        return [value.strip(" \t")]
    pieces: list[str] = []
    current: list[str] = []
    for token in _LIST_TOKEN_RE.findall(value):
        if token == ",":
            pieces.append("".join(current).strip(" \t"))
            current = []
        else:
            current.append(token)
    pieces.append("".join(current).strip(" \t"))
    return pieces


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 3261 token (method names, header names, tags...)."""
    return _TOKEN_RE.fullmatch(text) is not None
