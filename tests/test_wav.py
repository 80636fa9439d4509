"""WAV reading (every format / rate / channel layout), resampling, writing, prompt cache and the
built-in prompt files."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.prompts import (
    LANGUAGES,
    PROMPTS_DIR,
    SHARED_PROMPTS,
    SPOKEN_PROMPTS,
    PromptLibrary,
    PromptNotFound,
    builtin_prompt,
    builtin_prompt_names,
)
from media.wav import (
    FORMAT_ALAW,
    FORMAT_EXTENSIBLE,
    FORMAT_IEEE_FLOAT,
    FORMAT_MULAW,
    FORMAT_PCM,
    Prompt,
    WavError,
    clear_prompt_cache,
    load_prompt,
    load_prompt_async,
    read_wav,
    resample,
    write_wav,
)

RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- helpers


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> FloatArray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def riff(
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    data: bytes,
    *,
    extensible: bool = False,
    extra: bytes = b"",
    data_size: int | None = None,
) -> bytes:
    """A WAV file built chunk by chunk (``extra`` chunks go between fmt and data)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if extensible:
        guid = struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = (
            struct.pack("<HHIIHH", FORMAT_EXTENSIBLE, channels, rate, rate * block, block, bits)
            + struct.pack("<HHI", 22, bits, 0x3 if channels == 2 else 0x4)
            + guid
        )
    elif tag != FORMAT_PCM:
        fmt += struct.pack("<H", 0)
    size = len(data) if data_size is None else data_size
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + extra
        + b"data"
        + struct.pack("<I", size)
        + data
        + b"\0" * (len(data) & 1)
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encode(kind: str, x: FloatArray) -> tuple[int, int, bytes, bool]:
    """Encode float samples (interleaved) -> (tag, bits, data, extensible)."""
    i16 = np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16)
    if kind == "pcm8":
        return FORMAT_PCM, 8, (np.rint(x * 127) + 128).astype(np.uint8).tobytes(), False
    if kind == "pcm16":
        return FORMAT_PCM, 16, i16.astype("<i2").tobytes(), False
    if kind == "pcm24":
        v = np.rint(x * (2**23 - 1)).astype(np.int32)
        b = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8)
        return FORMAT_PCM, 24, b.tobytes(), True
    if kind == "float32":
        return FORMAT_IEEE_FLOAT, 32, x.astype("<f4").tobytes(), False
    if kind == "pcmu":
        return FORMAT_MULAW, 8, ulaw_encode(i16), False
    if kind == "pcma":
        return FORMAT_ALAW, 8, alaw_encode(i16), False
    if kind == "ext-pcm16":
        return FORMAT_PCM, 16, i16.astype("<i2").tobytes(), True
    if kind == "ext-pcmu":
        return FORMAT_MULAW, 8, ulaw_encode(i16), True
    raise AssertionError(kind)


