"""Hipcall quick dial ("quick search"): dial a code, the switch asks a web service whom to call.

A quick dial entry is a number (10-9999) answered by the switch itself. A caller who dials it
hears the entry's announcement ("Please enter the order number"), types a code with DTMF
(barge-in, finished by ``#`` or the inter-digit timeout), and the switch POSTs::

    {"number": "+902121234567", "user_id": 1001, "uuid": "<call id>", "code": 12345,
     "timestamp": 1719843672}

to the entry's URL (HTTP Basic auth when configured). A 200 answer ``{"destination":
"90532XXXXXXX"}`` (a number with its country code, or an internal extension) is dialled and
bridged to the caller after the "connecting" prompt; the caller never sees the destination
(the B2BUA answers leg A itself and nothing of leg B reaches it). Any failure (status not 200,
no answer within ``timeout`` seconds — 3 by default, as the vendor documents —, Basic auth
rejected, malformed JSON, no ``destination``, not a valid phone number) plays the failure
prompt and hangs up. The code, the lookup's result and timing, the destination and the
failure reason land in the call's CDR (``variables.quickdial_*``).

Configuration: ``[hipcall]`` with ``entries`` (see :func:`parse`); at run time the entries are
managed under ``/v1/hipcall/entries`` with the native API's keys (kept in memory: a restart
goes back to the configuration).
"""

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import phonenumbers

from media.prompts import PromptLibrary, PromptNotFound
from switch.config import Config, ConfigError
from switch.control import DestinationError
from switch.routing import to_e164

if TYPE_CHECKING:
    from fastapi import FastAPI

    from switch.app import Switch
    from switch.b2bua import Call, Leg

log = logging.getLogger(__name__)

NAME = "hipcall"
#: The vendor's documented limit for the web service's answer, in seconds.
DEFAULT_TIMEOUT = 3.0
#: The most of a web service's answer we read (a destination needs a few dozen octets).
MAX_RESPONSE_BYTES = 64 * 1024
#: JSON integers beyond 2**53 lose precision in many JSON parsers: 15 digits always fit.
MAX_INTEGER_DIGITS = 15
MAX_STRING_DIGITS = 32

_NUMBER_RE = re.compile(r"^[1-9][0-9]{1,3}$")  # 10..9999, written canonically
_PROMPT_NAME_RE = re.compile(r"^(?:[a-z]{2,3}/)?[A-Za-z0-9_-]{1,64}$")
_DESTINATION_RE = re.compile(r"^\+?[0-9]{2,20}$")
_E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ENTRY_KEYS = (
    "number", "announcement", "url", "username", "password", "failure_prompt",
    "connecting_prompt", "timeout", "code_format", "max_digits", "first_timeout",
    "inter_timeout", "ring_timeout", "caller_id",
)

# Lookup results (the CDR's quickdial_status).
OK = "ok"
NO_CODE = "no_code"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
AUTH_REJECTED = "auth_rejected"
UNREACHABLE = "unreachable"
BAD_JSON = "bad_json"
NO_DESTINATION = "no_destination"
INVALID_DESTINATION = "invalid_destination"
NO_ROUTE = "no_route"
NOT_CONNECTED = "not_connected"


