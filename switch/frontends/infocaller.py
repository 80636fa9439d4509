"""Infocaller call emission: ``POST /`` with a form field ``apiCALLjson`` or ``apiCALLxml``.

A client asks the switch to call ``numtelefono`` and run a *rule group* on the answered call.
Each rule group of an Infocaller *line* is a call flow from ``[[flows]]``; the request's
``CustVars`` become the flow's variables. The answer is a small JSON or XML document (matching
the request) with ``idcall``, ``Resultado`` and ``ResultadoTexto``, always with HTTP 200, using
exactly the vendor's result codes (:data:`RESULTS`).

Per line (``[infocaller] lines``): the service number and password (``firma`` =
MD5(number + password), compared in constant time), a country for numbers without one, a
state (``on`` / ``off`` / ``suspended``), the maximum of simultaneous calls (a limiter keyed
by the line's own tenant, so a request waits up to ``EsperaMax`` minutes for a free line), a
prepaid balance and a credit limit in call seconds (decremented by each call's billable
seconds; calls stored in the CDRs are charged again at start, so a restart keeps it), a daily
emission limit (in memory), and the rule groups.

Calls without ``fechahora`` and without ``Reintentos`` are originated at once; the others go
through the durable scheduler (at ``fechahora``, retried on busy at least 5 minutes apart).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import unicodedata
import uuid
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# No stubs ship with defusedxml (types-defusedxml would provide them).
import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
import phonenumbers
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.responses import Response

from switch.config import Config, ConfigError
from switch.control import DestinationError
from switch.flows import (
    BranchStep,
    DialStep,
    Flow,
    GatherStep,
    GotoStep,
    HangupStep,
    HttpStep,
    PlayStep,
    SetStep,
    Step,
)
from switch.routing import to_e164
from switch.scheduler import RetryPolicy

if TYPE_CHECKING:
    from switch.app import Switch

__all__ = [
    "RESULTS",
    "InfocallerError",
    "InfocallerFrontend",
    "InfocallerSettings",
    "Line",
    "firma",
    "frontend_of",
    "install",
    "parse",
    "parse_request",
]

log = logging.getLogger(__name__)

NAME = "infocaller"

#: The vendor's result codes and texts, verbatim.
RESULTS: Mapping[int, str] = {
    0: "Aceptada",
    -1: "Identificación no correcta",
    -2: "Identificación no indicada",
    -3: "Formato XML no correcto",
    -99: "No se recibe el parámetro XML",
    -100: "Error interno",
    1: "Firma no correcta",
    2: "Línea infocaller no válida",
    3: "Línea infocaller apagada",
    4: "Fecha/Hora no válida",
    5: "Teléfono no válido",
    6: "Valor Esperamax no válido",
    7: "Valor reintentos no válido",
    8: "Grupo de reglas no existe o no es válido",
    9: "Regla de fin de llamada",
    10: "Línea suspendida",
    11: "Saldo insuficiente",
    12: "Límite de crédito excedido",
    13: "Ninguna regla válida en grupo de reglas",
    14: "Excedido número máximo de emisión de llamadas. Contactar con Atención al Cliente.",
}

_STATES = ("on", "off", "suspended")
_LINE_ID = re.compile(r"^[0-9]{1,20}$")
_MAX_BODY = 256 * 1024
_MAX_VARS = 100
_MAX_VAR_NAME = 64
_MAX_VAR_VALUE = 1024
_RETRY_INTERVAL = 300  # the document: retries at least 5 minutes apart
_DEFAULT_WAIT_MIN = 5
_MAX_WAIT_MIN = 300
_MAX_RETRIES = 4
_MAX_AHEAD = timedelta(days=366)
# A tag name at the start of an element (opening or closing); lower-cased so that clients'
# <esperamax>/<EsperaMax> and mismatched case between open and close tags both parse.
_TAG = re.compile(r"<(/?)([A-Za-z_][A-Za-z0-9_.:-]*)")
_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
# The document's own click-to-call example writes <CustVar> where </CustVar> is meant, right
# before </CustVars>: an empty element there carries nothing, so it can only be that typo.
_CUSTVAR_TYPO = re.compile(r"<custvar>(\s*)</custvars>")
_FECHAHORA = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{2})(?::(\d{2}))?$", re.IGNORECASE)
_FECHA = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_HORA = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_PHONE_JUNK = re.compile(r"[\s().-]")


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class Line:
    """One Infocaller line (service number) from ``[infocaller] lines``."""

    id: str
    password: str
    country: str
    state: str = "on"
    max_simultaneous: int = 1
    balance_seconds: int | None = None  # None: no balance control (post-paid)
    credit_limit_seconds: int = 0
    daily_limit: int | None = None  # None: no daily limit
    tenant: str = ""
    timezone: str = "Europe/Madrid"
    caller_id: str | None = None
    rule_groups: Mapping[str, str] = field(default_factory=dict)

    def flow_for(self, group: str) -> str | None:
        """The flow of a rule group, matched exactly or ignoring case, accents and spaces."""
        if group in self.rule_groups:
            return self.rule_groups[group]
        wanted = _fold(group)
        for name, flow in self.rule_groups.items():
            if _fold(name) == wanted:
                return flow
        return None


@dataclass(frozen=True, slots=True)
class InfocallerSettings:
    """The validated ``[infocaller]`` section."""

    lines: tuple[Line, ...]

    def line(self, line_id: str) -> Line | None:
        """The line with this service number."""
        return next((ln for ln in self.lines if ln.id == line_id), None)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def _int(value: object, where: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(where, f"must be {bound}, not {value}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, "must be a non-empty string")
    return value.strip()


_LINE_KEYS = frozenset({
    "id", "password", "country", "state", "max_simultaneous", "balance_seconds",
    "credit_limit_seconds", "daily_limit", "tenant", "timezone", "caller_id", "rule_groups",
})


def _parse_line(raw: object, where: str, flows: set[str]) -> Line:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a table")
    unknown = sorted(str(k) for k in raw if k not in _LINE_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "unknown key")
    for key in ("id", "password", "country"):
        if key not in raw:
            raise ConfigError(f"{where}.{key}", "missing")
    line_id = _str(raw["id"], f"{where}.id")
    if not _LINE_ID.match(line_id):
        raise ConfigError(f"{where}.id", "must be the service number: digits with country code")
    password = _str(raw["password"], f"{where}.password")
    country = _str(raw["country"], f"{where}.country").upper()
    if phonenumbers.country_code_for_region(country) == 0:
        raise ConfigError(f"{where}.country", f"not an ISO 3166-1 region: {country!r}")
    state = raw.get("state", "on")
    if state not in _STATES:
        raise ConfigError(f"{where}.state", "must be on, off or suspended")
    max_sim = _int(raw.get("max_simultaneous", 1), f"{where}.max_simultaneous", low=1,
                   high=10_000)
    balance_raw = raw.get("balance_seconds")
    balance = None if balance_raw is None else _int(
        balance_raw, f"{where}.balance_seconds", low=-(10**12))
    credit = _int(raw.get("credit_limit_seconds", 0), f"{where}.credit_limit_seconds", low=0)
    daily_raw = raw.get("daily_limit")
    daily = None if daily_raw is None else _int(daily_raw, f"{where}.daily_limit", low=1)
    tenant = _str(raw.get("tenant", f"infocaller:{line_id}"), f"{where}.tenant")
    tz = _str(raw.get("timezone", "Europe/Madrid"), f"{where}.timezone")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}.timezone", f"unknown time zone {tz!r}") from None
    caller_id = raw.get("caller_id", line_id)
    if caller_id is not None and (not isinstance(caller_id, str)
                                  or not re.fullmatch(r"\+?[0-9]{1,32}", caller_id)):
        raise ConfigError(f"{where}.caller_id", "must be digits with an optional '+'")
    groups_raw = raw.get("rule_groups", {})
    if not isinstance(groups_raw, Mapping):
        raise ConfigError(f"{where}.rule_groups", "must be a table of rule group = flow name")
    groups: dict[str, str] = {}
    for name, flow in groups_raw.items():
        key = f"{where}.rule_groups.{name}"
        if not str(name).strip():
            raise ConfigError(key, "a rule group needs a name")
        if not isinstance(flow, str) or flow not in flows:
            raise ConfigError(key, f"no [[flows]] named {flow!r}")
        groups[str(name).strip()] = flow
    return Line(id=line_id, password=password, country=country, state=state,
                max_simultaneous=max_sim, balance_seconds=balance, credit_limit_seconds=credit,
                daily_limit=daily, tenant=tenant, timezone=tz, caller_id=caller_id,
                rule_groups=groups)


def parse(raw: Mapping[str, Any], config: Config) -> InfocallerSettings:
    """Validate ``[infocaller]`` (raises :class:`ConfigError` with the key path)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(NAME, "must be a table")
    unknown = sorted(str(k) for k in raw if k != "lines")
    if unknown:
        raise ConfigError(f"{NAME}.{unknown[0]}", "unknown key")
    lines_raw = raw.get("lines", [])
    if not isinstance(lines_raw, list):
        raise ConfigError(f"{NAME}.lines", "must be an array of tables")
    flows = {str(f.get("name")) for f in config.flows}
    lines: list[Line] = []
    for index, item in enumerate(lines_raw):
        where = f"{NAME}.lines[{index}]"
        line = _parse_line(item, where, flows)
        if any(other.id == line.id for other in lines):
            raise ConfigError(f"{where}.id", f"duplicate line {line.id}")
        if any(other.tenant == line.tenant for other in lines):
            raise ConfigError(f"{where}.tenant", "each line needs its own tenant (its limits)")
        if f"tenant:{line.tenant}" in config.limits:
            raise ConfigError(f"{where}.tenant",
                              f"[limits] already limits tenant:{line.tenant}; the line's "
                              "max_simultaneous sets that limit")
        lines.append(line)
    return InfocallerSettings(tuple(lines))


