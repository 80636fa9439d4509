"""Click2Call URL dialing: ``GET``/``POST /API/dialup.php`` mapped onto call control.

The vendor's model: a request names ``dial1`` and ``dial2``; the switch rings ``dial1`` first
(one call per comma-separated entry) and, once it answers, dials ``dial2`` and bridges the two
(:meth:`switch.control.CallControl.originate` with ``then=``). ``Response=yes`` holds the
request until the first stage is decided; ``Date``/``Maxretry``/``Retrytime``/``ident`` store
the request in the durable scheduler instead. The caller-ID and recording rules of the vendor's
"dialing options" table are in :func:`plan_call`.

Everything this module answers (including every refusal) is rendered in the format the
request asked for (``RFormat``: text, html, xml, json) by :func:`render`.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI, Request, Response

from switch.b2bua import CallEvent, Outcome
from switch.config import Config, ConfigError
from switch.control import Destination, DestinationError
from switch.routing import to_e164
from switch.scheduler import RetryPolicy

if TYPE_CHECKING:
    from switch.app import Switch

log = logging.getLogger(__name__)

NAME = "click2call"
PATH = "/API/dialup.php"
JOB_PREFIX = "click2call:"

#: The parameters, spelled as the vendor's document spells them. Names are matched without
#: regard to case (``response=yes`` is ``Response=yes``); the value of each is exact.
PARAMETERS: tuple[str, ...] = (
    "user", "pass", "org", "dial1", "dial2", "Response", "showUID", "RFormat", "SetCID",
    "Timeout", "Date", "Maxretry", "Retrytime", "ident", "action",
)
_CANONICAL = {name.lower(): name for name in PARAMETERS}
FUTURE_PARAMETERS: tuple[str, ...] = ("Date", "Maxretry", "Retrytime", "ident")
FORMATS: tuple[str, ...] = ("text", "html", "xml", "json")

DEFAULT_TIMEOUT = 20
MAX_TIMEOUT = 300
MAX_RETRIES = 10
MIN_RETRY_TIME = 10
MAX_RETRY_TIME = 86_400
MAX_BODY = 64 * 1024
# A Response=yes request waits for the first leg's ring time plus this much (queues, limits).
_WAIT_SLACK = 30.0

_ORG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_IDENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DATE = re.compile(r"^[0-9]{12}$")
_INT = re.compile(r"^[0-9]{1,6}$")
_CID = re.compile(r"^\+?[0-9]{1,32}$")
# Characters that are not allowed in XML 1.0 (and have no business in a response).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: Reasons of the first stage, as the vendor's document names them.
REASON_ANSWERED = "Answered"
REASON_NO_ANSWER = "No answer"
REASON_BUSY = "Busy"
REASON_NOT_CONNECTED = "Not connected"
REASON_UNREACHABLE = "Unreachable"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Account:
    """One ``[click2call] accounts`` entry: who may call the API and on whose behalf."""

    user: str
    password: str = field(repr=False)
    org: str
    tenant: str = "default"
    timezone: str = "UTC"  # the time zone of the Date parameter
    cid: str | None = None  # the organisation's outside number (E.164), the CID fallback


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated ``[click2call]`` section."""

    accounts: tuple[Account, ...]

    def find(self, user: str, password: str, org: str) -> Account | None:
        """The account with these credentials (password compared in constant time)."""
        found: Account | None = None
        for account in self.accounts:
            if account.user == user and account.org == org:
                found = account
        if found is None:
            # Compare anyway so a wrong user costs what a wrong password costs.
            hmac.compare_digest(password.encode(), b"x" * max(1, len(password)))
            return None
        if not hmac.compare_digest(password.encode(), found.password.encode()):
            return None
        return found


_ACCOUNT_KEYS = {"user", "pass", "org", "tenant", "timezone", "cid"}


