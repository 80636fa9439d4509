"""Interop: the signalling defences (switch.security) attacked over loopback.

Addresses (all of 127/8 is loopback on Linux): 127.0.0.2 the attacker, 127.0.0.3 a legitimate
phone (SIPp, ``-i``), 127.0.0.4 the trunk (a SIPp UAS; trunks are allow-listed), 127.0.0.5.. other
probes.

* Flood: a separate process sends unauthenticated INVITEs from 127.0.0.2 at FLOOD_RATE per
  second for FLOOD_SECONDS while SIPp places authenticated calls at 2 per second from
  127.0.0.3 to the trunk. Every legitimate call completes, the attacker is banned at its 17th
  request (Kamailio-like default: more than 16 in 2 s) and receives nothing for any request
  after that one. The CI figures are scaled down; the issue's full run is
  ``SECURITY_FLOOD_RATE=5000 SECURITY_FLOOD_SECONDS=20 SECURITY_LEGIT_CALLS=40
  pytest tests/test_interop_security.py -k flood -s`` (it prints the figures).
* Brute force: wrong-password REGISTERs (the right password hidden among them) from
  127.0.0.2: zero successes, the source banned after ``auth_source_limit`` failures, and the
  real phone (SIPp from 127.0.0.3) registers before and after the attack.
* Enumeration: a known and an unknown user get the same status and headers (but for
  nonce/tag/branch), without and with (wrong) credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import statistics
import sys
import time
from pathlib import Path

import pytest
from test_interop_media import OUT_NUMBER, EmbeddedSwitch

from sip.digest import compute_response, parse_auth_header

try:
    from peers import sipp
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import sipp

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)]

ATTACKER = "127.0.0.2"
PHONE = "127.0.0.3"
TRUNK = "127.0.0.4"

FLOOD_RATE = float(os.environ.get("SECURITY_FLOOD_RATE", "800"))
FLOOD_SECONDS = float(os.environ.get("SECURITY_FLOOD_SECONDS", "4"))
LEGIT_CALLS = int(os.environ.get("SECURITY_LEGIT_CALLS", "8"))
BRUTE_ATTEMPTS = int(os.environ.get("SECURITY_BRUTE_ATTEMPTS", "300"))

# The attacker: a plain UDP sender in its own process (so it does not share the switch's
# event loop), paced in 5 ms slices; it reports which of its requests got any answer.
FLOOD_SCRIPT = r"""
import json, re, socket, sys, time
host, port, rate, seconds, local, number = sys.argv[1:7]
port, rate, seconds = int(port), float(rate), float(seconds)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((local, 0))
s.setblocking(False)
lport = s.getsockname()[1]
total = int(rate * seconds)
answered = {}
received = 0
call_re = re.compile(rb"^Call-ID:\s*flood-(\d+)@", re.M | re.I)

def drain():
    global received
    while True:
        try:
            data = s.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return
        received += 1
        m = call_re.search(data)
        if m:
            i = int(m.group(1))
            answered[i] = answered.get(i, 0) + 1

