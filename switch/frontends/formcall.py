"""Medularis FormCall: ``POST /calls/manage/api`` calls a customer back for a popup's agent.

A *popup* (``[[formcall.popups]]``) names the agent(s) who answer its calls (an extension, a
ring group or a queue), its service hours, whether requests outside hours are left pending,
the order of the legs (agent first by default, so no customer is left waiting for a missing
agent), the caller ID the customer sees and the security token(s) that may use it.

A request carries ``popup_uuid``, the customer's ``country_code`` + ``areacode`` +
``phonenumber``, a ``security_token`` and optional ``adicional`` key/value data, which is
kept with the call (CDR ``variables``, status webhooks) and given to call flows as variables.
Answers are the vendor's JSON: ``{"success": true, "uuid": "<32 hex>"}``,
``{"success": true, "pending": true, "uuid": ...}`` or ``{"success": false, "error_code": N,
"error_msg": "..."}`` with the documented codes 1-8 plus our own 9-11 (spam limits, unknown
call). ``POST /calls/manage/status`` reads a call's stage and outcome by its uuid.

Where the state lives: the uuid of an immediate call is its switch call id without dashes; the
uuid of a pending one is its scheduler job id. Either way it is the call's ``external_id``
(CDR, store), so a call stays resolvable after a restart. Spam counters are in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import phonenumbers
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from switch.b2bua import Call, CallEvent, Outcome
from switch.calendar import ServiceHours
from switch.config import Config, ConfigError
from switch.control import Destination, DestinationError, check_caller_id, split_destinations

if TYPE_CHECKING:
    from switch.app import Switch

log = logging.getLogger(__name__)

NAME = "formcall"

#: The vendor's documented error codes and messages (exactly these texts).
ERRORS: dict[int, str] = {
    1: "Invalid phone number",
    2: "Popup not in service hours",
    3: "Call origination failed",
    4: "Popup not found",
    5: "Country not found",
    6: "Wrong parameters",
    7: "Security Token Missing",
    8: "Invalid Security Token",
    # Ours (outside the vendor's range):
    9: "Too many calls to this phone number",
    10: "Too many calls for this popup",
    11: "Call not found",
}

ORDERS = ("agent-first", "customer-first")
_POPUP_KEYS = frozenset({
    "uuid", "name", "agents", "service_hours", "pending", "order", "caller_id", "tokens",
    "tenant", "status_webhook", "countries", "agent_ring_timeout", "customer_ring_timeout",
})
_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DIGITS_JUNK = re.compile(r"[\s().-]")
_MAX_BODY = 64 * 1024
_MAX_ADICIONAL = 50
_MAX_VALUE = 1000
_PREFIX = "formcall_"  # our own call variables; adicional keys with it are dropped


@dataclass(frozen=True, slots=True)
class SpamRule:
    """At most ``calls`` accepted requests per ``seconds`` (a sliding window)."""

    calls: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Popup:
    """One popup: who answers, when, and who may request calls."""

    uuid: str  # lower case
    agents: str  # a destination: extension, group:<name>, queue:<name> or their number
    tokens: tuple[str, ...]
    service_hours: str | None = None  # a calendar name from [service_hours]
    hours: ServiceHours | None = None  # an inline calendar
    pending: bool = False
    order: str = "agent-first"
    caller_id: str | None = None
    tenant: str = "default"
    status_webhook: str | None = None
    countries: tuple[str, ...] = ()  # ISO regions customers may be in; empty: any
    agent_ring_timeout: float | None = None
    customer_ring_timeout: float | None = None
    name: str | None = None

    @property
    def calendar_ref(self) -> str | ServiceHours | None:
        """What the scheduler takes as ``service_hours``."""
        return self.service_hours if self.service_hours is not None else self.hours


@dataclass(frozen=True, slots=True)
class FormCallSettings:
    """The validated ``[formcall]`` section."""

    popups: tuple[Popup, ...] = ()
    per_number: SpamRule | None = SpamRule(3, 3600.0)
    per_popup: SpamRule | None = SpamRule(100, 3600.0)


# --------------------------------------------------------------------------- config


def _reject_unknown(table: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    unknown = sorted(str(k) for k in table if k not in known)
    if unknown:
        raise ConfigError(path, f"unknown key(s) {', '.join(unknown)}")


def _spam_rule(raw: Any, path: str) -> SpamRule | None:
    if raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "expected { calls = N, seconds = S } or false")
    _reject_unknown(raw, frozenset({"calls", "seconds"}), path)
    calls, seconds = raw.get("calls"), raw.get("seconds", 3600)
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ConfigError(f"{path}.calls", "must be an integer >= 1")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ConfigError(f"{path}.seconds", "must be a number of seconds > 0")
    return SpamRule(calls, float(seconds))


def _agents_ok(agents: str, config: Config) -> bool:
    kind, sep, name = agents.partition(":")
    if sep:
        if kind == "group":
            return any(g.name == name for g in config.groups)
        if kind == "queue":
            return any(q.name == name for q in config.queues)
        return False
    return (any(e.number == agents for e in config.extensions)
            or any(g.number == agents for g in config.groups)
            or any(q.number == agents for q in config.queues))


def _timeout(raw: Any, path: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 3600:
        raise ConfigError(path, "must be seconds, 0 < t <= 3600")
    return float(raw)


def _parse_popup(raw: Any, path: str, config: Config) -> Popup:
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a table")
    _reject_unknown(raw, _POPUP_KEYS, path)
    ident = raw.get("uuid")
    if not isinstance(ident, str) or not _UUID.match(ident):
        raise ConfigError(f"{path}.uuid", "must be a UUID-like string (letters, digits, '-')")
    agents = raw.get("agents")
    if not isinstance(agents, str):
        raise ConfigError(f"{path}.agents", "must be a destination string such as \"1001\", "
                          "\"group:sales\" or \"queue:support\"")
    try:
        split_destinations(agents, allow_list=False)
    except DestinationError as exc:
        raise ConfigError(f"{path}.agents", str(exc)) from None
    if not _agents_ok(agents, config):
        raise ConfigError(f"{path}.agents",
                          f"{agents!r} is not an extension, ring group or queue")
    tokens = raw.get("tokens")
    if (not isinstance(tokens, list) or not tokens
            or not all(isinstance(t, str) and t for t in tokens)):
        raise ConfigError(f"{path}.tokens", "must be a non-empty list of non-empty strings")
    hours_raw = raw.get("service_hours")
    hours_name: str | None = None
    hours: ServiceHours | None = None
    if isinstance(hours_raw, str):
        if hours_raw not in config.service_hours:
            raise ConfigError(f"{path}.service_hours",
                              f"no calendar {hours_raw!r} in [service_hours]")
        hours_name = hours_raw
        calendar = ServiceHours.from_config(dict(config.service_hours[hours_raw]))
    elif isinstance(hours_raw, Mapping):
        try:
            calendar = hours = ServiceHours.from_config(hours_raw, key=f"{path}.service_hours")
        except ValueError as exc:
            raise ConfigError(f"{path}.service_hours", str(exc)) from None
    elif hours_raw is None:
        calendar = None
    else:
        raise ConfigError(f"{path}.service_hours", "must be a calendar name or a table")
    if calendar is not None and not calendar.ever_open:
        raise ConfigError(f"{path}.service_hours", "is never open")
    pending = raw.get("pending", False)
    if not isinstance(pending, bool):
        raise ConfigError(f"{path}.pending", "must be true or false")
    order = raw.get("order", "agent-first")
    if order not in ORDERS:
        raise ConfigError(f"{path}.order", "must be \"agent-first\" or \"customer-first\"")
    caller_id = raw.get("caller_id")
    if caller_id is not None:
        if not isinstance(caller_id, str):
            raise ConfigError(f"{path}.caller_id", "must be a string")
        try:
            check_caller_id(caller_id)
        except DestinationError as exc:
            raise ConfigError(f"{path}.caller_id", str(exc)) from None
    tenant = raw.get("tenant", "default")
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(f"{path}.tenant", "must be a non-empty string")
    webhook = raw.get("status_webhook")
    if webhook is not None and (not isinstance(webhook, str)
                                or not re.match(r"^https?://[^\s/]+", webhook)):
        raise ConfigError(f"{path}.status_webhook", "must be an http(s):// URL")
    countries_raw = raw.get("countries", [])
    if not isinstance(countries_raw, list) or not all(isinstance(c, str) for c in countries_raw):
        raise ConfigError(f"{path}.countries", "must be a list of ISO regions such as \"CL\"")
    countries = tuple(c.upper() for c in countries_raw)
    known = phonenumbers.SUPPORTED_REGIONS
    for country in countries:
        if country not in known:
            raise ConfigError(f"{path}.countries", f"unknown region {country!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}.name", "must be a string")
    return Popup(
        uuid=ident.lower(), agents=agents, tokens=tuple(tokens), service_hours=hours_name,
        hours=hours, pending=pending, order=order, caller_id=caller_id or None, tenant=tenant,
        status_webhook=webhook, countries=countries,
        agent_ring_timeout=_timeout(raw.get("agent_ring_timeout"), f"{path}.agent_ring_timeout"),
        customer_ring_timeout=_timeout(raw.get("customer_ring_timeout"),
                                       f"{path}.customer_ring_timeout"),
        name=name,
    )


def parse(raw: Mapping[str, Any], config: Config) -> FormCallSettings:
    """Validate the ``[formcall]`` section (raises :class:`ConfigError` with the key path)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(NAME, "must be a table")
    _reject_unknown(raw, frozenset({"popups", "spam"}), NAME)
    popups_raw = raw.get("popups", [])
    if not isinstance(popups_raw, list):
        raise ConfigError(f"{NAME}.popups", "must be a list of tables")
    popups: list[Popup] = []
    seen: set[str] = set()
    for i, item in enumerate(popups_raw):
        popup = _parse_popup(item, f"{NAME}.popups[{i}]", config)
        if popup.uuid in seen:
            raise ConfigError(f"{NAME}.popups[{i}].uuid", f"duplicate popup {popup.uuid!r}")
        seen.add(popup.uuid)
        popups.append(popup)
    spam = raw.get("spam", {})
    if not isinstance(spam, Mapping):
        raise ConfigError(f"{NAME}.spam", "must be a table")
    _reject_unknown(spam, frozenset({"per_number", "per_popup"}), f"{NAME}.spam")
    defaults = FormCallSettings()
    per_number = (_spam_rule(spam["per_number"], f"{NAME}.spam.per_number")
                  if "per_number" in spam else defaults.per_number)
    per_popup = (_spam_rule(spam["per_popup"], f"{NAME}.spam.per_popup")
                 if "per_popup" in spam else defaults.per_popup)
    return FormCallSettings(popups=tuple(popups), per_number=per_number, per_popup=per_popup)


