"""The asyncio RTP relay: real UDP "phones" on 127.0.0.1 talking through bridged endpoints."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from media.engine import COUNTER_NAMES, MediaEngine, PortRangeExhausted, RtpEndpoint
from media.rtp import RtpHeader, parse_rtp, split_rtp
from media.sdp import PCMA, PCMU, TELEPHONE_EVENT, Codec

LOCAL = "127.0.0.1"
RECV_TIMEOUT = 5.0  # only bounds a failing test; nothing asserts on timing


def free_port_range(pairs: int, host: str = LOCAL) -> int:
    """An even base port with ``2 * pairs`` consecutive free UDP ports on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(500):
        base = random.randrange(20000, 60000, 2)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + 2 * pairs):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free port range found")


class Phone(asyncio.DatagramProtocol):
    """A UDP peer with an RTP socket and an RTCP socket on RTP port + 1."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), RECV_TIMEOUT)

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        name = self.transport.get_extra_info("sockname")
        return (name[0], name[1])


class PhonePair:
    def __init__(self, rtp: Phone, rtcp: Phone) -> None:
        self.rtp = rtp
        self.rtcp = rtcp

    @property
    def address(self) -> tuple[str, int]:
        return self.rtp.address

    def close(self) -> None:
        for p in (self.rtp, self.rtcp):
            assert p.transport is not None
            p.transport.close()


async def open_phone(host: str = LOCAL) -> PhonePair:
    loop = asyncio.get_running_loop()
    base = free_port_range(1, host)
    rtp_t, rtp = await loop.create_datagram_endpoint(Phone, local_addr=(host, base))
    rtcp_t, rtcp = await loop.create_datagram_endpoint(Phone, local_addr=(host, base + 1))
    rtp.transport = rtp_t
    rtcp.transport = rtcp_t
    return PhonePair(rtp, rtcp)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (bounded; not a timing assertion)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def rtp_packet(
    pt: int = 0,
    seq: int = 1,
    ssrc: int = 0x1234,
    payload: bytes = b"\xff" * 160,
    marker: bool = False,
) -> bytes:
    return RtpHeader(
        payload_type=pt, sequence=seq, timestamp=seq * 160, ssrc=ssrc, marker=marker
    ).build(payload)


def rtcp_rr(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


@pytest.fixture
async def engine() -> AsyncIterator[MediaEngine]:
    base = free_port_range(8)
    eng = MediaEngine(LOCAL, base, base + 15)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
async def phones() -> AsyncIterator[tuple[PhonePair, PhonePair]]:
    a = await open_phone()
    b = await open_phone()
    yield a, b
    a.close()
    b.close()


async def bridged(
    engine: MediaEngine,
    a: PhonePair,
    b: PhonePair,
    codecs_a: list[Codec] | None = None,
    codecs_b: list[Codec] | None = None,
) -> tuple[RtpEndpoint, RtpEndpoint]:
    ea = await engine.allocate()
    eb = await engine.allocate()
    ea.set_remote(a.address, codecs_a or [PCMU, TELEPHONE_EVENT])
    eb.set_remote(b.address, codecs_b or [PCMU, TELEPHONE_EVENT])
    engine.bridge(ea, eb)
    return ea, eb


# -- port allocation ---------------------------------------------------------------------------


async def test_allocate_even_rtp_odd_rtcp(engine: MediaEngine) -> None:
    ep = await engine.allocate()
    assert ep.port % 2 == 0
    assert engine.port_min <= ep.port and ep.port + 1 <= engine.port_max
    assert ep.local_address == (LOCAL, ep.port)
    assert ep.rtcp_address == (LOCAL, ep.port + 1)
    for port in (ep.port, ep.port + 1):  # both really bound
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as e:
            s.bind((LOCAL, port))
        assert e.value.errno == errno.EADDRINUSE
    other = await engine.allocate()
    assert other.port != ep.port and other.port % 2 == 0


async def test_odd_port_min_is_rounded_up() -> None:
    base = free_port_range(2)
    eng = MediaEngine(LOCAL, base + 1, base + 3)
    ep = await eng.allocate()
    assert ep.port == base + 2
    with pytest.raises(PortRangeExhausted):
        await eng.allocate()
    await eng.close()


async def test_exhaustion_error_and_close_releases() -> None:
    base = free_port_range(2)
    eng = MediaEngine(LOCAL, base, base + 3)
    first = await eng.allocate()
    second = await eng.allocate()
    assert {first.port, second.port} == {base, base + 2}
    with pytest.raises(PortRangeExhausted, match=f"{base}-{base + 3}"):
        await eng.allocate()
    assert eng.stats["port_pairs_free"] == 0
    first.close()
    first.close()  # idempotent
    again = await eng.allocate()  # waits for the socket to be really closed
    assert again.port == first.port
    await eng.close()
    assert eng.stats["endpoints"] == 0
    assert eng.stats["port_pairs_free"] == 2
    # the sockets are gone after close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, base))
    with pytest.raises(RuntimeError):
        await eng.allocate()
    await eng.start()
    ep = await eng.allocate()
    await eng.close()
    assert ep.closed


async def test_closed_pairs_are_parked_then_reused_fresh(
    monkeypatch: pytest.MonkeyPatch, phones: tuple[PhonePair, PhonePair]
) -> None:
    """A closed endpoint's sockets stay bound, drop what still arrives, are not handed out
    again during the quarantine, and come back as a new endpoint with fresh state."""
    import media.engine as engine_module

    a, b = phones
    base = free_port_range(3)
    eng = MediaEngine(LOCAL, base, base + 5)
    try:
        old_a, old_b = await bridged(eng, a, b)
        a.rtp.send(rtp_packet(seq=1), old_a.local_address)
        await b.rtp.recv()
        parked_port = old_a.port
        old_a.close()
        # Late packets of the finished call: swallowed, counted nowhere.
        for seq in range(2, 6):
            a.rtp.send(rtp_packet(seq=seq), (LOCAL, parked_port))
            a.rtcp.send(rtcp_rr(), (LOCAL, parked_port + 1))
        await asyncio.sleep(0.05)
        assert old_a.packets_in == 1 and old_b.packets_out == 1
        assert b.rtp.queue.empty()
        with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCAL, parked_port))  # still ours
        assert eng.stats["port_pairs_free"] == 2  # the parked pair counts as free
        # In quarantine: a fresh pair is preferred.
        fresh = await eng.allocate()
        assert fresh.port not in (parked_port, old_b.port)
        # Past the quarantine: the parked pair, as a new endpoint.
        monkeypatch.setattr(engine_module, "_PARK_QUARANTINE", 0.0)
        reused = await eng.allocate()
        assert reused.port == parked_port and reused is not old_a
        assert reused.counters == dict.fromkeys(COUNTER_NAMES, 0)
        assert reused.remote is None and reused.peer is None and not reused.closed
        reused.set_remote(a.address, [PCMU, TELEPHONE_EVENT])
        eng.bridge(reused, old_b)
        a.rtp.send(rtp_packet(seq=7), reused.local_address)
        data, _ = await b.rtp.recv()
        assert parse_rtp(data).sequence == 7
        a.rtcp.send(rtcp_rr(0x77), reused.rtcp_address)
        data, _ = await b.rtcp.recv()
        assert data == rtcp_rr(0x77)
        assert reused.packets_in == 1 and reused.rtcp_in == 1
    finally:
        await eng.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, base))  # close() closed the parked and the open sockets alike


async def test_parked_pairs_are_closed_when_idle_or_used_when_nothing_else_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import media.engine as engine_module

    base = free_port_range(1)
    eng = MediaEngine(LOCAL, base, base + 1)
    try:
        first = await eng.allocate()
        first.close()
        # The only pair is parked: allocate takes it even in quarantine.
        again = await eng.allocate()
        assert again.port == base
        monkeypatch.setattr(engine_module, "PARK_IDLE", 0.05)
        again.close()
        assert eng.stats["port_pairs_free"] == 1
        # Unused for PARK_IDLE: closed, the port is free for anyone.
        await until(lambda: eng._sweep_timer is None and not eng._parked and not eng._releasing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCAL, base))
        assert eng.stats["port_pairs_free"] == 1
        third = await eng.allocate()  # a new socket pair again
        assert third.port == base
    finally:
        await eng.close()


async def test_parking_is_bounded_by_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parked sockets hold file descriptors: at most an eighth of the soft limit, and a
    call that finds no descriptor left gets a parked pair instead of failing."""
    import media.engine as engine_module

    monkeypatch.setattr(engine_module.resource, "getrlimit", lambda _which: (1024, 4096))
    assert engine_module._park_limit() == 128
    monkeypatch.setattr(engine_module.resource, "getrlimit", lambda _which: (16, 4096))
    base = free_port_range(3)
    eng = MediaEngine(LOCAL, base, base + 5)  # may park 2 pairs
    try:
        eps = [await eng.allocate() for _ in range(3)]
        for ep in eps:
            ep.close()
        assert len(eng._parked) == 2
        await until(lambda: len(eng._releasing) == 2)  # the third pair was really closed

        def no_fds(port: int) -> tuple[socket.socket, socket.socket]:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(eng, "_bind_pair", no_fds)
        reused = await eng.allocate()  # in quarantine, but better than failing the call
        assert reused.port in {ep.port for ep in eps[:2]}
        await eng.allocate()
        with pytest.raises(OSError) as info:
            await eng.allocate()
        assert info.value.errno == errno.EMFILE
    finally:
        await eng.close()


