"""Destination policy per account (tenant): which outside numbers an account may dial.

Toll fraud is the attack that pays: a stolen extension password or API key is used to call
premium-rate and far-away numbers the attacker is paid for. A policy limits the damage an
account can do by class of destination, checked before anything is dialled, for phones'
own calls (``switch.app``) and for every originate, connect and transfer
(``switch.control``), whoever asked for it (the HTTP API, a front-end, the scheduler, a
flow).

``[policy.<tenant>]`` in the config (``[policy."*"]`` for every tenant without its own
section)::

    [policy.default]
    scope = "national"                        # extensions | national | international
    blocked_types = ["PREMIUM_RATE", "SHARED_COST"]
    blocked_prefixes = ["+90888"]
    blocked_countries = ["CU"]
    allowed_prefixes = ["+90444"]             # wins over every other rule

Internal destinations (extensions, ring groups, queues, flows, prompts) are always allowed:
the policy is about what leaves the switch through a trunk. Without any section the built-in
default applies: every routable number, except premium-rate ones (phonenumbers' number type
``PREMIUM_RATE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import phonenumbers

from switch.config import ConfigError
from switch.limits import LimitExceeded, Limits, Permit

__all__ = [
    "DEFAULT_POLICY",
    "NUMBER_TYPES",
    "SCOPES",
    "DestinationPolicy",
    "PolicyBook",
    "acquire_now",
    "parse_policies",
]

#: Destination scopes, each including the one before it.
SCOPES = ("extensions", "national", "international")

#: The names ``blocked_types`` accepts: phonenumbers' ``PhoneNumberType`` constants.
NUMBER_TYPES: Mapping[str, int] = MappingProxyType({
    name: value for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
})

_KEYS = ("scope", "blocked_types", "blocked_prefixes", "blocked_countries", "allowed_prefixes")


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """What one account may dial outside the switch.

    ``scope``: ``extensions`` (internal destinations only), ``national`` (numbers with the
    country calling code of ``[calls] default_country``) or ``international`` (any country).
    ``blocked_types``: phonenumbers number types refused (``PREMIUM_RATE``...).
    ``blocked_prefixes`` / ``blocked_countries``: E.164 prefixes / ISO regions refused.
    ``allowed_prefixes``: E.164 prefixes allowed whatever the other rules say.
    """

    scope: str = "international"
    blocked_types: tuple[str, ...] = ("PREMIUM_RATE",)
    blocked_prefixes: tuple[str, ...] = ()
    blocked_countries: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()

    def check_number(self, e164: str, default_country: str) -> str | None:
        """Why ``e164`` (an E.164 number, ``+`` and digits) may not be dialled; None when it
        may."""
        if any(e164.startswith(p) for p in self.allowed_prefixes):
            return None
        if self.scope == "extensions":
            return "outside numbers are not allowed"
        try:
            parsed = phonenumbers.parse(e164, None)
        except phonenumbers.NumberParseException:
            return "not an E.164 number"
        # "National" by country calling code, as a dial plan sees it: +1 numbers are national
        # for every NANP country.
        home = phonenumbers.country_code_for_region(default_country)
        if self.scope == "national" and parsed.country_code != home:
            return "international numbers are not allowed"
        for prefix in self.blocked_prefixes:
            if e164.startswith(prefix):
                return f"prefix {prefix} is blocked"
        if self.blocked_countries:
            region = phonenumbers.region_code_for_number(parsed)
            if region in self.blocked_countries:
                return f"numbers in {region} are blocked"
        if self.blocked_types:
            kind = phonenumbers.number_type(parsed)
            for name in self.blocked_types:
                if NUMBER_TYPES[name] == kind:
                    return f"{name.lower().replace('_', '-')} numbers are blocked"
        return None


#: The policy of a tenant without a section (and without ``[policy."*"]``).
DEFAULT_POLICY = DestinationPolicy()


class PolicyBook:
    """The policies of every tenant; :meth:`check` answers for one destination."""

    def __init__(self, policies: Mapping[str, DestinationPolicy], default_country: str) -> None:
        self._policies = dict(policies)
        self._fallback = self._policies.get("*", DEFAULT_POLICY)
        self.default_country = default_country

    def policy(self, tenant: str) -> DestinationPolicy:
        """The policy that applies to ``tenant``."""
        return self._policies.get(tenant, self._fallback)

    def check(self, tenant: str, kind: str, value: str) -> str | None:
        """Why ``tenant`` may not dial a destination of ``kind`` (``number`` for an outside
        E.164 number; anything else is internal and allowed); None when it may."""
        if kind != "number":
            return None
        return self.policy(tenant).check_number(value, self.default_country)


def acquire_now(limits: Limits, keys: Sequence[str]) -> Permit | LimitExceeded:
    """Take a permit from ``limits`` without waiting (for a phone's INVITE, which is handled
    synchronously): the permit, or the :class:`LimitExceeded` saying which limit is full.

    ``Limits.acquire`` with ``max_wait=0`` never suspends (it admits or refuses at once), so
    its coroutine is driven to the end here instead of being scheduled.
    """
    coro = limits.acquire(keys, 0.0)
    try:
        coro.send(None)
    except StopIteration as done:
        permit: Permit = done.value
        return permit
    except LimitExceeded as exc:
        return exc
    # It suspended after all (a future change to Limits): refuse rather than block.
    coro.close()
    return LimitExceeded(",".join(keys), "timeout", 0.0)


def _strings(table: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}.{key}", "must be an array of non-empty strings")
    return tuple(value)


def _parse_one(table: object, path: str) -> DestinationPolicy:
    if not isinstance(table, dict):
        raise ConfigError(path, "must be a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"{path}.{key}", f"unknown key (expected one of {', '.join(_KEYS)})")
    scope = table.get("scope", DEFAULT_POLICY.scope)
    if scope not in SCOPES:
        raise ConfigError(f"{path}.scope", f"must be one of {', '.join(SCOPES)}")
    types = _strings(table, "blocked_types", path) if "blocked_types" in table \
        else DEFAULT_POLICY.blocked_types
    for i, name in enumerate(types):
        if name.upper() not in NUMBER_TYPES:
            raise ConfigError(f"{path}.blocked_types[{i}]",
                              f"unknown number type {name!r} (e.g. PREMIUM_RATE, SHARED_COST)")
    prefixes: dict[str, tuple[str, ...]] = {}
    for key in ("blocked_prefixes", "allowed_prefixes"):
        prefixes[key] = _strings(table, key, path)
        for i, prefix in enumerate(prefixes[key]):
            if not prefix.startswith("+") or not prefix[1:].isdigit() or len(prefix) > 16:
                raise ConfigError(f"{path}.{key}[{i}]",
                                  "must be an E.164 prefix: '+' and 1-15 digits")
    countries = tuple(c.upper() for c in _strings(table, "blocked_countries", path))
    for i, region in enumerate(countries):
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"{path}.blocked_countries[{i}]", f"unknown region {region!r}")
    return DestinationPolicy(
        scope=scope, blocked_types=tuple(t.upper() for t in types),
        blocked_prefixes=prefixes["blocked_prefixes"], blocked_countries=countries,
        allowed_prefixes=prefixes["allowed_prefixes"],
    )


def parse_policies(data: object) -> Mapping[str, DestinationPolicy]:
    """Validate the ``[policy]`` table: tenant name (or ``"*"``) -> its policy table."""
    if not isinstance(data, dict):
        raise ConfigError("policy", "must be a table of [policy.<tenant>] tables")
    result: dict[str, DestinationPolicy] = {}
    for tenant, table in data.items():
        path = f"policy.{tenant}" if tenant.replace("_", "").replace("-", "").isalnum() \
            else f'policy."{tenant}"'
        result[tenant] = _parse_one(table, path)
    return MappingProxyType(result)