def parse(raw: Mapping[str, Any], config: Config) -> Settings:
    """Validate the ``[click2call]`` section (raises :class:`ConfigError`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("click2call", "expected a table")
    unknown = sorted(str(k) for k in raw if k != "accounts")
    if unknown:
        raise ConfigError(f"click2call.{unknown[0]}", "unknown key")
    entries = raw.get("accounts")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("click2call.accounts", "expected a non-empty list of tables")
    accounts: list[Account] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries):
        path = f"click2call.accounts[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(path, "expected a table")
        extra = sorted(str(k) for k in entry if k not in _ACCOUNT_KEYS)
        if extra:
            raise ConfigError(f"{path}.{extra[0]}", "unknown key")
        values: dict[str, str] = {}
        for key in ("user", "pass", "org"):
            value = entry.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}.{key}", "expected a non-empty string")
            values[key] = value
        if not _ORG.match(values["org"]):
            raise ConfigError(f"{path}.org", "letters, digits, '.', '_' or '-' (1-64)")
        tenant = entry.get("tenant", "default")
        if not isinstance(tenant, str) or not tenant:
            raise ConfigError(f"{path}.tenant", "expected a non-empty string")
        timezone = entry.get("timezone", "UTC")
        if not isinstance(timezone, str):
            raise ConfigError(f"{path}.timezone", "expected a time zone name")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{path}.timezone", f"unknown time zone {timezone!r}") from None
        cid = entry.get("cid")
        if cid is not None:
            if not isinstance(cid, str):
                raise ConfigError(f"{path}.cid", "expected a phone number string")
            normalised = to_e164(cid, config.calls.default_country)
            if normalised is None:
                raise ConfigError(f"{path}.cid", f"not a valid phone number: {cid!r}")
            cid = normalised
        pair = (values["user"], values["org"])
        if pair in seen:
            raise ConfigError(path, f"user {pair[0]!r} of org {pair[1]!r} is listed twice")
        seen.add(pair)
        accounts.append(Account(user=values["user"], password=values["pass"],
                                org=values["org"], tenant=tenant, timezone=timezone, cid=cid))
    return Settings(accounts=tuple(accounts))


# --------------------------------------------------------------------------- responses


class Refusal(Exception):
    """An invalid request: answered with ``status=fail``, ``code`` and ``reason``."""

    def __init__(self, code: str, reason: str, http_status: int = 400) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.http_status = http_status


def _clean(value: object) -> str:
    text = "" if value is None else str(value)
    return _CONTROL.sub("?", text.replace("\r", " ").replace("\n", " "))[:300]


Body = dict[str, Any]  # scalars, plus "calls"/"jobs": lists of flat dicts of scalars
_LISTS = {"calls": "call", "jobs": "job"}


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _clean(value)


def render(body: Body, fmt: str) -> tuple[str, str]:
    """The response body in ``fmt`` and its media type."""
    if fmt == "json":
        return json.dumps(_json_clean(body), ensure_ascii=False), "application/json"
    if fmt == "xml":
        root = ET.Element("response")
        for key, value in body.items():
            if key in _LISTS:
                parent = ET.SubElement(root, key)
                for item in value:
                    child = ET.SubElement(parent, _LISTS[key])
                    for k, v in item.items():
                        ET.SubElement(child, k).text = _scalar(v)
            else:
                ET.SubElement(root, key).text = _scalar(value)
        text = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n", "application/xml"
    if fmt == "html":
        rows: list[str] = []
        tables: list[str] = []
        for key, value in body.items():
            if key in _LISTS:
                for n, item in enumerate(value, 1):
                    cells = "".join(
                        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_scalar(v))}</td></tr>"
                        for k, v in item.items())
                    tables.append(f'<table class="{_LISTS[key]}" id="{_LISTS[key]}{n}">'
                                  f"{cells}</table>")
            else:
                rows.append(f"<tr><th>{html.escape(key)}</th>"
                            f"<td>{html.escape(_scalar(value))}</td></tr>")
        page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dialup</title>"
                f"</head><body><table class=\"response\">{''.join(rows)}</table>"
                f"{''.join(tables)}</body></html>\n")
        return page, "text/html; charset=utf-8"
    lines: list[str] = []
    for key, value in body.items():
        if key in _LISTS:
            for n, item in enumerate(value, 1):
                lines.extend(f"{_LISTS[key]}{n}.{k}={_scalar(v)}" for k, v in item.items())
        else:
            lines.append(f"{key}={_scalar(value)}")
    return "\n".join(lines) + "\n", "text/plain; charset=utf-8"


def _json_clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_clean(v) for v in value]
    if isinstance(value, str):
        return _clean(value)
    return value


def failure(code: str, reason: str) -> Body:
    """The body of a refused request."""
    return {"status": "fail", "code": code, "reason": reason}


# --------------------------------------------------------------------------- request parsing


def collect_parameters(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Map the request's name/value pairs onto the document's names (case-insensitively);
    unknown or repeated names are refused. Blank values count as absent."""
    params: dict[str, str] = {}
    for name, value in pairs:
        canonical = _CANONICAL.get(name.lower())
        if canonical is None:
            raise Refusal("unknown_parameter", f"Unknown parameter: {name}")
        if canonical in params:
            raise Refusal("duplicate_parameter", f"Parameter given more than once: {canonical}")
        params[canonical] = value.strip()
    return {k: v for k, v in params.items() if v != ""}


