"""The Hipcall quick dial front-end (switch/frontends/hipcall.py).

* Config validation and destination normalisation (no network).
* The lookup against a real test web service: the documented JSON, Basic auth, and every
  documented failure classified (no SIP).
* The management API under /v1/hipcall/entries over real HTTP.
* Interop (SIPp): a caller dials 72, types 12345# over the announcement (RFC 2833), the web
  service gets one POST and names a number, the trunk (a SIPp UAS) gets the INVITE, RTP flows
  both ways and the caller never sees the number; one test per documented failure, each
  hearing the failure announcement before the switch hangs up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_interop_media import OUT_NUMBER, EmbeddedSwitch, no_switch_errors, start_trunk

from switch.app import Switch
from switch.b2bua import Call
from switch.config import ConfigError, parse_config
from switch.frontends.hipcall import HipcallSettings, QuickDial, normalise_destination

try:
    from peers import audio, sipp
    from peers.httpserver import HttpRequest, TestHttpServer
    from peers.ports import free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import audio, sipp
    from tests.peers.httpserver import HttpRequest, TestHttpServer
    from tests.peers.ports import free_udp_tcp_port

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)

KEY = "hipcall-test-key"
DIGITS = OUT_NUMBER.lstrip("+")  # "905321234567": how the vendor's service writes it
ANNOUNCE_HZ = 700.0
CONNECTING_HZ = 1100.0
FAILURE_HZ = 1400.0
PHONE_HZ = 1000.0
TRUNK_HZ = 600.0


def _base(tmp_path: Path, **hipcall_section: Any) -> dict[str, Any]:
    return {
        "sip": {"address": "127.0.0.1", "port": 5999},
        "extensions": [{"number": "1001", "password": "x" * 12},
                       {"number": "1002", "password": "y" * 12}],
        "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": 5998}],
        "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
        "calls": {"default_country": "TR"},
        "api": {"prompts_dir": str(tmp_path / "prompts")},
        "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
        "hipcall": hipcall_section,
    }


def _entry(**overrides: Any) -> dict[str, Any]:
    return {"number": "72", "url": "http://127.0.0.1:8099/quick-dial", "username": "demo",
            "password": "demo", **overrides}


def _settings(tmp_path: Path, **section: Any) -> HipcallSettings:
    config = parse_config(_base(tmp_path, **section))
    settings = config.frontends["hipcall"]
    assert isinstance(settings, HipcallSettings)
    return settings


# --------------------------------------------------------------------------- config


def test_config_entry_defaults_and_numbers(tmp_path: Path) -> None:
    settings = _settings(tmp_path, entries=[_entry(), _entry(number=9999, url="https://x.example/q",
                                                             username="", password="")],
                         numbers={"1001": "+902121234567"})
    first, second = settings.entries
    assert first.number == "72" and first.url == "http://127.0.0.1:8099/quick-dial"
    assert (first.announcement, first.failure_prompt, first.connecting_prompt) == (
        "enter_number", "unavailable", "connecting")
    assert first.timeout == 3.0  # the vendor's documented limit is the default
    assert first.code_format == "integer" and first.max_digits == 15
    assert (first.username, first.password) == ("demo", "demo")
    assert "password=" not in repr(first)  # the password is not in repr
    assert second.number == "9999" and second.username == ""
    assert dict(settings.numbers) == {"1001": "+902121234567"}


@pytest.mark.parametrize(("entry", "key", "reason"), [
    ({"number": 9}, "entries[0].number", "10 to 9999"),
    ({"number": 10000}, "entries[0].number", "10 to 9999"),
    ({"number": "072"}, "entries[0].number", "10 to 9999"),
    ({"number": "1001"}, "entries[0].number", "an extension"),
    ({"url": "ftp://127.0.0.1/x"}, "entries[0].url", "http"),
    ({"url": "http://u:p@127.0.0.1/x"}, "entries[0].url", "credentials"),
    ({"url": "http:///nohost"}, "entries[0].url", "no host"),
    ({"url": ""}, "entries[0].url", "empty"),
    ({"announcement": "no_such_prompt"}, "entries[0].announcement", "unknown prompt"),
    ({"announcement": "/nonexistent/a.wav"}, "entries[0].announcement", "file not found"),
    ({"failure_prompt": "bad name!"}, "entries[0].failure_prompt", "prompt name"),
    ({"username": "", "password": "p"}, "entries[0].password", "needs a username"),
    ({"username": "a:b"}, "entries[0].username", "':'"),
    ({"timeout": 0}, "entries[0].timeout", "seconds"),
    ({"timeout": "3"}, "entries[0].timeout", "seconds"),
    ({"code_format": "float"}, "entries[0].code_format", "integer"),
    ({"max_digits": 16}, "entries[0].max_digits", "1 to 15"),
    ({"caller_id": "abc"}, "entries[0].caller_id", "digits"),
    ({"colour": "red"}, "entries[0].colour", "unknown key"),
])
def test_config_entry_errors(tmp_path: Path, entry: dict[str, Any], key: str,
                             reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, entries=[_entry(**entry)])
    assert err.value.key_path == f"hipcall.{key}", str(err.value)
    assert reason in err.value.reason, str(err.value)


def test_config_section_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hipcall.entries\[1\].number: 72 is already "
                                          r"another quick dial entry"):
        _settings(tmp_path, entries=[_entry(), _entry()])
    with pytest.raises(ConfigError, match=r"hipcall.numbers.1003: not a configured extension"):
        _settings(tmp_path, numbers={"1003": "+902121234567"})
    with pytest.raises(ConfigError, match=r"hipcall.numbers.1001: must be a valid E.164"):
        _settings(tmp_path, numbers={"1001": "02121234567"})
    with pytest.raises(ConfigError, match=r"hipcall.other: unknown key"):
        _settings(tmp_path, other=1)
    with pytest.raises(ConfigError, match=r"hipcall.entries\[0\].number: 500 is already the "
                                          "number of call flow"):
        raw = _base(tmp_path, entries=[_entry(number="500")])
        raw["flows"] = [{"name": "ivr", "number": "500", "steps": [{"action": "hangup"}]}]
        parse_config(raw)


def test_config_accepts_uploaded_prompt_and_wav_path(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    audio.write_tone_wav(tmp_path / "prompts" / "order.wav", 500, 0.5)
    wav = audio.write_tone_wav(tmp_path / "fail.wav", 500, 0.5)
    settings = _settings(tmp_path, entries=[_entry(announcement="order",
                                                   failure_prompt=str(wav))])
    assert settings.entries[0].announcement == "order"
    assert settings.entries[0].failure_prompt == str(wav)


def test_normalise_destination() -> None:
    def is_ext(n: str) -> bool:
        return n in ("1001", "1002")

    assert normalise_destination(DIGITS, is_ext) == OUT_NUMBER
    assert normalise_destination(OUT_NUMBER, is_ext) == OUT_NUMBER
    assert normalise_destination(int(DIGITS), is_ext) == OUT_NUMBER
    assert normalise_destination("1002", is_ext) == "1002"
    for bad in ("3ASDASDF", "", "05321234567", "90532", "+1", "9053212345678901234",
                "905321234567;x=1", "90 532 123 45 67", True, None, 9.5, ["905321234567"]):
        assert normalise_destination(bad, is_ext) is None, bad


# --------------------------------------------------------------------------- the lookup


def _quick(tmp_path: Path, url: str, **entry: Any) -> tuple[Switch, QuickDial]:
    config = parse_config(_base(tmp_path, entries=[_entry(url=url, **entry)],
                                numbers={"1001": "+902121234567"}))
    sw = Switch(config)
    settings = config.frontends["hipcall"]
    assert isinstance(settings, HipcallSettings)
    # A second front-end object on the same settings, without entries (the switch holds
    # the configured ones): only its lookup is exercised here.
    quick = QuickDial(sw, HipcallSettings(numbers=settings.numbers))
    return sw, quick


@pytest.mark.parametrize(("reply", "status", "destination"), [
    ((200, {"destination": DIGITS}), "ok", OUT_NUMBER),
    ((200, {"destination": "1002"}), "ok", "1002"),
    ((500, {"destination": DIGITS}), "http_error", None),
    ((404, {}), "http_error", None),
    ((401, {}, {"WWW-Authenticate": 'Basic realm="x"'}), "auth_rejected", None),
    ((200, b'{"destination": "905321234567",}'), "bad_json", None),
    ((200, b"[1, 2]"), "bad_json", None),
    ((200, b"\xff\xfe"), "bad_json", None),
    ((200, {"dest": DIGITS}), "no_destination", None),
    ((200, {"destination": "3ASDASDF"}), "invalid_destination", None),
    ((200, {"destination": {"n": 1}}), "invalid_destination", None),
])
async def test_lookup_posts_documented_json_and_classifies(
        tmp_path: Path, reply: tuple[Any, ...], status: str, destination: str | None) -> None:
    async with TestHttpServer(lambda req: reply) as web:  # type: ignore[arg-type,return-value]
        sw, quick = _quick(tmp_path, web.url("/quick-dial"))
        entry = sw.config.frontends["hipcall"].entries[0]  # type: ignore[attr-defined]
        call = Call(caller="1001", callee="72")
        result = await quick.lookup(call, entry, "00123")
    assert (result.status, result.destination) == (status, destination), result
    (req,) = web.requests
    assert req.method == "POST" and req.path == "/quick-dial"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"demo:demo").decode()
    body = req.json()
    assert set(body) == {"number", "user_id", "uuid", "code", "timestamp"}
    assert body["number"] == "+902121234567" and body["user_id"] == 1001
    assert body["uuid"] == call.id and body["code"] == 123  # an integer: leading zeros go
    assert isinstance(body["timestamp"], int) and abs(body["timestamp"] - time.time()) < 600
    assert b",}" not in req.body  # strict JSON, unlike the vendor's own example


async def test_lookup_string_codes_no_auth_and_unreachable(tmp_path: Path) -> None:
    async with TestHttpServer(lambda req: (200, {"destination": DIGITS})) as web:
        sw, quick = _quick(tmp_path, web.url("/q"), code_format="string", username="",
                           password="")
        entry = sw.config.frontends["hipcall"].entries[0]  # type: ignore[attr-defined]
        result = await quick.lookup(Call(caller="1002", callee="72"), entry, "00123")
    assert result.status == "ok"
    (req,) = web.requests
    assert "authorization" not in req.headers
    assert req.json()["code"] == "00123"
    assert req.json()["number"] == "1002"  # no E.164 known for 1002: the extension as is
    port = free_udp_tcp_port()  # nothing listens there
    sw, quick = _quick(tmp_path, f"http://127.0.0.1:{port}/q")
    entry = sw.config.frontends["hipcall"].entries[0]  # type: ignore[attr-defined]
    result = await quick.lookup(Call(caller="1001", callee="72"), entry, "1")
    assert result.status == "unreachable", result


async def test_lookup_timeout_is_a_hard_total_limit(tmp_path: Path) -> None:
    released = asyncio.Event()

    async def slow(req: HttpRequest) -> tuple[int, Any]:
        await released.wait()
        return 200, {"destination": DIGITS}

    async with TestHttpServer(slow) as web:
        sw, quick = _quick(tmp_path, web.url("/q"), timeout=0.3)
        entry = sw.config.frontends["hipcall"].entries[0]  # type: ignore[attr-defined]
        result = await quick.lookup(Call(caller="1001", callee="72"), entry, "1")
        # The answer had not been given when the lookup gave up.
        assert not released.is_set()
        released.set()
    assert result.status == "timeout" and result.destination is None, result
    assert len(web.requests) == 1


# --------------------------------------------------------------------------- the API


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedSwitch, httpx.AsyncClient]]:
    http_port = free_udp_tcp_port()
    extra = {
        "http": {"address": "127.0.0.1", "port": http_port, "enabled": True},
        "api": {"keys": [{"key": KEY}], "prompts_dir": str(tmp_path / "prompts")},
        "hipcall": {"entries": [_entry()]},
    }
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15.0,
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield sw, client


def _err(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


async def test_api_list_put_delete(api: tuple[EmbeddedSwitch, httpx.AsyncClient],
                                   tmp_path: Path) -> None:
    sw, c = api
    r = await c.get("/v1/hipcall/entries")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entries"]
    assert entry["number"] == "72" and entry["password_set"] is True
    assert "password" not in entry and "demo" != entry.get("password")
    # Upload an announcement, then create an entry that uses it.
    wav = audio.write_tone_wav(tmp_path / "order.wav", ANNOUNCE_HZ, 0.5)
    r = await c.put("/v1/prompts/order", content=wav.read_bytes(),
                    headers={"Content-Type": "audio/wav"})
    assert r.status_code == 201, r.text
    body = {"announcement": "order", "url": "https://lookup.example/q", "timeout": 2.5}
    r = await c.put("/v1/hipcall/entries/73", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["announcement"] == "order" and r.json()["password_set"] is False
    assert "73" in sw.sw.services
    r = await c.put("/v1/hipcall/entries/73", json={**body, "username": "u", "password": "p"})
    assert r.status_code == 200 and r.json()["password_set"] is True, r.text
    r = await c.get("/v1/hipcall/entries/73")
    assert r.status_code == 200 and r.json()["timeout"] == 2.5
    numbers = [e["number"] for e in (await c.get("/v1/hipcall/entries")).json()["entries"]]
    assert numbers == ["72", "73"]
    r = await c.delete("/v1/hipcall/entries/73")
    assert r.status_code == 200 and r.json() == {"number": "73", "deleted": True}
    assert "73" not in sw.sw.services
    _err(await c.delete("/v1/hipcall/entries/73"), 404, "unknown_entry")
    _err(await c.get("/v1/hipcall/entries/73"), 404, "unknown_entry")


async def test_api_errors(api: tuple[EmbeddedSwitch, httpx.AsyncClient]) -> None:
    sw, c = api
    good = {"url": "http://127.0.0.1:8099/q"}
    async with httpx.AsyncClient(base_url=str(c.base_url)) as anon:
        _err(await anon.get("/v1/hipcall/entries"), 401, "unauthorized")
        _err(await anon.put("/v1/hipcall/entries/74", json=good), 401, "unauthorized")
        _err(await anon.delete("/v1/hipcall/entries/72"), 401, "unauthorized")
        r = await anon.get("/v1/hipcall/entries", headers={"X-API-Key": "wrong"})
        _err(r, 401, "unauthorized")
    assert "need a number" not in _err(await c.put("/v1/hipcall/entries/9", json=good),
                                       400, "invalid_entry")
    assert "extension" in _err(await c.put("/v1/hipcall/entries/1001", json=good),
                               400, "invalid_entry")
    assert "url" in _err(await c.put("/v1/hipcall/entries/74", json={"url": "file:///x"}),
                         400, "invalid_entry")
    assert "url" in _err(await c.put("/v1/hipcall/entries/74", json={}), 400, "invalid_entry")
    msg = _err(await c.put("/v1/hipcall/entries/74", json={**good, "announcement": "/tmp/a.wav"}),
               400, "invalid_entry")
    assert msg.startswith("announcement:") and "prompt name" in msg
    msg = _err(await c.put("/v1/hipcall/entries/74", json={**good, "announcement": "nope"}),
               400, "invalid_entry")
    assert "unknown prompt" in msg
    assert "path" in _err(await c.put("/v1/hipcall/entries/74", json={**good, "number": "75"}),
                          400, "invalid_entry")
    _err(await c.put("/v1/hipcall/entries/74", content=b"{nope",
                     headers={"Content-Type": "application/json"}), 400, "invalid_request")
    _err(await c.put("/v1/hipcall/entries/74", json=[1]), 400, "invalid_request")
    assert "timeout" in _err(await c.put("/v1/hipcall/entries/74",
                                         json={**good, "timeout": -1}), 400, "invalid_entry")
    assert "74" not in sw.sw.services
    no_switch_errors(sw)


# --------------------------------------------------------------------------- interop


def _packets_audio(packets: list[sipp.RtpPacket]) -> np.ndarray[Any, Any]:
    chunks = [audio.alaw_decode(p.payload) if p.payload_type == 8 else audio.ulaw_decode(p.payload)
              for p in packets if p.payload_type in (0, 8)]
    if not chunks:
        return np.zeros(0)
    return np.concatenate(chunks).astype(np.float64) / 32768.0


def _dominant(samples: np.ndarray[Any, Any], rate: int = 8000) -> float:
    assert len(samples) > 400, f"only {len(samples)} samples"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


async def _type_code(sink: sipp.RtpSink, code: str) -> None:
    for digit in code:
        await sink.send_dtmf(digit, duration_ms=120)
        await asyncio.sleep(0.15)


def _switch_extra(http_port: int, tmp_path: Path, entries: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    return {
        "http": {"address": "127.0.0.1", "port": http_port, "enabled": True},
        "api": {"keys": [{"key": KEY}], "prompts_dir": str(tmp_path / "prompts")},
        "hipcall": {"entries": entries, "numbers": {"1001": "+902121234567"}},
    }


@needs_sipp
@pytest.mark.peer
@pytest.mark.timeout(120)
async def test_quick_dial_bridges_the_looked_up_number(tmp_path: Path) -> None:
    def lookup(req: HttpRequest) -> tuple[int, Any]:
        return 200, {"destination": DIGITS}

    http_port = free_udp_tcp_port()
    announce = audio.write_tone_wav(tmp_path / "announce.wav", ANNOUNCE_HZ, 6.0)
    connecting = audio.write_tone_wav(tmp_path / "connecting.wav", CONNECTING_HZ, 1.0)
    async with TestHttpServer(lookup) as web, \
            EmbeddedSwitch(tmp_path / "sw", extra=_switch_extra(http_port, tmp_path, [])) as sw, \
            sipp.RtpSink() as caller_media, sipp.RtpSink() as trunk_media, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15.0,
                              headers={"Authorization": f"Bearer {KEY}"}) as api:
        # The entry and its announcement come through the native API.
        for name, wav in (("qd_order", announce), ("qd_connecting", connecting)):
            r = await api.put(f"/v1/prompts/{name}", content=wav.read_bytes(),
                              headers={"Content-Type": "audio/wav"})
            assert r.status_code == 201, r.text
        r = await api.put("/v1/hipcall/entries/72", json={
            "announcement": "qd_order", "connecting_prompt": "qd_connecting",
            "url": web.url("/quick-dial"), "username": "demo", "password": "s3cret"})
        assert r.status_code == 201, r.text
        uas = start_trunk(sw, tmp_path, trunk_media)
        try:
            await uas.wait_ready()
            uac = sipp.start("t_uac_rtpport", sw.sip_port, service="72", auth_user="1001",
                             auth_pass=sw.passwords["1001"],
                             keys={"caller": "1001", "rtpport": caller_media.port},
                             duration_ms=12000, workdir=tmp_path / "uac")
            # The caller hears the announcement and types the code over it (barge-in).
            await caller_media.wait_for(25, timeout=15)
            heard_announcement = _packets_audio(caller_media.received())
            await _type_code(caller_media, "12345#")
            (req,) = await web.wait(1, timeout=15)
            mark = caller_media.count()
            await sw.wait_event("bridged", timeout=20)
            await asyncio.sleep(0.3)
            between = _packets_audio(caller_media.received()[mark:])
            # Both ways: the caller's tone reaches the trunk, the trunk's the caller.
            await caller_media.send_tone(PHONE_HZ, 1.5)
            await trunk_media.wait_for(20, timeout=5)
            before_talk = caller_media.count()
            await trunk_media.send_tone(TRUNK_HZ, 1.5)  # back to where the switch sends from
            await asyncio.sleep(0.3)
            caller_heard = _packets_audio(caller_media.received()[before_talk:])
            trunk_heard = trunk_media.audio()
            uac_res = await uac.wait_async(40)
            uas_res = await uas.wait_async(15)
        finally:
            uas.stop()
        (completed,) = await sw.wait_event("completed", timeout=15)
        cdr = await sw.sw.wait_call(completed.call_id, timeout=10)
        await asyncio.sleep(0.2)
        assert len(web.requests) == 1, web.requests
    assert uac_res.ok and uas_res.ok, uac_res.describe() + uas_res.describe() + sw.diag()
    # Exactly one POST, the documented fields, Basic auth.
    assert req.method == "POST" and req.path == "/quick-dial"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"demo:s3cret").decode()
    body = json.loads(req.body)
    assert body == {"number": "+902121234567", "user_id": 1001, "uuid": completed.call_id,
                    "code": 12345, "timestamp": body["timestamp"]}
    assert isinstance(body["timestamp"], int) and abs(body["timestamp"] - time.time()) < 600
    # The uploaded announcement, then the connecting prompt, reached the caller.
    assert abs(_dominant(heard_announcement) - ANNOUNCE_HZ) < 20
    assert abs(_dominant(between) - CONNECTING_HZ) < 20
    # The trunk got the INVITE for the looked-up number, in E.164.
    invite = uas_res.received("INVITE")[0]
    assert f"sip:{OUT_NUMBER}@" in invite.splitlines()[0], invite
    assert abs(_dominant(trunk_heard[-4000:]) - PHONE_HZ) < 20, "the trunk did not hear"
    assert abs(_dominant(caller_heard) - TRUNK_HZ) < 20, "the caller did not hear the trunk"
    # The caller never sees the number: in no message it received.
    for message in uac_res.received():
        assert DIGITS[2:] not in message, message
    # The CDR audits it all.
    v = cdr["variables"]
    assert v["quickdial_number"] == "72" and v["quickdial_code"] == "12345"
    assert v["quickdial_status"] == "ok" and v["quickdial_http_status"] == "200"
    assert v["quickdial_destination"] == OUT_NUMBER and int(v["quickdial_ms"]) >= 0
    assert v["quickdial_outcome"] == "answered" and "quickdial_failure" not in v
    assert cdr["frontend"] == "hipcall" and cdr["external_id"] == "12345"
    assert cdr["outcome"] == "answered" and len(cdr["legs"]) == 2
    no_switch_errors(sw)


def _auth_checked(req: HttpRequest) -> tuple[int, Any, dict[str, str]]:
    expected = "Basic " + base64.b64encode(b"demo:right-password").decode()
    if req.headers.get("authorization") != expected:
        return 401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Basic realm="qd"'}
    return 200, {"destination": DIGITS}, {}


FAILURES: dict[str, tuple[Any, str]] = {
    "non_200": (lambda req: (500, {"destination": DIGITS}), "http_error"),
    "slow": (None, "timeout"),  # built in the test: it answers long after the limit
    "bad_auth": (_auth_checked, "auth_rejected"),
    "malformed_json": (lambda req: (200, b'{"destination": "905321234567",}'), "bad_json"),
    "no_destination": (lambda req: (200, {"number": DIGITS}), "no_destination"),
    "invalid_number": (lambda req: (200, {"destination": "3ASDASDF"}), "invalid_destination"),
}


@needs_sipp
@pytest.mark.peer
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(FAILURES))
async def test_quick_dial_failure_announced_then_hung_up(tmp_path: Path, case: str) -> None:
    handler, status = FAILURES[case]
    slow_answered = asyncio.Event()
    if handler is None:
        async def handler(req: HttpRequest) -> tuple[int, Any]:
            await asyncio.sleep(8.0)
            slow_answered.set()
            return 200, {"destination": DIGITS}
    http_port = free_udp_tcp_port()
    announce = audio.write_tone_wav(tmp_path / "announce.wav", ANNOUNCE_HZ, 6.0)
    failure = audio.write_tone_wav(tmp_path / "failure.wav", FAILURE_HZ, 1.5)
    async with TestHttpServer(handler) as web:
        entry = _entry(url=web.url("/quick-dial"), announcement=str(announce),
                       failure_prompt=str(failure),
                       # The test shrinks the 3 s limit so the slow case stays short (the
                       # slow server answers 8 s after the request).
                       timeout=1.0 if case == "slow" else 3.0)
        async with EmbeddedSwitch(tmp_path / "sw",
                                  extra=_switch_extra(http_port, tmp_path, [entry])) as sw, \
                sipp.RtpSink() as caller_media:
            uac = sipp.start("t_hipcall_uac_recv_bye", sw.sip_port, service="72",
                             auth_user="1001", auth_pass=sw.passwords["1001"],
                             keys={"caller": "1001", "rtpport": caller_media.port},
                             workdir=tmp_path / "uac")
            try:
                await caller_media.wait_for(25, timeout=15)
                await _type_code(caller_media, "12345#")
                (req,) = await web.wait(1, timeout=15)
                mark = caller_media.count()
                (completed,) = await sw.wait_event("completed", timeout=20)
                # The call was over before the slow server had answered: the limit held.
                answered_before_end = slow_answered.is_set()
                uac_res = await uac.wait_async(30)
            finally:
                uac.stop()
            after = _packets_audio(caller_media.received()[mark:])
            cdr = await sw.sw.wait_call(completed.call_id, timeout=10)
            logs = "\n".join(sw._log.records)
    assert not answered_before_end
    assert uac_res.ok, uac_res.describe() + sw.diag()
    assert uac_res.received("BYE"), "the switch did not hang up"
    assert req.method == "POST" and req.json()["code"] == 12345
    # The failure announcement reached the caller after the lookup.
    assert abs(_dominant(after) - FAILURE_HZ) < 20, sw.diag()
    # Visible in the CDR and in the log, with the reason.
    v = cdr["variables"]
    assert v["quickdial_status"] == status, v
    assert v["quickdial_failure"].startswith(f"{status}: "), v
    assert v["quickdial_code"] == "12345" and "quickdial_destination" not in v
    assert cdr["failure"] == f"quickdial {status}"
    assert len(cdr["legs"]) == 1, cdr["legs"]  # nothing was dialled
    assert f"call {completed.call_id}: {status}" in logs
    no_switch_errors(sw)