# ------------------------------------------------------------------------------ requests


class InfocallerError(Exception):
    """A request answered with a non-zero result code."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{code} {RESULTS[code]}" + (f": {detail}" if detail else ""))
        self.code = code
        self.detail = detail


def firma(line_id: str, password: str) -> str:
    """The signature a client sends: MD5(service number + line password), lower-case hex."""
    return hashlib.md5((line_id + password).encode("utf-8"), usedforsecurity=False).hexdigest()


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).strip().lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def _element_value(element: ET.Element) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        tag = child.tag.rsplit("}", 1)[-1].lower()
        value = _element_value(child)
        if tag in out:
            previous = out[tag]
            out[tag] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[tag] = value
    return out


def _parse_xml_text(text: str) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(text)
    except DefusedXmlException:
        raise InfocallerError(-3, "DTDs and entities are not accepted") from None
    return root


def parse_xml(text: str) -> dict[str, Any]:
    """Parse an ``apiCALLxml`` document leniently into lower-case keyed dicts.

    Element names are matched case-insensitively (and namespaces dropped); a missing
    ``<callRequest>`` wrapper is supplied when the content is otherwise well formed; the
    document's ``<CustVar>`` typo before ``</CustVars>`` is read as ``</CustVar>``. XML that
    still does not parse (or uses a DTD or entities) raises :class:`InfocallerError` -3.
    """
    normalized = _TAG.sub(lambda m: f"<{m.group(1)}{m.group(2).lower()}", text.strip())
    candidates = [normalized]
    decl_match = _DECL.match(normalized)
    decl = decl_match.group(0) if decl_match else ""
    body = normalized[len(decl):].strip()
    repaired = _CUSTVAR_TYPO.sub(r"</custvar>\1</custvars>", body)
    opens = re.match(r"<callrequest[\s>]", repaired) is not None
    closes = repaired.endswith("</callrequest>")
    if not opens and closes:
        repaired = "<callrequest>" + repaired
    elif not opens and not closes:
        repaired = "<callrequest>" + repaired + "</callrequest>"
    elif opens and not closes:
        repaired = repaired + "</callrequest>"
    candidates.append(decl + repaired)
    root: ET.Element | None = None
    for candidate in candidates:
        try:
            root = _parse_xml_text(candidate)
            break
        except ET.ParseError:
            continue
    if root is None:
        raise InfocallerError(-3, "not well-formed XML")
    tag = root.tag.rsplit("}", 1)[-1].lower()
    try:
        value = _element_value(root)
    except RecursionError:
        raise InfocallerError(-3, "nested too deeply") from None
    return {tag: value}


def parse_json(text: str) -> dict[str, Any]:
    """Parse an ``apiCALLjson`` document into lower-case keyed dicts (-3 when not JSON)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InfocallerError(-3, "not valid JSON") from None
    if not isinstance(data, dict):
        raise InfocallerError(-3, "the document must be an object")
    try:
        result: dict[str, Any] = _lower_keys(data)
    except RecursionError:
        raise InfocallerError(-3, "nested too deeply") from None
    return result


