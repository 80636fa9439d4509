"""The native HTTP API (``/v1/...``) and ``/metrics``.

:func:`install_api` adds the routes to the switch's FastAPI application. JSON in and out;
every ``/v1`` request is authenticated with an API key from ``[[api.keys]]``, given as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, and sees only the calls, CDRs,
recordings and scheduled jobs of the key's tenant. Errors always look like::

    {"error": {"code": "invalid_destination", "message": "..."}}

with a 4xx status for bad requests (400 bad input, including body and query validation, 401
no or wrong key, 404 unknown call/leg/job/recording, 409 wrong state, 413 upload too big, 415
wrong content type), 503 when the store is unreachable. ``GET /metrics`` (no key) serves the
Prometheus text format from :mod:`switch.metrics`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from media.prompts import builtin_prompt_names
from media.wav import TELEPHONY_RATE, WavError, load_prompt, read_wav, to_telephony, write_wav
from switch.app import Switch
from switch.b2bua import B2BUA, Call, Leg, LegState
from switch.config import ApiKey
from switch.control import DestinationError, DestinationNotAllowed, split_destinations
from switch.metrics import make_registry
from switch.scheduler import RetryPolicy
from switch.store import StoreError

__all__ = ["ApiError", "find_api_key", "install_api"]

log = logging.getLogger(__name__)

#: Largest prompt upload (the WAV itself).
MAX_PROMPT_BYTES = 20 * 1024 * 1024
_MULTIPART_OVERHEAD = 64 * 1024
_RAW_WAV_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream"})
_UPLOAD_NAME = re.compile(r"^(?:([a-z]{2})/)?([a-z0-9_-]{1,64})$")
_PROMPT_REF = r"^(?:[a-z]{2,3}/)?[A-Za-z0-9_-]{1,64}$"
_NAME = r"^[a-z0-9_-]{1,64}$"
_NUMBER = r"^\+?[0-9]{1,32}$"
_DISPLAY_NAME = r"^[^\x00-\x1f\x7f\"\\<>]{1,64}$"

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable",
}


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as ``{"error": {"code": code, "message": message}}``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class ErrorDetail(BaseModel):
    """The body of an error."""

    code: str = Field(description="Stable snake_case error code, e.g. `invalid_destination`.")
    message: str = Field(description="Human-readable explanation.")
    details: list[dict[str, Any]] | None = Field(
        None, description="For `invalid_request`: one entry per invalid field.")


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


def _error(status: int, code: str, message: str, *, details: list[dict[str, Any]] | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=dict(headers or {}))


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.code, exc.message, headers=exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details: list[dict[str, Any]] = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        details.append({"field": ".".join(loc), "message": str(err.get("msg", "invalid")),
                        "type": str(err.get("type", ""))})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5]) or "invalid request"
    return _error(400, "invalid_request", summary, details=details)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _on_store_error(request: Request, exc: Exception) -> Response:
    log.warning("API request %s %s: store error: %s", request.method, request.url.path, exc)
    return _error(503, "store_unavailable", "the call store is not reachable right now")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("API request %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error")


# --------------------------------------------------------------------------- state and auth


@dataclass
class _ApiState:
    switch: Switch
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any], what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("API background task %s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _state(request: Request) -> _ApiState:
    state = getattr(request.app.state, "softswitch_api", None)
    if not isinstance(state, _ApiState):
        raise RuntimeError("install_api() was not called on this application")
    return state


def _switch(request: Request) -> Switch:
    return _state(request).switch


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="`X-API-Key: <api key>`")


def find_api_key(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The configured key matching ``presented``, or None.

    Keys are compared by their SHA-256 (``key_sha256``, which the config may give instead of
    the key itself, so the file need not hold it), in constant time and against every key:
    neither the time taken nor an early exit tells which key, or how much of one, matched.
    """
    given = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest().encode()
    found: ApiKey | None = None
    for key in keys:
        digest = key.key_sha256 or hashlib.sha256(key.key.encode("utf-8")).hexdigest()
        if hmac.compare_digest(digest.encode(), given) and found is None:
            found = key
    return found


def _tenant(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> str:
    """The tenant of the request's API key (401 when missing or unknown)."""
    keys = _switch(request).config.api.keys
    presented = [v for v in (bearer.credentials if bearer else None, api_key) if v]
    if not presented:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer "
                       "<key> or X-API-Key: <key>)", headers={"WWW-Authenticate": "Bearer"})
    for value in presented:
        key = find_api_key(keys, value)
        if key is not None:
            request.state.api_key = key  # who asked, for the audit log
            return key.tenant
    raise ApiError(401, "unauthorized", "invalid API key",
                   headers={"WWW-Authenticate": "Bearer"})


