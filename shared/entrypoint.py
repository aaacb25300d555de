"""What every command-line entry point shares: the parser, argument types, exit codes.

``billq`` composes every command; ``python -m distributor``, ``python -m worker`` and
``python -m sandbox`` run their own. All of them turn an error into one line on stderr and an
exit code here, and only here::

    0  success
    1  the work could not be done (BillqError that is not a ConfigError)
    2  bad usage: an argument or setting (ConfigError, argparse)
    3  a worker recycled itself (supervisor restarts it)
    130 interrupted
    141 stdout closed early (``billq runs | head``): quiet, like a tool killed by SIGPIPE

A handler has the signature ``handler(args, settings) -> int`` and may raise ``BillqError``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence

from shared.config import Settings, load_settings
from shared.errors import BillqError, ConfigError

Handler = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_RECYCLE = 3
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: what the shell reports for `git log | head`'s git, so `set -o pipefail`
# scripts see billq exactly as they see any Unix tool whose reader went away.
EXIT_BROKEN_PIPE = 141


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}")
    return value


def is_loopback(host: str) -> bool:
    """A bind address only this machine can reach (servers that may run without a token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every entry point accepts before its command."""
    parser.add_argument("--amqp-url", help="RabbitMQ URL(s), comma-separated (BILLQ_AMQP_URL)")
    parser.add_argument("--database-url", help="Postgres URL (BILLQ_DATABASE_URL)")
    parser.add_argument("--queue-prefix", help="exchange/queue prefix (BILLQ_QUEUE_PREFIX)")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings with CLI flags applied over environment and ``.env``."""
    overrides = {
        key: getattr(args, key, None)
        for key in Settings.model_fields
        if getattr(args, key, None) is not None
    }
    return load_settings(**overrides)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, build the settings, run the chosen handler; every error → one line."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    prog = parser.prog.split()[0]
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = settings_from(args)
        from shared.logging import configure_logging

        configure_logging(settings)
        code = handler(args, settings)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_USAGE
    except BillqError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # last resort: one line, never a traceback for operators
        sys.stderr.write(f"{prog}: error: unexpected {type(exc).__name__}: {exc}\n")
        return EXIT_FAILURE


def _silence_stdout() -> None:
    """The reader of stdout went away: drop what is still buffered, quietly.

    Python flushes stdout again at exit; pointing the descriptor at /dev/null keeps that
    flush from raising a second BrokenPipeError ("Exception ignored ...") on stderr.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a descriptor (captured in tests)
        pass