@dataclass(slots=True)
class CallRequest:
    """A parsed request, before the line's checks."""

    idinfocaller: str
    firma: str
    call_data: dict[str, Any]


def parse_request(data: Mapping[str, Any]) -> CallRequest:
    """Pick UserID and callData out of a parsed document (wrapper optional)."""
    root: Any = data.get("callrequest", data)
    if not isinstance(root, dict):
        raise InfocallerError(-3, "callRequest must hold UserID and callData")
    user = root.get("userid")
    if user is None or user == "" or user == {}:
        raise InfocallerError(-2, "no UserID")
    if not isinstance(user, dict):
        raise InfocallerError(-1, "UserID must hold idinfocaller and firma")
    line_id = _scalar(user.get("idinfocaller"))
    signature = _scalar(user.get("firma"))
    if not line_id or not signature:
        raise InfocallerError(-2, "idinfocaller and firma are required")
    line_id = line_id.replace(" ", "").removeprefix("+")
    if line_id.startswith("00"):
        line_id = line_id[2:]
    if not _LINE_ID.match(line_id):
        raise InfocallerError(-1, "idinfocaller must be the service number (digits)")
    call_data = root.get("calldata")
    if not isinstance(call_data, dict):
        raise InfocallerError(-3, "callData is missing or not a section")
    return CallRequest(line_id, signature, call_data)


