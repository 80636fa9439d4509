"""SDP (RFC 4566) parsing and serialisation, and RFC 3264 offer/answer for audio.

The model keeps what the softswitch needs as typed fields (origin, connection, timing,
bandwidth, attributes, media descriptions) and carries every other line through untouched so
that a parse/serialise round trip loses nothing useful. Parsing accepts LF or CRLF line ends;
output always uses CRLF (RFC 4566 section 5).

Only plain RTP audio (``RTP/AVP`` and ``RTP/AVPF``) is negotiated. The first such audio stream
with a non-zero port is "the" audio stream; every other stream in an offer is rejected in the
answer by setting its port to zero (RFC 3264 section 6).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_CODECS",
    "DIRECTIONS",
    "MAX_SDP_BYTES",
    "MAX_SDP_LINES",
    "MAX_SDP_MEDIA",
    "PCMA",
    "PCMU",
    "SUPPORTED_PROTOS",
    "TELEPHONE_EVENT",
    "Codec",
    "MediaDescription",
    "Origin",
    "SdpError",
    "SdpNegotiationError",
    "SessionDescription",
    "audio_codecs",
    "build_answer",
    "build_offer",
    "is_on_hold",
    "media_codecs",
    "negotiate",
    "remote_rtcp_address",
    "remote_rtp_address",
    "select_audio_stream",
    "stream_direction",
]

#: Largest SDP body accepted by :meth:`SessionDescription.parse` (the largest UDP SIP message).
MAX_SDP_BYTES = 65535
#: Most lines accepted in one SDP body.
MAX_SDP_LINES = 1024
#: Most m= sections accepted in one SDP body.
MAX_SDP_MEDIA = 64
#: Most formats accepted on one m= line (RTP payload types are 0..127).
MAX_SDP_FORMATS = 128

#: Direction attributes, RFC 4566 section 6 / RFC 3264 section 5.1.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: Transport protocols we can answer (plain RTP; no SRTP).
SUPPORTED_PROTOS = ("RTP/AVP", "RTP/AVPF")

# RFC 3264 section 6.1: the answer's direction mirrors the offer's.
_MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}

# Static audio payload types, RFC 3551 section 6 (table 4): pt -> (name, rate, channels).
_STATIC_AUDIO: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

# Encoding names are case-insensitive (RFC 4855 section 3); we spell the ones we use one way.
_CANONICAL_NAMES = {"pcmu": "PCMU", "pcma": "PCMA", "telephone-event": "telephone-event"}

# Clock rates we can actually handle for the codecs we implement (G.711 and RFC 4733 at 8 kHz).
_REQUIRED_RATE = {"pcmu": 8000, "pcma": 8000, "telephone-event": 8000}


class SdpError(ValueError):
    """An SDP body is malformed, over a size limit, or otherwise unusable."""


class SdpNegotiationError(SdpError):
    """An offer has no stream/codec we can accept (the switch answers 488, RFC 3261 13.3.1.1).

    Subclass of :class:`SdpError`, so ``except SdpError`` also catches it; catch this one first
    when the two need different handling.
    """


def _canonical_name(name: str) -> str:
    return _CANONICAL_NAMES.get(name.casefold(), name)


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format as negotiated: encoding name, payload type, clock rate, fmtp.

    ``name`` is canonicalised for PCMU, PCMA and telephone-event; compare names of other codecs
    case-insensitively (RFC 4855 section 3).
    """

    name: str
    payload_type: int
    clock_rate: int
    fmtp: str | None = None
    channels: int = 1

    def same_format(self, other: Codec) -> bool:
        """True if ``other`` is the same encoding (name, clock rate, channels), whatever its PT."""
        return (
            self.name.casefold() == other.name.casefold()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )


#: G.711 mu-law, static payload type 0 (RFC 3551 section 6).
PCMU = Codec("PCMU", 0, 8000)
#: G.711 A-law, static payload type 8 (RFC 3551 section 6).
PCMA = Codec("PCMA", 8, 8000)
#: RFC 4733 DTMF events; 101 is only our default for offers (dynamic PT).
TELEPHONE_EVENT = Codec("telephone-event", 101, 8000, "0-16")
#: What the switch offers by default, in preference order.
DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA, TELEPHONE_EVENT)


