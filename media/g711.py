"""G.711 mu-law and A-law companding with numpy (ITU-T G.711).

All tables are computed at import time from the segment formulas of G.711 (sign bit, 3-bit
segment number, 4-bit step within the segment) in the usual 16-bit linear scale:

* mu-law: ``|x| + 132`` (the bias 0x84) is coded as segment = position of its leading 1
  above bit 7, step = the next 4 bits; the code is the bitwise complement. A negative ``x``
  has magnitude ``-x - 1`` (one's complement, as in the ITU-T G.191 reference coder, so
  -1 codes as "negative zero" 0x7F). Decoding gives
  ``((step << 3) + 132) << segment) - 132`` with the sign; range +-32124.
* A-law: 13-bit magnitudes (``x >> 3``) are coded linearly below 32 (segment 0) and
  logarithmically above; even bits are inverted (XOR 0x55). Decoding gives the middle of the
  quantisation interval scaled by 8; range +-32256, no code for zero (+-8 is the smallest).

Linear samples are ``int16`` numpy arrays; coded audio is ``bytes`` (one octet per sample).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ALAW_TO_ULAW",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "ULAW_TO_ALAW",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_ulaw",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
]

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]

_ULAW_BIAS = 0x84  # 132: G.711 mu-law bias in the 16-bit scale (33 in the 14-bit scale)
_ULAW_CLIP = 32635  # largest magnitude that still fits the top segment after the bias


def _segment(magnitude: npt.NDArray[np.int64], first_bit: int) -> npt.NDArray[np.int64]:
    """Segment number 0..7: how far the leading 1 of ``magnitude`` is above ``first_bit``."""
    seg = np.zeros_like(magnitude)
    for s in range(1, 8):
        seg[magnitude >= (1 << (first_bit + s))] = s
    return seg


def _ulaw_encode_all() -> UInt8Array:
    x = np.arange(-32768, 32768, dtype=np.int64)
    sign = np.where(x < 0, 0x80, 0)
    # negatives use the one's complement magnitude, as the ITU-T G.191 reference coder does
    mag = np.minimum(np.where(x < 0, -x - 1, x), _ULAW_CLIP) + _ULAW_BIAS
    seg = _segment(mag, 7)  # the biased magnitude is always >= 2**7
    step = (mag >> (seg + 3)) & 0x0F
    code = ~(sign | (seg << 4) | step) & 0xFF
    # index by the int16 bit pattern viewed as uint16 (0..65535)
    return np.roll(code.astype(np.uint8), -32768)


def _ulaw_decode_all() -> Int16Array:
    u = ~np.arange(256, dtype=np.int64) & 0xFF
    seg = (u >> 4) & 0x07
    step = u & 0x0F
    mag = (((step << 3) + _ULAW_BIAS) << seg) - _ULAW_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def _alaw_encode_all() -> UInt8Array:
    x = np.arange(-32768, 32768, dtype=np.int64) >> 3  # 13-bit linear
    positive = x >= 0
    mag = np.where(positive, x, -x - 1)  # one's complement for negatives (no negative zero)
    seg = _segment(mag, 4)  # segment 0 and 1 both have 16 steps of size 2 (mag < 32)
    step = np.where(seg < 2, mag >> 1, mag >> seg) & 0x0F
    code = (seg << 4) | step
    code = np.where(mag > 0xFFF, 0x7F, code)  # cannot happen for 16-bit input, kept for safety
    code = code ^ np.where(positive, 0xD5, 0x55)  # sign bit 1 = positive; even bits inverted
    return np.roll(code.astype(np.uint8), -32768)


def _alaw_decode_all() -> Int16Array:
    a = np.arange(256, dtype=np.int64) ^ 0x55
    seg = (a >> 4) & 0x07
    step = a & 0x0F
    # middle of the quantisation interval in the 13-bit scale, times 8 for 16 bits
    mag = np.where(seg == 0, (step << 4) + 8, ((step << 4) + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, mag, -mag).astype(np.int16)


#: mu-law code (0..255) -> linear int16.
ULAW_DECODE_TABLE: Int16Array = _ulaw_decode_all()
#: A-law code (0..255) -> linear int16.
ALAW_DECODE_TABLE: Int16Array = _alaw_decode_all()
#: linear sample (int16 viewed as uint16, 0..65535) -> mu-law code.
ULAW_ENCODE_TABLE: UInt8Array = _ulaw_encode_all()
#: linear sample (int16 viewed as uint16, 0..65535) -> A-law code.
ALAW_ENCODE_TABLE: UInt8Array = _alaw_encode_all()
#: ``bytes.translate`` table: mu-law octet -> A-law octet (decode then re-encode).
ULAW_TO_ALAW: bytes = ALAW_ENCODE_TABLE[ULAW_DECODE_TABLE.view(np.uint16)].tobytes()
#: ``bytes.translate`` table: A-law octet -> mu-law octet (decode then re-encode).
ALAW_TO_ULAW: bytes = ULAW_ENCODE_TABLE[ALAW_DECODE_TABLE.view(np.uint16)].tobytes()


def _as_int16(samples: npt.ArrayLike) -> Int16Array:
    array = np.asarray(samples)
    if array.dtype != np.int16:
        array = np.clip(array, -32768, 32767).astype(np.int16)
    return array


def ulaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """mu-law octets -> int16 samples."""
    return ULAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """A-law octets -> int16 samples."""
    return ALAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(samples: npt.ArrayLike) -> bytes:
    """Linear samples (int16, or anything clipped into int16) -> mu-law octets."""
    return ULAW_ENCODE_TABLE[_as_int16(samples).view(np.uint16)].tobytes()


def alaw_encode(samples: npt.ArrayLike) -> bytes:
    """Linear samples (int16, or anything clipped into int16) -> A-law octets."""
    return ALAW_ENCODE_TABLE[_as_int16(samples).view(np.uint16)].tobytes()


def ulaw_to_alaw(data: bytes | bytearray) -> bytes:
    """Transcode mu-law octets to A-law without going through numpy."""
    return bytes(data).translate(ULAW_TO_ALAW)


def alaw_to_ulaw(data: bytes | bytearray) -> bytes:
    """Transcode A-law octets to mu-law without going through numpy."""
    return bytes(data).translate(ALAW_TO_ULAW)
