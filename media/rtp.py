"""RTP fixed header (RFC 3550 section 5.1): parse, build and fast in-place rewrites.

:class:`RtpHeader` is the full, validated view used off the hot path (tests, playback,
recording). The relay path in :mod:`media.engine` uses :func:`rtp_header_length` for
validation and the ``set_*`` helpers, which patch a ``bytearray`` in place without building
objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "RTCP_PACKET_TYPES",
    "RTP_HEADER_SIZE",
    "RTP_VERSION",
    "RtpError",
    "RtpHeader",
    "build_rtp",
    "get_payload_type",
    "is_rtcp",
    "parse_rtp",
    "rtp_header_length",
    "set_marker",
    "set_payload_type",
    "set_sequence",
    "set_ssrc",
    "set_timestamp",
    "split_rtp",
]

#: RTP version carried in every packet (RFC 3550 section 5.1).
RTP_VERSION = 2
#: Size of the fixed RTP header without CSRCs or extension.
RTP_HEADER_SIZE = 12
#: Second-byte values that mark an RTCP packet: RFC 5761 section 4 keeps 192-223 free of RTP
#: (payload types 64-95 with either marker value) so that RTCP (SR 200, RR 201, SDES 202,
#: BYE 203, APP 204, RTPFB 205, PSFB 206, XR 207) can be told apart from RTP.
RTCP_PACKET_TYPES = range(192, 224)

_FIXED = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class RtpError(ValueError):
    """A datagram is not a valid RTP packet."""


@dataclass(slots=True)
class RtpHeader:
    """An RTP header (RFC 3550 section 5.1).

    ``padding`` is the P bit; ``padding_length`` is the count in the last octet (0 when P is
    clear) and is only meaningful for parsed packets. The X bit is ``extension_profile is not
    None``; ``extension_data`` excludes the 4-octet extension header (RFC 3550 section 5.3.1).
    ``header_length`` is the offset of the payload in a parsed packet.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    version: int = RTP_VERSION
    padding: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_data: bytes = b""
    padding_length: int = 0
    header_length: int = field(default=RTP_HEADER_SIZE, compare=False)

    @property
    def extension(self) -> bool:
        """The X bit."""
        return self.extension_profile is not None

    @property
    def csrc_count(self) -> int:
        """The CC field."""
        return len(self.csrcs)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpHeader:
        """Parse and validate the header of an RTP packet; raises :class:`RtpError`."""
        return parse_rtp(data)

    def build(self, payload: bytes = b"") -> bytes:
        """Serialise this header followed by ``payload``; see :func:`build_rtp`."""
        return build_rtp(self, payload)


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpHeader:
    """Parse the RTP header of ``data`` (RFC 3550 section 5.1), validating every length.

    Raises :class:`RtpError` for: fewer than 12 octets, version != 2, CSRC list or header
    extension running past the end, or a padding count of zero or larger than the payload
    space (RFC 3550 section 5.1, "P").
    """
    n = len(data)
    if n < RTP_HEADER_SIZE:
        raise RtpError(f"packet too short for an RTP header ({n} octets)")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
    version = b0 >> 6
    if version != RTP_VERSION:
        raise RtpError(f"RTP version {version}, expected 2")
    cc = b0 & 0x0F
    offset = RTP_HEADER_SIZE + 4 * cc
    if offset > n:
        raise RtpError(f"CSRC list ({cc} entries) runs past the end of the packet")
    csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE) if cc else ()
    profile: int | None = None
    ext_data = b""
    if b0 & 0x10:
        # RFC 3550 section 5.3.1: 16-bit profile, 16-bit length in 32-bit words.
        if offset + 4 > n:
            raise RtpError("header extension header runs past the end of the packet")
        profile = _U16.unpack_from(data, offset)[0]
        words = _U16.unpack_from(data, offset + 2)[0]
        end = offset + 4 + 4 * words
        if end > n:
            raise RtpError("header extension runs past the end of the packet")
        ext_data = bytes(data[offset + 4 : end])
        offset = end
    pad = 0
    if b0 & 0x20:
        pad = data[n - 1]
        if pad == 0 or offset + pad > n:
            raise RtpError(f"bad padding count {pad}")
    return RtpHeader(
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        marker=bool(b1 & 0x80),
        version=version,
        padding=bool(b0 & 0x20),
        csrcs=tuple(csrcs),
        extension_profile=profile,
        extension_data=ext_data,
        padding_length=pad,
        header_length=offset,
    )