def _scalar(value: Any) -> str | None:
    """A leaf value as a stripped string (None for missing or structured values)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _bounded_int(value: Any, default: int, high: int, code: int) -> int:
    if value is None or value == "":
        return default
    text = _scalar(value)
    if text is None or not text.isdigit():
        raise InfocallerError(code, f"not a whole number: {value!r}")
    number = int(text)
    if number > high:
        raise InfocallerError(code, f"at most {high}")
    return number


def _cust_vars(call_data: Mapping[str, Any]) -> dict[str, str]:
    raw = call_data.get("custvars")
    if raw is None or raw == "" or raw == {}:
        return {}
    if isinstance(raw, list):  # a JSON client sending the CustVar array directly
        entries: Any = raw
    elif isinstance(raw, dict):
        entries = raw.get("custvar", [])
    else:
        raise InfocallerError(-3, "CustVars must hold CustVar entries")
    if isinstance(entries, dict):
        entries = [entries]
    if entries == "":
        entries = []
    if not isinstance(entries, list) or len(entries) > _MAX_VARS:
        raise InfocallerError(-3, f"CustVars must be a list of at most {_MAX_VARS} CustVar")
    out: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise InfocallerError(-3, "each CustVar needs VarName and VarValue")
        name = _scalar(entry.get("varname"))
        value = _scalar(entry.get("varvalue"))
        if not name or len(name) > _MAX_VAR_NAME:
            raise InfocallerError(-3, "a CustVar without a valid VarName")
        if value is None:
            value = ""
        if len(value) > _MAX_VAR_VALUE:
            raise InfocallerError(-3, f"VarValue of {name} is too long")
        out[name] = value
    return out


# ------------------------------------------------------------------------------ rule groups


def _next_steps(flow: Flow, index: int, step: Step) -> list[int]:
    """Where control may go after a step (statically)."""
    nxt = [index + 1]
    if isinstance(step, HangupStep):
        return []
    if isinstance(step, GotoStep):
        return [flow.labels[step.target]]
    if isinstance(step, BranchStep):
        targets = [flow.labels[label] for label in step.cases.values()]
        if step.default is not None:
            return [*targets, flow.labels[step.default]]
        return [*targets, *nxt]
    fail: str | None = None
    if isinstance(step, GatherStep | DialStep):
        fail = step.on_fail
    elif isinstance(step, HttpStep):
        fail = step.on_error
    if fail is not None:
        nxt.append(flow.labels[fail])
    return nxt


def classify_rule_group(flow: Flow, variables: Mapping[str, str]) -> int:
    """0 when the flow will act on the call; 9 when, with these variables, its first action
    ends the call; 13 when no step that acts on the call (play, gather, dial) is reachable.

    The walk evaluates ``set``, ``goto`` and ``branch`` on the request's variables (the
    flow's ``params``; a missing one is empty, as at run time) up to the first other step.
    """
    values = {name: variables.get(name, "") for name in flow.params}
    index = 0
    for _ in range(1000):
        if index >= len(flow.steps):
            return 9  # ran off the end: the switch hangs up
        step = flow.steps[index]
        if isinstance(step, HangupStep):
            return 9
        if isinstance(step, GotoStep):
            index = flow.labels[step.target]
            continue
        if isinstance(step, SetStep):
            try:
                values[step.var] = step.value.render(values)
            except Exception:  # a built-in the switch only knows at run time
                break
            index += 1
            continue
        if isinstance(step, BranchStep):
            if step.var not in values:
                break
            label = step.cases.get(values[step.var], step.default)
            index = flow.labels[label] if label is not None else index + 1
            continue
        break
    seen: set[int] = set()
    todo = [index]
    while todo:
        current = todo.pop()
        if current in seen or current >= len(flow.steps):
            continue
        seen.add(current)
        step = flow.steps[current]
        if isinstance(step, PlayStep | GatherStep | DialStep):
            return 0
        todo.extend(_next_steps(flow, current, step))
    return 13


# ------------------------------------------------------------------------------ the front-end


@dataclass(slots=True)
class _Account:
    """A line's mutable counters (in memory; seeded from the config at start)."""

    balance: int | None
    day: str = ""
    emitted: int = 0


