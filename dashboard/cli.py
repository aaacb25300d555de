"""``billq dashboard``: serve the dashboard (one process; reads Postgres and the broker).

``python -m dashboard`` runs the same through ``main``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shared.config import Settings
from shared.entrypoint import (
    Parser,
    add_connection_arguments,
    is_loopback,
    positive_int,
    run,
)
from shared.errors import ConfigError

DESCRIPTION = (
    "Serve the billing dashboard: runs with live progress and money, dead letters, jobs, "
    "accounts, workers, /api JSON (the CLI's --json shapes) and /metrics with the scale hint. "
    "Off loopback BILLQ_DASHBOARD_TOKEN is required; with it set every page and API call "
    "needs it (login form, or Authorization: Bearer)."
)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    if settings.dashboard_token is None and not is_loopback(args.host):
        raise ConfigError(
            f"BILLQ_DASHBOARD_TOKEN: required when --host is not a loopback address ({args.host})"
        )
    if settings.dashboard_token is not None and not settings.dashboard_token.get_secret_value():
        raise ConfigError("BILLQ_DASHBOARD_TOKEN: must not be empty")
    from dashboard.server import serve
    from shared import lifecycle

    return lifecycle.run(
        lambda stop: serve(
            settings,
            host=args.host,
            port=args.port,
            read_only=args.read_only,
            finish_within_s=args.finish_within,
            stop=stop,
        )
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    p.add_argument(
        "--read-only", action="store_true", help="hide and refuse replay, retry and cancel"
    )
    p.add_argument(
        "--finish-within",
        type=positive_int,
        default=4 * 3600,
        metavar="SECONDS",
        help="a run's deadline: this long after it started (the scale hint gauge; default 4 h)",
    )
    p.set_defaults(handler=_handle)


def register(sub: Any) -> None:
    _arguments(
        sub.add_parser(
            "dashboard",
            help="serve the web dashboard (runs, money, dlq, jobs)",
            description=DESCRIPTION,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dashboard``: ``billq dashboard`` on its own."""
    parser = Parser(prog="dashboard", description=DESCRIPTION)
    add_connection_arguments(parser)
    _arguments(parser)
    return run(parser, argv)
