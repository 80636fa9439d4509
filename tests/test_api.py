"""The native HTTP API (switch/api.py) and /metrics, against a real Switch over real HTTP.

The switch runs in the test's event loop on free loopback ports: extensions 1001 and 1002
(never registered unless a test registers one), a "pstn" trunk whose port is either closed or
held by a UDP socket that swallows INVITEs (so trunk legs stay ringing), and a route "^\\+".
"""

from __future__ import annotations

import asyncio
import io
import math
import secrets
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sip.digest import DigestClient, choose_challenge
from sip.message import Response
from sip.parser import parse_message
from switch import api as api_mod
from switch.app import Switch
from switch.config import parse_config

try:
    from peers.ports import free_port_range, free_udp_tcp_port
except ImportError:  # pragma: no cover - run from the repository root
    from tests.peers.ports import free_port_range, free_udp_tcp_port

KEY = "test-key-1234"
OTHER_KEY = "other-key-5678"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"X-API-Key": OTHER_KEY}
NUMBER = "+905321234567"


class _Swallow(asyncio.DatagramProtocol):
    """A "trunk" that receives SIP over UDP and never answers."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(data)


@dataclass
class Env:
    sw: Switch
    client: httpx.AsyncClient
    base: str
    sip_port: int
    trunk: _Swallow
    password: str


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    sip_port = free_udp_tcp_port()
    trunk_port = free_udp_tcp_port()
    http_port = free_udp_tcp_port()
    rtp = free_port_range(40)
    password = f"pw-{secrets.token_hex(6)}"
    config = parse_config({
        "sip": {"address": "127.0.0.1", "port": sip_port, "transports": ["udp"]},
        "rtp": {"address": "127.0.0.1", "port_min": rtp[0], "port_max": rtp[1]},
        "http": {"address": "127.0.0.1", "port": http_port},
        "auth": {"algorithms": ["MD5"]},
        "calls": {"ring_timeout": 15, "recordings_dir": str(tmp_path / "recordings")},
        "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
        "api": {"keys": [{"key": KEY, "tenant": "default"},
                         {"key": OTHER_KEY, "tenant": "other"}],
                "prompts_dir": str(tmp_path / "prompts")},
        "extensions": [{"number": "1001", "password": password},
                       {"number": "1002", "password": "pw-1002-secret"}],
        "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": trunk_port}],
        "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
    })
    loop = asyncio.get_running_loop()
    transport, swallow = await loop.create_datagram_endpoint(
        _Swallow, local_addr=("127.0.0.1", trunk_port))
    sw = Switch(config)
    await sw.start()
    base = f"http://127.0.0.1:{http_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=15.0) as client:
            yield Env(sw, client, base, sip_port, swallow, password)
    finally:
        await sw.stop()
        transport.close()


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], body
    assert err["code"] == err["code"].lower() and " " not in err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def make_wav(seconds: float = 0.5, rate: int = 16000, channels: int = 2) -> bytes:
    buf = io.BytesIO()
    frames = int(seconds * rate)
    samples = bytearray()
    for i in range(frames):
        value = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
        samples += value.to_bytes(2, "little", signed=True) * channels
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    return buf.getvalue()


async def ringing_trunk_call(env: Env) -> dict[str, Any]:
    """A call to the trunk that stays ringing (the trunk swallows the INVITE)."""
    r = await env.client.post("/v1/calls", headers=AUTH,
                              json={"destination": NUMBER, "ring_timeout": 30,
                                    "caller_id": "+902121234567", "external_id": "ext-1"})
    assert r.status_code == 202, r.text
    (ref,) = r.json()["calls"]

    async def leg_exists() -> bool:
        return ref["leg_id"] in env.sw.b2bua.legs

    await eventually(leg_exists)
    return dict(ref)


# --------------------------------------------------------------------------- auth


async def test_auth_missing_wrong_bearer_and_x_api_key(env: Env) -> None:
    c = env.client
    assert_error(await c.get("/v1/calls"), 401, "unauthorized")
    assert_error(await c.get("/v1/calls", headers={"Authorization": "Bearer nope-nope-nope"}),
                 401, "unauthorized")
    assert_error(await c.get("/v1/calls", headers={"X-API-Key": KEY + "x"}), 401)
    assert_error(await c.get("/v1/calls", headers={"X-API-Key": ""}), 401)
    assert_error(await c.get("/v1/calls", headers={"Authorization": f"Basic {KEY}"}), 401)
    assert_error(await c.get("/v1/calls", headers={"X-API-Key": "ключ-ключ-ключ".encode()}), 401)
    assert_error(await c.post("/v1/calls", json={"destination": "1001"}), 401)
    r = await c.get("/v1/calls", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"calls": []}
    r = await c.get("/v1/calls", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json() == {"calls": []}
    r = await c.get("/v1/calls", headers=OTHER)
    assert r.status_code == 200


async def test_docs_openapi_healthz_and_unknown_path(env: Env) -> None:
    c = env.client
    r = await c.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    r = await c.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in ("/v1/calls", "/v1/calls/{call_id}", "/v1/bridge", "/v1/legs/{leg_id}/play",
                 "/v1/cdrs", "/v1/recordings/{recording_id}", "/v1/schedule",
                 "/v1/prompts/{name}", "/v1/registrations"):
        assert path in paths, sorted(paths)
    # pydantic bodies are documented, extra fields forbidden
    schemas = r.json()["components"]["schemas"]
    assert schemas["CallRequest"]["additionalProperties"] is False
    r = await c.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert_error(await c.get("/v1/nothing-here", headers=AUTH), 404)
    assert_error(await c.patch("/v1/calls", headers=AUTH), 405)


# --------------------------------------------------------------------------- malformed input

UNSAFE = ["1001&1002", "1001;x", "<sip:a>", "1001\r\nX: y", "'1001'", '"1001"', "1001>",
          "sip:1001@evil", "", " ", "1001 1002"]


@pytest.mark.parametrize("destination", UNSAFE)
async def test_unsafe_destination_rejected(env: Env, destination: str) -> None:
    r = await env.client.post("/v1/calls", headers=AUTH, json={"destination": destination})
    assert_error(r, 400)
    r = await env.client.post("/v1/calls", headers=AUTH,
                              json={"destination": "1001", "then": destination})
    assert_error(r, 400)
    assert not env.sw.b2bua.calls


@pytest.mark.parametrize("then", ["1001,1002", "1001&1002", "1001;x", "<sip:a>",
                                  "1001\r\nX: y"])
async def test_unsafe_then_is_invalid_destination(env: Env, then: str) -> None:
    r = await env.client.post("/v1/calls", headers=AUTH,
                              json={"destination": "1001", "then": then})
    assert_error(r, 400, "invalid_destination")
    assert not env.sw.b2bua.calls


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/v1/calls", {}),
    ("post", "/v1/calls", {"destination": 1001}),
    ("post", "/v1/calls", {"destination": "1001", "bogus": 1}),
    ("post", "/v1/calls", {"destination": "1001", "ring_timeout": "30"}),
    ("post", "/v1/calls", {"destination": "1001", "ring_timeout": -1}),
    ("post", "/v1/calls", {"destination": "1001", "ring_timeout": 99999}),
    ("post", "/v1/calls", {"destination": "1001", "caller_id": "abc"}),
    ("post", "/v1/calls", {"destination": "1001", "caller_name": "x\r\nVia: y"}),
    ("post", "/v1/calls", {"destination": "1001", "variables": {"a": 1}}),
    ("post", "/v1/calls", {"destination": "1001", "variables": ["a"]}),
    ("post", "/v1/calls", {"destination": "1001", "record": "yes"}),
    ("post", "/v1/calls", {"destination": "1001", "flow": "no-such-flow"}),
    ("post", "/v1/calls", {"destination": "flow:nope"}),
    ("post", "/v1/calls", {"destination": "group:nope"}),
    ("post", "/v1/calls", {"destination": "12345"}),
    ("post", "/v1/calls", {"destination": "1001", "then": "+1555", "flow": "x"}),
    ("post", "/v1/calls", ["1001"]),
    ("post", "/v1/bridge", {"leg_a": "x"}),
    ("post", "/v1/bridge", {"leg_a": "x", "leg_b": "x"}),
    ("post", "/v1/bridge", {"leg_a": "x", "leg_b": "y", "leg_c": "z"}),
    ("post", "/v1/bridge", {"leg_a": 1, "leg_b": 2}),
    ("post", "/v1/legs/x/play", {}),
    ("post", "/v1/legs/x/play", {"prompt": "../../etc/passwd.wav"}),
    ("post", "/v1/legs/x/play", {"prompt": "/tmp/x.wav"}),
    ("post", "/v1/legs/x/play", {"prompt": "connecting", "loop": "no"}),
    ("post", "/v1/legs/x/gather", {"min_digits": 0}),
    ("post", "/v1/legs/x/gather", {"max_digits": 500}),
    ("post", "/v1/legs/x/gather", {"first_timeout": 0}),
    ("post", "/v1/legs/x/gather", {"finish_key": "5"}),
    ("post", "/v1/legs/x/gather", {"pattern": "(("}),
    ("post", "/v1/legs/x/gather", {"min_digits": 5, "max_digits": 2}),
    ("post", "/v1/legs/x/gather", {"tries": 0}),
    ("post", "/v1/legs/x/dtmf", {"digits": "12x"}),
    ("post", "/v1/legs/x/dtmf", {}),
    ("post", "/v1/legs/x/transfer", {}),
    ("post", "/v1/legs/x/transfer", {"destination": "1001", "extra": True}),
    ("post", "/v1/schedule", {}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"}, "bogus": 1}),
    ("post", "/v1/schedule", {"request": {"destination": "1001", "bogus": 1}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001,1002"}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001;x"}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001", "then": "1001,1002"}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"}, "at": "tomorrow"}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"},
                              "at": "2030-01-01T09:00:00"}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"}, "at": True}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"}, "at": -5}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"},
                              "retry": {"sometimes": {"count": 1}}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"},
                              "retry": {"busy": {"count": -1}}}),
    ("post", "/v1/schedule", {"request": {"destination": "1001"},
                              "service_hours": "no-such-calendar"}),
])
async def test_malformed_bodies_are_400(env: Env, method: str, path: str, body: Any) -> None:
    r = await env.client.request(method.upper(), path, headers=AUTH, json=body)
    assert_error(r, 400)
    assert not env.sw.b2bua.calls
    assert await env.sw.scheduler.list() == []


async def test_validation_error_details_and_non_json(env: Env) -> None:
    r = await env.client.post("/v1/calls", headers=AUTH,
                              json={"destination": "1001", "surprise": 1})
    err = assert_error(r, 400, "invalid_request")
    assert any("surprise" in d["field"] for d in err["details"])
    r = await env.client.post("/v1/calls", headers={**AUTH, "Content-Type": "application/json"},
                              content=b"{not json")
    assert_error(r, 400)
    r = await env.client.post("/v1/calls", headers={**AUTH, "Content-Type": "application/json"},
                              content=b'{"destination": "1001", "ring_timeout": NaN}')
    assert_error(r, 400)
    assert not env.sw.b2bua.calls


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "offset=-1",
                                   "since=nan", "until=abc", "since=inf"])
async def test_bad_cdr_queries(env: Env, query: str) -> None:
    assert_error(await env.client.get(f"/v1/cdrs?{query}", headers=AUTH), 400, "invalid_request")


async def test_unknown_ids_are_404(env: Env) -> None:
    c = env.client
    assert_error(await c.get("/v1/calls/nope", headers=AUTH), 404, "unknown_call")
    assert_error(await c.delete("/v1/calls/nope", headers=AUTH), 404, "unknown_call")
    assert_error(await c.post("/v1/calls/nope/hangup", headers=AUTH), 404, "unknown_call")
    assert_error(await c.post("/v1/calls/nope/record", headers=AUTH), 404, "unknown_call")
    assert_error(await c.get("/v1/cdrs/nope", headers=AUTH), 404, "unknown_cdr")
    assert_error(await c.post("/v1/bridge", headers=AUTH, json={"leg_a": "a", "leg_b": "b"}),
                 404, "unknown_leg")
    for verb, body in (("play", {"prompt": "connecting"}), ("stop", None), ("gather", {}),
                       ("dtmf", {"digits": "1"}), ("transfer", {"destination": "1001"}),
                       ("hangup", None)):
        r = await c.post(f"/v1/legs/nope/{verb}", headers=AUTH, json=body)
        assert_error(r, 404, "unknown_leg")
    assert_error(await c.get("/v1/schedule/nope", headers=AUTH), 404, "unknown_job")
    assert_error(await c.delete("/v1/schedule/nope", headers=AUTH), 404, "unknown_job")
    assert_error(await c.get("/v1/recordings/nope", headers=AUTH), 404, "unknown_recording")


# --------------------------------------------------------------------------- calls and CDRs


async def test_originate_unregistered_extension_gives_no_answer_cdr(env: Env) -> None:
    c = env.client
    r = await c.post("/v1/calls", headers=AUTH,
                     json={"destination": "1001", "caller_id": "+902121234567",
                           "variables": {"order": "42"}, "external_id": "crm-7"})
    assert r.status_code == 202, r.text
    (ref,) = r.json()["calls"]
    assert ref["destination"] == "1001" and ref["call_id"] and ref["leg_id"]
    assert ref["second_leg_id"] is None
    call_id = ref["call_id"]

    async def ended() -> dict[str, Any] | None:
        got = await c.get(f"/v1/calls/{call_id}", headers=AUTH)
        assert got.status_code == 200, got.text
        data: dict[str, Any] = got.json()
        return data if not data["active"] else None

    cdr = await eventually(ended)
    assert cdr["outcome"] == "no-answer", cdr
    assert cdr["sip_status"] == 480, cdr
    assert cdr["tenant"] == "default"
    assert cdr["external_id"] == "crm-7"
    assert cdr["variables"] == {"order": "42"}
    assert cdr["call_id"] == call_id

    # another tenant sees nothing of it
    assert_error(await c.get(f"/v1/calls/{call_id}", headers=OTHER), 404, "unknown_call")
    assert_error(await c.get(f"/v1/cdrs/{call_id}", headers=OTHER), 404)
    assert_error(await c.delete(f"/v1/calls/{call_id}", headers=OTHER), 404)
    # hanging up an ended call is a state conflict for its owner
    assert_error(await c.delete(f"/v1/calls/{call_id}", headers=AUTH), 409, "call_ended")

    r = await c.get(f"/v1/cdrs/{call_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["outcome"] == "no-answer"

    async def listed() -> list[dict[str, Any]]:
        got = await c.get("/v1/cdrs?limit=10", headers=AUTH)
        assert got.status_code == 200, got.text
        return [x for x in got.json()["cdrs"] if x["call_id"] == call_id]

    (stored,) = await eventually(listed)
    assert stored["outcome"] == "no-answer"
    r = await c.get("/v1/cdrs?outcome=no-answer&external_id=crm-7", headers=AUTH)
    assert [x["call_id"] for x in r.json()["cdrs"]] == [call_id]
    r = await c.get("/v1/cdrs?outcome=answered", headers=AUTH)
    assert r.json()["cdrs"] == []
    r = await c.get(f"/v1/cdrs?since={time.time() + 3600}", headers=AUTH)
    assert r.json()["cdrs"] == []
    r = await c.get("/v1/cdrs", headers=OTHER)
    assert r.status_code == 200 and r.json()["cdrs"] == []

    # metrics count the ended call
    r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'softswitch_calls_total{outcome="no-answer"} 1.0' in r.text
    for family in ("softswitch_active_calls", "softswitch_registrations",
                   "softswitch_rtp_packets_total", "softswitch_webhook_deliveries_total",
                   "softswitch_sip_auth_failures_total", "softswitch_limit_active"):
        assert family in r.text, family


async def test_comma_list_places_one_call_each(env: Env) -> None:
    r = await env.client.post("/v1/calls", headers=AUTH, json={"destination": "1001,1002"})
    assert r.status_code == 202, r.text
    calls = r.json()["calls"]
    assert [x["destination"] for x in calls] == ["1001", "1002"]
    assert len({x["call_id"] for x in calls}) == 2
    # a bad entry anywhere in the list rejects the whole request
    r = await env.client.post("/v1/calls", headers=AUTH, json={"destination": "1001,9999"})
    assert_error(r, 400, "invalid_destination")


async def test_active_call_views_and_leg_verbs_on_a_ringing_leg(env: Env) -> None:
    c = env.client
    ref = await ringing_trunk_call(env)
    call_id, leg_id = ref["call_id"], ref["leg_id"]
    r = await c.get("/v1/calls", headers=AUTH)
    (view,) = r.json()["calls"]
    assert view["call_id"] == call_id and view["active"] is True
    assert view["caller"] == "+902121234567" and view["external_id"] == "ext-1"
    assert [leg["leg_id"] for leg in view["legs"]] == [leg_id]
    r = await c.get(f"/v1/calls/{call_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["active"] is True
    # tenant isolation on an active call
    assert (await c.get("/v1/calls", headers=OTHER)).json() == {"calls": []}
    assert_error(await c.get(f"/v1/calls/{call_id}", headers=OTHER), 404)
    assert_error(await c.post(f"/v1/legs/{leg_id}/hangup", headers=OTHER), 404, "unknown_leg")
    assert_error(await c.post(f"/v1/calls/{call_id}/record", headers=OTHER), 404)
    # the leg rings: verbs that need media are a state conflict
    for verb, body in (("play", {"prompt": "connecting"}), ("gather", {}),
                       ("dtmf", {"digits": "12"}), ("transfer", {"destination": "1002"})):
        r = await c.post(f"/v1/legs/{leg_id}/{verb}", headers=AUTH, json=body)
        assert_error(r, 409, "leg_not_answered")
    r = await c.post("/v1/bridge", headers=AUTH, json={"leg_a": leg_id, "leg_b": leg_id + "x"})
    assert_error(r, 404, "unknown_leg")
    r = await c.post(f"/v1/legs/{leg_id}/stop", headers=AUTH)
    assert r.status_code == 200, r.text
    r = await c.post(f"/v1/calls/{call_id}/record", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["path"].endswith(".wav")
    assert_error(await c.post(f"/v1/calls/{call_id}/record", headers=AUTH), 409,
                 "already_recording")
    # the INVITE reached the trunk with the caller ID
    assert any(b"INVITE sip:+905321234567@" in p and b"+902121234567" in p
               for p in env.trunk.packets)
    r = await c.delete(f"/v1/calls/{call_id}", headers=AUTH)
    assert r.status_code == 200, r.text

    async def gone() -> bool:
        got = await c.get(f"/v1/calls/{call_id}", headers=AUTH)
        return got.status_code == 200 and got.json()["active"] is False

    await eventually(gone)
    assert_error(await c.post(f"/v1/legs/{leg_id}/hangup", headers=AUTH), 404, "unknown_leg")


async def test_leg_hangup_ends_the_call(env: Env) -> None:
    ref = await ringing_trunk_call(env)
    r = await env.client.post(f"/v1/legs/{ref['leg_id']}/hangup", headers=AUTH)
    assert r.status_code == 200, r.text
    cdr = await env.sw.wait_call(ref["call_id"], timeout=10)
    assert cdr["outcome"] == "canceled", cdr


# --------------------------------------------------------------------------- schedule


async def test_schedule_get_list_cancel(env: Env) -> None:
    c = env.client
    at = time.time() + 3600
    r = await c.post("/v1/schedule", headers=AUTH, json={
        "request": {"destination": "1001", "then": NUMBER, "caller_id": "+902121234567",
                    "external_id": "job-ext"},
        "at": at, "retry": {"busy": {"count": 2, "interval": 30}},
    })
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert r.json()["state"] == "pending"
    assert r.json()["due_at"] == pytest.approx(at)

    r = await c.get(f"/v1/schedule/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "pending"
    assert job["request"]["destination"] == "1001" and job["request"]["tenant"] == "default"
    assert job["retry"]["busy"] == {"count": 2, "interval": 30.0}

    r = await c.get("/v1/schedule", headers=AUTH)
    assert [j["id"] for j in r.json()["jobs"]] == [job_id]
    r = await c.get("/v1/schedule?state=done", headers=AUTH)
    assert r.json()["jobs"] == []
    assert_error(await c.get("/v1/schedule?state=bogus", headers=AUTH), 400)
    assert (await c.get("/v1/schedule", headers=OTHER)).json()["jobs"] == []
    assert_error(await c.get(f"/v1/schedule/{job_id}", headers=OTHER), 404, "unknown_job")
    assert_error(await c.delete(f"/v1/schedule/{job_id}", headers=OTHER), 404)

    r = await c.delete(f"/v1/schedule/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    assert (await c.get(f"/v1/schedule/{job_id}", headers=AUTH)).json()["state"] == "canceled"
    assert_error(await c.delete(f"/v1/schedule/{job_id}", headers=AUTH), 409, "job_not_pending")


async def test_schedule_iso_time_and_bad_destination(env: Env) -> None:
    c = env.client
    r = await c.post("/v1/schedule", headers=AUTH, json={
        "request": {"destination": NUMBER}, "at": "2099-01-01T09:00:00+03:00"})
    assert r.status_code == 201, r.text
    assert r.json()["due_at"] == pytest.approx(4070930400.0)
    r = await c.post("/v1/schedule", headers=AUTH, json={
        "request": {"destination": "1001&1002"}, "at": "2099-01-01T09:00:00Z"})
    assert_error(r, 400, "invalid_destination")
    r = await c.post("/v1/schedule", headers=AUTH, json={"request": {"destination": "777"}})
    assert_error(r, 400, "invalid_destination")


# --------------------------------------------------------------------------- prompts


async def test_prompt_upload_raw_and_multipart(env: Env, tmp_path: Path) -> None:
    c = env.client
    wav = make_wav(0.5)
    r = await c.put("/v1/prompts/welcome", headers={**AUTH, "Content-Type": "audio/wav"},
                    content=wav)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "welcome"
    assert r.json()["duration"] == pytest.approx(0.5, abs=0.02)
    path = env.sw.prompts.resolve("welcome")
    assert path.is_file() and path.is_relative_to(tmp_path / "prompts")
    with wave.open(str(path)) as w:  # converted to 8 kHz mono
        assert w.getframerate() == 8000 and w.getnchannels() == 1
    assert env.sw.prompts.load("welcome").duration == pytest.approx(0.5, abs=0.02)
    r = await c.get("/v1/prompts", headers=AUTH)
    prompts = {p["name"]: p["source"] for p in r.json()["prompts"]}
    assert prompts["welcome"] == "custom" and prompts["en/connecting"] == "builtin"

    # replacing: 200
    r = await c.put("/v1/prompts/welcome", headers={**AUTH, "Content-Type": "audio/x-wav"},
                    content=make_wav(1.0, rate=8000, channels=1))
    assert r.status_code == 200, r.text
    assert env.sw.prompts.load("welcome").duration == pytest.approx(1.0, abs=0.02)

    # multipart, with a language
    r = await c.put("/v1/prompts/es/welcome", headers=AUTH,
                    files={"file": ("w.wav", make_wav(0.25), "audio/wav")})
    assert r.status_code == 201, r.text
    assert env.sw.prompts.resolve("welcome", "es") != env.sw.prompts.resolve("welcome", "en")
    r = await c.put("/v1/prompts/es/other", headers=AUTH,
                    files={"upload": ("w.wav", make_wav(0.25), "audio/wav")})
    assert_error(r, 400, "missing_file")


async def test_prompt_upload_errors(env: Env, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c = env.client
    wav_headers = {**AUTH, "Content-Type": "audio/wav"}
    r = await c.put("/v1/prompts/bad", headers=wav_headers, content=b"RIFF not really a wav")
    assert_error(r, 400, "invalid_wav")
    r = await c.put("/v1/prompts/bad", headers={**AUTH, "Content-Type": "application/octet-stream"},
                    content=b"\x00" * 1000)
    assert_error(r, 400, "invalid_wav")
    r = await c.put("/v1/prompts/bad", headers=AUTH,
                    files={"file": ("x.wav", b"hello", "audio/wav")})
    assert_error(r, 400, "invalid_wav")
    assert_error(await c.put("/v1/prompts/bad", headers=wav_headers, content=b""), 400)
    leftovers = list((tmp_path / "prompts").rglob("*")) if (tmp_path / "prompts").exists() else []
    assert [p for p in leftovers if p.is_file()] == []
    assert "bad" not in env.sw.prompts.overrides

    r = await c.put("/v1/prompts/x", headers={**AUTH, "Content-Type": "text/plain"},
                    content=make_wav())
    assert_error(r, 415, "unsupported_media_type")
    r = await c.put("/v1/prompts/x", headers=AUTH, json={"file": "x"})
    assert_error(r, 415)
    for name in ("Upper", "a/b/c", "..", "x" * 65, "english/x", "a.wav"):
        r = await c.put(f"/v1/prompts/{name}", headers=wav_headers, content=make_wav())
        assert r.status_code in (400, 404), (name, r.text)
        assert_error(r, r.status_code)
    r = await c.put("/v1/prompts/x", headers={"Content-Type": "audio/wav"}, content=make_wav())
    assert_error(r, 401)

    monkeypatch.setattr(api_mod, "MAX_PROMPT_BYTES", 1000)
    r = await c.put("/v1/prompts/big", headers=wav_headers, content=make_wav(0.5))
    assert_error(r, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"\x00" * 600

    r = await c.put("/v1/prompts/big", headers=wav_headers, content=chunks())
    assert_error(r, 413, "payload_too_large")
    assert "big" not in env.sw.prompts.overrides


# --------------------------------------------------------------------------- recordings


async def test_recordings_list_download_and_missing_file(env: Env, tmp_path: Path) -> None:
    c = env.client
    r = await c.get("/v1/recordings", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"recordings": []}
    assert_error(await c.get("/v1/recordings/nope", headers=AUTH), 404, "unknown_recording")

    wav_path = tmp_path / "rec.wav"
    wav_path.write_bytes(make_wav(0.2))
    now = time.time()
    await env.sw.store.add_cdr({"call_id": "call-r", "tenant": "default", "started_at": now,
                                "outcome": "answered"})
    await env.sw.store.add_recording({"id": "rec-1", "call_id": "call-r",
                                      "path": str(wav_path), "duration": 0.2})
    r = await c.get("/v1/recordings?call_id=call-r", headers=AUTH)
    (rec,) = r.json()["recordings"]
    assert rec["id"] == "rec-1" and rec["url"] == "/v1/recordings/rec-1"
    assert (await c.get("/v1/recordings", headers=OTHER)).json() == {"recordings": []}
    assert_error(await c.get("/v1/recordings/rec-1", headers=OTHER), 404)

    r = await c.get("/v1/recordings/rec-1", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert int(r.headers["content-length"]) == wav_path.stat().st_size
    assert r.content == wav_path.read_bytes()

    wav_path.unlink()
    assert_error(await c.get("/v1/recordings/rec-1", headers=AUTH), 404, "unknown_recording")


# --------------------------------------------------------------------------- registrations


async def _register(env: Env, user: str, password: str) -> Response:
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        uri = f"sip:127.0.0.1:{env.sip_port}"
        call_id = secrets.token_hex(8)
        auth: str | None = None
        for cseq in (1, 2):
            lines = [
                f"REGISTER {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
                "Max-Forwards: 70",
                f"From: <sip:{user}@127.0.0.1>;tag={secrets.token_hex(4)}",
                f"To: <sip:{user}@127.0.0.1>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:{user}@127.0.0.1:{port}>",
                "Expires: 300",
                "User-Agent: api-test",
            ]
            if auth is not None:
                lines.append(f"Authorization: {auth}")
            data = ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()
            transport.sendto(data, ("127.0.0.1", env.sip_port))
            reply = parse_message(await asyncio.wait_for(replies.get(), 5))
            assert isinstance(reply, Response)
            if reply.status != 401:
                return reply
            challenge = choose_challenge(reply.headers.get_all("WWW-Authenticate"))
            assert challenge is not None
            auth = DigestClient.answer(challenge, method="REGISTER", uri=uri, username=user,
                                       password=password, cnonce=secrets.token_hex(8))
        raise AssertionError("still challenged")
    finally:
        transport.close()


async def test_registrations_list(env: Env) -> None:
    c = env.client
    r = await c.get("/v1/registrations", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"registrations": []}
    reply = await _register(env, "1001", env.password)
    assert reply.status == 200
    r = await c.get("/v1/registrations", headers=AUTH)
    (reg,) = r.json()["registrations"]
    assert reg["aor"] == "1001" and reg["transport"] == "udp"
    assert reg["contact"].startswith("sip:1001@127.0.0.1:")
    assert 250 <= reg["expires_in"] <= 300
    assert reg["source"].startswith("127.0.0.1:")
    assert_error(await c.get("/v1/registrations"), 401)
    r = await c.get("/metrics")
    assert "softswitch_registrations 1.0" in r.text


async def test_metrics_per_switch_registry(env: Env) -> None:
    r = await env.client.get("/metrics")
    assert r.status_code == 200
    assert "# TYPE softswitch_calls_total counter" in r.text
    assert "softswitch_active_calls 0.0" in r.text
    env.sw.outcomes["answered"] += 3
    env.sw.counters["auth_failures"] += 2
    r = await env.client.get("/metrics")
    assert 'softswitch_calls_total{outcome="answered"} 3.0' in r.text
    assert "softswitch_sip_auth_failures_total 2.0" in r.text
