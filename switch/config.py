"""Softswitch configuration: TOML loaded and validated into frozen dataclasses.

Every table and key is optional; omitted keys take the defaults documented on the
dataclasses below (they match the bundled ``switch/default.toml``). Validation is strict:
unknown keys are errors (they are almost always typos), and every error names the key path
that caused it, e.g. ``config: trunks[0].port: must be 1..65535``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.resources
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import phonenumbers

from sip.digest import StoredHA1
from switch.security import SecurityConfig

if TYPE_CHECKING:
    from switch.policy import DestinationPolicy

__all__ = [
    "AuthConfig",
    "CallsConfig",
    "Config",
    "ConfigError",
    "Extension",
    "HttpConfig",
    "LogConfig",
    "PromptsConfig",
    "RegistrarConfig",
    "Route",
    "RtpConfig",
    "SipConfig",
    "StoreConfig",
    "Trunk",
    "default_config",
    "load_config",
    "parse_config",
]

TRANSPORTS = ("udp", "tcp", "tls")
ALGORITHMS = ("SHA-256", "MD5")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_EXTENSION_RE = re.compile(r"[0-9]+")
_DID_RE = re.compile(r"\+?[0-9]+")
_TRUNK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# RFC 1123 section 2.1 host names: dot-separated labels of letters, digits and hyphens.
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """An invalid configuration: ``key_path`` says where, ``reason`` says why.

    ``str(err)`` is ``"config: <key_path>: <reason>"``. For file-level problems (missing file,
    TOML syntax error) ``key_path`` is the file path.
    """

    def __init__(self, key_path: str, reason: str) -> None:
        super().__init__(key_path, reason)
        self.key_path = key_path
        self.reason = reason

    def __str__(self) -> str:
        return f"config: {self.key_path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class SipConfig:
    """``[sip]``: the SIP listener."""

    address: str = "127.0.0.1"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    realm: str = "softswitch"
    user_agent: str = "softswitch/0.1"
    max_forwards: int = 70
    # SIP over TLS (RFC 3261 section 26.2.1), used when "tls" is in transports. The loader
    # sets tls_port to port + 1 when it is not given (5061 for the default port 5060).
    tls_port: int = 5061
    tls_certificate: str = ""  # PEM certificate chain presented on tls_port
    tls_private_key: str = ""  # PEM private key; empty: in the tls_certificate file
    tls_ca_file: str = ""  # PEM CAs to verify TLS trunks; empty: the system store
    tls_verify_peer: bool = True  # false: do not verify TLS trunks (lab use only)


@dataclass(frozen=True, slots=True)
class RtpConfig:
    """``[rtp]``: the media relay. Ports ``port_min..port_max`` inclusive; RTP even, RTCP +1."""

    address: str = "127.0.0.1"
    port_min: int = 20000
    port_max: int = 20999
    symmetric_latch: bool = False


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """``[http]``: the health/management HTTP endpoint."""

    address: str = "127.0.0.1"
    port: int = 8080
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: digest authentication (RFC 3261 section 22, RFC 8760)."""

    nonce_lifetime: float = 300.0
    algorithms: tuple[str, ...] = ALGORITHMS
    secret: str = field(default="", repr=False)  # empty: a random secret per start


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """``[registrar]``: REGISTER expiry policy (RFC 3261 section 10.3) and contact limit."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


@dataclass(frozen=True, slots=True)
class CallsConfig:
    """``[calls]``: call handling."""

    ring_timeout: float = 60.0  # seconds before a ringing call is given up (no answer)
    default_country: str = "TR"  # ISO 3166-1 region for parsing national numbers
    record: bool = False  # record every answered call (stereo WAV, one channel per leg)
    recordings_dir: str = "recordings"  # where recordings go (relative to the working dir)
    inband_dtmf: str = "auto"  # in-band DTMF detection: auto (legs without telephone-event),
    # always, or off
    drain_timeout: float = 30.0  # seconds a graceful shutdown lets calls finish (0: at once)


@dataclass(frozen=True, slots=True)
class PromptsConfig:
    """``[prompts]``: prompt language and replacements for the built-in prompts."""

    language: str = "en"  # built-in prompt language: en, es or tr
    # prompt name (e.g. "connecting" or "es/connecting") -> WAV file replacing it
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: persistent storage location."""

    url: str = "sqlite:///softswitch.db"  # relative to the working directory
    # Write-ahead file for CDRs, webhook events and audit entries not yet committed (they are
    # batched): "" = beside a SQLite database file (none for other stores), "off", or a path.
    journal: str = ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: logging."""

    level: str = "INFO"  # one of DEBUG, INFO, WARNING, ERROR


@dataclass(frozen=True, slots=True)
class Extension:
    """``[[extensions]]``: a local user that may REGISTER and place/receive calls."""

    number: str  # digits only
    password: str = field(default="", repr=False)  # digest password; "" when HA1s are given
    name: str = ""  # optional display name
    email: str = ""  # optional, reported to front-ends (e.g. Quickom's member email)
    tenant: str = "default"  # the account the extension belongs to
    # H(number:realm:password) per base digest algorithm ("MD5", "SHA-256"), lower-case hex:
    # the password itself need not be in the file (RFC 7616 section 3.4.2).
    ha1: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def digest_secret(self) -> str | StoredHA1:
        """What :meth:`sip.digest.DigestServer.verify` checks this extension's answers with."""
        return self.password if self.password else StoredHA1(self.ha1)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """``[[api.keys]]``: a key for the native HTTP API, scoped to one tenant."""

    key: str = field(default="", repr=False)  # the plain key; "" when only key_sha256 is given
    tenant: str = "default"
    name: str = ""
    # Lower-case hex SHA-256 of the key: what requests are checked against (computed from
    # ``key`` when the config gives the plain key), so a config may hold only the hash.
    key_sha256: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """``[api]``: the native HTTP API under /v1/."""

    keys: tuple[ApiKey, ...] = ()
    prompts_dir: str = "prompts"  # uploaded prompts are converted and kept here


