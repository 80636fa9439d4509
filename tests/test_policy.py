"""Destination policy, hashed API keys, phone admission limits and the originate audit log.

Unit tests of switch/policy.py and switch/audit.py, config validation of ``[policy.<tenant>]``
and ``key_sha256``, and the HTTP API against a real Switch on loopback: a hashed key works,
an originate to a premium-rate number is refused with 403 ``destination_not_allowed`` before
anything reaches the trunk (a UDP socket that records every datagram), a list with one refused
entry places nothing, and every originate, accepted or refused, is audited with the key's
name and the client's IP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from switch.api import find_api_key
from switch.app import Switch
from switch.audit import AuditLog
from switch.config import ConfigError, parse_config
from switch.control import DestinationNotAllowed
from switch.limits import LimitExceeded, Limits, Permit
from switch.policy import DEFAULT_POLICY, DestinationPolicy, PolicyBook, acquire_now

try:
    from peers.ports import free_port_range, free_udp_tcp_port
except ImportError:  # pragma: no cover - run from the repository root
    from tests.peers.ports import free_port_range, free_udp_tcp_port

TR_MOBILE = "+905321234567"
TR_PREMIUM = "+909001234567"  # Turkish 900 range: phonenumbers type PREMIUM_RATE
ES_FIXED = ("+34912345678", "+34911888920")
GB_PREMIUM = "+449098790000"


# --------------------------------------------------------------------------- policy rules


def test_default_policy_blocks_premium_only() -> None:
    for number in (TR_MOBILE, *ES_FIXED, "+902121234567"):
        assert DEFAULT_POLICY.check_number(number, "TR") is None, number
    assert DEFAULT_POLICY.check_number(TR_PREMIUM, "TR") == "premium-rate numbers are blocked"
    assert DEFAULT_POLICY.check_number(GB_PREMIUM, "TR") is not None


def test_scopes_prefixes_countries_and_allow_list() -> None:
    national = DestinationPolicy(scope="national")
    assert national.check_number(TR_MOBILE, "TR") is None
    assert national.check_number(ES_FIXED[0], "TR") == "international numbers are not allowed"
    assert national.check_number(ES_FIXED[0], "ES") is None
    internal = DestinationPolicy(scope="extensions")
    assert internal.check_number(TR_MOBILE, "TR") == "outside numbers are not allowed"
    prefixes = DestinationPolicy(blocked_prefixes=("+90532",), blocked_countries=("ES",))
    assert prefixes.check_number(TR_MOBILE, "TR") == "prefix +90532 is blocked"
    assert prefixes.check_number("+905051234567", "TR") is None
    assert prefixes.check_number(ES_FIXED[1], "TR") == "numbers in ES are blocked"
    allowed = DestinationPolicy(scope="extensions", allowed_prefixes=("+90900123",))
    assert allowed.check_number(TR_PREMIUM, "TR") is None  # the allow-list wins
    assert allowed.check_number("+909009999999", "TR") is not None


def test_policy_book_fallback_and_internal_destinations() -> None:
    book = PolicyBook({"acme": DestinationPolicy(scope="national"),
                       "*": DestinationPolicy(scope="extensions")}, "TR")
    assert book.check("acme", "number", ES_FIXED[0]) is not None
    assert book.check("acme", "number", TR_MOBILE) is None
    assert book.check("other", "number", TR_MOBILE) == "outside numbers are not allowed"
    for kind in ("extension", "group", "queue", "flow", "message"):
        assert book.check("other", kind, "1001") is None
    assert PolicyBook({}, "TR").check("x", "number", TR_PREMIUM) is not None


# --------------------------------------------------------------------------- config


def _config(**sections: Any) -> Any:
    return parse_config(sections)


def test_policy_config_parsed() -> None:
    config = _config(policy={"acme": {
        "scope": "national", "blocked_types": ["premium_rate", "SHARED_COST"],
        "blocked_prefixes": ["+90888"], "blocked_countries": ["cu"],
        "allowed_prefixes": ["+90444"]}, "*": {"scope": "extensions"}})
    acme = config.policies["acme"]
    assert acme == DestinationPolicy("national", ("PREMIUM_RATE", "SHARED_COST"), ("+90888",),
                                     ("CU",), ("+90444",))
    assert config.policies["*"].blocked_types == ("PREMIUM_RATE",)
    assert _config().policies == {}


@pytest.mark.parametrize(("policy", "where"), [
    ({"acme": {"scope": "world"}}, "policy.acme.scope"),
    ({"acme": {"colour": "red"}}, "policy.acme.colour"),
    ({"acme": {"blocked_types": ["EXPENSIVE"]}}, "policy.acme.blocked_types[0]"),
    ({"acme": {"blocked_prefixes": ["90900"]}}, "policy.acme.blocked_prefixes[0]"),
    ({"acme": {"allowed_prefixes": ["+9a"]}}, "policy.acme.allowed_prefixes[0]"),
    ({"acme": {"blocked_countries": ["XX"]}}, "policy.acme.blocked_countries[0]"),
    ({"acme": {"blocked_prefixes": "+90"}}, "policy.acme.blocked_prefixes"),
    ({"acme": "national"}, "policy.acme"),
])
def test_policy_config_errors(policy: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(policy=policy)
    assert err.value.key_path == where, str(err.value)


def test_api_key_sha256_config() -> None:
    digest = hashlib.sha256(b"secret-key-1").hexdigest()
    config = _config(api={"keys": [{"key_sha256": digest.upper(), "tenant": "acme",
                                    "name": "crm"},
                                   {"key": "plain-key-2", "name": "ops"}]})
    hashed, plain = config.api.keys
    assert hashed.key == "" and hashed.key_sha256 == digest
    assert plain.key_sha256 == hashlib.sha256(b"plain-key-2").hexdigest()
    assert "secret" not in repr(config.api.keys) and digest not in repr(config.api.keys)
    assert find_api_key(config.api.keys, "secret-key-1") is hashed
    assert find_api_key(config.api.keys, "plain-key-2") is plain
    assert find_api_key(config.api.keys, "plain-key-3") is None
    assert find_api_key(config.api.keys, digest) is None  # the hash itself is no key
    for keys, where in [
        ([{"key_sha256": "abc"}], "api.keys[0].key_sha256"),
        ([{"key": "plain-key-2", "key_sha256": digest}], "api.keys[0].key"),
        ([{"tenant": "x"}], "api.keys[0].key"),
        ([{"key": "secret-key-1"}, {"key_sha256": digest}], "api.keys[1].key_sha256"),
    ]:
        with pytest.raises(ConfigError) as err:
            _config(api={"keys": keys})
        assert err.value.key_path == where, str(err.value)


# --------------------------------------------------------------------------- limits, audit


async def test_acquire_now_admits_then_refuses_without_waiting() -> None:
    limits = Limits({"tenant:acme": {"max_concurrent": 1}})
    first = acquire_now(limits, ["tenant:acme", "trunk:none"])
    assert isinstance(first, Permit)
    second = acquire_now(limits, ["tenant:acme"])
    assert isinstance(second, LimitExceeded) and second.key == "tenant:acme"
    first.release()
    third = acquire_now(limits, ["tenant:acme"])
    assert isinstance(third, Permit)
    assert isinstance(acquire_now(limits, ["tenant:other"]), Permit)  # unlimited


def test_audit_log_json_lines(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(keep=2, clock=lambda: 1700000000.25)
    seen: list[dict[str, Any]] = []
    audit.sinks.append(seen.append)
    audit.sinks.append(lambda entry: 1 / 0)  # a failing sink does not fail the call
    with caplog.at_level(logging.INFO, logger="switch.audit"):
        for n in range(3):
            audit.record("originate", result="accepted", destination=str(n), api_key=None)
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "switch.audit" and r.levelno == logging.INFO]
    assert len({line.pop("id") for line in lines}) == 3  # a fresh id per entry
    assert lines[0] == {"time": 1700000000.25, "action": "originate", "result": "accepted",
                        "destination": "0"}
    assert [e["destination"] for e in audit.recent] == ["1", "2"]
    assert len(seen) == 3


# --------------------------------------------------------------------------- the HTTP API

KEY = f"k-{secrets.token_hex(8)}"


class _Recorder(asyncio.DatagramProtocol):
    """The trunk: records every datagram, never answers."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(data)