def invite(i):
    return (
        f"INVITE sip:{number}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local}:{lport};branch=z9hG4bKflood{i}x;rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:attacker@{local}>;tag=fl{i}\r\n"
        f"To: <sip:{number}@{host}>\r\n"
        f"Call-ID: flood-{i}@{local}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:attacker@{local}:{lport}>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()

start = time.monotonic()
sent = 0
while sent < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while sent < due:
        try:
            s.sendto(invite(sent), (host, port))
        except BlockingIOError:
            break
        sent += 1
    drain()
    time.sleep(0.005)
elapsed = time.monotonic() - start
end = time.monotonic() + 2.0
while time.monotonic() < end:
    drain()
    time.sleep(0.02)
print(json.dumps({"sent": sent, "elapsed": elapsed, "received": received,
                  "answered": sorted(answered)}))
"""


def _security_switch(tmp_path: Path, **security: object) -> EmbeddedSwitch:
    sw = EmbeddedSwitch(tmp_path / "sw", extra={"security": dict(security)})
    # The trunk lives on 127.0.0.4 (EmbeddedSwitch puts it on 127.0.0.1): rebuild with it.
    from switch.app import Switch
    from switch.config import parse_config

    raw = {
        "sip": {"address": "127.0.0.1", "port": sw.sip_port, "transports": ["udp", "tcp"]},
        "rtp": {"address": "127.0.0.1", "port_min": sw.rtp_range[0],
                "port_max": sw.rtp_range[1]},
        "http": {"enabled": False},
        "auth": {"algorithms": ["MD5"]},
        "calls": {"ring_timeout": 15, "recordings_dir": str(tmp_path / "sw" / "recordings")},
        "store": {"url": f"sqlite:///{tmp_path / 'sw' / 'switch.db'}"},
        "extensions": [{"number": n, "password": p} for n, p in sw.passwords.items()],
        "trunks": [{"name": "pstn", "host": TRUNK, "port": sw.trunk_port}],
        "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
        "security": dict(security),
    }
    sw.config = parse_config(raw)
    sw.sw = Switch(sw.config)
    return sw


# --------------------------------------------------------------------------- flood


async def test_flood_banned_while_legitimate_calls_complete(tmp_path: Path) -> None:
    async with _security_switch(tmp_path) as sw, sipp.RtpSink() as sink:
        guard = sw.sw.security
        uas = sipp.start("uas_answer", local_ip=TRUNK, local_port=sw.trunk_port,
                         calls=LEGIT_CALLS, keys={"rtpport": sink.port},
                         workdir=tmp_path / "uas")
        await uas.wait_ready()
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOD_SCRIPT, "127.0.0.1", str(sw.sip_port),
            str(FLOOD_RATE), str(FLOOD_SECONDS), ATTACKER, OUT_NUMBER,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            legit = await sipp.arun(
                "uac_auth_call", sw.sip_port, local_ip=PHONE, service=OUT_NUMBER,
                auth_user="1001", auth_pass=sw.passwords["1001"], keys={"caller": "1001"},
                calls=LEGIT_CALLS, rate=2, duration_ms=200, workdir=tmp_path / "uac",
                timeout=LEGIT_CALLS / 2 + 60)
            out, err = await asyncio.wait_for(attacker.communicate(),
                                              timeout=FLOOD_SECONDS * 4 + 60)
        finally:
            if attacker.returncode is None:
                attacker.kill()
                await attacker.wait()
        uas_res = await uas.wait_async(30)
        assert attacker.returncode == 0, err.decode()[-2000:]
        report = json.loads(out)
        stats = guard.stats()
        limit = sw.config.security.flood_limit
        figures = (f"flood: {report['sent']} INVITEs in {report['elapsed']:.1f} s "
                   f"({report['sent'] / report['elapsed']:.0f}/s) from {ATTACKER}; attacker "
                   f"received {report['received']} messages for requests "
                   f"{report['answered'][:3]}..{report['answered'][-3:]}; legitimate calls "
                   f"{legit.successful}/{LEGIT_CALLS} ok, {legit.failed} failed; "
                   f"switch stats {stats}; stack filtered "
                   f"{sw.sw.stack.counters['received_filtered']} in, "
                   f"{sw.sw.stack.counters['send_filtered']} out")
        print(figures)
        # Every legitimate call completed (the issue asks >= 99%).
        assert legit.successful == LEGIT_CALLS and not legit.failed, legit.describe()
        uas_res.check()
        # Banned at its 17th request ("more than 16 in 2 s"): at any rate above 8.5/s that is
        # inside the first 2 s.
        assert report["sent"] == int(FLOOD_RATE * FLOOD_SECONDS)
        assert guard.bans.is_banned(ATTACKER, asyncio.get_running_loop().time()), figures
        assert stats["bans_flood"] == 1, figures
        # No response to any request after the one that got it banned (requests are numbered
        # from 0, so the banning request is number `limit`).
        assert report["answered"], figures  # it was answered before the ban
        assert max(report["answered"]) < limit, figures
        assert stats["dropped_banned"] >= report["sent"] - limit - 1, figures
        # The phone and the trunk were never banned.
        assert PHONE not in guard.bans and TRUNK not in guard.bans


# --------------------------------------------------------------------------- brute force


class _Client(asyncio.DatagramProtocol):
    """A bare UDP SIP client: every datagram received goes to ``inbox``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.inbox.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def next(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None

    async def quiet(self, quiet: float, limit: int = 100_000) -> list[bytes]:
        """Everything that arrives until nothing has for ``quiet`` seconds."""
        got: list[bytes] = []
        while len(got) < limit:
            data = await self.next(quiet)
            if data is None:
                break
            got.append(data)
        return got


async def _client(ip: str) -> _Client:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        _Client, local_addr=(ip, 0))
    return proto


def _register(client: _Client, ip: str, server_port: int, user: str, n: int,
              authorization: str | None = None, call_id: str | None = None) -> bytes:
    lines = [
        f"REGISTER sip:127.0.0.1:{server_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {ip}:{client.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag=bf{n}",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {call_id or f'bf-{n}'}@{ip}",
        f"CSeq: {n} REGISTER",
        f"Contact: <sip:{user}@{ip}:{client.port}>",
        "Expires: 60",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()


def _authorization(challenge: bytes, realm: str, user: str, password: str, uri: str,
                   nc: int) -> str:
    m = re.search(rb"^WWW-Authenticate:\s*(.+?)\r$", challenge, re.M | re.I)
    assert m, challenge
    _, params = parse_auth_header(m.group(1).decode())
    nc_text = f"{nc:08x}"
    cnonce = secrets.token_hex(4)
    response = compute_response(algorithm="MD5", username=user, realm=realm,
                                password=password, method="REGISTER", uri=uri,
                                nonce=params["nonce"], qop="auth", nc=nc_text, cnonce=cnonce)
    return (f'Digest username="{user}", realm="{realm}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc={nc_text}, '
            f'cnonce="{cnonce}"')


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


async def _sipp_register(sw: EmbeddedSwitch, tmp_path: Path, name: str) -> sipp.SippResult:
    return await sipp.arun("register_auth", sw.sip_port, local_ip=PHONE, service="1001",
                           auth_user="1001", auth_pass=sw.passwords["1001"],
                           keys={"expires": "120"}, workdir=tmp_path / name, timeout=30)


async def test_brute_force_register_banned_real_user_still_registers(tmp_path: Path) -> None:
    # The flood limit is raised so that this test sees the digest-failure limit alone.
    async with _security_switch(tmp_path, flood_limit=1_000_000) as sw:
        guard = sw.sw.security
        before = await _sipp_register(sw, tmp_path, "before")
        before.check()

        attacker = await _client(ATTACKER)
        port = sw.sip_port
        uri = f"sip:127.0.0.1:{port}"
        realm = sw.config.sip.realm
        attacker.send(_register(attacker, ATTACKER, port, "1001", 1), port)
        challenge = await attacker.next(10.0)
        assert challenge is not None and _status(challenge) == 401
        # A dictionary attack; the right password is guess number 20, after the ban.
        guesses = [f"guess-{i}" for i in range(BRUTE_ATTEMPTS)]
        guesses[20] = sw.passwords["1001"]
        statuses: list[int] = []
        for i, password in enumerate(guesses):
            auth = _authorization(challenge, realm, "1001", password, uri, i + 1)
            attacker.send(_register(attacker, ATTACKER, port, "1001", i + 2, auth), port)
            if i % 50 == 49:  # paced a little so the socket buffers are not the limit
                await asyncio.sleep(0.01)
            while not attacker.inbox.empty():
                statuses.append(_status(attacker.inbox.get_nowait()))
        statuses += [_status(d) for d in await attacker.quiet(1.5)]
        limit = sw.config.security.auth_source_limit
        stats = guard.stats()
        print(f"brute force: {len(guesses)} REGISTERs from {ATTACKER}; answers "
              f"{ {s: statuses.count(s) for s in set(statuses)} }; switch stats {stats}")
        assert 200 not in statuses
        # Each of the first limit-1 failures got its 403; the limit-th banned the source, and
        # nothing was answered after it (retransmissions and provisional answers included).
        assert statuses.count(403) == limit - 1, statuses
        assert set(statuses) == {403}, statuses
        assert guard.bans.is_banned(ATTACKER, asyncio.get_running_loop().time())
        assert stats["bans_auth"] == 1

        # The real phone is not locked out: it registers again from its address.
        after = await _sipp_register(sw, tmp_path, "after")
        after.check()
        assert PHONE not in guard.bans
        assert attacker.transport is not None
        attacker.transport.close()


# --------------------------------------------------------------------------- enumeration

_VOLATILE = [
    (re.compile(rb"branch=[^;\r\n,]+"), b"branch=*"),
    (re.compile(rb"tag=[^;\r\n,]+"), b"tag=*"),
    (re.compile(rb'nonce="[^"]*"'), b'nonce="*"'),
]


def _normalise(data: bytes, user: str) -> bytes:
    for pattern, repl in _VOLATILE:
        data = pattern.sub(repl, data)
    return data.replace(user.encode(), b"USER")


async def test_known_and_unknown_users_get_identical_answers(tmp_path: Path) -> None:
    # Limits raised: this test looks at the answers, not at the throttles.
    async with _security_switch(tmp_path, auth_source_limit=100_000,
                                auth_account_limit=100_000, flood_limit=100_000) as sw:
        probe = await _client("127.0.0.5")
        port = sw.sip_port
        uri = f"sip:127.0.0.1:{port}"
        answers: dict[str, list[bytes]] = {"1001": [], "7777": []}
        timings: dict[str, list[float]] = {"1001": [], "7777": []}
        for round_ in range(10):
            for user in ("1001", "7777"):
                n = 10 * round_ + 1
                probe.send(_register(probe, "127.0.0.5", port, user, n, call_id=f"e{n}"), port)
                challenge = await probe.next(10.0)
                assert challenge is not None
                auth = _authorization(challenge, sw.config.sip.realm, user, "wrong", uri, 1)
                t0 = time.perf_counter()
                probe.send(_register(probe, "127.0.0.5", port, user, n + 1, auth,
                                     call_id=f"e{n}"), port)
                refusal = await probe.next(10.0)
                timings[user].append(time.perf_counter() - t0)
                assert refusal is not None
                answers[user] += [challenge, refusal]
        assert probe.transport is not None
        probe.transport.close()
        known = [_normalise(a, "1001") for a in answers["1001"]]
        unknown = [_normalise(a, "7777") for a in answers["7777"]]
        assert [_status(a) for a in known[:2]] == [401, 403]
        assert known == unknown, (known[:2], unknown[:2])
        # Timing is reported, not asserted (a shared, loaded CI machine): medians in ms.
        known_ms = statistics.median(timings["1001"]) * 1000
        unknown_ms = statistics.median(timings["7777"]) * 1000
        print(f"enumeration: median 403 time known {known_ms:.3f} ms, "
              f"unknown {unknown_ms:.3f} ms")


# --------------------------------------------------------------------------- garbage


def _bad_options(client: _Client, ip: str, n: int) -> bytes:
    """A request the parser rejects (Content-Length past the datagram: RFC 3261 section
    18.3), but with the headers a 400 needs."""
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{client.port};branch=z9hG4bKg{n}\r\n"
            f"From: <sip:scan@{ip}>;tag=g{n}\r\nTo: <sip:scan@127.0.0.1>\r\n"
            f"Call-ID: g{n}@{ip}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 99999\r\n\r\n").encode()


async def test_garbage_counts_toward_the_flood_ban(tmp_path: Path) -> None:
    async with _security_switch(tmp_path) as sw:
        guard = sw.sw.security
        limit = sw.config.security.flood_limit
        attacker = await _client(ATTACKER)
        port = sw.sip_port
        # Unparseable bytes and malformed requests only: nothing here is a valid request.
        for n in range(limit):
            attacker.send(b"\x00\xff garbage %d \r\n" % n if n % 2 else
                          _bad_options(attacker, ATTACKER, n), port)
        answered = await attacker.quiet(0.5)
        # Each malformed request with enough headers was answered 400; the junk was dropped.
        assert [_status(a) for a in answered] == [400] * ((limit + 1) // 2), answered[:2]
        assert not guard.bans.is_banned(ATTACKER, asyncio.get_running_loop().time())
        # One more malformed message passes the limit: banned, and no longer answered at all.
        attacker.send(_bad_options(attacker, ATTACKER, limit), port)
        attacker.send(_register(attacker, ATTACKER, port, "1001", 1), port)  # well-formed
        assert await attacker.quiet(0.5) == []
        assert guard.bans.is_banned(ATTACKER, asyncio.get_running_loop().time())
        assert guard.stats()["bans_flood"] == 1
        # The 400 for the message that tripped the ban was built, but the stack kept it in.
        assert sw.sw.stack.counters["malformed_answered"] == (limit + 1) // 2 + 1
        assert sw.sw.stack.counters["send_filtered"] >= 1
        # The legitimate phone (SIPp from another address) is unaffected.
        phone = await _sipp_register(sw, tmp_path, "phone")
        phone.check()
        assert attacker.transport is not None
        attacker.transport.close()


# --------------------------------------------------------------------------- TCP limits


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the switch closes the connection (EOF or reset) within ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_tcp_connections_per_source_are_limited(tmp_path: Path) -> None:
    async with _security_switch(tmp_path, tcp_max_per_source=4) as sw:
        port = sw.sip_port
        conns = [await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
                 for _ in range(6)]
        closed = [await _closed_by_peer(r, 0.5) for r, _ in conns]
        assert closed == [False] * 4 + [True] * 2, closed
        assert sw.sw.stack.counters["tcp_per_source_refused"] == 2
        from prometheus_client import generate_latest

        from switch.metrics import make_registry

        exported = generate_latest(make_registry(sw.sw)).decode()
        assert "softswitch_sip_tcp_per_source_refused_total 2.0" in exported
        # The four it keeps still work: a REGISTER on one is challenged.
        reader, writer = conns[0]
        writer.write(_register_tcp(ATTACKER, writer, port, 1))
        answer = await asyncio.wait_for(reader.read(65536), 5.0)
        assert answer.startswith(b"SIP/2.0 401"), answer[:80]
        # A phone on another address is not affected: SIPp registers over TCP.
        phone = await sipp.arun("register_auth", port, local_ip=PHONE, service="1001",
                                auth_user="1001", auth_pass=sw.passwords["1001"],
                                keys={"expires": "120"}, transport="t1",
                                workdir=tmp_path / "phone", timeout=30)
        phone.check()
        for _, w in conns:
            w.close()
        # Closing frees the places: a new connection from the attacker is kept again.
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(ATTACKER, 0))
        assert not await _closed_by_peer(reader, 0.5)
        writer.close()


async def test_half_sent_message_closes_the_connection(tmp_path: Path) -> None:
    async with _security_switch(tmp_path, tcp_message_timeout=1.0) as sw:
        port = sw.sip_port
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(ATTACKER, 0))
        ok_r, ok_w = await asyncio.open_connection("127.0.0.1", port, local_addr=(PHONE, 0))
        message = _register_tcp(ATTACKER, slow_w, port, 1)
        # Half a message, then a byte every 0.3 s: active, but never finishing the message.
        slow_w.write(message[:60])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        closed_at = None
        for i in range(60, len(message) - 1):  # bounded: one byte per step
            slow_w.write(message[i:i + 1])
            if await _closed_by_peer(slow_r, 0.3):
                closed_at = loop.time() - t0
                break
        assert closed_at is not None and closed_at < 5.0, closed_at
        assert sw.sw.stack.counters["tcp_message_timeouts"] == 1
        # A whole message on the other connection is answered, and it stays open.
        ok_w.write(_register_tcp(PHONE, ok_w, port, 2))
        answer = await asyncio.wait_for(ok_r.read(65536), 5.0)
        assert answer.startswith(b"SIP/2.0 401"), answer[:80]
        assert not await _closed_by_peer(ok_r, 2.0)
        print(f"half-sent message: connection closed after {closed_at:.2f} s")
        for w in (slow_w, ok_w):
            w.close()


def _register_tcp(ip: str, writer: asyncio.StreamWriter, port: int, n: int) -> bytes:
    local_port = writer.get_extra_info("sockname")[1]
    lines = [
        f"REGISTER sip:127.0.0.1:{port};transport=tcp SIP/2.0",
        f"Via: SIP/2.0/TCP {ip}:{local_port};branch=z9hG4bKt{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:1001@127.0.0.1>;tag=t{n}",
        "To: <sip:1001@127.0.0.1>",
        f"Call-ID: tcp-{n}-{secrets.token_hex(4)}@{ip}",
        f"CSeq: {n} REGISTER",
        f"Contact: <sip:1001@{ip}:{local_port};transport=tcp>",
        "Expires: 60",
    ]
    return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()
