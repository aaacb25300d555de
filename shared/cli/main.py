"""The ``billq`` command: one parser, subcommands contributed by each package.

``shared`` registers its own commands; ``distributor`` and ``worker`` register theirs
through the ``billq.commands`` entry point group, so no package imports another.

A handler has the signature ``handler(args, settings) -> int`` and may raise
``BillqError``; this module turns that into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from shared.config import Settings, load_settings
from shared.errors import BillqError, ConfigError

Handler = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"billq: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _shared_commands() -> list[Callable[[argparse._SubParsersAction[_Parser]], None]]:
    from shared.cli import accounts_cmds, admin_cmds, billing_cmds, ops_cmds, sandbox_cmd

    return [
        admin_cmds.register,
        accounts_cmds.register,
        billing_cmds.register,
        ops_cmds.register,
        sandbox_cmd.register,
    ]


def build_parser() -> _Parser:
    parser = _Parser(
        prog="billq",
        description="Billing runs on RabbitMQ: distribute due accounts, charge them exactly once.",
    )
    parser.add_argument("--amqp-url", help="RabbitMQ URL(s), comma-separated (BILLQ_AMQP_URL)")
    parser.add_argument("--database-url", help="Postgres URL (BILLQ_DATABASE_URL)")
    parser.add_argument("--queue-prefix", help="exchange/queue prefix (BILLQ_QUEUE_PREFIX)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in _shared_commands():
        register(sub)
    for ep in sorted(entry_points(group="billq.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings with CLI flags applied over environment and ``.env``."""
    overrides = {
        key: getattr(args, key, None)
        for key in Settings.model_fields
        if getattr(args, key, None) is not None
    }
    return load_settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = settings_from(args)
        from shared.logging import configure_logging

        configure_logging(settings)
        return handler(args, settings)
    except ConfigError as exc:
        sys.stderr.write(f"billq: error: {exc}\n")
        return EXIT_USAGE
    except BillqError as exc:
        sys.stderr.write(f"billq: error: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, never a traceback for operators
        sys.stderr.write(f"billq: error: unexpected {type(exc).__name__}: {exc}\n")
        return EXIT_FAILURE


def run_main() -> None:
    raise SystemExit(main())
