"""Prometheus metrics for one :class:`switch.app.Switch`.

:class:`SwitchCollector` reads the switch's live counters at scrape time (nothing is
incremented on the call path), and :func:`make_registry` puts it in a registry of its own, so
several switches in one process each export their own numbers instead of sharing the global
``prometheus_client.REGISTRY``.

Exported families (all prefixed ``softswitch_``):

* ``calls_total{outcome}`` calls ended, by outcome (answered, busy, no-answer, ...);
* ``active_calls``, ``registrations`` (live contact bindings);
* ``rtp_packets_total{direction}`` (in, out, relayed), ``rtp_bytes_total{direction}``,
  ``rtcp_packets_total{direction}``, ``rtp_dropped_total{reason}``, ``rtp_send_errors_total``,
  ``rtp_endpoints``, ``rtp_port_pairs{state}`` (free, used);
* ``webhook_deliveries_total{result}`` (delivered, failed_attempt, dead),
  ``webhook_events_enqueued_total``;
* ``sip_<counter>_total`` one counter per key of ``Switch.counters`` and of the SIP stack's
  counters (always at least ``sip_auth_failures_total``; e.g. ``sip_malformed_dropped_total``,
  ``sip_tcp_per_source_refused_total``, ``sip_tls_handshake_failures_total``);
* ``limit_active{key}``, ``limit_waiting{key}`` per limiter (``tenant:x``, ``trunk:y``);
* ``scheduler_in_flight`` scheduled calls being placed now;
* ``security_banned``, ``security_tracked_sources``, ``security_tracked_accounts`` and
  ``security_events_total{event}`` (bans by reason, drops from banned sources, digest failures).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from switch.app import Switch

__all__ = ["SwitchCollector", "make_registry"]

log = logging.getLogger(__name__)

_PREFIX = "softswitch"
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")

#: media engine counter -> (family, label value)
_RTP_PACKETS = {"packets_in": "in", "packets_out": "out", "packets_relayed": "relayed"}
_RTP_BYTES = {"bytes_in": "in", "bytes_out": "out"}
_RTCP = {"rtcp_in": "in", "rtcp_out": "out"}
_RTP_DROPPED = {
    "dropped_wrong_source": "wrong_source",
    "dropped_malformed": "malformed",
    "dropped_no_remote": "no_remote",
    "dropped_no_peer": "no_peer",
}
_WEBHOOK_RESULTS = {"delivered": "delivered", "failed_attempts": "failed_attempt", "dead": "dead"}


def _loop_time() -> float:
    """The event loop's clock (what registrar expiry times use), or the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _metric_name(key: str) -> str:
    name = _NOT_NAME.sub("_", key.strip()).strip("_").lower()
    return name or "unnamed"