class InfocallerFrontend:
    """The installed front-end: accounts, the HTTP handler and the CDR sink."""

    def __init__(self, sw: Switch, settings: InfocallerSettings) -> None:
        self.sw = sw
        self.settings = settings
        self.accounts = {ln.id: _Account(ln.balance_seconds) for ln in settings.lines}
        self._by_tenant = {ln.tenant: ln for ln in settings.lines}

    # ---- accounting ---------------------------------------------------------------------

    async def restore_balances(self) -> None:
        """Charge the calls already in the store against the configured balances, so the
        balance survives a restart (the config's balance is the line's starting credit)."""
        for line in self.settings.lines:
            account = self.accounts[line.id]
            if line.balance_seconds is None:
                continue
            spent = 0
            offset = 0
            while True:
                page = await self.sw.store.list_cdrs(limit=1000, offset=offset,
                                                     tenant=line.tenant, frontend=NAME)
                spent += sum(math.ceil(float(c.get("billsec") or 0.0)) for c in page)
                if len(page) < 1000:
                    break
                offset += 1000
            account.balance = line.balance_seconds - spent

    def on_cdr(self, cdr: Mapping[str, Any]) -> None:
        """CDR sink: charge a line's balance with the call's billable seconds (rounded up)."""
        if cdr.get("frontend") != NAME:
            return
        line = self._by_tenant.get(str(cdr.get("tenant")))
        if line is None:
            return
        account = self.accounts[line.id]
        billsec = float(cdr.get("billsec") or 0.0)
        if account.balance is not None and billsec > 0:
            account.balance -= math.ceil(billsec)

    def _check_account(self, line: Line, today: str) -> None:
        account = self.accounts[line.id]
        if account.balance is not None and account.balance <= 0:
            if line.credit_limit_seconds == 0:
                raise InfocallerError(11)
            if account.balance <= -line.credit_limit_seconds:
                raise InfocallerError(12)
        if line.daily_limit is not None:
            emitted = account.emitted if account.day == today else 0
            if emitted >= line.daily_limit:
                raise InfocallerError(14)

    def _count(self, line: Line, today: str) -> None:
        account = self.accounts[line.id]
        if account.day != today:
            account.day, account.emitted = today, 0
        account.emitted += 1

    # ---- requests -----------------------------------------------------------------------

    def _when(self, call_data: Mapping[str, Any], line: Line, wait_min: int) -> float | None:
        """The unix time the call is due (None: now); raises 4 for a bad or stale date."""
        tz = ZoneInfo(line.timezone)
        fechahora = _scalar(call_data.get("fechahora"))
        fecha = _scalar(call_data.get("fecha"))
        hora = _scalar(call_data.get("hora"))
        if fechahora is None and call_data.get("fechahora") not in (None, ""):
            raise InfocallerError(4)
        try:
            if fechahora:
                m = _FECHAHORA.match(fechahora)
                if m is None:
                    raise InfocallerError(4, f"expected YYYY-MM-DDTHH:MM:SS: {fechahora!r}")
                y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            elif fecha or hora:
                mf = _FECHA.match(fecha or "")
                mh = _HORA.match(hora or "")
                if mf is None or mh is None:
                    raise InfocallerError(4, "fecha is dd/mm/yyyy and hora HH:MM:SS, both")
                d, mo, y = (int(g) for g in mf.groups())
                h, mi, s = (int(g) if g else 0 for g in mh.groups())
            else:
                return None
            when = datetime(y, mo, d, h, mi, s, tzinfo=tz)
        except ValueError:
            raise InfocallerError(4, "no such date or time") from None
        now = self.sw.clock.now()
        at = when.timestamp()
        # A time already past still gets its call while its EsperaMax window is open.
        if at < now - wait_min * 60 or at > now + _MAX_AHEAD.total_seconds():
            raise InfocallerError(4, "the time is past (beyond EsperaMax) or too far ahead")
        return at if at > now else None

    def _number(self, text: str | None, line: Line) -> str:
        if not text:
            raise InfocallerError(5, "numtelefono is required")
        digits = _PHONE_JUNK.sub("", text)
        e164 = to_e164(digits, line.country)
        if e164 is None and digits.isdigit():
            # International format without the "+" (the document's 34911888920).
            e164 = to_e164("+" + digits, line.country)
        if e164 is None:
            raise InfocallerError(5, f"not a valid number: {text!r}")
        try:
            dest = self.sw.resolve_destination(e164)
        except DestinationError as exc:
            raise InfocallerError(5, str(exc)) from None
        if dest.kind != "number":
            raise InfocallerError(5, "only outside numbers can be called")
        return e164

    async def handle(self, data: Mapping[str, Any]) -> str:
        """Check and place one request; returns the idcall (raises :class:`InfocallerError`)."""
        req = parse_request(data)
        line = self.settings.line(req.idinfocaller)
        if line is None:
            raise InfocallerError(2)
        expected = firma(line.id, line.password).encode()
        given = req.firma.strip().lower().encode("utf-8", "replace")
        if not hmac.compare_digest(expected, given):
            raise InfocallerError(1)
        if line.state == "off":
            raise InfocallerError(3)
        if line.state == "suspended":
            raise InfocallerError(10)
        cd = req.call_data
        variables = _cust_vars(cd)
        wait_min = _bounded_int(cd.get("esperamax"), _DEFAULT_WAIT_MIN, _MAX_WAIT_MIN, 6)
        retries = _bounded_int(cd.get("reintentos"), 0, _MAX_RETRIES, 7)
        at = self._when(cd, line, wait_min)
        number = self._number(_scalar(cd.get("numtelefono")), line)
        group = _scalar(cd.get("gruporeglas"))
        flow_name = line.flow_for(group) if group else None
        flow = self.sw.flows.get(flow_name) if flow_name else None
        if flow is None or flow_name is None:
            raise InfocallerError(8)
        verdict = classify_rule_group(flow, variables)
        if verdict:
            raise InfocallerError(verdict)
        today = datetime.fromtimestamp(self.sw.clock.now(), ZoneInfo(line.timezone)).date()
        self._check_account(line, today.isoformat())
        idcall = uuid.uuid4().hex
        tags = {"frontend": NAME, "external_id": idcall, "infocaller_line": line.id,
                "rule_group": group}
        if at is None and retries == 0:
            self.sw.originate(number, flow=flow_name, variables=variables,
                              caller_id=line.caller_id, max_wait=wait_min * 60.0,
                              tenant=line.tenant, tags=tags)
        else:
            request = {"destination": number, "flow": flow_name, "variables": variables,
                       "caller_id": line.caller_id, "max_wait": wait_min * 60.0,
                       "tenant": line.tenant, "tags": tags}
            retry = RetryPolicy.from_dict(
                {"busy": {"count": retries, "interval": _RETRY_INTERVAL}}) if retries else None
            await self.sw.scheduler.schedule(request, at=at, retry=retry, job_id=idcall)
        self._count(line, today.isoformat())
        log.info("infocaller line %s: call %s to %s (%s)%s", line.id, idcall, number,
                 flow_name, "" if at is None else f" at {at:.0f}")
        return idcall

    async def endpoint(self, request: Request) -> Response:
        """``POST /``: read the form field, answer in the request's format."""
        as_xml = "json" not in (request.headers.get("accept") or "").lower()
        try:
            fields = await _read_form(request)
            if fields.get("apiCALLjson", "").strip():
                as_xml = False
                data = parse_json(fields["apiCALLjson"])
            elif fields.get("apiCALLxml", "").strip():
                as_xml = True
                data = parse_xml(fields["apiCALLxml"])
            else:
                if "apiCALLjson" in fields:
                    as_xml = False
                elif "apiCALLxml" in fields:
                    as_xml = True
                raise InfocallerError(-99)
            idcall = await self.handle(data)
            return _answer(0, idcall, as_xml)
        except InfocallerError as exc:
            log.info("infocaller request refused: %s", exc)
            return _answer(exc.code, "", as_xml)
        except Exception:
            log.exception("infocaller request failed")
            return _answer(-100, "", as_xml)