SwitchDep = Annotated[Switch, Depends(_switch)]
StateDep = Annotated[_ApiState, Depends(_state)]
TenantDep = Annotated[str, Depends(_tenant)]


def _call_tenant(call: Call) -> str:
    return str(call.tags.get("tenant", "default"))


def _active_call(sw: Switch, tenant: str, call_id: str) -> Call | None:
    call = sw.b2bua.calls.get(call_id)
    if call is None or call.ended or _call_tenant(call) != tenant:
        return None
    return call


async def _cdr(sw: Switch, tenant: str, call_id: str) -> dict[str, Any] | None:
    cdr = sw.recent_cdrs.get(call_id)
    if cdr is None:
        cdr = await sw.store.get_cdr(call_id)
    if cdr is None or str(cdr.get("tenant", "default")) != tenant:
        return None
    return cdr


def _leg(sw: Switch, tenant: str, leg_id: str, *, answered: bool = False) -> Leg:
    leg = sw.b2bua.legs.get(leg_id)
    if leg is None or leg.call.ended or _call_tenant(leg.call) != tenant:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}")
    if answered and (leg.state != LegState.CONFIRMED or leg.media is None):
        raise ApiError(409, "leg_not_answered", f"leg {leg_id} is not answered")
    return leg


def _check_prompt(sw: Switch, name: str, language: str | None) -> None:
    try:
        sw.prompts.resolve(name, language)
    except LookupError as exc:
        raise ApiError(400, "unknown_prompt", str(exc)) from None


# --------------------------------------------------------------------------- models


