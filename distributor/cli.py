"""``billq distribute`` and ``billq reconcile``: the cron entry points.

``python -m distributor`` runs ``distribute`` through ``main``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from shared.config import Settings
from shared.entrypoint import Parser, add_connection_arguments, positive_int, run


def _as_of(text: str) -> dt.datetime:
    from shared.billing.periods import parse_as_of

    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> tuple[int, int]:
    from distributor.plan import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from distributor.run import distribute
    from shared import lifecycle

    as_of = args.as_of or dt.datetime.now(dt.UTC)

    async def main(_stop: Any) -> int:
        if args.at is not None:
            from distributor.run import schedule

            scheduled = await schedule(settings, args.at)
            print(json.dumps(scheduled.as_dict()) if args.json else scheduled.line())
            return 0
        summary = await distribute(
            settings,
            as_of=as_of,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            shard=args.shard,
            explicit_as_of=args.as_of is not None,
        )
        if settings.pushgateway_url and summary.run_id is not None:
            from distributor.push import push_run

            push_run(settings.pushgateway_url, summary)
        if args.json:
            print(json.dumps(summary.as_dict()))
        else:
            print(summary.line())
        return 0

    return lifecycle.run(main)


def _handle_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from distributor.run import reconcile_once
    from shared import lifecycle

    async def main(_stop: Any) -> int:
        summary = await reconcile_once(settings)
        if summary is None:
            print("reconcile: another distributor run holds the lock; nothing to do")
        elif args.json:
            print(json.dumps(summary.as_dict()))
        else:
            print(summary.line())
        return 0

    return lifecycle.run(main)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile",
        help="repair jobs that stopped moving (also run by every distribute)",
        description="Republish jobs whose messages were lost or whose worker died; complete "
        "jobs whose charge exists at the gateway but whose commit is missing.",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_handle_reconcile)

    _distribute_arguments(
        sub.add_parser(
            "distribute",
            help="publish one charge job per due account (run from cron)",
            description=DISTRIBUTE_DESCRIPTION,
        )
    )


DISTRIBUTE_DESCRIPTION = (
    "Find accounts due at --as-of, create one job per account and billing period, publish "
    "them with confirms. Safe to run concurrently and repeatedly."
)


def _distribute_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-of", type=_as_of, help="ISO 8601 instant or date (default: now, UTC)")
    p.add_argument(
        "--at",
        type=_as_of,
        help="schedule a run for this time; the next distribute at or after it performs it",
    )
    p.add_argument("--dry-run", action="store_true", help="count due accounts, change nothing")
    p.add_argument("--batch-size", type=positive_int, help="accounts per batch (BILLQ_BATCH_SIZE)")
    p.add_argument("--shard", type=_shard, help="K/N: scan only accounts with id %% N == K")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_handle)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distributor``: ``billq distribute`` on its own."""
    parser = Parser(prog="distributor", description=DISTRIBUTE_DESCRIPTION)
    add_connection_arguments(parser)
    _distribute_arguments(parser)
    return run(parser, argv)