@dataclass(slots=True)
class Origin:
    """The o= line (RFC 4566 section 5.2)."""

    username: str = "-"
    session_id: int = 0
    version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class MediaDescription:
    """One m= section (RFC 4566 section 5.14) with its c=, b= and a= lines.

    ``attributes`` holds every a= line in order as ``(name, value)``; ``value`` is ``None`` for
    a property attribute such as ``a=sendrecv``. ``extra_lines`` holds other lines (i=, k=,
    unknown types) as ``(type, value)`` so they survive a round trip.
    """

    media: str
    port: int
    proto: str = "RTP/AVP"
    formats: list[str] = field(default_factory=list)
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    port_count: int | None = None
    extra_lines: list[tuple[str, str]] = field(default_factory=list)

    # -- attribute helpers -------------------------------------------------------------
    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name:value`` (``""`` for a flag attribute), or None."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Values of every ``a=name:value`` line, in order."""
        return [value for key, value in self.attributes if key == name and value is not None]

    @property
    def rtpmap(self) -> dict[int, tuple[str, int, int]]:
        """``a=rtpmap`` entries: pt -> (encoding name, clock rate, channels) (RFC 4566 6).

        Malformed rtpmap lines are ignored (the format is then unknown to us).
        """
        result: dict[int, tuple[str, int, int]] = {}
        for value in self.attribute_values("rtpmap"):
            parsed = _parse_rtpmap(value)
            if parsed is not None and parsed[0] not in result:
                pt, name, rate, channels = parsed
                result[pt] = (name, rate, channels)
        return result

    @property
    def fmtp(self) -> dict[int, str]:
        """``a=fmtp`` parameters keyed by payload type (non-numeric formats ignored)."""
        result: dict[int, str] = {}
        for value in self.attribute_values("fmtp"):
            fmt, _, params = value.strip().partition(" ")
            if fmt.isdigit() and int(fmt) not in result:
                result[int(fmt)] = params.strip()
        return result

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in milliseconds, or None if absent or unparsable."""
        value = self.attribute("ptime")
        if not value:
            return None
        try:
            ms = int(float(value.strip()))
        except ValueError:
            return None
        return ms if ms > 0 else None

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute, or None if the section has none.

        Use :func:`stream_direction` for the effective direction including the session level.
        """
        return _direction_of(self.attributes)

    @direction.setter
    def direction(self, value: str | None) -> None:
        self.attributes = [(k, v) for k, v in self.attributes if k not in DIRECTIONS]
        if value is not None:
            if value not in DIRECTIONS:
                raise ValueError(f"unknown direction {value!r}")
            self.attributes.append((value, None))

    @property
    def payload_types(self) -> list[int]:
        """The numeric formats of the m= line (RTP payload types), in order."""
        return [int(f) for f in self.formats if f.isdigit()]

    def lines(self) -> list[str]:
        """The section's lines in RFC 4566 order, without line ends."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.media} {port} {' '.join([self.proto, *self.formats])}"]
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t == "i")
        if self.connection is not None:
            out.append(_connection_line(self.connection))
        out.extend(f"b={t}:{v}" for t, v in self.bandwidths)
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t != "i")
        out.extend(_attribute_line(k, v) for k, v in self.attributes)
        return out


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body (RFC 4566).

    ``extra_lines`` keeps session-level lines we do not model (i=, u=, e=, p=, r=, z=, k= and
    unknown types) as ``(type, value)``.
    """

    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    connection: str | None = None
    timing: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    extra_lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def direction(self) -> str | None:
        """The session-level direction attribute, or None."""
        return _direction_of(self.attributes)

    def bump_version(self) -> int:
        """Increment the o= session version (RFC 3264 section 8: each new offer/answer
        in a session changes it) and return the new value."""
        self.origin.version += 1
        return self.origin.version

    def to_bytes(self) -> bytes:
        """Serialise with CRLF line ends in RFC 4566 section 5 order."""
        out = ["v=0", f"o={self.origin}", f"s={self.session_name or '-'}"]
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t in "iuep")
        if self.connection is not None:
            out.append(_connection_line(self.connection))
        out.extend(f"b={t}:{v}" for t, v in self.bandwidths)
        for start, stop in self.timing or [(0, 0)]:
            out.append(f"t={start} {stop}")
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t not in "iuep")
        out.extend(_attribute_line(k, v) for k, v in self.attributes)
        for m in self.media:
            out.extend(m.lines())
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; raises :class:`SdpError` if it is malformed or too large.

        Tolerated: LF-only line ends, blank lines, unknown line types and attributes, a missing
        s= or t= line. Required: ``v=0`` first, exactly one o= line, valid c=/m=/b=/t= lines.
        """
        return _parse(data)


# ---------------------------------------------------------------------------------------
# parsing


def _parse(data: bytes | str) -> SessionDescription:
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(f"SDP body larger than {MAX_SDP_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # RFC 4566 section 5: the default charset is UTF-8, but some UAs send Latin-1 in s=.
            text = data.decode("latin-1")
    else:
        text = data
        if len(text) > MAX_SDP_BYTES:
            raise SdpError(f"SDP body larger than {MAX_SDP_BYTES} bytes")
    if "\x00" in text:
        raise SdpError("NUL character in SDP")
    raw_lines = text.split("\n")
    if len(raw_lines) > MAX_SDP_LINES + 1:
        raise SdpError(f"SDP has more than {MAX_SDP_LINES} lines")

    sdp = SessionDescription()
    seen_v = False
    seen_o = False
    timing: list[tuple[int, int]] = []
    current: MediaDescription | None = None
    for lineno, raw in enumerate(raw_lines, 1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {lineno}: not '<type>=<value>'")
        kind, value = line[0], line[2:]
        if not seen_v:
            # RFC 4566 section 5: the body starts with v=0.
            if kind != "v" or value.strip() != "0":
                raise SdpError("SDP must start with 'v=0'")
            seen_v = True
            continue
        if kind == "m":
            if len(sdp.media) >= MAX_SDP_MEDIA:
                raise SdpError(f"more than {MAX_SDP_MEDIA} m= lines")
            current = _parse_media_line(value, lineno)
            sdp.media.append(current)
        elif kind == "a":
            attr = _parse_attribute(value)
            (current.attributes if current is not None else sdp.attributes).append(attr)
        elif kind == "c":
            conn = _parse_connection(value, lineno)
            if current is not None:
                current.connection = conn
            else:
                sdp.connection = conn
        elif kind == "b":
            bw = _parse_bandwidth(value, lineno)
            (current.bandwidths if current is not None else sdp.bandwidths).append(bw)
        elif current is not None:
            current.extra_lines.append((kind, value))
        elif kind == "o":
            if seen_o:
                raise SdpError(f"line {lineno}: duplicate o= line")
            sdp.origin = _parse_origin(value, lineno)
            seen_o = True
        elif kind == "s":
            sdp.session_name = value
        elif kind == "t":
            timing.append(_parse_timing(value, lineno))
        elif kind == "v":
            raise SdpError(f"line {lineno}: duplicate v= line")
        else:
            sdp.extra_lines.append((kind, value))
    if not seen_v:
        raise SdpError("empty SDP body")
    if not seen_o:
        raise SdpError("SDP has no o= line")
    sdp.timing = timing or [(0, 0)]
    return sdp


def _parse_int(text: str, what: str, lineno: int, *, maximum: int | None = None) -> int:
    if not text.isascii() or not text.isdigit():
        raise SdpError(f"line {lineno}: bad {what} {text!r}")
    number = int(text)
    if maximum is not None and number > maximum:
        raise SdpError(f"line {lineno}: {what} {number} out of range")
    return number


def _parse_origin(value: str, lineno: int) -> Origin:
    # RFC 4566 section 5.2: o=<username> <sess-id> <sess-version> <nettype> <addrtype> <addr>
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"line {lineno}: o= needs 6 fields")
    user, sid, ver, nettype, addrtype, address = parts
    return Origin(
        username=user,
        session_id=_parse_int(sid, "session id", lineno),
        version=_parse_int(ver, "session version", lineno),
        nettype=nettype,
        addrtype=addrtype,
        address=address,
    )


def _parse_connection(value: str, lineno: int) -> str:
    # RFC 4566 section 5.7: c=<nettype> <addrtype> <connection-address>
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"line {lineno}: c= needs 3 fields")
    nettype, addrtype, address = parts
    if nettype.upper() != "IN":
        raise SdpError(f"line {lineno}: unsupported network type {nettype!r}")
    addrtype = addrtype.upper()
    host = address.split("/", 1)[0]
    if addrtype == "IP4":
        if ":" in host:
            raise SdpError(f"line {lineno}: IP4 connection address {host!r}")
    elif addrtype == "IP6":
        if ":" not in host:
            raise SdpError(f"line {lineno}: IP6 connection address {host!r}")
    else:
        raise SdpError(f"line {lineno}: unsupported address type {addrtype!r}")
    if not host:
        raise SdpError(f"line {lineno}: empty connection address")
    return address


def _parse_bandwidth(value: str, lineno: int) -> tuple[str, int]:
    # RFC 4566 section 5.8: b=<bwtype>:<bandwidth>
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype:
        raise SdpError(f"line {lineno}: b= must be '<type>:<value>'")
    return bwtype, _parse_int(amount.strip(), "bandwidth", lineno)


def _parse_timing(value: str, lineno: int) -> tuple[int, int]:
    # RFC 4566 section 5.9: t=<start-time> <stop-time>
    parts = value.split()
    if len(parts) != 2:
        raise SdpError(f"line {lineno}: t= needs 2 fields")
    return _parse_int(parts[0], "start time", lineno), _parse_int(parts[1], "stop time", lineno)


def _parse_media_line(value: str, lineno: int) -> MediaDescription:
    # RFC 4566 section 5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {lineno}: m= needs media, port and proto")
    media, port_text, proto, *formats = parts
    if len(formats) > MAX_SDP_FORMATS:
        raise SdpError(f"line {lineno}: more than {MAX_SDP_FORMATS} formats")
    port_part, sep, count_part = port_text.partition("/")
    port = _parse_int(port_part, "port", lineno, maximum=65535)
    count = _parse_int(count_part, "port count", lineno, maximum=65535) if sep else None
    return MediaDescription(
        media=media, port=port, proto=proto, formats=list(formats), port_count=count
    )


def _parse_attribute(value: str) -> tuple[str, str | None]:
    # RFC 4566 section 5.13: a=<attribute> | a=<attribute>:<value>
    name, sep, rest = value.partition(":")
    return (name.strip(), rest if sep else None)


def _parse_rtpmap(value: str) -> tuple[int, str, int, int] | None:
    # RFC 4566 section 6: a=rtpmap:<pt> <encoding name>/<clock rate>[/<encoding parameters>]
    pt_text, _, spec = value.strip().partition(" ")
    pieces = spec.strip().split("/")
    if not pt_text.isdigit() or len(pieces) < 2 or not pieces[0]:
        return None
    pt = int(pt_text)
    if pt > 127 or not pieces[1].isdigit():
        return None
    channels = 1
    if len(pieces) > 2 and pieces[2]:
        if not pieces[2].isdigit():
            return None
        channels = int(pieces[2])
    return pt, _canonical_name(pieces[0]), int(pieces[1]), channels


def _direction_of(attributes: Iterable[tuple[str, str | None]]) -> str | None:
    for key, _ in attributes:
        if key in DIRECTIONS:
            return key
    return None


def _connection_line(address: str) -> str:
    host = address.split("/", 1)[0]
    return f"c=IN {'IP6' if ':' in host else 'IP4'} {address}"


def _attribute_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _addrtype(ip: str) -> str:
    return "IP6" if ":" in ip else "IP4"


# ---------------------------------------------------------------------------------------
# offer / answer


def stream_direction(sdp: SessionDescription, media: MediaDescription) -> str:
    """Effective direction of a stream: media level, else session level, else sendrecv
    (RFC 4566 section 6 / RFC 3264 section 5.1)."""
    return media.direction or sdp.direction or "sendrecv"


def media_codecs(media: MediaDescription) -> list[Codec]:
    """Every format of an m= line we can name (rtpmap, else RFC 3551 static table), in order."""
    rtpmap = media.rtpmap
    fmtp = media.fmtp
    result: list[Codec] = []
    for pt in media.payload_types:
        if pt > 127:
            continue
        entry = rtpmap.get(pt) or _STATIC_AUDIO.get(pt)
        if entry is None:
            continue
        name, rate, channels = entry
        result.append(Codec(name, pt, rate, fmtp.get(pt), channels))
    return result


def _is_usable_audio(media: MediaDescription) -> bool:
    return (
        media.media.lower() == "audio"
        and media.port != 0
        and media.proto.upper() in SUPPORTED_PROTOS
    )


def select_audio_stream(sdp: SessionDescription) -> int | None:
    """Index of the audio stream we use: the first ``audio`` m= line with plain RTP
    (RTP/AVP or RTP/AVPF) and a non-zero port; None if there is none."""
    for index, media in enumerate(sdp.media):
        if _is_usable_audio(media):
            return index
    return None


def audio_codecs(sdp: SessionDescription) -> list[Codec]:
    """Codecs of the selected audio stream (see :func:`select_audio_stream`), [] if none."""
    index = select_audio_stream(sdp)
    return [] if index is None else media_codecs(sdp.media[index])


def negotiate(
    offer: SessionDescription,
    supported: Sequence[str] = ("PCMU", "PCMA", "telephone-event"),
) -> list[Codec]:
    """Codecs of the offer's audio stream that we support, in the offerer's order.

    RFC 3264 section 6.1: the answer uses the offer's payload type numbers, so each returned
    :class:`Codec` carries the offered PT and fmtp (e.g. ``telephone-event`` PT 96 with
    ``0-16``). Names compare case-insensitively; PCMU, PCMA and telephone-event must be at
    8000 Hz. Only the first offered format of each encoding is kept.

    Raises :class:`SdpNegotiationError` if there is no usable audio stream or no common codec
    other than telephone-event (RFC 4733 events alone carry no audio).
    """
    index = select_audio_stream(offer)
    if index is None:
        raise SdpNegotiationError("no RTP/AVP audio stream offered")
    wanted = {name.casefold() for name in supported}
    chosen: list[Codec] = []
    seen: set[str] = set()
    for codec in media_codecs(offer.media[index]):
        key = codec.name.casefold()
        if key not in wanted or key in seen:
            continue
        required = _REQUIRED_RATE.get(key)
        if required is not None and (codec.clock_rate != required or codec.channels != 1):
            continue
        seen.add(key)
        chosen.append(codec)
    if not any(c.name.casefold() != "telephone-event" for c in chosen):
        raise SdpNegotiationError("no common audio codec")
    return chosen


def _codec_attributes(codecs: Sequence[Codec]) -> list[tuple[str, str | None]]:
    attrs: list[tuple[str, str | None]] = []
    for c in codecs:
        suffix = f"/{c.channels}" if c.channels != 1 else ""
        attrs.append(("rtpmap", f"{c.payload_type} {c.name}/{c.clock_rate}{suffix}"))
        if c.fmtp:
            attrs.append(("fmtp", f"{c.payload_type} {c.fmtp}"))
    return attrs


def build_offer(
    ip: str,
    port: int,
    codecs: Sequence[Codec],
    *,
    session_id: int,
    direction: str = "sendrecv",
    version: int = 0,
    ptime: int | None = None,
    username: str = "-",
    session_name: str = "-",
) -> SessionDescription:
    """A one-stream audio offer (RFC 3264 section 5) at ``ip:port`` with ``codecs`` in order.

    Every codec gets an rtpmap line (also static ones) and its fmtp if any. For a re-offer in
    the same session keep ``session_id`` and pass a higher ``version`` (or call
    :meth:`SessionDescription.bump_version` on the previous offer).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    if not codecs:
        raise ValueError("an offer needs at least one codec")
    attrs = _codec_attributes(codecs)
    if ptime is not None:
        attrs.append(("ptime", str(ptime)))
    attrs.append((direction, None))
    media = MediaDescription(
        media="audio",
        port=port,
        proto="RTP/AVP",
        formats=[str(c.payload_type) for c in codecs],
        attributes=attrs,
    )
    return SessionDescription(
        origin=Origin(username, session_id, version, "IN", _addrtype(ip), ip),
        session_name=session_name,
        connection=ip,
        media=[media],
    )