JobState = Literal["pending", "dialing", "done", "failed", "canceled", "unknown"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
VariableValue = Annotated[str, StringConstraints(max_length=1024)]


class CallRequest(_Body):
    """Place a call (``POST /v1/calls``) or describe a scheduled one."""

    destination: str = Field(
        min_length=1, max_length=4096,
        description="Extension, number, `group:x`, `queue:x`; a comma-separated list places "
                    "one call per entry (only in POST /v1/calls).",
        examples=["1001", "+905321234567", "1001,1002"])
    then: str | None = Field(
        None, min_length=1, max_length=256,
        description="Second stage once the first leg answers: extension, number, group, "
                    "queue, `flow:x` or `message:prompt` (a single destination).")
    flow: str | None = Field(None, pattern=_NAME,
                             description="Run this call flow on the answered leg.")
    caller_id: str | None = Field(None, pattern=_NUMBER, description="Caller ID number.")
    caller_name: str | None = Field(None, pattern=_DISPLAY_NAME,
                                    description="Caller ID display name.")
    second_caller_id: str | None = Field(
        None, pattern=_NUMBER, description="Caller ID of the second stage (default caller_id).")
    ring_timeout: float | None = Field(None, gt=0, le=3600, description="Seconds.")
    second_ring_timeout: float | None = Field(None, gt=0, le=3600, description="Seconds.")
    variables: dict[VariableName, VariableValue] | None = Field(
        None, max_length=100, description="Call variables (strings), seen by call flows.")
    record: bool | None = Field(None, description="Record the call (default: the config).")
    answer_on_bridge: bool = False
    max_wait: float = Field(0.0, ge=0, le=600, description="Seconds to wait for the "
                            "tenant's/trunk's limits before failing.")
    external_id: str | None = Field(None, min_length=1, max_length=128,
                                    description="Your reference; copied to the CDR.")


class CallRefOut(BaseModel):
    """One placed call."""

    call_id: str
    leg_id: str
    second_leg_id: str | None
    destination: str


class CallsAccepted(BaseModel):
    """The calls a POST /v1/calls placed."""

    calls: list[CallRefOut]


class BridgeRequest(_Body):
    """Bridge two answered legs."""

    leg_a: str = Field(min_length=1, max_length=64)
    leg_b: str = Field(min_length=1, max_length=64)


class PlayRequest(_Body):
    """Play a prompt to a leg."""

    prompt: str = Field(pattern=_PROMPT_REF, examples=["connecting", "es/connecting"])
    loop: bool = False
    barge_in: bool = False
    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$")


class GatherRequest(_Body):
    """Collect DTMF digits from a leg."""

    prompt: str | None = Field(None, pattern=_PROMPT_REF)
    min_digits: int = Field(1, ge=1, le=128)
    max_digits: int = Field(20, ge=1, le=128)
    first_timeout: float = Field(5.0, gt=0, le=120)
    inter_timeout: float = Field(3.0, gt=0, le=60)
    finish_key: Literal["#", "*", ""] | None = "#"
    tries: int = Field(1, ge=1, le=10)
    invalid_prompt: str | None = Field(None, pattern=_PROMPT_REF)
    pattern: str | None = Field(None, min_length=1, max_length=256,
                                description="Regular expression the digits must match.")
    barge_in: bool = True
    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class DtmfRequest(_Body):
    """Send DTMF digits to a leg."""

    digits: str = Field(pattern=r"^[0-9*#A-D]{1,64}$")
    duration_ms: int = Field(100, ge=40, le=2000)


class TransferRequest(_Body):
    """Blind-transfer a leg."""

    destination: str = Field(min_length=1, max_length=256)
    ring_timeout: float | None = Field(None, gt=0, le=3600)


class RetryEntry(_Body):
    """Retries after one kind of failed attempt."""

    count: int = Field(0, ge=0, le=100)
    interval: float = Field(60.0, ge=0, le=7 * 86400, description="Seconds between tries.")


class RetryRequest(_Body):
    """Retry budgets per outcome."""

    busy: RetryEntry | None = None
    no_answer: RetryEntry | None = None
    failed: RetryEntry | None = None


class ScheduleRequest(_Body):
    """Schedule a call."""

    request: CallRequest
    at: float | str | None = Field(
        None, description="When: Unix seconds, or ISO 8601 with a UTC offset "
                          "(`2030-01-01T09:00:00+03:00`). Default now.")
    retry: RetryRequest | None = None
    service_hours: str | None = Field(None, min_length=1, max_length=64,
                                      description="Name of a [service_hours] calendar.")
    at_least_once: bool = False


# --------------------------------------------------------------------------- helpers


def _check_call_request(sw: Switch, req: CallRequest, *, allow_list: bool,
                        tenant: str | None = None, request: Request | None = None) -> list[str]:
    """Validate a call request; with ``tenant``, every destination is also checked against
    the tenant's destination policy first, so a list is placed entirely or not at all."""
    try:
        entries = split_destinations(req.destination, allow_list=allow_list)
        dests = []
        for entry in entries:
            dest = sw.resolve_destination(entry)
            if dest.kind in ("flow", "message"):
                raise DestinationError(
                    f"a {dest.kind} cannot be called; use it as the second stage ('then')")
            dests.append(dest)
        if req.then is not None:
            dests.append(sw.resolve_destination(req.then))
        for dest in dests if tenant is not None else ():
            try:
                sw.check_policy(str(tenant), dest)
            except DestinationNotAllowed as exc:
                sw.audit_originate("denied", tenant=str(tenant), destination=req.destination,
                                   tags={"requested_by": _requester(request)},
                                   then=req.then, reason=exc.reason)
                raise
    except DestinationNotAllowed as exc:
        raise ApiError(403, "destination_not_allowed", str(exc)) from None
    except DestinationError as exc:
        raise ApiError(400, "invalid_destination", str(exc)) from None
    if req.flow is not None and req.flow not in sw.flows:
        raise ApiError(400, "unknown_flow", f"no such call flow: {req.flow!r}")
    if req.flow is not None and req.then is not None:
        raise ApiError(400, "invalid_request", "give either 'then' or 'flow', not both")
    return entries


def _requester(request: Request | None) -> dict[str, Any]:
    """Who made an HTTP request, for the audit log: the API key's name and the client IP."""
    if request is None:
        return {"via": "api"}
    key = getattr(request.state, "api_key", None)
    return {"via": "api", "api_key": key.name if isinstance(key, ApiKey) else None,
            "client_ip": request.client.host if request.client else None}


def _originate_options(req: CallRequest, tenant: str,
                       request: Request | None = None) -> dict[str, Any]:
    options = req.model_dump(exclude={"destination", "external_id"}, exclude_none=True)
    options["tenant"] = tenant
    tags: dict[str, Any] = {"requested_by": _requester(request)}
    if req.external_id is not None:
        tags["external_id"] = req.external_id
    options["tags"] = tags
    return options


def _call_view(call: Call) -> dict[str, Any]:
    return {
        "call_id": call.id,
        "active": True,
        "tenant": _call_tenant(call),
        "caller": call.caller,
        "callee": call.callee,
        "caller_id_name": call.tags.get("caller_id_name"),
        "started_at": call.started_at,
        "answered_at": call.answered_at,
        "external_id": call.tags.get("external_id"),
        "recording": bool(call.recorders),
        "variables": dict(call.variables),
        "legs": B2BUA.leg_summaries(call),
    }


def _parse_at(value: float | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(400, "invalid_time",
                           f"'at' is not an ISO 8601 date-time: {value!r}") from None
        if when.tzinfo is None or when.utcoffset() is None:
            raise ApiError(400, "invalid_time", "'at' needs a UTC offset (e.g. +00:00 or Z)")
        return when.timestamp()
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise ApiError(400, "invalid_time", "'at' must be Unix seconds")
    return float(value)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large",
                           f"the upload is larger than {MAX_PROMPT_BYTES} octets")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large",
                           f"the upload is larger than {MAX_PROMPT_BYTES} octets")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    parsed = Request(request.scope, receive=replay)
    try:
        form = await parsed.form(max_files=1, max_fields=8)
    except StarletteHTTPException as exc:
        raise ApiError(400, "invalid_multipart", str(exc.detail)) from None
    except Exception as exc:  # python-multipart parse errors
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing_file", "the multipart body has no file field 'file'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > MAX_PROMPT_BYTES:
        raise ApiError(413, "payload_too_large",
                       f"the upload is larger than {MAX_PROMPT_BYTES} octets")
    return data


