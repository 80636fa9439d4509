"""SDP parsing/serialisation (RFC 4566) and offer/answer (RFC 3264)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.sdp import (
    DEFAULT_CODECS,
    MAX_SDP_BYTES,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Codec,
    MediaDescription,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    audio_codecs,
    build_answer,
    build_offer,
    is_on_hold,
    negotiate,
    remote_rtcp_address,
    remote_rtp_address,
    stream_direction,
)

# SIPp's built-in uac_pcap scenario (placeholders filled in), LF line ends as in the XML.
SIPP_UAC_PCAP = (
    b"v=0\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\n"
    b"s=-\n"
    b"c=IN IP4 127.0.0.1\n"
    b"t=0 0\n"
    b"m=audio 6000 RTP/AVP 8 101\n"
    b"a=rtpmap:8 PCMA/8000\n"
    b"a=rtpmap:101 telephone-event/8000\n"
    b"a=fmtp:101 0-11,16\n"
)

# Shaped like a baresip offer: opus first, static PTs without rtpmap, telephone-event,
# RFC 3605 a=rtcp, bandwidth and unknown attributes.
BARESIP_OFFER = (
    b"v=0\r\n"
    b"o=- 1402217372 3938127110 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 10020 RTP/AVP 96 9 0 8 101\r\n"
    b"b=AS:128\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=rtcp:10021\r\n"
    b"a=sendrecv\r\n"
    b"a=label:1\r\n"
    b"a=ssrc:2518219380 cname:8f1a0c2e\r\n"
    b"a=rtcp-rsize\r\n"
    b"a=ptime:20\r\n"
)

PCMA_ONLY = (
    b"v=0\r\n"
    b"o=carrier 1 1 IN IP4 203.0.113.5\r\n"
    b"s=SBC\r\n"
    b"c=IN IP4 203.0.113.5\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8\r\n"
    b"a=ptime:20\r\n"
)

IPV6_OFFER = (
    b"v=0\r\n"
    b"o=- 42 1 IN IP6 2001:db8::10\r\n"
    b"s=-\r\n"
    b"t=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0 96\r\n"
    b"c=IN IP6 2001:DB8::10\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\n"
    b"a=fmtp:96 0-16\r\n"
)

HOLD_OLD_STYLE = (
    b"v=0\r\n"
    b"o=- 7 2 IN IP4 192.0.2.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 0.0.0.0\r\n"
    b"t=0 0\r\n"
    b"m=audio 7078 RTP/AVP 0\r\n"
)

HOLD_SENDONLY = (
    b"v=0\r\n"
    b"o=- 7 3 IN IP4 192.0.2.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"a=sendonly\r\n"
    b"m=audio 7078 RTP/AVP 0 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


# -- parsing --------------------------------------------------------------------------------


def test_parse_sipp_uac_pcap() -> None:
    sdp = SessionDescription.parse(SIPP_UAC_PCAP)
    assert sdp.origin.username == "user1"
    assert sdp.origin.session_id == 53655765
    assert sdp.origin.version == 2353687637
    assert sdp.origin.address == "127.0.0.1"
    assert sdp.connection == "127.0.0.1"
    assert sdp.timing == [(0, 0)]
    (m,) = sdp.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 6000, "RTP/AVP", ["8", "101"])
    assert m.rtpmap == {8: ("PCMA", 8000, 1), 101: ("telephone-event", 8000, 1)}
    assert m.fmtp == {101: "0-11,16"}
    assert m.direction is None
    assert stream_direction(sdp, m) == "sendrecv"
    assert audio_codecs(sdp) == [
        Codec("PCMA", 8, 8000),
        Codec("telephone-event", 101, 8000, "0-11,16"),
    ]
    assert remote_rtp_address(sdp) == ("127.0.0.1", 6000)
    assert remote_rtcp_address(sdp) == ("127.0.0.1", 6001)


def test_parse_baresip_offer() -> None:
    sdp = SessionDescription.parse(BARESIP_OFFER)
    m = sdp.media[0]
    assert m.bandwidths == [("AS", 128)]
    assert m.ptime == 20
    assert m.direction == "sendrecv"
    assert m.attribute("rtcp-rsize") == ""
    assert m.attribute("label") == "1"
    assert m.attribute("nope") is None
    names = [(c.name, c.payload_type, c.clock_rate, c.channels) for c in audio_codecs(sdp)]
    assert names == [
        ("opus", 96, 48000, 2),
        ("G722", 9, 8000, 1),
        ("PCMU", 0, 8000, 1),
        ("PCMA", 8, 8000, 1),
        ("telephone-event", 101, 8000, 1),
    ]
    assert remote_rtcp_address(sdp) == ("192.0.2.10", 10021)


def test_parse_ipv6_media_level_connection() -> None:
    sdp = SessionDescription.parse(IPV6_OFFER)
    assert sdp.connection is None
    assert sdp.media[0].connection == "2001:DB8::10"
    assert sdp.origin.addrtype == "IP6"
    assert remote_rtp_address(sdp) == ("2001:DB8::10", 5004)
    out = sdp.to_bytes()
    assert b"c=IN IP6 2001:DB8::10\r\n" in out
    assert b"o=- 42 1 IN IP6 2001:db8::10\r\n" in out


def test_media_connection_overrides_session() -> None:
    data = SIPP_UAC_PCAP + b"c=IN IP4 10.0.0.9\n"
    sdp = SessionDescription.parse(data)
    assert sdp.connection == "127.0.0.1"
    assert remote_rtp_address(sdp) == ("10.0.0.9", 6000)


def test_hold_old_style_has_no_address() -> None:
    sdp = SessionDescription.parse(HOLD_OLD_STYLE)
    assert remote_rtp_address(sdp) is None
    assert is_on_hold(sdp)


def test_hold_sendonly_session_level() -> None:
    sdp = SessionDescription.parse(HOLD_SENDONLY)
    assert sdp.direction == "sendonly"
    assert stream_direction(sdp, sdp.media[0]) == "sendonly"
    assert remote_rtp_address(sdp) == ("192.0.2.20", 7078)
    assert is_on_hold(sdp)
    assert not is_on_hold(SessionDescription.parse(SIPP_UAC_PCAP))


def test_port_zero_has_no_address() -> None:
    sdp = SessionDescription.parse(SIPP_UAC_PCAP.replace(b"audio 6000", b"audio 0"))
    assert remote_rtp_address(sdp) is None
    assert audio_codecs(sdp) == []


def test_round_trip_preserves_everything() -> None:
    sdp = SessionDescription.parse(BARESIP_OFFER)
    again = SessionDescription.parse(sdp.to_bytes())
    assert again == sdp
    assert sdp.to_bytes() == BARESIP_OFFER


def test_output_is_crlf_for_lf_input() -> None:
    out = SessionDescription.parse(SIPP_UAC_PCAP).to_bytes()
    assert out.endswith(b"\r\n")
    assert out.count(b"\n") == out.count(b"\r\n") == SIPP_UAC_PCAP.count(b"\n")
    assert out.replace(b"\r\n", b"\n") == SIPP_UAC_PCAP


def test_unknown_lines_tolerated_and_kept() -> None:
    data = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=call\r\ni=info\r\nu=http://x\r\n"
        b"e=a@b.c\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nr=604800 3600 0\r\nz=0 0\r\n"
        b"y=whatever\r\na=tool:x\r\n"
        b"m=audio 4000 RTP/AVP 0\r\ni=media info\r\nk=prompt\r\nx=odd\r\n\r\n"
    )
    sdp = SessionDescription.parse(data)
    assert ("y", "whatever") in sdp.extra_lines
    assert sdp.media[0].extra_lines == [("i", "media info"), ("k", "prompt"), ("x", "odd")]
    assert sdp.attributes == [("tool", "x")]
    assert SessionDescription.parse(sdp.to_bytes()) == sdp


def test_missing_s_and_t_tolerated() -> None:
    sdp = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n")
    assert sdp.session_name == "-"
    assert sdp.timing == [(0, 0)]
    assert b"s=-\r\n" in sdp.to_bytes()
    assert b"t=0 0\r\n" in sdp.to_bytes()


def test_latin1_session_name_tolerated() -> None:
    sdp = SessionDescription.parse(SIPP_UAC_PCAP.replace(b"s=-", b"s=caf\xe9"))
    assert sdp.session_name == "café"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",  # v= not first
        b"v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
        b"v=0\r\ns=-\r\n",  # no o=
        b"v=0\r\no=- 1 1 IN IP4\r\n",
        b"v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nthis is not sdp\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=ATM NSAP 1\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP5 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 ::1\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP6 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nb=AS\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nb=AS:fast\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio -1 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1/x RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=a\x00b\r\n",
        b"v=0\r\nv=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
    ],
)
def test_invalid_sdp_raises(data: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(data)


def test_size_limits() -> None:
    huge = SIPP_UAC_PCAP + b"a=x:" + b"y" * MAX_SDP_BYTES + b"\n"
    with pytest.raises(SdpError, match="larger"):
        SessionDescription.parse(huge)
    many_lines = SIPP_UAC_PCAP + b"a=x\n" * 2000
    with pytest.raises(SdpError, match="lines"):
        SessionDescription.parse(many_lines)
    many_media = SIPP_UAC_PCAP + b"m=audio 0 RTP/AVP 0\n" * 100
    with pytest.raises(SdpError, match="m= lines"):
        SessionDescription.parse(many_media)
    many_formats = b"v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 1 RTP/AVP " + b" 0" * 200 + b"\n"
    with pytest.raises(SdpError, match="formats"):
        SessionDescription.parse(many_formats)


@given(st.binary(max_size=600))
def test_parse_random_bytes_only_raises_sdp_error(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    sdp.to_bytes()
    audio_codecs(sdp)
    remote_rtp_address(sdp)


@given(
    st.lists(
        st.sampled_from(
            [
                "v=0",
                "o=- 1 2 IN IP4 1.2.3.4",
                "s=-",
                "c=IN IP4 1.2.3.4",
                "c=IN IP6 ::1",
                "t=0 0",
                "m=audio 4000 RTP/AVP 0 8 101",
                "m=video 0 RTP/AVP 31",
                "a=rtpmap:101 telephone-event/8000",
                "a=rtpmap:bad",
                "a=fmtp:101 0-16",
                "a=sendonly",
                "a=ptime:x",
                "b=AS:1",
                "x=1",
                "",
            ]
        ),
        max_size=20,
    )
)
def test_parse_random_line_soup(lines: list[str]) -> None:
    data = "\r\n".join(["v=0", "o=- 1 1 IN IP4 1.1.1.1", *lines]).encode()
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    assert SessionDescription.parse(sdp.to_bytes()).to_bytes() == sdp.to_bytes()
    try:
        negotiate(sdp)
    except SdpNegotiationError:
        pass


def test_bump_version() -> None:
    offer = build_offer("192.0.2.1", 4000, DEFAULT_CODECS, session_id=99, version=5)
    assert offer.bump_version() == 6
    assert b"o=- 99 6 IN IP4 192.0.2.1\r\n" in offer.to_bytes()


def test_malformed_rtpmap_ignored() -> None:
    m = MediaDescription(
        "audio",
        1,
        formats=["96", "0"],
        attributes=[("rtpmap", "96"), ("rtpmap", "x y/z"), ("ptime", "abc")],
    )
    assert m.rtpmap == {}
    assert m.ptime is None
    sdp = SessionDescription(media=[m], connection="1.2.3.4")
    assert audio_codecs(sdp) == [PCMU]


def test_direction_setter() -> None:
    m = MediaDescription("audio", 1, formats=["0"], attributes=[("sendrecv", None)])
    m.direction = "inactive"
    assert m.attributes == [("inactive", None)]
    m.direction = None
    assert m.attributes == []
    with pytest.raises(ValueError):
        m.direction = "sideways"


# -- negotiation ------------------------------------------------------------------------------


def test_negotiate_keeps_offer_order_and_te_pt() -> None:
    sdp = SessionDescription.parse(BARESIP_OFFER)
    codecs = negotiate(sdp)
    assert codecs == [PCMU, PCMA, Codec("telephone-event", 101, 8000, "0-15")]


def test_negotiate_pcma_first_when_offered_first() -> None:
    data = BARESIP_OFFER.replace(b"96 9 0 8 101", b"8 96 0 101")
    assert [c.name for c in negotiate(SessionDescription.parse(data))] == [
        "PCMA",
        "PCMU",
        "telephone-event",
    ]


def test_negotiate_te_dynamic_pt_preserved() -> None:
    codecs = negotiate(SessionDescription.parse(IPV6_OFFER))
    assert codecs == [PCMU, Codec("telephone-event", 96, 8000, "0-16")]


def test_negotiate_static_without_rtpmap() -> None:
    assert negotiate(SessionDescription.parse(PCMA_ONLY)) == [PCMA]


def test_negotiate_supported_subset() -> None:
    sdp = SessionDescription.parse(BARESIP_OFFER)
    assert negotiate(sdp, supported=("pcma",)) == [PCMA]


def test_negotiate_case_insensitive_names() -> None:
    data = SIPP_UAC_PCAP.replace(b"PCMA/8000", b"pcma/8000").replace(
        b"telephone-event", b"Telephone-Event"
    )
    codecs = negotiate(SessionDescription.parse(data))
    assert [c.name for c in codecs] == ["PCMA", "telephone-event"]


def test_negotiate_rejects_wrong_clock_rate_te() -> None:
    data = (
        b"v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4\nt=0 0\n"
        b"m=audio 4000 RTP/AVP 111 0 110 101\n"
        b"a=rtpmap:111 opus/48000/2\na=rtpmap:110 telephone-event/48000\n"
        b"a=rtpmap:101 telephone-event/8000\n"
    )
    codecs = negotiate(SessionDescription.parse(data))
    assert codecs == [PCMU, Codec("telephone-event", 101, 8000)]


def test_negotiate_no_common_codec() -> None:
    data = (
        b"v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4\nt=0 0\n"
        b"m=audio 4000 RTP/AVP 18 101\na=rtpmap:101 telephone-event/8000\n"
    )
    with pytest.raises(SdpNegotiationError):
        negotiate(SessionDescription.parse(data))
    with pytest.raises(SdpNegotiationError):
        build_answer(
            SessionDescription.parse(data), "192.0.2.1", 4000, DEFAULT_CODECS, session_id=1
        )


def test_negotiate_no_audio_or_srtp_only() -> None:
    video = b"v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4\nt=0 0\nm=video 4000 RTP/AVP 96\n"
    with pytest.raises(SdpNegotiationError):
        negotiate(SessionDescription.parse(video))
    srtp = SIPP_UAC_PCAP.replace(b"RTP/AVP", b"RTP/SAVP")
    with pytest.raises(SdpNegotiationError):
        negotiate(SessionDescription.parse(srtp))
    assert issubclass(SdpNegotiationError, SdpError)


# -- offers and answers -----------------------------------------------------------------------


def test_build_offer() -> None:
    offer = build_offer("192.0.2.1", 20000, DEFAULT_CODECS, session_id=1234, ptime=20)
    assert offer.to_bytes() == (
        b"v=0\r\n"
        b"o=- 1234 0 IN IP4 192.0.2.1\r\n"
        b"s=-\r\n"
        b"c=IN IP4 192.0.2.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 20000 RTP/AVP 0 8 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    parsed = SessionDescription.parse(offer.to_bytes())
    assert negotiate(parsed) == list(DEFAULT_CODECS)
    assert remote_rtp_address(parsed) == ("192.0.2.1", 20000)


def test_build_offer_ipv6_and_hold() -> None:
    offer = build_offer("2001:db8::5", 20002, [PCMU], session_id=1, direction="sendonly")
    out = offer.to_bytes()
    assert b"o=- 1 0 IN IP6 2001:db8::5\r\n" in out
    assert b"c=IN IP6 2001:db8::5\r\n" in out
    assert b"a=sendonly\r\n" in out
    with pytest.raises(ValueError):
        build_offer("1.2.3.4", 1, [PCMU], session_id=1, direction="up")
    with pytest.raises(ValueError):
        build_offer("1.2.3.4", 1, [], session_id=1)


def test_answer_to_sipp() -> None:
    offer = SessionDescription.parse(SIPP_UAC_PCAP)
    answer = build_answer(offer, "127.0.0.1", 20000, negotiate(offer), session_id=77)
    assert answer.to_bytes() == (
        b"v=0\r\n"
        b"o=- 77 0 IN IP4 127.0.0.1\r\n"
        b"s=-\r\n"
        b"c=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 20000 RTP/AVP 8 101\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-11,16\r\n"
        b"a=sendrecv\r\n"
    )


def test_answer_uses_offered_pt_for_our_codecs() -> None:
    offer = SessionDescription.parse(IPV6_OFFER)
    # our preference carries telephone-event at 101; the offer has it at 96
    answer = build_answer(offer, "2001:db8::1", 20000, [PCMA, PCMU, TELEPHONE_EVENT], session_id=1)
    m = answer.media[0]
    assert m.formats == ["0", "96"]
    assert m.rtpmap[96] == ("telephone-event", 8000, 1)
    assert m.fmtp == {96: "0-16"}
    assert answer.connection == "2001:db8::1"


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_mirrors_direction(offered: str, answered: str) -> None:
    offer = SessionDescription.parse(SIPP_UAC_PCAP + f"a={offered}\n".encode())
    answer = build_answer(offer, "127.0.0.1", 20000, negotiate(offer), session_id=1)
    assert answer.media[0].direction == answered


def test_answer_mirrors_session_level_direction() -> None:
    offer = SessionDescription.parse(HOLD_SENDONLY)
    answer = build_answer(offer, "127.0.0.1", 20000, negotiate(offer), session_id=1)
    assert answer.media[0].direction == "recvonly"


def test_answer_direction_override_combines() -> None:
    offer = SessionDescription.parse(SIPP_UAC_PCAP + b"a=sendonly\n")
    answer = build_answer(
        offer, "127.0.0.1", 1, negotiate(offer), session_id=1, direction="sendonly"
    )
    assert answer.media[0].direction == "inactive"
    offer = SessionDescription.parse(SIPP_UAC_PCAP)
    answer = build_answer(
        offer, "127.0.0.1", 1, negotiate(offer), session_id=1, direction="sendonly"
    )
    assert answer.media[0].direction == "sendonly"


def test_answer_rejects_extra_streams() -> None:
    data = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        b"m=audio 5002 RTP/SAVP 0\r\n"
        b"m=audio 5004 RTP/AVP 0 8\r\n"
        b"m=audio 5006 RTP/AVP 8\r\n"
        b"m=application 5008 UDP/BFCP *\r\n"
    )
    offer = SessionDescription.parse(data)
    answer = build_answer(offer, "127.0.0.1", 20000, negotiate(offer), session_id=1)
    assert [(m.media, m.port, m.proto, m.formats) for m in answer.media] == [
        ("video", 0, "RTP/AVP", ["96"]),
        ("audio", 0, "RTP/SAVP", ["0"]),
        ("audio", 20000, "RTP/AVP", ["0", "8"]),
        ("audio", 0, "RTP/AVP", ["8"]),
        ("application", 0, "UDP/BFCP", ["*"]),
    ]
    assert remote_rtp_address(offer) == ("192.0.2.1", 5004)
    # the answer parses and points at the accepted stream
    assert remote_rtp_address(SessionDescription.parse(answer.to_bytes())) == ("127.0.0.1", 20000)


def test_answer_only_te_is_no_common_codec() -> None:
    offer = SessionDescription.parse(SIPP_UAC_PCAP)
    with pytest.raises(SdpNegotiationError):
        build_answer(offer, "127.0.0.1", 1, [TELEPHONE_EVENT], session_id=1)
    with pytest.raises(SdpNegotiationError):
        build_answer(offer, "127.0.0.1", 1, [PCMU], session_id=1)  # PCMU not offered


def test_answer_copies_timing() -> None:
    offer = SessionDescription.parse(SIPP_UAC_PCAP.replace(b"t=0 0", b"t=3034423619 0"))
    answer = build_answer(offer, "127.0.0.1", 1, negotiate(offer), session_id=1)
    assert answer.timing == [(3034423619, 0)]