# --------------------------------------------------------------------------- helpers


class FormCallError(Exception):
    """A request refused with one of :data:`ERRORS`."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def customer_number(country_code: str, areacode: str, phonenumber: str,
                    countries: tuple[str, ...] = ()) -> tuple[str, str]:
    """The customer's E.164 number and ISO region, from the request's three parts.

    Raises :class:`FormCallError` 5 for an unknown country code and 1 for a number that is
    not valid there (or outside ``countries`` when that is not empty).
    """
    cc = _DIGITS_JUNK.sub("", country_code)
    if cc.startswith("+"):
        cc = cc[1:]
    elif cc.startswith("00"):
        cc = cc[2:]
    if not cc.isdigit() or not 1 <= len(cc) <= 3:
        raise FormCallError(5, f"country code {country_code!r}")
    region = phonenumbers.region_code_for_country_code(int(cc))
    if region == "ZZ":
        raise FormCallError(5, f"country code {cc}")
    national = _DIGITS_JUNK.sub("", areacode) + _DIGITS_JUNK.sub("", phonenumber)
    if not national.isdigit() or not 4 <= len(national) <= 17:
        raise FormCallError(1, "not digits")
    try:
        if region == "001":  # non-geographic codes (+800, +882...) have no region to parse in
            parsed = phonenumbers.parse(f"+{cc}{national}", None)
        else:
            parsed = phonenumbers.parse(national, region)
    except phonenumbers.NumberParseException as exc:
        raise FormCallError(1, str(exc)) from None
    if parsed.country_code != int(cc) or not phonenumbers.is_valid_number(parsed):
        raise FormCallError(1, "not a valid number")
    actual = phonenumbers.region_code_for_number(parsed) or region
    if countries and actual not in countries:
        raise FormCallError(1, f"customers in {actual} are not accepted by this popup")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), actual


def _field(body: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    """A string field; numbers are accepted for the digit fields (JSON clients send them)."""
    value = body.get(key)
    if value is None:
        if required:
            raise FormCallError(6, f"{key} is missing")
        return ""
    if isinstance(value, bool):
        raise FormCallError(6, f"{key} must be a string")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or len(value) > 256:
        raise FormCallError(6, f"{key} must be a string")
    return value.strip()


def _adicional(raw: Any) -> dict[str, str]:
    """``adicional`` as call variables (strings; nested values as JSON text)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or len(raw) > _MAX_ADICIONAL:
        raise FormCallError(6, f"adicional must be an object of at most {_MAX_ADICIONAL} keys")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > 64 or key.startswith(_PREFIX):
            raise FormCallError(6, f"adicional key {key!r} not allowed")
        if isinstance(value, str):
            text = value
        elif value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = json.dumps(value, ensure_ascii=False)
        if len(text) > _MAX_VALUE:
            raise FormCallError(6, f"adicional.{key} is longer than {_MAX_VALUE} characters")
        out[key] = text
    return out