@dataclass(frozen=True, slots=True)
class QuickDialEntry:
    """One quick dial number and the web service that names its destinations."""

    number: str
    url: str
    announcement: str = "enter_number"  # a prompt name or (config only) a WAV path
    username: str = ""
    password: str = field(default="", repr=False)
    failure_prompt: str = "unavailable"
    connecting_prompt: str = "connecting"
    timeout: float = DEFAULT_TIMEOUT  # total time allowed for the web service's answer
    code_format: str = "integer"  # "integer" (as documented) or "string" (keeps leading zeros)
    max_digits: int = MAX_INTEGER_DIGITS
    first_timeout: float = 10.0  # after the announcement, for the first digit
    inter_timeout: float = 3.0  # between digits (ends the code without "#")
    ring_timeout: float | None = None  # None: [calls] ring_timeout
    caller_id: str | None = None  # presented to the destination; None: the caller's extension

    def view(self) -> dict[str, Any]:
        """The entry as the API shows it (the password is never echoed)."""
        return {
            "number": self.number, "announcement": self.announcement, "url": self.url,
            "username": self.username, "password_set": bool(self.password),
            "failure_prompt": self.failure_prompt, "connecting_prompt": self.connecting_prompt,
            "timeout": self.timeout, "code_format": self.code_format,
            "max_digits": self.max_digits, "first_timeout": self.first_timeout,
            "inter_timeout": self.inter_timeout, "ring_timeout": self.ring_timeout,
            "caller_id": self.caller_id,
        }


@dataclass(frozen=True, slots=True)
class HipcallSettings:
    """The validated ``[hipcall]`` section."""

    entries: tuple[QuickDialEntry, ...] = ()
    # extension -> its E.164 number, sent as "number" in the lookup
    numbers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class LookupResult:
    """What the web service said, reduced to a destination or a failure."""

    status: str  # OK or one of the failure statuses above
    reason: str = ""
    http_status: int | None = None
    destination: str | None = None  # E.164 ("+90532...") or an extension number
    ms: int = 0


# --------------------------------------------------------------------------- validation


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(raw: Mapping[str, Any], key: str, path: str, default: str, *,
          nonempty: bool = False, limit: int = 256) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{path}.{key}", "must be a string")
    if nonempty and not value:
        raise ConfigError(f"{path}.{key}", "must not be empty")
    if len(value) > limit or any(ch < " " or ch == "\x7f" for ch in value):
        raise ConfigError(f"{path}.{key}", f"must be at most {limit} printable characters")
    return value


def _seconds(raw: Mapping[str, Any], key: str, path: str, default: float | None,
             low: float, high: float) -> float | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not _is_number(value) or not low < float(value) <= high:
        raise ConfigError(f"{path}.{key}", f"must be a number of seconds in ({low:g}, {high:g}]")
    return float(value)


