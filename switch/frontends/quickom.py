"""Quickom call service: signed call webhooks, call detail, missed calls, record download.

Quickom's model is a **customer** (the outside party) talking to a **member** (an agent: one of
our extensions). Every call that ends with a member of a configured tenant on one side and an
outside number on the other is mapped onto Quickom's call body::

    {"call_id", "start_time", "end_time",
     "customer_info": {"customer_id", "name", "phone_number", "email"},
     "callee_info": {"member_id", "name", "email", "phone_number"},
     "has_record", "record_number", "record_files": [{"record_id", "start_time", "end_time"}]}

and, when the tenant has a ``webhook_url``, POSTed there through the switch's durable webhook
outbox with ``request_id`` added and a ``Signature`` header (see :func:`signature`). The HTTP
routes (``/api/enterprise/call/detail``, ``/call/new``, ``/call/record/download``) answer with
the same body, authenticated by ``Authorization: <api key>`` (a key sees only its tenant).

State lives in the CDR itself (key ``quickom``, kept in the store's ``extra`` column), so it
survives restarts: ``{"tenant", "request_id", "outbox_id", "returned_at", "info"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from switch.config import Config, ConfigError, Extension
from switch.routing import to_e164

if TYPE_CHECKING:
    from switch.app import Switch

__all__ = [
    "Customer",
    "QuickomFrontend",
    "QuickomSettings",
    "QuickomTenant",
    "install",
    "parse",
    "signature",
    "signature_data",
]

log = logging.getLogger(__name__)

NAME: Final = "quickom"
#: The outbox target name of our deliveries: the item id is ``<request_id>:<OUTBOX_TARGET>``.
OUTBOX_TARGET: Final = "frontend-quickom"
#: The CDR key holding this front-end's state.
STATE_KEY: Final = "quickom"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 50
_DIGITS = re.compile(r"^[0-9]{1,9}$")
_NUMBER = re.compile(r"^\+?[0-9]{1,32}$")
_CALL_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,200}$")
#: Call variables a native API request may set to name the customer of a call.
CUSTOMER_VARIABLES: Final = ("quickom_customer_id", "quickom_customer_name",
                             "quickom_customer_email")
#: Parties that are not a customer's number.
_NOT_A_PARTY: Final = frozenset({"", "softswitch", "anonymous", "unknown"})


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Customer:
    """A known customer of a tenant, matched on the outside party's number (E.164)."""

    customer_id: str
    phone_number: str
    name: str = ""
    email: str = ""


@dataclass(frozen=True, slots=True)
class QuickomTenant:
    """One tenant's Quickom account: its API keys, signing secret, webhook and customers."""

    tenant: str
    api_keys: tuple[str, ...] = field(repr=False)
    signing_secret: str = field(repr=False)
    webhook_url: str | None = None
    customers: tuple[Customer, ...] = ()

    def customer_by_number(self, e164: str) -> Customer | None:
        """The configured customer whose phone number is ``e164``."""
        return next((c for c in self.customers if c.phone_number == e164), None)


@dataclass(frozen=True, slots=True)
class QuickomSettings:
    """The validated ``[quickom]`` section."""

    tenants: tuple[QuickomTenant, ...]
    #: Delivery attempts of one webhook before the outbox gives up (the call stays "new").
    webhook_max_attempts: int = 20
    #: Calls older than this (seconds since their start) are no longer "new".
    new_calls_max_age: float = 7 * 86400.0


_SECTION_KEYS: Final = ("tenants", "webhook_max_attempts", "new_calls_max_age")
_TENANT_KEYS: Final = ("tenant", "api_keys", "signing_secret", "webhook_url", "customers")
_CUSTOMER_KEYS: Final = ("customer_id", "name", "phone_number", "email")


def _check_keys(table: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(path, "must be a table")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}" if path else str(key), "unknown key")
    return table


def _string(table: Mapping[str, Any], path: str, key: str, *, required: bool,
            default: str = "") -> str:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}.{key}", "is required")
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{path}.{key}", "must be a string")
    if required and not value.strip():
        raise ConfigError(f"{path}.{key}", "must not be empty")
    if any(ord(ch) < 32 for ch in value):
        raise ConfigError(f"{path}.{key}", "must not contain control characters")
    return value


