"""WAV files: read any common WAV into 8 kHz mono int16, write PCM / G.711 WAVs, prompt cache.

Reading goes through the stdlib :mod:`wave` module for plain PCM (format tag 1). What ``wave``
cannot read in Python 3.11 is parsed here from the RIFF chunks (``fmt `` and ``data``):

* ``WAVE_FORMAT_ALAW`` (6) and ``WAVE_FORMAT_MULAW`` (7): G.711, 8 bits per sample;
* ``WAVE_FORMAT_IEEE_FLOAT`` (3): 32- or 64-bit float;
* ``WAVE_FORMAT_EXTENSIBLE`` (0xFFFE): the sub-format GUID names one of the above;
* PCM files that ``wave`` rejects for a quirk (e.g. a ``data`` size that runs past the end of
  the file, as left behind by a writer that died before patching the header).

Samples may be 8-bit unsigned, 16-, 24- or 32-bit signed PCM, float or G.711, at any sample
rate, with any number of channels (averaged down to mono). :func:`to_telephony` converts once
to 8 kHz mono int16 with a windowed-sinc (Kaiser) low-pass and polyphase rational resampling,
numpy only. :func:`load_prompt` does both and caches the resulting :class:`Prompt` by
``(path, mtime, size)``; a :class:`Prompt` also caches its G.711 encodings for playback.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import threading
import wave
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = [
    "FORMAT_ALAW",
    "FORMAT_EXTENSIBLE",
    "FORMAT_IEEE_FLOAT",
    "FORMAT_MULAW",
    "FORMAT_PCM",
    "TELEPHONY_RATE",
    "Prompt",
    "WavData",
    "WavError",
    "WavInfo",
    "clear_prompt_cache",
    "load_prompt",
    "load_prompt_async",
    "read_wav",
    "resample",
    "to_telephony",
    "write_wav",
]

#: WAVE format tags (RFC 2361 / mmreg.h).
FORMAT_PCM = 0x0001
FORMAT_IEEE_FLOAT = 0x0003
FORMAT_ALAW = 0x0006
FORMAT_MULAW = 0x0007
FORMAT_EXTENSIBLE = 0xFFFE
#: The rate every prompt is converted to (G.711).
TELEPHONY_RATE = 8000

# The sub-format GUID of WAVE_FORMAT_EXTENSIBLE is the format tag followed by this tail
# (KSDATAFORMAT_SUBTYPE_*: xxxxxxxx-0000-0010-8000-00aa00389b71).
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_FORMAT_NAMES = {
    FORMAT_PCM: "PCM",
    FORMAT_IEEE_FLOAT: "IEEE float",
    FORMAT_ALAW: "A-law",
    FORMAT_MULAW: "mu-law",
}
_MIN_RATE = 1000
_MAX_RATE = 768_000
_MAX_CHANNELS = 32
#: Stop-band attenuation of the resampling filter, dB.
_STOPBAND_DB = 80.0

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]
Encoding = Literal["pcm16", "pcmu", "pcma"]


class WavError(ValueError):
    """A file is not a WAV file we can read, or is damaged; the message says why."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a WAV file's ``fmt `` chunk says (after resolving WAVE_FORMAT_EXTENSIBLE)."""

    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    frames: int

    @property
    def format_name(self) -> str:
        """Human-readable format: ``PCM``, ``mu-law``, ``A-law`` or ``IEEE float``."""
        return _FORMAT_NAMES.get(self.format_tag, f"0x{self.format_tag:04x}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


@dataclass(frozen=True, slots=True)
class WavData:
    """Decoded audio of a WAV file at its own rate: ``samples`` is float64 in [-1, 1) with
    shape ``(frames, channels)``."""

    info: WavInfo
    samples: FloatArray


# --------------------------------------------------------------------------- reading


def read_wav(path: str | os.PathLike[str]) -> WavData:
    """Read and decode a WAV file (any format in the module docstring).

    Raises :class:`WavError` for anything that is not a readable WAV file (wrong magic,
    missing or malformed chunks, unsupported encoding, zero channels or rate, no samples
    region) and ``OSError`` if the file cannot be opened.
    """
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError(f"{p}: not a RIFF/WAVE file")
    try:
        with wave.open(str(p), "rb") as w:
            data = _read_with_wave(w, f"{p}: ")
    except (wave.Error, EOFError, struct.error):
        data = None  # not plain PCM (or a quirk wave rejects): parse the chunks ourselves
    if data is None:
        data = _read_riff(p)
    return data


def _read_with_wave(w: wave.Wave_read, where: str) -> WavData | None:
    channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
    frames = w.getnframes()
    info = WavInfo(FORMAT_PCM, channels, rate, 8 * width, frames)
    _check_info(info, where)
    raw = w.readframes(frames)
    if frames == 0 or len(raw) < frames * channels * width:
        # a data size of 0 (header never patched) or past the end of the file: the RIFF
        # parser takes the samples that are there
        return None
    return WavData(info, _decode(raw, info))


def _read_riff(path: Path) -> WavData:
    raw = path.read_bytes()
    size = len(raw)
    pos = 12
    fmt: bytes | None = None
    data_range: tuple[int, int] | None = None
    while pos + 8 <= size:
        chunk_id = raw[pos : pos + 4]
        (chunk_size,) = struct.unpack_from("<I", raw, pos + 4)
        body = pos + 8
        end = body + chunk_size
        if chunk_id == b"fmt ":
            if end > size:
                raise WavError(f"{path}: fmt chunk runs past the end of the file")
            fmt = raw[body:end]
        elif chunk_id == b"data":
            # a writer that died before patching the header leaves 0 or a size past EOF:
            # take what is in the file
            if chunk_size == 0 or end > size:
                end = size
            data_range = (body, end)
            if fmt is not None:
                break
        pos = end + (chunk_size & 1)  # chunks are padded to an even size
    if fmt is None:
        raise WavError(f"{path}: no fmt chunk")
    if data_range is None:
        raise WavError(f"{path}: no data chunk")
    tag, channels, rate, bits, block_align = _parse_fmt(fmt, path)
    _check_info(WavInfo(tag, channels, rate, bits, 0), f"{path}: ")
    if block_align != channels * bits // 8:
        raise WavError(
            f"{path}: block align {block_align} does not match {channels} channel(s) of {bits} bits"
        )
    data = raw[data_range[0] : data_range[1]]
    frames = len(data) // block_align
    info = WavInfo(tag, channels, rate, bits, frames)
    return WavData(info, _decode(data[: frames * block_align], info))


def _parse_fmt(fmt: bytes, path: Path) -> tuple[int, int, int, int, int]:
    if len(fmt) < 14:
        raise WavError(f"{path}: fmt chunk too short ({len(fmt)} octets)")
    tag, channels, rate, _byte_rate, block_align = struct.unpack_from("<HHIIH", fmt, 0)
    bits = struct.unpack_from("<H", fmt, 14)[0] if len(fmt) >= 16 else 8
    if tag == FORMAT_EXTENSIBLE:
        # WAVEFORMATEXTENSIBLE: cbSize(2) validBits(2) channelMask(4) subFormat GUID(16)
        if len(fmt) < 40:
            raise WavError(f"{path}: WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
        guid = fmt[24:40]
        if guid[2:] != _GUID_TAIL:
            raise WavError(f"{path}: unsupported WAVE_FORMAT_EXTENSIBLE sub-format")
        tag = struct.unpack_from("<H", guid, 0)[0]
    if tag not in _FORMAT_NAMES:
        raise WavError(f"{path}: unsupported WAV format tag 0x{tag:04x}")
    return tag, channels, rate, bits, block_align


def _check_info(info: WavInfo, where: str) -> None:
    if not 1 <= info.channels <= _MAX_CHANNELS:
        raise WavError(f"{where}unsupported channel count {info.channels}")
    if not _MIN_RATE <= info.sample_rate <= _MAX_RATE:
        raise WavError(f"{where}unsupported sample rate {info.sample_rate}")
    allowed = {
        FORMAT_PCM: (8, 16, 24, 32),
        FORMAT_IEEE_FLOAT: (32, 64),
        FORMAT_ALAW: (8,),
        FORMAT_MULAW: (8,),
    }[info.format_tag]
    if info.bits_per_sample not in allowed:
        raise WavError(
            f"{where}{info.bits_per_sample}-bit {info.format_name} is not supported "
            f"(only {', '.join(map(str, allowed))} bits)"
        )


def _decode(data: bytes, info: WavInfo) -> FloatArray:
    """Interleaved sample bytes -> float64 array (frames, channels) in [-1, 1)."""
    tag, bits = info.format_tag, info.bits_per_sample
    flat: FloatArray
    if tag == FORMAT_MULAW:
        flat = ulaw_decode(data).astype(np.float64) / 32768.0
    elif tag == FORMAT_ALAW:
        flat = alaw_decode(data).astype(np.float64) / 32768.0
    elif tag == FORMAT_IEEE_FLOAT:
        flat = np.frombuffer(data, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
        flat = np.nan_to_num(np.clip(flat, -1.0, 1.0))
    elif bits == 8:  # 8-bit PCM is unsigned, 128 = zero
        flat = (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif bits == 16:
        flat = np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0
    elif bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        flat = v.astype(np.float64) / float(1 << 23)
    else:
        flat = np.frombuffer(data, dtype="<i4").astype(np.float64) / float(1 << 31)
    return flat.reshape(-1, info.channels)


# --------------------------------------------------------------------------- resampling


def _kaiser_beta(attenuation: float) -> float:
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation >= 21:
        return float(0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21))
    return 0.0


@dataclass(frozen=True, slots=True)
class _Polyphase:
    up: int
    down: int
    taps: FloatArray  # (up, taps_per_phase): taps[p, k] = h[p + k * up]
    delay: int  # group delay of the prototype filter, in samples at rate src * up


_FILTERS: dict[tuple[int, int], _Polyphase] = {}


def _design(src: int, dst: int) -> _Polyphase:
    key = (src, dst)
    cached = _FILTERS.get(key)
    if cached is not None:
        return cached
    g = math.gcd(src, dst)
    up, down = dst // g, src // g
    nyquist = min(src, dst) / 2.0
    # pass band to 87.5% of the lower Nyquist frequency (3.5 kHz for 8 kHz), stop band from
    # the Nyquist frequency itself, so nothing above it aliases back above -80 dB
    stop = nyquist
    passband = 0.875 * nyquist
    cutoff = (passband + stop) / 2.0
    proto_rate = float(src) * up
    width = 2.0 * math.pi * (stop - passband) / proto_rate  # rad/sample at the proto rate
    n = math.ceil((_STOPBAND_DB - 7.95) / (2.285 * width)) + 1
    per_phase = max(1, math.ceil(n / up))
    n = per_phase * up
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    fc = cutoff / proto_rate  # cycles/sample
    h = 2.0 * fc * np.sinc(2.0 * fc * t) * np.kaiser(n, _kaiser_beta(_STOPBAND_DB))
    h *= up / h.sum()  # unity DC gain after zero-stuffing by `up`
    taps = np.ascontiguousarray(h.reshape(per_phase, up).T)
    design = _Polyphase(up, down, taps, (n - 1) // 2)
    if len(_FILTERS) < 64:
        _FILTERS[key] = design
    return design


def resample(x: npt.ArrayLike, src_rate: int, dst_rate: int) -> FloatArray:
    """Resample a 1-D signal from ``src_rate`` to ``dst_rate`` (positive integers, Hz).

    Rational resampling by ``L/M = dst/src`` (reduced) with one windowed-sinc prototype
    low-pass (Kaiser window, 80 dB stop band starting at the lower Nyquist frequency, pass
    band to 87.5% of it) evaluated in polyphase form, so only the taps that meet a non-zero
    input sample are computed. The output has ``ceil(len(x) * L / M)`` samples and is aligned
    with the input (the filter's delay is compensated).
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError("sample rates must be positive")
    signal = np.asarray(x, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError("resample() takes a 1-D signal")
    if src_rate == dst_rate or signal.size == 0:
        return signal.copy()
    f = _design(src_rate, dst_rate)
    up, down = f.up, f.down
    per_phase = f.taps.shape[1]
    out_len = -(-signal.size * up // down)
    padded = np.concatenate([np.zeros(per_phase), signal, np.zeros(per_phase)])
    out = np.empty(out_len, dtype=np.float64)
    ks = np.arange(per_phase)
    chunk = max(256, (1 << 21) // per_phase)  # bound the gathered matrix to ~16 MB
    for start in range(0, out_len, chunk):
        n = np.arange(start, min(out_len, start + chunk), dtype=np.int64)
        t = n * down + f.delay  # position on the proto-rate grid
        phase = t % up
        base = t // up  # newest input sample under the filter
        idx = base[:, None] - ks[None, :] + per_phase
        np.clip(idx, 0, padded.size - 1, out=idx)
        out[start : start + n.size] = np.einsum("ij,ij->i", f.taps[phase], padded[idx])
    return out


def to_telephony(data: WavData) -> Int16Array:
    """Mix down to mono, resample to 8 kHz and round to int16 (clipping)."""
    mono = data.samples.mean(axis=1) if data.info.channels > 1 else data.samples[:, 0]
    converted = resample(mono, data.info.sample_rate, TELEPHONY_RATE)
    return np.clip(np.rint(converted * 32768.0), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- prompts

_SILENCE = {"PCMU": ulaw_encode(np.zeros(1, dtype=np.int16)), "PCMA": alaw_encode(np.zeros(1))}
_ENCODERS: dict[str, Callable[[Int16Array], bytes]] = {"PCMU": ulaw_encode, "PCMA": alaw_encode}


@dataclass(frozen=True, eq=False)
class Prompt:
    """Audio ready for playback: 8 kHz mono int16 ``samples`` (read-only).

    :meth:`encoded` computes each G.711 encoding once and keeps it, so any number of players
    can share one prompt.
    """

    samples: Int16Array
    name: str = ""
    path: Path | None = None
    _encoded: dict[tuple[str, int], bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        samples = np.ascontiguousarray(self.samples, dtype=np.int16)
        if samples.ndim != 1:
            raise ValueError("prompt samples must be 1-D (mono)")
        samples.flags.writeable = False
        object.__setattr__(self, "samples", samples)

    @classmethod
    def from_samples(cls, samples: npt.ArrayLike, name: str = "") -> Prompt:
        """A prompt from 8 kHz mono samples (anything numpy converts; clipped to int16)."""
        array = np.asarray(samples)
        if array.dtype != np.int16:
            array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
        return cls(array, name=name)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / TELEPHONY_RATE

    def encoded(self, codec: str, frame_samples: int = 160) -> bytes:
        """The prompt in G.711 (``"PCMU"`` or ``"PCMA"``), padded with encoded silence to a
        whole number of ``frame_samples`` frames; computed once per codec and frame size."""
        key = (codec.upper(), frame_samples)
        cached = self._encoded.get(key)
        if cached is not None:
            return cached
        encoder = _ENCODERS.get(key[0])
        if encoder is None:
            raise ValueError(f"unsupported codec {codec!r} (PCMU or PCMA)")
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        pad = -len(self.samples) % frame_samples
        data = encoder(self.samples) + _SILENCE[key[0]] * pad
        self._encoded[key] = data
        return data


_CACHE_SIZE = 256
_cache: OrderedDict[str, tuple[int, int, Prompt]] = OrderedDict()
_cache_lock = threading.Lock()


def load_prompt(path: str | os.PathLike[str]) -> Prompt:
    """Read a WAV file as a :class:`Prompt` (8 kHz mono int16), cached.

    The cache is keyed by the resolved path and revalidated with the file's mtime and size,
    so an edited file is read again; it holds the 256 most recently used prompts. Raises
    :class:`WavError` for a bad file and ``OSError`` (e.g. ``FileNotFoundError``) if it
    cannot be read. Reading blocks; see :func:`load_prompt_async`.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = str(p)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
            _cache.move_to_end(key)
            return hit[2]
    prompt = Prompt(to_telephony(read_wav(p)), name=p.stem, path=p)
    with _cache_lock:
        _cache[key] = (st.st_mtime_ns, st.st_size, prompt)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return prompt


async def load_prompt_async(path: str | os.PathLike[str]) -> Prompt:
    """:func:`load_prompt` in a worker thread, so a first (uncached) load does not stall the
    event loop and the media clock."""
    return await asyncio.to_thread(load_prompt, path)


def clear_prompt_cache() -> None:
    """Forget every cached prompt."""
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------- writing


def write_wav(
    path: str | os.PathLike[str],
    samples: npt.ArrayLike,
    rate: int = TELEPHONY_RATE,
    channels: int = 1,
    *,
    encoding: Encoding = "pcm16",
) -> None:
    """Write a WAV file.

    ``samples`` are int16 values (anything numpy converts; clipped), either 1-D interleaved
    or shaped ``(frames, channels)``. ``encoding`` ``"pcm16"`` writes plain 16-bit PCM
    through :mod:`wave`; ``"pcmu"``/``"pcma"`` write G.711 (format tags 7/6, with the
    ``fact`` chunk that non-PCM WAV files carry).
    """
    if channels < 1:
        raise ValueError("channels must be >= 1")
    if not _MIN_RATE <= rate <= _MAX_RATE:
        raise ValueError(f"unsupported sample rate {rate}")
    array = np.asarray(samples)
    if array.ndim == 2 and array.shape[1] != channels:
        raise ValueError(f"samples have {array.shape[1]} channels, expected {channels}")
    if array.ndim > 2:
        raise ValueError("samples must be 1-D (interleaved) or (frames, channels)")
    if array.dtype != np.int16:
        array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    flat = array.reshape(-1)
    if flat.size % channels:
        raise ValueError("sample count is not a multiple of the channel count")
    frames = flat.size // channels
    if encoding == "pcm16":
        with wave.open(os.fspath(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(flat.astype("<i2").tobytes())
        return
    if encoding == "pcmu":
        tag, data = FORMAT_MULAW, ulaw_encode(flat)
    elif encoding == "pcma":
        tag, data = FORMAT_ALAW, alaw_encode(flat)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    fmt = struct.pack("<HHIIHHH", tag, channels, rate, rate * channels, channels, 8, 0)
    fact = struct.pack("<I", frames)
    body = b"".join(
        [
            b"WAVE",
            b"fmt ",
            struct.pack("<I", len(fmt)),
            fmt,
            b"fact",
            struct.pack("<I", len(fact)),
            fact,
            b"data",
            struct.pack("<I", len(data)),
            data,
            b"\0" * (len(data) & 1),
        ]
    )
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
