"""Unit tests of switch.security on a virtual clock: counters, ban table, allow-list, limits."""

from __future__ import annotations

import pytest

from switch.config import ConfigError, parse_config
from switch.security import AllowList, BanTable, SecurityConfig, SlidingWindow, SourceGuard


def test_sliding_window_counts_and_forgets() -> None:
    w = SlidingWindow(2.0, 100)
    for i in range(16):
        assert w.hit("a", 10.0 + i * 0.1) == pytest.approx(i + 1)
    # Two windows later everything is forgotten.
    assert w.count("a", 14.1) == 0.0
    # Half a window after the bucket ended, half of the previous bucket still counts.
    w.hit("b", 0.0, 10)
    assert w.count("b", 3.0) == pytest.approx(5.0)
    w.refund("b", 3.0)  # nothing in the current bucket: never below zero
    assert w.count("b", 3.0) == pytest.approx(5.0)


def test_sliding_window_is_bounded() -> None:
    w = SlidingWindow(2.0, 1000)
    for i in range(100_000):
        w.hit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i * 1e-4)
    assert len(w) == 1000
    # The most recent keys survive; the oldest were evicted.
    assert w.count("10.1.134.159", 10.0) > 0  # i = 99,999
    assert w.count("10.0.0.0", 10.0) == 0.0


def test_ban_table_expiry_and_extension() -> None:
    t = BanTable(10)
    t.ban("1.2.3.4", 100.0, 300.0)
    assert t.is_banned("1.2.3.4", 399.9)
    assert not t.is_banned("1.2.3.4", 400.0)
    assert len(t) == 0  # removed on lookup
    t.ban("1.2.3.4", 0.0, 300.0)
    t.ban("1.2.3.4", 10.0, 5.0)  # a shorter re-ban does not shorten it
    assert t.expires("1.2.3.4") == 300.0
    assert t.active(299.0) == {"1.2.3.4": 300.0}
    assert t.unban("1.2.3.4") and not t.is_banned("1.2.3.4", 1.0)


def test_ban_table_bounded_under_a_sweep() -> None:
    t = BanTable(5000)
    for i in range(100_000):
        t.ban(f"src{i}", i * 1e-3, 300.0)
    assert len(t) == 5000
    assert t.evicted == 95_000
    assert t.is_banned("src99999", 100.0)
    assert not t.is_banned("src0", 100.0)  # evicted: the oldest ban goes first
    # Expired bans are purged from the front when new ones arrive.
    t.ban("late", 1000.0, 1.0)
    assert len(t) == 1


def test_allow_list() -> None:
    a = AllowList(["127.0.0.4", "10.0.0.0/8", "2001:db8::/32"])
    assert "127.0.0.4" in a and "10.200.1.1" in a and "2001:db8::1" in a
    assert "127.0.0.2" not in a and "11.0.0.1" not in a and "not-an-ip" not in a
    assert "127.0.0.4" in a  # cached answer


def _guard(**kw: object) -> SourceGuard:
    return SourceGuard(SecurityConfig(**kw), extra_allow=["127.0.0.4", "pstn.example.com"])  # type: ignore[arg-type]


def test_flood_bans_after_limit_and_expires() -> None:
    g = _guard()
    now = 1000.0
    results = [g.request("127.0.0.2", now + i * 0.01) for i in range(20)]
    # "more than 16 requests in 2 s": the 17th bans.
    assert results[:16] == [True] * 16
    assert results[16] is False
    assert not g.admit("127.0.0.2", now + 1.0)
    assert not g.admit("127.0.0.2", now + 299.0)
    assert g.admit("127.0.0.2", now + 301.0)
    assert g.admit("127.0.0.3", now + 1.0)
    assert g.stats()["bans_flood"] == 1
    # After the ban the counters start afresh.
    assert g.request("127.0.0.2", now + 301.0)


def test_steady_legitimate_rate_is_not_banned() -> None:
    g = _guard()
    # Two authenticated calls per second: challenge + authenticated INVITE per call, the
    # latter refunded, for 10 minutes.
    t = 0.0
    for _ in range(1200):
        assert g.request("127.0.0.3", t)
        assert g.request("127.0.0.3", t + 0.01)
        g.auth_succeeded("127.0.0.3", "1001", t + 0.01)
        t += 0.5
    assert g.admit("127.0.0.3", t)
    assert g.stats().get("bans_flood", 0) == 0


