"""The media side of one call leg: DTMF detection, DTMF and prompt generation, recording taps.

Each leg's RTP endpoint (``media.engine.RtpEndpoint``) relays audio to the other leg. This
module hangs one ``on_packet`` hook on it that

* feeds RFC 4733 telephone-events to an :class:`~media.dtmf.Rfc4733Receiver`;
* decodes G.711 for the in-band detector when the leg negotiated no telephone-event (or when
  in-band detection is forced), since such a phone can only signal digits in the audio;
* hands every packet to the recorders attached to the call;
* swallows the packet (no relay) while the *other* leg hears a prompt or DTMF from the switch,
  so the switch's packets and the relayed audio never interleave in the one outgoing stream
  (the endpoint re-stamps both into a single SSRC and sequence).

SIP INFO digits are pushed in by the B2BUA. All three transports meet in one
:class:`~media.dtmf.DtmfMerger`, which emits each press once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import numpy as np

from media.dtmf import (
    DtmfEvent,
    DtmfMerger,
    InbandDetector,
    Rfc4733Receiver,
    Rfc4733Sender,
    inband_tone,
    info_event,
)
from media.engine import RtpEndpoint
from media.g711 import alaw_decode, ulaw_decode
from media.playback import PlaybackHandle, Player
from media.rtp import rtp_header_length
from media.sdp import Codec
from media.wav import Prompt

log = logging.getLogger(__name__)

PacketTap = Callable[[RtpEndpoint, bytes], object]


class LegMedia:
    """DTMF, playback and recording for one leg's RTP endpoint."""

    def __init__(
        self,
        endpoint: RtpEndpoint,
        codecs: list[Codec],
        on_dtmf: Callable[[DtmfEvent], None],
        *,
        inband: str = "auto",
    ) -> None:
        self.endpoint = endpoint
        self._on_dtmf = on_dtmf
        self._loop = asyncio.get_running_loop()
        self.rfc4733 = Rfc4733Receiver()
        self.merger = DtmfMerger(self._emit)
        self.inband: InbandDetector | None = None
        self._inband_mode = inband
        self._poll_timer: asyncio.TimerHandle | None = None
        self.taps: list[PacketTap] = []
        self.peer: LegMedia | None = None
        self.player: Player | None = None
        self._dtmf_ssrc = secrets.randbits(32)
        self._dtmf_seq = secrets.randbits(16)
        self._dtmf_ts = secrets.randbits(32)
        self._dtmf_busy_until = 0.0
        self.te_pt: int | None = None
        self.audio: Codec | None = None
        self.set_codecs(codecs)
        endpoint.on_packet = self._on_packet

    def set_codecs(self, codecs: list[Codec]) -> None:
        """The codecs this leg negotiated (first audio codec and telephone-event PT)."""
        self.te_pt = next(
            (c.payload_type for c in codecs if c.name.lower() == "telephone-event"), None
        )
        self.audio = next(
            (c for c in codecs if c.name.upper() in ("PCMU", "PCMA")), None
        )
        want_inband = self._inband_mode == "always" or (
            self._inband_mode == "auto" and self.te_pt is None
        )
        if want_inband and self.inband is None:
            self.inband = InbandDetector()
        elif not want_inband:
            self.inband = None
        if self.player is not None and self.audio is not None:
            self.player.set_codec(self.audio)

    # ---- receive path (called for every packet of this leg: keep it short) ---------------------

    def _on_packet(self, endpoint: RtpEndpoint, data: bytes) -> bool | None:
        pt = data[1] & 0x7F
        if pt == self.te_pt:
            self._telephone_event(data)
        elif self.inband is not None and self.audio is not None and pt == self.audio.payload_type:
            self._inband(data)
        if self.taps:
            for tap in self.taps:
                tap(endpoint, data)
        peer = self.peer
        if peer is not None and peer.injecting():
            return True  # the other leg hears a prompt or our DTMF: do not relay into it
        return None

    def injecting(self) -> bool:
        """True while the switch is sending its own audio or DTMF to this leg."""
        if self.player is not None and self.player.playing:
            return True
        if self._dtmf_busy_until:
            if self._dtmf_busy_until > self._loop.time():
                return True
            self._dtmf_busy_until = 0.0  # done: later packets skip the clock read
        return False

    def _telephone_event(self, data: bytes) -> None:
        hl = rtp_header_length(data)
        if hl < 0:
            return
        now = self._loop.time()
        events = self.rfc4733.feed(
            data[hl:],
            timestamp=int.from_bytes(data[4:8], "big"),
            sequence=int.from_bytes(data[2:4], "big"),
            marker=bool(data[1] & 0x80),
            now=now,
            ssrc=int.from_bytes(data[8:12], "big"),
        )
        for event in events:
            self.merger.push(event, now)
        self._arm_poll()

    def _inband(self, data: bytes) -> None:
        assert self.inband is not None and self.audio is not None
        hl = rtp_header_length(data)
        if hl < 0:
            return
        payload = data[hl:]
        pcmu = self.audio.name.upper() == "PCMU"
        samples = ulaw_decode(payload) if pcmu else alaw_decode(payload)
        now = self._loop.time()
        for event in self.inband.feed(samples, now):
            self.merger.push(event, now)
        self._arm_poll()

    def info(self, content_type: str, body: bytes) -> bool:
        """A SIP INFO on this leg; True when it carried a DTMF digit."""
        now = self._loop.time()
        event = info_event(content_type, body, now)
        if event is None:
            return False
        self.merger.push(event, now)
        self._arm_poll()
        return True

    def _arm_poll(self) -> None:
        deadlines = [
            d for d in (self.rfc4733.next_deadline(), self.merger.next_deadline()) if d is not None
        ]
        if not deadlines:
            return
        when = min(deadlines)
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._poll_timer = self._loop.call_at(when + 0.001, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        now = self._loop.time()
        for event in self.rfc4733.poll(now):
            self.merger.push(event, now)
        self.merger.poll(now)
        self._arm_poll()

    def _emit(self, event: DtmfEvent) -> None:
        if self.player is not None:
            self.player.dtmf_received(event.digit)
        try:
            self._on_dtmf(event)
        except Exception:
            log.exception("DTMF handler failed")

    # ---- send path ------------------------------------------------------------------------

    def play(self, prompt: Prompt, *, loop: bool = False, barge_in: bool = False) -> PlaybackHandle:
        """Queue a prompt toward this leg's phone (paced by the shared media clock)."""
        if self.player is None:
            self.player = Player(self.endpoint.send_rtp, codec=self.audio or "PCMU")
        return self.player.play(prompt, loop=loop, stop_on_dtmf=barge_in)

    def stop_playback(self) -> None:
        """Stop and drop every prompt for this leg."""
        if self.player is not None:
            self.player.stop()

    def send_dtmf(self, digits: str, *, duration_ms: int = 100, gap_ms: int = 100) -> float:
        """Send digits toward this leg: RFC 4733 when it negotiated telephone-event, else tones.

        Returns the seconds until the last digit has been sent.
        """
        if self.te_pt is None:
            tones = [inband_tone(d, duration_ms) for d in digits]
            gap = np.zeros(int(8 * gap_ms), dtype=np.int16)
            samples = np.concatenate([part for t in tones for part in (t, gap)])
            self.play(Prompt.from_samples(samples, name=f"dtmf:{digits}"))
            return len(samples) / 8000.0
        sender = Rfc4733Sender()
        start = max(self._loop.time(), self._dtmf_busy_until)
        offset = start - self._loop.time()
        for digit in digits:
            packets = sender.packets(digit, duration_ms, self._dtmf_ts)
            for packet in packets:
                self._loop.call_later(
                    offset + packet.offset_ms / 1000.0, self._send_event_packet, packet.payload,
                    packet.marker, packet.timestamp,
                )
            last = packets[-1].offset_ms / 1000.0 if packets else 0.0
            self._dtmf_ts = (self._dtmf_ts + int(8 * (duration_ms + gap_ms))) & 0xFFFFFFFF
            offset += last + gap_ms / 1000.0
        self._dtmf_busy_until = self._loop.time() + offset
        return offset

    def _send_event_packet(self, payload: bytes, marker: bool, timestamp: int) -> None:
        assert self.te_pt is not None
        header = bytes(
            [0x80, (0x80 if marker else 0) | self.te_pt]
        ) + self._dtmf_seq.to_bytes(2, "big") + timestamp.to_bytes(4, "big") + (
            self._dtmf_ssrc.to_bytes(4, "big")
        )
        self._dtmf_seq = (self._dtmf_seq + 1) & 0xFFFF
        self.endpoint.send_rtp(header + payload)

    def close(self) -> None:
        """Stop timers and playback; detach from the endpoint."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        if self.player is not None:
            self.player.close()
            self.player = None
        self.taps.clear()
        self.peer = None
        if self.endpoint.on_packet == self._on_packet:
            self.endpoint.on_packet = None
        # The DTMF merger calls back into us: break that cycle so a finished leg's media is
        # freed by reference counting (see RtpEndpoint._transport_lost).
        self.merger.on_event = None