async def test_skips_ports_in_use_by_others() -> None:
    base = free_port_range(3)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((LOCAL, base + 3))  # the RTCP port of the second pair
    blocker2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker2.bind((LOCAL, base))
    try:
        eng = MediaEngine(LOCAL, base, base + 5)
        ep = await eng.allocate()
        assert ep.port == base + 4
        with pytest.raises(PortRangeExhausted, match="2 in use by other processes"):
            await eng.allocate()
        blocker.close()
        ep2 = await eng.allocate()
        assert ep2.port == base + 2
        await eng.close()
    finally:
        blocker.close()
        blocker2.close()


def test_bad_ranges() -> None:
    with pytest.raises(ValueError):
        MediaEngine(LOCAL, 20001, 20001)
    with pytest.raises(ValueError):
        MediaEngine(LOCAL, 20001, 20002)  # no even port whose successor is in range
    with pytest.raises(ValueError):
        MediaEngine(LOCAL, 0, 10)
    with pytest.raises(ValueError):
        MediaEngine(LOCAL, 30000, 20000)
    with pytest.raises(ValueError):
        MediaEngine("localhost", 20000, 20010)


# -- relaying ---------------------------------------------------------------------------------


async def test_bridge_relays_rtp_both_ways(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b)
    for seq in range(1, 6):
        packet = rtp_packet(seq=seq, payload=bytes([seq]) * 160)
        a.rtp.send(packet, ea.local_address)
        data, source = await b.rtp.recv()
        assert data == packet  # header and payload untouched
        assert source == eb.local_address  # comes out of B's leg socket
    reply = rtp_packet(pt=0, seq=77, ssrc=0x9999)
    b.rtp.send(reply, eb.local_address)
    data, source = await a.rtp.recv()
    assert data == reply
    assert source == ea.local_address
    assert ea.packets_in == 5 and ea.packets_relayed == 5 and ea.packets_out == 1
    assert eb.packets_out == 5 and eb.bytes_out == 5 * 172 and eb.packets_in == 1
    stats = engine.stats
    assert stats["packets_relayed"] == 6
    assert stats["packets_in"] == 6
    assert stats["endpoints"] == 2
    assert set(COUNTER_NAMES) <= set(stats)
    assert ea.counters["bytes_in"] == 5 * 172