@dataclass(frozen=True, slots=True)
class RingGroup:
    """``[[groups]]``: extensions rung simultaneously; the first to answer takes the call."""

    name: str
    members: tuple[str, ...]
    number: str = ""  # optional number that reaches the group when dialled
    ring_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Queue:
    """``[[queues]]``: free agents rung in turn while the caller hears music on hold."""

    name: str
    agents: tuple[str, ...]
    number: str = ""
    agent_timeout: float = 15.0  # ring each agent this long before trying the next
    max_wait: float = 120.0  # give up after this long (outcome no-answer)
    moh: str = "moh"  # prompt looped to the caller while waiting


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """``[[webhooks]]``: where events and CDRs are POSTed (durable outbox, retries)."""

    name: str
    url: str
    events: tuple[str, ...] = ("*",)
    secret: str = field(default="", repr=False)  # non-empty: HMAC-SHA256 signature header
    # 30 attempts with the 1 s .. 300 s backoff span at least 6,511 s: a receiver down for an
    # hour still gets everything when it returns.
    max_attempts: int = 30
    connect_timeout: float = 5.0
    read_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Trunk:
    """``[[trunks]]``: an upstream SIP peer (ITSP / PSTN gateway)."""

    name: str
    host: str  # IP address or host name
    port: int = 5060
    transport: str = "udp"
    username: str = ""  # digest credentials used only toward this trunk; empty = no auth
    password: str = field(default="", repr=False)
    register: bool = False  # keep a registration with the trunk
    register_expires: int = 600
    from_user: str = ""  # user part of our From toward the trunk; empty = caller's number
    # A peering trunk: calls from it to numbers that are not its DIDs are routed by [[routes]]
    # (transit). Off by default, so a trunk cannot use the switch to reach other trunks.
    transit: bool = False
    # How requests are recognised as coming from this trunk: "address" = from its host and
    # port only; "ip" = from its host on any port (a carrier sending from several ports, or
    # opening its own TCP/TLS connections from ephemeral ports). Either way: not challenged.
    identify: str = "address"
    # Inbound DID map: dialled number ("+E.164" or digits) -> extension number. Read-only.
    dids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Route:
    """``[[routes]]``: outbound route; the first whose pattern matches the E.164 number wins."""

    pattern: re.Pattern[str]  # compiled; use .search() on the E.164 number
    trunk: str  # name of a configured trunk


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    sip: SipConfig = field(default_factory=SipConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    extensions: tuple[Extension, ...] = ()
    trunks: tuple[Trunk, ...] = ()
    routes: tuple[Route, ...] = ()
    api: ApiConfig = field(default_factory=ApiConfig)
    groups: tuple[RingGroup, ...] = ()
    queues: tuple[Queue, ...] = ()
    flows: tuple[Mapping[str, Any], ...] = ()  # validated by switch.flows.load_flows
    webhooks: tuple[WebhookConfig, ...] = ()
    # "tenant:<name>" / "trunk:<name>" -> {max_concurrent, cps, burst, queue_size}
    limits: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}))
    # calendar name -> {timezone, mon..sun, closed_dates} (switch.calendar.ServiceHours)
    service_hours: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}))
    # vendor front-end name -> its validated settings (switch.frontends)
    frontends: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    # [policy.<tenant>]: what each account may dial (switch.policy; "*" for the others)
    policies: Mapping[str, DestinationPolicy] = field(
        default_factory=lambda: MappingProxyType({}))
    # [security]: flood bans and brute-force limits (switch.security.SourceGuard)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def extension(self, number: str) -> Extension | None:
        """The extension with this number, or None."""
        for ext in self.extensions:
            if ext.number == number:
                return ext
        return None

    def trunk(self, name: str) -> Trunk | None:
        """The trunk with this name, or None."""
        for trunk in self.trunks:
            if trunk.name == name:
                return trunk
        return None

    def route_for(self, number: str) -> Trunk | None:
        """The trunk of the first route whose pattern matches ``number`` (E.164), or None."""
        for route in self.routes:
            if route.pattern.search(number):
                return self.trunk(route.trunk)
        return None


# --------------------------------------------------------------------------- helpers


