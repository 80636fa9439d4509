"""Signalling defences: per-source flood detection, a ban table, and brute-force limits.

Sans-IO: every method takes ``now`` (seconds on any monotonic clock) and nothing here touches
a socket, so the logic is tested on a virtual clock. :class:`SourceGuard` is the facade the
switch uses:

* the SIP stack asks :meth:`SourceGuard.admit` before parsing a datagram (or accepting a TCP
  connection, or sending to an address): a banned source is dropped silently, both ways, so it
  learns nothing (not even that it was banned);
* each new out-of-dialog request is counted with :meth:`SourceGuard.request`; more than
  ``flood_limit`` in ``flood_window`` seconds bans the source for ``ban_seconds`` (the model is
  Kamailio's ``pike`` module: 16 requests per 2 s unit, then an ``ipban`` htable entry for
  300 s). A request that then authenticates is refunded (:meth:`SourceGuard.auth_succeeded`),
  so a phone placing two calls a second (challenge + answer per call) is far below the limit;
* digest failures are counted per source and per account (:meth:`SourceGuard.auth_failed`):
  ``auth_source_limit`` failures in ``auth_window`` ban the source; ``auth_account_limit``
  failures throttle the account, which then accepts credentials only from the addresses it
  recently authenticated from (:meth:`SourceGuard.auth_allowed`), so a password-guessing
  campaign from many addresses cannot guess, yet does not lock the real phone out.

Memory is bounded: every table is an LRU of at most ``max_sources`` keys, so a sweep of many
(possibly spoofed) sources costs at most that many small entries. Evicting a counter only
forgets a few counts; evicting a ban (the oldest one, when the table is full) lets that source
in again until it trips the counters anew.

Allow-listed networks (and the configured trunks' addresses) are counted like anyone else for
the statistics but are never banned or throttled.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AllowList", "BanTable", "SecurityConfig", "SlidingWindow", "SourceGuard"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SlidingWindow:
    """Approximate per-key event counts over a sliding window, for at most ``max_keys`` keys.

    Two fixed buckets per key (the current window and the one before it); the estimate weights
    the previous bucket by how much of it still overlaps the sliding window. That is O(1) time
    and three numbers per key, against a list of timestamps for an exact count; the error is
    at most the previous bucket's share, which is fine for a rate limit.
    """

    def __init__(self, window: float, max_keys: int) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window must be > 0 and max_keys >= 1")
        self.window = window
        self.max_keys = max_keys
        # key -> [bucket start, count in current bucket, count in previous bucket]
        self._slots: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, key: str, now: float, create: bool) -> list[float] | None:
        slot = self._slots.get(key)
        if slot is None:
            if not create:
                return None
            slot = [now, 0.0, 0.0]
            self._slots[key] = slot
            if len(self._slots) > self.max_keys:
                self._slots.popitem(last=False)  # least recently used
            return slot
        self._slots.move_to_end(key)
        elapsed = now - slot[0]
        if elapsed >= 2 * self.window:
            slot[0], slot[1], slot[2] = now, 0.0, 0.0
        elif elapsed >= self.window:
            slot[0], slot[1], slot[2] = slot[0] + self.window, 0.0, slot[1]
        return slot

    @staticmethod
    def _estimate(slot: list[float], now: float, window: float) -> float:
        overlap = max(0.0, window - (now - slot[0])) / window
        return slot[1] + slot[2] * overlap

    def hit(self, key: str, now: float, amount: float = 1.0) -> float:
        """Count ``amount`` events for ``key`` at ``now``; return the estimate afterwards."""
        slot = self._slot(key, now, True)
        assert slot is not None
        slot[1] += amount
        return self._estimate(slot, now, self.window)

    def count(self, key: str, now: float) -> float:
        """The estimated number of events for ``key`` in the window ending at ``now``."""
        slot = self._slot(key, now, False)
        return 0.0 if slot is None else self._estimate(slot, now, self.window)

    def refund(self, key: str, now: float) -> None:
        """Take back one event counted in the current bucket (never below zero)."""
        slot = self._slot(key, now, False)
        if slot is not None and slot[1] >= 1.0:
            slot[1] -= 1.0

    def forget(self, key: str) -> None:
        """Drop everything counted for ``key``."""
        self._slots.pop(key, None)


class BanTable:
    """Banned keys with an expiry each, at most ``max_entries`` of them.

    Expired entries are removed lazily (when looked up, and from the oldest end when a new ban
    is added). When the table is full the oldest ban is evicted: with equal ban lengths that
    is also the one closest to expiry.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: object) -> bool:
        return key in self._until

    def ban(self, key: str, now: float, seconds: float) -> None:
        """Ban ``key`` until ``now + seconds`` (a re-ban extends, never shortens, the ban)."""
        until = now + seconds
        old = self._until.pop(key, None)
        self._until[key] = until if old is None else max(old, until)
        self._purge(now)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)
            self.evicted += 1

    def is_banned(self, key: str, now: float) -> bool:
        """True while ``key`` is banned; an expired entry is removed."""
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._until[key]
            return False
        return True

    def expires(self, key: str) -> float | None:
        """When ``key``'s ban ends, or None when it is not in the table."""
        return self._until.get(key)

    def unban(self, key: str) -> bool:
        """Lift a ban; True when there was one."""
        return self._until.pop(key, None) is not None

    def active(self, now: float) -> dict[str, float]:
        """The bans still in force: key -> expiry."""
        self._purge(now)
        return {k: v for k, v in self._until.items() if v > now}

    def _purge(self, now: float) -> None:
        # Bans are appended in time order; with mixed lengths an expired one may sit behind a
        # live one, so this only trims the front cheaply and lookups catch the rest.
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                break
            del self._until[key]