def _json(body: dict[str, Any]) -> Response:
    # Always 200, as the vendor does: clients read "success" and "error_code".
    return JSONResponse(body, status_code=200)


def _failure(code: int) -> dict[str, Any]:
    return {"success": False, "error_code": code, "error_msg": ERRORS[code]}


def _token_ok(popup: Popup, token: str) -> bool:
    given = token.encode("utf-8", "surrogateescape")
    ok = False
    for known in popup.tokens:  # every token compared: timing does not tell which matched
        ok |= hmac.compare_digest(known.encode("utf-8"), given)
    return ok


# --------------------------------------------------------------------------- the front-end


@dataclass
class _Window:
    """Sliding-window counters keyed by customer number or popup (in memory)."""

    rule: SpamRule
    hits: dict[str, deque[float]] = field(default_factory=dict)

    def allowed(self, key: str, now: float) -> bool:
        times = self.hits.get(key)
        if times is None:
            return True
        while times and times[0] <= now - self.rule.seconds:
            times.popleft()
        return len(times) < self.rule.calls

    def add(self, key: str, now: float) -> None:
        self.hits.setdefault(key, deque()).append(now)
        if len(self.hits) > 10_000:  # forget idle keys so the table cannot grow forever
            for k in [k for k, t in self.hits.items() if not t or t[-1] <= now - self.rule.seconds]:
                del self.hits[k]


