"""``billq sandbox-gateway``: run the Stripe-shaped sandbox payment gateway."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from shared.config import Settings
from shared.entrypoint import Parser, port_number, run


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1], got {text!r}")
    return value


def _at_least_zero(unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit} >= 0, got {text!r}") from None
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {unit} >= 0, got {text!r}")
        return value

    return parse


_milliseconds = _at_least_zero("milliseconds")
_per_second = _at_least_zero("requests a second")


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox.faults import Faults
    from sandbox.server import serve

    faults = Faults(
        fail_rate=args.fail_rate,
        timeout_rate=args.timeout_rate,
        latency_ms=args.latency_ms,
        spike_rate=args.spike_rate,
        spike_ms=args.spike_ms,
        seed=args.seed,
        rate_limit=args.rate_limit,
    )
    serve(args.host, args.port, ledger=args.ledger, faults=faults)
    return 0


def register(sub: Any) -> None:
    _arguments(
        sub.add_parser(
            "sandbox-gateway",
            help="run the sandbox payment gateway (Stripe PaymentIntents subset, test cards)",
            description=DESCRIPTION,
        )
    )


DESCRIPTION = (
    "Serve a subset of Stripe's PaymentIntents API with idempotency-key replay and Stripe's "
    "test cards, keeping its ledger in SQLite. Faults are injectable for retry tests. Runs "
    "until SIGTERM/SIGINT."
)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_number, default=12111, help="port to listen on")
    p.add_argument(
        "--ledger",
        default="sandbox-ledger.sqlite3",
        help="SQLite file for intents and idempotency keys (':memory:' keeps nothing)",
    )
    p.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="share of POSTs answered 500 unexecuted"
    )
    p.add_argument(
        "--timeout-rate",
        type=_rate,
        default=0.0,
        help="share of POSTs that charge and then never answer",
    )
    p.add_argument(
        "--latency-ms", type=_milliseconds, default=0.0, help="delay added to every POST answer"
    )
    p.add_argument(
        "--spike-rate",
        type=_rate,
        default=0.0,
        help="share of POSTs delayed by a further --spike-ms (latency spikes)",
    )
    p.add_argument("--spike-ms", type=_milliseconds, default=0.0, help="length of a latency spike")
    p.add_argument(
        "--rate-limit",
        type=_per_second,
        default=0.0,
        metavar="RPS",
        help="charge and refund POSTs a second; beyond it answer 429 with Retry-After, as "
        "Stripe does (default 0: no limit)",
    )
    p.add_argument("--seed", type=int, help="seed for the fault rolls (default: random)")
    p.set_defaults(handler=_handle)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sandbox``: ``billq sandbox-gateway`` on its own."""
    parser = Parser(prog="sandbox", description=DESCRIPTION)
    _arguments(parser)
    return run(parser, argv)
