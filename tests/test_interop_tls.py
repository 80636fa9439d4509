"""SIP over TLS (RFC 3261 section 26.2.1, RFC 5630): real baresip phones and loopback checks.

A throwaway CA and a server certificate for 127.0.0.1 come from ``trustme`` (``pip install
trustme``, in the ``test`` extra). The switch runs embedded in the test's event loop with
``transports = ["udp", "tcp", "tls"]`` so that the tests can look at its location service and
connection tables while real peers talk to it:

* baresip 1.0 (``apt-get install baresip-core``, linked with OpenSSL) registers over TLS with
  the CA as ``sip_cafile``; the switch's binding says ``tls`` and its source is an open TLS
  connection;
* the TLS phone calls a UDP baresip phone and the UDP phone calls the TLS phone: both
  connect, each hears the other's tone through the switch's RTP relay, and the call ends with
  BYE on both sides; the call *to* the TLS phone goes over the connection it registered on
  (the switch's TLS table and baresip's own ``sipstat`` show no second connection);
* loopback, with Python's ``ssl`` module as the client: plain TCP or garbage bytes on the TLS
  port are dropped and counted, nothing crashes and the port keeps serving; a stalled
  handshake is aborted after ``tls_handshake_timeout``; a banned source is closed before any
  handshake; idle TLS connections are closed; requests to a TLS peer (a trunk) are sent over
  one verified TLS connection that is reused, and an unverifiable peer gets nothing;
* config: ``"tls"`` without a readable certificate/key fails the load naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sip.message import Headers, Request, Response
from sip.parser import StreamFramer, parse_message
from sip.stack import SipStack
from sip.transaction import IncomingResponse
from switch.app import Switch
from switch.config import ConfigError, parse_config

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import audio, baresip
    from peers.ports import free_port_range, free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import audio, baresip
    from tests.peers.ports import free_port_range, free_udp_tcp_port

trustme = pytest.importorskip("trustme", reason="pip install trustme (the test extra)")

needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)

CALLER_HZ = 1000.0
CALLEE_HZ = 600.0
FREQ_TOLERANCE = 5.0
HOLD = 3.0
MIN_TONE_SECONDS = 1.0


# --------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    """PEM files of one throwaway CA and a certificate for 127.0.0.1 signed by it."""

    ca: Path
    cert: Path  # leaf + chain
    key: Path
    combined: Path  # cert + key in one file (baresip's sip_certificate)
    authority: Any  # trustme.CA

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks the name)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem",
                directory / "combined.pem", ca)
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(paths.key))
    paths.combined.write_bytes(paths.cert.read_bytes() + paths.key.read_bytes())
    return paths


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


# --------------------------------------------------------------------------- embedded switch


class _LogTail(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append(self.format(record))


@contextlib.asynccontextmanager
async def tls_switch(workdir: Path, pki: Pki, *, trunks: list[dict[str, Any]] | None = None,
                     routes: list[dict[str, Any]] | None = None,
                     sip: dict[str, Any] | None = None) -> AsyncIterator[Switch]:
    """A :class:`Switch` on free ports with UDP, TCP and TLS, extensions 1001..1003, MD5 digest
    (baresip 1.0 answers MD5 only), no HTTP. ``sw.test_passwords`` / ``sw.test_log`` added."""
    workdir.mkdir(parents=True, exist_ok=True)
    sip_port = free_udp_tcp_port()
    tls_port = free_udp_tcp_port()
    rtp = free_port_range(100)
    passwords = {n: f"pw-{n}-{secrets.token_hex(4)}" for n in ("1001", "1002", "1003")}
    config = parse_config({
        "sip": {"address": "127.0.0.1", "port": sip_port, "transports": ["udp", "tcp", "tls"],
                "tls_port": tls_port, "tls_certificate": str(pki.cert),
                "tls_private_key": str(pki.key), "tls_ca_file": str(pki.ca), **(sip or {})},
        "rtp": {"address": "127.0.0.1", "port_min": rtp[0], "port_max": rtp[1]},
        "http": {"enabled": False},
        "auth": {"algorithms": ["MD5"]},
        "calls": {"ring_timeout": 15, "recordings_dir": str(workdir / "rec")},
        "store": {"url": f"sqlite:///{workdir / 'switch.db'}"},
        "extensions": [{"number": n, "password": p} for n, p in passwords.items()],
        **({"trunks": trunks} if trunks else {}),
        **({"routes": routes} if routes else {}),
    })
    log = _LogTail()
    for name in ("sip", "media", "switch"):
        logging.getLogger(name).addHandler(log)
    sw = Switch(config)
    sw.test_passwords = passwords  # type: ignore[attr-defined]
    sw.test_log = log  # type: ignore[attr-defined]
    await sw.start()
    try:
        yield sw
    finally:
        try:
            await sw.stop()
        finally:
            for name in ("sip", "media", "switch"):
                logging.getLogger(name).removeHandler(log)


def _diag(sw: Switch) -> str:
    records: list[str] = sw.test_log.records  # type: ignore[attr-defined]
    return "--- switch log tail:\n" + "\n".join(records[-60:])


def _no_errors(sw: Switch) -> None:
    records: list[str] = sw.test_log.records  # type: ignore[attr-defined]
    bad = [r for r in records if " ERROR " in r or " CRITICAL " in r or "Traceback" in r]
    assert not bad, "switch logged errors:\n" + "\n".join(bad[:20])


# --------------------------------------------------------------------------- audio checks


def _assert_heard(phone: baresip.BaresipInstance, freq: float) -> None:
    files = phone.recorded_files()
    assert files, f"{phone.user}: no recording of what it heard"
    path = files[-1]
    loud = audio.loud_seconds(path)
    assert loud >= MIN_TONE_SECONDS, f"{phone.user} heard almost nothing ({loud:.2f} s loud)"
    heard = audio.dominant_frequency(path)
    assert abs(heard - freq) < FREQ_TOLERANCE, f"{phone.user} heard {heard:.1f} Hz, not {freq}"


def _tls_connections(sipstat: str) -> list[tuple[int, int]]:
    """(local port, remote port) of the TLS connections in baresip's ``sipstat``."""
    return [(int(lp), int(rp)) for lp, rp in
            re.findall(r"TLS\s+127\.0\.0\.1:(\d+)\s+\S+\s+127\.0\.0\.1:(\d+)", sipstat)]


