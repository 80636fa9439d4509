"""Player packet streams (RFC 3550 sequence/timestamp, RFC 3551 marker), queueing, looping,
stop and barge-in, driven frame by frame; the shared MediaClock on a fake scheduler."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import numpy as np
import pytest

from media.clock import MediaClock, shared_clock
from media.g711 import alaw_encode, ulaw_encode
from media.playback import DoneReason, PlaybackHandle, Player
from media.rtp import RtpHeader, split_rtp
from media.sdp import Codec
from media.wav import Prompt

# --------------------------------------------------------------------------- fakes


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """A scheduler whose time only moves when the test says so. ``lateness`` delays every
    timer firing (simulating a busy loop); ``calls`` records every ``call_at`` time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.lateness = 0.0
        self.calls: list[float] = []
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._ids = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeHandle:
        handle = FakeHandle(when, callback)
        self.calls.append(when)
        heapq.heappush(self._heap, (when, next(self._ids), handle))
        return handle

    @property
    def pending(self) -> list[FakeHandle]:
        return [h for _, _, h in self._heap if not h.cancelled]

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing due timers (each ``lateness`` after its time)."""
        end = self.now + seconds
        while self._heap and self._heap[0][0] + self.lateness <= end + 1e-12:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when + self.lateness)
            handle.callback()
        self.now = end

    def stall(self, seconds: float) -> None:
        """The loop is blocked: time passes, no timer fires."""
        self.now += seconds


class Recorder:
    """A clock stream recording (n, time) of each tick."""

    def __init__(self, loop: FakeLoop | None = None) -> None:
        self.loop = loop
        self.ticks: list[int] = []
        self.times: list[float] = []

    def tick(self, n: int) -> None:
        self.ticks.append(n)
        if self.loop is not None:
            self.times.append(self.loop.now)


def make_prompt(frames: float, value: int = 1000, name: str = "") -> Prompt:
    return Prompt.from_samples(np.full(round(frames * 160), value), name=name)


def parse(packets: list[bytes]) -> list[tuple[RtpHeader, bytes]]:
    return [split_rtp(p) for p in packets]


def manual_player(**kwargs: object) -> tuple[Player, list[bytes]]:
    sent: list[bytes] = []
    defaults: dict[str, object] = {"ssrc": 0x1234, "sequence": 100, "timestamp": 5000}
    defaults.update(kwargs)
    player = Player(sent.append, clock=None, **defaults)  # type: ignore[arg-type]
    return player, sent


def run(player: Player, frames: range) -> None:
    for n in frames:
        player.tick(n)


# --------------------------------------------------------------------------- packets


def test_queued_prompts_form_one_continuous_stream() -> None:
    player, sent = manual_player()
    a = player.play(make_prompt(2.5, 1000, "a"))  # 3 packets (last one padded)
    b = player.play(make_prompt(2, 2000, "b"))
    run(player, range(10, 20))
    packets = parse(sent)
    assert len(packets) == 5
    assert [h.sequence for h, _ in packets] == [100, 101, 102, 103, 104]
    assert [h.timestamp for h, _ in packets] == [5000 + 160 * k for k in range(5)]
    assert [h.marker for h, _ in packets] == [True, False, False, False, False]
    assert {h.ssrc for h, _ in packets} == {0x1234}
    assert {h.payload_type for h, _ in packets} == {0}
    assert all(len(p) == 160 for _, p in packets)
    assert packets[0][1] == ulaw_encode(np.full(160, 1000))
    assert packets[2][1] == ulaw_encode(np.full(80, 1000)) + b"\xff" * 80  # padded
    assert packets[3][1] == ulaw_encode(np.full(160, 2000))
    assert a.reason is DoneReason.FINISHED and b.reason is DoneReason.FINISHED
    assert (a.frames_sent, b.frames_sent) == (3, 2)
    assert player.packets_sent == 5 and player.octets_sent == 800
    assert not player.playing


def test_marker_only_after_silence_and_timestamp_follows_time() -> None:
    player, sent = manual_player()
    player.play(make_prompt(2))
    run(player, range(0, 5))  # frames 0, 1 sent; 2-4 idle
    player.play(make_prompt(2))
    run(player, range(5, 7))
    player.play(make_prompt(1))  # queued right after: no silence in between
    run(player, range(7, 9))
    packets = parse(sent)
    assert [h.sequence for h, _ in packets] == list(range(100, 105))  # no gap in seq
    assert [h.timestamp - 5000 for h, _ in packets] == [0, 160, 800, 960, 1120]
    assert [h.marker for h, _ in packets] == [True, False, True, False, False]


def test_pcma_codec_objects_and_payload_type() -> None:
    player, sent = manual_player(codec="PCMA")
    player.play(make_prompt(1, -500))
    player.tick(0)
    header, payload = split_rtp(sent[0])
    assert header.payload_type == 8 and payload == alaw_encode(np.full(160, -500))
    player, sent = manual_player(codec=Codec("PCMU", 0, 8000), payload_type=96)
    player.play(make_prompt(1))
    player.tick(0)
    assert split_rtp(sent[0])[0].payload_type == 96
    with pytest.raises(ValueError):
        manual_player(codec="G722")
    with pytest.raises(ValueError):
        manual_player(codec=Codec("PCMU", 0, 16000))


def test_codec_switch_mid_prompt_keeps_position() -> None:
    rising = Prompt.from_samples(np.arange(480) * 10)
    player, sent = manual_player()
    player.play(rising)
    player.tick(0)
    player.set_codec("PCMA")
    player.tick(1)
    header, payload = split_rtp(sent[1])
    assert header.payload_type == 8 and header.sequence == 101 and not header.marker
    assert payload == alaw_encode(np.arange(160, 320) * 10)


def test_sequence_and_timestamp_wrap() -> None:
    player, sent = manual_player(sequence=0xFFFF, timestamp=0xFFFFFF00)
    player.play(make_prompt(3))
    run(player, range(3))
    headers = [h for h, _ in parse(sent)]
    assert [h.sequence for h in headers] == [0xFFFF, 0, 1]
    assert [h.timestamp for h in headers] == [0xFFFFFF00, 0xFFFFFFA0, 0x40]


def test_random_initial_values_differ() -> None:
    a = Player(lambda p: None, clock=None)
    b = Player(lambda p: None, clock=None)
    assert (a.ssrc, a.sequence) != (b.ssrc, b.sequence)


def test_frame_index_going_back_keeps_timestamps_increasing() -> None:
    player, sent = manual_player()
    player.play(make_prompt(4))
    run(player, range(50, 52))
    run(player, range(0, 2))  # e.g. moved to another clock
    stamps = [h.timestamp for h, _ in parse(sent)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


# --------------------------------------------------------------------------- control


def test_loop_until_stopped_then_queue_continues() -> None:
    player, sent = manual_player()
    music = Prompt.from_samples(np.concatenate([np.full(160, 100), np.full(160, 200)]))
    moh = player.play(music, loop=True)
    after = player.play(make_prompt(1, 3000))
    run(player, range(7))
    assert moh.loops == 3 and not moh.done()
    payloads = [p for _, p in parse(sent)]
    assert payloads[:4] == [ulaw_encode(np.full(160, v)) for v in (100, 200, 100, 200)]
    moh.stop()
    assert moh.reason is DoneReason.STOPPED and not after.done()
    run(player, range(7, 9))
    last = parse(sent)[-1]
    assert last[1] == ulaw_encode(np.full(160, 3000))
    assert not last[0].marker  # no silence between the music and the next prompt
    assert after.reason is DoneReason.FINISHED


def test_stop_everything() -> None:
    player, sent = manual_player()
    handles = [player.play(make_prompt(5)) for _ in range(3)]
    run(player, range(2))
    stopped = player.stop()
    assert stopped == handles
    assert all(h.reason is DoneReason.STOPPED for h in handles)
    run(player, range(2, 5))
    assert len(sent) == 2 and not player.playing
    handles[0].stop()  # no-op once done
    assert handles[0].reason is DoneReason.STOPPED


def test_stop_a_queued_prompt_only() -> None:
    player, sent = manual_player()
    a = player.play(make_prompt(1, 1))
    b = player.play(make_prompt(1, 2))
    c = player.play(make_prompt(1, 3))
    b.stop()
    run(player, range(4))
    assert [h.reason for h in (a, b, c)] == [
        DoneReason.FINISHED,
        DoneReason.STOPPED,
        DoneReason.FINISHED,
    ]
    assert [p for _, p in parse(sent)] == [ulaw_encode(np.full(160, v)) for v in (1, 3)]


def test_barge_in_stops_only_flagged_prompts() -> None:
    player, sent = manual_player()
    first = player.play(make_prompt(10, 1), stop_on_dtmf=True)
    keep = player.play(make_prompt(1, 2))
    flagged = player.play(make_prompt(1, 3), stop_on_dtmf=True)
    run(player, range(3))
    assert player.dtmf_received("5") == [first, flagged]
    assert first.reason is DoneReason.BARGE_IN and first.digit == "5"
    assert flagged.reason is DoneReason.BARGE_IN
    assert keep.reason is None
    run(player, range(3, 6))
    assert keep.reason is DoneReason.FINISHED
    assert parse(sent)[-1][1] == ulaw_encode(np.full(160, 2))
    assert len(sent) == 4
    assert player.dtmf_received() == []  # nothing flagged left


def test_dtmf_does_not_stop_unflagged_prompt() -> None:
    player, _ = manual_player()
    h = player.play(make_prompt(3))
    player.tick(0)
    assert player.dtmf_received("1") == []
    assert h.reason is None


def test_done_callbacks_and_chaining() -> None:
    player, sent = manual_player()
    reasons: list[tuple[str, DoneReason | None]] = []

    def chain(handle: PlaybackHandle) -> None:
        reasons.append((handle.prompt.name, handle.reason))
        if handle.prompt.name == "one":
            player.play(make_prompt(1, 7, "two"), on_done=chain)

    player.play(make_prompt(1, 5, "one"), on_done=chain)
    run(player, range(4))
    assert reasons == [("one", DoneReason.FINISHED), ("two", DoneReason.FINISHED)]
    headers = [h for h, _ in parse(sent)]
    assert [h.marker for h in headers] == [True, False]  # chained from the callback: seamless
    late: list[DoneReason | None] = []
    done = player.play(make_prompt(0.5))
    run(player, range(4, 5))
    done.add_done_callback(lambda h: late.append(h.reason))  # already done: runs at once
    assert late == [DoneReason.FINISHED]


def test_failing_callback_does_not_break_playback() -> None:
    player, sent = manual_player()

    def boom(handle: PlaybackHandle) -> None:
        raise RuntimeError("boom")

    player.play(make_prompt(1), on_done=boom)
    player.play(make_prompt(1))
    run(player, range(3))
    assert len(sent) == 2


def test_empty_prompt_finishes_without_packets() -> None:
    player, sent = manual_player()
    empty = player.play(Prompt.from_samples(np.zeros(0)), loop=True)
    after = player.play(make_prompt(1))
    player.tick(0)
    assert empty.reason is DoneReason.FINISHED
    assert len(sent) == 1 and after.reason is DoneReason.FINISHED


async def test_wait_returns_the_reason() -> None:
    player, _ = manual_player()
    a = player.play(make_prompt(1))
    b = player.play(make_prompt(5), stop_on_dtmf=True)
    waiter_a = asyncio.ensure_future(a.wait())
    waiter_b = asyncio.ensure_future(b.wait())
    await asyncio.sleep(0)
    run(player, range(3))
    player.dtmf_received("#")
    assert await waiter_a is DoneReason.FINISHED
    assert await waiter_b is DoneReason.BARGE_IN
    assert await a.wait() is DoneReason.FINISHED


def test_send_errors_are_counted() -> None:
    def broken(packet: bytes) -> None:
        raise OSError("unreachable")

    player = Player(broken, clock=None)
    h = player.play(make_prompt(2))
    run(player, range(3))
    assert player.send_errors == 2 and h.reason is DoneReason.FINISHED


def test_closed_player_refuses_play() -> None:
    player, _ = manual_player()
    h = player.play(make_prompt(2))
    player.close()
    assert h.reason is DoneReason.STOPPED
    with pytest.raises(RuntimeError):
        player.play(make_prompt(1))


# --------------------------------------------------------------------------- clock


def test_clock_ticks_at_absolute_times() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.2)
    assert stream.ticks == list(range(11))  # frame 0 at once, then every 20 ms
    assert stream.times == pytest.approx([1000.0 + 0.02 * n for n in range(11)])
    assert clock.stats.late_wakeups == 0 and clock.stats.skipped_frames == 0


def test_clock_late_wakeups_do_not_drift() -> None:
    loop = FakeLoop()
    loop.lateness = 0.007  # every timer fires 7 ms late
    clock = MediaClock(0.020, loop=loop)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(1.0)
    assert stream.ticks == list(range(50))
    # each timer is set for the frame's absolute due time, never "now + 20 ms"
    assert loop.calls == pytest.approx([1000.0 + 0.02 * n for n in range(len(loop.calls))])
    assert clock.stats.max_lateness == pytest.approx(0.007)
    assert clock.stats.late_wakeups == 0


def test_clock_catches_up_after_a_stall() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.05)  # frames 0, 1, 2
    loop.stall(0.065)  # blocked until 1000.115: frames 3, 4, 5 are due
    loop.advance(0.0)
    assert stream.ticks == [0, 1, 2, 3, 4, 5]
    assert stream.times[3:] == [pytest.approx(1000.115)] * 3  # sent together, in order
    assert clock.stats.late_wakeups == 1 and clock.stats.skipped_frames == 0
    loop.advance(0.1)  # back on the original grid
    assert stream.ticks[-1] == 10
    assert stream.times[-1] == pytest.approx(1000.2)


def test_clock_catch_up_is_bounded() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop, max_burst=5)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.0)  # frame 0
    loop.stall(1.0)  # frames 1..50 due
    loop.advance(0.0)
    assert stream.ticks == [0, 46, 47, 48, 49, 50]  # the newest five; the rest skipped
    assert clock.stats.skipped_frames == 45


def test_clock_tolerates_slightly_early_timers() -> None:
    loop = FakeLoop()
    loop.lateness = -0.0005  # ms-resolution timers (uvloop) may fire a bit early
    clock = MediaClock(0.020, loop=loop)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.1)
    assert stream.ticks == list(range(6))
    assert len(loop.calls) == 7  # no extra wake-ups to wait out the last half millisecond


def test_clock_idles_without_streams_and_keeps_counting_time() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.05)
    clock.remove(stream)
    loop.advance(0.05)
    assert not clock.running and not loop.pending
    loop.advance(1.0)
    clock.add(stream)
    loop.advance(0.03)
    ticks = stream.ticks
    assert ticks[:3] == [0, 1, 2]
    assert ticks[3:] == [55, 56]  # frame numbers kept following time while idle
    assert stream.times[3] == pytest.approx(1000.0 + 55 * 0.02)


def test_clock_stream_changes_during_a_frame() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    late = Recorder()
    victim = Recorder()

    class Killer:
        def tick(self, n: int) -> None:
            clock.remove(victim)
            clock.add(late)

    clock.add(Killer())
    clock.add(victim)
    loop.advance(0.0)
    assert victim.ticks == []  # removed before its turn in the same frame
    assert late.ticks == []  # added during frame 0: starts with frame 1
    loop.advance(0.02)
    assert late.ticks == [1]


def test_clock_removes_a_failing_stream() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    good = Recorder()

    class Bad:
        def tick(self, n: int) -> None:
            raise ValueError("bad stream")

    bad = Bad()
    clock.add(bad)
    clock.add(good)
    loop.advance(0.04)
    assert good.ticks == [0, 1, 2]
    assert bad not in clock and clock.stats.stream_errors == 1


def test_clock_close_and_validation() -> None:
    loop = FakeLoop()
    clock = MediaClock(loop=loop)
    clock.add(Recorder())
    clock.close()
    assert not clock.running and len(clock) == 0
    with pytest.raises(RuntimeError):
        clock.add(Recorder())
    with pytest.raises(ValueError):
        MediaClock(0)
    with pytest.raises(ValueError):
        MediaClock(max_burst=0)
    with pytest.raises(RuntimeError):
        MediaClock().add(Recorder())  # no loop running, none given


def test_player_on_clock_attaches_only_while_playing() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    sent: list[bytes] = []
    player = Player(sent.append, clock=clock, ssrc=1, sequence=0, timestamp=0)
    assert player not in clock
    h = player.play(make_prompt(3))
    assert player in clock
    loop.advance(0.1)
    assert h.reason is DoneReason.FINISHED and len(sent) == 3
    assert player in clock  # lingers a few idle frames in case another prompt follows
    loop.advance(0.2)
    assert player not in clock and not clock.running
    loop.advance(0.3)
    h2 = player.play(make_prompt(1))
    loop.advance(0.05)
    headers = [h for h, _ in parse(sent)]
    assert h2.reason is DoneReason.FINISHED
    assert headers[3].marker and headers[3].sequence == 3
    # the timestamp advanced by the idle time (about 0.6 s = 30 frames), not one frame
    assert headers[3].timestamp - headers[2].timestamp >= 160 * 25
    with pytest.raises(ValueError):
        Player(sent.append, clock=MediaClock(0.030, loop=loop))


def test_many_players_share_one_timer() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop)
    sent: list[list[bytes]] = [[] for _ in range(50)]
    players = [Player(s.append, clock=clock) for s in sent]
    for p in players:
        p.play(make_prompt(10))
    loop.advance(0.19)
    assert all(len(s) == 10 for s in sent)
    assert len(loop.calls) == 11  # one timer chain for all fifty


async def test_shared_clock_on_a_real_loop() -> None:
    clock = shared_clock()
    assert shared_clock() is clock
    sent: list[bytes] = []
    player = Player(sent.append)  # the shared clock, taken at play()
    handle = player.play(make_prompt(3))
    assert await asyncio.wait_for(handle.wait(), 5) is DoneReason.FINISHED
    assert [h.sequence for h, _ in parse(sent)] == [
        (player.sequence - 3 + k) & 0xFFFF for k in range(3)
    ]
    player.close()
    assert player not in clock
    clock.close()
    assert shared_clock() is not clock


def test_clock_spreads_streams_over_phases() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop, slots=4, slot_capacity=2)
    streams = [Recorder(loop) for _ in range(5)]
    for s in streams:
        clock.add(s)
    assert clock.slot_sizes == [2, 2, 1, 0]
    assert [clock.slot_of(s) for s in streams] == [0, 0, 1, 1, 2]
    loop.advance(0.059)
    for s in streams:
        assert s.ticks == [0, 1, 2]  # every phase gets the same frame numbers
        slot = clock.slot_of(s)
        assert slot is not None
        assert s.times == pytest.approx([clock.frame_time(n, slot) for n in range(3)])
        assert s.times[0] == pytest.approx(1000.0 + 0.005 * slot)
    assert len(loop.calls) == 10  # three phases per frame woken, the empty fourth is not
    clock.remove(streams[0])
    newcomer = Recorder(loop)
    clock.add(newcomer)
    assert clock.slot_of(newcomer) == 0  # capacity freed in phase 0
    for s in [Recorder() for _ in range(4)]:
        clock.add(s)
    assert clock.slot_sizes == [3, 2, 2, 2]  # fills phases 2 and 3, then the least loaded


def test_clock_single_phase_load_wakes_once_per_interval() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop, slots=4, slot_capacity=100)
    stream = Recorder(loop)
    clock.add(stream)
    loop.advance(0.1)
    assert stream.ticks == list(range(6))
    assert loop.calls == pytest.approx([1000.0 + 0.02 * k for k in range(7)])


def test_clock_catch_up_runs_every_phase_in_order() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop, slots=2, slot_capacity=1)
    order: list[tuple[str, int]] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def tick(self, n: int) -> None:
            order.append((self.name, n))

    clock.add(Named("a"))
    clock.add(Named("b"))
    loop.advance(0.0)
    loop.stall(0.045)  # b@0 (1000.01), a@1, b@1, a@2 (1000.04) are due
    loop.advance(0.0)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert clock.stats.late_wakeups == 1


def test_player_keeps_its_phase_when_the_next_prompt_follows_quickly() -> None:
    loop = FakeLoop()
    clock = MediaClock(0.020, loop=loop, slots=4, slot_capacity=1)
    clock.add(Recorder())  # occupies phase 0
    sent: list[bytes] = []
    player = Player(sent.append, clock=clock, ssrc=1, sequence=0, timestamp=0)
    first = player.play(make_prompt(2))
    slot = clock.slot_of(player)
    assert slot == 1
    loop.advance(0.03)  # frames 0 and 1 at 1000.005 and 1000.025
    assert first.done()
    loop.advance(0.005)  # the owner reacts to the completion a little later
    player.play(make_prompt(2))
    assert clock.slot_of(player) == slot  # never left the clock: same phase
    loop.advance(0.06)
    headers = [h for h, _ in parse(sent)]
    assert [h.sequence for h in headers] == [0, 1, 2, 3]
    assert [h.marker for h in headers] == [True, False, False, False]
    assert [h.timestamp for h in headers] == [0, 160, 320, 480]


def test_player_ignores_a_repeated_frame() -> None:
    player, sent = manual_player()
    player.play(make_prompt(3))
    player.tick(7)
    player.tick(7)
    player.tick(8)
    assert [h.timestamp - 5000 for h, _ in parse(sent)] == [0, 160]