def _webhook_url(value: str, path: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ConfigError(path, f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(path, "must be an http:// or https:// URL with a host")
    return value


def parse(raw: Mapping[str, Any], config: Config) -> QuickomSettings:
    """Validate the ``[quickom]`` section (raises :class:`ConfigError` with the key path)."""
    section = _check_keys(raw, NAME, _SECTION_KEYS)
    attempts = section.get("webhook_max_attempts", 20)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ConfigError(f"{NAME}.webhook_max_attempts", "must be an integer from 1 to 100")
    max_age = section.get("new_calls_max_age", 7 * 86400)
    if isinstance(max_age, bool) or not isinstance(max_age, int | float) \
            or not 60 <= max_age <= 366 * 86400:
        raise ConfigError(f"{NAME}.new_calls_max_age",
                          "must be a number of seconds from 60 to 31622400")
    tenants_raw = section.get("tenants")
    if not isinstance(tenants_raw, list) or not tenants_raw:
        raise ConfigError(f"{NAME}.tenants", "must be a non-empty array of tables")
    ext_tenants = {e.tenant for e in config.extensions}
    country = config.calls.default_country
    seen_tenants: set[str] = set()
    seen_keys: set[str] = set()
    tenants: list[QuickomTenant] = []
    for i, item in enumerate(tenants_raw):
        path = f"{NAME}.tenants[{i}]"
        table = _check_keys(item, path, _TENANT_KEYS)
        name = _string(table, path, "tenant", required=False, default="default") or "default"
        if name in seen_tenants:
            raise ConfigError(f"{path}.tenant", f"tenant {name!r} is configured twice")
        if name not in ext_tenants:
            raise ConfigError(f"{path}.tenant", f"no extension belongs to tenant {name!r}")
        seen_tenants.add(name)
        keys_raw = table.get("api_keys")
        if not isinstance(keys_raw, list) or not keys_raw:
            raise ConfigError(f"{path}.api_keys", "must be a non-empty array of strings")
        keys: list[str] = []
        for k, key in enumerate(keys_raw):
            if not isinstance(key, str) or not key.strip() or key != key.strip() \
                    or any(ord(ch) < 33 for ch in key):
                raise ConfigError(f"{path}.api_keys[{k}]",
                                  "must be a non-empty string without blanks")
            if key in seen_keys:
                raise ConfigError(f"{path}.api_keys[{k}]", "this key is used twice")
            seen_keys.add(key)
            keys.append(key)
        secret = _string(table, path, "signing_secret", required=True)
        url = table.get("webhook_url")
        if url is not None:
            if not isinstance(url, str):
                raise ConfigError(f"{path}.webhook_url", "must be a string")
            url = _webhook_url(url, f"{path}.webhook_url")
        customers_raw = table.get("customers", [])
        if not isinstance(customers_raw, list):
            raise ConfigError(f"{path}.customers", "must be an array of tables")
        customers: list[Customer] = []
        ids: set[str] = set()
        numbers: set[str] = set()
        for c, entry in enumerate(customers_raw):
            cpath = f"{path}.customers[{c}]"
            ctable = _check_keys(entry, cpath, _CUSTOMER_KEYS)
            cid = _string(ctable, cpath, "customer_id", required=True)
            if cid in ids:
                raise ConfigError(f"{cpath}.customer_id", f"customer {cid!r} is listed twice")
            ids.add(cid)
            number_raw = _string(ctable, cpath, "phone_number", required=True)
            # Written as people write numbers: blanks, dashes, dots and brackets are fine.
            number = to_e164(re.sub(r"[\s().-]", "", number_raw), country)
            if number is None:
                raise ConfigError(f"{cpath}.phone_number",
                                  f"{number_raw!r} is not a valid phone number")
            if number in numbers:
                raise ConfigError(f"{cpath}.phone_number", f"{number} is listed twice")
            numbers.add(number)
            customers.append(Customer(
                customer_id=cid, phone_number=number,
                name=_string(ctable, cpath, "name", required=False),
                email=_string(ctable, cpath, "email", required=False),
            ))
        tenants.append(QuickomTenant(tenant=name, api_keys=tuple(keys), signing_secret=secret,
                                     webhook_url=url, customers=tuple(customers)))
    return QuickomSettings(tenants=tuple(tenants), webhook_max_attempts=attempts,
                           new_calls_max_age=float(max_age))


# --------------------------------------------------------------------------- signature


def signature_data(info: Mapping[str, Any]) -> str:
    """The signed string: ``call_id + start_time + end_time + customer_id + member_id``.

    Integers are written in decimal without sign padding or fraction, strings as they are in
    the body (UTF-8), and a missing value is the empty string.
    """
    customer = info.get("customer_info") or {}
    member = info.get("callee_info") or {}

    def text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(int(value))
        return str(value)

    return "".join(text(v) for v in (
        info.get("call_id"), info.get("start_time"), info.get("end_time"),
        customer.get("customer_id"), member.get("member_id"),
    ))


def signature(secret: str, info: Mapping[str, Any]) -> str:
    """The ``Signature`` header: lower-case hex HMAC-SHA256(secret, :func:`signature_data`)."""
    return hmac.new(secret.encode(), signature_data(info).encode(), hashlib.sha256).hexdigest()


def webhook_body(request_id: str, info: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed: ``{"request_id": ..., **info}`` as compact JSON."""
    return json.dumps({"request_id": request_id, **info}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode()


# --------------------------------------------------------------------------- mapping


def _user_of(target: object) -> str:
    """The user part of a SIP URI (``sip:1001@host`` -> ``1001``), or the text itself."""
    text = str(target or "")
    if text.startswith(("sip:", "sips:")):
        rest = text.split(":", 1)[1]
        return rest.split("@", 1)[0] if "@" in rest else ""
    return text


def _seconds(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


@dataclass(slots=True)
class _Open:
    """A call that may still be "new": not returned by /call/new, webhook not delivered."""

    tenant: str
    started_at: float
    outbox_id: str | None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class QuickomFrontend:
    """The installed front-end: CDR sink, webhook enqueueing and the HTTP routes."""

    def __init__(self, sw: Switch, settings: QuickomSettings) -> None:
        self.sw = sw
        self.settings = settings
        self.tenants = {t.tenant: t for t in settings.tenants}
        self._keys = [(k, t.tenant) for t in settings.tenants for k in t.api_keys]
        self._extensions: dict[str, Extension] = {
            e.number: e for e in sw.config.extensions if e.tenant in self.tenants
        }
        self._all_extensions = {e.number for e in sw.config.extensions}
        self._open: dict[str, _Open] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # /call/new marks what it returns; one at a time so two polls never share a call.
        self._new_lock = asyncio.Lock()

    # ------------------------------------------------------------------ mapping a call

    def describe(self, cdr: Mapping[str, Any]) -> tuple[QuickomTenant, dict[str, Any]] | None:
        """The tenant and Quickom call info of a CDR, or None when the call has no member
        of a configured tenant or no outside party."""
        legs = [leg for leg in cdr.get("legs") or [] if isinstance(leg, Mapping)]
        answered = [_user_of(leg.get("target")) for leg in legs
                    if leg.get("outcome") == "answered"]
        others = [_user_of(leg.get("target")) for leg in legs]
        callee, caller = str(cdr.get("callee") or ""), str(cdr.get("caller") or "")
        # The member: preferably the extension that answered; else the one called.
        member = next((self._extensions[p] for p in [*answered, callee, *others, caller]
                       if p in self._extensions), None)
        if member is None:
            return None
        # The customer: the called outside number, or the caller from outside.
        outside = next((p for p in [callee, *others, caller]
                        if p not in self._all_extensions and p.lower() not in _NOT_A_PARTY),
                       None)
        if outside is None:
            return None  # an internal call: no customer
        tenant = self.tenants[member.tenant]
        country = self.sw.config.calls.default_country
        e164 = to_e164(outside, country)
        known = tenant.customer_by_number(e164) if e164 else None
        variables = cdr.get("variables") or {}
        customer = {
            "customer_id": str(variables.get("quickom_customer_id")
                               or (known.customer_id if known else "")),
            "name": str(variables.get("quickom_customer_name")
                        or (known.name if known else "")
                        or (cdr.get("caller_id_name") if outside == caller else "") or ""),
            "phone_number": e164 or (outside if _NUMBER.match(outside) else ""),
            "email": str(variables.get("quickom_customer_email")
                         or (known.email if known else "")),
        }
        records = []
        ended = cdr.get("ended_at")
        for rec in cdr.get("recordings") or []:
            start = rec.get("start")
            duration = rec.get("duration") or 0.0
            end = start + duration if isinstance(start, int | float) else None
            if end is not None and isinstance(ended, int | float):
                # The recorder's length counts whole 20 ms frames, so it can run a few
                # milliseconds past the BYE; a recording never outlasts its call.
                end = min(end, ended)
            records.append({
                "record_id": str(rec.get("id")),
                "start_time": _seconds(start),
                "end_time": _seconds(end),
            })
        info = {
            "call_id": str(cdr["call_id"]),
            "start_time": _seconds(cdr.get("started_at")),
            "end_time": _seconds(cdr.get("ended_at")),
            "customer_info": customer,
            "callee_info": {
                "member_id": member.number,
                "name": member.name,
                "email": member.email,
                "phone_number": member.number,
            },
            "has_record": bool(records),
            "record_number": len(records),
            "record_files": records,
        }
        return tenant, info

    # ------------------------------------------------------------------ call end

    def on_cdr(self, cdr: dict[str, Any]) -> None:
        """CDR sink: attach the Quickom state to the CDR and enqueue the webhook.

        The state is added to the CDR dict itself, synchronously, so the switch's own CDR
        writer (an earlier sink whose write runs after this returns) stores it with the CDR
        in one row: a crash can never leave a stored call without its Quickom state.
        """
        try:
            described = self.describe(cdr)
        except Exception:
            log.exception("quickom: cannot map call %s", cdr.get("call_id"))
            return
        if described is None:
            return
        tenant, info = described
        request_id = uuid.uuid4().hex
        outbox_id = f"{request_id}:{OUTBOX_TARGET}" if tenant.webhook_url else None
        state = {"tenant": tenant.tenant, "request_id": request_id, "outbox_id": outbox_id,
                 "returned_at": None, "info": info}
        cdr[STATE_KEY] = state
        self._open[info["call_id"]] = _Open(tenant.tenant, float(cdr.get("started_at") or 0.0),
                                            outbox_id)
        if tenant.webhook_url:
            self._spawn(self._enqueue(tenant, state))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue(self, tenant: QuickomTenant, state: Mapping[str, Any]) -> None:
        """Write the webhook to the durable outbox (idempotent: same request id, same item).

        The body and its signature are fixed now, so every retry sends the same bytes."""
        assert tenant.webhook_url is not None
        info = state["info"]
        request_id = str(state["request_id"])
        body = webhook_body(request_id, info)
        try:
            await self.sw.webhooks.send(
                tenant.webhook_url, {"request_id": request_id, **info}, event_id=request_id,
                body=body, headers={"Signature": signature(tenant.signing_secret, info)},
                target=OUTBOX_TARGET, max_attempts=self.settings.webhook_max_attempts,
            )
        except Exception as exc:
            # The call stays "new" (and is re-enqueued at the next start): not lost.
            log.warning("quickom: webhook for call %s not queued: %s", info.get("call_id"), exc)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Rebuild the index of "new" calls from the stored CDRs, and queue again any
        webhook whose outbox row is missing (a crash between the CDR and the outbox)."""
        cutoff = self.sw.clock.now() - self.settings.new_calls_max_age
        offset = 0
        while True:
            page = await self.sw.store.list_cdrs(limit=500, offset=offset, since=cutoff)
            for cdr in page:
                await self._reopen(cdr)
            if len(page) < 500:
                break
            offset += len(page)

    async def _reopen(self, cdr: Mapping[str, Any]) -> None:
        state = cdr.get(STATE_KEY)
        if not isinstance(state, Mapping) or state.get("returned_at") is not None:
            return
        tenant = self.tenants.get(str(state.get("tenant")))
        info = state.get("info")
        if tenant is None or not isinstance(info, Mapping):
            return
        outbox_id = state.get("outbox_id")
        if outbox_id:
            item = await self.sw.store.outbox_get(str(outbox_id))
            if item is not None and item.state == "delivered":
                return
            if item is None and tenant.webhook_url:
                await self._enqueue(tenant, state)
        self._open[str(info["call_id"])] = _Open(
            tenant.tenant, float(cdr.get("started_at") or 0.0),
            str(outbox_id) if outbox_id else None)

    async def stop(self) -> None:
        """Let webhooks being queued reach the outbox before the store closes."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    # ------------------------------------------------------------------ lookups

    def _tenant_of_key(self, request: Request) -> str | None:
        value = request.headers.get("authorization", "").strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not value:
            return None
        found = None
        for key, tenant in self._keys:
            # Compare against every key so timing does not tell which prefix matched.
            if hmac.compare_digest(key.encode(), value.encode()):
                found = tenant
        return found

    async def _load(self, call_id: str) -> dict[str, Any] | None:
        """The CDR (with our state) of a call: the in-memory copy of a call that just ended,
        else the store's."""
        recent = self.sw.recent_cdrs.get(call_id)
        if recent is not None and isinstance(recent.get(STATE_KEY), Mapping):
            return dict(recent)
        return await self.sw.store.get_cdr(call_id)

    async def _call_for(self, request: Request) -> tuple[dict[str, Any], dict[str, Any]] \
            | JSONResponse:
        """Authenticate and find ``call_id``: (CDR, state) or the error to answer."""
        tenant = self._tenant_of_key(request)
        if tenant is None:
            return _error(401, "unauthorized", "missing or wrong API key in Authorization")
        call_id = request.query_params.get("call_id", "")
        if not call_id:
            return _error(400, "invalid_request", "call_id is required")
        if not _CALL_ID.match(call_id):
            return _error(404, "unknown_call", f"no such call: {call_id[:200]}")
        cdr = await self._load(call_id)
        state = cdr.get(STATE_KEY) if cdr is not None else None
        if cdr is None or not isinstance(state, dict) or state.get("tenant") != tenant \
                or not isinstance(state.get("info"), dict):
            # Another tenant's call answers exactly like an unknown one.
            return _error(404, "unknown_call", f"no such call: {call_id}")
        return cdr, state

    # ------------------------------------------------------------------ HTTP

    def install_routes(self, app: FastAPI, sw: Switch) -> None:
        """Add the ``/api/enterprise/call/...`` routes."""
        router = APIRouter(prefix="/api/enterprise/call", tags=["quickom"])
        router.add_api_route("/detail", self.detail, methods=["GET"])
        router.add_api_route("/new", self.new_calls, methods=["GET"])
        router.add_api_route("/record/download", self.download, methods=["GET"])
        app.include_router(router)

    async def detail(self, request: Request) -> Response:
        """``GET /api/enterprise/call/detail?call_id=``: the call's Quickom info."""
        found = await self._call_for(request)
        if isinstance(found, JSONResponse):
            return found
        return JSONResponse(found[1]["info"])

    async def new_calls(self, request: Request) -> Response:
        """``GET /api/enterprise/call/new?limit=N``: calls whose webhook was not
        acknowledged and that were not returned here before, oldest first."""
        tenant = self._tenant_of_key(request)
        if tenant is None:
            return _error(401, "unauthorized", "missing or wrong API key in Authorization")
        raw = request.query_params.get("limit")
        if raw is None:
            limit = DEFAULT_LIMIT
        elif _DIGITS.match(raw.strip()) and 1 <= int(raw.strip()) <= MAX_LIMIT:
            limit = int(raw.strip())
        else:
            return _error(400, "invalid_limit",
                          f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw[:20]!r}")
        async with self._new_lock:
            return JSONResponse(await self._take_new(tenant, limit))

    async def _take_new(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        cutoff = self.sw.clock.now() - self.settings.new_calls_max_age
        candidates = sorted(
            ((call_id, entry) for call_id, entry in self._open.items()
             if entry.tenant == tenant),
            key=lambda pair: (pair[1].started_at, pair[0]),
        )
        out: list[dict[str, Any]] = []
        for call_id, entry in candidates:
            if len(out) >= limit:
                break
            if entry.started_at < cutoff:
                self._open.pop(call_id, None)
                continue
            if entry.outbox_id is not None:
                item = await self.sw.store.outbox_get(entry.outbox_id)
                if item is not None and item.state == "delivered":
                    self._open.pop(call_id, None)  # acknowledged by the receiver
                    continue
            cdr = await self._load(call_id)
            state = cdr.get(STATE_KEY) if cdr is not None else None
            if cdr is None or not isinstance(state, dict):
                continue  # not stored yet: it stays in the index for the next poll
            # Mark it returned durably before answering: it is not returned again.
            state = {**state, "returned_at": self.sw.clock.now()}
            recent = self.sw.recent_cdrs.get(call_id)
            if recent is not None and isinstance(recent.get(STATE_KEY), dict):
                # A CDR write still pending for this call carries the mark too.
                recent[STATE_KEY] = state
            await self.sw.store.add_cdr({**cdr, STATE_KEY: state})
            self._open.pop(call_id, None)
            out.append(state["info"])
        return out

    async def download(self, request: Request) -> Response:
        """``GET /api/enterprise/call/record/download?call_id=&record_index=|record_id=``:
        one record of the call as a streamed WAV."""
        found = await self._call_for(request)
        if isinstance(found, JSONResponse):
            return found
        cdr, state = found
        info = state["info"]
        files = [f for f in info.get("record_files") or [] if isinstance(f, dict)]
        call_id = info["call_id"]
        if not info.get("has_record") or not files:
            return _error(404, "no_record", f"call {call_id} has no record")
        record_id = request.query_params.get("record_id")
        index_raw = request.query_params.get("record_index")
        if record_id:  # record_id wins when both are given
            index = next((i for i, f in enumerate(files) if f.get("record_id") == record_id),
                         None)
            if index is None:
                return _error(404, "unknown_record",
                              f"call {call_id} has no record {record_id[:100]!r}")
        elif index_raw is not None and index_raw != "":
            if not _DIGITS.match(index_raw.strip()):
                return _error(400, "invalid_record_index",
                              f"record_index must be an integer >= 0, not {index_raw[:20]!r}")
            index = int(index_raw.strip())
            if index >= len(files):
                return _error(404, "unknown_record",
                              f"record_index {index} is out of range: call {call_id} has "
                              f"{len(files)} record(s), indexes 0 to {len(files) - 1}")
        else:
            index = 0
        rec_id = str(files[index].get("record_id"))
        path = await self._record_path(cdr, rec_id)
        if path is None:
            return _error(404, "record_unavailable",
                          f"the file of record {rec_id} of call {call_id} is gone")
        # FileResponse streams the file in chunks and sets Content-Length from its size.
        return FileResponse(path, media_type="audio/wav", filename=f"{call_id}-{index}.wav")

    async def _record_path(self, cdr: Mapping[str, Any], rec_id: str) -> Path | None:
        rec = await self.sw.store.get_recording(rec_id)
        raw = rec.get("path") if rec is not None else None
        if not raw:
            raw = next((r.get("path") for r in cdr.get("recordings") or []
                        if isinstance(r, Mapping) and str(r.get("id")) == rec_id), None)
        if not raw:
            return None
        path = Path(str(raw))
        return path if path.is_file() else None


def install(sw: Switch, settings: object) -> None:
    """Wire the front-end into a switch being built (no running loop needed)."""
    assert isinstance(settings, QuickomSettings)
    frontend = QuickomFrontend(sw, settings)
    sw.cdr_sinks.append(frontend.on_cdr)
    sw.on_start.append(frontend.start)
    sw.on_stop.append(frontend.stop)
    sw.http_installers.append(frontend.install_routes)
