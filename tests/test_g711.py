"""G.711 mu-law / A-law tables against values worked out from the G.711 formulas."""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from media.g711 import (
    ALAW_DECODE_TABLE,
    ALAW_TO_ULAW,
    ULAW_DECODE_TABLE,
    ULAW_TO_ALAW,
    alaw_decode,
    alaw_encode,
    alaw_to_ulaw,
    ulaw_decode,
    ulaw_encode,
    ulaw_to_alaw,
)

ALL_CODES = bytes(range(256))


def _ulaw_ref(code: int) -> int:
    # G.711 mu-law, worked by hand: complement, then sign / 3-bit segment / 4-bit step;
    # magnitude = ((2*step + 33) << segment) - 33 in the 14-bit scale, times 4.
    c = ~code & 0xFF
    seg, step = (c >> 4) & 7, c & 0x0F
    mag = (((2 * step + 33) << seg) - 33) * 4
    return -mag if c & 0x80 else mag


def _alaw_ref(code: int) -> int:
    # G.711 A-law: XOR 0x55; segment 0 linear, others doubling; value at the middle of the
    # interval in the 13-bit scale (2*step + 1 or (2*step + 33) << (seg - 1)), times 8.
    c = code ^ 0x55
    seg, step = (c >> 4) & 7, c & 0x0F
    mag13 = 2 * step + 1 if seg == 0 else (2 * step + 33) << (seg - 1)
    return mag13 * 8 if c & 0x80 else -mag13 * 8


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0xFF, 0),
        (0x7F, 0),
        (0x00, -32124),
        (0x80, 32124),
        (0xFE, 8),
        (0x7E, -8),
        (0xEF, 132),
        (0xF0, 120),
    ],
)
def test_ulaw_known_codes(code: int, value: int) -> None:
    assert int(ULAW_DECODE_TABLE[code]) == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0xC5, 264)],
)
def test_alaw_known_codes(code: int, value: int) -> None:
    assert int(ALAW_DECODE_TABLE[code]) == value


def test_decode_tables_match_formulas() -> None:
    assert [int(v) for v in ULAW_DECODE_TABLE] == [_ulaw_ref(c) for c in range(256)]
    assert [int(v) for v in ALAW_DECODE_TABLE] == [_alaw_ref(c) for c in range(256)]
    assert ULAW_DECODE_TABLE.dtype == np.int16 and ALAW_DECODE_TABLE.dtype == np.int16


def test_decode_tables_match_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
        ulaw = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
        alaw = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    assert np.array_equal(ulaw, ULAW_DECODE_TABLE)
    assert np.array_equal(alaw, ALAW_DECODE_TABLE)


def test_encode_known_values() -> None:
    samples = np.array([0, 1, -1, 8, -8, 32767, -32768], dtype=np.int16)
    assert ulaw_encode(samples) == bytes([0xFF, 0xFF, 0x7F, 0xFE, 0x7E, 0x80, 0x00])
    assert alaw_encode(samples) == bytes([0xD5, 0xD5, 0x55, 0xD5, 0x55, 0xAA, 0x2A])


def test_round_trip_all_codes() -> None:
    # every code decodes to a value that re-encodes to itself (mu-law 0x7F is "-0" -> 0xFF)
    expected_ulaw = bytearray(ALL_CODES)
    expected_ulaw[0x7F] = 0xFF
    assert ulaw_encode(ulaw_decode(ALL_CODES)) == bytes(expected_ulaw)
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


def test_encode_is_monotonic() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        decoded = decode(encode(x)).astype(np.int64)
        assert np.all(np.diff(decoded) >= 0)


def test_quantisation_error_bounded() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        err = np.abs(decode(encode(x)).astype(np.int64) - x)
        # relative error of the log segments is at most 1/16 of the value (plus the small
        # step of the first segments and clipping at the top)
        assert np.all(err <= np.abs(x.astype(np.int64)) // 16 + 16 + 640 * (np.abs(x) > 32000))


def test_transcoding_tables() -> None:
    assert len(ULAW_TO_ALAW) == 256 and len(ALAW_TO_ULAW) == 256
    assert ulaw_to_alaw(ALL_CODES) == alaw_encode(ulaw_decode(ALL_CODES))
    assert alaw_to_ulaw(ALL_CODES) == ulaw_encode(alaw_decode(ALL_CODES))
    assert ulaw_to_alaw(b"\xff") == b"\xd5"  # silence maps to silence
    assert alaw_to_ulaw(b"\xd5") == b"\xfe"  # +8 -> +8
    # a transcoding round trip never moves a sample by more than one quantisation step
    back = ulaw_decode(alaw_to_ulaw(ulaw_to_alaw(ALL_CODES))).astype(np.int64)
    orig = ulaw_decode(ALL_CODES).astype(np.int64)
    assert np.all(np.abs(back - orig) <= np.abs(orig) // 8 + 16)


def test_encode_accepts_other_dtypes() -> None:
    assert ulaw_encode([0, 100000, -100000]) == bytes([0xFF, 0x80, 0x00])
    assert alaw_encode(np.array([0.0, 24.0])) == bytes([0xD5, 0xD4])


@given(arrays(np.int16, st.integers(0, 400)))
def test_encode_decode_idempotent(samples: npt.NDArray[np.int16]) -> None:
    coded = ulaw_encode(samples)
    assert len(coded) == len(samples)
    assert ulaw_encode(ulaw_decode(coded)) == coded.replace(b"\x7f", b"\xff")
    coded = alaw_encode(samples)
    assert len(coded) == len(samples)
    assert alaw_encode(alaw_decode(coded)) == coded
