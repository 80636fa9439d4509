"""RTP spray during a real call: strict RTP source checking (the RTP-bleed / RTP-injection
attacks on Asterisk and rtpengine) against an EMBEDDED switch and two baresip phones.

Media is anchored (``[rtp] symmetric_latch = false`` is the default): each leg's RTP port
accepts packets only from the address and port its peer's SDP named (media/engine.py drops
and counts everything else as ``dropped_wrong_source``). While 1001 and 1002 talk through the
switch (both sending digital silence, both recording what they hear, and the switch recording
the call), an attacker sprays loud RTP (full-scale PCMU, payload type 0, its own SSRC) at
EVERY port of the switch's RTP range, RTP and RTCP alike, from another address (127.0.0.2)
and from the phones' own address with a foreign port (127.0.0.1). Then:

* zero packets are relayed: neither phone hears a single loud 20 ms frame;
* zero packets are recorded: the call recording holds silence on both channels;
* the packets that reached the call's four live ports are counted as dropped from a wrong
  source (the figure is in the assertion message), and the call still carries the phones'
  own RTP.

Peer: baresip 1.0 (``apt-get install baresip-core``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from test_interop_media import (
        EmbeddedSwitch,
        block_rms,
        connect,
        hang_up,
        heard,
        needs_baresip,
        no_switch_errors,
        phone,
        read_8k,
        read_stereo,
        silence_wav,
    )
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.test_interop_media import (
        EmbeddedSwitch,
        block_rms,
        connect,
        hang_up,
        heard,
        needs_baresip,
        no_switch_errors,
        phone,
        read_8k,
        read_stereo,
        silence_wav,
    )

pytestmark = pytest.mark.peer

ATTACKERS = ("127.0.0.2", "127.0.0.1")
ROUNDS = 25  # sprays over the whole range (one packet per port per attacker per round)
LOUD = 0.05  # block RMS above this is audible; silence is 0, the spray is ~1.0
# Full-scale square wave in PCMU: 0x80 and 0x00 decode to +/-32124 (G.711 mu-law).
LOUD_PAYLOAD = bytes([0x80, 0x80, 0x00, 0x00] * 40)


def spray_packet(seq: int) -> bytes:
    """An RTP packet (RFC 3550 section 5.1): V=2, PT 0 (PCMU), the attacker's SSRC."""
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x0BADF00D) + LOUD_PAYLOAD


def loud_frames(samples: np.ndarray) -> int:
    """Number of 20 ms blocks louder than LOUD."""
    return int(np.count_nonzero(block_rms(samples, 160) > LOUD))


@needs_baresip
@pytest.mark.timeout(120)
async def test_rtp_spray_during_a_call_is_neither_relayed_nor_recorded(tmp_path: Path) -> None:
    quiet = silence_wav(tmp_path / "silence.wav")
    target = tmp_path / "rec" / "call.wav"
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        assert sw.config.rtp.symmetric_latch is False  # strict source is the default
        call_ids: list[str] = []
        sw.callbacks.append(lambda ev: call_ids.append(ev.call_id) if ev.name == "bridged"
                            else None)
        caller = phone(tmp_path, sw, "1001", source=quiet, record=True)
        callee = phone(tmp_path, sw, "1002", source=quiet, record=True)
        engine = sw.sw.media
        async with caller, callee:
            await connect(caller, callee, sw)
            sw.sw.record(call_ids[0], target)
            await asyncio.sleep(0.5)  # the phones' own RTP flows (and latches nothing)
            live = [ep for ep in engine.endpoints if not ep.symmetric_latch]
            live_ports = {p for ep in engine.endpoints for p in (ep.port, ep.port + 1)}
            before = engine.stats
            first, last = sw.rtp_range
            sent = sent_live = 0
            socks = []
            try:
                for address in ATTACKERS:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind((address, 0))
                    sock.setblocking(False)
                    socks.append(sock)
                for seq in range(ROUNDS):
                    for port in range(first, last + 1):
                        for sock in socks:
                            try:
                                sock.sendto(spray_packet(seq), ("127.0.0.1", port))
                            except OSError:  # ICMP port unreachable from an earlier send
                                pass
                            sent += 1
                            sent_live += port in live_ports
                    # let the switch (this event loop) drain its sockets between rounds
                    await asyncio.sleep(0.02)
            finally:
                for sock in socks:
                    sock.close()
            await asyncio.sleep(1.0)  # the phones' RTP keeps flowing after the spray
            after = engine.stats
            await hang_up(caller, callee, sw)
        await sw.wait_event("recording-ready", timeout=5)
        no_switch_errors(sw)

    delta = {k: after[k] - before[k] for k in after}
    figures = (f"sprayed {sent} packets at ports {first}-{last} ({sent_live} at the call's "
               f"{len(live_ports)} live ports); engine counters during the spray: {delta}")
    assert len(live) == len(engine.endpoints) or not engine.endpoints, figures
    # Counted: every spray packet that reached a live port (the kernel may drop some if a
    # socket buffer fills, never more than were sent). On the RTP ports and from 127.0.0.2 on
    # the RTCP ports they are "dropped_wrong_source"; the RTCP port checks only the source
    # IP, so from 127.0.0.1 they fail the RTCP header check instead ("dropped_malformed").
    dropped = delta["dropped_wrong_source"] + delta["dropped_malformed"]
    assert 0.9 * sent_live <= dropped <= sent_live, figures
    assert delta["dropped_wrong_source"] >= 0.9 * sent_live * 3 / 4, figures
    # The phones' own RTP still flows through the switch.
    assert delta["packets_relayed"] > 0, figures
    # Zero relayed: neither phone heard a loud frame.
    for p in (caller, callee):
        samples = read_8k(heard(p))
        assert len(samples) > 8000, f"{p.user}: recording too short\n{figures}"
        assert loud_frames(samples) == 0, f"{p.user} heard the spray\n{figures}"
    # Zero recorded: both channels of the call recording are silent.
    frames, rate, channels = read_stereo(target)
    assert channels == 2 and rate == 8000 and len(frames) > 8000, (channels, rate, len(frames))
    for ch in range(2):
        assert loud_frames(frames[:, ch]) == 0, f"channel {ch} recorded the spray\n{figures}"
    print(figures)
