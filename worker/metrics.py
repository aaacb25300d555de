"""Prometheus metrics of one worker process (own registry: no global state shared)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "billq_messages_handled",
            "Messages handled, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.handle_seconds = Histogram(
            "billq_handle_seconds",
            "Time to handle one message (claim → record).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gateway_seconds = Histogram(
            "billq_gateway_seconds",
            "Gateway call latency (a rate-limited charge counts its waits and resends).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "billq_in_flight", "Messages being handled now.", registry=self.registry
        )
        self.prefetch = Gauge("billq_prefetch", "Prefetch (QoS) window.", registry=self.registry)
        self.lane_in_flight = Gauge(
            "billq_lane_in_flight",
            "Charge slots each lane holds now (bulk, priority).",
            ["lane"],
            registry=self.registry,
        )
        self.lane_waiting = Gauge(
            "billq_lane_waiting",
            "Deliveries of each lane waiting for a charge slot.",
            ["lane"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "billq_reconnects", "Broker reconnections.", registry=self.registry
        )
        self.last_heartbeat = Gauge(
            "billq_last_heartbeat_timestamp_seconds",
            "Unix time of the last DB heartbeat.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "billq_breaker_open",
            "1 while the gateway circuit breaker is open (no new charges).",
            registry=self.registry,
        )
        self.breaker_opened = Counter(
            "billq_breaker_opened", "Times the gateway breaker opened.", registry=self.registry
        )
        self.breaker_probes = Counter(
            "billq_breaker_probes",
            "Probes of an open breaker's gateway, by result.",
            ["result"],
            registry=self.registry,
        )
        self.breaker_returned = Counter(
            "billq_breaker_returned",
            "Deliveries an open breaker returned to the queue after holding them.",
            registry=self.registry,
        )
        self.gateway_rate_limited = Counter(
            "billq_gateway_rate_limited",
            "Gateway answers that were a rate limit (429); each is resent, spending no attempt.",
            registry=self.registry,
        )
        self.gateway_limit = Gauge(
            "billq_gateway_limit",
            "Charges the worker lets be in flight at the gateway now (adaptive: cut by 429s, "
            "back up to BILLQ_CONCURRENCY).",
            registry=self.registry,
        )
