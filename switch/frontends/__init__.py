"""Vendor front-ends: thin HTTP (and dial-plan) mappings of other vendors' click-to-call APIs
onto the switch's call control.

Each front-end is a module here with a TOML section of the same name (``[hipcall]``,
``[click2call]``, ``[quickom]``, ``[formcall]``, ``[infocaller]``) and two functions:

* ``parse(raw: Mapping[str, Any], config: Config) -> object`` validates the section when the
  configuration loads (raising :class:`switch.config.ConfigError` with the key path and the
  reason), so ``softswitch check-config`` catches mistakes;
* ``install(sw: Switch, settings: object) -> None`` wires it into a switch being built: HTTP
  routes through ``sw.http_installers``, dialled numbers through ``sw.add_service``, CDR sinks,
  webhook signers...

A section that is absent leaves its front-end off.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switch.app import Switch
    from switch.config import Config

FRONTENDS: tuple[str, ...] = ("hipcall", "click2call", "quickom", "formcall", "infocaller")


def _module(name: str) -> Any:
    return importlib.import_module(f"switch.frontends.{name}")


def parse_sections(data: Mapping[str, Any], config: Config) -> dict[str, object]:
    """Validate every front-end section present in the TOML document."""
    settings: dict[str, object] = {}
    for name in FRONTENDS:
        if name in data:
            settings[name] = _module(name).parse(data[name], config)
    return settings


def install_all(sw: Switch) -> None:
    """Install every configured front-end into ``sw``."""
    for name, settings in sw.config.frontends.items():
        _module(name).install(sw, settings)