async def _read_form(request: Request) -> dict[str, str]:
    ctype = (request.headers.get("content-type") or "").lower()
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=0, max_fields=20)
        except Exception:
            raise InfocallerError(-99, "unreadable multipart form") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise InfocallerError(-3, "request too large")
    if not body:
        return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise InfocallerError(-99, "unreadable form") from None
    return {k: v[0] for k, v in parsed.items() if v}


def _answer(code: int, idcall: str, as_xml: bool) -> Response:
    text = RESULTS[code]
    if not as_xml:
        body = {"callRequest": {"idcall": idcall, "Resultado": str(code),
                                "ResultadoTexto": text}}
        return Response(json.dumps(body, ensure_ascii=False),
                        media_type="application/json; charset=utf-8")
    root = ET.Element("callRequest")
    ET.SubElement(root, "idcall").text = idcall
    ET.SubElement(root, "Resultado").text = str(code)
    ET.SubElement(root, "ResultadoTexto").text = text
    xml = "<?xml version='1.0' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="unicode")
    return Response(xml, media_type="application/xml; charset=utf-8")


_INSTALLED: weakref.WeakKeyDictionary[Switch, InfocallerFrontend] = weakref.WeakKeyDictionary()


def frontend_of(sw: Switch) -> InfocallerFrontend | None:
    """The Infocaller front-end installed in ``sw`` (its accounts, for tests and tools)."""
    return _INSTALLED.get(sw)


def install(sw: Switch, settings: object) -> None:
    """Wire the front-end into a switch: per-line limiters, the CDR sink, ``POST /``."""
    assert isinstance(settings, InfocallerSettings)
    frontend = InfocallerFrontend(sw, settings)
    for line in settings.lines:
        sw.limits.configure(f"tenant:{line.tenant}", {
            "max_concurrent": line.max_simultaneous, "queue_size": 1000})
    sw.cdr_sinks.append(frontend.on_cdr)
    sw.on_start.append(frontend.restore_balances)
    _INSTALLED[sw] = frontend

    def add_routes(app: FastAPI, _sw: Switch) -> None:
        app.add_api_route("/", frontend.endpoint, methods=["POST"], include_in_schema=False)

    sw.http_installers.append(add_routes)
