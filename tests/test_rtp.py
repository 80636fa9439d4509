"""RTP header parse/build (RFC 3550 section 5.1) and in-place rewrite helpers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import (
    RtpError,
    RtpHeader,
    build_rtp,
    get_payload_type,
    is_rtcp,
    parse_rtp,
    rtp_header_length,
    set_marker,
    set_payload_type,
    set_sequence,
    set_ssrc,
    set_timestamp,
    split_rtp,
)

# A PCMU packet as written by hand from RFC 3550 figure 1: V=2, M=1, PT=0, seq 0x1234,
# ts 0x00000a0b, ssrc 0xdeadbeef, 4 payload octets.
SIMPLE = bytes.fromhex("8080123400000a0bdeadbeefffff7f7f")


def test_parse_simple() -> None:
    h = parse_rtp(SIMPLE)
    assert h == RtpHeader(
        payload_type=0, sequence=0x1234, timestamp=0x0A0B, ssrc=0xDEADBEEF, marker=True
    )
    assert h.header_length == 12
    assert not h.extension and h.csrc_count == 0 and not h.padding
    assert RtpHeader.parse(SIMPLE) == h
    assert split_rtp(SIMPLE) == (h, bytes.fromhex("ffff7f7f"))


def test_build_simple() -> None:
    h = RtpHeader(payload_type=0, sequence=0x1234, timestamp=0x0A0B, ssrc=0xDEADBEEF, marker=True)
    assert h.build(bytes.fromhex("ffff7f7f")) == SIMPLE
    assert build_rtp(h, bytes.fromhex("ffff7f7f")) == SIMPLE


def test_csrc_extension_padding_round_trip() -> None:
    h = RtpHeader(
        payload_type=101,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=1,
        csrcs=(10, 20, 30),
        extension_profile=0xBEDE,
        extension_data=b"\x10\xaa\x00\x00",
        padding=True,
        padding_length=3,
    )
    packet = h.build(b"\x01\x02\x03\x04")
    assert len(packet) == 12 + 12 + 8 + 4 + 3
    parsed, payload = split_rtp(packet)
    assert parsed == h
    assert parsed.header_length == 32
    assert payload == b"\x01\x02\x03\x04"
    assert rtp_header_length(packet) == 32


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (SIMPLE[:11], "short"),
        (b"\x40" + SIMPLE[1:], "version"),  # V=1
        (b"\x00" + SIMPLE[1:], "version"),
        (b"\xc0" + SIMPLE[1:], "version"),  # V=3
        (b"\x82" + SIMPLE[1:], "CSRC"),  # CC=2 but only 4 payload octets
        (b"\x90" + SIMPLE[1:12] + b"\xbe\xde", "extension"),  # X=1, no room for its header
        (b"\x90" + SIMPLE[1:12] + b"\xbe\xde\x00\x02\x00\x00\x00\x00", "extension"),
        (b"\xa0" + SIMPLE[1:-1] + b"\x00", "padding"),  # P=1, count 0
        (b"\xa0" + SIMPLE[1:-1] + b"\x05", "padding"),  # count larger than payload
    ],
)
def test_invalid_packets(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)
    assert rtp_header_length(data) == -1


def test_padding_may_fill_whole_payload() -> None:
    data = b"\xa0" + SIMPLE[1:12] + b"\x00\x00\x00\x04"
    h, payload = split_rtp(data)
    assert h.padding_length == 4 and payload == b""


def test_build_validates() -> None:
    with pytest.raises(ValueError):
        RtpHeader(payload_type=128, sequence=0, timestamp=0, ssrc=0).build()
    with pytest.raises(ValueError):
        RtpHeader(payload_type=0, sequence=0, timestamp=0, ssrc=0, csrcs=(0,) * 16).build()
    with pytest.raises(ValueError):
        RtpHeader(
            payload_type=0,
            sequence=0,
            timestamp=0,
            ssrc=0,
            extension_profile=1,
            extension_data=b"abc",
        ).build()
    with pytest.raises(ValueError):
        RtpHeader(
            payload_type=0, sequence=0, timestamp=0, ssrc=0, padding=True, padding_length=256
        ).build()


def test_in_place_rewrites() -> None:
    buf = bytearray(SIMPLE)
    set_payload_type(buf, 96)
    assert get_payload_type(buf) == 96
    assert buf[1] & 0x80  # marker kept
    set_marker(buf, False)
    assert buf[1] == 96
    set_marker(buf, True)
    set_sequence(buf, 70000)
    set_timestamp(buf, 2**32 + 5)
    set_ssrc(buf, 0x01020304)
    h = parse_rtp(buf)
    assert (h.payload_type, h.marker, h.sequence, h.timestamp, h.ssrc) == (
        96,
        True,
        70000 % 65536,
        5,
        0x01020304,
    )
    assert buf[12:] == SIMPLE[12:]


def test_is_rtcp() -> None:
    # RR with no report blocks: V=2, RC=0, PT=201, length=1, SSRC
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x11223344)
    assert is_rtcp(rr)
    for pt in (200, 202, 203, 204, 205, 206, 207):
        assert is_rtcp(struct.pack("!BBHI", 0x80, pt, 1, 1))
    assert not is_rtcp(SIMPLE)  # PT 0 with marker is RTP
    assert not is_rtcp(struct.pack("!BBHI", 0x40, 201, 1, 1))  # version 1
    assert not is_rtcp(rr[:7])


headers = st.builds(
    RtpHeader,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    padding=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension_profile=st.none() | st.integers(0, 0xFFFF),
    extension_data=st.binary(max_size=16).map(lambda b: b[: len(b) - len(b) % 4]),
    padding_length=st.integers(1, 255),
)


@given(headers, st.binary(max_size=200))
def test_round_trip_property(header: RtpHeader, payload: bytes) -> None:
    if header.extension_profile is None:
        header.extension_data = b""
    if not header.padding:
        header.padding_length = 0
    packet = header.build(payload)
    parsed, got = split_rtp(packet)
    assert parsed == header
    assert got == payload
    assert rtp_header_length(packet) == parsed.header_length
    assert parsed.build(payload) == packet


@given(st.binary(max_size=120))
def test_random_bytes_give_header_or_rtp_error(data: bytes) -> None:
    try:
        header = parse_rtp(data)
    except RtpError:
        assert rtp_header_length(data) == -1
        return
    assert rtp_header_length(data) == header.header_length
    assert 12 <= header.header_length <= len(data)
    assert header.header_length + header.padding_length <= len(data)
