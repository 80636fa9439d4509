"""Infocaller call emission (``POST /`` with ``apiCALLjson`` / ``apiCALLxml``).

* The vendor document's own example requests (XML without its opening tag, lower-case
  elements, ``fecha`` + ``hora``, the ``<CustVar>`` typo; and as JSON) against a line with the
  document's id and password: accepted, the call reaches a SIPp UAS on the trunk, which hears
  the right prompt for ``ESTADO`` 1 and 2 (prompts told apart by their tone), and for 2 is
  bridged to the workshop (a second SIPp UAS behind a second trunk). "Click to Call" runs at
  its ``fecha``/``hora`` on a virtual clock and bridges the customer to CALLCENTER.
* Every result code from -100 to 14 through a real HTTP request, in JSON and in XML, with the
  document's exact texts.
* EsperaMax: with the line's one simultaneous call busy, a request waits and is placed when
  the call ends; one with a short EsperaMax is cancelled and its failed attempt stored.

The flows and the line come from configs/example.toml (what ships); the test only maps the two
built-in prompts they use to tones.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
from test_interop_media import EmbeddedSwitch

from switch.clock import VirtualClock
from switch.config import ConfigError, parse_config
from switch.frontends.infocaller import firma, frontend_of, parse_xml

try:
    from peers import audio, sipp
    from peers.ports import free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import audio, sipp
    from tests.peers.ports import free_udp_tcp_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "example.toml"

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)

LINE_ID, PASSWORD = "123456789", "3956"
FIRMA = "a2e12e9171fec3ebbb9c3c2a41b0b722"  # the document's worked example
WORKSHOP = "+34912345678"                   # the number the "Estado Reparación" flow dials
BEEP_HZ = 700.0          # "beep" (ESTADO 1's message) in these tests
CONNECTING_HZ = 1400.0   # "connecting" (ESTADO 2's message, Click to Call's speech)
CUSTOMER_HZ = 900.0
WORKSHOP_HZ = 500.0
MADRID = ZoneInfo("Europe/Madrid")

# The document's examples, verbatim (no opening <callRequest>, lower-case elements, fecha and
# hora, and "<CustVar>" where "</CustVar>" was meant).
DOC_ESTADO_XML = """<UserID>
<idinfocaller>123456789</idinfocaller>
<firma>a2e12e9171fec3ebbb9c3c2a41b0b722</firma></UserID>
<callData>
<numtelefono>34911888920</numtelefono>
<gruporeglas>Estado Reparación</gruporeglas>
<esperamax>30</esperamax>
<CustVars>
<CustVar>
<VarName>ESTADO</VarName>
<VarValue>2</VarValue>
</CustVar>
</CustVars>
</callData>
</callRequest>"""

DOC_CLICK_XML = """<UserID>
<idinfocaller>123456789</idinfocaller>
<firma>a2e12e9171fec3ebbb9c3c2a41b0b722</firma>
</UserID>
<callData>
<numtelefono>+34611222333</numtelefono>
<gruporeglas>Click to Call</gruporeglas>
<fecha>30/04/2015</fecha>
<hora>16:00:00</hora>
<esperamax>180</esperamax>
<reintentos>2</reintentos>
<CustVars>
<CustVar>
<VarName>CALLCENTER</VarName>
<VarValue>+34911888920</VarValue>
<CustVar>
</CustVars>
</callData>
</callRequest>"""

# The document's table, typed again here so a typo in the module shows.
TEXTS = {
    0: "Aceptada", -1: "Identificación no correcta", -2: "Identificación no indicada",
    -3: "Formato XML no correcto", -99: "No se recibe el parámetro XML", -100: "Error interno",
    1: "Firma no correcta", 2: "Línea infocaller no válida", 3: "Línea infocaller apagada",
    4: "Fecha/Hora no válida", 5: "Teléfono no válido", 6: "Valor Esperamax no válido",
    7: "Valor reintentos no válido", 8: "Grupo de reglas no existe o no es válido",
    9: "Regla de fin de llamada", 10: "Línea suspendida", 11: "Saldo insuficiente",
    12: "Límite de crédito excedido", 13: "Ninguna regla válida en grupo de reglas",
    14: "Excedido número máximo de emisión de llamadas. Contactar con Atención al Cliente.",
}


# --------------------------------------------------------------------------- helpers


def doc_config() -> dict[str, Any]:
    """What ships: [[infocaller.lines]] and the flows of their rule groups, from the example
    config."""
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    used = {flow for line in example["infocaller"]["lines"]
            for flow in line.get("rule_groups", {}).values()}
    flows = [f for f in example.get("flows", []) if f["name"] in used]
    return {"infocaller": example["infocaller"], "flows": flows}


def switch_extra(tmp_path: Path, http_port: int, *, lines: list[dict[str, Any]] | None = None,
                 flows: list[dict[str, Any]] | None = None,
                 trunks: list[dict[str, Any]] | None = None,
                 routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc = doc_config()
    beep = audio.write_tone_wav(tmp_path / "beep-700.wav", BEEP_HZ, 1.5)
    connecting = audio.write_tone_wav(tmp_path / "connecting-1400.wav", CONNECTING_HZ, 1.5)
    extra: dict[str, Any] = {
        "http": {"address": "127.0.0.1", "port": http_port, "enabled": True},
        "prompts": {"files": {"beep": str(beep), "connecting": str(connecting)}},
        "flows": doc["flows"] + (flows or []),
        "infocaller": {"lines": lines if lines is not None else doc["infocaller"]["lines"]},
    }
    if trunks is not None:
        extra["trunks"] = trunks
    if routes is not None:
        extra["routes"] = routes
    return extra


def trunk(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port}


def block_freqs(samples: np.ndarray[Any, Any]) -> list[float]:
    """The dominant frequency of every loud 20 ms block."""
    out: list[float] = []
    for i in range(len(samples) // 160):
        block = samples[i * 160:(i + 1) * 160]
        if float(np.sqrt(np.mean(block * block))) > 0.05:
            spectrum = np.abs(np.fft.rfft(block * np.hanning(160), 1600))
            out.append(float(np.argmax(spectrum)) * 8000 / 1600)
    return out


def near(freqs: list[float], hz: float) -> int:
    return sum(1 for f in freqs if abs(f - hz) < 40)


def answer_of(response: httpx.Response, as_xml: bool) -> tuple[str, str, str]:
    """(Resultado, ResultadoTexto, idcall) from a response, checking its format."""
    assert response.status_code == 200, response.text
    ctype = response.headers["content-type"]
    if as_xml:
        assert ctype.startswith("application/xml"), ctype
        root = ET.fromstring(response.content)
        assert root.tag == "callRequest"
        return (root.findtext("Resultado") or "", root.findtext("ResultadoTexto") or "",
                root.findtext("idcall") or "")
    assert ctype.startswith("application/json"), ctype
    body = response.json()["callRequest"]
    return body["Resultado"], body["ResultadoTexto"], body["idcall"]


def as_json(user: Mapping[str, str] | None, data: Mapping[str, Any] | None) -> str:
    doc: dict[str, Any] = {}
    if user is not None:
        doc["UserID"] = dict(user)
    if data is not None:
        call = {k: v for k, v in data.items() if k != "CustVars"}
        if "CustVars" in data:
            call["CustVars"] = {"CustVar": [{"VarName": n, "VarValue": v}
                                            for n, v in data["CustVars"]]}
        doc["callData"] = call
    return json.dumps({"callRequest": doc}, ensure_ascii=False)


def as_xml(user: Mapping[str, str] | None, data: Mapping[str, Any] | None) -> str:
    parts = ["<callRequest xmlns='http://tempuri.org/'>"]
    if user is not None:
        parts.append("<UserID>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in user.items())
                     + "</UserID>")
    if data is not None:
        parts.append("<callData>")
        for key, value in data.items():
            if key == "CustVars":
                parts.append("<CustVars>" + "".join(
                    f"<CustVar><VarName>{escape(n)}</VarName><VarValue>{escape(v)}</VarValue>"
                    "</CustVar>" for n, v in value) + "</CustVars>")
            else:
                parts.append(f"<{key}>{escape(str(value))}</{key}>")
        parts.append("</callData>")
    parts.append("</callRequest>")
    return "".join(parts)


async def post(client: httpx.AsyncClient, field: str, text: str) -> httpx.Response:
    return await client.post("/", data={field: text})


async def until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached: {what}")
        await asyncio.sleep(0.05)


def call_id_of(sw: EmbeddedSwitch, idcall: str) -> str | None:
    for call in sw.sw.b2bua.calls.values():
        if call.tags.get("external_id") == idcall:
            return call.id
    for cdr in sw.sw.recent_cdrs.values():
        if cdr.get("external_id") == idcall:
            return str(cdr["call_id"])
    return None


async def wait_call_of(sw: EmbeddedSwitch, idcall: str) -> str:
    await until(lambda: call_id_of(sw, idcall) is not None, what=f"a call for {idcall}")
    call_id = call_id_of(sw, idcall)
    assert call_id is not None
    return call_id


# --------------------------------------------------------------------------- unit-level


def test_firma_is_the_documented_md5() -> None:
    assert firma(LINE_ID, PASSWORD) == FIRMA


def test_document_xml_examples_parse_and_broken_xml_does_not() -> None:
    estado = parse_xml(DOC_ESTADO_XML)["callrequest"]
    assert estado["userid"] == {"idinfocaller": LINE_ID, "firma": FIRMA}
    assert estado["calldata"]["esperamax"] == "30"
    assert estado["calldata"]["custvars"]["custvar"] == {"varname": "ESTADO", "varvalue": "2"}
    click = parse_xml(DOC_CLICK_XML)["callrequest"]["calldata"]
    assert (click["fecha"], click["hora"], click["reintentos"]) == ("30/04/2015", "16:00:00", "2")
    assert click["custvars"]["custvar"] == {"varname": "CALLCENTER", "varvalue": "+34911888920"}
    # Mismatched case between the opening and closing tag is accepted too.
    assert parse_xml("<callRequest><EsperaMax>1</esperamax></callRequest>") == {
        "callrequest": {"esperamax": "1"}}


def test_config_errors_name_the_key() -> None:
    doc = doc_config()
    base = {"flows": doc["flows"]}
    bad_lines: list[tuple[dict[str, Any], str]] = [
        ({"id": "12a", "password": "x", "country": "ES"}, "infocaller.lines[0].id"),
        ({"id": "1", "password": "x", "country": "XX"}, "infocaller.lines[0].country"),
        ({"id": "1", "password": "x", "country": "ES", "state": "maybe"},
         "infocaller.lines[0].state"),
        ({"id": "1", "password": "x", "country": "ES", "rule_groups": {"A": "no-such-flow"}},
         "infocaller.lines[0].rule_groups.A"),
        ({"id": "1", "password": "x", "country": "ES", "max_simultaneous": 0},
         "infocaller.lines[0].max_simultaneous"),
        ({"id": "1", "password": "x", "country": "ES", "colour": "red"},
         "infocaller.lines[0].colour"),
    ]
    for line, where in bad_lines:
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "infocaller": {"lines": [line]}})
        assert err.value.key_path == where, (line, str(err.value))


# --------------------------------------------------------------------------- every code


async def test_every_result_code_in_json_and_xml(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock(start=datetime(2026, 3, 10, 11, 0, tzinfo=MADRID).timestamp())
    http_port = free_udp_tcp_port()
    groups = {"Estado Reparación": "estado-reparacion", "Click to Call": "click-to-call",
              "Fin": "fin", "Nada": "nada"}
    line = {"id": LINE_ID, "password": PASSWORD, "country": "ES", "rule_groups": groups}
    lines = [
        line,
        {"id": "200", "password": "p2", "country": "ES", "state": "off"},
        {"id": "300", "password": "p3", "country": "ES", "state": "suspended"},
        {"id": "400", "password": "p4", "country": "ES", "balance_seconds": 0,
         "rule_groups": groups},
        {"id": "500", "password": "p5", "country": "ES", "balance_seconds": -100,
         "credit_limit_seconds": 50, "rule_groups": groups},
        {"id": "600", "password": "p6", "country": "ES", "daily_limit": 1, "rule_groups": groups},
    ]
    flows = [{"name": "fin", "steps": [{"action": "hangup"}]},
             {"name": "nada", "steps": [{"action": "pause", "seconds": 1},
                                        {"action": "hangup"}]}]
    tomorrow = (datetime.fromtimestamp(clock.now(), MADRID) + timedelta(days=1)).strftime(
        "%Y-%m-%dT%H:%M:%S")

    def user(line_id: str = LINE_ID, password: str = PASSWORD) -> dict[str, str]:
        return {"idinfocaller": line_id, "firma": firma(line_id, password)}

    def data(**over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"numtelefono": "+34611222333", "gruporeglas": "Click to Call",
                                "fechahora": tomorrow,
                                "CustVars": [("CALLCENTER", "+34911888920")]}
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    # code -> (user, callData) or a raw document
    cases: dict[int, Any] = {
        -2: (None, data()),
        -1: ({"idinfocaller": "abc", "firma": FIRMA}, data()),
        1: ({"idinfocaller": LINE_ID, "firma": "0" * 32}, data()),
        2: (user("999"), data()),
        3: (user("200", "p2"), data()),
        10: (user("300", "p3"), data()),
        4: (user(), data(fechahora="2026-13-45T99:00:00")),
        5: (user(), data(numtelefono="12")),
        6: (user(), data(EsperaMax="301")),
        7: (user(), data(Reintentos="5")),
        8: (user(), data(gruporeglas="No existe")),
        9: (user(), data(gruporeglas="Fin")),
        13: (user(), data(gruporeglas="Nada")),
        11: (user("400", "p4"), data()),
        12: (user("500", "p5"), data()),
        14: (user("600", "p6"), data()),
        0: (user(), data()),
    }
    extra = switch_extra(tmp_path, http_port, lines=lines, flows=flows)
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock) as sw, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as client:
        # Line 600 may accept one request a day: spend it.
        first = await post(client, "apiCALLjson", as_json(user("600", "p6"), data()))
        assert answer_of(first, False)[0] == "0"
        seen: dict[tuple[int, str], tuple[str, str, str]] = {}
        for fmt, field, build in (("json", "apiCALLjson", as_json), ("xml", "apiCALLxml", as_xml)):
            xml = fmt == "xml"
            for code, (u, d) in cases.items():
                seen[(code, fmt)] = answer_of(await post(client, field, build(u, d)), xml)
            broken = "{\"callRequest\": {" if not xml else "<callRequest><UserID></callRequest>"
            seen[(-3, fmt)] = answer_of(await post(client, field, broken), xml)
            seen[(-99, fmt)] = answer_of(await post(client, field, ""), xml)

            async def boom(*args: Any, **kwargs: Any) -> str:
                raise RuntimeError("store down")

            with monkeypatch.context() as m:
                m.setattr(sw.sw.scheduler, "schedule", boom)
                seen[(-100, fmt)] = answer_of(await post(client, field, build(user(), data())),
                                              xml)
        # No field at all: XML, unless the client asks for JSON.
        none_xml = answer_of(await client.post("/", data={"other": "x"}), True)
        none_json = answer_of(await client.post("/", data={"other": "x"},
                                                headers={"Accept": "application/json"}), False)
        # multipart/form-data works like a urlencoded form.
        multipart = answer_of(await client.post(
            "/", files={"apiCALLjson": (None, as_json(user(), data()))}), False)
        jobs = await sw.sw.scheduler.list()
        # A DTD is refused, not expanded.
        dtd = answer_of(await post(client, "apiCALLxml",
                                   "<!DOCTYPE x [<!ENTITY a 'b'>]><callRequest>&a;</callRequest>"),
                        True)
    for code, text in TEXTS.items():
        for fmt in ("json", "xml"):
            got = seen[(code, fmt)]
            assert got[:2] == (str(code), text), (code, fmt, got)
            assert bool(got[2]) == (code == 0), (code, fmt, got)
    assert none_xml[0] == none_json[0] == "-99"
    assert dtd[0] == "-3"
    assert multipart[0] == "0" and multipart[2]
    # Accepted requests are durable jobs whose id is the idcall, due tomorrow.
    accepted = {seen[(0, "json")][2], seen[(0, "xml")][2]}
    assert accepted <= {job["id"] for job in jobs}
    for job in jobs:
        if job["id"] in accepted:
            assert job["request"]["flow"] == "click-to-call"
            assert job["request"]["tags"]["external_id"] == job["id"]
            assert job["request"]["variables"] == {"CALLCENTER": "+34911888920"}
            assert job["due_at"] == pytest.approx(clock.now() + 86400)


# --------------------------------------------------------------------------- calls


@needs_sipp
@pytest.mark.timeout(90)
async def test_estado_1_plays_its_message_and_hangs_up(tmp_path: Path) -> None:
    http_port, pstn = free_udp_tcp_port(), free_udp_tcp_port()
    extra = switch_extra(tmp_path, http_port, trunks=[trunk("pstn", pstn)],
                         routes=[{"pattern": "^\\+", "trunk": "pstn"}])
    # The document's request as JSON, keys in any case, ESTADO 1, numtelefono without "+".
    body = json.dumps({"callRequest": {
        "UserID": {"idinfocaller": LINE_ID, "firma": FIRMA},
        "callData": {"numtelefono": "34911888920", "gruporeglas": "Estado Reparación",
                     "esperamax": 30,
                     "CustVars": {"CustVar": {"VarName": "ESTADO", "VarValue": "1"}}}}},
        ensure_ascii=False)
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, sipp.RtpSink() as customer, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as client:
        uas = sipp.start("uas_answer", local_port=pstn, keys={"rtpport": customer.port},
                         workdir=tmp_path / "uas")
        try:
            await uas.wait_ready()
            code, text, idcall = answer_of(await post(client, "apiCALLjson", body), False)
            assert (code, text) == ("0", "Aceptada")
            call_id = await wait_call_of(sw, idcall)
            cdr = await sw.sw.wait_call(call_id, timeout=30)
            uas_res = await uas.wait_async(15)
        finally:
            uas.stop()
    assert uas_res.ok, uas_res.describe() + sw.diag()
    invite = uas_res.received("INVITE")[0]
    assert "+34911888920" in invite.splitlines()[0]
    freqs = block_freqs(customer.audio())
    assert near(freqs, BEEP_HZ) >= 40, freqs      # ~1.5 s of ESTADO 1's message
    assert near(freqs, CONNECTING_HZ) == 0, freqs  # not ESTADO 2's
    assert cdr["outcome"] == "answered" and cdr["external_id"] == idcall
    assert cdr["frontend"] == "infocaller" and cdr["tenant"] == f"infocaller:{LINE_ID}"
    assert len(cdr["legs"]) == 1
    assert cdr["variables"]["ESTADO"] == "1"


@needs_sipp
@pytest.mark.timeout(120)
async def test_document_xml_estado_2_transfers_to_the_workshop(tmp_path: Path) -> None:
    http_port, pstn, taller = (free_udp_tcp_port() for _ in range(3))
    extra = switch_extra(
        tmp_path, http_port, trunks=[trunk("pstn", pstn), trunk("taller", taller)],
        routes=[{"pattern": f"^\\{WORKSHOP}$", "trunk": "taller"},
                {"pattern": "^\\+", "trunk": "pstn"}])
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, \
            sipp.RtpSink() as customer, sipp.RtpSink() as workshop, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as client:
        uas = sipp.start("uas_answer", local_port=pstn, keys={"rtpport": customer.port},
                         workdir=tmp_path / "uas")
        shop = sipp.start("uas_answer", local_port=taller, keys={"rtpport": workshop.port},
                          workdir=tmp_path / "shop")
        try:
            await uas.wait_ready()
            await shop.wait_ready()
            code, text, idcall = answer_of(await post(client, "apiCALLxml", DOC_ESTADO_XML),
                                           True)
            assert (code, text) == ("0", "Aceptada"), sw.diag()
            call_id = await wait_call_of(sw, idcall)
            await sw.wait_event("bridged", timeout=20)
            prompt_heard = block_freqs(customer.audio())
            await customer.send_tone(CUSTOMER_HZ, 1.0)
            await workshop.wait_for(25, timeout=10)
            await workshop.send_tone(WORKSHOP_HZ, 1.0)
            await asyncio.sleep(0.5)
            sw.sw.hangup(call_id)
            cdr = await sw.sw.wait_call(call_id, timeout=15)
            uas_res = await uas.wait_async(15)
            shop_res = await shop.wait_async(15)
        finally:
            uas.stop()
            shop.stop()
        account = frontend_of(sw.sw)
        assert account is not None
        balance = account.accounts[LINE_ID].balance
    assert uas_res.ok and shop_res.ok, uas_res.describe() + shop_res.describe() + sw.diag()
    assert "+34911888920" in uas_res.received("INVITE")[0].splitlines()[0]
    assert WORKSHOP in shop_res.received("INVITE")[0].splitlines()[0]
    # ESTADO 2's message, then the workshop's voice; never ESTADO 1's message.
    assert near(prompt_heard, CONNECTING_HZ) >= 40, prompt_heard
    heard = block_freqs(customer.audio())
    assert near(heard, BEEP_HZ) == 0
    assert near(heard, WORKSHOP_HZ) >= 20, heard
    assert near(block_freqs(workshop.audio()), CUSTOMER_HZ) >= 20
    legs = cdr["legs"]
    assert len(legs) == 2 and all(leg["outcome"] == "answered" for leg in legs), cdr
    assert cdr["external_id"] == idcall and cdr["billsec"] > 1
    # The line's balance (36000 s in the example config) paid the billable seconds.
    assert balance == 36000 - int(np.ceil(cdr["billsec"]))


@needs_sipp
@pytest.mark.timeout(120)
async def test_document_click_to_call_runs_at_fecha_hora(tmp_path: Path) -> None:
    start = datetime(2015, 4, 30, 15, 59, 0, tzinfo=MADRID).timestamp()
    clock = VirtualClock(start=start)
    http_port, pstn, center = (free_udp_tcp_port() for _ in range(3))
    extra = switch_extra(
        tmp_path, http_port, trunks=[trunk("pstn", pstn), trunk("center", center)],
        routes=[{"pattern": "^\\+34911888920$", "trunk": "center"},
                {"pattern": "^\\+", "trunk": "pstn"}])
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock) as sw, \
            sipp.RtpSink() as customer, sipp.RtpSink() as agent, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as client:
        uas = sipp.start("uas_answer", local_port=pstn, keys={"rtpport": customer.port},
                         workdir=tmp_path / "uas")
        desk = sipp.start("uas_answer", local_port=center, keys={"rtpport": agent.port},
                          workdir=tmp_path / "center")
        try:
            await uas.wait_ready()
            await desk.wait_ready()
            code, text, idcall = answer_of(await post(client, "apiCALLxml", DOC_CLICK_XML),
                                           True)
            assert (code, text) == ("0", "Aceptada"), sw.diag()
            job = await sw.sw.scheduler.get(idcall)
            assert job is not None and job["due_at"] == pytest.approx(start + 60)
            assert job["retry"]["busy"] == {"count": 2, "interval": 300}
            await clock.advance(59)
            await asyncio.sleep(0.3)
            assert not sw.of("initiated"), "placed before 16:00"
            await clock.advance(1)
            call_id = await wait_call_of(sw, idcall)
            await sw.wait_event("bridged", timeout=20)
            speech = block_freqs(customer.audio())
            await customer.send_tone(CUSTOMER_HZ, 1.0)
            await agent.wait_for(25, timeout=10)
            sw.sw.hangup(call_id)
            cdr = await sw.sw.wait_call(call_id, timeout=15)
            uas_res = await uas.wait_async(15)
            desk_res = await desk.wait_async(15)
        finally:
            uas.stop()
            desk.stop()
        job = await sw.sw.scheduler.get(idcall)
    assert uas_res.ok and desk_res.ok, uas_res.describe() + desk_res.describe() + sw.diag()
    assert "+34611222333" in uas_res.received("INVITE")[0].splitlines()[0]
    assert "+34911888920" in desk_res.received("INVITE")[0].splitlines()[0]
    assert near(speech, CONNECTING_HZ) >= 40, speech
    assert near(block_freqs(agent.audio()), CUSTOMER_HZ) >= 20
    assert len(cdr["legs"]) == 2 and all(leg["outcome"] == "answered" for leg in cdr["legs"])
    assert job is not None and [a["outcome"] for a in job["attempts"]] == ["answered"]


@needs_sipp
@pytest.mark.timeout(120)
async def test_esperamax_waits_for_a_free_line_or_gives_up(tmp_path: Path) -> None:
    clock = VirtualClock(start=datetime(2026, 3, 10, 11, 0, tzinfo=MADRID).timestamp())
    http_port, pstn = free_udp_tcp_port(), free_udp_tcp_port()
    line = dict(doc_config()["infocaller"]["lines"][0])
    line["max_simultaneous"] = 1
    line["rule_groups"] = {"Espera": "espera"}
    flows = [{"name": "espera", "steps": [{"action": "play", "prompt": "connecting"},
                                          {"action": "pause", "seconds": 60},
                                          {"action": "hangup"}]}]
    extra = switch_extra(tmp_path, http_port, lines=[line], flows=flows,
                         trunks=[trunk("pstn", pstn)], routes=[{"pattern": "^\\+",
                                                                "trunk": "pstn"}])

    def request(number: str, wait: str | None) -> str:
        data = {"numtelefono": number, "gruporeglas": "Espera"}
        if wait is not None:
            data["EsperaMax"] = wait
        return as_json({"idinfocaller": LINE_ID, "firma": FIRMA}, data)

    async with EmbeddedSwitch(tmp_path / "sw", extra=extra, clock=clock) as sw, \
            sipp.RtpSink() as customer, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as client:
        uas = sipp.start("uas_answer", local_port=pstn, keys={"rtpport": customer.port},
                         calls=2, workdir=tmp_path / "uas")
        try:
            await uas.wait_ready()
            first = answer_of(await post(client, "apiCALLjson",
                                         request("+34611222333", None)), False)
            first_call = await wait_call_of(sw, first[2])
            await sw.wait_event("answered", predicate=lambda e: e.call_id == first_call,
                                timeout=15)
            # The line's one simultaneous call is busy: both requests queue.
            short = answer_of(await post(client, "apiCALLjson",
                                         request("+34611222334", "1")), False)
            patient = answer_of(await post(client, "apiCALLjson",
                                           request("+34611222335", "5")), False)
            assert short[0] == patient[0] == "0"
            await asyncio.sleep(0.5)
            assert len(sw.of("leg-initiated")) == 1, sw.diag()
            # A minute passes: the short one gives up; the patient one still waits.
            await clock.advance(61)
            short_call = await wait_call_of(sw, short[2])
            short_cdr = await sw.sw.wait_call(short_call, timeout=10)
            assert len(sw.of("leg-initiated")) == 1, sw.diag()
            # The first call ends: the waiting request is placed.
            sw.sw.hangup(first_call)
            patient_call = await wait_call_of(sw, patient[2])
            await sw.wait_event("answered", predicate=lambda e: e.call_id == patient_call,
                                timeout=15)
            sw.sw.hangup(patient_call)
            patient_cdr = await sw.sw.wait_call(patient_call, timeout=10)
            uas_res = await uas.wait_async(15)
            stored: list[dict[str, Any]] = []
            for _ in range(50):
                stored = await sw.sw.store.list_cdrs(external_id=short[2])
                if stored:
                    break
                await asyncio.sleep(0.1)
        finally:
            uas.stop()
    assert uas_res.ok, uas_res.describe() + sw.diag()
    invites = [m.splitlines()[0] for m in uas_res.received("INVITE")]
    assert len(invites) == 2 and "+34611222335" in invites[1], invites
    assert short_cdr["outcome"] == "failed" and short_cdr["failure"] == "limit timeout"
    assert stored and stored[0]["outcome"] == "failed", stored
    assert stored[0]["failure"] == "limit timeout"
    assert patient_cdr["outcome"] == "answered"
    ended = next(e.seq for e in sw.of("completed") if e.call_id == first_call)
    placed = next(e.seq for e in sw.of("leg-initiated") if e.call_id == patient_call)
    assert ended < placed


async def test_balance_survives_a_restart(tmp_path: Path) -> None:
    """The calls in the store are charged against the configured balance at start."""
    line = dict(doc_config()["infocaller"]["lines"][0])
    tenant = f"infocaller:{line['id']}"
    extra = switch_extra(tmp_path, free_udp_tcp_port())
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw:
        front = frontend_of(sw.sw)
        assert front is not None
        start = front.accounts[line["id"]].balance
        assert start == line["balance_seconds"]
        for i, billsec in enumerate((61.2, 30.0)):  # charged rounded up: 62 + 30
            cdr = {"call_id": f"c{i}", "tenant": tenant, "frontend": "infocaller",
                   "started_at": 1.0 + i, "ended_at": 100.0 + i, "billsec": billsec,
                   "outcome": "answered", "legs": [], "variables": {}}
            front.on_cdr(cdr)
            await sw.sw.store.add_cdr(cdr)
        before = front.accounts[line["id"]].balance
        assert before == start - 92
    extra = switch_extra(tmp_path, free_udp_tcp_port())
    extra["store"] = {"url": sw.config.store.url}
    async with EmbeddedSwitch(tmp_path / "sw2", extra=extra) as sw2:
        front2 = frontend_of(sw2.sw)
        assert front2 is not None
        assert front2.accounts[line["id"]].balance == before