async def _registered(phone: baresip.BaresipInstance, sw: Switch) -> None:
    try:
        ev = await phone.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)
    except baresip.BaresipError as exc:
        raise AssertionError(f"{exc}\n{_diag(sw)}") from exc
    assert ev["type"] == "REGISTER_OK", f"{phone.user}: {ev}\n{_diag(sw)}\n{phone.log()[-2000:]}"


def _phones(tmp_path: Path, sw: Switch, pki: Pki) -> tuple[baresip.BaresipInstance,
                                                           baresip.BaresipInstance]:
    """1001 over TLS (aufile 1000 Hz) and 1002 over UDP (ausine 600 Hz), both auto-answer."""
    passwords: dict[str, str] = sw.test_passwords  # type: ignore[attr-defined]
    tone = audio.write_tone_wav(tmp_path / "tone-1000.wav", CALLER_HZ, 60.0)
    tls_phone = baresip.BaresipInstance(
        tmp_path / "1001", user="1001", password=passwords["1001"],
        registrar=f"127.0.0.1:{sw.config.sip.tls_port}", transport="tls", tls_cafile=pki.ca,
        audio_source=tone, codecs=("PCMU",), extra_config=["module debug_cmd.so"])
    udp_phone = baresip.BaresipInstance(
        tmp_path / "1002", user="1002", password=passwords["1002"],
        registrar=f"127.0.0.1:{sw.config.sip.port}", transport="udp",
        tone_hz=int(CALLEE_HZ), codecs=("PCMU",))
    return tls_phone, udp_phone


# --------------------------------------------------------------------------- baresip over TLS


