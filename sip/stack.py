"""The asyncio driver around the sans-IO transaction layer: UDP, TCP and TLS transports, timers.

The protocol logic lives in :class:`sip.transaction.TransactionManager`; this module only owns
sockets, feeds received bytes and the loop's clock into it, sends what it queues and keeps one
``loop.call_at`` armed for its next timer (the sans-IO split described in ARCHITECTURE.md).

TCP follows RFC 3261 section 18: messages are framed by Content-Length, a connection is kept
per remote address and reused in both directions (responses go back on the connection the
request came in on; requests to a peer reuse an open connection to it).

TLS (RFC 3261 section 26.2.1, RFC 5630) is the same stream transport inside TLS, on its own
port (``tls_port``; RFC 3261 section 19.1.2 gives 5061 as its default). The TLS layer is an
:class:`ssl.SSLObject` over memory BIOs driven by the connection's own protocol (not asyncio's
``ssl=``/``start_tls``), so it behaves the same on asyncio and uvloop and the stack sees every
step: accepted connections are checked against ``source_filter`` *before* the handshake (a
banned address costs no crypto), and a handshake that does not finish within
``tls_handshake_timeout`` seconds is aborted, so a half-open handshake cannot pin a connection.
TCP and TLS connections are kept in separate tables: one peer address may hold both.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from sip.message import Request, Response
from sip.parser import StreamFramer
from sip.transaction import (
    ClientTransaction,
    Outgoing,
    ServerTransaction,
    TransactionManager,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

# Bound what one peer can make us hold (RFC 3261 leaves limits to implementations).
MAX_TCP_BUFFER = 256 * 1024
TCP_IDLE_TIMEOUT = 300.0
# Seconds a TLS handshake may take, in either direction (a stalled one is aborted).
TLS_HANDSHAKE_TIMEOUT = 10.0
# Accepted TLS connections still handshaking at once; more are closed at accept.
MAX_TLS_HANDSHAKES = 256
# The connection-oriented transports this stack frames with StreamFramer.
STREAM_TRANSPORTS: Final = ("tcp", "tls")


class EventHandler(Protocol):
    """What the transaction user (the switch) implements to receive transaction events."""

    def __call__(self, event: Any) -> None: ...


def new_branch() -> str:
    """A fresh RFC 3261 section 8.1.1.7 branch with the magic cookie."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 section 19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, stack: SipStack) -> None:
        self._stack = stack

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._stack._received(data, (addr[0], addr[1]), "udp")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction timers deal with the loss.
        self._stack.counters["udp_errors"] += 1


