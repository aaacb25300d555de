"""Prometheus metrics of one worker process (own registry: no global state shared).

The counts (messages by outcome, in flight, reconnects) live once, in ``Stats``, which the
heartbeat and the final log line read too; they are read from it at each scrape instead of
being counted a second time. Only what ``Stats`` does not hold (latency histograms, the
prefetch window, the last heartbeat) is a Prometheus object of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.stats import Stats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, stats: Stats) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats))
        self.handle_seconds = Histogram(
            "billq_handle_seconds",
            "Time to handle one message (claim → record).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gateway_seconds = Histogram(
            "billq_gateway_seconds",
            "Gateway call latency.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prefetch = Gauge("billq_prefetch", "Prefetch (QoS) window.", registry=self.registry)
        self.last_heartbeat = Gauge(
            "billq_last_heartbeat_timestamp_seconds",
            "Unix time of the last DB heartbeat.",
            registry=self.registry,
        )


class _StatsCollector(Collector):
    """``Stats`` as Prometheus metrics, read when scraped."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "billq_messages_handled", "Messages handled, by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(self._stats.outcomes.items()):
            handled.add_metric([outcome], n)
        yield handled
        yield GaugeMetricFamily(
            "billq_in_flight", "Messages being handled now.", value=self._stats.in_flight
        )
        yield CounterMetricFamily(
            "billq_reconnects", "Broker reconnections.", value=self._stats.reconnects
        )