def check_url(url: str, key_path: str) -> str:
    """An http(s) URL with a host and no credentials in it (they go in username/password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(key_path, f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key_path, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise ConfigError(key_path, "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(key_path, "put credentials in username/password, not in the URL")
    if port == 0:
        raise ConfigError(key_path, "the URL's port must be 1..65535")
    return url


def parse_entry(raw: object, path: str, *, reserved: Callable[[str], str | None],
                prompt_ok: Callable[[str], str | None], allow_paths: bool,
                number: str | None = None) -> QuickDialEntry:
    """Validate one entry (from the config or an API request); raises ConfigError.

    ``reserved(number)`` names what already uses a number (None when free);
    ``prompt_ok(name)`` says why a prompt cannot be played (None when it can);
    ``allow_paths``: WAV file paths are accepted (the config) or only prompt names (the API).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a table")
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key")
    value = raw.get("number", number)
    if _is_number(value) and float(value) == int(value):
        value = str(int(value))
    if not isinstance(value, str) or not _NUMBER_RE.match(value):
        raise ConfigError(f"{path}.number", "must be a number from 10 to 9999")
    if number is not None and value != number:
        raise ConfigError(f"{path}.number", "does not match the number in the path")
    used = reserved(value)
    if used is not None:
        raise ConfigError(f"{path}.number", f"{value} is already {used}")
    url = check_url(_text(raw, "url", path, "", nonempty=True, limit=2048), f"{path}.url")
    prompts: dict[str, str] = {}
    for key, default in (("announcement", "enter_number"), ("failure_prompt", "unavailable"),
                         ("connecting_prompt", "connecting")):
        name = _text(raw, key, path, default, nonempty=True, limit=1024)
        is_path = name.lower().endswith(".wav")
        if is_path and not allow_paths:
            raise ConfigError(f"{path}.{key}", "must be a prompt name (upload the WAV with "
                              "PUT /v1/prompts/{name} first)")
        if not is_path and not _PROMPT_NAME_RE.match(name):
            raise ConfigError(f"{path}.{key}", "must be a prompt name or a .wav file path")
        problem = prompt_ok(name)
        if problem is not None:
            raise ConfigError(f"{path}.{key}", problem)
        prompts[key] = name
    username = _text(raw, "username", path, "")
    password = _text(raw, "password", path, "")
    if ":" in username:
        raise ConfigError(f"{path}.username", "must not contain ':' (HTTP Basic auth)")
    if password and not username:
        raise ConfigError(f"{path}.password", "needs a username")
    timeout = _seconds(raw, "timeout", path, DEFAULT_TIMEOUT, 0.0, 30.0)
    assert timeout is not None
    code_format = raw.get("code_format", "integer")
    if code_format not in ("integer", "string"):
        raise ConfigError(f"{path}.code_format", "must be 'integer' or 'string'")
    limit = MAX_INTEGER_DIGITS if code_format == "integer" else MAX_STRING_DIGITS
    max_digits = raw.get("max_digits", limit)
    if not isinstance(max_digits, int) or isinstance(max_digits, bool) \
            or not 1 <= max_digits <= limit:
        raise ConfigError(f"{path}.max_digits", f"must be an integer from 1 to {limit}")
    first_timeout = _seconds(raw, "first_timeout", path, 10.0, 0.0, 120.0)
    inter_timeout = _seconds(raw, "inter_timeout", path, 3.0, 0.0, 60.0)
    assert first_timeout is not None and inter_timeout is not None
    ring_timeout = _seconds(raw, "ring_timeout", path, None, 0.0, 600.0)
    caller_id = raw.get("caller_id")
    if caller_id is not None and (not isinstance(caller_id, str)
                                  or not re.fullmatch(r"\+?[0-9]{1,32}", caller_id)):
        raise ConfigError(f"{path}.caller_id", "must be digits with an optional '+'")
    return QuickDialEntry(
        number=value, url=url, announcement=prompts["announcement"], username=username,
        password=password, failure_prompt=prompts["failure_prompt"],
        connecting_prompt=prompts["connecting_prompt"], timeout=timeout,
        code_format=str(code_format), max_digits=max_digits, first_timeout=first_timeout,
        inter_timeout=inter_timeout, ring_timeout=ring_timeout, caller_id=caller_id or None,
    )


def _config_reserved(config: Config) -> Callable[[str], str | None]:
    extensions = {e.number for e in config.extensions}
    groups = {g.number: g.name for g in config.groups if g.number}
    queues = {q.number: q.name for q in config.queues if q.number}
    flows = {str(f.get("number")): str(f.get("name")) for f in config.flows if f.get("number")}

    def reserved(number: str) -> str | None:
        if number in extensions:
            return "an extension"
        if number in groups:
            return f"the number of ring group {groups[number]!r}"
        if number in queues:
            return f"the number of queue {queues[number]!r}"
        if number in flows:
            return f"the number of call flow {flows[number]!r}"
        return None

    return reserved


def _config_prompt_ok(config: Config) -> Callable[[str], str | None]:
    library = PromptLibrary({k: Path(v) for k, v in config.prompts.files.items()},
                            default_lang=config.prompts.language)
    uploads = Path(config.api.prompts_dir)

    def prompt_ok(name: str) -> str | None:
        if name.lower().endswith(".wav"):
            return None if Path(name).is_file() else f"file not found: {name}"
        with contextlib.suppress(PromptNotFound, ValueError):
            library.resolve(name)
            return None
        # Prompts uploaded through the API live under [api] prompts_dir.
        if (uploads / f"{name}.wav").is_file():
            return None
        return f"unknown prompt {name!r}"

    return prompt_ok