def dominant(samples: npt.ArrayLike, rate: int = 8000) -> tuple[float, float]:
    """(frequency of the strongest bin, RMS) of a signal, edges trimmed."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[len(x) // 10 : -len(x) // 10 or None]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x)), float(np.sqrt(np.mean(x**2)))


# --------------------------------------------------------------------------- formats

KINDS = ("pcm8", "pcm16", "pcm24", "float32", "pcmu", "pcma", "ext-pcm16", "ext-pcmu")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
def test_read_every_format_rate_and_layout(
    tmp_path: Path, kind: str, channels: int, rate: int
) -> None:
    seconds = 0.5
    mono = tone(1000, rate, seconds)
    frames = np.repeat(mono[:, None], channels, axis=1)  # same tone on every channel
    tag, bits, data, ext = encode(kind, frames.reshape(-1))
    path = tmp_path / f"{kind}-{channels}-{rate}.wav"
    path.write_bytes(riff(tag, channels, rate, bits, data, extensible=ext))

    decoded = read_wav(path)
    assert decoded.info.format_tag == tag
    assert (decoded.info.channels, decoded.info.sample_rate) == (channels, rate)
    assert decoded.info.frames == len(mono)
    assert decoded.samples.shape == (len(mono), channels)

    clear_prompt_cache()
    prompt = load_prompt(path)
    assert prompt.samples.dtype == np.int16
    assert len(prompt.samples) == -(-len(mono) * 8000 // rate)
    freq, rms = dominant(prompt.samples)
    assert abs(freq - 1000) <= 10
    expected = 0.5 / np.sqrt(2) * 32768
    assert rms == pytest.approx(expected, rel=0.05)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left = tone(1000, 16000, 0.5, 0.6)
    right = tone(1800, 16000, 0.5, 0.2)
    stereo = np.stack([left, right], axis=1)
    write_wav(tmp_path / "s.wav", stereo * 32767, 16000, 2)
    prompt = load_prompt(tmp_path / "s.wav")
    spectrum = np.abs(np.fft.rfft(prompt.samples.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(prompt.samples), 1 / 8000)
    peak_1k = spectrum[np.argmin(np.abs(freqs - 1000))]
    peak_18 = spectrum[np.argmin(np.abs(freqs - 1800))]
    assert peak_1k / peak_18 == pytest.approx(3.0, rel=0.05)  # (0.6 / 2) / (0.2 / 2)


def test_eight_bit_pcm_is_unsigned(tmp_path: Path) -> None:
    data = bytes([128, 255, 0, 128])
    (tmp_path / "u8.wav").write_bytes(riff(FORMAT_PCM, 1, 8000, 8, data))
    samples = read_wav(tmp_path / "u8.wav").samples[:, 0]
    assert samples.tolist() == pytest.approx([0.0, 127 / 128, -1.0, 0.0])


@pytest.mark.parametrize(("encoding", "decode"), [("pcmu", ulaw_decode), ("pcma", alaw_decode)])
def test_g711_wav_round_trip(
    tmp_path: Path, encoding: str, decode: Callable[[bytes], npt.NDArray[np.int16]]
) -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(-30000, 30000, 4000).astype(np.int16)
    path = tmp_path / f"{encoding}.wav"
    write_wav(path, samples, 8000, 1, encoding=encoding)  # type: ignore[arg-type]
    info = read_wav(path).info
    assert info.format_tag == (FORMAT_MULAW if encoding == "pcmu" else FORMAT_ALAW)
    assert info.bits_per_sample == 8
    encoder = ulaw_encode if encoding == "pcmu" else alaw_encode
    # 8 kHz G.711 loads exactly: decode(encode(x)), no resampling
    assert np.array_equal(load_prompt(path).samples, decode(encoder(samples)))


def test_write_wav_pcm16_round_trip(tmp_path: Path) -> None:
    frames = np.array([[1, -1], [32767, -32768], [100, 200]], dtype=np.int16)
    write_wav(tmp_path / "w.wav", frames, 16000, 2)
    with wave.open(str(tmp_path / "w.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        raw = np.frombuffer(w.readframes(3), dtype="<i2").reshape(3, 2)
    assert np.array_equal(raw, frames)
    with pytest.raises(ValueError):
        write_wav(tmp_path / "x.wav", np.zeros(3), 8000, 2)  # not a whole frame


SOX = shutil.which("sox")


@pytest.mark.skipif(SOX is None, reason="sox not installed")
@pytest.mark.parametrize(
    ("args", "tag"),
    [
        (["-r", "44100", "-c", "2", "-b", "16"], FORMAT_PCM),
        (["-r", "22050", "-c", "1", "-e", "u-law", "-b", "8"], FORMAT_MULAW),
        (["-r", "8000", "-c", "1", "-e", "a-law", "-b", "8"], FORMAT_ALAW),
        (["-r", "48000", "-c", "2", "-b", "24"], FORMAT_PCM),  # sox writes EXTENSIBLE here
        (["-r", "32000", "-c", "1", "-e", "floating-point", "-b", "32"], FORMAT_IEEE_FLOAT),
        (["-r", "11025", "-c", "1", "-b", "8", "-e", "unsigned-integer"], FORMAT_PCM),
    ],
)
def test_files_written_by_sox(tmp_path: Path, args: list[str], tag: int) -> None:
    path = tmp_path / "sox.wav"
    subprocess.run(
        [SOX or "sox", "-R", "-D", "-n", *args, str(path), "synth", "0.5", "sine", "1000"],
        check=True,
    )
    assert read_wav(path).info.format_tag == tag
    freq, rms = dominant(load_prompt(path).samples)
    assert abs(freq - 1000) <= 10
    assert rms > 10000  # sox's synth level depends on the sample size; not silent anyway


# --------------------------------------------------------------------------- resampling


def test_resampled_tone_keeps_its_frequency_and_level() -> None:
    out = resample(tone(1000, 44100, 1.0), 44100, 8000)
    assert len(out) == 8000
    freq, rms = dominant(out)
    assert abs(freq - 1000) <= 2
    assert 20 * np.log10(rms / (0.5 / np.sqrt(2))) == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize(
    ("rate", "freq"),
    [(r, f) for r in RATES if r > 8000 for f in (4500, 5000, 7000) if f < r / 2],
)
def test_no_aliasing_above_nyquist(rate: int, freq: int) -> None:
    out = resample(tone(freq, rate, 1.0), rate, 8000)
    _, rms = dominant(out)
    attenuation = 20 * np.log10(rms / (0.5 / np.sqrt(2)) + 1e-12)
    assert attenuation < -60  # would alias to 8000 - freq without the low-pass


def test_passband_is_flat() -> None:
    for freq in (300, 1000, 2000, 3000, 3400):
        _, rms = dominant(resample(tone(freq, 48000, 1.0), 48000, 8000))
        assert 20 * np.log10(rms / (0.5 / np.sqrt(2))) == pytest.approx(0.0, abs=0.2)


def test_resample_is_time_aligned() -> None:
    x = np.zeros(4410)
    x[2205] = 1.0  # an impulse at 50 ms
    out = resample(x, 44100, 8000)
    assert int(np.argmax(out)) == 400
    assert resample(np.zeros(0), 44100, 8000).size == 0
    assert np.array_equal(resample(x, 8000, 8000), x)


# --------------------------------------------------------------------------- errors


def test_bad_files_raise_wav_error(tmp_path: Path) -> None:
    pcm = np.zeros(100, dtype="<i2").tobytes()
    cases = {
        "empty": b"",
        "not-riff": b"RIFX" + b"\0" * 40,
        "no-wave": b"RIFF\x04\0\0\0AVI ",
        "no-fmt": b"RIFF\x0c\0\0\0WAVEdata\0\0\0\0",
        "no-data": riff(FORMAT_PCM, 1, 8000, 16, pcm)[:36],
        "adpcm": riff(0x0011, 1, 8000, 4, pcm),
        "zero-channels": riff(FORMAT_MULAW, 0, 8000, 8, pcm),
        "zero-rate": riff(FORMAT_MULAW, 1, 0, 8, pcm),
        "12-bit-mulaw": riff(FORMAT_MULAW, 1, 8000, 12, pcm),
        "bad-guid": riff(FORMAT_PCM, 1, 8000, 16, pcm, extensible=True).replace(
            bytes.fromhex("00aa00389b71"), bytes(6)
        ),
        "short-fmt": b"RIFF\x18\0\0\0WAVEfmt \x04\0\0\0\x01\0\x01\0data\0\0\0\0",
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(blob)
        with pytest.raises(WavError):
            read_wav(path)
        with pytest.raises(WavError):
            load_prompt(path)
    with pytest.raises(FileNotFoundError):
        load_prompt(tmp_path / "missing.wav")


def test_truncated_data_chunk_reads_what_is_there(tmp_path: Path) -> None:
    samples = (tone(440, 8000, 0.5) * 32767).astype("<i2").tobytes()
    # header claims 10 s (or 0, as written before the first size patch); only 0.5 s follows
    for claimed in (160000, 0):
        path = tmp_path / f"t{claimed}.wav"
        path.write_bytes(riff(FORMAT_PCM, 1, 8000, 16, samples, data_size=claimed))
        assert read_wav(path).info.frames == 4000
    cut = riff(FORMAT_MULAW, 1, 8000, 8, ulaw_encode(np.zeros(101)), data_size=1000)
    (tmp_path / "odd.wav").write_bytes(cut[:-1])  # cut off mid-chunk: no pad octet
    assert read_wav(tmp_path / "odd.wav").info.frames == 101


def test_odd_sized_chunks_are_skipped_with_padding(tmp_path: Path) -> None:
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # odd size, one pad octet
    data = ulaw_encode(np.full(80, 1000))
    (tmp_path / "list.wav").write_bytes(riff(FORMAT_MULAW, 1, 8000, 8, data, extra=extra))
    assert np.array_equal(load_prompt(tmp_path / "list.wav").samples, ulaw_decode(data))


# --------------------------------------------------------------------------- prompt cache


def test_load_prompt_cache_follows_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "p.wav"
    write_wav(path, np.full(800, 100), 8000, 1)
    first = load_prompt(path)
    assert load_prompt(str(path)) is first
    assert first.name == "p" and first.path == path.resolve()
    assert not first.samples.flags.writeable

    write_wav(path, np.full(800, 200), 8000, 1)  # same size: only the mtime differs
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = load_prompt(path)
    assert second is not first and int(second.samples[0]) == 200

    write_wav(path, np.full(1600, 200), 8000, 1)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same mtime, new size
    assert len(load_prompt(path).samples) == 1600


async def test_load_prompt_async(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", np.full(160, 5), 8000, 1)
    prompt = await load_prompt_async(tmp_path / "a.wav")
    assert prompt is load_prompt(tmp_path / "a.wav")


def test_prompt_encodings_are_padded_and_cached() -> None:
    prompt = Prompt.from_samples(np.full(200, 1000), name="x")
    ulaw = prompt.encoded("PCMU")
    assert len(ulaw) == 320
    assert ulaw[:200] == ulaw_encode(np.full(200, 1000))
    assert ulaw[200:] == b"\xff" * 120  # mu-law silence
    assert prompt.encoded("pcmu") is ulaw
    alaw = prompt.encoded("PCMA")
    assert alaw[200:] == b"\xd5" * 120  # A-law silence
    assert prompt.duration == pytest.approx(0.025)
    with pytest.raises(ValueError):
        prompt.encoded("G722")
    with pytest.raises(ValueError):
        Prompt.from_samples(np.zeros((2, 2)))


# --------------------------------------------------------------------------- built-ins


def test_every_builtin_prompt_loads() -> None:
    names = builtin_prompt_names()
    assert len(names) == len(LANGUAGES) * len(SPOKEN_PROMPTS) + len(SHARED_PROMPTS)
    for name in names:
        path = builtin_prompt(name)
        assert path.parent == PROMPTS_DIR
        assert path.stat().st_size < 100_000
        prompt = load_prompt(path)
        assert prompt.duration > 0.1
        assert np.abs(prompt.samples.astype(np.int32)).max() > 8000  # not silent
        if name not in SHARED_PROMPTS:
            with wave.open(str(path)) as w:  # spoken prompts are plain 8 kHz 16-bit mono
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    readme = (PROMPTS_DIR / "README.md").read_text()
    for path in PROMPTS_DIR.glob("*.wav"):
        assert path.name in readme


def test_beep_and_music_on_hold() -> None:
    beep = load_prompt(builtin_prompt("beep"))
    assert beep.duration == pytest.approx(0.2)
    assert abs(dominant(beep.samples)[0] - 1000) <= 10
    moh = load_prompt(builtin_prompt("moh", "tr"))  # shared: the language is ignored
    assert read_wav(builtin_prompt("moh")).info.format_tag == FORMAT_MULAW
    assert moh.duration >= 10
    assert len(moh.samples) % 160 == 0  # whole packets: the loop point falls on a packet


def test_builtin_prompt_names_and_languages() -> None:
    assert builtin_prompt("enter_number", "es").name == "es-enter_number.wav"
    assert builtin_prompt("tr/connecting").name == "tr-connecting.wav"
    with pytest.raises(PromptNotFound):
        builtin_prompt("enter_number", "de")
    with pytest.raises(PromptNotFound):
        builtin_prompt("welcome")


def test_prompt_library_overrides(tmp_path: Path) -> None:
    mine = tmp_path / "mine.wav"
    mine_tr = tmp_path / "mine-tr.wav"
    welcome = tmp_path / "welcome.wav"
    for p in (mine, mine_tr, welcome):
        write_wav(p, np.full(160, 1), 8000, 1)
    lib = PromptLibrary(
        {"enter_number": mine, "tr/enter_number": str(mine_tr), "welcome": welcome},
        default_lang="en",
    )
    assert lib.resolve("enter_number") == mine
    assert lib.resolve("enter_number", "es") == mine
    assert lib.resolve("enter_number", "tr") == mine_tr
    assert lib.resolve("tr/enter_number", "es") == mine_tr  # the name's language wins
    assert lib.resolve("connecting", "es") == builtin_prompt("connecting", "es")
    assert lib.resolve("connecting", "de") == builtin_prompt("connecting", "en")  # fallback
    assert lib.resolve("welcome", "es") == welcome
    assert lib.load("welcome").duration == pytest.approx(0.02)
    lib.check()
    with pytest.raises(PromptNotFound):
        lib.resolve("goodbye")
    broken = PromptLibrary({"connecting": tmp_path / "nope.wav"})
    with pytest.raises(PromptNotFound):
        broken.resolve("connecting")
    with pytest.raises(PromptNotFound):
        broken.check()
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(WavError):
        PromptLibrary({"beep": tmp_path / "bad.wav"}).check()