class FormCall:
    """The FormCall front-end installed in one switch."""

    def __init__(self, sw: Switch, settings: FormCallSettings) -> None:
        self.sw = sw
        self.settings = settings
        self.popups: dict[str, Popup] = {p.uuid: p for p in settings.popups}
        self.per_number = _Window(settings.per_number) if settings.per_number else None
        self.per_popup = _Window(settings.per_popup) if settings.per_popup else None
        self.live: dict[str, str] = {}  # uuid -> call id of a call in progress
        self._sent: set[tuple[str, str]] = set()  # (uuid, status) webhooks already queued
        self._lock = asyncio.Lock()

    # ---- requests ---------------------------------------------------------------------

    async def handle_request(self, body: Any) -> dict[str, Any]:
        """Validate a ``/calls/manage/api`` body and place (or schedule) the call.

        Precedence, first failing check wins: 6 (not a JSON object, wrong types, missing
        popup_uuid/phonenumber/country_code), 4 (unknown popup), 7 (no token), 8 (wrong token),
        5 (unknown country code), 1 (invalid number), 2 (closed, not pending), 9/10 (spam
        limits), 3 (origination failed)."""
        if not isinstance(body, Mapping):
            raise FormCallError(6, "body is not a JSON object")
        popup_uuid = _field(body, "popup_uuid")
        phone = _field(body, "phonenumber")
        areacode = _field(body, "areacode", required=False)
        country = _field(body, "country_code")
        token_raw = body.get("security_token")
        if token_raw is not None and not isinstance(token_raw, str):
            raise FormCallError(6, "security_token must be a string")
        variables = _adicional(body.get("adicional"))
        popup = self.popups.get(popup_uuid.lower())
        if popup is None:
            raise FormCallError(4, popup_uuid)
        if not token_raw:
            raise FormCallError(7)
        if not _token_ok(popup, token_raw):
            raise FormCallError(8)
        e164, _region = customer_number(country, areacode, phone, popup.countries)
        async with self._lock:  # the spam check and the count are one step
            now = self.sw.clock.now()
            calendar = self._calendar(popup)
            closed = calendar is not None and not calendar.is_open(now)
            if closed and not popup.pending:
                raise FormCallError(2)
            if self.per_number is not None and not self.per_number.allowed(e164, now):
                raise FormCallError(9, e164)
            if self.per_popup is not None and not self.per_popup.allowed(popup.uuid, now):
                raise FormCallError(10, popup.uuid)
            if closed:
                ident = uuidlib.uuid4().hex
                # "tenant" scopes the job in the native API (/v1/schedule).
                data = {"handler": NAME, "uuid": ident, "popup": popup.uuid,
                        "customer": e164, "variables": variables, "tenant": popup.tenant}
                try:
                    await self.sw.scheduler.schedule(data, service_hours=popup.calendar_ref,
                                                     job_id=ident)
                except ValueError as exc:
                    log.warning("formcall: scheduling for popup %s failed: %s", popup.uuid, exc)
                    raise FormCallError(3, str(exc)) from None
                self._count(popup, e164, now)
                self._webhook(popup, ident, {"status": "pending", "popup_uuid": popup.uuid,
                                             "variables": variables})
                return {"success": True, "pending": True, "uuid": ident}
            try:
                ident, _call_id = self.place(popup, e164, variables)
            except (DestinationError, ValueError) as exc:
                log.info("formcall: popup %s: origination failed: %s", popup.uuid, exc)
                raise FormCallError(3, str(exc)) from None
            self._count(popup, e164, now)
            return {"success": True, "uuid": ident}

    def _count(self, popup: Popup, e164: str, now: float) -> None:
        if self.per_number is not None:
            self.per_number.add(e164, now)
        if self.per_popup is not None:
            self.per_popup.add(popup.uuid, now)

    def _calendar(self, popup: Popup) -> ServiceHours | None:
        if popup.service_hours is not None:
            return self.sw.calendars.get(popup.service_hours)
        return popup.hours

    def place(self, popup: Popup, e164: str, variables: Mapping[str, str], *,
              ident: str | None = None, job_id: str | None = None,
              on_first: Callable[[Outcome], object] | None = None) -> tuple[str, str]:
        """Originate the two-legged call; returns (uuid, call id). Raises
        :class:`DestinationError`/:class:`ValueError` when it cannot be placed.

        The second stage is dialled here rather than with ``originate(then=)`` so that when it
        fails the first party hears "unavailable" and is hung up instead of being left on a
        silent line."""
        values = dict(variables)
        values.update({f"{_PREFIX}popup": popup.uuid, f"{_PREFIX}customer": e164})
        tags: dict[str, Any] = {"frontend": NAME, "popup": popup.uuid}
        if job_id is not None:
            tags["job_id"] = job_id
        if ident:
            # Known up front (a pending request): in the tags from the start, so the CDR has it
            # even when the call is created after originate() returns (a limit's queue).
            tags["external_id"] = ident
        first_cid: str | None
        second_cid: str | None
        if popup.order == "agent-first":
            first, second = popup.agents, e164
            # The agent sees the customer's number; the customer sees the popup's caller ID.
            first_cid, second_cid = e164, popup.caller_id
            first_timeout, second_timeout = popup.agent_ring_timeout, popup.customer_ring_timeout
        else:
            first, second = e164, popup.agents
            first_cid, second_cid = popup.caller_id, e164
            first_timeout, second_timeout = popup.customer_ring_timeout, popup.agent_ring_timeout
        second_dest = self.sw.resolve_destination(second)  # refused now (3), not mid-call
        second_leg = str(uuidlib.uuid4())
        holder: dict[str, str] = {}

        def first_outcome(outcome: Outcome) -> None:
            if on_first is not None:
                on_first(outcome)
            if outcome == Outcome.ANSWERED and "call_id" in holder:
                with contextlib.suppress(KeyError):
                    self.sw.spawn_for_call(holder["call_id"], self._second_stage(
                        holder["leg_id"], second_dest, second_leg, second_cid,
                        second_timeout))

        ref = self.sw.originate(
            first, caller_id=first_cid, ring_timeout=first_timeout, variables=values,
            tenant=popup.tenant, tags=tags, on_first_outcome=first_outcome)
        holder.update(call_id=ref.call_id, leg_id=ref.leg_id)
        agent_leg, customer_leg = ((ref.leg_id, second_leg) if popup.order == "agent-first"
                                   else (second_leg, ref.leg_id))
        ident = ident or ref.call_id.replace("-", "")
        call = self.sw.active_call(ref.call_id)
        if call is not None:
            # Set before the first await, so every event and the CDR carry them.
            call.tags["external_id"] = ident
            call.variables[f"{_PREFIX}uuid"] = ident
            call.variables[f"{_PREFIX}agent_leg"] = agent_leg
            call.variables[f"{_PREFIX}customer_leg"] = customer_leg
            call.variables[f"{_PREFIX}order"] = popup.order
        self.live[ident] = ref.call_id
        return ident, ref.call_id

    async def _second_stage(self, leg_id: str, dest: Destination, second_leg: str,
                            caller_id: str | None, ring_timeout: float | None) -> None:
        """Dial the second party for the answered first leg and bridge them; when that fails,
        tell the first party and hang up."""
        try:
            leg = self.sw.leg(leg_id)
        except KeyError:
            return
        outcome = await self.sw.connect(leg, dest, leg_id=second_leg, caller_id=caller_id,
                                        ring_timeout=ring_timeout)
        if outcome == Outcome.ANSWERED or leg.call.ended:
            return
        with contextlib.suppress(Exception):  # the leg may hang up while this plays
            await self.sw.play_and_wait(leg.id, "unavailable")
        if not leg.call.ended:
            self.sw.end_call(leg.call)

    async def run_job(self, job_id: str, data: dict[str, Any]) -> str:
        """Scheduler handler: place a pending request now its popup's hours have opened."""
        popup = self.popups.get(str(data.get("popup", "")))
        ident = str(data.get("uuid") or job_id)
        if popup is None:
            log.warning("formcall: pending call %s: popup %s is gone", ident, data.get("popup"))
            return "failed"
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()

        def on_first(outcome: Outcome) -> None:
            if not first.done():
                first.set_result(outcome.value)

        raw_vars = data.get("variables") or {}
        variables = {str(k): str(v) for k, v in raw_vars.items()} if isinstance(
            raw_vars, Mapping) else {}
        try:
            self.place(popup, str(data["customer"]), variables, ident=ident, job_id=job_id,
                       on_first=on_first)
        except (DestinationError, ValueError, KeyError) as exc:
            log.warning("formcall: pending call %s cannot be placed: %s", ident, exc)
            self._webhook(popup, ident, {"status": "failed", "outcome": "failed"})
            return "failed"
        return await first

    # ---- status ---------------------------------------------------------------------

    def _find_live(self, ident: str) -> Call | None:
        call_id = self.live.get(ident)
        call = self.sw.active_call(call_id) if call_id else None
        if call is not None:
            return call
        for call in self.sw.active_calls():
            if call.tags.get("frontend") == NAME and call.tags.get("external_id") == ident:
                return call
        return None

    async def status(self, ident: str) -> dict[str, Any] | None:
        """The call's stage and outcome by uuid (None when unknown). Keys: ``uuid``,
        ``popup_uuid``, ``status``, ``outcome``, ``agent``, ``customer``, ``variables``..."""
        call = self._find_live(ident)
        if call is not None:
            return live_status(call)
        call_id = self.live.get(ident)
        by_id = self.sw.recent_cdrs.get(call_id) if call_id else None
        if by_id is not None:
            return cdr_status(by_id)
        for cdr in reversed(self.sw.recent_cdrs.values()):
            if cdr.get("frontend") == NAME and cdr.get("external_id") == ident:
                return cdr_status(cdr)
        stored = await self.sw.store.list_cdrs(external_id=ident, frontend=NAME, limit=1)
        if not stored and call_id:
            one = await self.sw.store.get_cdr(call_id)
            stored = [one] if one is not None else []
        if stored:
            return cdr_status(stored[0])
        job = await self.sw.scheduler.get(ident)
        if job is None:
            return None
        request = job.get("request") or {}
        if request.get("handler") != NAME:
            return None
        state = job["state"]
        popup = self.popups.get(str(request.get("popup", "")))
        first = "ringing-customer" if popup and popup.order == "customer-first" else (
            "ringing-agent")
        view: dict[str, Any] = {
            "uuid": ident, "popup_uuid": request.get("popup"),
            "status": "pending" if state == "pending" else first if state == "dialing"
            else "failed",
            "outcome": None if state in ("pending", "dialing") else (
                "canceled" if state == "canceled" else job.get("outcome") or "failed"),
            "due_at": job.get("due_at"),
            "agent": None,
            "customer": {"number": request.get("customer"), "outcome": None},
            "variables": dict(request.get("variables") or {}),
        }
        return view

    async def handle_status(self, body: Any) -> dict[str, Any]:
        """``/calls/manage/status``: 6 wrong parameters, 7 no token, 8 a token of no popup,
        11 no call with that uuid for this token's popup."""
        if not isinstance(body, Mapping):
            raise FormCallError(6, "body is not a JSON object")
        ident = _field(body, "uuid").lower()
        token = body.get("security_token")
        if token is not None and not isinstance(token, str):
            raise FormCallError(6, "security_token must be a string")
        if not token:
            raise FormCallError(7)
        popups = [p for p in self.popups.values() if _token_ok(p, token)]
        if not popups:
            raise FormCallError(8)
        if not re.fullmatch(r"[0-9a-f]{32}", ident):
            raise FormCallError(11)
        view = await self.status(ident)
        if view is None or view.get("popup_uuid") not in {p.uuid for p in popups}:
            raise FormCallError(11)  # another popup's call is as unknown as a missing one
        return {"success": True, **view}

    # ---- status webhooks --------------------------------------------------------------

    def on_event(self, event: CallEvent) -> None:
        """Status webhooks for the stages of a call in progress."""
        if event.name not in ("leg-initiated", "answered", "bridged"):
            return
        call = self.sw.active_call(event.call_id)
        if call is None or call.tags.get("frontend") != NAME:
            return
        popup = self.popups.get(str(call.tags.get("popup", "")))
        if popup is None or popup.status_webhook is None:
            return
        view = live_status(call)
        self._webhook(popup, view["uuid"], view)

    def on_cdr(self, cdr: dict[str, Any]) -> None:
        """The final status webhook; forget the live mapping."""
        if cdr.get("frontend") != NAME:
            return
        ident = str(cdr.get("external_id") or "")
        self.live.pop(ident, None)
        popup = self.popups.get(str((cdr.get("variables") or {}).get(f"{_PREFIX}popup", "")))
        if popup is not None and popup.status_webhook is not None:
            self._webhook(popup, ident, cdr_status(cdr))

    def _webhook(self, popup: Popup, ident: str, view: Mapping[str, Any]) -> None:
        url = popup.status_webhook
        status = str(view.get("status"))
        if url is None or (ident, status) in self._sent:
            return
        self._sent.add((ident, status))
        if len(self._sent) > 100_000:
            self._sent.clear()
        payload = {"uuid": ident, "popup_uuid": popup.uuid, **view, "status": status,
                   "time": self.sw.clock.now()}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        event_id = f"formcall-{ident}-{status}"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.sw.webhooks.send(
            url, payload, event_id=event_id, body=body))
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("formcall: queueing a status webhook failed", exc_info=task.exception())


