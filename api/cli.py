"""``billq api``: serve the HTTP API (``python -m api`` runs the same through ``main``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shared.config import Settings
from shared.entrypoint import Parser, add_connection_arguments, is_loopback, port_number, run
from shared.errors import ConfigError

DESCRIPTION = (
    "Serve billq's HTTP API for applications: POST /v1/charges (a one-off charge, with the "
    "caller's Idempotency-Key), GET /v1/jobs/{id}, GET /v1/accounts/{id}/charges, and its "
    "OpenAPI document at /openapi.json. JSON in and out; errors shaped like Stripe's. With "
    "BILLQ_API_TOKENS set (comma-separated: any of them is accepted, for rotation) every call "
    "needs one as 'Authorization: Bearer TOKEN'; off loopback it is required."
)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    if settings.api_tokens is not None and not settings.api_token_list:
        raise ConfigError("BILLQ_API_TOKENS: must name at least one token")
    if not settings.api_token_list and not is_loopback(args.host):
        raise ConfigError(
            f"BILLQ_API_TOKENS: required when --host is not a loopback address ({args.host})"
        )
    from api.server import serve
    from shared import lifecycle

    return lifecycle.run(lambda stop: serve(settings, host=args.host, port=args.port, stop=stop))


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8081, help="port to bind (default 8081)")
    p.set_defaults(handler=_handle)


def register(sub: Any) -> None:
    _arguments(
        sub.add_parser(
            "api",
            help="serve the HTTP API (one-off charges, jobs, an account's charges)",
            description=DESCRIPTION,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m api``: ``billq api`` on its own."""
    parser = Parser(prog="api", description=DESCRIPTION)
    add_connection_arguments(parser)
    _arguments(parser)
    return run(parser, argv)