class _TcpConnection(asyncio.Protocol):
    """One TCP connection, framed by :class:`StreamFramer` (also the base of TLS ones)."""

    kind = "tcp"

    def __init__(self, stack: SipStack) -> None:
        self._stack = stack
        self._framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.aliases: set[Address] = set()  # other keys this connection is filed under
        self.last_activity = 0.0
        # Since when a message has been received only in part (None: between messages).
        self.partial_since: float | None = None
        self.inbound = False  # accepted by our listener (counted per source)
        self.counted_ip: str | None = None  # the source it is counted against, once admitted
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: duck-type it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.last_activity = asyncio.get_running_loop().time()
        self._stack._tcp_connected(self)
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._stream_received(data)

    def _stream_received(self, data: bytes) -> None:
        """Frame and deliver bytes of the SIP stream (decrypted ones, for TLS)."""
        assert self.peer is not None
        if self.transport is None or self.transport.is_closing():
            return  # refused at connect (source_filter) or being closed: read nothing
        now = self.last_activity = asyncio.get_running_loop().time()
        try:
            messages = self._framer.feed(data)
        except Exception:
            # A stream we cannot frame cannot be resynchronised (RFC 3261 section 18.3):
            # close the connection.
            self._stack.counters[f"{self.kind}_framing_errors"] += 1
            self.close()
            return
        if self._framer.buffered == 0:
            self.partial_since = None
        elif messages or self.partial_since is None:
            self.partial_since = now  # a new message has begun
        for raw in messages:
            self._stack._received(raw, self.peer, self.kind)
        if self._framer.error is not None:
            # Answer what was framed before the bad bytes, then give up on the stream.
            self._stack.counters[f"{self.kind}_framing_errors"] += 1
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stack._tcp_lost(self)
        self._stack._uncount(self)
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("connection closed"))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Close the connection (its loss removes it from the stack's table)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _TlsConnection(_TcpConnection):
    """One SIP-over-TLS connection: an :class:`ssl.SSLObject` over memory BIOs on a TCP
    transport (RFC 3261 section 26.2.1), framed like TCP once decrypted.

    Server side (accepted on ``tls_port``): the source is checked with ``source_filter`` and
    against the cap on concurrent handshakes before any TLS work. Either side: the handshake
    must finish within the stack's ``tls_handshake_timeout`` or the connection is aborted; the
    connection is filed in the stack's TLS table only once the handshake is done.
    """

    kind = "tls"

    def __init__(self, stack: SipStack, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        super().__init__(stack)
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self.handshaken = False
        self._handshaking = False  # counted in stack._handshaking
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        if self._server_side and not self._stack._admit_tls(self.peer, self):
            self.transport.abort()
            return
        try:
            self._tls = self._context.wrap_bio(
                self._incoming, self._outgoing, server_side=self._server_side,
                server_hostname=self._server_hostname)
        except (ssl.SSLError, ValueError) as exc:
            self._fail("tls_handshake_failures", exc)
            return
        self._handshaking = True
        self._stack._handshaking += 1
        self._timer = loop.call_later(self._stack.tls_handshake_timeout, self._timed_out)
        if not self._server_side:
            self._handshake()  # the client speaks first (ClientHello)

    def data_received(self, data: bytes) -> None:
        if self._tls is None or self.transport is None or self.transport.is_closing():
            return
        self._incoming.write(data)
        if not self.handshaken and not self._handshake():
            return
        self._read_records()

    def _handshake(self) -> bool:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:  # bad certificate, plaintext, garbage...
            self._flush()  # our alert, if any
            self._fail("tls_handshake_failures", exc)
            return False
        self._flush()
        self.handshaken = True
        self._end_handshake()
        self.last_activity = asyncio.get_running_loop().time()
        if self._server_side:
            self._stack.counters["tls_accepted"] += 1
        self._stack._tcp_connected(self)
        if not self.ready.done():
            self.ready.set_result(None)
        return True

    def _read_records(self) -> None:
        assert self._tls is not None
        chunks: list[bytes] = []
        closed = False
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify from the peer
                closed = True
                break
            except (ssl.SSLError, OSError) as exc:
                self._fail("tls_errors", exc)
                return
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
        self._flush()  # TLS 1.3 post-handshake messages, key updates
        if chunks:
            self._stream_received(b"".join(chunks))
        if closed:
            self.close()

    def send(self, data: bytes) -> None:
        if (self._tls is None or not self.handshaken or self.transport is None
                or self.transport.is_closing()):
            return
        try:
            self._tls.write(data)
        except (ssl.SSLError, OSError) as exc:
            self._fail("tls_errors", exc)
            return
        self._flush()

    def close(self) -> None:
        """Send close_notify (RFC 8446 section 6.1) when the session is up, then close."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._tls is not None and self.handshaken:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, OSError):
                pass  # the peer's close_notify has not arrived: ours is queued anyway
            self._flush()
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_handshake()
        if not self.handshaken and not self.ready.done() and self._server_side:
            self.ready.cancel()  # nobody waits on an accepted connection's handshake
        super().connection_lost(exc)

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    def _end_handshake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshaking:
            self._handshaking = False
            self._stack._handshaking -= 1

    def _timed_out(self) -> None:
        self._timer = None
        if not self.handshaken:
            self._fail("tls_handshake_timeouts",
                       TimeoutError(f"TLS handshake not done in "
                                    f"{self._stack.tls_handshake_timeout} s"))

    def _fail(self, counter: str, exc: BaseException) -> None:
        self._stack.counters[counter] += 1
        peer = self.peer or ("?", 0)
        log.info("TLS %s %s:%s: %s: %s", "from" if self._server_side else "to", peer[0],
                 peer[1], counter, exc)
        self._end_handshake()
        if not self.ready.done():
            if self._server_side:
                self.ready.cancel()
            else:
                self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class SipStack:
    """Owns the SIP sockets and drives a :class:`TransactionManager` on the event loop.

    ``tls_server_context`` (a server-side :class:`ssl.SSLContext` holding our certificate) is
    required when ``"tls"`` is in ``transports``; ``tls_client_context`` verifies peers we
    connect to over TLS (default: :func:`ssl.create_default_context`, the system CA store).
    """

    def __init__(
        self,
        handler: Callable[[Any], None],
        *,
        address: str,
        port: int,
        transports: tuple[str, ...] = ("udp", "tcp"),
        manager: TransactionManager | None = None,
        tls_port: int | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        tls_client_context: ssl.SSLContext | None = None,
        tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
        max_connections_per_source: int = 0,
        message_timeout: float = 0.0,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
    ) -> None:
        self.manager = manager or TransactionManager()
        self.address = address
        self.port = port
        self.transports = transports
        self.tls_port = tls_port if tls_port is not None else port + 1
        if "tls" in transports and tls_server_context is None:
            raise ValueError("transport 'tls' needs tls_server_context")
        self.tls_server_context = tls_server_context
        self.tls_client_context = tls_client_context
        self.tls_handshake_timeout = tls_handshake_timeout
        self._tls_server: asyncio.base_events.Server | None = None
        self._tls: dict[Address, _TcpConnection] = {}
        self._pending_tls: dict[Address, list[bytes]] = {}
        self._handshaking = 0  # TLS connections between accept/connect and handshake end
        self._handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp: dict[Address, _TcpConnection] = {}
        self._pending_tcp: dict[Address, list[bytes]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self.counters = self.manager.counters
        # (ip, now) -> False to drop silently: asked before parsing a datagram or stream
        # message, when a TCP connection opens, and before sending (switch.security bans).
        self.source_filter: Callable[[str, float], bool] | None = None
        # Stream limits (0 = off): open TCP+TLS connections accepted from one IP address, and
        # seconds a message may take to arrive once begun (a half-sent message or a sender
        # trickling bytes cannot pin a connection); ``limit_exempt(ip)`` spares trunks.
        self.max_connections_per_source = max_connections_per_source
        self.message_timeout = message_timeout
        self.idle_timeout = idle_timeout
        self.limit_exempt: Callable[[str], bool] | None = None
        self._per_source: dict[str, int] = {}

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the configured transports. Raises OSError when a port is taken."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if "udp" in self.transports:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.address, self.port)
            )
            self._udp = transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket

                # Bursts of hundreds of calls per second overflow the default receive buffer.
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                    except OSError:
                        pass
        if "tcp" in self.transports:
            self._tcp_server = await loop.create_server(
                lambda: self._inbound(_TcpConnection(self)), self.address, self.port,
                reuse_address=True,
            )
        if "tls" in self.transports:
            # A plain TCP listener: each connection runs its own TLS layer (_TlsConnection),
            # after its source has passed source_filter (RFC 3261 section 26.2.1).
            server_context = self.tls_server_context
            assert server_context is not None
            self._tls_server = await loop.create_server(
                lambda: self._inbound(_TlsConnection(self, server_context, server_side=True)),
                self.address, self.tls_port, reuse_address=True,
            )
        if self._tcp_server is not None or self._tls_server is not None:
            self._idle_task = loop.create_task(self._close_idle_connections())

    async def close(self) -> None:
        """Close every socket and cancel the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for conn in [*self._tcp.values(), *self._tls.values()]:
            conn.close()
        self._tcp.clear()
        self._tls.clear()
        for server in (self._tcp_server, self._tls_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._tcp_server = None
        self._tls_server = None

    @property
    def running(self) -> bool:
        """True while the configured listeners are bound."""
        udp_ok = "udp" not in self.transports or self._udp is not None
        tcp_ok = "tcp" not in self.transports or self._tcp_server is not None
        tls_ok = "tls" not in self.transports or self._tls_server is not None
        return udp_ok and tcp_ok and tls_ok

    # ---- addressing helpers for the transaction user --------------------------------------

    def via(self, transport: str, branch: str | None = None) -> str:
        """A top Via for a request we send (rport asked for, RFC 3581).

        Over TLS the sent-by port is ``tls_port`` (RFC 3261 section 18.2.2: responses over a
        new connection go to the Via port, which must be the TLS listener).
        """
        return (
            f"SIP/2.0/{transport.upper()} {self._host()}:{self.port_for(transport)}"
            f";branch={branch or new_branch()};rport"
        )

    def contact_uri(self, transport: str, user: str | None = None) -> str:
        """Our Contact URI for a dialog or registration over ``transport``.

        TLS gives ``sip:...:tls_port;transport=tls`` (RFC 5630 section 3.1.3: a sip: URI with
        transport=tls, not a sips: URI, since we do not promise TLS on every hop).
        """
        userpart = f"{user}@" if user else ""
        suffix = f";transport={transport}" if transport in STREAM_TRANSPORTS else ""
        return f"sip:{userpart}{self._host()}:{self.port_for(transport)}{suffix}"

    def port_for(self, transport: str) -> int:
        """The local listening port of ``transport`` (``tls_port`` for TLS, else ``port``)."""
        return self.tls_port if transport.lower() == "tls" else self.port

    def _host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address

    # ---- sending --------------------------------------------------------------------------

    def send_request(
        self, request: Request, dest: Address, transport: str, user_data: Any = None
    ) -> ClientTransaction:
        """Start a client transaction; its events come back to the handler."""
        tx = self.manager.send_request(request, dest, transport, self._now())
        tx.user_data = user_data
        self._flush()
        return tx

    def send_response(self, tx: ServerTransaction, response: Response) -> None:
        """Answer a server transaction."""
        self.manager.send_response(tx, response, self._now())
        self._flush()

    def send_ack(self, tx: ClientTransaction, ack: Request) -> None:
        """ACK a 2xx received on ``tx`` (RFC 3261 section 13.2.2.4)."""
        self.manager.send_ack(tx, ack, self._now())
        self._flush()

    def send_stateless(self, message: Request | Response, dest: Address, transport: str) -> None:
        """Send outside any transaction."""
        self.manager.send_stateless(message, dest, transport)
        self._flush()

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _flush(self) -> None:
        for out in self.manager.take_outgoing():
            self._transmit(out)
        self._arm_timer()

    def _transmit(self, out: Outgoing) -> None:
        if self.source_filter is not None and not self.source_filter(out.dest[0], self._now()):
            self.counters["send_filtered"] += 1
            return
        if out.transport in STREAM_TRANSPORTS:
            self._send_stream(out.data, out.dest, out.transport)
        elif self._udp is not None:
            self._udp.sendto(out.data, out.dest)
        else:
            self.counters["send_no_transport"] += 1

    def _tables(
        self, kind: str
    ) -> tuple[dict[Address, _TcpConnection], dict[Address, list[bytes]]]:
        if kind == "tls":
            return self._tls, self._pending_tls
        return self._tcp, self._pending_tcp

    def _send_stream(self, data: bytes, dest: Address, kind: str) -> None:
        # RFC 3261 section 18.1.1 / 18.2.2: reuse an open connection to dest, else open one.
        conns, pendings = self._tables(kind)
        conn = conns.get(dest)
        if conn is not None:
            conn.send(data)
            return
        pending = pendings.get(dest)
        if pending is not None:
            pending.append(data)
            return
        if kind == "tls" and "tls" not in self.transports:
            self.counters["send_no_transport"] += 1
            return
        pendings[dest] = [data]
        assert self._loop is not None
        self._loop.create_task(self._connect(dest, kind))

    def _send_tcp(self, data: bytes, dest: Address) -> None:
        self._send_stream(data, dest, "tcp")

    def _client_context(self) -> ssl.SSLContext:
        if self.tls_client_context is None:
            # Default: verify the peer's certificate and name against the system CA store.
            self.tls_client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        return self.tls_client_context

    async def _connect(self, dest: Address, kind: str = "tcp") -> None:
        assert self._loop is not None
        _, pendings = self._tables(kind)
        try:
            factory: Callable[[], _TcpConnection]
            if kind == "tls":
                # RFC 3261 section 26.3.1: check the server's certificate against the host
                # we meant to reach (the trunk's configured name or address).
                context = self._client_context()

                def factory() -> _TcpConnection:
                    return _TlsConnection(self, context, server_side=False,
                                          server_hostname=dest[0])
            else:

                def factory() -> _TcpConnection:
                    return _TcpConnection(self)

            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(factory, dest[0], dest[1]), timeout=10.0)
            # TCP: already set. TLS: set when the handshake is done; the connection's own
            # timer aborts it after tls_handshake_timeout, failing this future.
            await protocol.ready
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
            log.info("%s connect to %s:%s failed: %s", kind.upper(), dest[0], dest[1], exc)
            self.counters[f"{kind}_connect_failures"] += 1
            pendings.pop(dest, None)
            # The transaction times out (Timer B/F) and the TU sees a 408.
            return
        conn = protocol
        conns, _ = self._tables(kind)
        if conn.peer is not None and conn.peer != dest and conns.get(conn.peer) is conn:
            # dest was a host name (or another spelling of the address): file the connection
            # under it too, so the next request to dest reuses it.
            conns[dest] = conn
            conn.aliases.add(dest)
        for data in pendings.pop(dest, []):
            conn.send(data)

    @staticmethod
    def _inbound(conn: _TcpConnection) -> _TcpConnection:
        conn.inbound = True
        return conn

    def _over_source_limit(self, conn: _TcpConnection) -> bool:
        """Count an accepted connection against its source; True (and not counted) when the
        source already has ``max_connections_per_source`` open."""
        if not conn.inbound or conn.peer is None:
            return False
        ip = conn.peer[0]
        limit = self.max_connections_per_source
        if limit and self._per_source.get(ip, 0) >= limit and not (
                self.limit_exempt is not None and self.limit_exempt(ip)):
            self.counters[f"{conn.kind}_per_source_refused"] += 1
            return True
        self._per_source[ip] = self._per_source.get(ip, 0) + 1
        conn.counted_ip = ip
        return False

    def _uncount(self, conn: _TcpConnection) -> None:
        """Release a connection's place in its source's count (once)."""
        ip = conn.counted_ip
        if ip is None:
            return
        conn.counted_ip = None
        left = self._per_source.get(ip, 0) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)

    def _admit_tls(self, peer: Address, conn: _TcpConnection) -> bool:
        """May a connection just accepted on the TLS port start its handshake?"""
        if self.source_filter is not None and not self.source_filter(peer[0], self._now()):
            self.counters["tls_filtered"] += 1
            return False
        if self._over_source_limit(conn):
            return False
        if self._handshaking >= MAX_TLS_HANDSHAKES:
            self.counters["tls_handshake_overflow"] += 1
            self._uncount(conn)
            return False
        return True

    def _tcp_connected(self, conn: _TcpConnection) -> None:
        assert conn.peer is not None
        if self.source_filter is not None and not self.source_filter(conn.peer[0], self._now()):
            self.counters[f"{conn.kind}_filtered"] += 1
            conn.close()
            return
        if conn.kind == "tcp" and self._over_source_limit(conn):
            conn.close()
            return
        conns, _ = self._tables(conn.kind)
        conns[conn.peer] = conn

    def _tcp_lost(self, conn: _TcpConnection) -> None:
        conns, _ = self._tables(conn.kind)
        for key in (conn.peer, *conn.aliases):
            if key is not None and conns.get(key) is conn:
                del conns[key]

    def has_connection(self, peer: Address, transport: str = "tcp") -> bool:
        """True when a ``transport`` ("tcp" or "tls") connection to ``peer`` is open
        (a registered flow)."""
        if transport.lower() not in STREAM_TRANSPORTS:
            return False
        conns, _ = self._tables(transport.lower())
        return peer in conns

    def connections(self, transport: str = "tcp") -> list[Address]:
        """Peer addresses of the open ``transport`` ("tcp" or "tls") connections."""
        conns, _ = self._tables(transport.lower())
        return [peer for peer, conn in conns.items() if peer == conn.peer]

    async def _close_idle_connections(self) -> None:
        # Often enough that a half-sent message is cut within about 1.5x message_timeout.
        period = 30.0
        if self.message_timeout > 0:
            period = min(period, max(0.25, self.message_timeout / 2))
        while True:
            await asyncio.sleep(period)
            self.close_idle(self._now())

    def close_idle(self, now: float, idle_timeout: float | None = None) -> int:
        """Close TCP and TLS connections silent for more than ``idle_timeout`` seconds
        (default :attr:`idle_timeout`), and those holding a message begun more than
        :attr:`message_timeout` seconds ago; returns how many were closed (the stack calls
        this periodically)."""
        idle = self.idle_timeout if idle_timeout is None else idle_timeout
        closed = 0
        for conn in {id(c): c for c in [*self._tcp.values(), *self._tls.values()]}.values():
            if conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.last_activity > idle:
                conn.close()
                closed += 1
            elif (self.message_timeout > 0 and conn.partial_since is not None
                  and now - conn.partial_since > self.message_timeout):
                self.counters[f"{conn.kind}_message_timeouts"] += 1
                conn.close()
                closed += 1
        return closed

    # ---- receiving and timers -------------------------------------------------------------

    def _received(self, data: bytes, source: Address, transport: str) -> None:
        if self.source_filter is not None and not self.source_filter(source[0], self._now()):
            self.counters["received_filtered"] += 1
            return
        try:
            events = self.manager.receive(data, source, transport, self._now())
        except Exception:  # the manager must not raise; if it does, count and keep serving
            log.exception("transaction layer failed on a message from %s", source)
            self.counters["internal_errors"] += 1
            events = []
        self._dispatch(events)
        self._flush()

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            try:
                self._handler(event)
            except Exception:
                log.exception("handler failed on %s", type(event).__name__)
                self.counters["handler_errors"] += 1

    def _arm_timer(self) -> None:
        deadline = self.manager.next_timer()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            events = self.manager.handle_timer(self._now())
        except Exception:
            log.exception("transaction timers failed")
            self.counters["internal_errors"] += 1
            events = []
        self._dispatch(events)
        self._flush()
