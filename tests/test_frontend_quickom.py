"""Quickom call service front-end (switch.frontends.quickom).

* A recorded call from the trunk (a SIPp caller sending from the trunk's address, dialling a
  DID) to a baresip extension: the webhook receiver fails its first three deliveries, the call
  shows up once in /call/new, the webhook arrives again with the same request_id and the same
  signature (recomputed here from the body), detail answers the same data, the record download
  is a WAV as long as the call; every documented error is answered with its status and a JSON
  error.
* Without peers (CDRs fed to the sinks): /call/new order, limit, delivered calls not "new",
  tenant isolation, the state surviving a restart; config validation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_interop_media import EmbeddedSwitch, no_switch_errors, phone, registered

from switch.config import ConfigError, parse_config
from switch.frontends.quickom import OUTBOX_TARGET, signature, signature_data

try:
    from peers import audio, baresip, sipp
    from peers.httpserver import HttpRequest, TestHttpServer
    from peers.ports import free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import audio, baresip, sipp
    from tests.peers.httpserver import HttpRequest, TestHttpServer
    from tests.peers.ports import free_udp_tcp_port

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)

SECRET = "whsec-test-secret"
KEY = "qk-default-key"
ACME_KEY = "qk-acme-key"
DID = "+902121234567"
CUSTOMER = "+905321234567"


def _extra(http_port: int, trunk_port: int, webhook_url: str | None,
           passwords: dict[str, str]) -> dict[str, Any]:
    default: dict[str, Any] = {
        "tenant": "default", "api_keys": [KEY], "signing_secret": SECRET,
        "customers": [{"customer_id": "cust-42", "name": "Deniz Customer",
                       "phone_number": "0532 123 45 67", "email": "deniz@example.com"}],
    }
    if webhook_url is not None:
        default["webhook_url"] = webhook_url
    return {
        "http": {"address": "127.0.0.1", "port": http_port, "enabled": True},
        "extensions": [
            {"number": "1001", "password": passwords["1001"], "name": "Ayla Agent",
             "email": "ayla@example.com"},
            {"number": "1002", "password": passwords["1002"], "name": "Acme Agent",
             "tenant": "acme"},
        ],
        "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": trunk_port,
                    "dids": {DID: "1001"}}],
        "quickom": {"tenants": [
            default,
            {"tenant": "acme", "api_keys": [ACME_KEY], "signing_secret": "acme-secret"},
        ]},
    }


def _switch(workdir: Path, webhook_url: str | None, **options: Any) -> EmbeddedSwitch:
    """An EmbeddedSwitch with the Quickom section, HTTP on, a DID on the trunk."""
    passwords = {n: f"pw-{n}-quickom" for n in ("1001", "1002")}
    http_port = free_udp_tcp_port()
    trunk_port = free_udp_tcp_port()
    esw = EmbeddedSwitch(workdir, extra=_extra(http_port, trunk_port, webhook_url, passwords),
                         **options)
    esw.passwords.update(passwords)
    esw.trunk_port = trunk_port
    esw.http_port = http_port  # type: ignore[attr-defined]
    return esw


def _api(esw: EmbeddedSwitch) -> httpx.AsyncClient:
    port = esw.http_port  # type: ignore[attr-defined]
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0)


def _check_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


def _wav_seconds(data: bytes, path: Path) -> float:
    path.write_bytes(data)
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


@needs_sipp
@needs_baresip
@pytest.mark.peer
@pytest.mark.timeout(120)
async def test_trunk_call_to_extension_webhook_retried_new_detail_download(
        tmp_path: Path) -> None:
    answers: list[int] = []

    def receiver(req: HttpRequest) -> tuple[int, Any]:
        # The receiver is down for the first three deliveries.
        status = 500 if len(answers) < 3 else 200
        answers.append(status)
        return status, {"ok": status == 200}

    tone = audio.write_tone_wav(tmp_path / "tone.wav", 1000.0, 30.0)
    async with TestHttpServer(receiver) as hook:
        esw = _switch(tmp_path / "sw", hook.url("/quickom/calls"), calls={"record": True})
        async with esw as sw, sipp.RtpSink() as sink, _api(sw) as api:
            p = phone(tmp_path, sw, "1001", source=tone)
            async with p:
                await registered(p, sw)
                # The customer calls the DID from the trunk's address: not challenged.
                res = await sipp.arun(
                    "t_uac_rtpport", sw.sip_port, local_port=sw.trunk_port, service=DID,
                    keys={"caller": CUSTOMER, "rtpport": sink.port}, duration_ms=3000,
                    workdir=tmp_path, timeout=40)
                assert res.ok, res.describe() + sw.diag()
                (completed,) = await sw.wait_event("completed", timeout=15)
                call_id = completed.call_id
                cdr = await sw.sw.wait_call(call_id, timeout=10)
            # First delivery failed; the call is "new" now, once.
            first = (await hook.wait(1, timeout=15))[0]
            new = await api.get("/api/enterprise/call/new", headers={"Authorization": KEY})
            assert new.status_code == 200, new.text
            listed = new.json()
            again = await api.get("/api/enterprise/call/new?limit=50",
                                  headers={"Authorization": KEY})
            assert again.status_code == 200 and again.json() == []
            # Retries: the fourth delivery is acknowledged, and nothing follows it.
            await hook.wait(4, timeout=60)
            await asyncio.sleep(2.5)
            requests = list(hook.requests)
            detail = await api.get("/api/enterprise/call/detail", params={"call_id": call_id},
                                   headers={"Authorization": KEY})
            downloads = [
                await api.get("/api/enterprise/call/record/download", params=params,
                              headers={"Authorization": KEY})
                for params in ({"call_id": call_id}, {"call_id": call_id, "record_index": "0"})
            ]
            # ---- errors
            errors = {
                "no key": await api.get("/api/enterprise/call/detail",
                                        params={"call_id": call_id}),
                "wrong key": await api.get("/api/enterprise/call/detail",
                                           params={"call_id": call_id},
                                           headers={"Authorization": "nope"}),
                "other tenant": await api.get("/api/enterprise/call/detail",
                                              params={"call_id": call_id},
                                              headers={"Authorization": ACME_KEY}),
                "unknown call": await api.get("/api/enterprise/call/detail",
                                              params={"call_id": "no-such-call"},
                                              headers={"Authorization": KEY}),
                "no call_id": await api.get("/api/enterprise/call/detail",
                                            headers={"Authorization": KEY}),
                "new no key": await api.get("/api/enterprise/call/new"),
                "limit 0": await api.get("/api/enterprise/call/new?limit=0",
                                         headers={"Authorization": KEY}),
                "limit 51": await api.get("/api/enterprise/call/new?limit=51",
                                          headers={"Authorization": KEY}),
                "limit abc": await api.get("/api/enterprise/call/new?limit=abc",
                                           headers={"Authorization": KEY}),
                "index 1": await api.get("/api/enterprise/call/record/download",
                                         params={"call_id": call_id, "record_index": "1"},
                                         headers={"Authorization": KEY}),
                "index -1": await api.get("/api/enterprise/call/record/download",
                                          params={"call_id": call_id, "record_index": "-1"},
                                          headers={"Authorization": KEY}),
                "index abc": await api.get("/api/enterprise/call/record/download",
                                           params={"call_id": call_id, "record_index": "x"},
                                           headers={"Authorization": KEY}),
                "record id": await api.get("/api/enterprise/call/record/download",
                                           params={"call_id": call_id, "record_id": "zzz"},
                                           headers={"Authorization": KEY}),
                "download no key": await api.get("/api/enterprise/call/record/download",
                                                 params={"call_id": call_id}),
            }
        no_switch_errors(sw)
    # ---- the webhook: four identical POSTs, acknowledged once
    assert answers == [500, 500, 500, 200]
    assert len(requests) == 4, [r.body for r in requests]
    assert all(r.method == "POST" and r.path == "/quickom/calls" for r in requests)
    assert {r.body for r in requests} == {first.body}
    body = first.json()
    request_ids = {r.json()["request_id"] for r in requests}
    assert len(request_ids) == 1 and body["request_id"]
    assert {r.headers["signature"] for r in requests} == {first.headers["signature"]}
    # The receiver's check, from the README: hex HMAC-SHA256 over the documented string.
    data = (f"{body['call_id']}{body['start_time']}{body['end_time']}"
            f"{body['customer_info']['customer_id']}{body['callee_info']['member_id']}")
    expected = hmac.new(SECRET.encode(), data.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, first.headers["signature"])
    assert signature_data(body) == data and signature(SECRET, body) == expected
    # ---- the mapping
    assert body["call_id"] == call_id
    assert body["customer_info"] == {"customer_id": "cust-42", "name": "Deniz Customer",
                                     "phone_number": CUSTOMER, "email": "deniz@example.com"}
    assert body["callee_info"] == {"member_id": "1001", "name": "Ayla Agent",
                                   "email": "ayla@example.com", "phone_number": "1001"}
    assert body["start_time"] == int(cdr["started_at"])
    assert body["end_time"] == int(cdr["ended_at"])
    assert body["has_record"] is True and body["record_number"] == 1
    (record,) = body["record_files"]
    assert record["record_id"] == cdr["recording_ids"][0]
    assert body["start_time"] <= record["start_time"] <= record["end_time"] <= body["end_time"]
    # ---- /call/new returned it once, with the documented body (no request_id)
    info = {k: v for k, v in body.items() if k != "request_id"}
    assert listed == [info]
    # ---- detail: the same data
    assert detail.status_code == 200, detail.text
    assert detail.json() == info
    # ---- download: a WAV as long as the conversation
    for resp in downloads:
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "audio/wav"
        assert int(resp.headers["content-length"]) == len(resp.content)
    assert downloads[0].content == downloads[1].content
    seconds = _wav_seconds(downloads[0].content, tmp_path / "got.wav")
    assert seconds == pytest.approx(cdr["billsec"], abs=0.6)
    assert seconds > 2.0
    assert record["end_time"] - record["start_time"] == pytest.approx(seconds, abs=1.0)
    # ---- errors
    for name, status, code in [
        ("no key", 401, "unauthorized"), ("wrong key", 401, "unauthorized"),
        ("other tenant", 404, "unknown_call"), ("unknown call", 404, "unknown_call"),
        ("no call_id", 400, "invalid_request"), ("new no key", 401, "unauthorized"),
        ("limit 0", 400, "invalid_limit"), ("limit 51", 400, "invalid_limit"),
        ("limit abc", 400, "invalid_limit"), ("index 1", 404, "unknown_record"),
        ("index -1", 400, "invalid_record_index"), ("index abc", 400, "invalid_record_index"),
        ("record id", 404, "unknown_record"), ("download no key", 401, "unauthorized"),
    ]:
        _check_error(errors[name], status, code)


# --------------------------------------------------------------------------- without peers


def _fake_cdr(call_id: str, started_at: float, *, caller: str = CUSTOMER,
              callee: str = "1001") -> dict[str, Any]:
    return {
        "call_id": call_id, "tenant": "default", "caller": caller, "callee": callee,
        "caller_id_number": caller, "caller_id_name": "Outside Name",
        "started_at": started_at, "answered_at": started_at + 1.0,
        "ended_at": started_at + 10.5, "duration": 10.5, "billsec": 9.5,
        "outcome": "answered", "sip_status": 200, "q850": 16,
        "legs": [
            {"leg_id": f"{call_id}-a", "role": "uas", "target": caller, "outcome": "answered"},
            {"leg_id": f"{call_id}-b", "role": "uac", "target": f"sip:{callee}@127.0.0.1:5",
             "outcome": "answered"},
        ],
        "recording_ids": [], "recordings": [], "frontend": None, "external_id": None,
        "variables": {},
    }


def _end(esw: EmbeddedSwitch, cdr: dict[str, Any]) -> None:
    """Hand a CDR to every sink, as the switch does at the end of a call."""
    esw.sw.recent_cdrs[cdr["call_id"]] = cdr
    for sink in list(esw.sw.cdr_sinks):
        sink(cdr)


async def _stored(esw: EmbeddedSwitch, call_id: str) -> dict[str, Any]:
    for _ in range(100):
        cdr = await esw.sw.store.get_cdr(call_id)
        if cdr is not None:
            return cdr
        await asyncio.sleep(0.05)
    raise AssertionError(f"CDR {call_id} never stored")


@pytest.mark.timeout(60)
async def test_new_calls_order_limit_tenants_and_restart(tmp_path: Path) -> None:
    now = time.time()
    async with _switch(tmp_path / "sw", None) as sw, _api(sw) as api:
        # Ended in another order than they started: /call/new goes by start time.
        for call_id, start in (("c2", now - 50), ("c1", now - 100), ("c3", now - 10)):
            _end(sw, _fake_cdr(call_id, start))
        _end(sw, _fake_cdr("internal", now - 5, caller="1002", callee="1001"))
        _end(sw, _fake_cdr("acme-1", now - 30, callee="1002"))
        for call_id in ("c1", "c2", "c3", "acme-1"):
            stored = await _stored(sw, call_id)
        assert stored["quickom"]["tenant"] == "acme"
        # An internal call has no customer: not a Quickom call.
        assert "quickom" not in await _stored(sw, "internal")
        first = await api.get("/api/enterprise/call/new?limit=2",
                              headers={"Authorization": KEY})
        acme = await api.get("/api/enterprise/call/new", headers={"Authorization": ACME_KEY})
        detail = await api.get("/api/enterprise/call/detail", params={"call_id": "c1"},
                               headers={"Authorization": KEY})
        no_record = await api.get("/api/enterprise/call/record/download",
                                  params={"call_id": "c1"}, headers={"Authorization": KEY})
        schema = await api.get("/openapi.json")
        no_switch_errors(sw)
    assert schema.status_code == 200
    assert "/api/enterprise/call/new" in schema.json()["paths"]
    assert [c["call_id"] for c in first.json()] == ["c1", "c2"]
    assert [c["call_id"] for c in acme.json()] == ["acme-1"]
    assert acme.json()[0]["callee_info"]["member_id"] == "1002"
    info = detail.json()
    assert info["start_time"] == int(now - 100) and info["end_time"] == int(now - 100 + 10.5)
    assert info["customer_info"]["customer_id"] == "cust-42"
    assert info["has_record"] is False and info["record_files"] == []
    _check_error(no_record, 404, "no_record")
    # After a restart (same store): c3 is still new, c1/c2 were returned and stay returned.
    async with _switch(tmp_path / "sw", None) as sw2, _api(sw2) as api2:
        rest = await api2.get("/api/enterprise/call/new", headers={"Authorization": KEY})
        empty = await api2.get("/api/enterprise/call/new", headers={"Authorization": KEY})
        detail2 = await api2.get("/api/enterprise/call/detail", params={"call_id": "c1"},
                                 headers={"Authorization": KEY})
        no_switch_errors(sw2)
    assert [c["call_id"] for c in rest.json()] == ["c3"]
    assert empty.json() == []
    assert detail2.json() == info


@pytest.mark.timeout(60)
async def test_delivered_webhook_is_not_new_and_unknown_customer(tmp_path: Path) -> None:
    async with TestHttpServer(lambda req: (200, {})) as hook:
        async with _switch(tmp_path / "sw", hook.url("/hook")) as sw, _api(sw) as api:
            cdr = _fake_cdr("d1", time.time() - 20, caller="+905551112233")
            cdr["variables"] = {"quickom_customer_email": "api@example.com"}
            _end(sw, cdr)
            (req,) = await hook.wait(1, timeout=15)
            request_id = req.json()["request_id"]
            for _ in range(100):
                item = await sw.sw.store.outbox_get(f"{request_id}:{OUTBOX_TARGET}")
                if item is not None and item.state == "delivered":
                    break
                await asyncio.sleep(0.05)
            assert item is not None and item.state == "delivered"
            new = await api.get("/api/enterprise/call/new", headers={"Authorization": KEY})
            no_switch_errors(sw)
    assert new.status_code == 200 and new.json() == []
    body = req.json()
    assert req.headers["x-event-id"] == request_id
    # Not a configured customer: no id, the number as it is; the API request's variable.
    assert body["customer_info"] == {"customer_id": "", "name": "Outside Name",
                                     "phone_number": "+905551112233",
                                     "email": "api@example.com"}
    assert req.headers["signature"] == signature(SECRET, body)
    assert json.loads(req.body) == body


@pytest.mark.parametrize(("section", "path"), [
    ({"tenants": []}, "quickom.tenants"),
    ({"tenants": [{"api_keys": ["k"]}]}, "quickom.tenants[0].signing_secret"),
    ({"tenants": [{"api_keys": [], "signing_secret": "s"}]}, "quickom.tenants[0].api_keys"),
    ({"tenants": [{"api_keys": ["k"], "signing_secret": "s", "webhook_url": "ftp://x"}]},
     "quickom.tenants[0].webhook_url"),
    ({"tenants": [{"tenant": "nobody", "api_keys": ["k"], "signing_secret": "s"}]},
     "quickom.tenants[0].tenant"),
    ({"tenants": [{"api_keys": ["k"], "signing_secret": "s",
                   "customers": [{"customer_id": "c", "phone_number": "12"}]}]},
     "quickom.tenants[0].customers[0].phone_number"),
    ({"tenants": [{"api_keys": ["k"], "signing_secret": "s", "colour": "red"}]},
     "quickom.tenants[0].colour"),
    ({"tenants": [{"api_keys": ["k"], "signing_secret": "s"}], "webhook_max_attempts": 0},
     "quickom.webhook_max_attempts"),
])
def test_config_errors(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"extensions": [{"number": "1001", "password": "pw"}],
                      "quickom": section})
    assert err.value.key_path == path, str(err.value)


def test_config_valid() -> None:
    config = parse_config({
        "calls": {"default_country": "TR"},
        "extensions": [{"number": "1001", "password": "pw", "email": "a@example.com"}],
        "quickom": {"tenants": [{
            "api_keys": ["k1", "k2"], "signing_secret": "s",
            "webhook_url": "https://crm.example.com/quickom",
            "customers": [{"customer_id": "c1", "phone_number": "0532 123 45 67"}],
        }]},
    })
    settings = config.frontends["quickom"]
    tenant = settings.tenants[0]  # type: ignore[attr-defined]
    assert tenant.tenant == "default" and tenant.api_keys == ("k1", "k2")
    assert tenant.customers[0].phone_number == "+905321234567"
    assert "k1" not in repr(settings) and "'s'" not in repr(settings)
