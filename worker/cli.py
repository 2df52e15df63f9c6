"""The operator's command line.

Exit codes: 0 success; 2 bad configuration or arguments (one line on stderr naming the setting,
no traceback); 1 runtime failure (one line on stderr saying what failed and where).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from loguru import logger

from worker.settings import ConfigError, Settings, load_settings

PROG = "python -m worker"
#: The console script's name ([project.scripts] in pyproject.toml): the same verbs.
SCRIPT = "tradefleet"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


# argparse prefixes a type's error with "argument --flag: ", so these messages do not name it.
def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be YYYY-MM-DD, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.1 <= value <= 86_400):
        raise argparse.ArgumentTypeError(f"must be seconds between 0.1 and 86400, got {text!r}")
    return value


def package_version() -> str:
    """The installed distribution's version (package metadata)."""
    try:
        return version("tradefleet")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class _Version(argparse.Action):
    """`--version`, reading the package metadata only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        print(f"{SCRIPT} {package_version()}")
        parser.exit()


def _inspection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_seconds,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one document a line",
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="tradefleet: KRX day-trading workers. With no command and no "
        "DATABASE_URL/REDIS_URL: trade one simulated day on embedded servers and print the "
        "summary. Configuration comes from the environment (see README).",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser(
        "run",
        help="run one production worker until the close or SIGTERM",
        description="Run one worker against DATABASE_URL and REDIS_URL until the "
        "market closes or SIGTERM.",
    )
    sub.add_parser(
        "migrate",
        help="alembic upgrade head on DATABASE_URL (idempotent)",
        description="Apply every migration to DATABASE_URL. Safe to repeat.",
    )
    locks = sub.add_parser(
        "locks",
        help="live symbol locks and drift against the Postgres mirror",
        description="List live locks (symbol, owner, fence, ms to expiry) from "
        "Redis and any drift against stock_locks.",
    )
    _inspection_flags(locks)
    workers = sub.add_parser(
        "workers",
        help="registered workers and their heartbeat age",
        description="List workers (id, state, symbol, heartbeat age).",
    )
    _inspection_flags(workers)
    summary = sub.add_parser(
        "summary",
        help="the daily summary for a trading day",
        description="Print the daily summary of a trading day (default: the latest KRX "
        "session on or before today, Asia/Seoul).",
    )
    summary.add_argument("--date", type=_date, help="trading day YYYY-MM-DD")
    summary.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (also with no trades)"
    )
    exchange = sub.add_parser(
        "exchange",
        help="a KIS-compatible exchange (REST + WebSocket) over the simulated market",
        description="Serve the KIS Open API (REST and WebSocket) over the simulated market on "
        "the paper clock (PAPER_*), with the EXCHANGE_* account, until SIGTERM/SIGINT. "
        "Ports default to KIS's for the domain; 0 picks free ones.",
    )
    exchange.add_argument("--host", default="127.0.0.1", help="address to bind")
    exchange.add_argument("--port", type=int, help="REST port (default 9443 real, 29443 mock)")
    exchange.add_argument("--ws-port", type=int, help="WebSocket port (21000 real, 31000 mock)")
    exchange.add_argument("--domain", choices=("real", "mock"), default="mock")
    sub.add_parser(
        "gateway",
        help="the KIS gateway of one app key: token, request budget, relay (one active)",
        description="Serve the KIS relay for BROKER=kis workers: one active gateway per app key "
        "(a Redis lease), others stand by and take over. Holds the access token and the request "
        "budget (priority lanes: orders, order status, market data). Needs REDIS_URL and "
        "KIS_APP_KEY, KIS_APP_SECRET, KIS_ACCOUNT; listens on GATEWAY_HOST:GATEWAY_PORT.",
    )
    report = sub.add_parser(
        "report",
        help="a self-contained HTML report of one or more trading days",
        description="Write one HTML file (charts inline, opens with no network) from the "
        "ledger: equity and drawdown, PnL per worker, trades, exit reasons, forced-exit cost, "
        "slippage by tier, lock contention. Default day: the latest with an order. Exit 1 "
        "(no file written) when the range holds nothing.",
    )
    report.add_argument("--date", type=_date, metavar="D", help="one trading day YYYY-MM-DD")
    report.add_argument("--from", dest="first", type=_date, metavar="D", help="first day")
    report.add_argument("--to", dest="last", type=_date, metavar="D",
                        help="last day (default: today in Asia/Seoul)")  # fmt: skip
    report.add_argument("--out", required=True, metavar="FILE.html", help="the file to write")
    report.set_defaults(report_prog=report.prog)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: config error: {exc}\n")
        return 2
    from worker.logs import setup_logging

    setup_logging(settings.log_level, settings.log_json, worker=settings.worker_id)
    try:
        return _dispatch(args, settings)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: config error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the operator, details in the log
        logger.opt(exception=exc).debug("failure")
        sys.stderr.write(f"{prog}: error: {_describe(exc)}\n")
        return 1


def console() -> int:
    """The `tradefleet` console script: `python -m worker` under its own name."""
    return main(prog=SCRIPT)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    from worker.schema import SchemaNotCurrent

    if isinstance(exc, SchemaNotCurrent):  # already the operator's line, with what to do
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise ConfigError(f"{name.upper()}: required for this command")


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # the inspection commands' imports (coordination, the ledger) only for them: `run` binds
    # its health port before it imports the trading code
    from worker import commands

    command = args.command
    if command is None:
        if settings.embedded:
            from worker.embedded import run_embedded

            return run_embedded(settings)
        command = "run"
    if command == "run":
        _require(settings, "database_url", "redis_url")
        return commands.run(settings)
    if command == "migrate":
        _require(settings, "database_url")
        return commands.migrate(settings)
    if command in ("locks", "workers", "summary"):
        from worker import inspect
    if command == "locks":
        _require(settings, "redis_url")
        return inspect.locks(settings, as_json=args.json, watch_s=args.watch)
    if command == "workers":
        _require(settings, "redis_url")
        return inspect.workers(settings, as_json=args.json, watch_s=args.watch)
    if command == "summary":
        _require(settings, "database_url")
        return inspect.summary(settings, args.date, as_json=args.json)
    if command == "exchange":
        return commands.exchange(
            settings, host=args.host, port=args.port, ws_port=args.ws_port, domain=args.domain
        )
    if command == "gateway":
        from worker.gateway import gateway

        return gateway(settings)
    if command == "report":
        _require(settings, "database_url")
        from worker.report_html import report_command

        return report_command(settings, args)
    raise AssertionError(command)