def _stage(order: str, agent_up: bool, customer_up: bool) -> str:
    if agent_up and customer_up:
        return "connected"
    if order == "agent-first":
        return "ringing-customer" if agent_up else "ringing-agent"
    return "ringing-agent" if customer_up else "ringing-customer"


def live_status(call: Call) -> dict[str, Any]:
    """The status view of a call in progress."""
    variables = dict(call.variables)
    customer_leg = variables.get(f"{_PREFIX}customer_leg", "")
    order = variables.get(f"{_PREFIX}order", "agent-first")
    agent_groups = [g for g in call.groups if g.id != customer_leg]
    customer_groups = [g for g in call.groups if g.id == customer_leg]
    agent = next((g for g in agent_groups if g.outcome == Outcome.ANSWERED),
                 agent_groups[-1] if agent_groups else None)
    customer = customer_groups[0] if customer_groups else None
    agent_up = agent is not None and agent.outcome == Outcome.ANSWERED
    customer_up = customer is not None and customer.outcome == Outcome.ANSWERED
    return {
        "uuid": call.tags.get("external_id"),
        "popup_uuid": variables.get(f"{_PREFIX}popup"),
        "call_id": call.id,
        "status": _stage(order, agent_up, customer_up),
        "outcome": None,
        "agent": None if agent is None else {
            "leg_id": agent.id, "destination": agent.destination,
            "outcome": agent.outcome.value if agent.outcome else None,
            "answered_at": agent.answered_at},
        "customer": {
            "number": variables.get(f"{_PREFIX}customer"),
            "leg_id": customer.id if customer else None,
            "outcome": customer.outcome.value if customer and customer.outcome else None,
            "answered_at": customer.answered_at if customer else None},
        "variables": _public(variables),
    }


