"""Push a run's figures to a Prometheus Pushgateway (cron jobs are not scraped)."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from distributor.summary import Summary

log = structlog.get_logger("billq.distributor")

JOB = "billq_distributor"


def push_run(url: str, summary: Summary, *, timeout: float = 5.0) -> bool:
    """Push due, published and duration; a failed push is logged, never fatal."""
    registry = CollectorRegistry()
    for name, doc, value in (
        ("billq_run_due", "Accounts due in the last run.", summary.due),
        ("billq_run_published", "Messages the last run published.", summary.published),
        ("billq_run_duration_seconds", "Duration of the last distribution.", summary.duration_s),
        ("billq_run_id", "Id of the last run.", summary.run_id or 0),
    ):
        Gauge(name, doc, registry=registry).set(value)
    try:
        push_to_gateway(url, job=JOB, registry=registry, timeout=timeout)
    except OSError as exc:
        log.warning("run.push_failed", error=type(exc).__name__)
        return False
    return True