def peek_format(pairs: Sequence[tuple[str, str]]) -> str:
    """The RFormat of a request not yet validated (``text`` when absent or unusable)."""
    for name, value in pairs:
        if name.lower() == "rformat" and value.strip().lower() in FORMATS:
            return value.strip().lower()
    return "text"


def _yes(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered not in ("yes", "no"):
        raise Refusal(f"invalid_{name.lower()}", f"{name} must be yes or no")
    return lowered == "yes"


def _int_param(params: Mapping[str, str], name: str, low: int, high: int,
               unit: str = "") -> int | None:
    value = params.get(name)
    if value is None:
        return None
    what = f"{name} must be a whole number{unit} from {low} to {high}"
    if not _INT.match(value):
        raise Refusal(f"invalid_{name.lower()}", what)
    number = int(value)
    if not low <= number <= high:
        raise Refusal(f"invalid_{name.lower()}", what)
    return number


def response_format(params: Mapping[str, str]) -> str:
    """The requested RFormat (``text`` when absent); refused when unknown."""
    fmt = params.get("RFormat", "text").lower()
    if fmt not in FORMATS:
        raise Refusal("invalid_rformat", "RFormat must be text, html, xml or json")
    return fmt


def parse_date(text: str, timezone: str) -> float:
    """``YYYYMMDDhhmm`` in the account's time zone -> Unix seconds."""
    if not _DATE.match(text):
        raise Refusal("invalid_date", "Date must be YYYYMMDDhhmm")
    try:
        local = datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                         int(text[10:12]), tzinfo=ZoneInfo(timezone))
    except ValueError:
        raise Refusal("invalid_date", "Date must be YYYYMMDDhhmm") from None
    return local.timestamp()


def format_date(at: float, timezone: str) -> str:
    """Unix seconds -> ``YYYYMMDDhhmm`` in the account's time zone."""
    return datetime.fromtimestamp(at, ZoneInfo(timezone)).strftime("%Y%m%d%H%M")


# --------------------------------------------------------------------------- the dialing table


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How one dial1 entry is called: caller IDs shown to each party, and recording."""

    dial1: str
    caller_id: str | None  # shown to dial1
    second_caller_id: str | None  # shown to dial2
    record: bool


_AGENT_KINDS = ("extension", "group", "queue")


def _digits(dest: Destination) -> str | None:
    """The number a party is known by, when it is one (a group named by name has none)."""
    return dest.value if dest.kind == "number" else (
        dest.text if _CID.match(dest.text) else None)


def agent_number(config: Config, extension: str) -> str | None:
    """The agent's outside number: the trunk DID that reaches this extension (E.164)."""
    for trunk in config.trunks:
        for did, target in trunk.dids.items():
            if target == extension:
                return to_e164(did, config.calls.default_country) or did
    return None