def cdr_status(cdr: Mapping[str, Any]) -> dict[str, Any]:
    """The status view of an ended call, from its CDR."""
    variables = dict(cdr.get("variables") or {})
    customer_leg = variables.get(f"{_PREFIX}customer_leg", "")
    order = variables.get(f"{_PREFIX}order", "agent-first")
    legs = list(cdr.get("legs") or [])
    customer = next((leg for leg in legs if leg.get("leg_id") == customer_leg), None)
    agents = [leg for leg in legs if leg.get("leg_id") != customer_leg]
    agent = next((leg for leg in agents if leg.get("outcome") == "answered"),
                 agents[-1] if agents else None)
    agent_out = agent.get("outcome") if agent else None
    customer_out = customer.get("outcome") if customer else None
    failed_leg: str | None = None
    if agent_out == "answered" and customer_out == "answered":
        status, outcome = "completed", "answered"
    else:
        stages = [("agent", agent_out), ("customer", customer_out)]
        if order != "agent-first":
            stages.reverse()
        # The first leg (in dialling order) that did not answer is why the call failed; a
        # second leg never dialled counts as failed.
        failed_leg, leg_outcome = next((n, o) for n, o in stages if o != "answered")
        status, outcome = "failed", leg_outcome or str(cdr.get("outcome") or "failed")
    return {
        "uuid": cdr.get("external_id"),
        "popup_uuid": variables.get(f"{_PREFIX}popup"),
        "call_id": cdr.get("call_id"),
        "status": status,
        "outcome": outcome,
        "failed_leg": failed_leg,
        "duration": cdr.get("duration"),
        "billsec": cdr.get("billsec"),
        "agent": None if agent is None else {
            "leg_id": agent.get("leg_id"), "destination": agent.get("target"),
            "outcome": agent_out, "answered_at": agent.get("answered_at")},
        "customer": {
            "number": variables.get(f"{_PREFIX}customer"),
            "leg_id": customer.get("leg_id") if customer else None,
            "outcome": customer_out,
            "answered_at": customer.get("answered_at") if customer else None},
        "variables": _public(variables),
    }