def _prompt_path(directory: Path, lang: str | None, base: str) -> Path:
    return (directory / lang / f"{base}.wav") if lang else directory / f"{base}.wav"


def _store_prompt(data: bytes, final: Path) -> float:
    """Validate and convert an uploaded WAV to 8 kHz mono and put it at ``final``
    atomically; returns its duration. Raises :class:`WavError` for a bad file (nothing is
    left behind)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    upload = final.parent / f".upload-{tag}.wav"
    converted = final.parent / f".converted-{tag}.wav"
    try:
        upload.write_bytes(data)
        try:
            samples = to_telephony(read_wav(upload))
        except (WavError, ValueError, EOFError) as exc:
            raise WavError(str(exc).replace(str(upload), "upload")) from None
        if len(samples) == 0:
            raise WavError("the WAV file holds no audio")
        write_wav(converted, samples, TELEPHONY_RATE)
        os.replace(converted, final)
    finally:
        upload.unlink(missing_ok=True)
        converted.unlink(missing_ok=True)
    return load_prompt(final).duration


def _restore_prompts(sw: Switch) -> None:
    """Register prompts uploaded before a restart (files under ``api.prompts_dir``) that the
    configuration does not override already."""
    directory = Path(sw.config.api.prompts_dir)
    if not directory.is_dir():
        return
    existing = sw.prompts.overrides
    candidates: list[tuple[str | None, Path]] = [(None, p) for p in directory.glob("*.wav")]
    candidates += [(p.parent.name, p) for p in directory.glob("*/*.wav")]
    for lang, path in candidates:
        name = f"{lang}/{path.stem}" if lang else path.stem
        if _UPLOAD_NAME.match(name) and name not in existing:
            sw.prompts.add(name, path)


# --------------------------------------------------------------------------- routes

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad input"},
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody,
                                                     "description": "Unknown id"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorBody,
                                                    "description": "Wrong state"}}

router = APIRouter(prefix="/v1", responses=_ERRORS)


@router.post("/calls", status_code=202, response_model=CallsAccepted, tags=["calls"])
async def create_calls(body: CallRequest, sw: SwitchDep, tenant: TenantDep,
                       request: Request) -> dict[str, Any]:
    """Place one call per destination (a comma-separated list places several); returns at
    once with the ids, before anything rings. Follow progress with webhooks or
    `GET /v1/calls/{call_id}`."""
    if sw.draining:
        # A graceful shutdown is under way: tell the client to try again (elsewhere/later).
        raise ApiError(503, "shutting_down", "the switch is shutting down; no new calls")
    entries = _check_call_request(sw, body, allow_list=True, tenant=tenant, request=request)
    options = _originate_options(body, tenant, request)
    try:
        refs = [sw.originate(entry, **options) for entry in entries]
    except DestinationNotAllowed as exc:
        raise ApiError(403, "destination_not_allowed", str(exc)) from None
    except DestinationError as exc:
        raise ApiError(400, "invalid_destination", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return {"calls": [{"call_id": r.call_id, "leg_id": r.leg_id,
                       "second_leg_id": r.second_leg_id, "destination": r.destination}
                      for r in refs]}


@router.get("/calls", tags=["calls"])
async def list_calls(sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """The tenant's calls in progress."""
    calls = [_call_view(c) for c in list(sw.b2bua.calls.values())
             if not c.ended and _call_tenant(c) == tenant]
    return {"calls": calls}


