"""The worker's Prometheus counts are read from ``Stats``: one count, two views."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import Metrics
from worker.outcome import Ack, Dead, Retry
from worker.stats import Stats

pytestmark = pytest.mark.unit


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_shows_what_stats_counted_under_the_published_names() -> None:
    stats = Stats()
    metrics = Metrics(stats)
    for outcome in (Ack("succeeded"), Ack("succeeded"), Ack("declined"), Retry(1.0, 1, "x")):
        stats.count(outcome)
    stats.count(Dead("GatewayRejected", "no"))
    stats.in_flight, stats.reconnects = 3, 2

    scraped = scrape(metrics)

    handled = "billq_messages_handled_total"
    assert scraped[(handled, (("outcome", "succeeded"),))] == 2
    assert scraped[(handled, (("outcome", "declined"),))] == 1
    assert scraped[(handled, (("outcome", "retried"),))] == 1
    assert scraped[(handled, (("outcome", "dead"),))] == 1
    assert scraped[("billq_in_flight", ())] == 3
    assert scraped[("billq_reconnects_total", ())] == 2


def test_later_counts_show_in_the_next_scrape() -> None:
    stats = Stats()
    metrics = Metrics(stats)
    assert scrape(metrics)[("billq_reconnects_total", ())] == 0

    stats.reconnects += 1
    stats.count(Ack("duplicate"))

    scraped = scrape(metrics)
    assert scraped[("billq_reconnects_total", ())] == 1
    assert scraped[("billq_messages_handled_total", (("outcome", "duplicate"),))] == 1


def test_the_other_metrics_keep_their_names() -> None:
    metrics = Metrics(Stats())
    metrics.handle_seconds.observe(0.01)
    metrics.gateway_seconds.observe(0.02)
    metrics.prefetch.set(64)
    metrics.last_heartbeat.set(1.0)

    scraped = scrape(metrics)

    assert scraped[("billq_handle_seconds_count", ())] == 1
    assert scraped[("billq_gateway_seconds_count", ())] == 1
    assert scraped[("billq_prefetch", ())] == 64
    assert scraped[("billq_last_heartbeat_timestamp_seconds", ())] == 1.0