def _public(variables: Mapping[str, str]) -> dict[str, str]:
    """The request's ``adicional`` (our own bookkeeping variables left out)."""
    return {k: v for k, v in variables.items() if not k.startswith(_PREFIX)}


# --------------------------------------------------------------------------- HTTP


async def _read_json(request: Request) -> Any:
    """The request's JSON body, or FormCallError 6 (wrong content type, too big, bad JSON)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise FormCallError(6, f"content type {ctype!r}")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > _MAX_BODY:
            raise FormCallError(6, "body too large")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormCallError(6, "malformed JSON") from None


def _routes(front: FormCall) -> Any:
    async def manage_api(request: Request) -> Response:
        """Medularis FormCall: request a call between a popup's agent and a customer."""
        try:
            return _json(await front.handle_request(await _read_json(request)))
        except FormCallError as exc:
            log.info("formcall: refused with %s (%s)", exc.code, exc.detail)
            return _json(_failure(exc.code))

    async def manage_status(request: Request) -> Response:
        """FormCall call status by uuid."""
        try:
            return _json(await front.handle_status(await _read_json(request)))
        except FormCallError as exc:
            return _json(_failure(exc.code))

    return manage_api, manage_status


# --------------------------------------------------------------------------- native API


def _api_error(status: int, code: str, message: str) -> Exception:
    from switch.api import ApiError

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return ApiError(status, code, message, headers=headers)


def _api_tenant(front: FormCall, request: Request) -> str:
    """The tenant of the native API key on the request (as the /v1 API checks it)."""
    auth = request.headers.get("authorization", "")
    presented = [v for v in (auth[7:].strip() if auth.lower().startswith("bearer ") else "",
                             request.headers.get("x-api-key", "")) if v]
    if not presented:
        raise _api_error(401, "unauthorized", "an API key is required (Authorization: Bearer "
                         "<key> or X-API-Key: <key>)")
    from switch.api import find_api_key

    for value in presented:
        found = find_api_key(front.sw.config.api.keys, value)
        if found is not None:
            return found.tenant
    raise _api_error(401, "unauthorized", "invalid API key")


