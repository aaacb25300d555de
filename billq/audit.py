"""``billq audit``: what the gateway took against what billq recorded (run it from cron)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

from billq import output
from shared.config import Settings
from shared.errors import ConfigError


def _since(text: str) -> dt.datetime:
    """An ISO 8601 instant or date, or a look-back such as ``48h`` or ``7d``."""
    from shared.billing.periods import parse_as_of

    if len(text) > 1 and text[:-1].isdigit() and text[-1] in "hd":
        hours = int(text[:-1]) * (24 if text[-1] == "d" else 1)
        if hours > 24 * 3660:
            raise argparse.ArgumentTypeError(f"--since: look-back too long: {text!r}")
        return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--as-of", "--since")) from None


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from shared.audit import audit
    from shared.db.pool import create_pool
    from shared.gateway.factory import make_gateway

    if settings.gateway == "inprocess":
        raise ConfigError(
            "BILLQ_GATEWAY: audit lists the gateway's charges; the in-process gateway lives "
            "inside each worker and cannot be listed (use sandbox or stripe)"
        )

    async def main() -> dict[str, Any]:
        pool = await create_pool(settings, min_size=1, max_size=2)
        gateway = make_gateway(settings)
        try:
            report = await audit(pool, gateway, since=args.since, repair=args.repair)
        finally:
            await gateway.aclose()
            await pool.close()
        return report.as_dict(repair=args.repair)

    from shared.billing.audit import FINDINGS

    result = asyncio.run(main())
    found = sum(len(result[k]) for k in FINDINGS)
    if args.json:
        output.print_json(result)
    else:
        print(
            f"audit: checked={result['checked']} "
            f"taken_not_recorded={len(result['taken_not_recorded'])} "
            f"recorded_not_taken={len(result['recorded_not_taken'])} "
            f"double_taken={len(result['double_taken'])} "
            f"refunds_checked={result['refunds_checked']} "
            f"refunded_not_recorded={len(result['refunded_not_recorded'])} "
            f"refund_recorded_not_refunded={len(result['refund_recorded_not_refunded'])}"
            + (f" repaired={len(result['repaired'])}" if args.repair else "")
        )
        for kind in FINDINGS:
            for item in result[kind]:
                print(f"  {kind}: {item}")
    return 1 if found else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "audit",
        help="compare the gateway's charges with billq's records (exit 1 on any difference)",
        description="List the gateway's succeeded charges by billq's metadata and compare them "
        "with the charges table per (account, period): taken_not_recorded, "
        "recorded_not_taken, double_taken; and its refunds with the refunds table by billq's "
        "refund key: refunded_not_recorded, refund_recorded_not_refunded. Exit 1 if any is "
        "found. --repair records what the gateway took (charge, invoice, job, account) and "
        "gave back (refund, credit note); it never charges or refunds. Run it from cron "
        "beside reconcile.",
    )
    p.add_argument(
        "--since",
        type=_since,
        help="only charges created at or after this time (ISO 8601, or a look-back: 48h, 7d)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument(
        "--repair",
        action="store_true",
        help="record taken_not_recorded charges and refunded_not_recorded refunds",
    )
    p.set_defaults(handler=_audit)
