"""DTMF quality benchmark: Q.24-style acceptance, talk-off, latency, bank CPU, RFC 4733 loss.

    python -m bench.dtmf_quality [--quick] [--seed N] [--json FILE]

Prints five sections:

1. An ITU-T Q.24-style acceptance table for the in-band detector (media.dtmf): every digit at
   -3..-36 dBm0, frequency deviation (+-1.5 % operate, +-3.5 % non-operate), duration (40 ms
   operate, 23 ms non-operate, at every alignment), pause/interruption, twist (8 dB normal,
   4 dB reverse), white noise at 15 dB SNR, and G.711 at -36 dBm0; each with PASS/FAIL and
   the figures. Informational rows show where the boundaries actually are.
2. Talk-off: false digits per 10 minutes of speech. Speech comes from espeak-ng (English,
   Spanish and Turkish texts, several voices and pitches, resampled to 8 kHz with sox and
   passed through G.711 mu-law); without espeak-ng/sox only the synthetic speech-like signals
   are used, and the output says so.
3. Detection latency (tone onset to detection, in audio time) and timing accuracy.
4. CPU time per 20 ms channel-frame of InbandDetectorBank at 100 and 1000 channels, for
   silence, speech and the worst case of every channel keying all the time.
5. RFC 4733 receiver correctness under random loss, duplication and jitter (% of trials whose
   digit string comes out exactly).

``--quick`` runs a reduced version in a few seconds. Exit status 0 when every acceptance
criterion passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from media.dtmf import (
    DBM0_PEAK,
    DIGITS,
    DtmfEvent,
    InbandDetector,
    InbandDetectorBank,
    InbandParams,
    Rfc4733Packet,
    Rfc4733Receiver,
    Rfc4733Sender,
    inband_tone,
)
from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

Int16Array = npt.NDArray[np.int16]
RATE = 8000


# ------------------------------------------------------------------------------ helpers


def silence(ms: float) -> Int16Array:
    return np.zeros(round(ms * RATE / 1000), dtype=np.int16)


def detect(signal: Int16Array, params: InbandParams | None = None) -> list[DtmfEvent]:
    """All presses found in ``signal`` (fed in 20 ms frames, then 200 ms of silence)."""
    detector = InbandDetector(params)
    audio = np.concatenate((signal, silence(200)))
    events: list[DtmfEvent] = []
    for i in range(0, len(audio), 160):
        events += detector.feed(audio[i : i + 160], (i + 160) / RATE)
    return events + detector.flush(len(audio) / RATE)


def add_noise(
    signal: Int16Array, snr_db: float, ref_power: float, rng: np.random.Generator
) -> Int16Array:
    noise = rng.normal(0.0, math.sqrt(ref_power / 10 ** (snr_db / 10)), len(signal))
    return np.clip(np.rint(signal + noise), -32768, 32767).astype(np.int16)


def phases(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))


@dataclass
class Row:
    """One line of the acceptance table."""

    criterion: str
    requirement: str
    figures: str
    ok: bool | None  # None: informational

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class Trials:
    """Counts the presses found against the presses expected over many trials."""

    total: int = 0
    exact: int = 0
    extra: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, expected: str, events: Sequence[DtmfEvent], label: str = "") -> None:
        got = "".join(e.digit for e in events)
        self.total += 1
        if got == expected:
            self.exact += 1
        elif len(self.examples) < 3:
            self.examples.append(f"{label or expected!r}->{got!r}")
        self.extra += max(0, len(events) - len(expected))

    def rate(self) -> str:
        return f"{self.exact}/{self.total}"


# ---------------------------------------------------------------- 1. acceptance table


def acceptance(quick: bool, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    align_step = 9 if quick else 1  # alignments within a 10 ms block (80 samples)
    reps = 1 if quick else 3

    # every digit, every level
    levels = (-3.0, -10.0, -20.0, -30.0, -36.0)
    t = Trials()
    for level in levels:
        for digit in DIGITS:
            for _ in range(reps):
                lead = np.zeros(int(rng.integers(200, 600)), np.int16)
                sig = np.concatenate((lead, inband_tone(digit, 60, level, phases=phases(rng))))
                t.add(digit, detect(sig))
    rows.append(
        Row(
            "all 16 digits, 60 ms",
            "operate -3..-36 dBm0/tone",
            f"{t.rate()} exact at {', '.join(f'{lv:g}' for lv in levels)} dBm0",
            t.exact == t.total,
        )
    )

    # G.711 at -36 dBm0
    codecs = (("mu-law", ulaw_encode, ulaw_decode), ("A-law", alaw_encode, alaw_decode))
    for name, enc, dec in codecs:
        t = Trials()
        for digit in DIGITS:
            for _ in range(reps):
                sig = np.concatenate(
                    (silence(50), inband_tone(digit, 50, -36.0, phases=phases(rng)))
                )
                t.add(digit, detect(dec(enc(sig))))
        rows.append(Row(f"-36 dBm0 through G.711 {name}", "operate", t.rate(), t.exact == t.total))

    # below the minimum level
    quiet = sum(
        len(detect(np.concatenate((silence(50), inband_tone(d, 100, -50.0))))) for d in DIGITS
    )
    rows.append(Row("-50 dBm0/tone", "(not required)", f"{quiet} detections of 16", None))

    # frequency deviation
    def deviation(offset: float) -> Trials:
        t = Trials()
        for digit in DIGITS:
            for lo, hi in (
                (offset, offset),
                (-offset, -offset),
                (offset, -offset),
                (-offset, offset),
                (offset, 0.0),
                (0.0, offset),
                (-offset, 0.0),
                (0.0, -offset),
            ):
                sig = np.concatenate(
                    (
                        silence(50),
                        inband_tone(
                            digit, 60, -15.0, low_offset=lo, high_offset=hi, phases=phases(rng)
                        ),
                    )
                )
                t.add(digit, detect(sig), f"{digit}{lo:+.3f}/{hi:+.3f}")
        return t

    t = deviation(0.015)
    rows.append(
        Row(
            "frequency deviation +-1.5 %",
            "operate",
            f"{t.rate()} (each group and both, same/opposite sign)",
            t.exact == t.total,
        )
    )
    non = Trials()
    for digit in DIGITS:
        for lo, hi in (
            (0.035, 0.035),
            (-0.035, -0.035),
            (0.035, 0.0),
            (0.0, 0.035),
            (-0.035, 0.0),
            (0.0, -0.035),
            (0.035, -0.035),
            (-0.035, 0.035),
        ):
            sig = np.concatenate(
                (
                    silence(50),
                    inband_tone(
                        digit, 60, -15.0, low_offset=lo, high_offset=hi, phases=phases(rng)
                    ),
                )
            )
            non.add("", detect(sig))
    rows.append(
        Row(
            "frequency deviation +-3.5 %",
            "non-operate",
            f"{non.total - non.exact} detections in {non.total} tones",
            non.exact == non.total,
        )
    )
    sweep = []
    for pct in (2.0, 2.25, 2.5, 2.75, 3.0):
        hits = sum(
            len(
                detect(
                    np.concatenate(
                        (silence(50), inband_tone(d, 60, -15.0, freq_offset=s * pct / 100))
                    )
                )
            )
            for d in DIGITS
            for s in (1, -1)
        )
        sweep.append(f"{pct:g}%:{hits}/32")
    rows.append(Row("deviation sweep (both tones)", "(boundary)", " ".join(sweep), None))

    # duration, at every alignment within a 10 ms block
    def durations(ms: float, digits: str) -> tuple[int, int]:
        found = total = 0
        for digit in digits:
            for lead in range(0, 80, align_step):
                sig = np.concatenate(
                    (
                        np.zeros(400 + lead, np.int16),
                        inband_tone(digit, ms, -15.0, phases=phases(rng)),
                    )
                )
                found += len(detect(sig)) == 1
                total += 1
        return found, total

    f40, n40 = durations(40, DIGITS)
    rows.append(Row("tone 40 ms", "operate", f"{f40}/{n40} (all digits x alignments)", f40 == n40))
    f23, n23 = durations(23, DIGITS)
    rows.append(Row("tone 23 ms", "non-operate", f"{f23} detections in {n23}", f23 == 0))
    sweep = []
    for ms in (25, 28, 31, 34, 37):
        found, total = durations(ms, "159#")
        sweep.append(f"{ms}ms:{100 * found / total:.0f}%")
    rows.append(Row("duration sweep", "(boundary)", " ".join(sweep), None))

    # pause and interruption
    def gaps(gap_ms: float, expect: str) -> Trials:
        t = Trials()
        for lead in range(0, 80, 4 * align_step):
            tone = inband_tone("7", 60, -15.0)
            sig = np.concatenate((np.zeros(400 + lead, np.int16), tone, silence(gap_ms), tone))
            t.add(expect, detect(sig))
        return t

    t = gaps(40, "77")
    rows.append(Row("pause 40 ms between tones", "two digits", t.rate(), t.exact == t.total))
    t = gaps(10, "7")
    rows.append(Row("interruption 10 ms", "one digit", t.rate(), t.exact == t.total))

    # twist
    for twist, label, need in (
        (8.0, "normal twist 8 dB (low louder)", True),
        (-4.0, "reverse twist 4 dB (high louder)", True),
        (12.0, "normal twist 12 dB", False),
        (-8.0, "reverse twist 8 dB", False),
    ):
        t = Trials()
        for digit in DIGITS:
            for _ in range(reps):
                sig = np.concatenate(
                    (silence(50), inband_tone(digit, 60, -8.0, twist_db=twist, phases=phases(rng)))
                )
                t.add(digit, detect(sig))
        if need:
            rows.append(Row(label, "operate", t.rate(), t.exact == t.total))
        else:
            rows.append(Row(label, "(reject beyond limits)", f"{t.exact}/{t.total} detected", None))

    # white noise
    def noisy(snr: float, trials: int, level: float = -20.0, **kw: Any) -> Trials:
        t = Trials()
        for _ in range(trials):
            for digit in DIGITS:
                tone = inband_tone(digit, 60, level, phases=phases(rng), **kw)
                power = float(np.mean(tone.astype(np.float64) ** 2))
                sig = add_noise(np.concatenate((silence(100), tone, silence(100))), snr, power, rng)
                t.add(digit, detect(sig))
        return t

    t = noisy(15.0, 2 if quick else 10)
    rows.append(
        Row(
            "white noise, 15 dB SNR",
            "operate",
            f"{t.rate()}, {t.extra} extra digits",
            t.exact == t.total,
        )
    )
    more = []
    for snr in (12.0, 10.0, 8.0, 6.0):
        t = noisy(snr, 1 if quick else 4)
        more.append(f"{snr:g}dB:{100 * t.exact / t.total:.0f}%")
    rows.append(Row("white noise, lower SNR", "(margin)", " ".join(more), None))

    # everything at once
    t = Trials()
    for _ in range(1 if quick else 4):
        for digit in DIGITS:
            tone = inband_tone(
                digit, 60, -30.0, twist_db=8.0, freq_offset=0.015, phases=phases(rng)
            )
            power = float(np.mean(tone.astype(np.float64) ** 2))
            sig = add_noise(np.concatenate((silence(100), tone, silence(100))), 15.0, power, rng)
            t.add(digit, detect(ulaw_decode(ulaw_encode(sig))))
    rows.append(
        Row("-30 dBm0 + 8 dB twist + 1.5 % + 15 dB SNR + mu-law", "(combined)", f"{t.rate()}", None)
    )
    return rows


# ------------------------------------------------------------------------- 2. talk-off

TEXTS: dict[str, list[str]] = {
    "en": [
        "Thank you for calling customer service. Your call is important to us.",
        "Please listen carefully, as our menu options have recently changed.",
        "For billing questions, stay on the line and an agent will be with you shortly.",
        "The weather tomorrow will be sunny in the morning with showers in the afternoon.",
        "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
        "I would like to book a table for four people at eight o'clock on Friday evening.",
        "Whistling a quiet tune, he walked home while the church bells rang in the distance.",
        "Our records show that your last payment of forty two dollars was received on time.",
        "Hello? Hello, can you hear me? The line is really bad, let me call you back.",
        "One, two, three, four, five, six, seven, eight, nine, zero, star, pound.",
        "Peter Piper picked a peck of pickled peppers; how many did Peter Piper pick?",
        "Good morning everyone, and welcome to the quarterly results conference call.",
    ],
    "es": [
        "Gracias por llamar. Su llamada es muy importante para nosotros.",
        "Por favor, escuche con atención, ya que nuestras opciones han cambiado.",
        "El perro de San Roque no tiene rabo porque Ramón Ramírez se lo ha cortado.",
        "Mañana vamos a la playa si hace buen tiempo y comeremos paella con mariscos.",
        "Uno, dos, tres, cuatro, cinco, seis, siete, ocho, nueve, cero.",
        "Tres tristes tigres tragaban trigo en un trigal en tres tristes trastos.",
        "Buenos días, quisiera hablar con el departamento de facturación, por favor.",
        "La reunión empezará a las diez y media en la sala de conferencias del tercer piso.",
        "¿Me oye? ¿Me oye bien? La línea está fatal, le vuelvo a llamar en un momento.",
        "Su saldo actual es de ciento veinte euros con cincuenta céntimos.",
    ],
    "tr": [
        "Aradığınız için teşekkür ederiz. Çağrınız bizim için önemlidir.",
        "Lütfen dikkatle dinleyiniz, menü seçeneklerimiz değişmiştir.",
        "Şu köşe yazısı şu köşeye, bu köşe yazısı bu köşeye yazılmış.",
        "Yarın hava güzel olursa denize gideceğiz ve akşam balık yiyeceğiz.",
        "Bir, iki, üç, dört, beş, altı, yedi, sekiz, dokuz, sıfır.",
        "Günaydın, fatura bölümüyle görüşmek istiyorum, lütfen bağlar mısınız?",
        "Toplantı saat onu otuz geçe üçüncü kattaki salonda başlayacak.",
        "Alo? Alo, beni duyuyor musunuz? Hat çok kötü, sizi birazdan tekrar arayacağım.",
        "Güncel bakiyeniz yüz yirmi lira elli kuruştur.",
        "Bir berber bir berbere gel beraber bir berber dükkanı açalım demiş.",
    ],
}


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def espeak(voice: str, text: str, pitch: int, speed: int) -> Int16Array:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    raw = subprocess.run(
        [
            "sox",
            "-t",
            "wav",
            "-",
            "-t",
            "raw",
            "-r",
            str(RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-",
            "gain",
            "-n",
            "-3",
        ],
        input=wav,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).copy()


def speech(lang: str, seconds: float, rng: random.Random) -> Int16Array:
    """About ``seconds`` of espeak-ng speech in ``lang``: the language's sentences in random
    order, read by varying voices, pitches and speeds, peaks at -3 dBFS, through mu-law."""
    variants = ["", "+f2", "+f3", "+f4", "+m1", "+m3", "+m7", "+klatt"]
    parts: list[Int16Array] = []
    total = 0
    while total < seconds * RATE:
        sentences = TEXTS[lang][:]
        rng.shuffle(sentences)
        voice = lang + rng.choice(variants)
        audio = espeak(voice, " ".join(sentences), rng.randint(20, 90), rng.randint(130, 200))
        parts += [audio, np.zeros(rng.randint(800, 4000), np.int16)]
        total += len(audio)
    return ulaw_decode(ulaw_encode(np.concatenate(parts)[: int(seconds * RATE)]))


def _resonate(x: npt.NDArray[np.float64], freq: float, r: float) -> npt.NDArray[np.float64]:
    a1 = 2 * r * math.cos(2 * math.pi * freq / RATE) if freq else r
    a2 = -r * r if freq else 0.0
    y = np.empty_like(x)
    y1 = y2 = 0.0
    gain = 1 - r
    for i, v in enumerate(x.tolist()):
        y0 = gain * v + a1 * y1 + a2 * y2
        y[i] = y0
        y1, y2 = y0, y1
    return y


def speech_like(seconds: float, rng: np.random.Generator) -> Int16Array:
    """Source-filter voiced speech: glottal pulses (vibrato, glides) through four formant
    resonators, in syllables of random pitch, formants, length and level."""
    parts: list[npt.NDArray[np.float64]] = []
    total = 0
    while total < seconds * RATE:
        n = int(rng.uniform(0.08, 0.4) * RATE)
        t = np.arange(n) / RATE
        f0 = rng.uniform(85, 280) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        f0 *= 1 + rng.uniform(-0.3, 0.3) * t
        sig = np.diff(np.floor(np.cumsum(f0) / RATE), prepend=0.0)
        sig = _resonate(sig, 0.0, 0.95)
        for lo, hi, bw in ((250, 900, 80), (800, 2300, 100), (2000, 3000, 150), (3000, 3600, 200)):
            sig = _resonate(sig, float(rng.uniform(lo, hi)), math.exp(-math.pi * bw / RATE))
        sig = np.diff(sig, prepend=0.0)
        sig *= np.hanning(n) * rng.uniform(2000, 16000) / max(1e-9, float(np.abs(sig).max()))
        parts += [sig, np.zeros(int(rng.uniform(0, 0.12) * RATE))]
        total += n
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def harmonics_vibrato(seconds: float, rng: np.random.Generator, formant_hz: float) -> Int16Array:
    """Sums of harmonics with vibrato and glides, weighted by three Gaussian "formants" of
    ``formant_hz`` width (narrow formants leave two or three harmonics dominant: a hard case)."""
    parts: list[npt.NDArray[np.float64]] = []
    total = 0
    while total < seconds * RATE:
        n = int(rng.uniform(0.08, 0.5) * RATE)
        t = np.arange(n) / RATE
        f0 = rng.uniform(80, 300) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
        f0 *= 1 + rng.uniform(-0.2, 0.2) * t
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
        sig = np.zeros(n)
        for h in range(1, int(3800 / f0.max()) + 1):
            fh = h * float(f0.mean())
            amp = sum(math.exp(-(((fh - f) / formant_hz) ** 2)) for f in formants) + 0.3 / h
            sig += amp * np.sin(h * phase)
        sig *= np.hanning(n) * rng.uniform(2000, 12000) / max(1e-9, float(np.abs(sig).max()))
        parts += [sig, np.zeros(int(rng.uniform(0, 0.15) * RATE))]
        total += n
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def active_level_dbm0(x: Int16Array) -> float:
    """Mean power of the 20 ms frames within 15 dB of the loudest (a crude active level)."""
    frames = x[: len(x) // 160 * 160].astype(np.float64).reshape(-1, 160)
    power = np.mean(frames**2, axis=1)
    active = power[power > power.max() / 10**1.5]
    return 10 * math.log10(float(np.mean(active)) / (DBM0_PEAK**2 / 2))


def talk_off(quick: bool, seed: int) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    minutes = 0.3 if quick else 10.0
    rng_py = random.Random(seed)
    rng = np.random.default_rng(seed)
    sources: list[tuple[str, Callable[[], Int16Array]]] = []
    note = ""
    if espeak_available():
        for lang in ("en", "es", "tr"):
            sources.append(
                (f"espeak-ng {lang}", lambda lang=lang: speech(lang, minutes * 60, rng_py))
            )  # type: ignore[misc]
    else:
        note = (
            "espeak-ng and/or sox not installed: talk-off measured on synthetic speech-like "
            "signals only"
        )
    synth_minutes = 0.5 if quick else 10.0
    sources.append(("synthetic source-filter speech", lambda: speech_like(synth_minutes * 60, rng)))
    sources.append(
        (
            "harmonics + vibrato, broad formants",
            lambda: harmonics_vibrato(synth_minutes * 60, rng, 300.0),
        )
    )
    sources.append(
        (
            "harmonics + vibrato, narrow formants (hard)",
            lambda: harmonics_vibrato(synth_minutes * 60, rng, 120.0),
        )
    )
    loose = InbandParams(min_tone_ratio=0.6)
    for name, make in sources:
        audio = make()
        seconds = len(audio) / RATE
        events = detect(audio)
        loose_events = detect(audio, loose)
        rows.append(
            {
                "source": name,
                "minutes": round(seconds / 60, 2),
                "level_dbm0": round(active_level_dbm0(audio), 1),
                "false_digits": len(events),
                "per_10_min": round(len(events) * 600 / seconds, 2),
                "digits": "".join(e.digit for e in events)[:20],
                "per_10_min_ratio_0.6": round(len(loose_events) * 600 / seconds, 2),
            }
        )
    return rows, note


# --------------------------------------------------------------------------- 3. latency


def latency(quick: bool, rng: np.random.Generator) -> dict[str, Any]:
    trials = 160 if quick else 1600
    onset_lat: list[float] = []
    end_lat: list[float] = []
    dur_err: list[float] = []
    start_err: list[float] = []
    for i in range(trials):
        digit = DIGITS[i % 16]
        lead = int(rng.integers(400, 1200))
        ms = float(rng.uniform(40, 200))
        level = float(rng.uniform(-36, -3))
        tone = inband_tone(digit, ms, level, phases=phases(rng))
        sig = np.concatenate((np.zeros(lead, np.int16), tone, silence(200)))
        det = InbandDetector()
        seen = None
        events: list[DtmfEvent] = []
        for j in range(0, len(sig), 80):  # 10 ms feeds: the decision time is not rounded up
            events += det.feed(sig[j : j + 80], (j + 80) / RATE)
            if seen is None and det.active is not None:
                seen = det.active
        onset = lead / RATE
        if seen is None or len(events) != 1:
            continue
        onset_lat.append((seen[2] - onset) * 1000)
        end_lat.append((events[0].time - (onset + len(tone) / RATE)) * 1000)
        dur_err.append(events[0].duration_ms - len(tone) * 1000 / RATE)
        start_err.append((events[0].start - onset) * 1000)

    def dist(values: list[float]) -> dict[str, float]:
        a = np.array(values)
        return {
            "min": round(float(a.min()), 2),
            "p50": round(float(np.median(a)), 2),
            "p95": round(float(np.percentile(a, 95)), 2),
            "max": round(float(a.max()), 2),
        }

    return {
        "trials": trials,
        "detected": len(onset_lat),
        "onset_to_detection_ms": dist(onset_lat),
        "tone_end_to_event_ms": dist(end_lat),
        "start_error_ms": dist(start_err),
        "duration_error_ms": dist(dur_err),
    }


# ------------------------------------------------------------------------------ 4. CPU


def bank_cpu(quick: bool, speech_audio: Int16Array, seed: int) -> list[dict[str, Any]]:
    """Best of three runs per (channels, load): process and wall time per channel-frame."""
    rng = np.random.default_rng(seed)
    frames = 100 if quick else 500
    length = frames * 160
    keying = np.concatenate(
        [np.concatenate((inband_tone(d, 100, -15.0), silence(100))) for d in DIGITS]
    )
    speech_src = np.resize(speech_audio, max(len(speech_audio), length * 2))
    out = []
    for channels in (100, 1000):
        for load in ("silence", "speech", "all keying"):
            if load == "silence":
                audio = np.zeros((channels, length), np.int16)
            else:
                src = speech_src if load == "speech" else np.resize(keying, length * 2)
                starts = rng.integers(0, len(src) - length, channels)
                audio = np.stack([src[s : s + length] for s in starts])
            chunks = [
                np.ascontiguousarray(audio[:, i * 160 : (i + 1) * 160]) for i in range(frames)
            ]
            best_cpu = best_wall = math.inf
            n_events = 0
            for _ in range(3):
                bank = InbandDetectorBank(channels)
                n_events = 0
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for i, chunk in enumerate(chunks):
                    n_events += sum(map(len, bank.process(chunk, (i + 1) * 0.02)))
                best_cpu = min(best_cpu, time.process_time() - cpu0)
                best_wall = min(best_wall, time.perf_counter() - wall0)
            out.append(
                {
                    "channels": channels,
                    "load": load,
                    "cpu_us_per_channel_frame": round(best_cpu / frames / channels * 1e6, 3),
                    "wall_us_per_channel_frame": round(best_wall / frames / channels * 1e6, 3),
                    "events": n_events,
                }
            )
    return out


def bank_cpu_single_thread(quick: bool, seed: int) -> list[dict[str, Any]] | None:
    """:func:`bank_cpu` in a child process whose BLAS runs on one thread, or None."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.dtmf_quality", "--cpu-only", "--seed", str(seed)]
    if quick:
        cmd.append("--quick")
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, check=True, timeout=1800, text=True
        )
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