def plan_call(config: Config, account: Account, first: Destination, second: Destination,
              set_cid: str | None, set_cid_is_extension: bool) -> CallPlan:
    """Apply the document's dialing-options table to one dial1/dial2 pair.

    * A party that is an internal number (extension, ring group, queue) is the *agent*; a call
      involving an agent is recorded, a call between two outside numbers is not (unless it is
      made on behalf of an agent by setting ``SetCID`` to the agent's extension).
    * Without ``SetCID``: agent then outside number: the agent sees the number it is calling,
      the outside party sees the agent's number (the DID reaching the agent's extension, else
      the account's ``cid``). Outside number then agent: the reverse. Agent then agent: each
      sees the other's extension. Outside then outside: refused (``SetCID`` is required).
    * ``SetCID`` = an agent's extension: internal parties see that extension, outside parties
      see the agent's number. ``SetCID`` = a phone number: both parties see it.
    * dial2 a call flow or a message: nobody is called second; dial1 sees ``SetCID`` or the
      account's number.
    """

    def outside_cid(ext: str | None) -> str | None:
        found = agent_number(config, ext) if ext else None
        return found or account.cid

    first_agent = first.kind in _AGENT_KINDS
    second_agent = second.kind in _AGENT_KINDS
    second_called = second.kind not in ("flow", "message")
    if set_cid is not None and set_cid_is_extension:
        number = outside_cid(set_cid) or set_cid
        return CallPlan(first.text,
                        set_cid if first_agent else number,
                        set_cid if second_agent else number,
                        record=True)
    if set_cid is not None:
        return CallPlan(first.text, set_cid, set_cid, record=first_agent or second_agent)
    if not second_called:
        return CallPlan(first.text, account.cid, None, record=first_agent)
    if first_agent and second_agent:
        return CallPlan(first.text, _digits(second), _digits(first), record=True)
    if first_agent:
        return CallPlan(first.text, second.value, outside_cid(_digits(first)), record=True)
    if second_agent:
        return CallPlan(first.text, outside_cid(_digits(second)), first.value, record=True)
    raise Refusal("setcid_required",
                  "SetCID is required when dial1 and dial2 are both external numbers")


# --------------------------------------------------------------------------- the front-end


def _reason(outcome: Outcome, rang: bool) -> str:
    """The document's first-stage reason for a leg's outcome."""
    if outcome == Outcome.ANSWERED:
        return REASON_ANSWERED
    if outcome == Outcome.BUSY:
        return REASON_BUSY
    if outcome == Outcome.NO_ANSWER:
        # 480/408 without ever ringing: not registered, switched off, unavailable.
        return REASON_NO_ANSWER if rang else REASON_UNREACHABLE
    return REASON_NOT_CONNECTED


@dataclass(slots=True)
class _Request:
    account: Account
    params: dict[str, str]
    fmt: str


