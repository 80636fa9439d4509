"""Free loopback ports for interop tests (SIP listeners, RTP ranges, HTTP, control sockets).

Strategy, chosen so that concurrent tests do not collide:

* Ports come from 20000-32767, *below* the kernel's ephemeral range (32768-60999 on Linux), so a
  port we hand out is never concurrently picked by the kernel for someone's ``bind(port=0)`` or an
  outgoing connection.
* That range is split into disjoint slices, one per pytest-xdist worker (``PYTEST_XDIST_WORKER``
  = ``gw0``, ``gw1``...), so parallel workers never hand out the same port.
* Inside a process a cursor only moves forward (starting at a random offset so two independent
  pytest runs are unlikely to start on the same ports), so a port handed out earlier in this
  process is not handed out again until the slice wraps around.
* Every candidate is checked by actually binding it (UDP *and* TCP on 127.0.0.1) before it is
  returned.

The check-then-use window is unavoidable with subprocess peers (SIPp, baresip, the switch must
bind the port themselves); the measures above make a collision very unlikely in practice.
"""

from __future__ import annotations

import os
import random
import socket
import threading

__all__ = ["free_port_range", "free_udp_tcp_port", "is_free"]

HOST = "127.0.0.1"
RANGE_MIN = 20000
RANGE_MAX = 32767          # inclusive; 32768.. is the Linux ephemeral range
_SLICES = 16               # max distinct xdist workers with disjoint slices

_lock = threading.Lock()
_cursor: int | None = None


def _slice_bounds() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = 0
    if worker.startswith("gw") and worker[2:].isdigit():
        index = int(worker[2:]) % _SLICES
    size = (RANGE_MAX - RANGE_MIN + 1) // _SLICES if worker else RANGE_MAX - RANGE_MIN + 1
    lo = RANGE_MIN + index * size if worker else RANGE_MIN
    return lo, lo + size - 1


def _can_bind(port: int, kind: int) -> bool:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Without SO_REUSEADDR a port in TIME_WAIT reports busy; servers (and baresip/SIPp)
            # set SO_REUSEADDR, so test with it like they do.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def is_free(port: int, *, udp: bool = True, tcp: bool = True) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 right now (UDP and/or TCP)."""
    if not 1 <= port <= 65535:
        return False
    if udp and not _can_bind(port, socket.SOCK_DGRAM):
        return False
    return not (tcp and not _can_bind(port, socket.SOCK_STREAM))


def _take(count: int, align: int) -> int:
    """Advance the cursor to the next block of ``count`` free ports starting on ``align``."""
    global _cursor
    lo, hi = _slice_bounds()
    span = hi - lo + 1
    with _lock:
        if _cursor is None or not lo <= _cursor <= hi:
            _cursor = lo + random.randrange(span)
        for _ in range(span):
            start = _cursor
            if start % align:
                start += align - start % align
            if start + count - 1 > hi:
                start = lo + (-lo) % align
            _cursor = start + count
            if _cursor > hi:
                _cursor = lo
            if all(is_free(p) for p in range(start, start + count)):
                return start
    raise RuntimeError(f"no block of {count} free ports in {lo}-{hi}")


def free_udp_tcp_port() -> int:
    """A port free for BOTH UDP and TCP on 127.0.0.1 (e.g. a SIP listener doing udp+tcp)."""
    return _take(1, 1)


def free_port_range(n: int, *, even: bool = True) -> tuple[int, int]:
    """``n`` consecutive free ports (UDP and TCP) as ``(first, last)`` inclusive.

    ``first`` is even by default (RTP on even ports, RTCP on the odd one above, RFC 3550 11),
    so ``free_port_range(100)`` suits ``[rtp] port_min/port_max`` or baresip's ``rtp_ports``,
    and ``free_port_range(2)`` suits a baresip ``sip_listen`` (it also takes TLS on port+1).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    start = _take(n, 2 if even else 1)
    return start, start + n - 1
