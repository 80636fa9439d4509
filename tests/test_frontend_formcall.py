"""The Medularis FormCall front-end (``POST /calls/manage/api``, ``/calls/manage/status``).

* config validation (key paths) and the customer's number from country code + area code +
  number (``phonenumbers``);
* every documented error code 1-8 reached by a real HTTP request, and the precedence;
* a valid request against real peers: the agent (baresip 1001) rings first; when it answers,
  the customer (a SIPp UAS on the trunk) is called with the popup's caller ID; they are
  bridged; the status endpoint and the status webhooks report each stage;
* a request outside service hours is left pending and placed when the hours open (virtual
  clock), customer first;
* the spam limits refuse the N+1th request per number and per popup within the period.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_interop_media import EmbeddedSwitch, no_switch_errors, registered, start_trunk

from switch.clock import VirtualClock
from switch.config import ConfigError, parse_config
from switch.frontends.formcall import ERRORS, FormCallError, customer_number

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

POPUP = "e5c98214-d0f6-11e1-8c30-001d09ef4a24"
CLOSED = "0b6d3b7a-1111-4c3e-9c55-7f3a2a0c0001"      # outside hours, not pending
PENDING = "0b6d3b7a-2222-4c3e-9c55-7f3a2a0c0002"     # outside hours, pending, customer first
TOKEN = "dQ9ORUWRe7ayQqMFQVk+PWEv0brY2tQzMOcyDG5DH5w="
CALLER_ID = "+902121234567"
START = 1_800_000_000.0  # Friday 2027-01-15 08:00 UTC: "office" opens in an hour
OFFICE = {"timezone": "UTC", **{d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}}
# A Turkish mobile, split as a form would send it (the trunk route takes "+90...").
TR = {"country_code": "90", "areacode": "532", "phonenumber": "1234567"}
TR_E164 = "+905321234567"


def _base_config(popups: list[dict[str, Any]], **formcall: Any) -> dict[str, Any]:
    return {
        "extensions": [{"number": "1001", "password": "x" * 12},
                       {"number": "1002", "password": "y" * 12}],
        "service_hours": {"office": OFFICE},
        "formcall": {"popups": popups, **formcall},
    }


def _popup(**over: Any) -> dict[str, Any]:
    return {"uuid": POPUP, "agents": "1001", "tokens": [TOKEN], **over}


# --------------------------------------------------------------------------- unit


def test_config_validation_names_the_key() -> None:
    ok = parse_config(_base_config([_popup(service_hours="office", pending=True)]))
    settings: Any = ok.frontends["formcall"]
    assert settings.popups[0].uuid == POPUP and settings.popups[0].pending
    assert settings.per_number.calls == 3  # spam limits are on by default
    bad: list[tuple[dict[str, Any], str]] = [
        (_popup(agents="1009"), "formcall.popups[0].agents"),
        (_popup(agents="1001;x"), "formcall.popups[0].agents"),
        (_popup(tokens=[]), "formcall.popups[0].tokens"),
        (_popup(service_hours="nope"), "formcall.popups[0].service_hours"),
        (_popup(service_hours={"mon": ["9-5"]}), "formcall.popups[0].service_hours"),
        (_popup(order="random"), "formcall.popups[0].order"),
        (_popup(caller_id="+90 212"), "formcall.popups[0].caller_id"),
        (_popup(countries=["XX"]), "formcall.popups[0].countries"),
        (_popup(bogus=1), "formcall.popups[0]"),
    ]
    for popup, key in bad:
        with pytest.raises(ConfigError) as err:
            parse_config(_base_config([popup]))
        assert err.value.key_path == key, (popup, err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(_base_config([_popup(), _popup()]))
    assert err.value.key_path == "formcall.popups[1].uuid"
    with pytest.raises(ConfigError) as err:
        parse_config(_base_config([_popup()], spam={"per_number": {"calls": 0}}))
    assert err.value.key_path == "formcall.spam.per_number.calls"


def test_customer_number_from_three_parts() -> None:
    assert customer_number("56", "9", "56311283") == ("+56956311283", "CL")  # vendor example
    assert customer_number("+90", "(532)", "123 45 67")[0] == TR_E164
    assert customer_number("1", "212", "5550123")[0] == "+12125550123"
    for cc in ("999", "0", "abc", ""):
        with pytest.raises(FormCallError) as err:
            customer_number(cc, "9", "56311283")
        assert err.value.code == 5, cc
    for area, number in (("9", "123"), ("9", "5631128x"), ("", "000000000")):
        with pytest.raises(FormCallError) as err:
            customer_number("56", area, number)
        assert err.value.code == 1, (area, number)
    with pytest.raises(FormCallError) as err:
        customer_number("56", "9", "56311283", ("TR",))
    assert err.value.code == 1


# --------------------------------------------------------------------------- HTTP helpers


def _http_extra(port: int, popups: list[dict[str, Any]], **formcall: Any) -> dict[str, Any]:
    return {"http": {"address": "127.0.0.1", "port": port, "enabled": True},
            "service_hours": {"office": OFFICE},
            "formcall": {"popups": popups, **formcall}}


def _request(popup: str = POPUP, token: str | None = TOKEN, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"popup_uuid": popup, **TR,
                            "adicional": {"Nombre": "Juan", "Email": "jperez@mt2015.com"}}
    if token is not None:
        body["security_token"] = token
    body.update(over)
    return body


async def _status(api: httpx.AsyncClient, ident: str, token: str = TOKEN) -> dict[str, Any]:
    r = await api.post("/calls/manage/status", json={"uuid": ident, "security_token": token})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _until_status(api: httpx.AsyncClient, ident: str, wanted: str,
                        timeout: float = 15.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[str] = []
    while True:
        st = await _status(api, ident)
        if not seen or seen[-1] != st.get("status"):
            seen.append(str(st.get("status")))
        if st.get("status") == wanted:
            return st
        if loop.time() > deadline:
            raise AssertionError(f"status never {wanted!r}; saw {seen}; last {st}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- error codes


@pytest.mark.timeout(60)
async def test_every_error_code_by_a_real_request(tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    popups = [
        _popup(caller_id=CALLER_ID),
        _popup(uuid=CLOSED, service_hours="office"),
        _popup(uuid=PENDING, service_hours="office", pending=True, order="customer-first"),
    ]
    extra = _http_extra(port, popups)
    # Only Turkish numbers have a route: a valid Chilean number cannot be originated (3).
    extra["routes"] = [{"pattern": "^\\+90", "trunk": "pstn"}]
    clock = VirtualClock(start=START)
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock) as sw, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
        async def code(body: Any = None, **kw: Any) -> int | None:
            r = await (api.post("/calls/manage/api", json=body) if body is not None
                       else api.post("/calls/manage/api", **kw))
            assert r.status_code == 200, r.text
            answer = r.json()
            if answer["success"]:
                return None
            assert set(answer) == {"success", "error_code", "error_msg"}, answer
            assert answer["error_msg"] == ERRORS[answer["error_code"]], answer
            return int(answer["error_code"])

        # 6 Wrong parameters: content type, malformed JSON, not an object, missing or
        # mistyped fields, bad adicional.
        assert await code(content=b'{"popup_uuid": 1}', headers={"Content-Type": "text/plain"}) == 6
        assert await code(content=b"{not json", headers={"Content-Type": "application/json"}) == 6
        assert await code([1, 2]) == 6
        assert await code({k: v for k, v in _request().items() if k != "phonenumber"}) == 6
        assert await code(_request(country_code=["56"])) == 6
        assert await code(_request(adicional=["x"])) == 6
        # 4 Popup not found (before the token: a token belongs to a popup).
        assert await code(_request(popup="no-such-popup", phonenumber="1")) == 4
        # 7 Security Token Missing, 8 Invalid Security Token (before the number is checked).
        assert await code(_request(token=None, country_code="999")) == 7
        assert await code(_request(token="", country_code="999")) == 7
        assert await code(_request(token="wrong", country_code="999")) == 8
        # 5 Country not found, then 1 Invalid phone number.
        assert await code(_request(country_code="999", phonenumber="1")) == 5
        assert await code(_request(phonenumber="12")) == 1
        # 2 Popup not in service hours (closed, not pending; the number is checked first).
        assert await code(_request(popup=CLOSED, phonenumber="12")) == 1
        assert await code(_request(popup=CLOSED)) == 2
        # 3 Call origination failed: a valid number with no route.
        assert await code(_request(country_code="56", areacode="9",
                                   phonenumber="56311283")) == 3
        assert not sw.of("initiated"), "nothing may be dialled for a refused request"
        # Pending: accepted, not dialled, resolvable by its uuid.
        r = await api.post("/calls/manage/api", json=_request(popup=PENDING))
        answer = r.json()
        assert answer["success"] is True and answer["pending"] is True, answer
        assert re.fullmatch(r"[0-9a-f]{32}", answer["uuid"]), answer
        st = await _status(api, answer["uuid"])
        assert st["success"] and st["status"] == "pending", st
        assert st["customer"]["number"] == TR_E164
        assert st["variables"] == {"Nombre": "Juan", "Email": "jperez@mt2015.com"}
        # Status errors: 7, 8, 11 (unknown uuid).
        r = await api.post("/calls/manage/status", json={"uuid": answer["uuid"]})
        assert r.json()["error_code"] == 7
        r = await api.post("/calls/manage/status",
                           json={"uuid": answer["uuid"], "security_token": "nope"})
        assert r.json()["error_code"] == 8
        r = await api.post("/calls/manage/status",
                           json={"uuid": "0" * 32, "security_token": TOKEN})
        assert r.json() == {"success": False, "error_code": 11, "error_msg": "Call not found"}
        assert not sw.of("initiated")
        no_switch_errors(sw)


@pytest.mark.timeout(60)
async def test_spam_limits_refuse_the_next_request(tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    popups = [_popup(service_hours="office", pending=True)]
    extra = _http_extra(port, popups, spam={"per_number": {"calls": 2, "seconds": 600},
                                            "per_popup": {"calls": 3, "seconds": 600}})
    clock = VirtualClock(start=START)
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock) as sw, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
        async def ask(number: str) -> dict[str, Any]:
            r = await api.post("/calls/manage/api", json=_request(phonenumber=number))
            assert r.status_code == 200
            return dict(r.json())

        assert (await ask("1234567"))["success"]
        assert (await ask("123 45 67"))["success"]  # the same number, written differently
        third = await ask("1234567")
        assert third == {"success": False, "error_code": 9,
                         "error_msg": "Too many calls to this phone number"}
        assert (await ask("7654321"))["success"]   # another number: the popup's 3rd call
        fourth = await ask("7654322")
        assert fourth == {"success": False, "error_code": 10,
                          "error_msg": "Too many calls for this popup"}
        # Refused requests are not counted; once the period has passed, calls are accepted.
        await clock.advance(601)
        assert (await ask("1234567"))["success"]
        jobs = await sw.sw.scheduler.list()
        assert len(jobs) == 4, jobs
        no_switch_errors(sw)


@pytest.mark.timeout(60)
async def test_popups_managed_through_the_native_api(tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    extra = _http_extra(port, [_popup()])
    extra["api"] = {"keys": [{"key": "key-default-0001", "tenant": "default"},
                             {"key": "key-other-0002", "tenant": "other"}]}
    new = "7d9b6c1e-3333-4a5b-8c7d-000000000003"
    clock = VirtualClock(start=START)
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock), \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
        admin = {"Authorization": "Bearer key-default-0001"}
        other = {"X-API-Key": "key-other-0002"}
        base = "/v1/formcall/popups"
        assert (await api.get(base)).status_code == 401
        r = await api.put(f"{base}/{new}", headers=admin, json={
            "agents": "1001", "tokens": ["t-new"], "service_hours": "office", "pending": True})
        assert r.status_code == 201, r.text
        assert r.json()["tokens"] == 1 and "t-new" not in r.text  # tokens are not shown
        r = await api.put(f"{base}/{new}", headers=admin, json={"agents": "1009",
                                                                "tokens": ["x"]})
        assert r.status_code == 400 and "popup.agents" in r.json()["error"]["message"], r.text
        listed = (await api.get(base, headers=admin)).json()["popups"]
        assert {p["uuid"] for p in listed} == {POPUP, new}
        assert (await api.get(base, headers=other)).json()["popups"] == []
        assert (await api.get(f"{base}/{new}", headers=other)).status_code == 404
        assert (await api.delete(f"{base}/{new}", headers=other)).status_code == 404
        # The new popup takes requests at once (closed now: left pending).
        r = await api.post("/calls/manage/api", json=_request(popup=new, token="t-new"))
        assert r.json()["success"] and r.json()["pending"], r.text
        assert (await api.delete(f"{base}/{new}", headers=admin)).status_code == 200
        r = await api.post("/calls/manage/api", json=_request(popup=new, token="t-new"))
        assert r.json()["error_code"] == 4, r.text


# --------------------------------------------------------------------------- with real peers


@needs_sipp
@needs_baresip
@pytest.mark.timeout(120)
async def test_agent_rings_first_then_customer_bridged_status_each_stage(
        tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    tone = audio.write_tone_wav(tmp_path / "tone.wav", 1000.0, 30.0)
    def ok(req: HttpRequest) -> tuple[int, Any]:
        return 200, {}

    async with TestHttpServer(ok) as hooks:
        popups = [_popup(caller_id=CALLER_ID, status_webhook=hooks.url("/formcall"))]
        extra = _http_extra(port, popups)
        async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, \
                sipp.RtpSink() as sink, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            uas = start_trunk(sw, tmp_path, sink, scenario="t_formcall_uas_ring")
            agent = baresip.BaresipInstance(
                tmp_path / "1001", user="1001", password=sw.passwords["1001"],
                registrar=sw.registrar, audio_source=tone, codecs=("PCMU",), record=False,
                answermode="manual")
            try:
                await uas.wait_ready()
                async with agent:
                    await registered(agent, sw)
                    r = await api.post("/calls/manage/api", json=_request())
                    answer = r.json()
                    assert answer.get("success") is True, answer
                    ident = answer["uuid"]
                    assert re.fullmatch(r"[0-9a-f]{32}", ident) and set(answer) == {
                        "success", "uuid"}, answer
                    # The agent rings first; the customer is not called yet.
                    ev = await agent.wait_event("CALL_INCOMING", timeout=15)
                    st = await _status(api, ident)
                    assert st["status"] == "ringing-agent", st
                    assert st["customer"]["leg_id"] is None, st
                    assert not [e for e in sw.events if e.name == "leg-initiated"
                                and e.data.get("destination") == TR_E164], sw.diag()
                    await agent.accept()
                    # On answer the customer is called (it rings 2 s), then they are bridged.
                    st = await _until_status(api, ident, "ringing-customer")
                    assert st["agent"]["outcome"] == "answered", st
                    st = await _until_status(api, ident, "connected")
                    assert st["customer"]["outcome"] == "answered", st
                    await sw.wait_event("bridged", timeout=10)
                    await sink.wait_for(25)  # the agent's audio reaches the customer
                    sw.sw.hangup(st["call_id"])
                    cdr = await sw.sw.wait_call(st["call_id"], timeout=10)
                    await agent.wait_event("CALL_CLOSED", timeout=10)
                    st = await _until_status(api, ident, "completed")
                uas_res = await uas.wait_async(10)
            finally:
                uas.stop()
            # The stored CDR still resolves the uuid once the call has left memory.
            sw.sw.recent_cdrs.clear()
            for _ in range(50):
                stored = await _status(api, ident)
                if stored.get("success"):
                    break
                await asyncio.sleep(0.1)
            await hooks.wait(4, timeout=15)
        hook_statuses = {req.json()["status"] for req in hooks.requests}
        hook_uuids = {req.json()["uuid"] for req in hooks.requests}
    assert ev["type"] == "CALL_INCOMING"
    assert uas_res.ok, uas_res.describe() + sw.diag()
    invite = uas_res.received("INVITE")[0]
    from_line = next(line for line in invite.splitlines() if line.lower().startswith("from:"))
    assert f"sip:{CALLER_ID}@" in from_line, invite
    assert TR_E164 in invite.splitlines()[0]
    assert st["outcome"] == "answered" and st["billsec"] > 0, st
    assert st["agent"]["destination"] == "1001"
    assert st["variables"] == {"Nombre": "Juan", "Email": "jperez@mt2015.com"}
    assert cdr["external_id"] == ident and cdr["frontend"] == "formcall"
    assert cdr["variables"]["Nombre"] == "Juan"
    assert stored["success"] and stored["status"] == "completed", stored
    assert {"ringing-agent", "ringing-customer", "connected", "completed"} <= hook_statuses
    assert hook_uuids == {ident}
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(90)
async def test_pending_outside_hours_placed_when_they_open(tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    popups = [_popup(uuid=PENDING, service_hours="office", pending=True,
                     order="customer-first", caller_id=CALLER_ID, agents="1002")]
    clock = VirtualClock(start=START)
    async with EmbeddedSwitch(tmp_path / "sw", extra=_http_extra(port, popups),
                              clock=clock) as sw, sipp.RtpSink() as sink, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
        uas = start_trunk(sw, tmp_path, sink)
        try:
            await uas.wait_ready()
            r = await api.post("/calls/manage/api", json=_request(popup=PENDING))
            answer = r.json()
            assert answer["success"] and answer["pending"], answer
            ident = answer["uuid"]
            await clock.advance(3599)
            await asyncio.sleep(0.5)
            assert not sw.of("initiated"), "placed before the hours opened"
            assert (await _status(api, ident))["status"] == "pending"
            await clock.advance(1)
            # Customer first: the trunk is called; agent 1002 is not registered, so the
            # second stage fails and the call ends.
            st = await _until_status(api, ident, "failed")
            for _ in range(100):  # bounded
                if "failed_leg" in st:  # the final view, from the call's CDR
                    break
                # "failed" is already reported while the caller still hears "unavailable"
                # (the live view), and about once in ten runs (before this stop too) a read
                # right after the job is done falls back to the job's own view.
                await asyncio.sleep(0.1)
                st = await _status(api, ident)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        job = await sw.sw.scheduler.get(ident)
    assert uas_res.ok, uas_res.describe() + sw.diag()
    invite = uas_res.received("INVITE")[0]
    from_line = next(line for line in invite.splitlines() if line.lower().startswith("from:"))
    assert f"sip:{CALLER_ID}@" in from_line, invite
    assert st["customer"]["outcome"] == "answered", st
    assert st["failed_leg"] == "agent" and st["outcome"] == "no-answer", st
    assert st["variables"]["Nombre"] == "Juan"
    assert job is not None and job["state"] == "done" and len(job["attempts"]) == 1, job
    no_switch_errors(sw)