@needs_baresip
@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_baresip_registers_over_tls_and_calls_a_udp_phone(tmp_path: Path, pki: Pki) -> None:
    async with tls_switch(tmp_path / "sw", pki) as sw:
        tls_phone, udp_phone = _phones(tmp_path, sw, pki)
        async with tls_phone, udp_phone:
            await _registered(tls_phone, sw)
            await _registered(udp_phone, sw)
            now = asyncio.get_running_loop().time()
            (binding,) = sw.location.lookup("1001", now)
            assert binding.transport == "tls", binding
            assert binding.contact.endswith(";transport=tls"), binding.contact
            # The REGISTER came in over a TLS connection that is still open (the flow).
            assert sw.stack.connections("tls") == [binding.source]
            assert sw.stack.has_connection(binding.source, "tls")
            assert not sw.stack.has_connection(binding.source, "tcp")
            assert sw.stack.counters["tls_accepted"] == 1

            await tls_phone.dial("1002")
            out = await tls_phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert out["type"] == "CALL_ESTABLISHED", f"{out}\n{_diag(sw)}"
            inc = await udp_phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert inc["type"] == "CALL_ESTABLISHED", f"{inc}\n{_diag(sw)}"
            assert "1001" in str(inc.get("peeruri", ""))
            # The switch's Contact toward the TLS phone names its TLS port and transport.
            assert str(out["peeruri"]).endswith(";transport=tls"), out
            await asyncio.sleep(HOLD)
            await tls_phone.hangup()
            closed_a = await tls_phone.wait_event("CALL_CLOSED", timeout=10)
            closed_b = await udp_phone.wait_event("CALL_CLOSED", timeout=10)
            # The UDP phone was hung up by the switch's BYE, not by a timeout.
            assert "timeout" not in str(closed_b.get("param", "")).lower(), closed_b
            assert closed_a["direction"] == "outgoing"
            # Still one TLS connection: the whole call used the registration's flow.
            assert sw.stack.connections("tls") == [binding.source]
        _assert_heard(udp_phone, CALLER_HZ)
        _assert_heard(tls_phone, CALLEE_HZ)
        _no_errors(sw)


@needs_baresip
@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_switch_calls_tls_phone_over_its_registration_connection(
        tmp_path: Path, pki: Pki) -> None:
    async with tls_switch(tmp_path / "sw", pki) as sw:
        tls_phone, udp_phone = _phones(tmp_path, sw, pki)
        async with tls_phone, udp_phone:
            await _registered(tls_phone, sw)
            await _registered(udp_phone, sw)
            (binding,) = sw.location.lookup("1001", asyncio.get_running_loop().time())
            before = _tls_connections(str((await tls_phone.command("sipstat"))["data"]))
            assert before == [(binding.source[1], sw.config.sip.tls_port)], before

            await udp_phone.dial("1001")
            inc = await tls_phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert inc["type"] == "CALL_ESTABLISHED", f"{inc}\n{_diag(sw)}"
            out = await udp_phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert out["type"] == "CALL_ESTABLISHED", f"{out}\n{_diag(sw)}"
            assert inc["direction"] == "incoming"
            # Leg B to the phone is TLS, sent to the registration's source (not its Contact
            # port), and neither side opened another connection.
            legs = [leg for leg in sw.b2bua.legs.values() if leg.role == "uac"]
            assert [(leg.transport, leg.dest) for leg in legs] == [("tls", binding.source)]
            after = _tls_connections(str((await tls_phone.command("sipstat"))["data"]))
            assert after == before, f"another TLS connection appeared: {before} -> {after}"
            assert sw.stack.connections("tls") == [binding.source]
            assert sw.stack.counters["tls_connect_failures"] == 0
            await asyncio.sleep(HOLD)
            # The callee (the TLS phone) hangs up: its BYE comes over TLS, the switch BYEs
            # the UDP caller.
            await tls_phone.hangup()
            await tls_phone.wait_event("CALL_CLOSED", timeout=10)
            await udp_phone.wait_event("CALL_CLOSED", timeout=10)
        _assert_heard(tls_phone, CALLEE_HZ)
        _assert_heard(udp_phone, CALLER_HZ)
        _no_errors(sw)


# --------------------------------------------------------------------------- loopback: server side


def _options(via: str, *, call_id: str | None = None) -> bytes:
    call_id = call_id or secrets.token_hex(8)
    return (
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: {via};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
        "To: <sip:127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> Response:
    framer = StreamFramer()
    deadline = time.monotonic() + timeout
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), max(0.1, deadline - time.monotonic()))
        assert chunk, "connection closed before a response came"
        for raw in framer.feed(chunk):
            message = parse_message(raw)
            assert isinstance(message, Response), message
            return message


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> tuple[bool, bytes]:
    """(True, bytes read) once the server closes the connection within ``timeout`` seconds."""
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), deadline - time.monotonic())
        except TimeoutError:
            return False, got
        except ConnectionError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