class SwitchCollector(Collector):
    """A custom collector reading one switch's live values on every scrape."""

    def __init__(self, switch: Switch) -> None:
        self._switch = switch

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families depend on live values (limiter keys, counters)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Build every metric family from the switch's current state."""
        sw = self._switch
        families: list[Metric] = []
        for part in (self._calls, self._rtp, self._webhooks, self._sip, self._limits,
                     self._scheduler, self._security):
            try:
                families.extend(part(sw))
            except Exception:  # a broken source must not take the whole scrape down
                log.exception("metrics: collecting %s failed", part.__name__)
        return families

    @staticmethod
    def _calls(sw: Switch) -> list[Metric]:
        calls = CounterMetricFamily(f"{_PREFIX}_calls", "Calls ended, by outcome.",
                                    labels=["outcome"])
        for outcome, count in sorted(sw.outcomes.items()):
            calls.add_metric([outcome], float(count))
        active = GaugeMetricFamily(f"{_PREFIX}_active_calls", "Calls in progress.",
                                   value=float(len(sw.b2bua.calls)))
        registrations = GaugeMetricFamily(
            f"{_PREFIX}_registrations", "Live registered contact bindings.",
            value=float(len(sw.location.all(_loop_time()))),
        )
        return [calls, active, registrations]

    @staticmethod
    def _rtp(sw: Switch) -> list[Metric]:
        stats: Mapping[str, int] = sw.media.stats

        def labelled(name: str, doc: str, label: str, keys: Mapping[str, str]) -> Metric:
            family = CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=[label])
            for key, value in keys.items():
                family.add_metric([value], float(stats.get(key, 0)))
            return family

        pairs = stats.get("port_pairs", 0)
        free = stats.get("port_pairs_free", 0)
        port_pairs = GaugeMetricFamily(f"{_PREFIX}_rtp_port_pairs",
                                       "RTP/RTCP port pairs of the range, by state.",
                                       labels=["state"])
        port_pairs.add_metric(["free"], float(free))
        port_pairs.add_metric(["used"], float(max(0, pairs - free)))
        return [
            labelled("rtp_packets", "RTP packets, by direction.", "direction", _RTP_PACKETS),
            labelled("rtp_bytes", "RTP octets, by direction.", "direction", _RTP_BYTES),
            labelled("rtcp_packets", "RTCP packets, by direction.", "direction", _RTCP),
            labelled("rtp_dropped", "RTP/RTCP packets dropped, by reason.", "reason",
                     _RTP_DROPPED),
            CounterMetricFamily(f"{_PREFIX}_rtp_send_errors", "RTP socket send errors.",
                                value=float(stats.get("send_errors", 0))),
            GaugeMetricFamily(f"{_PREFIX}_rtp_endpoints", "Open RTP endpoints.",
                              value=float(stats.get("endpoints", 0))),
            port_pairs,
        ]

    @staticmethod
    def _webhooks(sw: Switch) -> list[Metric]:
        stats: Mapping[str, int] = sw.webhooks.stats
        deliveries = CounterMetricFamily(f"{_PREFIX}_webhook_deliveries",
                                         "Webhook delivery attempts, by result.",
                                         labels=["result"])
        for key, result in _WEBHOOK_RESULTS.items():
            deliveries.add_metric([result], float(stats.get(key, 0)))
        enqueued = CounterMetricFamily(f"{_PREFIX}_webhook_events_enqueued",
                                       "Webhook deliveries queued in the outbox.",
                                       value=float(stats.get("enqueued", 0)))
        return [deliveries, enqueued]

    @staticmethod
    def _sip(sw: Switch) -> list[Metric]:
        counters: dict[str, float] = {"auth_failures": 0.0}
        # The switch's own counters and the SIP stack's (transactions, parse errors, TCP/TLS
        # connections refused, handshakes failed or timed out, messages timed out...).
        for key, value in [*sw.counters.items(), *sw.stack.counters.items()]:
            name = _metric_name(str(key))
            counters[name] = counters.get(name, 0.0) + float(value)
        return [
            CounterMetricFamily(f"{_PREFIX}_sip_{name}",
                                f"SIP counter {name.replace('_', ' ')}.", value=value)
            for name, value in sorted(counters.items())
        ]

    @staticmethod
    def _limits(sw: Switch) -> list[Metric]:
        active = GaugeMetricFamily(f"{_PREFIX}_limit_active",
                                   "Calls holding a limiter's concurrency slot.", labels=["key"])
        waiting = GaugeMetricFamily(f"{_PREFIX}_limit_waiting",
                                    "Requests waiting for a limiter.", labels=["key"])
        snapshot: Mapping[str, Mapping[str, Any]] = sw.limits.snapshot()
        for key, values in snapshot.items():
            active.add_metric([key], float(values.get("active", 0)))
            waiting.add_metric([key], float(values.get("waiting", 0)))
        return [active, waiting]

    @staticmethod
    def _scheduler(sw: Switch) -> list[Metric]:
        return [GaugeMetricFamily(f"{_PREFIX}_scheduler_in_flight",
                                  "Scheduled calls being placed now.",
                                  value=float(sw.scheduler.in_flight))]


    @staticmethod
    def _security(sw: Switch) -> list[Metric]:
        stats = sw.security.stats()
        gauges = {"banned": "Sources banned now.",
                  "tracked_sources": "Sources whose request rate is tracked.",
                  "tracked_accounts": "Accounts whose digest failures are tracked."}
        families: list[Metric] = [
            GaugeMetricFamily(f"{_PREFIX}_security_{name}", text, value=float(stats.get(name, 0)))
            for name, text in gauges.items()
        ]
        events = CounterMetricFamily(
            f"{_PREFIX}_security_events", "Flood and brute-force defence events (bans by "
            "reason, dropped messages from banned sources, throttled and failed digests).",
            labels=["event"])
        for name, value in sorted(stats.items()):
            if name not in gauges:
                events.add_metric([name], float(value))
        families.append(events)
        return families


def make_registry(switch: Switch) -> CollectorRegistry:
    """A registry of its own holding a :class:`SwitchCollector` for ``switch``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(switch))
    return registry
