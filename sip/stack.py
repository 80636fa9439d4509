"""The asyncio driver around the sans-IO transaction layer: UDP and TCP transports and timers.

The protocol logic lives in :class:`sip.transaction.TransactionManager`; this module only owns
sockets, feeds received bytes and the loop's clock into it, sends what it queues and keeps one
``loop.call_at`` armed for its next timer (the sans-IO split described in ARCHITECTURE.md).

TCP follows RFC 3261 section 18: messages are framed by Content-Length, a connection is kept
per remote address and reused in both directions (responses go back on the connection the
request came in on; requests to a peer reuse an open connection to it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol, cast

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
    """One TCP connection, framed by :class:`StreamFramer`."""

    def __init__(self, stack: SipStack) -> None:
        self._stack = stack
        self._framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.last_activity = 0.0
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
        assert self.peer is not None
        self.last_activity = asyncio.get_running_loop().time()
        try:
            messages = self._framer.feed(data)
        except Exception:
            # A stream we cannot frame cannot be resynchronised (RFC 3261 section 18.3):
            # close the connection.
            self._stack.counters["tcp_framing_errors"] += 1
            if self.transport is not None:
                self.transport.close()
            return
        for raw in messages:
            self._stack._received(raw, self.peer, "tcp")
        if self._framer.error is not None:
            # Answer what was framed before the bad bytes, then give up on the stream.
            self._stack.counters["tcp_framing_errors"] += 1
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stack._tcp_lost(self)
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("connection closed"))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class SipStack:
    """Owns the SIP sockets and drives a :class:`TransactionManager` on the event loop."""

    def __init__(
        self,
        handler: Callable[[Any], None],
        *,
        address: str,
        port: int,
        transports: tuple[str, ...] = ("udp", "tcp"),
        manager: TransactionManager | None = None,
    ) -> None:
        self.manager = manager or TransactionManager()
        self.address = address
        self.port = port
        self.transports = transports
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
                lambda: _TcpConnection(self), self.address, self.port, reuse_address=True
            )
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
        for conn in list(self._tcp.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._tcp.clear()
        if self._tcp_server is not None:
            self._tcp_server.close()
            await self._tcp_server.wait_closed()
            self._tcp_server = None

    @property
    def running(self) -> bool:
        """True while the configured listeners are bound."""
        udp_ok = "udp" not in self.transports or self._udp is not None
        tcp_ok = "tcp" not in self.transports or self._tcp_server is not None
        return udp_ok and tcp_ok

    # ---- addressing helpers for the transaction user --------------------------------------

    def via(self, transport: str, branch: str | None = None) -> str:
        """A top Via for a request we send (rport asked for, RFC 3581)."""
        return (
            f"SIP/2.0/{transport.upper()} {self._host()}:{self.port}"
            f";branch={branch or new_branch()};rport"
        )

    def contact_uri(self, transport: str, user: str | None = None) -> str:
        """Our Contact URI for a dialog or registration over ``transport``."""
        userpart = f"{user}@" if user else ""
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"sip:{userpart}{self._host()}:{self.port}{suffix}"

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
        if out.transport == "tcp":
            self._send_tcp(out.data, out.dest)
        elif self._udp is not None:
            self._udp.sendto(out.data, out.dest)
        else:
            self.counters["send_no_transport"] += 1

    def _send_tcp(self, data: bytes, dest: Address) -> None:
        conn = self._tcp.get(dest)
        if conn is not None:
            conn.send(data)
            return
        pending = self._pending_tcp.get(dest)
        if pending is not None:
            pending.append(data)
            return
        self._pending_tcp[dest] = [data]
        assert self._loop is not None
        self._loop.create_task(self._connect(dest))

    async def _connect(self, dest: Address) -> None:
        assert self._loop is not None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: _TcpConnection(self), dest[0], dest[1]),
                timeout=10.0,
            )
        except (TimeoutError, OSError) as exc:
            log.info("TCP connect to %s:%s failed: %s", dest[0], dest[1], exc)
            self.counters["tcp_connect_failures"] += 1
            self._pending_tcp.pop(dest, None)
            # The transaction times out (Timer B/F) and the TU sees a 408.
            return
        conn = self._tcp.get(dest)
        for data in self._pending_tcp.pop(dest, []):
            if conn is not None:
                conn.send(data)

    def _tcp_connected(self, conn: _TcpConnection) -> None:
        assert conn.peer is not None
        if self.source_filter is not None and not self.source_filter(conn.peer[0], self._now()):
            self.counters["tcp_filtered"] += 1
            if conn.transport is not None:
                conn.transport.close()
            return
        self._tcp[conn.peer] = conn

    def _tcp_lost(self, conn: _TcpConnection) -> None:
        if conn.peer is not None and self._tcp.get(conn.peer) is conn:
            del self._tcp[conn.peer]

    def has_connection(self, peer: Address) -> bool:
        """True when a TCP connection to ``peer`` is open (a registered flow)."""
        return peer in self._tcp

    async def _close_idle_connections(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            now = self._now()
            for conn in list(self._tcp.values()):
                if now - conn.last_activity > TCP_IDLE_TIMEOUT and conn.transport is not None:
                    conn.transport.close()

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