class Click2Call:
    """The installed front-end: the HTTP handler and the scheduled-call bookkeeping."""

    def __init__(self, sw: Switch, settings: Settings) -> None:
        self.sw = sw
        self.settings = settings
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- HTTP ----------------------------------------------------------------------------

    def install_routes(self, app: FastAPI, sw: Switch) -> None:
        """Add ``GET``/``POST /API/dialup.php``."""
        app.add_api_route(PATH, self.handle, methods=["GET", "POST"],
                          include_in_schema=False)

    async def handle(self, request: Request) -> Response:
        """One API request: always answered in the requested format, never with a 500."""
        fmt = "text"
        try:
            pairs = list(request.query_params.multi_items())
            if request.method == "POST":
                pairs.extend(await self._form(request))
            # The format is known first, so that every refusal (even of a malformed
            # request) comes back in it.
            fmt = peek_format(pairs)
            params = collect_parameters(pairs)
            fmt = response_format(params)
            status, body = await self._dispatch(params, fmt)
        except Refusal as exc:
            status, body = exc.http_status, failure(exc.code, exc.reason)
        except Exception:
            log.exception("click2call request failed")
            status, body = 503, failure("unavailable", "Service temporarily unavailable")
        return _response(body, fmt, status)

    async def _form(self, request: Request) -> list[tuple[str, str]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise Refusal("body_too_large", "Request body is too large", 413)
        if not raw:
            return []
        if ctype == "application/x-www-form-urlencoded" or ctype == "":
            try:
                return parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
            except (UnicodeDecodeError, ValueError):
                raise Refusal("invalid_body", "The form body is not valid") from None
        if ctype == "multipart/form-data":
            try:
                form = await request.form()
            except Exception:
                raise Refusal("invalid_body", "The form body is not valid") from None
            return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        raise Refusal("invalid_body", "POST parameters must be sent as a form "
                      "(application/x-www-form-urlencoded or multipart/form-data)", 415)

    async def _dispatch(self, params: dict[str, str], fmt: str) -> tuple[int, Body]:
        for name in ("user", "pass", "org"):
            if name not in params:
                raise Refusal("missing_parameter", f"Missing mandatory parameter: {name}")
        account = self.settings.find(params["user"], params["pass"], params["org"])
        if account is None:
            raise Refusal("auth_failed", "Wrong user, pass or org", 401)
        req = _Request(account, params, fmt)
        action = params.get("action", "").lower()
        if action == "list":
            return 200, await self._list(req)
        if action == "cancel":
            return await self._cancel(req)
        if action:
            raise Refusal("invalid_action", "action must be list or cancel")
        return await self._dial(req)

    # ---- dialling --------------------------------------------------------------------------

    async def _dial(self, req: _Request) -> tuple[int, Body]:
        params = req.params
        for name in ("dial1", "dial2"):
            if name not in params:
                raise Refusal("missing_parameter", f"Missing mandatory parameter: {name}")
        wait = _yes(params, "Response")
        show_uid = _yes(params, "showUID")
        if show_uid and not wait:
            raise Refusal("invalid_showuid", "showUID=yes needs Response=yes")
        timeout = _int_param(params, "Timeout", 1, MAX_TIMEOUT, " of seconds")
        ring_timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        plans, dial2 = self._plans(req)
        future = [name for name in FUTURE_PARAMETERS if name in params]
        if future:
            return await self._schedule(req, plans, dial2, ring_timeout)
        return await self._place(req, plans, dial2, ring_timeout, wait, show_uid)

    def _plans(self, req: _Request) -> tuple[list[CallPlan], str]:
        params, sw = req.params, self.sw
        try:
            second = sw.resolve_destination(params["dial2"])
        except DestinationError as exc:
            raise Refusal("invalid_dial2", f"Invalid dial2: {exc}") from None
        set_cid = params.get("SetCID")
        cid_is_ext = False
        if set_cid is not None:
            if sw.router.is_extension(set_cid):
                cid_is_ext = True
            else:
                normalised = to_e164(set_cid, sw.config.calls.default_country)
                if normalised is None:
                    raise Refusal("invalid_setcid", "SetCID must be a phone number (E.164, "
                                  "national or international) or an agent's extension")
                set_cid = normalised
        try:
            entries = [e.strip() for e in params["dial1"].split(",")]
            if len(entries) > 100:
                raise DestinationError("at most 100 numbers in dial1")
            firsts = [sw.resolve_destination(entry) for entry in entries]
        except DestinationError as exc:
            raise Refusal("invalid_dial1", f"Invalid dial1: {exc}") from None
        plans: list[CallPlan] = []
        for first in firsts:
            if first.kind in ("flow", "message"):
                raise Refusal("invalid_dial1",
                              f"Invalid dial1: a {first.kind} can only be dial2")
            plans.append(plan_call(sw.config, req.account, first, second, set_cid,
                                   cid_is_ext))
        return plans, second.text

    def _options(self, req: _Request, plan: CallPlan, dial2: str,
                 ring_timeout: int, ident: str | None) -> dict[str, Any]:
        tags: dict[str, Any] = {"frontend": NAME, "org": req.account.org,
                                "user": req.account.user}
        if ident is not None:
            tags["external_id"] = ident
        return {
            "then": dial2, "caller_id": plan.caller_id,
            "second_caller_id": plan.second_caller_id, "ring_timeout": ring_timeout,
            "record": plan.record, "tenant": req.account.tenant, "tags": tags,
        }

    async def _place(self, req: _Request, plans: list[CallPlan], dial2: str,
                     ring_timeout: int, wait: bool, show_uid: bool) -> tuple[int, Body]:
        loop = asyncio.get_running_loop()
        rang: set[str] = set()
        outcomes: dict[str, asyncio.Future[Outcome]] = {}

        def on_event(event: CallEvent) -> None:
            # A leg that rang and then ended "no-answer" was not answered; one that never
            # rang was unreachable.
            if event.leg_id and event.name in ("ringing", "early-media"):
                rang.add(event.leg_id)
            elif (event.leg_id and event.name == "leg-completed"
                  and event.data.get("reason") == "No Answer"):
                rang.add(event.leg_id)

        unsubscribe = self.sw.subscribe(on_event) if wait else None
        placed: list[tuple[CallPlan, Any]] = []
        try:
            for plan in plans:
                future: asyncio.Future[Outcome] = loop.create_future()

                def on_first(outcome: Outcome, fut: asyncio.Future[Outcome] = future) -> None:
                    if not fut.done():
                        fut.set_result(outcome)

                try:
                    ref = self.sw.originate(plan.dial1, on_first_outcome=on_first,
                                            **self._options(req, plan, dial2, ring_timeout,
                                                            None))
                except (DestinationError, ValueError) as exc:
                    for _, done in placed:
                        self.sw.hangup(done.call_id)
                    raise Refusal("invalid_dial1", f"Invalid dial1: {exc}") from None
                placed.append((plan, ref))
                outcomes[ref.call_id] = future
            calls: list[dict[str, Any]] = []
            if not wait:
                for plan, _ref in placed:
                    calls.append({"dial1": plan.dial1, "dial2": dial2, "status": "ok",
                                  "reason": "Accepted"})
                return 200, {"status": "ok", "reason": "Accepted", "calls": calls}
            await asyncio.wait(list(outcomes.values()), timeout=ring_timeout + _WAIT_SLACK)
            for plan, ref in placed:
                fut = outcomes[ref.call_id]
                outcome = fut.result() if fut.done() else Outcome.FAILED
                reason = _reason(outcome, ref.leg_id in rang)
                entry: dict[str, Any] = {
                    "dial1": plan.dial1, "dial2": dial2,
                    "status": "ok" if outcome == Outcome.ANSWERED else "fail",
                    "reason": reason, "outcome": outcome.value,
                }
                if show_uid:
                    entry.update({"call_id": ref.call_id, "uid1": ref.leg_id,
                                  "uid2": ref.second_leg_id})
                calls.append(entry)
        finally:
            if unsubscribe is not None:
                unsubscribe()
        failed = [c for c in calls if c["status"] != "ok"]
        body: Body = {"status": "fail" if failed else "ok",
                      "reason": failed[0]["reason"] if failed else REASON_ANSWERED}
        if len(calls) == 1 and show_uid:
            body.update({k: calls[0][k] for k in ("call_id", "uid1", "uid2")})
        body["calls"] = calls
        return 200, body

    # ---- future calls ----------------------------------------------------------------------

    async def _schedule(self, req: _Request, plans: list[CallPlan], dial2: str,
                        ring_timeout: int) -> tuple[int, Body]:
        params, account = req.params, req.account
        if "Date" not in params:
            raise Refusal("missing_date", "A future call needs Date "
                          "(Maxretry, Retrytime and ident are only for future calls)")
        missing = [name for name in FUTURE_PARAMETERS if name not in params]
        if missing:
            raise Refusal("missing_parameter", "A future call needs Date, Maxretry, "
                          f"Retrytime and ident; missing: {', '.join(missing)}")
        at = parse_date(params["Date"], account.timezone)
        if at + 60 <= self.sw.clock.now():
            raise Refusal("invalid_date", "Date is in the past")
        retries = _int_param(params, "Maxretry", 0, MAX_RETRIES)
        interval = _int_param(params, "Retrytime", MIN_RETRY_TIME, MAX_RETRY_TIME,
                              " of seconds")
        assert retries is not None and interval is not None
        ident = params["ident"]
        if not _IDENT.match(ident):
            raise Refusal("invalid_ident", "ident must be 1-64 letters, digits, '.', '_' or '-'")
        base = f"{JOB_PREFIX}{account.org}:{ident}:"
        if await self.sw.scheduler.get(base + "1") is not None:
            raise Refusal("ident_in_use", f"ident is already used: {ident}", 409)
        entry = {"count": retries, "interval": interval}
        retry = RetryPolicy.from_dict({"busy": entry, "no_answer": entry, "failed": entry})
        jobs: list[dict[str, Any]] = []
        for n, plan in enumerate(plans, 1):
            request = {"destination": plan.dial1,
                       **self._options(req, plan, dial2, ring_timeout, ident)}
            try:
                await self.sw.scheduler.schedule(request, at=at, retry=retry,
                                                 job_id=f"{base}{n}")
            except ValueError:
                raise Refusal("ident_in_use", f"ident is already used: {ident}", 409) from None
            jobs.append({"ident": ident, "dial1": plan.dial1, "dial2": dial2,
                         "date": format_date(at, account.timezone), "state": "pending"})
        return 200, {"status": "ok", "reason": "Scheduled", "ident": ident,
                     "date": format_date(at, account.timezone), "jobs": jobs}

    async def _org_jobs(self, account: Account, ident: str | None) -> list[dict[str, Any]]:
        prefix = f"{JOB_PREFIX}{account.org}:"
        if ident is not None:
            prefix += f"{ident}:"
        jobs = await self.sw.scheduler.list()
        return [j for j in jobs if str(j["id"]).startswith(prefix)]

    def _job_view(self, job: dict[str, Any], account: Account) -> dict[str, Any]:
        request = job.get("request") or {}
        attempts = job.get("attempts") or []
        state = str(job["state"])
        if state == "canceled" and len(attempts) > _max_retries(job):
            state = "failed"  # cancelled by the total-retries cap, not by a user
        return {
            "ident": str(job["id"]).split(":")[2],
            "dial1": request.get("destination"), "dial2": request.get("then"),
            "date": format_date(float(job.get("requested_at") or job["due_at"]),
                                account.timezone),
            "state": state,
            "next": format_date(float(job["due_at"]), account.timezone)
            if state == "pending" else "",
            "attempts": len(attempts),
            "outcome": job.get("outcome") or "",
        }

    async def _list(self, req: _Request) -> Body:
        ident = req.params.get("ident")
        jobs = await self._org_jobs(req.account, ident)
        return {"status": "ok", "reason": f"{len(jobs)} future call(s)",
                "jobs": [self._job_view(j, req.account) for j in jobs]}

    async def _cancel(self, req: _Request) -> tuple[int, Body]:
        ident = req.params.get("ident")
        if ident is None:
            raise Refusal("missing_parameter", "Missing mandatory parameter: ident")
        jobs = await self._org_jobs(req.account, ident)
        if not jobs:
            raise Refusal("unknown_ident", f"No future call with ident {ident}", 404)
        canceled = [j for j in jobs if await self.sw.scheduler.cancel(str(j["id"]))]
        if not canceled:
            raise Refusal("not_pending", "The future call is not pending any more", 409)
        views = [self._job_view(j, req.account) for j in await self._org_jobs(req.account,
                                                                                 ident)]
        return 200, {"status": "ok", "reason": "Canceled", "ident": ident, "jobs": views}

    def on_job(self, job: dict[str, Any]) -> None:
        """Scheduler listener: Maxretry counts every retry, whatever its cause (the scheduler
        keeps separate budgets for busy, no answer and failed), so a job that used them up
        is stopped here."""
        if not str(job.get("id", "")).startswith(JOB_PREFIX) or job.get("state") != "pending":
            return
        if len(job.get("attempts") or []) <= _max_retries(job):
            return
        task = asyncio.get_running_loop().create_task(self.sw.scheduler.cancel(str(job["id"])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _max_retries(job: Mapping[str, Any]) -> int:
    retry = job.get("retry") or {}
    try:
        return int(retry["busy"]["count"])
    except (KeyError, TypeError, ValueError):
        return 0


def _response(body: Body, fmt: str, status: int) -> Response:
    text, media_type = render(body, fmt)
    return Response(content=text, status_code=status, media_type=media_type)


def install(sw: Switch, settings: object) -> None:
    """Add ``/API/dialup.php`` to the switch's HTTP server and watch its future calls."""
    assert isinstance(settings, Settings)
    frontend = Click2Call(sw, settings)
    sw.http_installers.append(frontend.install_routes)
    sw.job_listeners.append(frontend.on_job)


__all__ = [
    "PARAMETERS", "Account", "CallPlan", "Click2Call", "Refusal", "Settings",
    "collect_parameters", "install", "parse", "parse_date", "plan_call", "render",
]
