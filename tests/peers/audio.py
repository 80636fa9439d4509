"""Audio helpers for interop tests: tone WAVs, frequency/level analysis, a private G.711 codec.

Deliberately independent of the switch's own ``media`` package: interop tests must judge the
switch with code that does not share its bugs. G.711 here follows ITU-T G.711 (the classic
segment/quantisation algorithm), vectorised with numpy.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "dominant_frequency",
    "duration",
    "read_wav",
    "rms",
    "rms_dbfs",
    "tone_samples",
    "ulaw_decode",
    "ulaw_encode",
    "write_tone_wav",
    "write_wav",
]

Samples = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- WAV files


def tone_samples(freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> Samples:
    """A sine tone as floats in -1..1."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    return amplitude * np.sin(2.0 * math.pi * freq * t)


def write_wav(path: str | Path, samples: Samples, rate: int = 8000) -> Path:
    """Write float samples (-1..1, mono) as a 16-bit mono PCM WAV."""
    path = Path(path)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_tone_wav(
    path: str | Path, freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5
) -> Path:
    """Write a 16-bit mono WAV holding a sine tone of ``freq`` Hz (baresip aufile / pjsua)."""
    return write_wav(path, tone_samples(freq, seconds, rate, amplitude), rate)


def read_wav(path: str | Path) -> tuple[Samples, int]:
    """Read a PCM WAV (8/16/32-bit, any channel count) as mono floats in -1..1 and its rate.

    Stereo (baresip records 48 kHz stereo by default) is averaged to mono.
    """
    with wave.open(str(path), "rb") as w:
        channels = w.getnchannels()
        width = w.getsampwidth()
        rate = w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    else:
        raise ValueError(f"{path}: unsupported sample width {width}")
    if channels > 1:
        usable = len(data) - len(data) % channels
        data = data[:usable].reshape(-1, channels).mean(axis=1)
    return data, rate


def duration(path: str | Path) -> float:
    """Length of a WAV file in seconds."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def _as_samples(source: str | Path | Samples, rate: int | None) -> tuple[Samples, int]:
    if isinstance(source, (str, Path)):
        return read_wav(source)
    if rate is None:
        raise ValueError("rate is required when passing samples")
    return np.asarray(source, dtype=np.float64), rate


def rms(source: str | Path | Samples, rate: int | None = None, *, skip: float = 0.0) -> float:
    """Root-mean-square level (0..1 full scale) of a WAV file or sample array.

    ``skip`` seconds are ignored at the start (jitter-buffer silence, ringing...).
    """
    data, sr = _as_samples(source, rate)
    data = data[int(skip * sr):]
    if len(data) == 0:
        return 0.0
    return float(np.sqrt(np.mean(data * data)))


def loud_seconds(path: str | Path, threshold: float = 0.05) -> float:
    """Seconds of 20 ms blocks of a WAV whose RMS level is above ``threshold`` (full scale 1)."""
    data, rate = read_wav(path)
    block = max(1, rate // 50)
    n = len(data) // block
    if n == 0:
        return 0.0
    blocks = data[: n * block].reshape(n, block)
    levels = np.sqrt(np.mean(blocks * blocks, axis=1))
    return float(np.count_nonzero(levels > threshold)) * block / rate


def rms_dbfs(source: str | Path | Samples, rate: int | None = None, *, skip: float = 0.0) -> float:
    """RMS level in dBFS (a full-scale sine is about -3 dBFS; silence is -inf)."""
    level = rms(source, rate, skip=skip)
    return 20.0 * math.log10(level) if level > 0 else float("-inf")


def dominant_frequency(
    source: str | Path | Samples,
    rate: int | None = None,
    *,
    skip: float = 0.0,
    min_freq: float = 50.0,
    only_loud: bool = True,
) -> float:
    """The strongest frequency (Hz) in a WAV file or sample array, via a windowed numpy FFT.

    Works for any rate (8k/16k/48k) and channel count. With ``only_loud`` the analysis uses only
    the 20 ms blocks whose level is at least a tenth of the loudest block, so leading/trailing
    silence in a recording does not dilute the spectrum. Returns 0.0 for silence.
    """
    data, sr = _as_samples(source, rate)
    data = data[int(skip * sr):]
    if len(data) < 16:
        return 0.0
    if only_loud:
        block = max(16, sr // 50)
        nblocks = len(data) // block
        if nblocks >= 2:
            blocks = data[: nblocks * block].reshape(nblocks, block)
            levels = np.sqrt(np.mean(blocks * blocks, axis=1))
            peak = float(levels.max())
            if peak <= 0.0:
                return 0.0
            data = blocks[levels >= peak * 0.1].reshape(-1)
    if not np.any(data):
        return 0.0
    window = np.hanning(len(data))
    spectrum = np.abs(np.fft.rfft((data - data.mean()) * window))
    freqs = np.fft.rfftfreq(len(data), 1.0 / sr)
    spectrum[freqs < min_freq] = 0.0
    peak_index = int(np.argmax(spectrum))
    # parabolic interpolation between FFT bins for sub-bin accuracy
    if 0 < peak_index < len(spectrum) - 1:
        a, b, c = spectrum[peak_index - 1 : peak_index + 2]
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
        return float((peak_index + offset) * sr / len(data))
    return float(freqs[peak_index])


# --------------------------------------------------------------------------- G.711

_BIAS = 0x84


def _to_pcm16(samples: Samples | npt.NDArray[np.int16]) -> npt.NDArray[np.int32]:
    arr: npt.NDArray[Any] = np.asarray(samples)
    if arr.dtype.kind == "f":
        scaled: npt.NDArray[np.float64] = np.round(arr.astype(np.float64) * 32767.0)
        return np.clip(scaled, -32768, 32767).astype(np.int32)
    return arr.astype(np.int32)


def ulaw_encode(samples: Samples | npt.NDArray[np.int16]) -> bytes:
    """G.711 mu-law encode (floats in -1..1 or int16 PCM) to bytes (payload type 0)."""
    pcm = _to_pcm16(samples) >> 2          # mu-law works on 14-bit values
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.where(pcm < 0, -pcm, pcm), 8159) + 0x21
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
    seg = np.searchsorted(seg_end, mag, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """G.711 mu-law decode bytes to int16 PCM."""
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def alaw_encode(samples: Samples | npt.NDArray[np.int16]) -> bytes:
    """G.711 A-law encode (floats in -1..1 or int16 PCM) to bytes (payload type 8)."""
    pcm = _to_pcm16(samples) >> 3          # A-law works on 13-bit magnitudes
    sign = np.where(pcm >= 0, 0x80, 0x00)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
    seg = np.searchsorted(seg_end, mag, side="left")
    clipped = seg >= 8
    seg_c = np.minimum(seg, 7)
    mant = np.where(seg_c < 2, (mag >> 1) & 0x0F, (mag >> seg_c) & 0x0F)
    code = np.where(clipped, 0x7F, (seg_c << 4) | mant)
    return ((code | sign) ^ 0x55).astype(np.uint8).tobytes()


def alaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """G.711 A-law decode bytes to int16 PCM."""
    code = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    seg = (code & 0x70) >> 4
    mant = (code & 0x0F) << 4
    shifted = (mant + 0x108) << np.maximum(seg - 1, 0)
    mag = np.where(seg == 0, mant + 8, shifted)
    return np.where(code & 0x80, mag, -mag).astype(np.int16)