@dataclass
class Env:
    sw: Switch
    client: httpx.AsyncClient
    trunk: _Recorder


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    sip_port, trunk_port, http_port = (free_udp_tcp_port() for _ in range(3))
    rtp = free_port_range(20)
    config = parse_config({
        "sip": {"address": "127.0.0.1", "port": sip_port, "transports": ["udp"]},
        "rtp": {"address": "127.0.0.1", "port_min": rtp[0], "port_max": rtp[1]},
        "http": {"address": "127.0.0.1", "port": http_port},
        "calls": {"ring_timeout": 15, "recordings_dir": str(tmp_path / "rec")},
        "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
        "api": {"keys": [{"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                          "tenant": "acme", "name": "crm"}],
                "prompts_dir": str(tmp_path / "prompts")},
        "extensions": [{"number": "1001", "password": "pw-1001-secret", "tenant": "acme"}],
        "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": trunk_port}],
        "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
        "policy": {"acme": {"scope": "national", "blocked_types": ["PREMIUM_RATE"]}},
    })
    loop = asyncio.get_running_loop()
    transport, recorder = await loop.create_datagram_endpoint(
        _Recorder, local_addr=("127.0.0.1", trunk_port))
    sw = Switch(config)
    await sw.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=15.0,
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield Env(sw, client, recorder)
    finally:
        await sw.stop()
        transport.close()


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return str(err["message"])