async def _tls_options_roundtrip(sw: Switch, pki: Pki) -> Response:
    port = sw.config.sip.tls_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                   server_hostname="127.0.0.1")
    try:
        local = writer.get_extra_info("sockname")
        writer.write(_options(f"SIP/2.0/TLS 127.0.0.1:{local[1]}"))
        return await _read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.mark.timeout(30)
async def test_python_tls_client_gets_answer_on_its_connection(tmp_path: Path, pki: Pki) -> None:
    async with tls_switch(tmp_path / "sw", pki) as sw:
        response = await _tls_options_roundtrip(sw, pki)
        assert response.status == 200, response
        assert (response.headers.get("CSeq") or "").endswith("OPTIONS"), response
        assert sw.stack.counters["tls_accepted"] == 1
        # What the switch sends over TLS names its TLS port (RFC 3261 sections 18.2.2, 8.1.1.8).
        assert sw.stack.via("tls").startswith(f"SIP/2.0/TLS 127.0.0.1:{sw.config.sip.tls_port};")
        assert sw.stack.contact_uri("tls", "1001") == (
            f"sip:1001@127.0.0.1:{sw.config.sip.tls_port};transport=tls")
        # sips: and transport=tls targets are reached over TLS, 5061 by default (RFC 3263 4.2).
        assert sw.b2bua.resolve("sips:1001@127.0.0.1") == (("127.0.0.1", 5061), "tls")
        assert sw.b2bua.resolve("sips:1001@127.0.0.1:7000;transport=tcp") == (
            ("127.0.0.1", 7000), "tls")
        assert sw.b2bua.resolve("sip:1001@127.0.0.1;transport=TLS") == (
            ("127.0.0.1", 5061), "tls")
        assert sw.b2bua.resolve("sip:1001@127.0.0.1;transport=tcp") == (
            ("127.0.0.1", 5060), "tcp")
        _no_errors(sw)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("payload", [
    pytest.param("sip", id="plain-sip-over-tcp"),
    pytest.param("garbage", id="random-bytes"),
])
async def test_plaintext_on_tls_port_is_dropped_and_counted(
        tmp_path: Path, pki: Pki, payload: str) -> None:
    async with tls_switch(tmp_path / "sw", pki) as sw:
        port = sw.config.sip.tls_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = (_options("SIP/2.0/TCP 127.0.0.1:5999") if payload == "sip"
                else secrets.token_bytes(3000))
        writer.write(data)
        closed, got = await _closed_by_peer(reader, timeout=5.0)
        writer.close()
        assert closed, "the switch kept a plaintext connection open on its TLS port"
        assert b"SIP/2.0" not in got, f"the switch answered plaintext on the TLS port: {got!r}"
        assert sw.stack.counters["tls_handshake_failures"] == 1, dict(sw.stack.counters)
        assert sw.stack.counters["tls_accepted"] == 0
        assert sw.stack.connections("tls") == []
        # Nothing broke: the TLS port and the plain TCP port both still answer.
        assert (await _tls_options_roundtrip(sw, pki)).status == 200
        r2, w2 = await asyncio.open_connection("127.0.0.1", sw.config.sip.port)
        w2.write(_options(f"SIP/2.0/TCP 127.0.0.1:{w2.get_extra_info('sockname')[1]}"))
        assert (await _read_response(r2)).status == 200
        w2.close()
        _no_errors(sw)


def _bare_stack(pki: Pki, **options: Any) -> tuple[SipStack, list[Any]]:
    events: list[Any] = []
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pki.cert), str(pki.key))
    stack = SipStack(events.append, address="127.0.0.1", port=free_udp_tcp_port(),
                     transports=("tls",), tls_port=free_udp_tcp_port(),
                     tls_server_context=server, **options)
    return stack, events