def cpu_speech(quick: bool, seed: int) -> Int16Array:
    if espeak_available():
        return speech("en", 20.0 if quick else 60.0, random.Random(seed))
    return speech_like(20.0, np.random.default_rng(seed))


# -------------------------------------------------------------------------- 5. RFC 4733


def rfc4733_trials(quick: bool, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    trials = 200 if quick else 2000
    scenarios = [
        ("clean", 0.0, 0.0, 0.0),
        ("5 % loss", 0.05, 0.0, 0.0),
        ("20 % loss, 10 % dup, 20 ms jitter", 0.2, 0.1, 20.0),
        ("50 % loss, 30 % dup, 40 ms jitter", 0.5, 0.3, 40.0),
        ("80 % loss (>= 1 packet kept per press)", 0.8, 0.0, 10.0),
    ]
    out = []
    for name, loss, dup, jitter in scenarios:
        exact = 0
        presses = 0
        missing = extra = 0
        dur_err: list[float] = []
        for _ in range(trials):
            digits = "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 10)))
            sender = Rfc4733Sender(interval_ms=rng.choice([20, 20, 30, 50]))
            sent: list[tuple[float, Rfc4733Packet]] = []
            t = 0.0
            ts = rng.randrange(2**32)
            durations: list[float] = []
            for digit in digits:
                ms = rng.randint(40, 400)
                durations.append(max(ms, sender.interval_ms))  # at least one update interval
                packets = sender.packets(digit, ms, (ts + round(t * RATE)) & 0xFFFFFFFF)
                keep = [p for p in packets if rng.random() >= loss] or [rng.choice(packets)]
                sent += [(t + p.offset_ms / 1000, p) for p in keep]
                t += (ms + rng.randint(max(60, int(jitter) + 20), 400)) / 1000
            arrivals = []
            for seq, (when, packet) in enumerate(sent):
                for _ in range(2 if rng.random() < dup else 1):
                    arrivals.append((when + rng.uniform(0, jitter) / 1000, seq, packet))
            arrivals.sort(key=lambda a: a[0])
            receiver = Rfc4733Receiver()
            events: list[DtmfEvent] = []
            for at, seq, p in arrivals:
                events += receiver.poll(at)
                events += receiver.feed(
                    p.payload, timestamp=p.timestamp, sequence=seq, marker=p.marker, now=at
                )
            events += receiver.poll(t + 10) + receiver.flush(t + 10)
            got = "".join(e.digit for e in events)
            presses += len(digits)
            exact += got == digits
            missing += max(0, len(digits) - len(got))
            extra += max(0, len(got) - len(digits))
            if got == digits:
                dur_err += [abs(e.duration_ms - d) for e, d in zip(events, durations, strict=True)]
        out.append(
            {
                "scenario": name,
                "trials": trials,
                "presses": presses,
                "exact_pct": round(100 * exact / trials, 2),
                "missing": missing,
                "extra": extra,
                "duration_exact_pct": round(
                    100 * sum(e <= 1 for e in dur_err) / max(1, len(dur_err)), 1
                ),
            }
        )
    return out


# ---------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.dtmf_quality", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="a reduced run of a few seconds")
    p.add_argument("--seed", type=int, default=4733, help="random seed (default 4733)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--cpu-only", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu_only:  # the child of bank_cpu_single_thread
        print(json.dumps(bank_cpu(args.quick, cpu_speech(args.quick, args.seed), args.seed)))
        return 0
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(f"DTMF quality ({mode} run, seed {args.seed})\n")

    rows = acceptance(args.quick, rng)
    print("1. In-band detector, ITU-T Q.24-style acceptance")
    print(
        table(
            ("criterion", "requirement", "result", "verdict"),
            ((r.criterion, r.requirement, r.figures, r.verdict) for r in rows),
        )
    )
    ok = all(r.ok is not False for r in rows)

    talk, note = talk_off(args.quick, args.seed)
    print(
        "\n2. Talk-off (false digits from speech; default thresholds, and with the tone-energy "
        "ratio relaxed to 0.6 for comparison)"
    )
    if note:
        print(f"   NOTE: {note}")
    print(
        table(
            (
                "source",
                "minutes",
                "active dBm0",
                "false",
                "per 10 min",
                "digits",
                "per 10 min @0.6",
            ),
            (
                (
                    r["source"],
                    r["minutes"],
                    r["level_dbm0"],
                    r["false_digits"],
                    r["per_10_min"],
                    r["digits"] or "-",
                    r["per_10_min_ratio_0.6"],
                )
                for r in talk
            ),
        )
    )

    lat = latency(args.quick, rng)
    print(
        f"\n3. Timing ({lat['detected']}/{lat['trials']} random presses, 40-200 ms, "
        "-36..-3 dBm0; audio time, fed in 10 ms blocks)"
    )
    print(
        table(
            ("measure", "min", "p50", "p95", "max"),
            (
                (name.replace("_", " "), d["min"], d["p50"], d["p95"], d["max"])
                for name, d in lat.items()
                if isinstance(d, dict)
            ),
        )
    )
    ok = ok and lat["detected"] == lat["trials"] and lat["onset_to_detection_ms"]["max"] < 40

    cpu = bank_cpu(args.quick, cpu_speech(args.quick, args.seed), args.seed)
    single = bank_cpu_single_thread(args.quick, args.seed)
    print(
        "\n4. InbandDetectorBank per 20 ms channel-frame, best of 3 (CPU = process time, all "
        "threads; default BLAS threading, and BLAS on one thread)"
    )
    single_rows = single or [{} for _ in cpu]
    print(
        table(
            (
                "channels",
                "load",
                "CPU us",
                "wall us",
                "1-thread CPU us",
                "1-thread wall us",
                "events",
            ),
            (
                (
                    r["channels"],
                    r["load"],
                    r["cpu_us_per_channel_frame"],
                    r["wall_us_per_channel_frame"],
                    o.get("cpu_us_per_channel_frame", "-"),
                    o.get("wall_us_per_channel_frame", "-"),
                    r["events"],
                )
                for r, o in zip(cpu, single_rows, strict=True)
            ),
        )
    )

    rfc = rfc4733_trials(args.quick, args.seed)
    print(
        "\n5. RFC 4733 receiver under impairment (random presses, 20-50 ms updates; "
        "jitter < inter-digit pause)"
    )
    print(
        table(
            ("scenario", "trials", "presses", "exact %", "missing", "extra", "duration +-1 ms %"),
            (
                (
                    r["scenario"],
                    r["trials"],
                    r["presses"],
                    r["exact_pct"],
                    r["missing"],
                    r["extra"],
                    r["duration_exact_pct"],
                )
                for r in rfc
            ),
        )
    )
    ok = ok and all(r["extra"] == 0 for r in rfc)

    elapsed = time.perf_counter() - started
    print(f"\n{'all acceptance criteria met' if ok else 'SOME CRITERIA FAILED'} ({elapsed:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "mode": mode,
                    "seed": args.seed,
                    "acceptance": [r.__dict__ for r in rows],
                    "talk_off": talk,
                    "talk_off_note": note,
                    "timing": lat,
                    "bank_cpu": cpu,
                    "bank_cpu_one_blas_thread": single,
                    "rfc4733": rfc,
                    "ok": ok,
                },
                fh,
                indent=2,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