def build_answer(
    offer: SessionDescription,
    ip: str,
    port: int,
    codecs: Sequence[Codec],
    *,
    session_id: int,
    version: int = 0,
    direction: str | None = None,
    ptime: int | None = None,
    username: str = "-",
    session_name: str = "-",
) -> SessionDescription:
    """The answer to ``offer`` (RFC 3264 section 6).

    One m= line per offered m= line, in order. The selected audio stream (see
    :func:`select_audio_stream`) is accepted at ``ip:port`` with ``codecs`` (normally the
    result of :func:`negotiate`) in the given order; each codec is matched by encoding to the
    offer and answered with the offer's payload type (section 6.1), keeping ``codec.fmtp`` or
    else the offered fmtp. Codecs the offer lacks are left out. Every other stream is rejected
    with port 0 and its offered formats (section 6).

    The direction is the offer's mirrored (sendonly <-> recvonly, section 6.1); passing
    ``direction`` states our own wish, which is combined with the mirror (e.g. our
    ``sendonly`` against an offered ``sendonly`` gives ``inactive``).

    Raises :class:`SdpNegotiationError` if no audio stream is usable or no codec besides
    telephone-event remains.
    """
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    index = select_audio_stream(offer)
    if index is None:
        raise SdpNegotiationError("no RTP/AVP audio stream offered")
    selected = offer.media[index]
    offered = media_codecs(selected)
    answer_codecs: list[Codec] = []
    used_pts: set[int] = set()
    for codec in codecs:
        match = next((o for o in offered if o.same_format(codec)), None)
        if match is None or match.payload_type in used_pts:
            continue
        used_pts.add(match.payload_type)
        fmtp = codec.fmtp if codec.fmtp is not None else match.fmtp
        answer_codecs.append(
            Codec(match.name, match.payload_type, match.clock_rate, fmtp, match.channels)
        )
    if not any(c.name.casefold() != "telephone-event" for c in answer_codecs):
        raise SdpNegotiationError("no common audio codec")

    mirrored = _MIRROR[stream_direction(offer, selected)]
    if direction is not None:
        mirrored = _combine_directions(mirrored, direction)

    media_out: list[MediaDescription] = []
    for i, m in enumerate(offer.media):
        if i != index:
            # RFC 3264 section 6: a rejected stream keeps its media type, proto and formats.
            media_out.append(MediaDescription(m.media, 0, m.proto, list(m.formats) or ["0"]))
            continue
        attrs = _codec_attributes(answer_codecs)
        if ptime is not None:
            attrs.append(("ptime", str(ptime)))
        attrs.append((mirrored, None))
        media_out.append(
            MediaDescription(
                media=m.media,
                port=port,
                proto=m.proto,
                formats=[str(c.payload_type) for c in answer_codecs],
                attributes=attrs,
            )
        )
    return SessionDescription(
        origin=Origin(username, session_id, version, "IN", _addrtype(ip), ip),
        session_name=session_name,
        connection=ip,
        timing=list(offer.timing) or [(0, 0)],  # RFC 3264 section 6: t= copied from the offer
        media=media_out,
    )


