"""Routing of a dialled string to an extension or a trunk, and inbound DID mapping."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers

from switch.config import Config, Trunk

# What a phone may dial: digits, a leading +, * and # (service codes). Anything else could
# smuggle a second target or a header into the outgoing leg and is refused.
_DIALLED = re.compile(r"^\+?[0-9*#]{1,32}$")


@dataclass(frozen=True, slots=True)
class ExtensionTarget:
    """Ring a local extension."""

    number: str


@dataclass(frozen=True, slots=True)
class TrunkTarget:
    """Send the call out of a trunk to an E.164 number."""

    trunk: Trunk
    number: str  # E.164, with the leading +


@dataclass(frozen=True, slots=True)
class Unroutable:
    """No route: the SIP status and reason to answer with."""

    status: int
    reason: str


Target = ExtensionTarget | TrunkTarget | Unroutable


@functools.lru_cache(maxsize=4096)
def to_e164(number: str, default_country: str) -> str | None:
    """Normalise an E.164 or national number with ``phonenumbers``; None when not valid."""
    if not number or not _DIALLED.match(number) or "*" in number or "#" in number:
        return None
    candidate = number
    if not candidate.startswith("+") and candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    try:
        region = None if candidate.startswith("+") else default_country
        parsed = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


class Router:
    """Decides where a dialled string goes, from the configuration."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._extensions = {e.number for e in config.extensions}
        self._trunks = {t.name: t for t in config.trunks}
        # DIDs are compared in E.164 so "+90 212..." and "0212..." in config both match.
        self._dids: dict[str, tuple[Trunk, str]] = {}
        for trunk in config.trunks:
            for did, ext in trunk.dids.items():
                key = to_e164(did, config.calls.default_country) or did
                self._dids[key] = (trunk, ext)

    def is_extension(self, number: str) -> bool:
        """True for a configured extension number."""
        return number in self._extensions

    def route_outbound(self, dialled: str) -> Target:
        """Route a string dialled by an authenticated extension."""
        if not _DIALLED.match(dialled):
            return Unroutable(484, "Address Incomplete")
        if dialled in self._extensions:
            return ExtensionTarget(dialled)
        e164 = to_e164(dialled, self._config.calls.default_country)
        if e164 is None:
            return Unroutable(404, "Not Found")
        for route in self._config.routes:
            if route.pattern.search(e164):
                return TrunkTarget(self._trunks[route.trunk], e164)
        return Unroutable(404, "No Route")

    def route_inbound(self, trunk: Trunk, dialled: str) -> Target:
        """Route a call that arrived from ``trunk`` (only its DIDs are reachable)."""
        e164 = to_e164(dialled, self._config.calls.default_country)
        for key in (e164, dialled):
            if key is None:
                continue
            hit = self._dids.get(key)
            if hit is not None and hit[0].name == trunk.name:
                return ExtensionTarget(hit[1])
        if trunk.transit and e164 is not None:
            return self.route_outbound(e164)
        return Unroutable(404, "Not Found")
