"""Anchored RTP relay on asyncio: port pool, endpoints and two-leg bridges.

A :class:`MediaEngine` owns a range of UDP ports on one local address. :meth:`allocate`
returns an :class:`RtpEndpoint`: two UDP sockets, RTP on an even port and RTCP on the next
odd one (RFC 3550 section 11). The switch tells each endpoint where its remote party is
(:meth:`RtpEndpoint.set_remote`, from the SDP) and joins two endpoints with
:meth:`MediaEngine.bridge`; packets then flow in one socket and out of the other.

Source checking (the answer to "who may send us media"):

* Strict (default): RTP is accepted only from exactly the ``(ip, port)`` the SDP named.
  RTCP is accepted from the SDP's IP on *any* port, because the RTCP port is often not
  RTP+1 (RFC 3605 ``a=rtcp``, NATs) and RTCP carries no media; it is sent to
  ``rtcp_address`` if given, else RTP port + 1.
* Symmetric latching (``symmetric_latch=True``, for UAs behind NAT): the first RTP packet
  from the SDP's IP (any port) latches that source; from then on RTP is accepted only from
  the latched ``(ip, port)`` and our RTP goes back to it (symmetric RTP, RFC 4961). RTCP
  latches likewise on its first packet. Until something latches we send to the SDP address.

Everything else is dropped and counted. Before :meth:`RtpEndpoint.set_remote` every packet is
dropped (``dropped_no_remote``).

The per-packet path is a single ``datagram_received`` call on the endpoint (the endpoint *is*
the RTP protocol object, with ``__slots__``): one tuple comparison for the source, a two-byte
header check, optional hook, and ``sendto``. Payload types are rewritten (one ``bytearray``
copy) only when the legs number the same codec differently, e.g. telephone-event 101 vs 96.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import resource
import secrets
import socket
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from .g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from .rtp import is_rtcp, rtp_header_length
from .sdp import Codec

__all__ = [
    "COUNTER_NAMES",
    "PARK_IDLE",
    "MediaEngine",
    "PacketHook",
    "PortRangeExhausted",
    "RtpEndpoint",
]

#: Per-endpoint counters, also summed (live + closed endpoints) in :attr:`MediaEngine.stats`.
COUNTER_NAMES = (
    "packets_in",  # valid RTP accepted from the remote
    "bytes_in",
    "packets_out",  # RTP sent out of this endpoint (relayed from the peer or send_rtp)
    "bytes_out",
    "packets_relayed",  # RTP accepted here and forwarded out of the peer
    "rtcp_in",
    "rtcp_out",
    "dropped_wrong_source",  # RTP/RTCP from an address other than the remote's
    "dropped_malformed",  # failed the RTP (or RTCP) header check
    "dropped_no_remote",  # arrived before set_remote() / while the remote is None
    "dropped_no_peer",  # not bridged, or the peer has no remote to send to
    "send_errors",  # error_received() from the socket
)

#: ``on_packet`` hook: called with the endpoint and each accepted RTP packet (bytes, before any
#: payload-type rewrite). Return True to consume the packet (it is then not relayed).
PacketHook = Callable[["RtpEndpoint", bytes], bool | None]

Address = tuple[str, int]


class PortRangeExhausted(RuntimeError):
    """No free even/odd port pair is left in the engine's range."""


# Pure, and called for every SDP address: remembered (ipaddress parsing is slow).
@functools.lru_cache(maxsize=1024)
def _normalize_ip(ip: str) -> tuple[str, int]:
    """Canonical text form and version of an IP literal; ValueError for anything else."""
    text = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address literal: {ip!r}") from None
    return str(parsed), parsed.version


def _build_pt_table(src: Sequence[Codec], dst: Sequence[Codec]) -> bytes | None:
    """A 256-entry table over the RTP second octet (M bit + PT) mapping ``src`` payload types
    to ``dst`` ones for the same encoding; None if every mapping is the identity."""
    table = bytearray(range(256))
    changed = False
    for a in src:
        if not 0 <= a.payload_type <= 127:
            continue
        for b in dst:
            if a.same_format(b):
                if b.payload_type != a.payload_type and 0 <= b.payload_type <= 127:
                    table[a.payload_type] = b.payload_type
                    table[a.payload_type | 0x80] = b.payload_type | 0x80
                    changed = True
                break
    return bytes(table) if changed else None