def _combine_directions(a: str, b: str) -> str:
    send = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    recv = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    if send and recv:
        return "sendrecv"
    if send:
        return "sendonly"
    if recv:
        return "recvonly"
    return "inactive"


def _connection_host(sdp: SessionDescription, media: MediaDescription) -> str | None:
    conn = media.connection if media.connection is not None else sdp.connection
    if conn is None:
        return None
    host = conn.split("/", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


@functools.lru_cache(maxsize=1024)  # pure; called for every SDP parsed
def _is_null_address(host: str) -> bool:
    # RFC 3264 section 8.4 (and RFC 2543 legacy): c=0.0.0.0 means "on hold", no address.
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def remote_rtp_address(sdp: SessionDescription) -> tuple[str, int] | None:
    """``(ip, port)`` of the selected audio stream, from its media- or session-level c=.

    None if there is no usable audio stream (port 0 included), no c= line, or the address is
    0.0.0.0 / :: (legacy hold). IPv6 addresses are returned without brackets. The address may
    be a host name if the SDP used one.
    """
    index = select_audio_stream(sdp)
    if index is None:
        return None
    media = sdp.media[index]
    host = _connection_host(sdp, media)
    if host is None or _is_null_address(host):
        return None
    return host, media.port


def remote_rtcp_address(sdp: SessionDescription) -> tuple[str, int] | None:
    """Where the remote wants RTCP: ``a=rtcp`` (RFC 3605) if present, else RTP port + 1
    on the RTP address (RFC 3550 section 11). None when :func:`remote_rtp_address` is None."""
    rtp = remote_rtp_address(sdp)
    if rtp is None:
        return None
    index = select_audio_stream(sdp)
    assert index is not None
    value = sdp.media[index].attribute("rtcp")
    if value:
        parts = value.split()
        if parts[0].isdigit() and 0 < int(parts[0]) <= 65535:
            host = rtp[0]
            if len(parts) == 4 and parts[1].upper() == "IN":
                host = parts[3]
            return host, int(parts[0])
    return rtp[0], rtp[1] + 1


def is_on_hold(sdp: SessionDescription) -> bool:
    """True if the selected audio stream is held: sendonly/inactive (RFC 3264 section 8.4)
    or a 0.0.0.0 connection address (RFC 2543 style)."""
    index = select_audio_stream(sdp)
    if index is None:
        return False
    media = sdp.media[index]
    if stream_direction(sdp, media) in ("sendonly", "inactive"):
        return True
    host = _connection_host(sdp, media)
    return host is not None and _is_null_address(host)