@router.get("/calls/{call_id}", tags=["calls"], responses=_NOT_FOUND)
async def get_call(call_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """A call in progress (`"active": true`), or the CDR of an ended one (`"active": false`)."""
    call = _active_call(sw, tenant, call_id)
    if call is not None:
        return _call_view(call)
    cdr = await _cdr(sw, tenant, call_id)
    if cdr is None:
        raise ApiError(404, "unknown_call", f"no such call: {call_id}")
    return {**cdr, "active": False}


async def _hangup(sw: Switch, tenant: str, call_id: str) -> dict[str, Any]:
    call = _active_call(sw, tenant, call_id)
    if call is None:
        if await _cdr(sw, tenant, call_id) is not None:
            raise ApiError(409, "call_ended", f"call {call_id} has ended already")
        raise ApiError(404, "unknown_call", f"no such call: {call_id}")
    try:
        sw.hangup(call_id)
    except KeyError:
        raise ApiError(404, "unknown_call", f"no such call: {call_id}") from None
    return {"call_id": call_id, "status": "hanging_up"}


@router.delete("/calls/{call_id}", tags=["calls"],
               responses={**_NOT_FOUND, **_CONFLICT})
async def delete_call(call_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Hang up a call: BYE to answered legs, CANCEL to ringing ones."""
    return await _hangup(sw, tenant, call_id)


@router.post("/calls/{call_id}/hangup", tags=["calls"],
             responses={**_NOT_FOUND, **_CONFLICT})
async def hangup_call(call_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Same as `DELETE /v1/calls/{call_id}`."""
    return await _hangup(sw, tenant, call_id)


@router.post("/calls/{call_id}/record", tags=["calls"], responses={**_NOT_FOUND, **_CONFLICT})
async def record_call(call_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Start recording a call (stereo, one channel per leg). The recording is listed under
    `/v1/recordings?call_id=` once the call has ended."""
    call = _active_call(sw, tenant, call_id)
    if call is None:
        raise ApiError(404, "unknown_call", f"no such call: {call_id}")
    if call.recorders:
        raise ApiError(409, "already_recording", f"call {call_id} is being recorded already")
    try:
        path = sw.record(call_id)
    except KeyError:
        raise ApiError(404, "unknown_call", f"no such call: {call_id}") from None
    except (ValueError, RuntimeError) as exc:
        raise ApiError(409, "cannot_record", str(exc)) from None
    return {"call_id": call_id, "path": str(path)}


@router.post("/bridge", tags=["legs"], responses={**_NOT_FOUND, **_CONFLICT})
async def bridge_legs(body: BridgeRequest, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Bridge two answered legs (of one call or of two calls, which then become one)."""
    if body.leg_a == body.leg_b:
        raise ApiError(400, "invalid_request", "cannot bridge a leg to itself")
    a = _leg(sw, tenant, body.leg_a)
    _leg(sw, tenant, body.leg_b)
    for leg_id in (body.leg_a, body.leg_b):
        _leg(sw, tenant, leg_id, answered=True)
    try:
        sw.bridge(body.leg_a, body.leg_b)
    except KeyError as exc:
        raise ApiError(404, "unknown_leg", str(exc).strip("'\"")) from None
    except ValueError as exc:
        raise ApiError(409, "leg_not_answered", str(exc)) from None
    return {"call_id": a.call.id, "leg_a": body.leg_a, "leg_b": body.leg_b}


@router.post("/legs/{leg_id}/play", status_code=202, tags=["legs"],
             responses={**_NOT_FOUND, **_CONFLICT})
async def play_prompt(leg_id: str, body: PlayRequest, sw: SwitchDep,
                      tenant: TenantDep) -> dict[str, Any]:
    """Start playing a prompt to an answered leg (queued after any prompt playing)."""
    _leg(sw, tenant, leg_id, answered=True)
    _check_prompt(sw, body.prompt, body.language)
    try:
        sw.play(leg_id, body.prompt, loop=body.loop, barge_in=body.barge_in,
                language=body.language)
    except KeyError:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}") from None
    except RuntimeError as exc:
        raise ApiError(409, "leg_not_answered", str(exc)) from None
    except (LookupError, WavError) as exc:
        raise ApiError(400, "unknown_prompt", str(exc)) from None
    return {"leg_id": leg_id, "prompt": body.prompt, "status": "playing"}


@router.post("/legs/{leg_id}/stop", tags=["legs"], responses=_NOT_FOUND)
async def stop_playback(leg_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Stop every prompt playing or queued for a leg."""
    _leg(sw, tenant, leg_id)
    try:
        sw.stop_playback(leg_id)
    except KeyError:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}") from None
    return {"leg_id": leg_id, "status": "stopped"}


@router.post("/legs/{leg_id}/gather", tags=["legs"], responses={**_NOT_FOUND, **_CONFLICT})
async def gather_digits(leg_id: str, body: GatherRequest, sw: SwitchDep,
                        tenant: TenantDep) -> dict[str, Any]:
    """Play `prompt` (optional) and collect DTMF digits; answers when done. `digits` is ""
    when nothing valid was entered or the leg hung up."""
    if body.min_digits > body.max_digits:
        raise ApiError(400, "invalid_request", "min_digits must not exceed max_digits")
    _leg(sw, tenant, leg_id, answered=True)
    for name in (body.prompt, body.invalid_prompt):
        if name is not None:
            _check_prompt(sw, name, body.language)
    try:
        digits = await sw.gather(
            leg_id, prompt=body.prompt, min_digits=body.min_digits,
            max_digits=body.max_digits, first_timeout=body.first_timeout,
            inter_timeout=body.inter_timeout, finish_key=body.finish_key, tries=body.tries,
            invalid_prompt=body.invalid_prompt, pattern=body.pattern, barge_in=body.barge_in,
            language=body.language,
        )
    except KeyError:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}") from None
    except RuntimeError as exc:
        raise ApiError(409, "leg_not_answered", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return {"leg_id": leg_id, "digits": digits}


@router.post("/legs/{leg_id}/dtmf", status_code=202, tags=["legs"],
             responses={**_NOT_FOUND, **_CONFLICT})
async def send_dtmf(leg_id: str, body: DtmfRequest, sw: SwitchDep,
                    tenant: TenantDep) -> dict[str, Any]:
    """Send DTMF digits to an answered leg (RFC 4733 when negotiated, else in-band)."""
    _leg(sw, tenant, leg_id, answered=True)
    try:
        seconds = sw.send_dtmf(leg_id, body.digits, duration_ms=body.duration_ms)
    except KeyError:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}") from None
    except RuntimeError as exc:
        raise ApiError(409, "leg_not_answered", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return {"leg_id": leg_id, "digits": body.digits, "seconds": seconds}


@router.post("/legs/{leg_id}/transfer", status_code=202, tags=["legs"],
             responses={**_NOT_FOUND, **_CONFLICT})
async def transfer_leg(leg_id: str, body: TransferRequest, state: StateDep,
                       tenant: TenantDep) -> dict[str, Any]:
    """Blind transfer: the leg's partner is hung up and the leg is connected to
    `destination`. Answers once the transfer has started; its outcome shows in the call's
    events and CDR."""
    sw = state.switch
    _leg(sw, tenant, leg_id, answered=True)
    try:
        sw.check_policy(tenant, sw.resolve_destination(body.destination))
    except DestinationNotAllowed as exc:
        raise ApiError(403, "destination_not_allowed", str(exc)) from None
    except DestinationError as exc:
        raise ApiError(400, "invalid_destination", str(exc)) from None
    state.spawn(sw.transfer(leg_id, body.destination, ring_timeout=body.ring_timeout),
                f"transfer of leg {leg_id}")
    return {"leg_id": leg_id, "destination": body.destination, "status": "transferring"}


@router.post("/legs/{leg_id}/hangup", tags=["legs"], responses=_NOT_FOUND)
async def hangup_leg(leg_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Hang up one leg; the call ends when no leg is left."""
    _leg(sw, tenant, leg_id)
    try:
        sw.hangup_leg(leg_id)
    except KeyError:
        raise ApiError(404, "unknown_leg", f"no such leg: {leg_id}") from None
    return {"leg_id": leg_id, "status": "hanging_up"}


@router.get("/cdrs", tags=["cdrs"])
async def list_cdrs(
    sw: SwitchDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    since: Annotated[float | None, Query(allow_inf_nan=False,
                                         description="Unix seconds, started_at >= since")] = None,
    until: Annotated[float | None, Query(allow_inf_nan=False,
                                         description="Unix seconds, started_at < until")] = None,
    outcome: Annotated[str | None, Query(pattern=r"^[a-z_-]{1,32}$")] = None,
    external_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """The tenant's stored CDRs, newest first."""
    cdrs = await sw.store.list_cdrs(limit=limit, offset=offset, since=since, until=until,
                                    tenant=tenant, outcome=outcome, external_id=external_id)
    return {"cdrs": cdrs, "limit": limit, "offset": offset}


@router.get("/audit", tags=["audit"])
async def list_audit(
    sw: SwitchDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    since: Annotated[float | None, Query(allow_inf_nan=False,
                                         description="Unix seconds, time >= since")] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z_.-]{1,32}$")] = None,
) -> dict[str, Any]:
    """The tenant's audit log, newest first: every call placed or refused on request, with who
    asked (API key name, client IP, front-end, scheduled job) and the answer."""
    entries = await sw.store.list_audit(tenant=tenant, since=since, action=action, limit=limit)
    return {"entries": entries, "limit": limit}


@router.get("/cdrs/{call_id}", tags=["cdrs"], responses=_NOT_FOUND)
async def get_cdr(call_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """The CDR of an ended call."""
    cdr = await _cdr(sw, tenant, call_id)
    if cdr is None:
        raise ApiError(404, "unknown_cdr", f"no CDR for call {call_id}")
    return cdr


async def _recording_tenant(sw: Switch, call_id: str) -> str | None:
    call = sw.b2bua.calls.get(call_id)
    if call is not None:
        return _call_tenant(call)
    cdr = sw.recent_cdrs.get(call_id) or await sw.store.get_cdr(call_id)
    return None if cdr is None else str(cdr.get("tenant", "default"))


def _recent_recording(sw: Switch, recording_id: str) -> dict[str, Any] | None:
    """A recording of a call that ended so recently that the store may not have it yet."""
    for cdr in reversed(list(sw.recent_cdrs.values())):
        for rec in cdr.get("recordings") or ():
            if isinstance(rec, dict) and str(rec.get("id")) == recording_id:
                return {**rec, "call_id": cdr.get("call_id")}
    return None


def _recording_view(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    out["url"] = f"/v1/recordings/{rec.get('id')}"
    return out


@router.get("/recordings", tags=["recordings"])
async def list_recordings(
    sw: SwitchDep,
    tenant: TenantDep,
    call_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The tenant's recordings (metadata), newest first, optionally of one call."""
    rows = await sw.store.list_recordings(call_id=call_id, limit=limit)
    tenants: dict[str, str | None] = {}
    out: list[dict[str, Any]] = []
    for rec in rows:
        cid = str(rec.get("call_id"))
        if cid not in tenants:
            tenants[cid] = await _recording_tenant(sw, cid)
        if tenants[cid] == tenant:
            out.append(_recording_view(rec))
    return {"recordings": out}


@router.get("/recordings/{recording_id}", tags=["recordings"], response_class=FileResponse,
            responses={**_NOT_FOUND, 200: {"content": {"audio/wav": {}},
                                           "description": "The WAV file"}})
async def get_recording(recording_id: str, sw: SwitchDep, tenant: TenantDep) -> FileResponse:
    """Download a recording (`audio/wav`)."""
    rec = await sw.store.get_recording(recording_id) or _recent_recording(sw, recording_id)
    if rec is None or await _recording_tenant(sw, str(rec.get("call_id"))) != tenant:
        raise ApiError(404, "unknown_recording", f"no such recording: {recording_id}")
    path = Path(str(rec.get("path") or ""))
    if not rec.get("path") or not path.is_file():
        raise ApiError(404, "unknown_recording",
                       f"the file of recording {recording_id} is gone")
    return FileResponse(path, media_type="audio/wav", filename=f"{recording_id}.wav")


@router.post("/schedule", status_code=201, tags=["schedule"])
async def create_job(body: ScheduleRequest, sw: SwitchDep, tenant: TenantDep,
                     request: Request) -> dict[str, Any]:
    """Schedule a call for later (or now), with retries and service hours. The request is
    validated now, so a bad destination fails here rather than at dialling time."""
    _check_call_request(sw, body.request, allow_list=False, tenant=tenant, request=request)
    at = _parse_at(body.at)
    retry: RetryPolicy | None = None
    if body.retry is not None:
        raw = {k: v for k, v in body.retry.model_dump(exclude_none=True).items()}
        try:
            retry = RetryPolicy.from_dict(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_retry", str(exc)) from None
    job_request = _originate_options(body.request, tenant, request)
    job_request["destination"] = body.request.destination
    if body.service_hours is not None and body.service_hours not in sw.calendars:
        raise ApiError(400, "unknown_service_hours",
                       f"no such service hours calendar: {body.service_hours!r}")
    try:
        job_id = await sw.scheduler.schedule(job_request, at=at, retry=retry,
                                             service_hours=body.service_hours,
                                             at_least_once=body.at_least_once)
    except ValueError as exc:
        raise ApiError(400, "invalid_schedule", str(exc)) from None
    job = await sw.scheduler.get(job_id)
    return {"job_id": job_id, "state": job["state"] if job else "pending",
            "due_at": job["due_at"] if job else at}


def _job_tenant(job: Mapping[str, Any]) -> str:
    request = job.get("request") or {}
    return str(request.get("tenant", "default")) if isinstance(request, dict) else "default"


async def _job(sw: Switch, tenant: str, job_id: str) -> dict[str, Any]:
    job = await sw.scheduler.get(job_id)
    if job is None or _job_tenant(job) != tenant:
        raise ApiError(404, "unknown_job", f"no such scheduled job: {job_id}")
    return job


@router.get("/schedule", tags=["schedule"])
async def list_jobs(
    sw: SwitchDep,
    tenant: TenantDep,
    state: Annotated[list[JobState] | None,
                     Query(description="Only jobs in these states (repeatable).")] = None,
) -> dict[str, Any]:
    """The tenant's scheduled jobs, earliest due first."""
    jobs = await sw.scheduler.list(states=state)
    return {"jobs": [j for j in jobs if _job_tenant(j) == tenant]}


@router.get("/schedule/{job_id}", tags=["schedule"], responses=_NOT_FOUND)
async def get_job(job_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """One scheduled job with its attempts."""
    return await _job(sw, tenant, job_id)


@router.delete("/schedule/{job_id}", tags=["schedule"], responses={**_NOT_FOUND, **_CONFLICT})
async def cancel_job(job_id: str, sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Cancel a pending job (409 once it is dialling or finished)."""
    job = await _job(sw, tenant, job_id)
    if not await sw.scheduler.cancel(job_id):
        current = await sw.scheduler.get(job_id)
        state = current["state"] if current else job["state"]
        raise ApiError(409, "job_not_pending", f"job {job_id} is {state}, not pending")
    return {"job_id": job_id, "state": "canceled"}


@router.get("/prompts", tags=["prompts"])
async def list_prompts(sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Every prompt name: built-in ones and uploaded or configured ones (`custom`)."""
    custom = set(sw.prompts.overrides)
    names = sorted(set(builtin_prompt_names()) | custom)
    return {"prompts": [{"name": n, "source": "custom" if n in custom else "builtin"}
                        for n in names]}


@router.put(
    "/prompts/{name:path}", tags=["prompts"],
    responses={413: {"model": ErrorBody, "description": "Larger than 20 MB"},
               415: {"model": ErrorBody, "description": "Not a WAV upload"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}},
    }}},
)
async def put_prompt(name: str, request: Request, sw: SwitchDep,
                     tenant: TenantDep) -> JSONResponse:
    """Upload a prompt (a WAV file, any rate/channels, converted to 8 kHz mono) as the raw
    body (`audio/wav`, `audio/x-wav`, `application/octet-stream`) or as the multipart field
    `file`. `name` is `[a-z0-9_-]{1,64}`, optionally with a language prefix (`es/welcome`).
    Replaces a prompt of that name (built-in ones too) for every tenant. 201 when new, 200
    when replaced."""
    match = _UPLOAD_NAME.match(name)
    if match is None:
        raise ApiError(400, "invalid_prompt_name",
                       "prompt names are [a-z0-9_-]{1,64}, optionally prefixed 'xx/'")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in _RAW_WAV_TYPES:
        data = await _read_body(request, MAX_PROMPT_BYTES)
    elif ctype == "multipart/form-data":
        raw = await _read_body(request, MAX_PROMPT_BYTES + _MULTIPART_OVERHEAD)
        data = await _multipart_file(request, raw)
    else:
        raise ApiError(415, "unsupported_media_type",
                       "send the WAV as audio/wav, application/octet-stream or "
                       "multipart/form-data (field 'file')")
    if not data:
        raise ApiError(400, "invalid_wav", "the upload is empty")
    lang, base = match.group(1), match.group(2)
    final = _prompt_path(Path(sw.config.api.prompts_dir), lang, base)
    created = name not in sw.prompts.overrides
    try:
        duration = await asyncio.to_thread(_store_prompt, data, final)
    except WavError as exc:
        raise ApiError(400, "invalid_wav", f"not a usable WAV file: {exc}") from None
    sw.prompts.add(name, final)
    return JSONResponse({"name": name, "duration": round(duration, 3)},
                        status_code=201 if created else 200)


@router.get("/registrations", tags=["registrations"])
async def list_registrations(sw: SwitchDep, tenant: TenantDep) -> dict[str, Any]:
    """Live registered contacts of the extensions (not tenant-scoped)."""
    now = asyncio.get_running_loop().time()
    return {"registrations": [
        {"aor": b.aor, "contact": b.contact, "expires_in": max(0, round(b.expires_at - now)),
         "transport": b.transport, "source": f"{b.source[0]}:{b.source[1]}",
         "user_agent": b.user_agent}
        for b in sw.location.all(now)
    ]}


# --------------------------------------------------------------------------- installation

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def install_api(app: FastAPI, switch: Switch) -> None:
    """Add the ``/v1`` API, ``/metrics`` and the JSON error handlers to ``app``.

    Also registers prompts uploaded before a restart (WAV files under ``api.prompts_dir``).
    """
    app.state.softswitch_api = _ApiState(switch)
    handlers: list[tuple[type[Exception], ExceptionHandler]] = [
        (ApiError, _on_api_error),
        (RequestValidationError, _on_validation_error),
        (StarletteHTTPException, _on_http_error),
        (StoreError, _on_store_error),
        (Exception, _on_unexpected),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
    app.include_router(router)

    registry = make_registry(switch)

    async def metrics() -> Response:
        """Prometheus metrics of this switch (text exposition format, no API key)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["metrics"],
                      response_class=Response,
                      responses={200: {"content": {"text/plain": {}}}})
    try:
        _restore_prompts(switch)
    except OSError:
        log.exception("registering uploaded prompts from %s failed",
                      switch.config.api.prompts_dir)
