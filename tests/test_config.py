"""Tests for switch.config: bundled configs load, and every validation rule names its key."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from switch.config import (
    Config,
    ConfigError,
    Extension,
    Route,
    Trunk,
    default_config,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "configs" / "example.toml"
DEFAULT = ROOT / "switch" / "default.toml"


def example_data() -> dict[str, Any]:
    with EXAMPLE.open("rb") as f:
        return tomllib.load(f)


# ---------------------------------------------------------------- loading


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert [e.number for e in config.extensions] == ["1001", "1002", "1003"]
    assert config.extensions[0] == Extension(
        number="1001", password="demo-1001-secret", name="Alice"
    )
    assert len(config.trunks) == 1
    pstn = config.trunks[0]
    assert (pstn.name, pstn.host, pstn.port, pstn.transport) == ("pstn", "127.0.0.1", 5080, "udp")
    assert (pstn.username, pstn.password, pstn.register) == ("", "", False)
    assert dict(pstn.dids) == {"+902121234567": "1001"}
    assert len(config.routes) == 1
    assert config.routes[0].trunk == "pstn"
    assert config.routes[0].pattern.search("+902121234567")
    assert not config.routes[0].pattern.search("1002")
    assert config.calls.default_country == "TR"
    assert (config.rtp.port_min, config.rtp.port_max) == (20000, 20999)
    assert (config.http.address, config.http.port, config.http.enabled) == ("127.0.0.1", 8080, True)
    assert config.sip.address == "127.0.0.1"
    assert config.sip.transports == ("udp", "tcp")


def test_example_config_every_key_commented() -> None:
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if "=" in stripped and not stripped.startswith("#"):
            assert "#" in stripped, f"uncommented key: {line!r}"


def test_default_config_is_safe_on_a_laptop() -> None:
    config = default_config()
    assert config.sip.address == "127.0.0.1"
    assert config.rtp.address == "127.0.0.1"
    assert config.http.address == "127.0.0.1"
    assert config.sip.port == 5060
    assert config.sip.transports == ("udp", "tcp")
    assert (config.rtp.port_min, config.rtp.port_max) == (20000, 20999)
    assert config.http.port == 8080
    assert config.trunks == ()
    assert config.extensions == ()
    assert config.routes == ()


def test_default_config_matches_bundled_file_and_builtin_defaults() -> None:
    assert default_config() == load_config(DEFAULT)
    assert parse_config({}) == default_config()
    assert parse_config({}) == Config()


def test_spec_defaults() -> None:
    config = parse_config({})
    assert config.sip.realm == "softswitch"
    assert config.sip.user_agent == "softswitch/0.1"
    assert config.sip.max_forwards == 70
    assert config.rtp.symmetric_latch is False
    assert config.auth.nonce_lifetime == 300
    assert config.auth.algorithms == ("SHA-256", "MD5")
    assert config.auth.secret == ""
    assert config.registrar.min_expires == 60
    assert config.registrar.max_expires == 3600
    assert config.registrar.default_expires == 3600
    assert config.registrar.max_contacts == 10
    assert config.calls.ring_timeout == 60
    assert config.store.url == "sqlite:///softswitch.db"
    assert config.log.level == "INFO"


def test_trunk_defaults() -> None:
    config = parse_config({"trunks": [{"name": "t", "host": "sip.example.net"}]})
    assert config.trunks[0] == Trunk(name="t", host="sip.example.net")
    trunk = config.trunks[0]
    assert (trunk.port, trunk.transport, trunk.register, trunk.register_expires) == (
        5060,
        "udp",
        False,
        600,
    )
    assert dict(trunk.dids) == {}


def test_config_is_frozen() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sip.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.trunks[0].dids["+1"] = "1001"  # type: ignore[index]


def test_secrets_not_in_repr() -> None:
    data = example_data()
    data["auth"]["secret"] = "s3cr3t-nonce-key"
    data["trunks"][0]["username"] = "user"
    data["trunks"][0]["password"] = "trunk-pass-xyz"
    text = repr(parse_config(data))
    for secret in ("s3cr3t-nonce-key", "trunk-pass-xyz", "demo-1001-secret"):
        assert secret not in text


def test_normalisation() -> None:
    data = example_data()
    data["sip"]["transports"] = ["UDP"]
    data["auth"]["algorithms"] = ["md5"]
    data["calls"]["default_country"] = "de"
    data["log"]["level"] = "debug"
    data["sip"]["address"] = "::1"
    data["trunks"][0]["host"] = "SIP.Example.NET"
    config = parse_config(data)
    assert config.sip.transports == ("udp",)
    assert config.auth.algorithms == ("MD5",)
    assert config.calls.default_country == "DE"
    assert config.log.level == "DEBUG"
    assert config.sip.address == "::1"
    assert config.trunks[0].host == "sip.example.net"


def test_lookup_helpers() -> None:
    config = load_config(EXAMPLE)
    assert config.extension("1002") == config.extensions[1]
    assert config.extension("9999") is None
    assert config.trunk("pstn") is config.trunks[0]
    assert config.trunk("nope") is None
    assert config.route_for("+14155550100") is config.trunks[0]
    assert config.route_for("1001") is None


def test_routes_first_match_wins() -> None:
    data = example_data()
    data["trunks"].append({"name": "us", "host": "10.0.0.2"})
    data["routes"] = [{"pattern": r"^\+1", "trunk": "us"}, {"pattern": r"^\+", "trunk": "pstn"}]
    config = parse_config(data)
    assert config.routes == (
        Route(pattern=re.compile(r"^\+1"), trunk="us"),
        Route(pattern=re.compile(r"^\+"), trunk="pstn"),
    )
    assert config.route_for("+14155550100") == config.trunk("us")
    assert config.route_for("+902121234567") == config.trunk("pstn")


# ---------------------------------------------------------------- errors


def test_config_error_format() -> None:
    err = ConfigError("trunks[0].port", "must be 1..65535")
    assert str(err) == "config: trunks[0].port: must be 1..65535"
    assert err.key_path == "trunks[0].port"
    assert err.reason == "must be 1..65535"
    assert isinstance(err, ValueError)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key_path == str(path)
    assert info.value.reason == "file not found"
    assert str(info.value) == f"config: {path}: file not found"


def test_load_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sip]\nport = = 5060\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key_path == str(path)
    assert info.value.reason.startswith("invalid TOML:")
    assert "line 2" in info.value.reason


def test_load_validation_error_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[trunks]]\nname = "t"\nhost = "127.0.0.1"\nport = 70000\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "config: trunks[0].port: must be 1..65535"


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Mutation setting a dotted path ('trunks.0.port') in the example data."""

    def apply(data: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = data
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _delete(path: str) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return apply


def _append(section: str, item: dict[str, Any]) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        data.setdefault(section, []).append(item)

    return apply


def _trunk_tcp(data: dict[str, Any]) -> None:
    data["sip"]["transports"] = ["udp"]
    data["trunks"][0]["transport"] = "tcp"


# (mutation of the example config, key path, reason: exact, or a prefix when ending in "…")
def _both(*mutations: Mutation) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        for mutate in mutations:
            mutate(data)

    return apply


CASES = [
    # unknown keys
    pytest.param(_set("sips", {}), "sips", "unknown key (did you mean 'sip'?)", id="unknown-top"),
    pytest.param(
        _set("sip.prot", 5060), "sip.prot", "unknown key (did you mean 'port'?)", id="unknown-sip"
    ),
    pytest.param(_set("rtp.zzz", 1), "rtp.zzz", "unknown key", id="unknown-far"),
    pytest.param(
        _set("extensions.0.pasword", "x"), "extensions[0].pasword", "unknown key…", id="unknown-ext"
    ),
    pytest.param(_set("trunks.0.didz", {}), "trunks[0].didz", "unknown key…", id="unknown-trunk"),
    pytest.param(
        _set("routes.0.trunks", "x"), "routes[0].trunks", "unknown key…", id="unknown-route"
    ),
    # types
    pytest.param(_set("sip", 5), "sip", "must be a table, not an integer", id="section-type"),
    pytest.param(
        _set("sip.port", "5060"), "sip.port", "must be an integer, not a string", id="port-string"
    ),
    pytest.param(
        _set("sip.port", True), "sip.port", "must be an integer, not a boolean", id="port-bool"
    ),
    pytest.param(
        _set("sip.port", 5060.0), "sip.port", "must be an integer, not a float", id="port-float"
    ),
    pytest.param(
        _set("sip.realm", 1), "sip.realm", "must be a string, not an integer", id="realm-type"
    ),
    pytest.param(_set("sip.realm", ""), "sip.realm", "must not be empty", id="realm-empty"),
    pytest.param(_set("sip.user_agent", ""), "sip.user_agent", "must not be empty", id="ua-empty"),
    pytest.param(
        _set("http.enabled", "yes"),
        "http.enabled",
        "must be a boolean, not a string",
        id="bool-type",
    ),
    pytest.param(
        _set("rtp.symmetric_latch", 1), "rtp.symmetric_latch", "must be a boolean…", id="latch-type"
    ),
    pytest.param(
        _set("sip.transports", "udp"), "sip.transports", "must be an array…", id="transports-type"
    ),
    pytest.param(
        _set("extensions", {}), "extensions", "must be an array of tables…", id="extensions-table"
    ),
    pytest.param(
        _set("extensions.0", "1001"), "extensions[0]", "must be a table…", id="extension-type"
    ),
    pytest.param(
        _set("extensions.0.number", 1001),
        "extensions[0].number",
        "must be a string of digits (quote it)",
        id="ext-number-int",
    ),
    pytest.param(
        _set("auth.secret", 1), "auth.secret", "must be a string, not an integer", id="secret-type"
    ),
    pytest.param(
        _set("auth.nonce_lifetime", "x"),
        "auth.nonce_lifetime",
        "must be a number, not a string",
        id="lifetime-type",
    ),
    pytest.param(
        _set("auth.nonce_lifetime", 0),
        "auth.nonce_lifetime",
        "must be a positive number",
        id="lifetime-zero",
    ),
    pytest.param(
        _set("auth.nonce_lifetime", float("inf")),
        "auth.nonce_lifetime",
        "must be a positive number",
        id="lifetime-inf",
    ),
    pytest.param(
        _set("calls.ring_timeout", -1),
        "calls.ring_timeout",
        "must be a positive number",
        id="ring-negative",
    ),
    # ranges
    pytest.param(_set("sip.port", 0), "sip.port", "must be 1..65535", id="sip-port-0"),
    pytest.param(_set("sip.port", 65536), "sip.port", "must be 1..65535", id="sip-port-big"),
    pytest.param(_set("http.port", -1), "http.port", "must be 1..65535", id="http-port"),
    pytest.param(
        _set("trunks.0.port", 70000), "trunks[0].port", "must be 1..65535", id="trunk-port"
    ),
    pytest.param(
        _set("sip.max_forwards", 0), "sip.max_forwards", "must be 1..255", id="max-forwards"
    ),
    pytest.param(
        _set("sip.max_forwards", 256), "sip.max_forwards", "must be 1..255", id="max-forwards-big"
    ),
    pytest.param(_set("rtp.port_min", 0), "rtp.port_min", "must be 1..65535", id="rtp-min-range"),
    pytest.param(
        _set("rtp.port_min", 20001),
        "rtp.port_min",
        "must be even (RTP even, RTCP odd)",
        id="rtp-odd",
    ),
    pytest.param(
        _set("rtp.port_max", 19998),
        "rtp.port_max",
        "must be greater than rtp.port_min",
        id="rtp-order",
    ),
    pytest.param(
        _set("rtp.port_max", 20000),
        "rtp.port_max",
        "must be greater than rtp.port_min",
        id="rtp-equal",
    ),
    pytest.param(
        _set("registrar.min_expires", 0), "registrar.min_expires", "must be >= 1", id="min-expires"
    ),
    pytest.param(
        _set("registrar.max_expires", 30),
        "registrar.max_expires",
        "must be >= registrar.min_expires",
        id="max-lt-min",
    ),
    pytest.param(
        _set("registrar.default_expires", 7200),
        "registrar.default_expires",
        "must be between min_expires (60) and max_expires (3600)",
        id="default-expires",
    ),
    pytest.param(
        _set("registrar.max_contacts", 0),
        "registrar.max_contacts",
        "must be >= 1",
        id="max-contacts",
    ),
    pytest.param(
        _set("trunks.0.register_expires", 0),
        "trunks[0].register_expires",
        "must be >= 1",
        id="reg-expires",
    ),
    # addresses
    pytest.param(
        _set("sip.address", "localhost"),
        "sip.address",
        "not an IP address: 'localhost'",
        id="sip-address",
    ),
    pytest.param(
        _set("rtp.address", "300.1.1.1"),
        "rtp.address",
        "not an IP address: '300.1.1.1'",
        id="rtp-address",
    ),
    pytest.param(_set("http.address", ""), "http.address", "must not be empty", id="http-address"),
    pytest.param(
        _set("sip.address", "0.0.0.0"),
        "sip.address",
        "must be a specific address, not a wildcard",
        id="sip-wildcard",
    ),
    pytest.param(
        _set("rtp.address", "::"),
        "rtp.address",
        "must be a specific address, not a wildcard",
        id="rtp-wildcard",
    ),
    pytest.param(
        _set("trunks.0.host", "bad host!"),
        "trunks[0].host",
        "not an IP address or host name: 'bad host!'",
        id="trunk-host",
    ),
    pytest.param(
        _delete("trunks.0.host"), "trunks[0].host", "is required", id="trunk-host-missing"
    ),
    # extensions
    pytest.param(
        _append("extensions", {"number": "1002", "password": "pw-x"}),
        "extensions[3].number",
        "duplicate extension '1002' (see extensions[1])",
        id="ext-dup",
    ),
    pytest.param(
        _set("extensions.1.number", "10a2"),
        "extensions[1].number",
        "must contain digits only",
        id="ext-digits",
    ),
    pytest.param(
        _set("extensions.1.number", "+1002"),
        "extensions[1].number",
        "must contain digits only",
        id="ext-plus",
    ),
    pytest.param(
        _set("extensions.1.number", ""), "extensions[1].number", "must not be empty", id="ext-empty"
    ),
    pytest.param(
        _delete("extensions.2.number"), "extensions[2].number", "is required", id="ext-missing"
    ),
    pytest.param(
        _set("extensions.0.password", ""),
        "extensions[0].password",
        "must not be empty",
        id="ext-password",
    ),
    pytest.param(
        _delete("extensions.0.password"),
        "extensions[0].password",
        "is required (or ha1_md5/ha1_sha256)",
        id="ext-no-password",
    ),
    pytest.param(
        _set("extensions.0.ha1_md5", "0" * 32),
        "extensions[0].ha1_md5",
        "give either password or ha1_* values, not both",
        id="ext-password-and-ha1",
    ),
    pytest.param(
        _both(_delete("extensions.0.password"), _set("extensions.0.ha1_md5", "0" * 31 + "g"),
              _set("extensions.0.ha1_sha256", "0" * 64)),
        "extensions[0].ha1_md5",
        "must be 32 hex digits (H(number:realm:password) with MD5, realm 'softswitch')",
        id="ext-ha1-not-hex",
    ),
    pytest.param(
        _both(_delete("extensions.0.password"), _set("extensions.0.ha1_md5", "0" * 32)),
        "extensions[0].ha1_sha256",
        "is required: [auth] algorithms offers SHA-256 and there is no password",
        id="ext-ha1-missing-algorithm",
    ),
    pytest.param(
        _set("extensions.0.name", 5),
        "extensions[0].name",
        "must be a string, not an integer",
        id="ext-name",
    ),
    # trunks
    pytest.param(
        _append("trunks", {"name": "pstn", "host": "10.0.0.1"}),
        "trunks[1].name",
        "duplicate trunk 'pstn' (see trunks[0])",
        id="trunk-dup",
    ),
    pytest.param(
        _set("trunks.0.name", "my trunk"),
        "trunks[0].name",
        "must contain only letters, digits, '_', '.', '-'",
        id="trunk-name",
    ),
    pytest.param(
        _set("trunks.0.transport", "sctp"),
        "trunks[0].transport",
        "must be one of udp, tcp, tls",
        id="trunk-transport",
    ),
    pytest.param(
        _set("trunks.0.username", "u"),
        "trunks[0].password",
        "must not be empty when username is set",
        id="trunk-username",
    ),
    pytest.param(
        _set("trunks.0.password", "p"),
        "trunks[0].username",
        "must not be empty when password is set",
        id="trunk-password",
    ),
    pytest.param(
        _set("trunks.0.identify", "name"),
        "trunks[0].identify",
        "must be 'address' or 'ip'",
        id="trunk-identify",
    ),
    pytest.param(
        _both(_set("trunks.0.identify", "ip"),
              _append("trunks", {"name": "pstn2", "host": "127.0.0.1", "port": 5090,
                                 "identify": "ip"})),
        "trunks[1].identify",
        "trunks[0] also identifies by IP 127.0.0.1: ambiguous",
        id="trunk-identify-ambiguous",
    ),
    pytest.param(
        _set("trunks.0.register", True),
        "trunks[0].username",
        "is required when register = true",
        id="trunk-register",
    ),
    pytest.param(
        _set("trunks.0.dids", {"+902121234568": "1009"}),
        'trunks[0].dids["+902121234568"]',
        "unknown extension '1009'",
        id="did-unknown-ext",
    ),
    pytest.param(
        _set("trunks.0.dids", {"abc": "1001"}),
        'trunks[0].dids["abc"]',
        "DID must be digits with an optional leading '+'",
        id="did-bad-number",
    ),
    pytest.param(
        _set("trunks.0.dids", {"+902121234568": 1001}),
        'trunks[0].dids["+902121234568"]',
        "must be an extension number string, not an integer",
        id="did-value-type",
    ),
    pytest.param(
        _set("trunks.0.dids", ["+90"]),
        "trunks[0].dids",
        "must be a table, not an array",
        id="dids-type",
    ),
    # routes
    pytest.param(
        _set("routes.0.trunk", "voip"),
        "routes[0].trunk",
        "unknown trunk 'voip'",
        id="route-unknown-trunk",
    ),
    pytest.param(
        _set("routes.0.pattern", "^(+"),
        "routes[0].pattern",
        "invalid regular expression: …",
        id="route-bad-regex",
    ),
    pytest.param(
        _delete("routes.0.pattern"), "routes[0].pattern", "is required", id="route-no-pattern"
    ),
    # choice lists
    pytest.param(
        _set("sip.transports", ["udp", "sctp"]),
        "sip.transports[1]",
        "unsupported 'sctp' (expected one of udp, tcp, tls)",
        id="transport-unknown",
    ),
    pytest.param(
        _set("sip.transports", ["udp", "UDP"]),
        "sip.transports[1]",
        "duplicate 'udp'",
        id="transport-dup",
    ),
    pytest.param(
        _set("sip.transports", []), "sip.transports", "must not be empty", id="transport-empty"
    ),
    pytest.param(
        _set("sip.transports", [5]),
        "sip.transports[0]",
        "must be a string, not an integer",
        id="transport-item-type",
    ),
    pytest.param(
        _trunk_tcp,
        "trunks[0].transport",
        "'tcp' is not enabled in sip.transports",
        id="trunk-transport-disabled",
    ),
    pytest.param(
        _set("auth.algorithms", ["SHA-512"]),
        "auth.algorithms[0]",
        "unsupported 'SHA-512' (expected one of SHA-256, MD5)",
        id="algorithm-unknown",
    ),
    pytest.param(
        _set("auth.algorithms", []), "auth.algorithms", "must not be empty", id="algorithm-empty"
    ),
    # country, store, log
    pytest.param(
        _set("calls.default_country", "XX"),
        "calls.default_country",
        "unknown region 'XX' (expected e.g. 'TR', 'US', 'DE')",
        id="country-unknown",
    ),
    pytest.param(
        _set("calls.default_country", "Turkey"),
        "calls.default_country",
        "unknown region 'TURKEY'…",
        id="country-name",
    ),
    pytest.param(
        _set("store.url", 1), "store.url", "must be a string, not an integer", id="store-url-type"
    ),
    pytest.param(_set("store.url", ""), "store.url", "must not be empty", id="store-url-empty"),
    pytest.param(_set("store.path", "x"), "store.path", "unknown key…", id="store-unknown"),
    pytest.param(
        _set("log.level", "TRACE"),
        "log.level",
        "must be one of DEBUG, INFO, WARNING, ERROR",
        id="log-level",
    ),
    # ---- call control
    pytest.param(_set("api.keys.0.key", "short"), "api.keys[0].key",
                 "must be at least 8 characters", id="api-key-short"),
    pytest.param(_set("api.keys.0.secret", "x"), "api.keys[0].secret", "unknown key…",
                 id="api-key-unknown"),
    pytest.param(_set("groups.0.members", ["1001", "9999"]), "groups[0].members[1]",
                 "unknown extension '9999'", id="group-member"),
    pytest.param(_set("groups.0.number", "1001"), "groups[0].number",
                 "'1001' is already an extension", id="group-number-clash"),
    pytest.param(_set("queues.0.number", "600"), "queues[0].number",
                 "'600' is already groups[0]", id="queue-number-clash"),
    pytest.param(_set("queues.0.max_wait", -1), "queues[0].max_wait",
                 "must be a positive number", id="queue-max-wait"),
    pytest.param(_set("groups.0.name", "Sales Team"), "groups[0].name",
                 "must be lower-case letters, digits, '_' or '-'", id="group-name"),
    pytest.param(_set("flows.0.steps.0.prompt", "no_such_prompt"),
                 "flows.dial-by-extension.steps[0]", "'prompt': unknown prompt…",
                 id="flow-unknown-prompt"),
    pytest.param(_set("flows.0.steps.2.destination", "${nope}"),
                 "flows.dial-by-extension.steps[2]", "unknown variable 'nope'…",
                 id="flow-unknown-variable"),
    pytest.param(_set("flows.0.steps.2.on_fail", "nowhere"),
                 "flows.dial-by-extension.steps[2]", "…", id="flow-unknown-label"),
    pytest.param(_set("limits", {"trunk:nope": {"cps": 1}}), 'limits."trunk:nope"',
                 "unknown trunk 'nope'", id="limit-unknown-trunk"),
    pytest.param(_set("limits", {"pstn": {"cps": 1}}), "limits.pstn",
                 "key must be 'tenant:<name>' or 'trunk:<name>'", id="limit-key"),
    pytest.param(_set("limits", {"tenant:x": {"cps": 0}}), 'limits."tenant:x".cps',
                 "must be a positive number", id="limit-cps"),
    pytest.param(_set("service_hours.office.mon", ["18:00-09:00"]), "service_hours.office",
                 "…", id="hours-reversed"),
    pytest.param(_set("service_hours.office.timezone", "Mars/Olympus"), "service_hours.office",
                 "…", id="hours-zone"),
    pytest.param(_set("webhooks", [{"name": "x", "url": "ftp://h/x"}]), "webhooks[0].url",
                 "must be an http:// or https:// URL", id="webhook-url"),
]


@pytest.mark.parametrize(("mutate", "key_path", "reason"), CASES)
def test_validation_error(mutate: Mutation, key_path: str, reason: str) -> None:
    data = example_data()
    parse_config(copy.deepcopy(data))  # the unmodified example is valid
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    err = info.value
    assert err.key_path == key_path
    if reason.endswith("…"):
        assert err.reason.startswith(reason[:-1]), err.reason
    else:
        assert err.reason == reason
    assert str(err) == f"config: {err.key_path}: {err.reason}"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set("sip.address", "::1"), id="sip-ipv6"),
        pytest.param(_set("http.address", "0.0.0.0"), id="http-wildcard"),
        pytest.param(
            _both(_set("sip.transports", ["tcp"]), _set("trunks.0.transport", "tcp")), id="tcp-only"
        ),
        pytest.param(_set("trunks.0.host", "sip.example.net"), id="trunk-hostname"),
        pytest.param(_set("trunks.0.host", "2001:db8::1"), id="trunk-ipv6"),
        pytest.param(_set("trunks.0.dids", {"2121234567": "1002"}), id="did-national"),
        pytest.param(_append("extensions", {"number": "2000", "password": "x"}), id="ext-no-name"),
        pytest.param(
            _both(_set("rtp.port_min", 30000), _set("rtp.port_max", 30001)), id="rtp-one-pair"
        ),
        pytest.param(_set("auth.nonce_lifetime", 12.5), id="float-lifetime"),
        pytest.param(_delete("sip"), id="no-sip-table"),
        pytest.param(
            _both(_both(_set("extensions", []), _set("trunks.0.dids", {})),
                  _both(_set("groups", []), _set("queues", [])),
                  _set("hipcall.numbers", {}), _delete("formcall"), _delete("quickom")),
            id="no-extensions-no-dids",
        ),
    ],
)
def test_valid_variations(mutate: Mutation) -> None:
    data = example_data()
    mutate(data)
    parse_config(data)
