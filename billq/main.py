"""The ``billq`` command: the composition root.

One parser holds every command; each area registers its own (``billq.accounts``,
``billq.admin``, ``billq.billing``, ``billq.ops``) and the entry-point packages contribute
theirs (``distributor.cli``, ``worker.cli``, ``sandbox.cli``,
``dashboard.cli``, ``api.cli``). Errors become one line and an
exit code in ``shared.entrypoint``.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.entrypoint import Parser, add_connection_arguments, run


def build_parser() -> Parser:
    from api import cli as api_cli
    from billq import accounts, admin, audit, billing, charges, ops, refunds
    from dashboard import cli as dashboard_cli
    from distributor import cli as distributor_cli
    from sandbox import cli as sandbox_cli
    from worker import cli as worker_cli

    parser = Parser(
        prog="billq",
        description="Billing runs on RabbitMQ: distribute due accounts, charge them exactly once.",
    )
    add_connection_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for register in (
        distributor_cli.register,
        worker_cli.register,
        admin.register,
        accounts.register,
        billing.register,
        ops.register,
        audit.register,
        charges.register,
        refunds.register,
        sandbox_cli.register,
        dashboard_cli.register,
        api_cli.register,
    ):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