async def test_bridge_relays_rtcp(engine: MediaEngine, phones: tuple[PhonePair, PhonePair]) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b)
    a.rtcp.send(rtcp_rr(1), ea.rtcp_address)
    data, source = await b.rtcp.recv()
    assert data == rtcp_rr(1)
    assert source == eb.rtcp_address
    b.rtcp.send(rtcp_rr(2), eb.rtcp_address)
    data, _ = await a.rtcp.recv()
    assert data == rtcp_rr(2)
    # RTCP from the remote's IP but another port is dropped (strict source, as for RTP)
    a.rtp.send(rtcp_rr(3), ea.rtcp_address)
    await until(lambda: ea.dropped_wrong_source == 1)
    # junk on the RTCP port is dropped as malformed
    a.rtcp.send(rtp_packet(), ea.rtcp_address)
    a.rtcp.send(rtcp_rr(4), ea.rtcp_address)
    data, _ = await b.rtcp.recv()
    assert data == rtcp_rr(4)
    assert ea.dropped_malformed == 1
    assert ea.rtcp_in == 2 and eb.rtcp_out == 2


async def test_payload_type_rewrite_by_codec_name(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    te96 = Codec("telephone-event", 96, 8000, "0-16")
    ea, eb = await bridged(engine, a, b, [PCMU, TELEPHONE_EVENT], [te96, PCMU])
    event = bytes([5, 0x0A, 0x00, 0xA0])  # RFC 4733 event 5, volume 10, duration 160
    a.rtp.send(rtp_packet(pt=101, seq=10, payload=event, marker=True), ea.local_address)
    data, _ = await b.rtp.recv()
    header, payload = split_rtp(data)
    assert header.payload_type == 96 and header.marker
    assert header.sequence == 10 and payload == event
    a.rtp.send(rtp_packet(pt=0, seq=11), ea.local_address)  # PCMU keeps PT 0
    data, _ = await b.rtp.recv()
    assert data == rtp_packet(pt=0, seq=11)
    b.rtp.send(rtp_packet(pt=96, seq=3, payload=event), eb.local_address)
    data, _ = await a.rtp.recv()
    header, payload = split_rtp(data)
    assert header.payload_type == 101 and not header.marker and payload == event
    # an unknown PT passes unchanged
    a.rtp.send(rtp_packet(pt=13, seq=12, payload=b"\x40"), ea.local_address)
    data, _ = await b.rtp.recv()
    assert parse_rtp(data).payload_type == 13


async def test_pt_map_follows_set_remote(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b, [PCMA, TELEPHONE_EVENT], [PCMA, TELEPHONE_EVENT])
    a.rtp.send(rtp_packet(pt=101, seq=1, payload=b"\x01\x00\x00\xa0"), ea.local_address)
    assert parse_rtp((await b.rtp.recv())[0]).payload_type == 101
    # re-INVITE on leg B changes its telephone-event PT
    eb.set_remote(b.address, [PCMA, Codec("telephone-event", 100, 8000)])
    a.rtp.send(rtp_packet(pt=101, seq=2, payload=b"\x01\x00\x00\xa0"), ea.local_address)
    assert parse_rtp((await b.rtp.recv())[0]).payload_type == 100


async def test_ssrc_change_is_forwarded(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, _ = await bridged(engine, a, b)
    for seq, ssrc in ((1, 111), (2, 111), (900, 222), (901, 222)):
        a.rtp.send(rtp_packet(seq=seq, ssrc=ssrc), ea.local_address)
        header = parse_rtp((await b.rtp.recv())[0])
        assert (header.sequence, header.ssrc) == (seq, ssrc)


async def test_wrong_source_dropped_and_counted(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, _ = await bridged(engine, a, b)
    intruder = await open_phone()
    try:
        intruder.rtp.send(rtp_packet(seq=666), ea.local_address)  # other port, same IP
        intruder.rtcp.send(rtp_packet(seq=667), ea.local_address)
        a.rtp.send(rtp_packet(seq=1), ea.local_address)
        data, _ = await b.rtp.recv()
        assert parse_rtp(data).sequence == 1
        assert ea.dropped_wrong_source == 2
        assert ea.packets_in == 1
        assert engine.stats["dropped_wrong_source"] == 2
        assert b.rtp.queue.empty()
    finally:
        intruder.close()


async def test_malformed_dropped_and_counted(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, _ = await bridged(engine, a, b)
    good = rtp_packet(seq=5)
    for bad in (
        b"\x80",
        b"\x80\x00",
        b"\x40" + good[1:],
        b"\x8f" + good[1:20],
        b"\xa0" + good[1:-1] + b"\x00",
    ):
        a.rtp.send(bad, ea.local_address)
    a.rtp.send(good, ea.local_address)
    data, _ = await b.rtp.recv()
    assert data == good
    assert ea.dropped_malformed == 5
    assert ea.packets_in == 1


async def test_no_remote_yet_drops(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea = await engine.allocate()
    eb = await engine.allocate()
    engine.bridge(ea, eb)
    eb.set_remote(b.address, [PCMU])
    a.rtp.send(rtp_packet(seq=1), ea.local_address)
    a.rtcp.send(rtcp_rr(), ea.rtcp_address)
    await until(lambda: ea.dropped_no_remote == 2)
    ea.set_remote(a.address, [PCMU])
    a.rtp.send(rtp_packet(seq=2), ea.local_address)
    data, _ = await b.rtp.recv()
    assert parse_rtp(data).sequence == 2
    assert ea.packets_in == 1
    # clearing A's remote (e.g. hold with c=0.0.0.0): B's media has nowhere to go
    ea.set_remote(None, [PCMU])
    assert ea.remote is None and ea.rtp_destination is None
    b.rtp.send(rtp_packet(seq=3), eb.local_address)
    await until(lambda: eb.dropped_no_peer == 1)
    assert eb.packets_in == 1 and ea.packets_out == 0


async def test_unbridged_counts_no_peer(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b)
    engine.unbridge(ea)
    assert ea.peer is None and eb.peer is None
    a.rtp.send(rtp_packet(seq=1), ea.local_address)
    await until(lambda: ea.dropped_no_peer == 1)
    engine.bridge(ea, eb)
    a.rtp.send(rtp_packet(seq=2), ea.local_address)
    data, _ = await b.rtp.recv()
    assert parse_rtp(data).sequence == 2
    assert ea.dropped_no_peer == 1
    with pytest.raises(ValueError):
        engine.bridge(ea, ea)


async def test_rebridge_moves_media(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    c = await open_phone()
    try:
        ea, eb = await bridged(engine, a, b)
        ec = await engine.allocate()
        ec.set_remote(c.address, [PCMU])
        engine.bridge(ea, ec)  # e.g. a transfer: A now talks to C
        assert eb.peer is None and ea.peer is ec
        a.rtp.send(rtp_packet(seq=9), ea.local_address)
        data, source = await c.rtp.recv()
        assert parse_rtp(data).sequence == 9 and source == ec.local_address
        assert b.rtp.queue.empty()
    finally:
        c.close()


async def test_symmetric_latch(phones: tuple[PhonePair, PhonePair]) -> None:
    a, b = phones
    base = free_port_range(4)
    eng = MediaEngine(LOCAL, base, base + 7, symmetric_latch=True)
    try:
        ea = await eng.allocate()
        eb = await eng.allocate(symmetric_latch=False)
        assert ea.symmetric_latch and not eb.symmetric_latch
        # the SDP of A names a port A does not send from (a NAT rewrote it)
        sdp_port = free_port_range(1)
        ea.set_remote((LOCAL, sdp_port), [PCMU])
        eb.set_remote(b.address, [PCMU])
        eng.bridge(ea, eb)
        assert ea.rtp_destination == (LOCAL, sdp_port) and not ea.latched
        a.rtp.send(rtp_packet(seq=1), ea.local_address)
        data, _ = await b.rtp.recv()
        assert parse_rtp(data).sequence == 1
        assert ea.latched and ea.rtp_destination == a.address
        # replies go to the latched source, not to the SDP port
        b.rtp.send(rtp_packet(seq=2), eb.local_address)
        data, source = await a.rtp.recv()
        assert parse_rtp(data).sequence == 2 and source == ea.local_address
        # after latching, another port on the same IP is a wrong source
        a.rtcp.send(rtp_packet(seq=3), ea.local_address)
        a.rtp.send(rtp_packet(seq=4), ea.local_address)
        data, _ = await b.rtp.recv()
        assert parse_rtp(data).sequence == 4
        assert ea.dropped_wrong_source == 1
        # RTCP latches too
        a.rtp.send(rtcp_rr(7), ea.rtcp_address)
        assert (await b.rtcp.recv())[0] == rtcp_rr(7)
        b.rtcp.send(rtcp_rr(8), eb.rtcp_address)
        data, _ = await a.rtp.recv()  # the RTCP latched onto A's RTP socket
        assert data == rtcp_rr(8)
        # same remote again keeps the latch; a new address resets it
        ea.set_remote((LOCAL, sdp_port), [PCMU])
        assert ea.latched
        ea.set_remote((LOCAL, sdp_port + 2), [PCMU])
        assert not ea.latched and ea.rtp_destination == (LOCAL, sdp_port + 2)
    finally:
        await eng.close()


async def test_latch_requires_named_ip(phones: tuple[PhonePair, PhonePair]) -> None:
    a, _ = phones
    base = free_port_range(2)
    eng = MediaEngine(LOCAL, base, base + 3, symmetric_latch=True)
    try:
        ea = await eng.allocate()
        ea.set_remote(("127.0.0.2", 4000), [PCMU])
        a.rtp.send(rtp_packet(seq=1), ea.local_address)  # from 127.0.0.1: wrong IP
        await until(lambda: ea.dropped_wrong_source == 1)
        assert not ea.latched and ea.rtp_destination == ("127.0.0.2", 4000)
        ea.set_remote(a.address, [PCMU])
        a.rtp.send(rtp_packet(seq=2), ea.local_address)
        await until(lambda: ea.packets_in == 1)
        assert ea.latched and ea.dropped_no_peer == 1
    finally:
        await eng.close()


async def test_strict_mode_rejects_other_port_even_after_traffic(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, _ = await bridged(engine, a, b)
    a.rtp.send(rtp_packet(seq=1), ea.local_address)
    await b.rtp.recv()
    assert not ea.latched
    a.rtcp.send(rtp_packet(seq=2), ea.local_address)
    a.rtp.send(rtp_packet(seq=3), ea.local_address)
    assert parse_rtp((await b.rtp.recv())[0]).sequence == 3
    assert ea.dropped_wrong_source == 1


# -- hooks ------------------------------------------------------------------------------------


async def test_on_packet_hook_and_send_rtp(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b)
    seen: list[int] = []

    def hook(endpoint: RtpEndpoint, data: bytes) -> bool:
        assert endpoint is ea
        header = parse_rtp(data)
        seen.append(header.sequence)
        return header.payload_type == 101  # consume DTMF events

    ea.on_packet = hook
    a.rtp.send(rtp_packet(pt=101, seq=1, payload=b"\x01\x00\x00\xa0"), ea.local_address)
    a.rtp.send(rtp_packet(seq=2), ea.local_address)
    data, _ = await b.rtp.recv()
    assert parse_rtp(data).sequence == 2
    assert seen == [1, 2]
    assert ea.packets_in == 2 and ea.packets_relayed == 1

    relayed = parse_rtp(data)
    prompt = rtp_packet(pt=8, seq=100, ssrc=0xABC, payload=b"\xd5" * 160)
    assert eb.send_rtp(prompt)
    data, source = await b.rtp.recv()
    assert source == eb.local_address
    # The injected packet continues the stream b already hears (RFC 3550 section 8): same
    # SSRC, next sequence number, a new talk-spurt (marker), the payload untouched.
    injected = parse_rtp(data)
    assert injected.ssrc == relayed.ssrc
    assert injected.sequence == (relayed.sequence + 1) & 0xFFFF
    assert injected.marker and injected.payload_type == 8
    assert data[12:] == prompt[12:]
    # Relayed packets after the injection stay in that stream: same SSRC, next sequence.
    a.rtp.send(rtp_packet(seq=3, ssrc=0x5555), ea.local_address)
    after = parse_rtp((await b.rtp.recv())[0])
    assert after.ssrc == relayed.ssrc and after.sequence == (injected.sequence + 1) & 0xFFFF
    assert after.timestamp != injected.timestamp
    assert eb.send_rtcp(rtcp_rr(5))
    assert (await b.rtcp.recv())[0] == rtcp_rr(5)

    idle = await engine.allocate()
    assert not idle.send_rtp(prompt)  # no remote yet
    assert not idle.send_rtcp(rtcp_rr())


async def test_set_remote_validation(engine: MediaEngine) -> None:
    ep = await engine.allocate()
    with pytest.raises(ValueError):
        ep.set_remote(("phone.example.com", 4000), [PCMU])
    with pytest.raises(ValueError):
        ep.set_remote(("::1", 4000), [PCMU])  # IPv4 engine
    with pytest.raises(ValueError):
        ep.set_remote((LOCAL, 0), [PCMU])
    with pytest.raises(ValueError):
        ep.set_remote((LOCAL, 4000), [PCMU], rtcp_address=("::1", 4001))
    ep.set_remote((LOCAL, 4000), [PCMU], rtcp_address=(LOCAL, 5000))
    assert ep.rtcp_destination == (LOCAL, 5000)
    assert ep.remote == (LOCAL, 4000)


async def test_stats_include_closed_endpoints(
    engine: MediaEngine, phones: tuple[PhonePair, PhonePair]
) -> None:
    a, b = phones
    ea, eb = await bridged(engine, a, b)
    a.rtp.send(rtp_packet(seq=1), ea.local_address)
    await b.rtp.recv()
    ea.close()
    eb.close()
    assert eb.peer is None
    stats = engine.stats
    assert stats["packets_relayed"] == 1 and stats["packets_out"] == 1
    assert stats["endpoints"] == 0


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        base = free_port_range(2, "::1")
    except RuntimeError:
        pytest.skip("no IPv6 loopback")
    eng = MediaEngine("::1", base, base + 3)
    a = await open_phone("::1")
    b = await open_phone("::1")
    try:
        ea = await eng.allocate()
        eb = await eng.allocate()
        assert ea.local_address == ("::1", ea.port)
        ea.set_remote(("[0:0::1]", a.address[1]), [PCMU])
        eb.set_remote(("::1", b.address[1]), [PCMU])
        eng.bridge(ea, eb)
        for seq in (1, 2):
            a.rtp.send(rtp_packet(seq=seq), ("::1", ea.port))
            data, _ = await b.rtp.recv()
            assert parse_rtp(data).sequence == seq
        b.rtp.send(rtp_packet(seq=3), ("::1", eb.port))
        assert parse_rtp((await a.rtp.recv())[0]).sequence == 3
        assert eng.stats["dropped_wrong_source"] == 0
    finally:
        a.close()
        b.close()
        await eng.close()


# -- the same scenarios on uvloop (which the switch may run on) ----------------------------

UVLOOP_SCENARIOS = [
    test_bridge_relays_rtp_both_ways,
    test_bridge_relays_rtcp,
    test_payload_type_rewrite_by_codec_name,
    test_wrong_source_dropped_and_counted,
    test_malformed_dropped_and_counted,
    test_no_remote_yet_drops,
    test_on_packet_hook_and_send_rtp,
    test_stats_include_closed_endpoints,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda f: f.__name__)
def test_scenario_on_uvloop(
    scenario: Callable[[MediaEngine, tuple[PhonePair, PhonePair]], Awaitable[None]],
) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        base = free_port_range(8)
        eng = MediaEngine(LOCAL, base, base + 15)
        a = await open_phone()
        b = await open_phone()
        try:
            await scenario(eng, (a, b))
        finally:
            a.close()
            b.close()
            await eng.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_close_and_reallocate_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        base = free_port_range(1)
        eng = MediaEngine(LOCAL, base, base + 1)
        ep = await eng.allocate()
        ep.close()
        again = await eng.allocate()
        assert again.port == base
        await eng.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCAL, base))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_ipv6_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_ipv6_loopback())