@pytest.mark.timeout(30)
@pytest.mark.parametrize("send", [
    pytest.param(b"", id="silent"),
    # A TLS record header announcing a 512-byte ClientHello, then nothing more.
    pytest.param(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC]), id="half-hello"),
])
async def test_stalled_tls_handshake_times_out(pki: Pki, send: bytes) -> None:
    stack, _ = _bare_stack(pki, tls_handshake_timeout=0.5)
    await stack.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.tls_port)
        if send:
            writer.write(send)
        started = time.monotonic()
        closed, _ = await _closed_by_peer(reader, timeout=5.0)
        elapsed = time.monotonic() - started
        writer.close()
        assert closed, "a stalled handshake pinned the connection"
        assert 0.3 <= elapsed < 3.0, f"closed after {elapsed:.2f} s, timeout is 0.5 s"
        await asyncio.sleep(0.05)
        assert stack.counters["tls_handshake_timeouts"] == 1, dict(stack.counters)
        assert stack.counters["tls_accepted"] == 0
        assert stack._handshaking == 0, "the handshake is still counted"
    finally:
        await stack.close()


@pytest.mark.timeout(30)
async def test_source_filter_closes_tls_connection_before_handshake(pki: Pki) -> None:
    stack, events = _bare_stack(pki)
    asked: list[str] = []

    def banned(ip: str, now: float) -> bool:
        asked.append(ip)
        return False

    stack.source_filter = banned
    await stack.start()
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", stack.tls_port, ssl=pki.client_context(),
                server_hostname="127.0.0.1"), 5.0)
        assert asked and asked[0] == "127.0.0.1"
        assert stack.counters["tls_filtered"] == 1
        assert stack.counters["tls_accepted"] == 0
        assert stack.counters["tls_handshake_failures"] == 0, "a handshake ran for a ban"
        assert events == []
    finally:
        await stack.close()


@pytest.mark.timeout(30)
async def test_idle_tls_connection_is_closed(pki: Pki) -> None:
    stack, _ = _bare_stack(pki)
    await stack.start()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.tls_port, ssl=pki.client_context(), server_hostname="127.0.0.1")
        for _ in range(50):
            if stack.connections("tls"):
                break
            await asyncio.sleep(0.02)
        assert len(stack.connections("tls")) == 1
        assert stack.close_idle(stack._now() + 10.0) == 0  # not idle yet
        assert stack.close_idle(stack._now() + 10_000.0) == 1
        closed, _ = await _closed_by_peer(reader, timeout=3.0)
        assert closed
        await asyncio.sleep(0.05)
        assert stack.connections("tls") == []
        writer.close()
    finally:
        await stack.close()


# --------------------------------------------------------------------------- loopback: client side


