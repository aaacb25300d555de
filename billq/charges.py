"""``billq charge ACCOUNT AMOUNT CURRENCY --key K``: the CLI twin of ``POST /v1/charges``.

The same code as the API (``shared.oneoff``): the same validation, the same idempotency
record (a key used over HTTP replays here and the other way round), the same job, published
the same way. For scripts: ``--json`` prints the API's job object.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from billq import output
from shared.config import Settings
from shared.errors import ConfigError, InvalidRequest


def _request(args: argparse.Namespace) -> tuple[Any, str]:
    from shared import oneoff

    def number(text: str) -> int | str:
        stripped = text.strip()
        return int(stripped) if stripped.lstrip("-").isdigit() else text

    try:
        key = oneoff.check_key(args.key)
        request = oneoff.parse(
            {
                "account_id": number(args.account),
                "amount": number(args.amount),
                "currency": args.currency,
                "description": args.description,
            }
        )
    except InvalidRequest as exc:
        names = {"account_id": "ACCOUNT", "amount": "AMOUNT", "currency": "CURRENCY"}
        where = names.get(exc.param or "", exc.param or "--key")
        raise ConfigError(f"{where}: {exc.message}") from None
    return request, key


def _charge(args: argparse.Namespace, settings: Settings) -> int:
    from shared import oneoff
    from shared.db.pool import create_pool

    request, key = _request(args)

    async def main() -> tuple[oneoff.Created, bool]:
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            created = await oneoff.create(pool, request, key)
            if created.job_id is None:
                return created, False
            return created, await oneoff.publish_now(pool, settings, created.job_id)
        finally:
            await pool.close()

    created, published = asyncio.run(main())
    job = created.body
    if args.json:
        output.print_json(job)
        return 0
    from shared.billing.money import format_amount

    if created.replayed:
        state = "already created by this key (replayed; see billq jobs for its state now)"
    elif published:
        state = "published"
    else:
        state = "pending (not published now: the next billq distribute publishes it)"
    print(
        f"charge: job {job['id']} {format_amount(job['amount'], job['currency'])} "
        f"account {job['account_id']} key {job['idempotency_key']}: {state}"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "charge",
        help="create a one-off charge (the CLI twin of POST /v1/charges)",
        description="Create a one-off charge job for ACCOUNT: AMOUNT in the currency's ISO "
        "4217 minor unit (1250 EUR is 12.50 EUR), charged once by a worker under the gateway "
        "key billq_{account}_oneoff_{hash of KEY}. The same --key again answers the first "
        "result (nothing charged twice); with other arguments it is refused (exit 1). A "
        "one-off never advances the account's billing period or touches its dunning.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="accounts.id")
    p.add_argument("amount", metavar="AMOUNT", help="in the currency's minor unit, e.g. 1250")
    p.add_argument("currency", metavar="CURRENCY", help="ISO 4217 code, e.g. EUR")
    p.add_argument(
        "--key", required=True, help="your idempotency key for this charge (reuse it on retry)"
    )
    p.add_argument("--description", help="shown with the job and on its invoice")
    p.add_argument("--json", action="store_true", help="print the job as the API's JSON")
    p.set_defaults(handler=_charge)