async def test_api_refuses_blocked_destinations_and_audits(env: Env) -> None:
    # Premium-rate and (for a national-only tenant) international: 403, nothing dialled.
    for dest in (TR_PREMIUM, ES_FIXED[0], f"{TR_MOBILE},{TR_PREMIUM}"):
        r = await env.client.post("/v1/calls", json={"destination": dest})
        _error(r, 403, "destination_not_allowed")
    r = await env.client.post("/v1/calls", json={"destination": "1001", "then": TR_PREMIUM})
    _error(r, 403, "destination_not_allowed")
    r = await env.client.post("/v1/schedule", json={"request": {"destination": TR_PREMIUM}})
    _error(r, 403, "destination_not_allowed")
    assert not env.sw.b2bua.calls
    # A wrong key is still 401; the hashed key works and places an allowed call.
    r = await env.client.post("/v1/calls", json={"destination": TR_MOBILE},
                              headers={"Authorization": "Bearer wrong-key-123"})
    _error(r, 401, "unauthorized")
    r = await env.client.post("/v1/calls", json={"destination": TR_MOBILE})
    assert r.status_code == 202, r.text
    call_id = r.json()["calls"][0]["call_id"]
    for _ in range(200):  # bounded: the INVITE goes out asynchronously
        if env.trunk.packets:
            break
        await asyncio.sleep(0.05)
    invites = [p for p in env.trunk.packets if p.startswith(b"INVITE ")]
    assert invites and all(TR_MOBILE.encode() in p.split(b"\r\n")[0] for p in invites)
    assert not any(TR_PREMIUM.encode() in p or ES_FIXED[0].encode() in p
                   for p in env.trunk.packets)
    # The audit log: five refusals and one acceptance, each with who asked.
    entries = [e for e in env.sw.audit.recent if e["action"] == "originate"]
    assert [e["result"] for e in entries] == ["denied"] * 5 + ["accepted"]
    for entry in entries:
        assert entry["tenant"] == "acme" and entry["api_key"] == "crm", entry
        assert entry["client_ip"] == "127.0.0.1" and entry["via"] == "api", entry
    assert entries[0]["reason"] == "premium-rate numbers are blocked"
    assert entries[1]["reason"] == "international numbers are not allowed"
    assert entries[-1]["call_id"] == call_id and entries[-1]["destination"] == TR_MOBILE
    env.sw.hangup(call_id)
    # The same entries are in the store (committed in a batch), newest first, for the tenant.
    stored: list[dict[str, object]] = []
    for _ in range(100):  # bounded: the batch commits within a fraction of a second
        r = await env.client.get("/v1/audit", params={"action": "originate"})
        assert r.status_code == 200, r.text
        stored = r.json()["entries"]
        if len(stored) == len(entries):
            break
        await asyncio.sleep(0.05)
    assert [e["id"] for e in stored] == [e["id"] for e in reversed(entries)]
    assert stored[0]["api_key"] == "crm" and stored[0]["call_id"] == call_id
    assert (await env.sw.store.list_audit(tenant="someone-else")) == []


async def test_control_verbs_check_the_policy(env: Env) -> None:
    sw = env.sw
    with pytest.raises(DestinationNotAllowed) as err:
        sw.originate(TR_PREMIUM, tenant="acme", tags={"frontend": "hipcall"})
    assert err.value.reason == "premium-rate numbers are blocked"
    # Another tenant falls back to the default policy: international allowed, premium not.
    ref = sw.originate(ES_FIXED[1], tenant="other")
    with pytest.raises(DestinationNotAllowed):
        sw.originate(GB_PREMIUM, tenant="other")
    audit = [e for e in sw.audit.recent if e["action"] == "originate"]
    assert audit[0]["frontend"] == "hipcall" and audit[0]["via"] == "frontend"
    assert audit[1]["result"] == "accepted" and audit[1]["tenant"] == "other"
    sw.hangup(ref.call_id)
    await sw.wait_call(ref.call_id, timeout=10)
