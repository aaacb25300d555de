"""``billq refund CHARGE [--amount N]``: a refund job, the CLI twin of ``POST /v1/refunds``.

The same code as the API's (``shared.refunds``): the amount is decided under the charge's row
lock, the job is the outbox row, a worker refunds it through the gateway under its own key.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from billq import fleet, output
from shared.billing.money import MAX_AMOUNT_CENTS
from shared.config import Settings
from shared.entrypoint import positive_int
from shared.messages import INT64_MAX


def _bounded(name: str, high: int) -> Any:
    """argparse type: an integer from 1 to ``high`` (beyond it Postgres could not take it)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{name} must be at most {high}, got {text!r}")
        return value

    return parse


def _refund(args: argparse.Namespace, settings: Settings) -> int:
    from shared import oneoff, operations, refunds
    from shared.db.pool import create_pool

    async def main() -> tuple[dict[str, Any], bool]:
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            ask = refunds.RefundAsk(args.charge, args.amount)
            created = await refunds.create(pool, ask, None)
            assert created.job_id is not None  # no caller key: never a replay
            await operations.record_action(
                pool, fleet.actor(), "refund", str(args.charge), f"job {created.job_id}"
            )
            published = await oneoff.publish_now(pool, settings, created.job_id)
            body = await refunds.get(pool, created.job_id) or created.body
        finally:
            await pool.close()
        return body, published

    body, published = asyncio.run(main())
    if args.json:
        output.print_json(body)
        return 0
    amount = output.money(body["amount"], body["currency"])
    print(
        f"refund job {body['id']}: {amount} of charge {body['charge_id']} "
        f"(gateway key {body['idempotency_key']}) "
        + (
            "published"
            if published
            else "pending: the next `billq reconcile` or `billq distribute` publishes it"
        )
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "refund",
        help="refund a charge, all of it or --amount (a refund job a worker runs)",
        description="Create a refund job for charge CHARGE (charges.id, as `billq api`'s "
        "GET /v1/accounts/{id}/charges lists it): all that is left of it, or --amount in "
        "the currency's minor units; never more than the charge minus its earlier refunds "
        "(exit 1: amount_too_large, charge_already_refunded). A worker refunds it through "
        "the gateway under its own idempotency key (billq_refund_{charge}_{n}) and records "
        "the refund and a credit note on the charge's invoice.",
    )
    p.add_argument(
        "charge", type=_bounded("CHARGE", INT64_MAX), metavar="CHARGE", help="the charge's id"
    )
    p.add_argument(
        "--amount",
        type=_bounded("--amount", MAX_AMOUNT_CENTS),
        help="minor units to refund (default: all that is left)",
    )
    p.add_argument("--json", action="store_true", help="print the refund as JSON")
    p.set_defaults(handler=_refund)