def popup_view(popup: Popup) -> dict[str, Any]:
    """A popup as the native API shows it (its tokens are secrets: only their number)."""
    return {
        "uuid": popup.uuid, "name": popup.name, "agents": popup.agents,
        "service_hours": popup.service_hours if popup.service_hours is not None else (
            popup.hours.config if popup.hours is not None else None),
        "pending": popup.pending, "order": popup.order, "caller_id": popup.caller_id,
        "tenant": popup.tenant, "status_webhook": popup.status_webhook,
        "countries": list(popup.countries), "agent_ring_timeout": popup.agent_ring_timeout,
        "customer_ring_timeout": popup.customer_ring_timeout, "tokens": len(popup.tokens),
    }


def _admin_routes(front: FormCall) -> Any:
    def mine(request: Request, ident: str) -> Popup:
        tenant = _api_tenant(front, request)
        popup = front.popups.get(ident.lower())
        if popup is None or popup.tenant != tenant:
            raise _api_error(404, "unknown_popup", f"no popup {ident!r}")
        return popup

    async def list_popups(request: Request) -> Response:
        """FormCall popups of the API key's tenant."""
        tenant = _api_tenant(front, request)
        return JSONResponse({"popups": [popup_view(p) for p in front.popups.values()
                                        if p.tenant == tenant]})

    async def get_popup(request: Request, popup_uuid: str) -> Response:
        """One FormCall popup."""
        return JSONResponse(popup_view(mine(request, popup_uuid)))

    async def put_popup(request: Request, popup_uuid: str) -> Response:
        """Create or replace a FormCall popup (same keys as ``[[formcall.popups]]``; the
        tenant is the API key's). Lasts until the switch restarts."""
        tenant = _api_tenant(front, request)
        old = front.popups.get(popup_uuid.lower())
        if old is not None and old.tenant != tenant:
            raise _api_error(404, "unknown_popup", f"no popup {popup_uuid!r}")
        try:
            body = await _read_json(request)
        except FormCallError as exc:
            raise _api_error(400, "invalid_request", exc.detail) from None
        if not isinstance(body, dict):
            raise _api_error(400, "invalid_request", "the body must be a JSON object")
        if body.get("tenant", tenant) != tenant:
            raise _api_error(400, "invalid_request", "tenant: must be the API key's tenant")
        raw = {**body, "uuid": popup_uuid, "tenant": tenant}
        try:
            popup = _parse_popup(raw, "popup", front.sw.config)
        except ConfigError as exc:
            raise _api_error(400, "invalid_request", f"{exc.key_path}: {exc.reason}") from None
        front.popups[popup.uuid] = popup
        return JSONResponse(popup_view(popup), status_code=200 if old else 201)

    async def delete_popup(request: Request, popup_uuid: str) -> Response:
        """Remove a FormCall popup (its pending calls then fail when due)."""
        popup = mine(request, popup_uuid)
        del front.popups[popup.uuid]
        return JSONResponse({"deleted": popup.uuid})

    return list_popups, get_popup, put_popup, delete_popup


def install(sw: Switch, settings: object) -> None:
    """Wire FormCall into a switch: HTTP routes, the scheduler handler, status webhooks."""
    assert isinstance(settings, FormCallSettings)
    front = FormCall(sw, settings)
    sw.job_handlers[NAME] = front.run_job
    sw.subscribe(front.on_event)
    sw.cdr_sinks.append(front.on_cdr)
    manage_api, manage_status = _routes(front)

    def add_routes(app: FastAPI, _sw: Switch) -> None:
        app.add_api_route("/calls/manage/api", manage_api, methods=["POST"],
                          tags=["formcall"], include_in_schema=True)
        app.add_api_route("/calls/manage/status", manage_status, methods=["POST"],
                          tags=["formcall"], include_in_schema=True)

        list_popups, get_popup, put_popup, delete_popup = _admin_routes(front)
        base = "/v1/formcall/popups"
        app.add_api_route(base, list_popups, methods=["GET"], tags=["formcall"])
        app.add_api_route(base + "/{popup_uuid}", get_popup, methods=["GET"], tags=["formcall"])
        app.add_api_route(base + "/{popup_uuid}", put_popup, methods=["PUT"], tags=["formcall"])
        app.add_api_route(base + "/{popup_uuid}", delete_popup, methods=["DELETE"],
                          tags=["formcall"])

    sw.http_installers.append(add_routes)
    setattr(sw, "formcall", front)  # noqa: B010 - a handle for embedding programs and tests


__all__ = ["ERRORS", "FormCall", "FormCallError", "FormCallSettings", "Popup", "SpamRule",
           "cdr_status", "customer_number", "install", "live_status", "parse", "popup_view"]
