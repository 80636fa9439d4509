"""Media plane: SDP offer/answer, RTP headers, G.711 and the asyncio RTP relay engine.

Never imports :mod:`sip` or :mod:`switch`.
"""

from .engine import MediaEngine, PortRangeExhausted, RtpEndpoint
from .rtp import RtpError, RtpHeader
from .sdp import (
    Codec,
    MediaDescription,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    audio_codecs,
    build_answer,
    build_offer,
    negotiate,
    remote_rtp_address,
)

__all__ = [
    "Codec",
    "MediaDescription",
    "MediaEngine",
    "PortRangeExhausted",
    "RtpEndpoint",
    "RtpError",
    "RtpHeader",
    "SdpError",
    "SdpNegotiationError",
    "SessionDescription",
    "audio_codecs",
    "build_answer",
    "build_offer",
    "negotiate",
    "remote_rtp_address",
]