def test_allow_listed_trunk_is_never_banned() -> None:
    g = _guard()
    for i in range(1000):
        assert g.request("127.0.0.4", i * 0.001)
        g.auth_failed("127.0.0.4", "x", i * 0.001)
    assert g.admit("127.0.0.4", 1.0)
    assert g.stats()["allowlisted_flood"] > 0
    assert "pstn.example.com" not in g.allow  # host names are skipped, not an error


def test_auth_failures_ban_source() -> None:
    g = _guard(flood_limit=10_000)
    banned = [g.auth_failed("127.0.0.2", "1001", float(i)) for i in range(10)]
    assert banned == [False] * 9 + [True]
    assert not g.admit("127.0.0.2", 10.0)
    assert g.stats()["bans_auth"] == 1


def test_account_throttle_spares_known_address() -> None:
    g = _guard()
    g.auth_succeeded("127.0.0.3", "1001", 0.0)  # the real phone
    # A distributed guess: one failure from each of many addresses (no source ban).
    for i in range(10):
        assert g.auth_allowed(f"198.51.100.{i}", "1001", 1.0 + i)
        g.auth_failed(f"198.51.100.{i}", "1001", 1.0 + i)
    assert not g.auth_allowed("198.51.100.200", "1001", 12.0)  # throttled
    assert g.auth_allowed("127.0.0.3", "1001", 12.0)  # the real phone is not locked out
    assert g.auth_allowed("198.51.100.200", "1002", 12.0)  # other accounts unaffected
    # The throttle ends when the failures age out of the window.
    assert g.auth_allowed("198.51.100.200", "1001", 200.0)


def test_unknown_and_known_accounts_are_limited_alike() -> None:
    g = _guard()
    for name in ("1001", "no-such-user"):
        for i in range(10):
            g.auth_failed(f"203.0.113.{i}", name, float(i))
    assert g.auth_allowed("192.0.2.1", "1001", 11.0) is False
    assert g.auth_allowed("192.0.2.1", "no-such-user", 11.0) is False


def test_disabled_guard_counts_nothing() -> None:
    g = _guard(enabled=False)
    assert all(g.request("127.0.0.2", 0.0) for _ in range(100))
    assert not g.auth_failed("127.0.0.2", "1001", 0.0)
    assert g.admit("127.0.0.2", 0.0)


def test_guard_memory_bounded_under_source_sweep() -> None:
    g = _guard(max_sources=2048)
    for i in range(100_000):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        now = i * 1e-4
        for _ in range(17):
            g.request(ip, now)
        g.auth_failed(ip, f"user{i}", now)
    s = g.stats()
    assert s["bans_flood"] == 100_000
    assert s["banned"] <= 2048
    assert s["tracked_sources"] <= 2048
    assert s["tracked_accounts"] <= 2048
    assert len(g.source_failures) <= 2048


def test_config_section() -> None:
    c = parse_config({"security": {"flood_limit": 30, "ban_seconds": 60,
                                   "allow": ["192.0.2.0/24"], "max_sources": 100}})
    assert c.security.flood_limit == 30 and c.security.ban_seconds == 60.0
    assert c.security.allow == ("192.0.2.0/24",)
    assert parse_config({}).security == SecurityConfig()
    with pytest.raises(ConfigError, match=r"security\.allow\[0\]"):
        parse_config({"security": {"allow": ["nope"]}})
    with pytest.raises(ConfigError, match=r"security\.flod_limit"):
        parse_config({"security": {"flod_limit": 3}})
    with pytest.raises(ConfigError, match=r"security\.flood_limit"):
        parse_config({"security": {"flood_limit": 0}})


async def test_bans_and_defence_counters_are_in_metrics() -> None:
    from prometheus_client import generate_latest

    from switch.app import Switch
    from switch.config import parse_config
    from switch.metrics import make_registry

    sw = Switch(parse_config({"http": {"enabled": False}, "store": {"url": "sqlite:///:memory:"}}))
    registry = make_registry(sw)
    before = generate_latest(registry).decode()
    assert "softswitch_security_banned 0.0" in before
    for _ in range(20):  # a flood from one source gets it banned
        sw.security.request("127.0.0.2", 1000.0)
    sw.security.admit("127.0.0.2", 1000.5)  # and what it sends next is dropped
    text = generate_latest(registry).decode()
    assert "softswitch_security_banned 1.0" in text
    assert 'softswitch_security_events_total{event="dropped_banned"} 1.0' in text
    assert "softswitch_security_tracked_sources" in text