_G711 = ("PCMU", "PCMA")


def _build_transcoder(
    src: Sequence[Codec], dst: Sequence[Codec]
) -> dict[int, tuple[int, bytes]] | None:
    """PCMU <-> PCMA translation for ``src`` G.711 payload types the other leg did not
    negotiate: {src PT: (dst PT, byte translation table)}; None when nothing needs it."""
    dst_g711 = [c for c in dst if c.name.upper() in _G711]
    if not dst_g711:
        return None
    result: dict[int, tuple[int, bytes]] = {}
    for a in src:
        name = a.name.upper()
        if name not in _G711 or any(a.same_format(b) for b in dst):
            continue
        target = dst_g711[0]
        table = ULAW_TO_ALAW if name == "PCMU" else ALAW_TO_ULAW
        if target.name.upper() != name and 0 <= a.payload_type <= 127:
            result[a.payload_type] = (target.payload_type, table)
    return result or None


# Warm pool of closed endpoints' sockets (see MediaEngine._park): opening and closing the two
# sockets of an endpoint (socket, bind, event-loop registration, close) was ~6% of the CPU
# of a call at a few hundred calls per second (bench.cps profile). A closed endpoint's
# sockets wait at least _PARK_QUARANTINE seconds, dropping whatever still arrives (late
# packets of the finished call must not reach the next one, nor latch it), and are closed
# after PARK_IDLE seconds unused. At most _PARK_MAX pairs wait (2 fds each), and never more
# than an eighth of the process's open-file limit, so parked sockets cannot starve new calls
# of file descriptors (an allocation that hits the limit takes a parked pair instead).
# A phone stops sending within a round trip of receiving the BYE; one second covers that with
# margin, and at 500 calls per second (1000 endpoints closing a second) keeps the pool of
# pairs in quarantine under _PARK_MAX. Parking pays only while calls keep ending and starting;
# five idle seconds mean the churn is over, and the sockets are given back.
_PARK_QUARANTINE = 1.0
#: Seconds a parked port pair may stay unused before its sockets are closed (public: a
#: check that a finished call's ports are released waits this long).
PARK_IDLE = 5.0
_PARK_MAX = 2048