class AllowList:
    """Networks that are never banned (trunks, monitoring). Lookups are cached per address."""

    _CACHE_MAX = 4096

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: list[IpNetwork] = []
        for net in networks:
            self.add(net)
        self._cache: dict[str, bool] = {}

    def add(self, network: str) -> None:
        """Allow an address or CIDR (``203.0.113.7``, ``198.51.100.0/24``, ``2001:db8::/32``)."""
        self.networks.append(ipaddress.ip_network(network, strict=False))
        self._cache = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            hit = any(addr in net for net in self.networks)
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The knobs of :class:`SourceGuard`: the ``[security]`` table of the config."""

    enabled: bool = True
    flood_window: float = 2.0  # seconds
    flood_limit: int = 16  # out-of-dialog requests per window; more bans the source
    ban_seconds: float = 300.0
    allow: tuple[str, ...] = ()  # CIDRs never banned
    auth_window: float = 60.0  # seconds
    auth_source_limit: int = 10  # failures per source in the window: the source is banned
    auth_account_limit: int = 10  # failures per account in the window: the account throttles
    max_sources: int = 65536  # entries per table (counters, bans, accounts)
    known_sources_per_account: int = 4  # addresses an account recently authenticated from
    tcp_max_per_source: int = 32  # open TCP+TLS connections accepted from one address
    tcp_message_timeout: float = 10.0  # seconds a begun message may take to arrive in full
    tcp_idle_timeout: float = 300.0  # seconds a silent TCP/TLS connection is kept


class SourceGuard:
    """Flood and brute-force defences for one SIP listener (see the module docstring)."""

    def __init__(self, params: SecurityConfig | None = None,
                 extra_allow: Iterable[str] = ()) -> None:
        """``extra_allow``: more addresses never banned (the switch adds its trunks' hosts;
        entries that are host names rather than addresses are skipped, since the allow-list
        is checked against source addresses: list a named trunk's addresses in ``allow``)."""
        p = params or SecurityConfig()
        self.params = p
        self.enabled = p.enabled
        self.allow = AllowList(p.allow)
        for host in extra_allow:
            try:
                self.allow.add(host.strip("[]"))
            except ValueError:
                pass
        self.bans = BanTable(p.max_sources)
        self.flood = SlidingWindow(p.flood_window, p.max_sources)
        self.source_failures = SlidingWindow(p.auth_window, p.max_sources)
        self.account_failures = SlidingWindow(p.auth_window, p.max_sources)
        # account -> its recently successful source addresses (most recent last)
        self._known: OrderedDict[str, list[str]] = OrderedDict()
        self.counters: Counter[str] = Counter()

    # ---- the hot path: every datagram / connection / send ---------------------------------

    def admit(self, ip: str, now: float) -> bool:
        """False when ``ip`` is banned: drop what it sent, send it nothing."""
        if not self.bans.is_banned(ip, now):
            return True
        self.counters["dropped_banned"] += 1
        return False

    # ---- counting ----------------------------------------------------------------------------

    def request(self, ip: str, now: float) -> bool:
        """Count one new out-of-dialog request from ``ip``; False when it got ``ip`` banned."""
        if not self.enabled:
            return True
        if self.flood.hit(ip, now) > self.params.flood_limit:
            return not self._ban(ip, now, "flood")
        return True

    def auth_allowed(self, ip: str, account: str, now: float) -> bool:
        """May credentials for ``account`` from ``ip`` be checked now?

        False while the account is throttled (``auth_account_limit`` failures in the window)
        and ``ip`` is not one it recently authenticated from. The caller then answers exactly
        as for a wrong password, so the throttle reveals nothing and guessing is useless.
        """
        if not self.enabled or ip in self.allow:
            return True
        if self.account_failures.count(account, now) < self.params.auth_account_limit:
            return True
        known = self._known.get(account)
        if known is not None and ip in known:
            return True
        self.counters["auth_throttled"] += 1
        return False

    def auth_failed(self, ip: str, account: str | None, now: float) -> bool:
        """Count a failed digest check; True when it got ``ip`` banned.

        The account is counted whether or not it exists, so the limits behave the same for
        known and unknown users (no enumeration through the throttle).
        """
        self.counters["auth_failures"] += 1
        if not self.enabled:
            return False
        if account is not None:
            self.account_failures.hit(account, now)
        if self.source_failures.hit(ip, now) >= self.params.auth_source_limit:
            return self._ban(ip, now, "auth")
        return False

    def auth_succeeded(self, ip: str, account: str, now: float) -> None:
        """Remember ``ip`` as one of ``account``'s addresses and refund the flood count of
        the request (an authenticated request is not flooding)."""
        if not self.enabled:
            return
        self.flood.refund(ip, now)
        known = self._known.get(account)
        if known is None:
            known = self._known[account] = []
            if len(self._known) > self.params.max_sources:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(account)
        if ip in known:
            known.remove(ip)
        known.append(ip)
        del known[: -self.params.known_sources_per_account]

    # ---- bans --------------------------------------------------------------------------------

    def _ban(self, ip: str, now: float, reason: str) -> bool:
        if ip in self.allow:
            self.counters[f"allowlisted_{reason}"] += 1
            return False
        if not self.bans.is_banned(ip, now):
            self.counters[f"bans_{reason}"] += 1
        self.bans.ban(ip, now, self.params.ban_seconds)
        # A fresh start when the ban ends, not an instant re-ban on old counts.
        self.flood.forget(ip)
        self.source_failures.forget(ip)
        return True

    def ban(self, ip: str, now: float, seconds: float | None = None) -> None:
        """Ban ``ip`` by hand (ignores the allow-list)."""
        self.bans.ban(ip, now, self.params.ban_seconds if seconds is None else seconds)

    def unban(self, ip: str) -> bool:
        """Lift a ban by hand; True when there was one."""
        return self.bans.unban(ip)

    def stats(self) -> dict[str, int]:
        """Counters plus current table sizes, for metrics and tests."""
        out = dict(self.counters)
        out.update(banned=len(self.bans), tracked_sources=len(self.flood),
                   tracked_accounts=len(self.account_failures))
        return out