def parse(raw: Mapping[str, Any], config: Config) -> HipcallSettings:
    """Validate the ``[hipcall]`` section.

    ``entries``: a list of tables with ``number`` (10-9999, not an extension, group, queue or
    flow number, unique), ``url`` (http/https), ``announcement``, ``username``/``password``
    (HTTP Basic auth), ``failure_prompt``, ``connecting_prompt``, ``timeout`` (seconds, 3),
    ``code_format`` (``integer``/``string``), ``max_digits``, ``first_timeout``,
    ``inter_timeout``, ``ring_timeout``, ``caller_id``. ``numbers``: extension -> E.164 number
    sent as the caller's ``number``.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(NAME, "must be a table")
    unknown = sorted(set(raw) - {"entries", "numbers"})
    if unknown:
        raise ConfigError(f"{NAME}.{unknown[0]}", "unknown key")
    items = raw.get("entries", [])
    if not isinstance(items, list):
        raise ConfigError(f"{NAME}.entries", "must be an array of tables")
    base_reserved = _config_reserved(config)
    prompt_ok = _config_prompt_ok(config)
    seen: set[str] = set()

    def reserved(number: str) -> str | None:
        return "another quick dial entry" if number in seen else base_reserved(number)

    entries: list[QuickDialEntry] = []
    for i, item in enumerate(items):
        entry = parse_entry(item, f"{NAME}.entries[{i}]", reserved=reserved,
                            prompt_ok=prompt_ok, allow_paths=True)
        seen.add(entry.number)
        entries.append(entry)
    numbers_raw = raw.get("numbers", {})
    if not isinstance(numbers_raw, Mapping):
        raise ConfigError(f"{NAME}.numbers", "must be a table of extension = \"+E164\"")
    extensions = {e.number for e in config.extensions}
    numbers: dict[str, str] = {}
    for ext, e164 in numbers_raw.items():
        key = f"{NAME}.numbers.{ext}"
        if ext not in extensions:
            raise ConfigError(key, "not a configured extension")
        if not isinstance(e164, str) or not _E164_RE.match(e164) \
                or to_e164(e164, config.calls.default_country) != e164:
            raise ConfigError(key, "must be a valid E.164 number ('+' and digits)")
        numbers[str(ext)] = e164
    return HipcallSettings(entries=tuple(entries), numbers=MappingProxyType(numbers))


# --------------------------------------------------------------------------- the service


def normalise_destination(value: object, is_extension: Callable[[str], bool]) -> str | None:
    """The web service's ``destination`` as something the switch can dial, or None.

    An internal extension stays as it is; anything else must be a valid phone number written
    with its country code (``"90532XXXXXXX"`` or ``"+90532XXXXXXX"``; checked with
    ``phonenumbers``) and becomes E.164 (``"+90532XXXXXXX"``).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if is_extension(text):
        return text
    if not _DESTINATION_RE.match(text):
        return None
    candidate = text if text.startswith("+") else "+" + text
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _short(value: object, limit: int = 64) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class QuickDial:
    """The running front-end: its entries (changeable at run time) and the call handling."""

    def __init__(self, sw: "Switch", settings: HipcallSettings) -> None:
        self.sw = sw
        self.settings = settings
        self.entries: dict[str, QuickDialEntry] = {}
        self._client: httpx.AsyncClient | None = None
        for entry in settings.entries:
            self.add(entry)

    # ---- entries -------------------------------------------------------------------------

    def reserved(self, number: str, *, replacing: bool = False) -> str | None:
        """What already uses ``number`` in the running switch (None when it is free for a
        quick dial entry; an existing entry is free only when ``replacing``)."""
        if number in self.entries:
            return None if replacing else "another quick dial entry"
        if self.sw.router.is_extension(number):
            return "an extension"
        if number in self.sw.services:
            return "the number of another service (flow, queue or front-end)"
        for group in self.sw.config.groups:
            if group.number == number:
                return f"the number of ring group {group.name!r}"
        return None

    def add(self, entry: QuickDialEntry) -> bool:
        """Install or replace an entry; True when it is new."""
        if entry.number not in self.entries and entry.number in self.sw.services:
            raise ConfigError(f"{NAME}.entries", f"{entry.number} is already in use")
        created = entry.number not in self.entries
        self.entries[entry.number] = entry
        self.sw.add_service(entry.number, self._service(entry.number), replace=not created)
        return created

    def remove(self, number: str) -> bool:
        """Remove an entry; False when there was none."""
        if self.entries.pop(number, None) is None:
            return False
        self.sw.services.pop(number, None)
        return True

    def _service(self, number: str) -> Callable[["Call"], Any]:
        async def service(call: "Call") -> None:
            await self.handle(call, number)
        return service

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the HTTP client (one connection pool for every lookup)."""
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         headers={"User-Agent": self.sw.config.sip.user_agent})

    async def stop(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- one call ------------------------------------------------------------------------

    async def handle(self, call: "Call", number: str) -> None:
        """Serve one call to a quick dial number (the switch has answered leg A)."""
        leg = call.a
        if leg is None:
            return
        call.tags["frontend"] = NAME
        call.variables["quickdial_number"] = number
        entry = self.entries.get(number)
        if entry is None:  # removed through the API while the call was being set up
            self._fail(call, number, NOT_CONNECTED, "quick dial entry removed")
            self.sw.end_call(call)
            return
        code = await self._gather(leg, entry)
        if call.ended:
            return
        if not code:
            self._fail(call, number, NO_CODE, "no code entered")
            await self._end(leg, entry)
            return
        call.variables["quickdial_code"] = code
        call.tags["external_id"] = code
        result = await self.lookup(call, entry, code)
        call.variables["quickdial_status"] = result.status
        call.variables["quickdial_ms"] = str(result.ms)
        if result.http_status is not None:
            call.variables["quickdial_http_status"] = str(result.http_status)
        if result.status != OK or result.destination is None:
            self._fail(call, number, result.status, result.reason)
            await self._end(leg, entry)
            return
        destination = result.destination
        call.variables["quickdial_destination"] = destination
        try:
            dest = self.sw.resolve_destination(destination)
        except DestinationError as exc:
            call.variables["quickdial_status"] = NO_ROUTE
            self._fail(call, number, NO_ROUTE, str(exc))
            await self._end(leg, entry)
            return
        with contextlib.suppress(KeyError, RuntimeError, PromptNotFound, OSError, ValueError):
            await self.sw.play_and_wait(leg.id, entry.connecting_prompt)
        if call.ended:
            return
        outcome = await self.sw.connect(leg, dest, caller_id=entry.caller_id,
                                        ring_timeout=entry.ring_timeout)
        call.variables["quickdial_outcome"] = outcome.value
        if outcome.value != "answered" and not call.ended:
            self._fail(call, number, NOT_CONNECTED, f"the destination's outcome: {outcome.value}")
            await self._end(leg, entry)

    async def _gather(self, leg: "Leg", entry: QuickDialEntry) -> str:
        kwargs: dict[str, Any] = dict(
            min_digits=1, max_digits=entry.max_digits, first_timeout=entry.first_timeout,
            inter_timeout=entry.inter_timeout, finish_key="#", tries=1, pattern=r"[0-9]+",
            barge_in=True,
        )
        try:
            return await self.sw.gather(leg.id, prompt=entry.announcement, **kwargs)
        except (PromptNotFound, OSError, ValueError) as exc:
            # A prompt that vanished (a deleted upload) must not make the number dead air.
            log.warning("quick dial %s: announcement %r cannot be played (%s); using "
                        "enter_number", entry.number, entry.announcement, exc)
            return await self.sw.gather(leg.id, prompt="enter_number", **kwargs)
        except KeyError:
            return ""  # the leg is gone

    def _fail(self, call: "Call", number: str, status: str, reason: str) -> None:
        if status == NOT_CONNECTED:
            # The lookup itself may have succeeded: its status stays, the failure says why.
            call.variables.setdefault("quickdial_status", status)
        else:
            call.variables["quickdial_status"] = status
        call.variables["quickdial_failure"] = f"{status}: {reason}" if reason else status
        call.tags["failure"] = f"quickdial {status}"
        log.warning("quick dial %s, call %s: %s (%s)", number, call.id, status, reason)

    async def _end(self, leg: "Leg", entry: QuickDialEntry) -> None:
        """The failure announcement, then hang up."""
        call = leg.call
        if not call.ended:
            try:
                await self.sw.play_and_wait(leg.id, entry.failure_prompt)
            except (KeyError, RuntimeError, PromptNotFound, OSError, ValueError) as exc:
                log.warning("quick dial %s: failure prompt %r cannot be played (%s)",
                            entry.number, entry.failure_prompt, exc)
        if not call.ended:
            self.sw.end_call(call)

    def payload(self, call: "Call", entry: QuickDialEntry, code: str) -> dict[str, Any]:
        """The JSON body of the lookup, as the vendor documents it."""
        caller = call.caller
        number = self.settings.numbers.get(caller) \
            or to_e164(caller, self.sw.config.calls.default_country) or caller
        return {
            "number": number,
            "user_id": int(caller) if caller.isdigit() else caller,
            "uuid": call.id,
            "code": int(code) if entry.code_format == "integer" else code,
            "timestamp": int(self.sw.clock.now()),
        }

    async def lookup(self, call: "Call", entry: QuickDialEntry, code: str) -> LookupResult:
        """POST the code to the entry's web service and check its answer."""
        body = json.dumps(self.payload(call, entry, code), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        auth = httpx.BasicAuth(entry.username, entry.password) if entry.username else None
        client = self._client
        own_client = client is None
        if client is None:  # not started through Switch.start (e.g. a bare test harness)
            client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status: int | None = None
        data = bytearray()
        try:
            # One deadline for connect + send + answer + body: the vendor's "3 seconds".
            async with asyncio.timeout(entry.timeout):
                async with client.stream("POST", entry.url, content=body, headers=headers,
                                         auth=auth, timeout=entry.timeout) as response:
                    status = response.status_code
                    if status == 200:
                        async for chunk in response.aiter_bytes():
                            data += chunk
                            if len(data) > MAX_RESPONSE_BYTES:
                                break
        except (TimeoutError, httpx.TimeoutException):
            return LookupResult(TIMEOUT, f"no answer within {entry.timeout:g} s",
                                status, ms=self._ms(loop, started))
        except httpx.HTTPError as exc:
            return LookupResult(UNREACHABLE, f"{type(exc).__name__}: {exc}"[:200], status,
                                ms=self._ms(loop, started))
        finally:
            if own_client:
                await client.aclose()
        ms = self._ms(loop, started)
        if status in (401, 403):
            return LookupResult(AUTH_REJECTED, f"HTTP {status}: Basic auth rejected", status,
                                ms=ms)
        if status != 200:
            return LookupResult(HTTP_ERROR, f"HTTP {status}", status, ms=ms)
        if len(data) > MAX_RESPONSE_BYTES:
            return LookupResult(BAD_JSON, f"answer larger than {MAX_RESPONSE_BYTES} octets",
                                status, ms=ms)
        try:
            answer = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            return LookupResult(BAD_JSON, f"malformed JSON: {exc}"[:200], status, ms=ms)
        if not isinstance(answer, dict):
            return LookupResult(BAD_JSON, "the JSON answer is not an object", status, ms=ms)
        raw = answer.get("destination")
        if raw is None or raw == "":
            return LookupResult(NO_DESTINATION, "no destination in the answer", status, ms=ms)
        destination = normalise_destination(raw, self.sw.router.is_extension)
        if destination is None:
            return LookupResult(INVALID_DESTINATION, f"not a valid phone number: {_short(raw)}",
                                status, ms=ms)
        return LookupResult(OK, "", status, destination, ms)

    @staticmethod
    def _ms(loop: asyncio.AbstractEventLoop, started: float) -> int:
        return max(0, round((loop.time() - started) * 1000))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- HTTP API


def _install_routes(quick: QuickDial) -> Callable[["FastAPI", "Switch"], None]:
    def install_routes(app: "FastAPI", sw: "Switch") -> None:
        from fastapi import APIRouter, Request
        from fastapi.responses import JSONResponse

        from switch.api import ApiError, TenantDep

        router = APIRouter(prefix="/v1/hipcall", tags=["hipcall"])

        def find(number: str) -> QuickDialEntry:
            entry = quick.entries.get(number)
            if entry is None:
                raise ApiError(404, "unknown_entry", f"no quick dial entry {number!r}")
            return entry

        def prompt_ok(name: str) -> str | None:
            try:
                sw.prompts.resolve(name)
            except (PromptNotFound, ValueError) as exc:
                return f"unknown prompt {name!r} ({exc})"
            return None

        @router.get("/entries")
        async def list_entries(tenant: TenantDep) -> dict[str, Any]:
            """Every quick dial entry (passwords are not shown: `password_set`)."""
            return {"entries": [quick.entries[n].view()
                                for n in sorted(quick.entries, key=int)]}

        @router.get("/entries/{number}")
        async def get_entry(number: str, tenant: TenantDep) -> dict[str, Any]:
            """One quick dial entry."""
            return find(number).view()

        @router.put("/entries/{number}")
        async def put_entry(number: str, request: Request, tenant: TenantDep) -> JSONResponse:
            """Create or replace (all fields) the quick dial entry `number` (10-9999). The
            announcement and prompts are prompt names: upload a WAV with `PUT
            /v1/prompts/{name}` first. 201 when new, 200 when replaced. In memory only."""
            if not _NUMBER_RE.match(number):
                raise ApiError(400, "invalid_entry", "number: must be a number from 10 to 9999")
            raw_body = await request.body()
            if len(raw_body) > MAX_RESPONSE_BYTES:
                raise ApiError(413, "payload_too_large", "the entry is too large")
            try:
                body = json.loads(raw_body or b"null", parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError):
                raise ApiError(400, "invalid_request", "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "invalid_request", "the body must be a JSON object")
            try:
                entry = parse_entry(
                    body, "entry", number=number, allow_paths=False, prompt_ok=prompt_ok,
                    reserved=lambda n: quick.reserved(n, replacing=True),
                )
            except ConfigError as exc:
                key = exc.key_path.removeprefix("entry").lstrip(".") or "entry"
                raise ApiError(400, "invalid_entry", f"{key}: {exc.reason}") from None
            created = quick.add(entry)
            log.info("quick dial entry %s %s through the API", number,
                     "created" if created else "replaced")
            return JSONResponse(entry.view(), status_code=201 if created else 200)

        @router.delete("/entries/{number}")
        async def delete_entry(number: str, tenant: TenantDep) -> dict[str, Any]:
            """Remove a quick dial entry (calls in progress finish)."""
            find(number)
            quick.remove(number)
            log.info("quick dial entry %s deleted through the API", number)
            return {"number": number, "deleted": True}

        app.include_router(router)

    return install_routes


def install(sw: "Switch", settings: object) -> None:
    """Register the quick dial numbers and the /v1/hipcall routes on ``sw``."""
    assert isinstance(settings, HipcallSettings)
    quick = QuickDial(sw, settings)
    sw.on_start.append(quick.start)
    sw.on_stop.append(quick.stop)
    sw.http_installers.append(_install_routes(quick))


__all__ = [
    "DEFAULT_TIMEOUT", "HipcallSettings", "LookupResult", "QuickDial", "QuickDialEntry",
    "check_url", "install", "normalise_destination", "parse", "parse_entry",
]