def _park_limit() -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return _PARK_MAX
    return max(0, min(_PARK_MAX, soft // 8))


class _Parked(asyncio.DatagramProtocol):
    """The protocol of a parked port pair's two sockets: drops every datagram, and gives the
    port back to the engine once both sockets are closed."""

    __slots__ = ("engine", "open", "port")

    def __init__(self, engine: MediaEngine, port: int) -> None:
        self.engine = engine
        self.port = port
        self.open = 2

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        pass  # a late packet of the call that ended

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.open -= 1
        if self.open == 0:
            self.engine._release_port(self.port)


class _RtcpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("endpoint",)

    def __init__(self, endpoint: RtpEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint._rtcp_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.endpoint.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint._transport_lost()


class RtpEndpoint(asyncio.DatagramProtocol):
    """One anchored media leg: an RTP socket (even port) and an RTCP socket (port + 1).

    Created by :meth:`MediaEngine.allocate`. Counters are plain int attributes (see
    :data:`COUNTER_NAMES`); :attr:`counters` returns them as a dict. ``on_packet`` is an
    optional :data:`PacketHook` (None keeps the relay path minimal).
    """

    __slots__ = (
        "_accept_from",
        "_engine",
        "_last_sent",
        "_latch",
        "_latched",
        "_open_transports",
        "_out_seq",
        "_out_ssrc",
        "_out_ts",
        "_peer",
        "_pt_map",
        "_remote",
        "_restamping",
        "_rtcp_dest",
        "_rtcp_latched",
        "_rtcp_transport",
        "_rtp_dest",
        "_rtp_transport",
        "_src_key",
        "_ts_delta",
        "_xcode",
        "bytes_in",
        "bytes_out",
        "closed",
        "codecs",
        "dropped_malformed",
        "dropped_no_peer",
        "dropped_no_remote",
        "dropped_wrong_source",
        "local_address",
        "on_packet",
        "packets_in",
        "packets_out",
        "packets_relayed",
        "rtcp_address",
        "rtcp_in",
        "rtcp_out",
        "send_errors",
    )

    def __init__(self, engine: MediaEngine, port: int, symmetric_latch: bool) -> None:
        self._engine = engine
        self.local_address: Address = (engine.address, port)
        self.rtcp_address: Address = (engine.address, port + 1)
        self._latch = symmetric_latch
        self._rtp_transport: asyncio.DatagramTransport | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._open_transports = 0
        self._remote: Address | None = None  # (ip, port) from the SDP, ip normalised
        self._accept_from: tuple[Any, ...] | None = None  # exact source tuple, fast path
        self._rtp_dest: Address | None = None
        self._rtcp_dest: Address | None = None
        self._latched = False
        self._rtcp_latched = False
        self._peer: RtpEndpoint | None = None
        self._pt_map: bytes | None = None
        self.codecs: tuple[Codec, ...] = ()
        self.on_packet: PacketHook | None = None
        # Outgoing stream continuity (RFC 3550 section 8 / RFC 7667 section 3.2.1.2): once the
        # switch sends its own packets (prompts, DTMF) out of this endpoint, everything sent
        # here is re-stamped as one stream: one SSRC, one sequence, timestamps re-based at each
        # change of source. Receivers (e.g. baresip) flush their jitter buffer on an SSRC
        # change, so interleaved SSRCs would eat the injected audio. Until the first injection
        # the relay forwards packets untouched and only remembers the last one.
        self._last_sent: bytes | bytearray | None = None
        # G.711 transcoding toward the peer (PCMU <-> PCMA), only when the legs share no codec.
        self._xcode: dict[int, tuple[int, bytes]] | None = None
        self._restamping = False
        self._out_ssrc = 0
        self._out_seq = 0
        self._out_ts = 0
        self._src_key: tuple[bool, int] | None = None
        self._ts_delta = 0
        self.closed = False
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.packets_relayed = 0
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.dropped_wrong_source = 0
        self.dropped_malformed = 0
        self.dropped_no_remote = 0
        self.dropped_no_peer = 0
        self.send_errors = 0

    def __repr__(self) -> str:
        return f"<RtpEndpoint {self.local_address[0]}:{self.local_address[1]} remote={self.remote}>"

    # -- public API --------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The local RTP port (even); RTCP is ``port + 1``."""
        return self.local_address[1]

    @property
    def remote(self) -> Address | None:
        """The remote RTP address from :meth:`set_remote` (normalised IP), or None."""
        return self._remote

    @property
    def rtp_destination(self) -> Address | None:
        """Where our RTP goes now: the latched source if latched, else the SDP address."""
        return self._rtp_dest

    @property
    def rtcp_destination(self) -> Address | None:
        """Where our RTCP goes now."""
        return self._rtcp_dest

    @property
    def latched(self) -> bool:
        """True once symmetric latching has locked onto an RTP source."""
        return self._latched

    @property
    def symmetric_latch(self) -> bool:
        """Whether this endpoint latches (see the module docstring)."""
        return self._latch

    @property
    def peer(self) -> RtpEndpoint | None:
        """The endpoint this one is bridged to."""
        return self._peer

    @property
    def counters(self) -> dict[str, int]:
        """Snapshot of the counters named in :data:`COUNTER_NAMES`."""
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    def set_remote(
        self,
        address: tuple[str, int] | None,
        codecs: Sequence[Codec],
        *,
        rtcp_address: tuple[str, int] | None = None,
    ) -> None:
        """Set (or clear, with None) the remote RTP address and the leg's negotiated codecs.

        ``address`` must be an IP literal of the engine's family (ValueError otherwise; IPv6 may
        be bracketed). ``codecs`` carry this leg's payload-type numbers and drive PT rewriting
        in a bridge. ``rtcp_address`` defaults to ``(ip, port + 1)`` (RFC 3550 section 11).
        Changing the address resets any latch; calling again with the same address (e.g. a
        re-INVITE that only changes codecs or direction) keeps it.
        """
        self.codecs = tuple(codecs)
        if address is None:
            self._remote = None
            self._accept_from = None
            self._rtp_dest = None
            self._rtcp_dest = None
            self._latched = self._rtcp_latched = False
        else:
            ip, version = _normalize_ip(address[0])
            if version != self._engine.ip_version:
                raise ValueError(f"remote {address[0]} is not IPv{self._engine.ip_version}")
            port = int(address[1])
            if not 0 < port <= 65535:
                raise ValueError(f"bad remote port {address[1]}")
            remote = (ip, port)
            if rtcp_address is not None:
                rtcp_ip, rtcp_version = _normalize_ip(rtcp_address[0])
                if rtcp_version != version or not 0 < int(rtcp_address[1]) <= 65535:
                    raise ValueError(f"bad RTCP address {rtcp_address}")
                rtcp_dest: Address = (rtcp_ip, int(rtcp_address[1]))
            else:
                rtcp_dest = (ip, port + 1 if port < 65535 else port)
            if remote != self._remote:
                self._remote = remote
                self._latched = self._rtcp_latched = False
                self._rtp_dest = remote
                self._rtcp_dest = rtcp_dest
                # strict mode accepts exactly the SDP address; latch mode waits for a packet
                self._accept_from = None if self._latch else remote
            elif not self._rtcp_latched:
                self._rtcp_dest = rtcp_dest
        self._engine._update_pt_maps(self)

    def send_rtp(self, packet: bytes | bytearray) -> bool:
        """Send a packet the switch generated (prompt, DTMF) to the remote; False if no remote.

        It goes out re-stamped into this endpoint's outgoing stream (see ``_restamp``): the
        SSRC the remote already hears, the next sequence number, a continuous timestamp.
        """
        dest = self._rtp_dest
        transport = self._rtp_transport
        if dest is None or transport is None or self.closed:
            return False
        if len(packet) < 12:
            return False
        if not self._restamping:
            self._start_restamping()
        transport.sendto(self._restamp(packet, True), dest)
        self.packets_out += 1
        self.bytes_out += len(packet)
        return True

    def _start_restamping(self) -> None:
        last = self._last_sent
        if last is not None:
            self._out_ssrc = int.from_bytes(last[8:12], "big")
            self._out_seq = int.from_bytes(last[2:4], "big")
            self._out_ts = int.from_bytes(last[4:8], "big")
        else:
            self._out_ssrc = secrets.randbits(32)
            self._out_seq = secrets.randbits(16)
            self._out_ts = secrets.randbits(32)
        self._restamping = True

    def _restamp(self, packet: bytes | bytearray, injected: bool) -> bytearray:
        """Rewrite SSRC, sequence number and timestamp into the outgoing stream."""
        out = bytearray(packet)
        ssrc_in = int.from_bytes(out[8:12], "big")
        ts_in = int.from_bytes(out[4:8], "big")
        key = (injected, ssrc_in)
        if key != self._src_key:
            # A new source: continue one 20 ms frame after the last timestamp sent, and mark
            # the start of a talk-spurt (RFC 3551 section 4.1) so the receiver re-syncs.
            self._src_key = key
            self._ts_delta = (self._out_ts + 160 - ts_in) & 0xFFFFFFFF
            out[1] |= 0x80
        ts_out = (ts_in + self._ts_delta) & 0xFFFFFFFF
        self._out_seq = (self._out_seq + 1) & 0xFFFF
        out[2:4] = self._out_seq.to_bytes(2, "big")
        out[4:8] = ts_out.to_bytes(4, "big")
        out[8:12] = self._out_ssrc.to_bytes(4, "big")
        self._out_ts = ts_out
        return out

    def send_rtcp(self, packet: bytes | bytearray) -> bool:
        """Send an RTCP packet to the remote's RTCP address; False if no remote."""
        dest = self._rtcp_dest
        transport = self._rtcp_transport
        if dest is None or transport is None or self.closed:
            return False
        transport.sendto(packet, dest)
        self.rtcp_out += 1
        return True

    def close(self) -> None:
        """Unbridge and give the port pair back to the engine: its sockets are parked for
        reuse (see ``_PARK_QUARANTINE``), or closed and the pair freed once they actually
        are, one loop iteration later (a pending :meth:`MediaEngine.allocate` waits for
        that). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.on_packet = None
        self._engine.unbridge(self)
        self._engine._endpoint_closed(self)
        if self._engine._park(self):
            return
        for transport in (self._rtp_transport, self._rtcp_transport):
            if transport is not None:
                transport.close()

    # -- asyncio protocol (RTP socket): the hot path ------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """One RTP datagram: check source and header, hook, rewrite PT if needed, relay."""
        if addr != self._accept_from and not self._source_ok(addr):
            return
        n = len(data)
        # RFC 3550 section 5.1: V must be 2; P/X/CC need the full length check.
        if n < 12 or (data[0] & 0xC0) != 0x80 or (data[0] & 0x3F and rtp_header_length(data) < 0):
            self.dropped_malformed += 1
            return
        self.packets_in += 1
        self.bytes_in += n
        hook = self.on_packet
        if hook is not None and hook(self, data):
            return
        peer = self._peer
        if peer is None:
            self.dropped_no_peer += 1
            return
        dest = peer._rtp_dest
        transport = peer._rtp_transport
        if dest is None or transport is None:
            self.dropped_no_peer += 1
            return
        xcode = self._xcode
        if xcode is not None:
            entry = xcode.get(data[1] & 0x7F)
            if entry is not None:
                # RFC 3551 G.711 mu-law and A-law differ only in their octet coding: one
                # table lookup per sample (G.711 Appendix/Table 3 style conversion).
                hl = rtp_header_length(data)
                converted = bytearray(data[:hl])
                converted += data[hl:].translate(entry[1])
                converted[1] = (data[1] & 0x80) | entry[0]
                data = bytes(converted)
        table = self._pt_map
        if peer._restamping:
            packet = peer._restamp(data, False)
            if table is not None:
                packet[1] = (packet[1] & 0x80) | (table[data[1]] & 0x7F)
            transport.sendto(packet, dest)
        elif table is not None and table[data[1]] != data[1]:
            # the legs number this codec differently: one copy to patch the PT octet
            packet = bytearray(data)
            packet[1] = table[data[1]]
            peer._last_sent = packet
            transport.sendto(packet, dest)
        else:
            peer._last_sent = data
            transport.sendto(data, dest)
        self.packets_relayed += 1
        peer.packets_out += 1
        peer.bytes_out += n

    def _source_ok(self, addr: tuple[Any, ...]) -> bool:
        """Slow path of the source check: IPv6 4-tuples, latching, no remote."""
        remote = self._remote
        if remote is None:
            self.dropped_no_remote += 1
            return False
        if self._latch:
            if self._latched or addr[0] != remote[0]:
                self.dropped_wrong_source += 1
                return False
            # symmetric RTP (RFC 4961): send back to where the media comes from
            self._latched = True
            self._rtp_dest = (addr[0], addr[1])
            self._accept_from = addr
            return True
        if addr[0] == remote[0] and addr[1] == remote[1]:
            self._accept_from = addr  # e.g. the IPv6 4-tuple form, for the fast path
            return True
        self.dropped_wrong_source += 1
        return False

    def error_received(self, exc: Exception) -> None:
        """A send failed (e.g. ICMP unreachable); counted, never fatal."""
        self.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """The RTP socket is closed."""
        self._transport_lost()

    # -- RTCP ---------------------------------------------------------------------------
    def _rtcp_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        remote = self._remote
        if remote is None:
            self.dropped_no_remote += 1
            return
        if addr[0] != remote[0] or (
                not self._latch and self._rtcp_dest is not None
                and addr[1] != self._rtcp_dest[1]):
            # Strict source (as for RTP): RTCP only from the port the SDP implies (RFC 3550
            # section 11: RTP port + 1, or a=rtcp), so no one on the phone's host can inject.
            self.dropped_wrong_source += 1
            return
        if not is_rtcp(data):
            self.dropped_malformed += 1
            return
        if self._latch and not self._rtcp_latched:
            self._rtcp_latched = True
            self._rtcp_dest = (addr[0], addr[1])
        self.rtcp_in += 1
        peer = self._peer
        if peer is None or peer._rtcp_dest is None or peer._rtcp_transport is None:
            self.dropped_no_peer += 1
            return
        peer._rtcp_transport.sendto(data, peer._rtcp_dest)
        peer.rtcp_out += 1

    def _transport_lost(self) -> None:
        self._open_transports -= 1
        if self._open_transports == 0:
            # The transports point back at us (their protocol): drop our side so a closed
            # endpoint is freed by reference counting, not left for the cyclic collector
            # (thousands per minute at a few hundred calls per second made its pauses long).
            self._rtp_transport = None
            self._rtcp_transport = None
            self._engine._release_port(self.local_address[1])


class MediaEngine:
    """Port pool and relay for anchored RTP on one local IP address.

    ``port_min``..``port_max`` is inclusive; RTP uses the even ports in it whose odd
    successor is also in range. Ports in use by other processes are skipped. A closed
    endpoint's pair is parked with its sockets open (up to ``_PARK_MAX`` pairs, closed after
    ``PARK_IDLE`` s unused) and handed out again only after ``_PARK_QUARANTINE`` s, while
    other pairs are free; pairs freed by closing go to the back of the free list. Either way
    late packets of the previous call do not reach a new one.
    """

    def __init__(
        self, address: str, port_min: int, port_max: int, *, symmetric_latch: bool = False
    ) -> None:
        self.address, self.ip_version = _normalize_ip(address)
        if not 0 < port_min <= port_max <= 65535:
            raise ValueError(f"bad RTP port range {port_min}-{port_max}")
        first = port_min + (port_min & 1)
        pairs = range(first, port_max, 2)  # p + 1 <= port_max
        if not pairs:
            raise ValueError(f"RTP port range {port_min}-{port_max} holds no even/odd pair")
        self.port_min = port_min
        self.port_max = port_max
        self.symmetric_latch = symmetric_latch
        self._family = socket.AF_INET6 if self.ip_version == 6 else socket.AF_INET
        self._pair_count = len(pairs)
        self._free: deque[int] = deque(pairs)
        self._endpoints: dict[int, RtpEndpoint] = {}
        self._releasing: set[int] = set()
        self._release_waiters: list[asyncio.Future[None]] = []
        # Parked pairs, oldest first: (parked at, port, RTP transport, RTCP transport).
        self._parked: deque[tuple[float, int, asyncio.DatagramTransport,
                                  asyncio.DatagramTransport]] = deque()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._park_max = _park_limit()
        self._closed_totals: Counter[str] = Counter()
        self._closed = False
        self._started = False

    async def start(self) -> None:
        """Make the engine usable (again after :meth:`close`).

        Sockets are opened lazily by :meth:`allocate`; here one pair is bound and released
        so that an address that is not local, or a range with no usable pair, fails at start
        rather than on the first call.
        """
        self._closed = False
        probe = await self.allocate()
        probe.close()
        self._close_parked(float("inf"))  # a probe is no reason to hold sockets
        self._started = True

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._started and not self._closed

    async def close(self) -> None:
        """Close every endpoint and wait until their sockets are released."""
        self._closed = True
        for endpoint in list(self._endpoints.values()):
            endpoint.close()
        self._close_parked(float("inf"))
        while self._releasing:
            await self._wait_release()

    @property
    def endpoints(self) -> list[RtpEndpoint]:
        """The open endpoints."""
        return list(self._endpoints.values())

    @property
    def free_pairs(self) -> int:
        """Port pairs not allocated by this engine (some may be busy elsewhere)."""
        return len(self._free) + len(self._parked)

    async def allocate(self, *, symmetric_latch: bool | None = None) -> RtpEndpoint:
        """An endpoint on a parked pair past its quarantine, else on the next free even port
        (RTP) and port + 1 (RTCP), else on a pair still in quarantine.

        ``symmetric_latch`` overrides the engine default for this endpoint. Raises
        :class:`PortRangeExhausted` when no pair can be bound (all allocated by us or
        busy elsewhere) and ``RuntimeError`` after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("media engine is closed")
        latch = self.symmetric_latch if symmetric_latch is None else symmetric_latch
        parked = self._parked
        if parked and asyncio.get_running_loop().time() - parked[0][0] >= _PARK_QUARANTINE:
            return self._unpark(latch)
        while True:
            busy = 0
            for _ in range(len(self._free)):
                port = self._free.popleft()
                try:
                    socks = self._bind_pair(port)
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        self._free.append(port)  # in use by another process; retry later
                        busy += 1
                        continue
                    self._free.appendleft(port)
                    if exc.errno in (errno.EMFILE, errno.ENFILE) and self._parked:
                        # Out of file descriptors: a parked pair needs none.
                        return self._unpark(latch)
                    raise
                return await self._open(port, socks, latch)
            if self._parked:
                return self._unpark(latch)  # out of fresh pairs: reuse one still in quarantine
            if self._releasing:
                await self._wait_release()  # a closed endpoint's sockets are about to free
                continue
            raise PortRangeExhausted(
                f"no free RTP port pair in {self.address} {self.port_min}-{self.port_max}: "
                f"{len(self._endpoints)} of {self._pair_count} allocated here, "
                f"{busy} in use by other processes"
            )

    def bridge(self, a: RtpEndpoint, b: RtpEndpoint) -> None:
        """Relay RTP and RTCP between ``a`` and ``b`` both ways (any earlier bridge of either
        is undone). Payload types are rewritten by codec name when the legs differ."""
        if a is b:
            raise ValueError("cannot bridge an endpoint to itself")
        if a.closed or b.closed:
            raise ValueError("cannot bridge a closed endpoint")
        self.unbridge(a)
        self.unbridge(b)
        a._peer = b
        b._peer = a
        self._update_pt_maps(a)

    def unbridge(self, a: RtpEndpoint) -> None:
        """Stop relaying between ``a`` and its peer (no-op if not bridged)."""
        peer = a._peer
        if peer is not None:
            peer._peer = None
            peer._pt_map = None
            peer._xcode = None
        a._peer = None
        a._pt_map = None
        a._xcode = None

    @property
    def stats(self) -> dict[str, int]:
        """Engine-wide counters: the :data:`COUNTER_NAMES` summed over open and closed
        endpoints, plus ``endpoints``, ``port_pairs`` and ``port_pairs_free``."""
        totals = Counter(self._closed_totals)
        for endpoint in self._endpoints.values():
            for name in COUNTER_NAMES:
                totals[name] += getattr(endpoint, name)
        result = {name: totals[name] for name in COUNTER_NAMES}
        result["endpoints"] = len(self._endpoints)
        result["port_pairs"] = self._pair_count
        result["port_pairs_free"] = len(self._free) + len(self._parked)
        return result

    # -- internals ----------------------------------------------------------------------
    def _bind_pair(self, port: int) -> tuple[socket.socket, socket.socket]:
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.bind((self.address, p))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks[0], socks[1]

    async def _open(
        self, port: int, socks: tuple[socket.socket, socket.socket], latch: bool
    ) -> RtpEndpoint:
        loop = asyncio.get_running_loop()
        endpoint = RtpEndpoint(self, port, latch)
        try:
            rtp, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=socks[0])
        except BaseException:
            socks[0].close()
            socks[1].close()
            self._free.append(port)
            raise
        endpoint._rtp_transport = rtp
        endpoint._open_transports = 1
        try:
            rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _RtcpProtocol(endpoint), sock=socks[1]
            )
        except BaseException:
            socks[1].close()
            self._endpoints[port] = endpoint
            endpoint.close()
            raise
        endpoint._rtcp_transport = rtcp
        endpoint._open_transports = 2
        self._endpoints[port] = endpoint
        return endpoint

    def _park(self, endpoint: RtpEndpoint) -> bool:
        """Keep a closed endpoint's open sockets for reuse; False to close them instead."""
        rtp, rtcp = endpoint._rtp_transport, endpoint._rtcp_transport
        port = endpoint.local_address[1]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closed outside the loop (shutdown): nothing to keep them for
            return False
        if (self._closed or len(self._parked) >= self._park_max or port not in self._releasing
                or rtp is None or rtcp is None or endpoint._open_transports != 2
                or rtp.is_closing() or rtcp.is_closing()):
            return False
        parked = _Parked(self, port)
        rtp.set_protocol(parked)
        rtcp.set_protocol(parked)
        # The transports no longer point at the endpoint: drop its side of the link too.
        endpoint._rtp_transport = None
        endpoint._rtcp_transport = None
        endpoint._open_transports = 0
        self._parked.append((loop.time(), port, rtp, rtcp))
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(PARK_IDLE, self._sweep)
        return True

    def _unpark(self, latch: bool) -> RtpEndpoint:
        """A new endpoint on the oldest parked pair."""
        _, port, rtp, rtcp = self._parked.popleft()
        endpoint = RtpEndpoint(self, port, latch)
        rtp.set_protocol(endpoint)
        rtcp.set_protocol(_RtcpProtocol(endpoint))
        endpoint._rtp_transport = rtp
        endpoint._rtcp_transport = rtcp
        endpoint._open_transports = 2
        self._releasing.discard(port)
        self._endpoints[port] = endpoint
        self._stop_sweep_when_empty()
        return endpoint

    def _sweep(self) -> None:
        """Close the pairs parked for ``PARK_IDLE`` seconds; look again while any wait."""
        self._sweep_timer = None
        loop = asyncio.get_running_loop()
        self._close_parked(loop.time() - PARK_IDLE)
        if self._parked:
            delay = self._parked[0][0] + PARK_IDLE - loop.time()
            self._sweep_timer = loop.call_later(max(delay, 0.1), self._sweep)

    def _close_parked(self, parked_before: float) -> None:
        """Close the parked pairs parked before ``parked_before`` (loop time); their ports
        are freed when the sockets are (``_Parked.connection_lost``)."""
        parked = self._parked
        while parked and parked[0][0] < parked_before:
            _, _port, rtp, rtcp = parked.popleft()
            rtp.close()
            rtcp.close()
        self._stop_sweep_when_empty()

    def _stop_sweep_when_empty(self) -> None:
        if not self._parked and self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None

    def _endpoint_closed(self, endpoint: RtpEndpoint) -> None:
        port = endpoint.local_address[1]
        if self._endpoints.pop(port, None) is endpoint:
            self._releasing.add(port)
            for name in COUNTER_NAMES:
                self._closed_totals[name] += getattr(endpoint, name)

    def _release_port(self, port: int) -> None:
        if port in self._releasing:
            self._releasing.discard(port)
            self._free.append(port)
        waiters, self._release_waiters = self._release_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_release(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._release_waiters.append(waiter)
        await waiter

    def _update_pt_maps(self, endpoint: RtpEndpoint) -> None:
        peer = endpoint._peer
        if peer is None:
            endpoint._pt_map = None
            endpoint._xcode = None
            return
        endpoint._pt_map = _build_pt_table(endpoint.codecs, peer.codecs)
        peer._pt_map = _build_pt_table(peer.codecs, endpoint.codecs)
        endpoint._xcode = _build_transcoder(endpoint.codecs, peer.codecs)
        peer._xcode = _build_transcoder(peer.codecs, endpoint.codecs)