def split_rtp(data: bytes | bytearray | memoryview) -> tuple[RtpHeader, bytes]:
    """Parse ``data`` and return its header and payload (padding removed); see
    :func:`parse_rtp` for the errors."""
    header = parse_rtp(data)
    return header, bytes(data[header.header_length : len(data) - header.padding_length])


def build_rtp(header: RtpHeader, payload: bytes = b"") -> bytes:
    """Serialise ``header`` and ``payload`` into a packet.

    If ``header.padding`` is set, ``header.padding_length`` (>= 1) octets of padding are
    appended, the last one holding the count (RFC 3550 section 5.1). Raises ``ValueError``
    for out-of-range fields or an extension not a multiple of 4 octets.
    """
    if not 0 <= header.payload_type <= 127:
        raise ValueError("payload type must be 0..127")
    if len(header.csrcs) > 15:
        raise ValueError("at most 15 CSRCs")
    if not 0 <= header.version <= 3:
        raise ValueError("version must be 0..3")
    if len(header.extension_data) % 4:
        raise ValueError("extension data must be a multiple of 4 octets")
    b0 = (header.version << 6) | len(header.csrcs)
    if header.padding:
        b0 |= 0x20
    if header.extension_profile is not None:
        b0 |= 0x10
    b1 = header.payload_type | (0x80 if header.marker else 0)
    parts = [
        _FIXED.pack(
            b0,
            b1,
            header.sequence & 0xFFFF,
            header.timestamp & 0xFFFFFFFF,
            header.ssrc & 0xFFFFFFFF,
        )
    ]
    if header.csrcs:
        parts.append(struct.pack(f"!{len(header.csrcs)}I", *header.csrcs))
    if header.extension_profile is not None:
        parts.append(struct.pack("!HH", header.extension_profile, len(header.extension_data) // 4))
        parts.append(header.extension_data)
    parts.append(payload)
    if header.padding:
        pad = header.padding_length or 1
        if not 1 <= pad <= 255:
            raise ValueError("padding length must be 1..255")
        parts.append(bytes(pad - 1) + bytes((pad,)))
    return b"".join(parts)


def rtp_header_length(data: bytes | bytearray) -> int:
    """Validated length of the RTP header (payload offset), or -1 if ``data`` is not RTP.

    The allocation-free check used on the relay path; same rules as :func:`parse_rtp`.
    """
    n = len(data)
    if n < RTP_HEADER_SIZE:
        return -1
    b0 = data[0]
    if b0 >> 6 != RTP_VERSION:
        return -1
    offset = RTP_HEADER_SIZE + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        if offset + 4 > n:
            return -1
        offset += 4 + ((data[offset + 2] << 10) | (data[offset + 3] << 2))
    if offset > n:
        return -1
    if b0 & 0x20:
        pad = data[n - 1]
        if pad == 0 or offset + pad > n:
            return -1
    return offset


def get_payload_type(data: bytes | bytearray) -> int:
    """The PT field of an RTP packet (no validation)."""
    return data[1] & 0x7F


def set_payload_type(packet: bytearray, payload_type: int) -> None:
    """Rewrite the PT field in place, keeping the marker bit."""
    packet[1] = (packet[1] & 0x80) | (payload_type & 0x7F)


def set_marker(packet: bytearray, marker: bool) -> None:
    """Set or clear the M bit in place."""
    packet[1] = (packet[1] | 0x80) if marker else (packet[1] & 0x7F)


def set_sequence(packet: bytearray, sequence: int) -> None:
    """Rewrite the sequence number in place (taken modulo 2**16)."""
    _U16.pack_into(packet, 2, sequence & 0xFFFF)


def set_timestamp(packet: bytearray, timestamp: int) -> None:
    """Rewrite the timestamp in place (taken modulo 2**32)."""
    _U32.pack_into(packet, 4, timestamp & 0xFFFFFFFF)


def set_ssrc(packet: bytearray, ssrc: int) -> None:
    """Rewrite the SSRC in place (taken modulo 2**32)."""
    _U32.pack_into(packet, 8, ssrc & 0xFFFFFFFF)


def is_rtcp(data: bytes | bytearray) -> bool:
    """True if ``data`` looks like an RTCP packet: at least 8 octets (RFC 3550 section 6.4),
    version 2 and a packet type in :data:`RTCP_PACKET_TYPES` (RFC 5761 section 4)."""
    return len(data) >= 8 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223