class _TlsPeer:
    """A TLS SIP peer (a trunk) on loopback: records every message, answers requests 200."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = free_udp_tcp_port()
        self.accepted = 0
        self.requests: list[Request] = []
        self.handshake_errors = 0
        self._server: asyncio.base_events.Server | None = None
        self.got = asyncio.Event()

    async def __aenter__(self) -> _TlsPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        framer = StreamFramer()
        try:
            while chunk := await reader.read(65536):
                for raw in framer.feed(chunk):
                    message = parse_message(raw)
                    if isinstance(message, Request):
                        self.requests.append(message)
                        self.got.set()
                        writer.write(_ok(message))
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def _ok(request: Request) -> bytes:
    lines = ["SIP/2.0 200 OK"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            lines.append(f"{name}: {value}" + (";tag=peer" if name == "To" else ""))
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _request(stack: SipStack, peer_port: int) -> Request:
    return Request(method="OPTIONS", uri=f"sip:trunk@127.0.0.1:{peer_port};transport=tls",
                   headers=Headers([
                       ("Via", stack.via("tls")), ("Max-Forwards", "70"),
                       ("From", f"<sip:sw@127.0.0.1>;tag={secrets.token_hex(4)}"),
                       ("To", f"<sip:trunk@127.0.0.1:{peer_port}>"),
                       ("Call-ID", secrets.token_hex(8)), ("CSeq", "1 OPTIONS"),
                       ("Contact", f"<{stack.contact_uri('tls', 'sw')}>"),
                       ("Content-Length", "0")]))


async def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@pytest.mark.timeout(30)
async def test_requests_to_a_tls_trunk_reuse_one_verified_connection(pki: Pki) -> None:
    from switch.config import SipConfig
    from switch.tls import client_context

    verify = client_context(SipConfig(tls_ca_file=str(pki.ca)))
    stack, events = _bare_stack(pki, tls_client_context=verify)
    await stack.start()
    try:
        async with _TlsPeer(pki.server_context()) as peer:
            for _ in range(2):
                stack.send_request(_request(stack, peer.port), ("127.0.0.1", peer.port), "tls")
            assert await _wait(lambda: len(peer.requests) == 2), (peer.requests, stack.counters)
            assert await _wait(lambda: sum(isinstance(e, IncomingResponse) for e in events) == 2)
            assert peer.accepted == 1, "the second request opened another connection"
            via = peer.requests[0].headers.get("Via") or ""
            assert via.startswith(f"SIP/2.0/TLS 127.0.0.1:{stack.tls_port};"), via
            contact = peer.requests[0].headers.get("Contact") or ""
            assert contact == f"<sip:sw@127.0.0.1:{stack.tls_port};transport=tls>", contact
            assert stack.connections("tls") == [("127.0.0.1", peer.port)]
            assert stack.connections("tcp") == []
    finally:
        await stack.close()


@pytest.mark.timeout(30)
async def test_unverifiable_tls_trunk_gets_nothing(tmp_path: Path, pki: Pki) -> None:
    from switch.config import SipConfig
    from switch.tls import client_context

    other = make_pki(tmp_path / "other")           # the peer's CA is not the one we trust
    strict = client_context(SipConfig(tls_ca_file=str(pki.ca)))
    stack, _ = _bare_stack(pki, tls_client_context=strict)
    await stack.start()
    try:
        async with _TlsPeer(other.server_context()) as peer:
            stack.send_request(_request(stack, peer.port), ("127.0.0.1", peer.port), "tls")
            assert await _wait(lambda: stack.counters["tls_connect_failures"] == 1)
            assert peer.requests == []
            assert stack.connections("tls") == []
        # tls_verify_peer = false (lab use): the same peer is accepted.
        lax = client_context(SipConfig(tls_verify_peer=False))
        stack.tls_client_context = lax
        async with _TlsPeer(other.server_context()) as peer:
            stack.send_request(_request(stack, peer.port), ("127.0.0.1", peer.port), "tls")
            assert await _wait(lambda: len(peer.requests) == 1)
    finally:
        await stack.close()


# --------------------------------------------------------------------------- config


def _sip(pki: Pki | None, **keys: Any) -> dict[str, Any]:
    sip: dict[str, Any] = {"transports": ["udp", "tls"]}
    if pki is not None:
        sip |= {"tls_certificate": str(pki.cert), "tls_private_key": str(pki.key)}
    sip |= keys
    return {"sip": sip}


def _config_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value


def test_config_tls_defaults_and_valid(pki: Pki) -> None:
    config = parse_config(_sip(pki, port=6000))
    assert config.sip.transports == ("udp", "tls")
    assert config.sip.tls_port == 6001
    assert config.sip.tls_verify_peer is True
    assert parse_config({}).sip.tls_port == 5061
    trunk = parse_config({**_sip(pki), "trunks": [
        {"name": "t", "host": "127.0.0.1", "transport": "tls"}]}).trunks[0]
    assert trunk.transport == "tls"
    # The key may sit in the certificate file.
    assert parse_config(_sip(None, tls_certificate=str(pki.combined))).sip.tls_private_key == ""


def test_config_tls_missing_certificate(tmp_path: Path, pki: Pki) -> None:
    err = _config_error(_sip(None))
    assert (err.key_path, err.reason) == (
        "sip.tls_certificate", 'is required when sip.transports includes "tls"')
    missing = tmp_path / "nope.pem"
    err = _config_error(_sip(pki, tls_certificate=str(missing)))
    assert (err.key_path, err.reason) == ("sip.tls_certificate", f"no such file: {missing}")
    err = _config_error(_sip(pki, tls_private_key=str(missing)))
    assert (err.key_path, err.reason) == ("sip.tls_private_key", f"no such file: {missing}")
    err = _config_error(_sip(None, tls_certificate=str(pki.cert)))  # no key anywhere
    assert err.key_path == "sip.tls_certificate" and "no PEM private key" in err.reason


def test_config_tls_unreadable_or_wrong_files(tmp_path: Path, pki: Pki) -> None:
    directory = tmp_path / "adir"
    directory.mkdir()
    err = _config_error(_sip(pki, tls_certificate=str(directory)))
    assert err.key_path == "sip.tls_certificate" and err.reason.startswith("cannot read"), err
    err = _config_error(_sip(pki, tls_certificate=str(pki.key)))   # a key, not a cert
    assert (err.key_path, err.reason) == (
        "sip.tls_certificate", f"no PEM certificate in {pki.key}")
    other = make_pki(tmp_path / "other")
    err = _config_error(_sip(pki, tls_private_key=str(other.key)))  # someone else's key
    assert (err.key_path, err.reason) == (
        "sip.tls_private_key", f"does not match the certificate in {pki.cert}")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    err = _config_error(_sip(pki, tls_certificate=str(broken)))
    assert err.key_path == "sip.tls_certificate" and err.reason.startswith("cannot load"), err
    err = _config_error(_sip(pki, tls_ca_file=str(tmp_path / "none.pem")))
    assert err.key_path == "sip.tls_ca_file" and "no such file" in err.reason
    err = _config_error(_sip(pki, tls_ca_file=str(pki.key)))
    assert err.key_path == "sip.tls_ca_file" and "no usable PEM CA" in err.reason, err


def test_config_tls_keys_checked(pki: Pki) -> None:
    err = _config_error(_sip(pki, transports=["tcp", "tls"], port=7000, tls_port=7000))
    assert (err.key_path, err.reason) == (
        "sip.tls_port", "must differ from sip.port (TCP listens there)")
    err = _config_error(_sip(pki, tls_verify_peer="no"))
    assert err.key_path == "sip.tls_verify_peer"
    err = _config_error({"trunks": [{"name": "t", "host": "127.0.0.1", "transport": "tls"}]})
    assert (err.key_path, err.reason) == (
        "trunks[0].transport", "'tls' is not enabled in sip.transports")
    # Without "tls" in transports the files are not needed nor read.
    assert parse_config({"sip": {"tls_certificate": "/nonexistent.pem"}}).sip.transports == (
        "udp", "tcp")


@needs_baresip
@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_call_out_a_tls_trunk_to_a_baresip_carrier(tmp_path: Path, pki: Pki) -> None:
    """The UDP phone dials an outside number; the route's trunk is ``transport = "tls"``: a
    baresip with our test certificate (``sip_certificate``) stands in for the carrier. The
    switch verifies it against ``tls_ca_file``, and the call connects with audio both ways."""
    carrier_port = free_port_range(2, even=False)[0]   # baresip: TLS on sip_port + 1
    trunk = {"name": "carrier", "host": "127.0.0.1", "port": carrier_port + 1,
             "transport": "tls"}
    async with tls_switch(tmp_path / "sw", pki, trunks=[trunk],
                          routes=[{"pattern": "^\\+", "trunk": "carrier"}]) as sw:
        _, udp_phone = _phones(tmp_path, sw, pki)
        tone = audio.write_tone_wav(tmp_path / "tone-1000.wav", CALLER_HZ, 60.0)
        carrier = baresip.BaresipInstance(
            tmp_path / "carrier", user="+905321234567", sip_port=carrier_port,
            audio_source=tone, codecs=("PCMU",),
            extra_config=[f"sip_certificate {pki.combined}"])
        async with carrier, udp_phone:
            await _registered(udp_phone, sw)
            await udp_phone.dial("+905321234567")
            inc = await carrier.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert inc["type"] == "CALL_ESTABLISHED", f"{inc}\n{_diag(sw)}\n{carrier.log()}"
            out = await udp_phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
            assert out["type"] == "CALL_ESTABLISHED", f"{out}\n{_diag(sw)}"
            # Leg B went out over one TLS connection to the carrier's TLS port.
            legs = [leg for leg in sw.b2bua.legs.values() if leg.role == "uac"]
            assert [(leg.transport, leg.dest) for leg in legs] == [
                ("tls", ("127.0.0.1", carrier_port + 1))]
            assert sw.stack.connections("tls") == [("127.0.0.1", carrier_port + 1)]
            await asyncio.sleep(HOLD)
            await udp_phone.hangup()
            await udp_phone.wait_event("CALL_CLOSED", timeout=10)
            await carrier.wait_event("CALL_CLOSED", timeout=10)
        _assert_heard(udp_phone, CALLER_HZ)
        _assert_heard(carrier, CALLEE_HZ)
        _no_errors(sw)