def _join(path: str, key: str) -> str:
    part = key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Table:
    """Typed, path-aware access to one TOML table; rejects keys outside ``allowed``."""

    def __init__(self, data: object, path: str, allowed: Iterable[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a table, not {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                reason = "unknown key"
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    reason += f" (did you mean {close[0]!r}?)"
                raise ConfigError(_join(path, key), reason)

    def key(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str, *, nonempty: bool = False) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.key(key), f"must be a string, not {_type_name(value)}")
        if nonempty and not value:
            raise ConfigError(self.key(key), "must not be empty")
        return value

    def required_string(self, key: str) -> str:
        if key not in self.data:
            raise ConfigError(self.key(key), "is required")
        return self.string(key, "", nonempty=True)

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self.data.get(key, default)
        # bool is an int subclass in Python; TOML true/false is never a valid number here.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(self.key(key), f"must be an integer, not {_type_name(value)}")
        if hi is not None and not lo <= value <= hi:
            raise ConfigError(self.key(key), f"must be {lo}..{hi}")
        if value < lo:
            raise ConfigError(self.key(key), f"must be >= {lo}")
        return value

    def port(self, key: str, default: int) -> int:
        return self.integer(key, default, 1, 65535)

    def positive_number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(self.key(key), f"must be a number, not {_type_name(value)}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(self.key(key), "must be a positive number")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(key), f"must be a boolean, not {_type_name(value)}")
        return value

    def choices(
        self, key: str, default: tuple[str, ...], allowed: tuple[str, ...]
    ) -> tuple[str, ...]:
        """A non-empty, duplicate-free array of strings from ``allowed`` (case-insensitive)."""
        value = self.data.get(key, list(default))
        if not isinstance(value, list):
            raise ConfigError(self.key(key), f"must be an array, not {_type_name(value)}")
        if not value:
            raise ConfigError(self.key(key), "must not be empty")
        canonical = {a.lower(): a for a in allowed}
        result: list[str] = []
        for i, item in enumerate(value):
            path = f"{self.key(key)}[{i}]"
            if not isinstance(item, str):
                raise ConfigError(path, f"must be a string, not {_type_name(item)}")
            name = canonical.get(item.lower())
            if name is None:
                raise ConfigError(
                    path, f"unsupported {item!r} (expected one of {', '.join(allowed)})"
                )
            if name in result:
                raise ConfigError(path, f"duplicate {name!r}")
            result.append(name)
        return tuple(result)

    def array_of_tables(self, key: str) -> list[tuple[str, object]]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise ConfigError(
                self.key(key), f"must be an array of tables ([[{key}]]), not {_type_name(value)}"
            )
        return [(f"{self.key(key)}[{i}]", item) for i, item in enumerate(value)]


def _address(table: _Table, key: str, default: str, *, allow_unspecified: bool) -> str:
    text = table.string(key, default, nonempty=True)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(table.key(key), f"not an IP address: {text!r}") from None
    if ip.is_unspecified and not allow_unspecified:
        # The SIP and RTP addresses are advertised in Via/Contact/SDP c= lines, so a
        # wildcard address would be unroutable for peers.
        raise ConfigError(table.key(key), "must be a specific address, not a wildcard")
    return str(ip)


def _host(table: _Table, key: str) -> str:
    text = table.required_string(key)
    try:
        return str(ipaddress.ip_address(text.strip("[]") if text.startswith("[") else text))
    except ValueError:
        pass
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if len(text) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ConfigError(table.key(key), f"not an IP address or host name: {text!r}")
    return text.lower()


# --------------------------------------------------------------------------- sections


def _parse_sip(data: object) -> SipConfig:
    t = _Table(
        data, "sip", ("address", "port", "transports", "realm", "user_agent", "max_forwards",
                      "tls_port", "tls_certificate", "tls_private_key", "tls_ca_file",
                      "tls_verify_peer"),
    )
    d = SipConfig()
    port = t.port("port", d.port)
    transports = t.choices("transports", d.transports, TRANSPORTS)
    tls = "tls" in transports
    if not t.has("tls_port") and tls and port == 65535:
        raise ConfigError(t.key("tls_port"), "is required when sip.port is 65535")
    tls_port = t.port("tls_port", min(port + 1, 65535))
    if tls and tls_port == port and "tcp" in transports:
        # Both are TCP listeners on sip.address (RFC 3261 section 18: 5060 / 5061).
        raise ConfigError(t.key("tls_port"), "must differ from sip.port (TCP listens there)")
    sip = SipConfig(
        address=_address(t, "address", d.address, allow_unspecified=False),
        port=port,
        transports=transports,
        realm=t.string("realm", d.realm, nonempty=True),
        user_agent=t.string("user_agent", d.user_agent, nonempty=True),
        # RFC 3261 section 20.22: Max-Forwards is 0..255; we need at least 1 to forward.
        max_forwards=t.integer("max_forwards", d.max_forwards, 1, 255),
        tls_port=tls_port,
        tls_certificate=t.string("tls_certificate", d.tls_certificate),
        tls_private_key=t.string("tls_private_key", d.tls_private_key),
        tls_ca_file=t.string("tls_ca_file", d.tls_ca_file),
        tls_verify_peer=t.boolean("tls_verify_peer", d.tls_verify_peer),
    )
    if tls:
        # Load the certificate, key and CAs now, so a bad file stops the load with its key.
        from switch.tls import client_context, server_context

        server_context(sip)
        client_context(sip)
    return sip


def _parse_rtp(data: object) -> RtpConfig:
    t = _Table(data, "rtp", ("address", "port_min", "port_max", "symmetric_latch"))
    d = RtpConfig()
    port_min = t.port("port_min", d.port_min)
    port_max = t.port("port_max", d.port_max)
    # RFC 3550 section 11: RTP uses an even port and RTCP the next (odd) one.
    if port_min % 2:
        raise ConfigError("rtp.port_min", "must be even (RTP even, RTCP odd)")
    if port_min >= port_max:
        raise ConfigError("rtp.port_max", "must be greater than rtp.port_min")
    if port_max - port_min + 1 < 2:  # pragma: no cover - implied by the checks above
        raise ConfigError("rtp.port_max", "range must hold at least one RTP/RTCP pair")
    return RtpConfig(
        address=_address(t, "address", d.address, allow_unspecified=False),
        port_min=port_min,
        port_max=port_max,
        symmetric_latch=t.boolean("symmetric_latch", d.symmetric_latch),
    )


def _parse_http(data: object) -> HttpConfig:
    t = _Table(data, "http", ("address", "port", "enabled"))
    d = HttpConfig()
    return HttpConfig(
        address=_address(t, "address", d.address, allow_unspecified=True),
        port=t.port("port", d.port),
        enabled=t.boolean("enabled", d.enabled),
    )


def _parse_auth(data: object) -> AuthConfig:
    t = _Table(data, "auth", ("nonce_lifetime", "algorithms", "secret"))
    d = AuthConfig()
    return AuthConfig(
        nonce_lifetime=t.positive_number("nonce_lifetime", d.nonce_lifetime),
        # RFC 8760: SHA-256 and MD5 are the algorithms we implement.
        algorithms=t.choices("algorithms", d.algorithms, ALGORITHMS),
        secret=t.string("secret", d.secret),
    )


def _parse_registrar(data: object) -> RegistrarConfig:
    t = _Table(data, "registrar", ("min_expires", "max_expires", "default_expires", "max_contacts"))
    d = RegistrarConfig()
    min_expires = t.integer("min_expires", d.min_expires, 1)
    max_expires = t.integer("max_expires", d.max_expires, 1)
    if max_expires < min_expires:
        raise ConfigError("registrar.max_expires", "must be >= registrar.min_expires")
    default_expires = t.integer("default_expires", d.default_expires, 1)
    if not min_expires <= default_expires <= max_expires:
        raise ConfigError(
            "registrar.default_expires",
            f"must be between min_expires ({min_expires}) and max_expires ({max_expires})",
        )
    return RegistrarConfig(
        min_expires=min_expires,
        max_expires=max_expires,
        default_expires=default_expires,
        max_contacts=t.integer("max_contacts", d.max_contacts, 1),
    )


def _parse_calls(data: object) -> CallsConfig:
    t = _Table(
        data, "calls",
        ("ring_timeout", "default_country", "record", "recordings_dir", "inband_dtmf",
         "drain_timeout"),
    )
    d = CallsConfig()
    drain = t.data.get("drain_timeout", d.drain_timeout)
    if (not isinstance(drain, int | float) or isinstance(drain, bool)
            or not math.isfinite(drain) or not 0 <= drain <= 86400):
        raise ConfigError("calls.drain_timeout", "must be a number of seconds, 0..86400")
    country = t.string("default_country", d.default_country, nonempty=True).upper()
    if country not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(
            "calls.default_country", f"unknown region {country!r} (expected e.g. 'TR', 'US', 'DE')"
        )
    inband = t.string("inband_dtmf", d.inband_dtmf, nonempty=True).lower()
    if inband not in ("auto", "always", "off"):
        raise ConfigError("calls.inband_dtmf", "must be one of auto, always, off")
    return CallsConfig(
        ring_timeout=t.positive_number("ring_timeout", d.ring_timeout),
        default_country=country,
        record=t.boolean("record", d.record),
        recordings_dir=t.string("recordings_dir", d.recordings_dir, nonempty=True),
        inband_dtmf=inband,
        drain_timeout=float(drain),
    )


def _parse_prompts(data: object) -> PromptsConfig:
    from media.prompts import PromptLibrary, PromptNotFound

    t = _Table(data, "prompts", ("language", "files"))
    language = t.string("language", "en", nonempty=True).lower()
    if language not in ("en", "es", "tr"):
        raise ConfigError("prompts.language", "must be one of en, es, tr")
    raw = t.data.get("files", {})
    if not isinstance(raw, dict):
        raise ConfigError("prompts.files", f"must be a table, not {_type_name(raw)}")
    files: dict[str, str] = {}
    for name, path in raw.items():
        key = f"prompts.files.{name}"
        if not isinstance(path, str) or not path:
            raise ConfigError(key, "must be a non-empty path string")
        if not Path(path).is_file():
            raise ConfigError(key, f"no such file: {path}")
        files[str(name)] = path
    library = PromptLibrary({k: Path(v) for k, v in files.items()}, default_lang=language)
    for name in files:
        try:
            library.load(name)
        except (PromptNotFound, ValueError) as exc:
            raise ConfigError(f"prompts.files.{name}", str(exc)) from exc
    return PromptsConfig(language=language, files=MappingProxyType(files))


def _parse_store(data: object) -> StoreConfig:
    t = _Table(data, "store", ("url", "journal"))
    return StoreConfig(url=t.string("url", StoreConfig().url, nonempty=True),
                       journal=t.string("journal", ""))


def _parse_log(data: object) -> LogConfig:
    t = _Table(data, "log", ("level",))
    level = t.string("level", LogConfig().level, nonempty=True).upper()
    if level not in LOG_LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    return LogConfig(level=level)


_HA1_KEYS = {"ha1_md5": ("MD5", 32), "ha1_sha256": ("SHA-256", 64)}


def _parse_extensions(root: _Table, sip: SipConfig,
                      algorithms: tuple[str, ...]) -> tuple[Extension, ...]:
    result: list[Extension] = []
    seen: dict[str, str] = {}
    for path, item in root.array_of_tables("extensions"):
        t = _Table(item, path, ("number", "password", "name", "email", "tenant", *_HA1_KEYS))
        if t.has("number") and not isinstance(t.data["number"], str):
            raise ConfigError(t.key("number"), "must be a string of digits (quote it)")
        number = t.required_string("number")
        if not _EXTENSION_RE.fullmatch(number):
            raise ConfigError(t.key("number"), "must contain digits only")
        if number in seen:
            raise ConfigError(
                t.key("number"), f"duplicate extension {number!r} (see {seen[number]})"
            )
        seen[number] = path
        password, ha1 = _extension_secret(t, sip, algorithms)
        result.append(
            Extension(
                number=number, password=password, name=t.string("name", ""),
                email=t.string("email", ""), tenant=t.string("tenant", "default", nonempty=True),
                ha1=ha1,
            )
        )
    return tuple(result)


def _extension_secret(t: _Table, sip: SipConfig,
                      algorithms: tuple[str, ...]) -> tuple[str, Mapping[str, str]]:
    """``password``, or ``ha1_md5``/``ha1_sha256`` (one per algorithm in ``[auth]
    algorithms``; each is H(number:realm:password) for ``[sip] realm``, so the password
    itself stays out of the file, as ``softswitch hash-password`` prints them)."""
    given = [key for key in _HA1_KEYS if t.has(key)]
    if t.has("password"):
        if given:
            raise ConfigError(t.key(given[0]), "give either password or ha1_* values, not both")
        return t.required_string("password"), MappingProxyType({})
    if not given:
        raise ConfigError(t.key("password"), "is required (or ha1_md5/ha1_sha256)")
    ha1: dict[str, str] = {}
    for key in given:
        algorithm, length = _HA1_KEYS[key]
        value = t.required_string(key).lower()
        if len(value) != length or not all(c in "0123456789abcdef" for c in value):
            raise ConfigError(t.key(key), f"must be {length} hex digits (H(number:realm:password)"
                                          f" with {algorithm}, realm {sip.realm!r})")
        ha1[algorithm] = value
    for algorithm in algorithms:
        if algorithm not in ha1:
            key = next(k for k, (a, _) in _HA1_KEYS.items() if a == algorithm)
            raise ConfigError(t.key(key), f"is required: [auth] algorithms offers {algorithm} "
                                          "and there is no password")
    return "", MappingProxyType(ha1)


def _parse_trunks(
    root: _Table, sip: SipConfig, extensions: tuple[Extension, ...]
) -> tuple[Trunk, ...]:
    numbers = {ext.number for ext in extensions}
    result: list[Trunk] = []
    seen: dict[str, str] = {}
    allowed = (
        "name", "host", "port", "transport", "username", "password", "register",
        "register_expires", "from_user", "dids", "transit", "identify",
    )  # fmt: skip
    by_ip: dict[str, str] = {}
    for path, item in root.array_of_tables("trunks"):
        t = _Table(item, path, allowed)
        name = t.required_string("name")
        if not _TRUNK_NAME_RE.fullmatch(name):
            raise ConfigError(t.key("name"), "must contain only letters, digits, '_', '.', '-'")
        if name in seen:
            raise ConfigError(t.key("name"), f"duplicate trunk {name!r} (see {seen[name]})")
        seen[name] = path
        host = _host(t, "host")
        port = t.port("port", 5060)
        transport = t.string("transport", "udp", nonempty=True).lower()
        if transport not in TRANSPORTS:
            raise ConfigError(t.key("transport"), f"must be one of {', '.join(TRANSPORTS)}")
        if transport not in sip.transports:
            raise ConfigError(t.key("transport"), f"{transport!r} is not enabled in sip.transports")
        username = t.string("username", "")
        password = t.string("password", "")
        if username and not password:
            raise ConfigError(t.key("password"), "must not be empty when username is set")
        if password and not username:
            raise ConfigError(t.key("username"), "must not be empty when password is set")
        register = t.boolean("register", False)
        if register and not username:
            raise ConfigError(t.key("username"), "is required when register = true")
        register_expires = t.integer("register_expires", 600, 1)
        from_user = t.string("from_user", "")
        dids = _parse_dids(t, numbers)
        transit = t.boolean("transit", False)
        identify = t.string("identify", "address", nonempty=True)
        if identify not in ("address", "ip"):
            raise ConfigError(t.key("identify"), "must be 'address' or 'ip'")
        if identify == "ip":
            if host in by_ip:
                raise ConfigError(t.key("identify"),
                                  f"{by_ip[host]} also identifies by IP {host}: ambiguous")
            by_ip[host] = path
        result.append(
            Trunk(
                name=name,
                host=host,
                port=port,
                transport=transport,
                username=username,
                password=password,
                register=register,
                register_expires=register_expires,
                from_user=from_user,
                dids=dids,
                transit=transit,
                identify=identify,
            )
        )
    return tuple(result)


def _parse_dids(trunk: _Table, numbers: set[str]) -> Mapping[str, str]:
    value = trunk.data.get("dids", {})
    if not isinstance(value, dict):
        raise ConfigError(trunk.key("dids"), f"must be a table, not {_type_name(value)}")
    dids: dict[str, str] = {}
    for did, target in value.items():
        path = f"{trunk.key('dids')}[{json.dumps(did)}]"
        if not _DID_RE.fullmatch(did):
            raise ConfigError(path, "DID must be digits with an optional leading '+'")
        if not isinstance(target, str):
            raise ConfigError(path, f"must be an extension number string, not {_type_name(target)}")
        if target not in numbers and not _EXTENSION_RE.fullmatch(target):
            raise ConfigError(path, f"unknown extension {target!r}")
        dids[did] = target
    return MappingProxyType(dids)


def _parse_routes(root: _Table, trunks: tuple[Trunk, ...]) -> tuple[Route, ...]:
    names = {trunk.name for trunk in trunks}
    result: list[Route] = []
    for path, item in root.array_of_tables("routes"):
        t = _Table(item, path, ("pattern", "trunk"))
        text = t.required_string("pattern")
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise ConfigError(t.key("pattern"), f"invalid regular expression: {exc}") from None
        trunk = t.required_string("trunk")
        if trunk not in names:
            raise ConfigError(t.key("trunk"), f"unknown trunk {trunk!r}")
        result.append(Route(pattern=pattern, trunk=trunk))
    return tuple(result)


_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LIMIT_KEYS = ("max_concurrent", "cps", "burst", "queue_size")


def _name(t: _Table, key: str = "name") -> str:
    name = t.required_string(key)
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(t.key(key), "must be lower-case letters, digits, '_' or '-'")
    return name


def _numbers(t: _Table, key: str, extensions: set[str]) -> tuple[str, ...]:
    value = t.data.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(t.key(key), "must be a non-empty array of extension numbers")
    for i, item in enumerate(value):
        if not isinstance(item, str) or item not in extensions:
            raise ConfigError(f"{t.key(key)}[{i}]", f"unknown extension {item!r}")
    return tuple(value)


def _api_key_secret(t: _Table) -> tuple[str, str]:
    """``key`` (plain) or ``key_sha256`` (hex digest; the key itself stays out of the file):
    exactly one of them. Returns (plain key or "", lower-case hex SHA-256)."""
    if t.has("key") == t.has("key_sha256"):
        raise ConfigError(t.key("key"), "give exactly one of key and key_sha256")
    if t.has("key"):
        key = t.required_string("key")
        if len(key) < 8:
            raise ConfigError(t.key("key"), "must be at least 8 characters")
        return key, hashlib.sha256(key.encode("utf-8")).hexdigest()
    digest = t.required_string("key_sha256").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ConfigError(t.key("key_sha256"), "must be 64 hex digits (a SHA-256 digest)")
    return "", digest


def _parse_call_control(root: _Table, extensions: tuple[Extension, ...],
                        trunks: tuple[Trunk, ...]) -> dict[str, Any]:
    """The call-control sections: [api], [[groups]], [[queues]], [[flows]], [[webhooks]],
    [limits], [service_hours]. Dialable numbers must not collide with extensions or each other."""
    ext_numbers = {e.number for e in extensions}
    taken: dict[str, str] = {n: "an extension" for n in ext_numbers}

    def claim(t: _Table) -> str:
        if not t.has("number"):
            return ""
        number = t.string("number", "", nonempty=True)
        if not _EXTENSION_RE.fullmatch(number):
            raise ConfigError(t.key("number"), "must contain digits only")
        if number in taken:
            raise ConfigError(t.key("number"), f"{number!r} is already {taken[number]}")
        taken[number] = t.path
        return number

    api_t = _Table(root.data.get("api", {}), "api", ("keys", "prompts_dir"))
    keys: list[ApiKey] = []
    for path, item in api_t.array_of_tables("keys"):
        t = _Table(item, path, ("key", "key_sha256", "tenant", "name"))
        key, digest = _api_key_secret(t)
        if any(k.key_sha256 == digest for k in keys):
            raise ConfigError(t.key("key_sha256" if t.has("key_sha256") else "key"),
                              "duplicate key")
        keys.append(ApiKey(key=key, tenant=t.string("tenant", "default", nonempty=True),
                           name=t.string("name", ""), key_sha256=digest))
    api = ApiConfig(keys=tuple(keys),
                    prompts_dir=api_t.string("prompts_dir", ApiConfig().prompts_dir, nonempty=True))

    names: set[str] = set()
    groups: list[RingGroup] = []
    for path, item in root.array_of_tables("groups"):
        t = _Table(item, path, ("name", "number", "members", "ring_timeout"))
        name = _name(t)
        if name in names:
            raise ConfigError(t.key("name"), f"duplicate group {name!r}")
        names.add(name)
        groups.append(RingGroup(name=name, members=_numbers(t, "members", ext_numbers),
                                number=claim(t),
                                ring_timeout=t.positive_number("ring_timeout", 30.0)))
    queues: list[Queue] = []
    names = set()
    for path, item in root.array_of_tables("queues"):
        t = _Table(item, path, ("name", "number", "agents", "agent_timeout", "max_wait", "moh"))
        name = _name(t)
        if name in names:
            raise ConfigError(t.key("name"), f"duplicate queue {name!r}")
        names.add(name)
        queues.append(Queue(name=name, agents=_numbers(t, "agents", ext_numbers),
                            number=claim(t),
                            agent_timeout=t.positive_number("agent_timeout", 15.0),
                            max_wait=t.positive_number("max_wait", 120.0),
                            moh=t.string("moh", "moh", nonempty=True)))
    flows: list[Mapping[str, Any]] = []
    for path, item in root.array_of_tables("flows"):
        if not isinstance(item, dict):
            raise ConfigError(path, f"must be a table, not {_type_name(item)}")
        if "number" in item:
            claim(_Table({"number": item["number"]}, path, ("number",)))
        flows.append(MappingProxyType(dict(item)))
    webhooks: list[WebhookConfig] = []
    names = set()
    for path, item in root.array_of_tables("webhooks"):
        t = _Table(item, path, ("name", "url", "events", "secret", "max_attempts",
                                "connect_timeout", "read_timeout"))
        name = _name(t)
        if name in names:
            raise ConfigError(t.key("name"), f"duplicate webhook {name!r}")
        names.add(name)
        url = t.required_string("url")
        if not re.match(r"^https?://[^\s/]+", url):
            raise ConfigError(t.key("url"), "must be an http:// or https:// URL")
        events = t.data.get("events", ["*"])
        if not isinstance(events, list) or not events or not all(
                isinstance(e, str) and e for e in events):
            raise ConfigError(t.key("events"), "must be a non-empty array of event names")
        webhooks.append(WebhookConfig(
            name=name, url=url, events=tuple(events), secret=t.string("secret", ""),
            max_attempts=t.integer("max_attempts", 30, 1, 1000),  # see WebhookConfig
            connect_timeout=t.positive_number("connect_timeout", 5.0),
            read_timeout=t.positive_number("read_timeout", 10.0),
        ))
    limits_raw = root.data.get("limits", {})
    if not isinstance(limits_raw, dict):
        raise ConfigError("limits", f"must be a table, not {_type_name(limits_raw)}")
    trunk_names = {tr.name for tr in trunks}
    limits: dict[str, Mapping[str, Any]] = {}
    for key, item in limits_raw.items():
        path = _join("limits", key)
        kind, _, name = key.partition(":")
        if kind not in ("tenant", "trunk") or not name:
            raise ConfigError(path, "key must be 'tenant:<name>' or 'trunk:<name>'")
        if kind == "trunk" and name not in trunk_names:
            raise ConfigError(path, f"unknown trunk {name!r}")
        t = _Table(item, path, _LIMIT_KEYS)
        entry: dict[str, Any] = {}
        if t.has("max_concurrent"):
            entry["max_concurrent"] = t.integer("max_concurrent", 1, 1)
        if t.has("cps"):
            entry["cps"] = t.positive_number("cps", 1.0)
        entry["burst"] = t.integer("burst", 1, 1)
        entry["queue_size"] = t.integer("queue_size", 100, 0)
        limits[key] = MappingProxyType(entry)
    hours_raw = root.data.get("service_hours", {})
    if not isinstance(hours_raw, dict):
        raise ConfigError("service_hours", f"must be a table, not {_type_name(hours_raw)}")
    from switch.calendar import ServiceHours

    hours: dict[str, Mapping[str, Any]] = {}
    for key, item in hours_raw.items():
        path = _join("service_hours", key)
        if not isinstance(item, dict):
            raise ConfigError(path, f"must be a table, not {_type_name(item)}")
        try:
            ServiceHours.from_config(item)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
        hours[key] = MappingProxyType(dict(item))
    return {
        "api": api, "groups": tuple(groups), "queues": tuple(queues), "flows": tuple(flows),
        "webhooks": tuple(webhooks), "limits": MappingProxyType(limits),
        "service_hours": MappingProxyType(hours),
    }


def _parse_security(data: object) -> SecurityConfig:
    """``[security]``: per-source flood bans and digest brute-force limits."""
    t = _Table(data, "security", ("enabled", "flood_window", "flood_limit", "ban_seconds",
                                  "allow", "auth_window", "auth_source_limit",
                                  "auth_account_limit", "max_sources", "tcp_max_per_source",
                                  "tcp_message_timeout", "tcp_idle_timeout"))
    d = SecurityConfig()
    allow = t.data.get("allow", [])
    if not isinstance(allow, list):
        raise ConfigError(t.key("allow"), f"must be an array, not {_type_name(allow)}")
    for i, item in enumerate(allow):
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"{t.key('allow')}[{i}]",
                              f"not an IP address or CIDR: {item!r}") from None
    return SecurityConfig(
        enabled=t.boolean("enabled", d.enabled),
        flood_window=t.positive_number("flood_window", d.flood_window),
        flood_limit=t.integer("flood_limit", d.flood_limit, 1),
        ban_seconds=t.positive_number("ban_seconds", d.ban_seconds),
        allow=tuple(str(a) for a in allow),
        auth_window=t.positive_number("auth_window", d.auth_window),
        auth_source_limit=t.integer("auth_source_limit", d.auth_source_limit, 1),
        auth_account_limit=t.integer("auth_account_limit", d.auth_account_limit, 1),
        max_sources=t.integer("max_sources", d.max_sources, 16, 10_000_000),
        tcp_max_per_source=t.integer("tcp_max_per_source", d.tcp_max_per_source, 1),
        tcp_message_timeout=t.positive_number("tcp_message_timeout", d.tcp_message_timeout),
        tcp_idle_timeout=t.positive_number("tcp_idle_timeout", d.tcp_idle_timeout),
    )


# --------------------------------------------------------------------------- public API

_SECTIONS = (
    "sip", "rtp", "http", "auth", "registrar", "calls", "store", "log", "prompts",
    "extensions", "trunks", "routes", "api", "groups", "queues", "flows", "webhooks", "limits",
    "service_hours", "hipcall", "click2call", "quickom", "formcall", "infocaller",
    "policy",
    "security",
)  # fmt: skip


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document (a dict) into a :class:`Config`.

    Raises :class:`ConfigError` naming the first offending key.
    """
    root = _Table(dict(data), "", _SECTIONS)
    get = root.data.get
    sip = _parse_sip(get("sip", {}))
    auth = _parse_auth(get("auth", {}))
    extensions = _parse_extensions(root, sip, auth.algorithms)
    trunks = _parse_trunks(root, sip, extensions)
    prompts = _parse_prompts(get("prompts", {}))
    control = _parse_call_control(root, extensions, trunks)
    _check_did_targets(trunks, extensions, control)
    _check_flows(control["flows"], prompts)
    config = Config(
        sip=sip,
        rtp=_parse_rtp(get("rtp", {})),
        http=_parse_http(get("http", {})),
        auth=auth,
        registrar=_parse_registrar(get("registrar", {})),
        calls=_parse_calls(get("calls", {})),
        store=_parse_store(get("store", {})),
        log=_parse_log(get("log", {})),
        prompts=prompts,
        extensions=extensions,
        trunks=trunks,
        routes=_parse_routes(root, trunks),
        **control,
    )
    if "policy" in root.data:
        from switch.policy import parse_policies

        config = dataclasses.replace(config, policies=parse_policies(root.data["policy"]))
    if "security" in root.data:
        config = dataclasses.replace(config, security=_parse_security(root.data["security"]))
    from switch.frontends import parse_sections

    frontends = parse_sections(root.data, config)
    if frontends:
        config = dataclasses.replace(config, frontends=MappingProxyType(frontends))
    return config


def _check_did_targets(trunks: tuple[Trunk, ...], extensions: tuple[Extension, ...],
                       control: Mapping[str, Any]) -> None:
    """A DID rings an extension, or reaches a ring group, queue or call flow by its number.
    (A front-end's own service numbers cannot be DID targets yet.)"""
    valid = {e.number for e in extensions}
    valid |= {g.number for g in control["groups"] if g.number}
    valid |= {q.number for q in control["queues"] if q.number}
    valid |= {str(f["number"]) for f in control["flows"] if "number" in f}
    for i, trunk in enumerate(trunks):
        for did, target in trunk.dids.items():
            if target not in valid:
                raise ConfigError(f"trunks[{i}].dids[{json.dumps(did)}]",
                                  f"unknown extension {target!r}")


def _check_flows(flows: tuple[Mapping[str, Any], ...], prompts: PromptsConfig) -> None:
    """A flow that cannot run (unknown prompt, variable, label...) fails the config load."""
    if not flows:
        return
    from media.prompts import PromptLibrary, PromptNotFound
    from switch.flows import FlowError, load_flows

    library = PromptLibrary({k: Path(v) for k, v in prompts.files.items()},
                            default_lang=prompts.language)

    def exists(name: str) -> bool:
        try:
            library.resolve(name)
        except (PromptNotFound, ValueError):
            return False
        return True

    try:
        load_flows([dict(f) for f in flows], exists)
    except FlowError as exc:
        raise ConfigError(exc.where, exc.reason) from None


def load_config(path: str | PathLike[str]) -> Config:
    """Read and validate a TOML configuration file.

    A missing/unreadable file or a TOML syntax error raises :class:`ConfigError` whose
    ``key_path`` is the file path.
    """
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, "file not found") from None
    except OSError as exc:
        raise ConfigError(name, f"cannot read: {exc.strerror or exc}") from None
    return _parse_bytes(raw, name)


def default_config() -> Config:
    """The bundled safe default (``switch/default.toml``): loopback only, no trunks."""
    raw = importlib.resources.files("switch").joinpath("default.toml").read_bytes()
    return _parse_bytes(raw, "switch/default.toml")


def _parse_bytes(raw: bytes, name: str) -> Config:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, f"not UTF-8: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"invalid TOML: {exc}") from None
    return parse_config(data)
