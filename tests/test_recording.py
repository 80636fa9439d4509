"""CallRecorder: channel separation, mono mix, timeline placement (RTP timestamps, arrival
times, gaps, reordering, SSRC changes), crash-safe headers, metadata."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.g711 import alaw_encode, ulaw_decode, ulaw_encode
from media.recording import CallRecorder
from media.rtp import RtpHeader, build_rtp
from media.wav import read_wav


class FakeTime:
    def __init__(self, start: float = 500.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def read_frames(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    """(samples shaped (frames, channels), channels) through the stdlib reader."""
    with wave.open(str(path)) as w:
        channels = w.getnchannels()
        assert (w.getframerate(), w.getsampwidth()) == (8000, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.reshape(-1, channels), channels


def sine(freq: float, n: int, start: int = 0, amplitude: float = 8000) -> npt.NDArray[np.int16]:
    t = (np.arange(n) + start) / 8000
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_at(x: npt.NDArray[np.int16], freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    return float(spectrum[np.argmin(np.abs(freqs - freq))])


def feed_rtp(
    rec: CallRecorder,
    clock: FakeTime,
    legs: dict[int, float],
    seconds: float,
    *,
    skip: set[int] | None = None,
) -> None:
    """Both legs send 20 ms G.711 packets (leg: tone frequency) for ``seconds``, with RTP
    timestamps; the clock moves 20 ms per packet. ``skip``: packet numbers lost."""
    for k in range(round(seconds / 0.02)):
        for leg, freq in legs.items():
            if skip and k in skip:
                continue
            payload = ulaw_encode(sine(freq, 160, k * 160))
            rec.write_g711(leg, payload, "PCMU", rtp_timestamp=1000 + 160 * k, ssrc=leg + 1)
        clock.now += 0.02


def test_stereo_keeps_legs_apart(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "call.wav", clock=clock, autoflush=False)
    feed_rtp(rec, clock, {0: 1000.0, 1: 440.0}, 2.0)
    meta = rec.close()
    frames, channels = read_frames(tmp_path / "call.wav")
    assert channels == 2 and meta["channels"] == 2
    left, right = frames[:, 0], frames[:, 1]
    assert level_at(left, 1000) > 100 * level_at(left, 440)
    assert level_at(right, 440) > 100 * level_at(right, 1000)
    assert len(frames) == 16000 and meta["duration"] == pytest.approx(2.0)


def test_mono_mix(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "mono.wav", stereo=False, clock=clock, autoflush=False)
    rec.write(0, np.full(160, 1000))
    rec.write(1, np.full(160, 2000))
    rec.write(1, np.full(160, 32000))  # same arrival time: appended after the previous chunk
    clock.now += 0.04
    rec.close()
    frames, channels = read_frames(tmp_path / "mono.wav")
    assert channels == 1
    assert np.all(frames[:160, 0] == 3000)
    assert np.all(frames[160:320, 0] == 32000)  # leg 1 alone; clipped mix never overflows
    rec2 = CallRecorder(tmp_path / "clip.wav", stereo=False, clock=clock, autoflush=False)
    rec2.write(0, np.full(160, 30000))
    rec2.write(1, np.full(160, 30000))
    rec2.close()
    assert np.all(read_frames(tmp_path / "clip.wav")[0][:160, 0] == 32767)


def test_lost_packets_and_late_start_become_silence(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "gaps.wav", clock=clock, autoflush=False)
    clock.now += 0.5  # nobody talks for the first half second
    feed_rtp(rec, clock, {0: 1000.0}, 1.0, skip=set(range(10, 20)))  # 200 ms lost
    clock.now += 0.5  # a silent tail before hang-up
    meta = rec.close()
    frames, _ = read_frames(tmp_path / "gaps.wav")
    left = frames[:, 0]
    assert len(frames) == 16000 and meta["duration"] == pytest.approx(2.0)
    assert not left[:4000].any()  # before the first packet
    assert left[4000:5600].any()  # packets 0-9
    assert not left[5600:7200].any()  # lost packets 10-19, exactly
    assert left[7200:12000].any()
    assert not left[12000:].any()  # tail
    assert not frames[:, 1].any()  # leg 1 never spoke: a silent channel
    # the audio after the gap is exactly packet 20, where its timestamp puts it
    assert np.array_equal(left[7200:7360], ulaw_decode(ulaw_encode(sine(1000, 160, 20 * 160))))


def test_reordered_packets_land_in_place(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "reorder.wav", clock=clock, autoflush=False)
    order = [0, 1, 3, 2, 4, 6, 5, 7]
    for i, k in enumerate(order):
        clock.now = 500.0 + 0.02 * i
        rec.write(0, np.full(160, k + 1), rtp_timestamp=160 * k, ssrc=9)
    clock.now = 500.0 + 0.02 * 8
    rec.close()
    left = read_frames(tmp_path / "reorder.wav")[0][:, 0]
    assert [int(left[160 * k]) for k in range(8)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_timestamp_wrap_and_ssrc_change(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "wrap.wav", clock=clock, autoflush=False)
    ts = 0xFFFFFFFF - 159
    for k in range(4):  # wraps after the first packet
        rec.write(0, np.full(160, 100), rtp_timestamp=(ts + 160 * k) & 0xFFFFFFFF, ssrc=1)
        clock.now += 0.02
    # a new source (e.g. after a transfer) with unrelated timestamps: placed by arrival,
    # right after the previous audio
    for k in range(2):
        rec.write(0, np.full(160, 200), rtp_timestamp=77777 + 160 * k, ssrc=2)
        clock.now += 0.02
    rec.close()
    left = read_frames(tmp_path / "wrap.wav")[0][:, 0]
    assert np.all(left[:640] == 100) and np.all(left[640:960] == 200)
    assert len(left) == 960


def test_timestamp_jump_far_from_arrival_reanchors(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "jump.wav", clock=clock, autoflush=False)
    rec.write(0, np.full(160, 1), rtp_timestamp=0, ssrc=5)
    clock.now += 0.02
    rec.write(0, np.full(160, 2), rtp_timestamp=8000 * 3600, ssrc=5)  # one hour "later"
    clock.now += 0.02
    meta = rec.close()
    left = read_frames(tmp_path / "jump.wav")[0][:, 0]
    assert meta["frames"] == 320 and int(left[160]) == 2


def test_arrival_times_absorb_jitter(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "jitter.wav", clock=clock, autoflush=False)
    rng = np.random.default_rng(1)
    for k in range(100):  # 20 ms packets arriving with +-15 ms jitter, no timestamps
        jitter = rng.uniform(-0.015, 0.015) if k else 0.0
        rec.write(0, np.full(160, 500), arrival=500.0 + 0.02 * k + jitter)
    clock.now = 500.0 + 2.0
    rec.close()
    left = read_frames(tmp_path / "jitter.wav")[0][:, 0]
    assert np.all(left[:16000] == 500)  # contiguous: no holes, nothing overwritten


def test_g711_rtp_packets_and_hook(tmp_path: Path) -> None:
    clock = FakeTime()
    rec = CallRecorder(tmp_path / "rtp.wav", clock=clock, autoflush=False)
    pcmu = build_rtp(RtpHeader(0, 1, 0, 42), ulaw_encode(np.full(160, 1200)))
    pcma = build_rtp(RtpHeader(8, 2, 160, 42), alaw_encode(np.full(160, -1200)))
    dtmf = build_rtp(RtpHeader(101, 3, 320, 42), b"\x05\x0a\x00\xa0")
    assert rec.write_rtp(0, pcmu)
    clock.now += 0.02
    hook = rec.packet_hook(0)
    assert hook(object(), pcma) is None  # the relay keeps forwarding
    assert not rec.write_rtp(0, dtmf)  # telephone-event is not audio
    assert not rec.write_rtp(0, b"\x00garbage")
    assert rec.write_rtp(
        1,
        build_rtp(RtpHeader(96, 1, 0, 7), ulaw_encode(np.full(160, 9))),
        payload_types={96: "PCMU"},
    )
    clock.now += 0.02
    rec.close()
    frames = read_frames(tmp_path / "rtp.wav")[0]
    assert abs(int(frames[0, 0]) - 1200) < 60 and abs(int(frames[160, 0]) + 1200) < 60
    assert abs(int(frames[160, 1]) - 9) <= 1  # leg 1 started 20 ms into the call


def test_file_is_valid_without_close(tmp_path: Path) -> None:
    """A process that dies mid-call leaves a WAV covering everything up to the last flush."""
    clock = FakeTime()
    path = tmp_path / "crash.wav"
    rec = CallRecorder(path, clock=clock, autoflush=False, flush_interval=1.0)
    feed_rtp(rec, clock, {0: 1000.0, 1: 440.0}, 3.0)  # patches the header each second
    with wave.open(str(path)) as w:  # read while the recorder still has the file open
        seconds = w.getnframes() / w.getframerate()
        assert len(w.readframes(w.getnframes())) == w.getnframes() * 4
    assert 1.5 <= seconds <= 3.0
    rec.flush()  # what a periodic flush does; the recorder is then abandoned
    with wave.open(str(path)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert 2.7 <= seconds <= 3.0  # all but the hold-back window
    data = read_wav(path)  # and our own reader agrees
    assert data.info.frames == round(seconds * 8000)
    left = data.samples[:, 0]
    assert level_at((left * 32767).astype(np.int16), 1000) > 0


def test_header_covers_nothing_before_the_first_flush(tmp_path: Path) -> None:
    rec = CallRecorder(tmp_path / "new.wav", clock=FakeTime(), autoflush=False)
    with wave.open(str(tmp_path / "new.wav")) as w:
        assert w.getnframes() == 0 and w.getnchannels() == 2
    rec.close()


def test_metadata_duration_and_close(tmp_path: Path) -> None:
    clock = FakeTime()
    with CallRecorder(tmp_path / "m.wav", clock=clock, autoflush=False, stereo=False) as rec:
        rec.write(0, np.full(800, 1))
        clock.now += 1.25
        assert rec.duration == pytest.approx(1.25)
    meta = rec.close()  # idempotent: same dict
    assert rec.closed and meta is rec.close()
    assert meta["path"] == str(tmp_path / "m.wav")
    assert meta["duration"] == pytest.approx(1.25) and meta["frames"] == 10000
    assert meta["channels"] == 1 and meta["sample_rate"] == 8000 and not meta["truncated"]
    assert meta["bytes"] == (tmp_path / "m.wav").stat().st_size
    assert isinstance(meta["start"], float) and meta["start_iso"].endswith("+00:00")
    rec.write(0, np.full(160, 1))  # after close: ignored
    assert rec.duration == pytest.approx(1.25)
    with pytest.raises(ValueError):
        CallRecorder(tmp_path / "bad.wav", legs=0)


def test_bad_leg_and_codec(tmp_path: Path) -> None:
    rec = CallRecorder(tmp_path / "x.wav", clock=FakeTime(), autoflush=False)
    with pytest.raises(ValueError):
        rec.write(2, np.zeros(160))
    with pytest.raises(ValueError):
        rec.write_g711(0, b"\xff" * 160, "G729")
    rec.close()


async def test_autoflush_timer_patches_the_header(tmp_path: Path) -> None:
    path = tmp_path / "auto.wav"
    rec = CallRecorder(path, flush_interval=0.02, hold_back=0.0)
    rec.write(0, np.full(160, 1))
    frames = 0
    for _ in range(500):  # poll; no timing is asserted, only that the timer ran
        await asyncio.sleep(0.01)
        with wave.open(str(path)) as w:
            frames = w.getnframes()
        if frames >= 160:
            break
    assert frames >= 160
    rec.close()


def test_file_survives_the_process_dying(tmp_path: Path) -> None:
    """A child process records 2.5 s and exits with os._exit (no close, no cleanup)."""
    path = tmp_path / "killed.wav"
    code = f"""
import os, numpy as np
from media.recording import CallRecorder
now = [0.0]
rec = CallRecorder({str(path)!r}, clock=lambda: now[0], autoflush=False)
for k in range(125):
    rec.write(0, np.full(160, 1000), rtp_timestamp=160 * k, ssrc=1)
    rec.write(1, np.full(160, -1000), rtp_timestamp=160 * k, ssrc=2)
    now[0] += 0.02
os._exit(0)
"""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert 8000 <= len(frames) <= 20000  # flushed at 1 s and 2 s, minus the hold-back
    assert np.all(frames[:, 0] == 1000) and np.all(frames[:, 1] == -1000)
