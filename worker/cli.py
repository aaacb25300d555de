"""``billq worker``: run one worker process (supervisor starts as many as you need).

``python -m worker`` runs the same through ``main``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shared.config import Settings
from shared.entrypoint import Parser, add_connection_arguments, run


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from shared import lifecycle
    from worker.run import run_worker

    return lifecycle.run(lambda stop: run_worker(settings, stop))


def register(sub: Any) -> None:
    _arguments(
        sub.add_parser(
            "worker",
            help="consume charge messages and charge each job exactly once",
            description=DESCRIPTION,
        )
    )


DESCRIPTION = (
    "Run one worker: prefetch QoS, claim → charge → record → ack. SIGTERM finishes in-flight "
    "work within BILLQ_SHUTDOWN_GRACE and exits 0; a second signal exits at once. Exits 3 "
    "after recycling itself (memory or message limit). A gateway's rate limit (429) is waited "
    "out and the charge resent under its key, spending no attempt."
)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--concurrency",
        type=int,
        help="charges in flight at most (BILLQ_CONCURRENCY, default 256); a gateway's 429s "
        "cut the worker's adaptive limit below it (BILLQ_RATE_LIMIT_WAIT_S, BILLQ_GATEWAY_MAX_RPS)",
    )
    p.add_argument("--gateway", choices=["sandbox", "inprocess", "stripe"], help="BILLQ_GATEWAY")
    p.add_argument("--gateway-url", help="BILLQ_GATEWAY_URL")
    p.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz, /readyz (BILLQ_METRICS_PORT)"
    )
    p.add_argument("--max-rss-mb", type=float, help="recycle above this RSS (BILLQ_MAX_RSS_MB)")
    p.add_argument("--max-messages", type=int, help="recycle after N messages (BILLQ_MAX_MESSAGES)")
    p.set_defaults(handler=_handle)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker``: ``billq worker`` on its own."""
    parser = Parser(prog="worker", description=DESCRIPTION)
    add_connection_arguments(parser)
    _arguments(parser)
    return run(parser, argv)
