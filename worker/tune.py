"""`python -m worker tune`: a strategy parameter search on backtests, with walk-forward validation.

The session days of the range are split once, in time order: the first part (``--split``, a
fraction of the days, default 2/3, or the first out-of-sample day) is **in-sample**, the rest
**out-of-sample**. Every trial is one `worker.backtest.run_backtest` over the in-sample days
with the parameters optuna's TPE sampler proposes (seeded: the same data, range and seed give
the same trials and the same best parameters); the best trial's parameters are then run once on
the out-of-sample days, which no trial has seen, and both sets of figures are printed side by
side. A single anchored split rather than rolling windows: a trial costs one backtest of the
in-sample days, and rolling folds would multiply that by their count.

Objective: the in-sample **net PnL** (after fees and taxes, `trades.pnl`) in won, maximized. A
trial with fewer than ``--min-trades`` in-sample trades is infeasible (a sampler constraint,
and never chosen as the best): no trades scores 0 won, which would otherwise beat every
strategy that loses on costs. Parameters the model refuses (a relation between fields, or a
window longer than N_BARS allows) end their trial without a backtest.

Search space (`search_space`): every int, float and Decimal parameter of the strategy's model
(`strategy.loading.describe`), each within its declared bounds narrowed to a factor of
`SPREAD` around its default (bounds such as ``MIN_VOLUME <= 10**12`` would otherwise spend
every trial in absurd corners), on a log scale when positive. ``--params NAME,NAME=LO:HI``
restricts the search to the names given (field or environment names) and sets ranges.

Servers: each trial has its own ledger: a fresh database and key prefix on DATABASE_URL /
REDIS_URL, dropped at the end; with neither set, one embedded Postgres and Valkey serve the
whole search (a fresh database per trial on them).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from ledger.stats import Figures
from market.bars import DayBars, load_bars
from market.calendar import default_calendar
from worker.backtest import BacktestResult, run_backtest
from worker.settings import ConfigError, Settings

#: the default range of a parameter: its default divided and multiplied by this, within bounds
SPREAD = 4
#: the default share of the session days that is in-sample
DEFAULT_SPLIT = 2 / 3
_NUMERIC = {"int": int, "float": float, "Decimal": Decimal}


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: field name, environment name, type and range (inclusive)."""

    name: str
    env: str
    kind: str  # "int" | "float" | "Decimal"
    low: float
    high: float
    log: bool

    def value(self, x: float) -> int | float | Decimal:
        """The sampled number as the parameter's type, rounded to a value a person would set."""
        if self.kind == "int":
            return round(x)
        places = 0 if abs(x) >= 1000 else 2 if abs(x) >= 1 else 3
        if self.kind == "float":
            return round(x, places)
        return Decimal(repr(x)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN)


def _bounds(row: Mapping[str, Any], kind: str) -> tuple[float, float]:
    b = row["bounds"]
    step = 1 if kind == "int" else 0
    low = float(b["ge"]) if "ge" in b else float(b["gt"]) + step if "gt" in b else -math.inf
    high = float(b["le"]) if "le" in b else float(b["lt"]) - step if "lt" in b else math.inf
    if kind != "int":  # an open float bound: stay a hair inside it
        if "gt" in b:
            low = math.nextafter(low, math.inf) if low else 1e-9
        if "lt" in b:
            high = math.nextafter(high, -math.inf)
    return low, high


def parse_params(text: str | None) -> dict[str, tuple[float, float] | None]:
    """``NAME,NAME=LO:HI,...`` -> {name as given: range or None}; `ConfigError` naming --params."""
    if text is None:
        return {}
    out: dict[str, tuple[float, float] | None] = {}
    for item in text.split(","):
        name, eq, rng = item.strip().partition("=")
        if not name:
            raise ConfigError(f"--params: an empty name in {text!r}")
        if not eq:
            out[name] = None
            continue
        lo, colon, hi = rng.partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            low = high = math.nan
        if not colon or not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"--params: {name}: the range must be LO:HI with LO < HI, "
                              f"got {rng!r}")  # fmt: skip
        out[name] = (low, high)
    return out


def search_space(
    params_cls: Any, only: Mapping[str, tuple[float, float] | None] | None = None
) -> list[Dimension]:
    """The dimensions of a search over `params_cls` (a `StrategyParams` model): every numeric
    parameter, or those `only` names (field or environment names, any case) with their given
    ranges. `ConfigError` for a name that is not a numeric parameter or a range off bounds."""
    from strategy.loading import describe

    rows = describe(params_cls)
    by_name = {r["name"].lower(): r for r in rows} | {r["env"].lower(): r for r in rows}
    chosen: dict[str, tuple[float, float] | None] = {}
    for given, rng in (only or {}).items():
        row = by_name.get(given.lower())
        if row is None or row["type"] not in _NUMERIC:
            what = "a numeric parameter" if row is not None else "a parameter"
            raise ConfigError(f"--params: {given} is not {what} of this strategy")
        chosen[row["name"]] = rng
    dims: list[Dimension] = []
    for row in rows:
        kind = row["type"]
        if kind not in _NUMERIC or (only and row["name"] not in chosen):
            continue
        low, high = _bounds(row, kind)
        rng = chosen.get(row["name"])
        if rng is not None:
            if rng[0] < low or rng[1] > high:
                raise ConfigError(f"--params: {row['env']}: {rng[0]:g}:{rng[1]:g} is outside "
                                  f"its bounds {low:g}..{high:g}")  # fmt: skip
            low, high = rng
        else:
            default = float(row["default"])
            if default > 0:
                low, high = max(low, default / SPREAD), min(high, default * SPREAD)
            elif not (math.isfinite(low) and math.isfinite(high)):
                continue  # no scale to search on: name it with a range in --params
        if kind == "int":
            low, high = math.ceil(low), math.floor(high)
        if low >= high:
            continue
        dims.append(Dimension(row["name"], row["env"], kind, low, high, log=low > 0))
    if not dims:
        raise ConfigError("--params: no numeric parameter to search")
    return dims


@dataclass(frozen=True)
class Split:
    in_sample: tuple[date, ...]
    out_of_sample: tuple[date, ...]


def split_days(days: Sequence[date], split: str | None) -> Split:
    """Session days in time order -> in-sample (earlier) and out-of-sample (later) days.
    `split`: a fraction of the days in-sample (default 2/3), or the first out-of-sample day."""
    days = sorted(days)
    if len(days) < 2:
        raise ConfigError(f"--from/--to: the range holds {len(days)} session day(s), "
                          "walk-forward needs at least 2")  # fmt: skip
    if split and "-" in split:
        try:
            first_out = date.fromisoformat(split)
        except ValueError:
            raise ConfigError(f"--split: not a fraction or a date, got {split!r}") from None
        k = sum(d < first_out for d in days)
    else:
        try:
            share = DEFAULT_SPLIT if split is None else float(split)
        except ValueError:
            share = math.nan
        if not 0 < share < 1:
            raise ConfigError(f"--split: a fraction between 0 and 1 or a date, got {split!r}")
        k = min(len(days) - 1, max(1, round(len(days) * share)))
    if not 0 < k < len(days):
        raise ConfigError(f"--split: {split} leaves no in-sample or no out-of-sample day "
                          f"in {days[0]}..{days[-1]}")  # fmt: skip
    return Split(tuple(days[:k]), tuple(days[k:]))


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, Any]
    pnl: Decimal | None = None  # None: the parameters were refused (no backtest)
    trades: int = 0
    note: str = ""
    wall_s: float = field(default=0.0, compare=False)
    figures: Figures | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TuneResult:
    """What `--json` prints (`as_dict`); `best` is None when no trial was feasible."""

    strategy: str
    data: str
    split: Split
    seed: int
    workers: int
    min_trades: int
    space: tuple[Dimension, ...]
    trials: tuple[Trial, ...]
    best: Trial | None
    in_sample: Figures | None = None
    out_of_sample: Figures | None = None
    wall_s: float = field(default=0.0, compare=False)

    def env_lines(self) -> list[str]:
        if self.best is None:
            return []
        env = {d.name: d.env for d in self.space}
        return [f"{env[k]}={v}" for k, v in self.best.params.items()]

    def as_dict(self) -> dict[str, Any]:
        def days(ds: Sequence[date]) -> dict[str, Any]:
            return {"from": ds[0].isoformat(), "to": ds[-1].isoformat(), "days": len(ds)}

        def trial(t: Trial) -> dict[str, Any]:
            return {"number": t.number, "params": {k: str(v) for k, v in t.params.items()},
                    "pnl": None if t.pnl is None else str(t.pnl), "trades": t.trades,
                    "note": t.note}  # fmt: skip

        return {
            "strategy": self.strategy,
            "data": self.data,
            "seed": self.seed,
            "workers": self.workers,
            "objective": "in-sample net PnL (won)",
            "min_trades": self.min_trades,
            "in_sample": days(self.split.in_sample),
            "out_of_sample": days(self.split.out_of_sample),
            "space": [
                {
                    "name": d.name,
                    "env": d.env,
                    "type": d.kind,
                    "low": d.low,
                    "high": d.high,
                    "log": d.log,
                }
                for d in self.space
            ],
            "trials": [trial(t) for t in self.trials],
            "best": None if self.best is None else trial(self.best),
            "env": dict(line.split("=", 1) for line in self.env_lines()),
            "figures": {
                "in_sample": None if self.in_sample is None else self.in_sample.as_dict(),
                "out_of_sample": None
                if self.out_of_sample is None
                else self.out_of_sample.as_dict(),
            },
        }


@contextlib.contextmanager
def _shared_servers(settings: Settings) -> Iterator[Settings]:
    """With no servers configured, one embedded Postgres and Valkey for the whole search (each
    backtest still makes its own database on it); else the settings as they are."""
    if not settings.embedded:
        yield settings
        return
    from ledger.migrate import upgrade_head
    from worker.servers import embedded_postgres, embedded_redis

    with embedded_postgres("tradefleet-tune") as database_url, embedded_redis() as redis_url:
        upgrade_head(database_url)
        yield settings.model_copy(update={"database_url": database_url, "redis_url": redis_url})


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def tune(
    data: Path,
    first: date | None,
    last: date | None,
    trials: int,
    *,
    settings: Settings,
    strategy_spec: str | None = None,
    workers: int = 2,
    split: str | None = None,
    params: Mapping[str, tuple[float, float] | None] | None = None,
    seed: int = 0,
    min_trades: int = 1,
    days: Sequence[DayBars] | None = None,
    progress: Any = _progress,
) -> TuneResult:
    """Search the strategy's parameters (see the module docstring). Raises `ConfigError` on bad
    arguments before any backtest runs, `market.bars.BarDataError` on bad data."""
    import optuna

    from strategy.loading import DEFAULT_SPEC
    from worker.backtest import load_strategy

    started = time.monotonic()
    if trials < 1:
        raise ConfigError(f"--trials: must be >= 1, got {trials}")
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if min_trades < 0:
        raise ConfigError(f"--min-trades: must be >= 0, got {min_trades}")
    if first is not None and last is not None and first > last:
        raise ConfigError(f"--from: {first} is after --to {last}")
    loaded = list(days) if days is not None else load_bars(data, default_calendar(), first, last)
    loaded = [d for d in loaded if (first is None or d.session.day >= first)
              and (last is None or d.session.day <= last)]  # fmt: skip
    parts = split_days([d.session.day for d in loaded], split)
    base = load_strategy(settings, strategy_spec, None) or _configured(settings)
    space = tuple(search_space(base.Params, params))
    spec = strategy_spec or settings.strategy or DEFAULT_SPEC

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    done: list[Trial] = []
    with _shared_servers(settings) as on:

        def backtest(values: Mapping[str, Any], which: Sequence[date]) -> BacktestResult:
            return run_backtest(data, which[0], which[-1], workers, strategy_spec, values,
                                settings=on, days=loaded, keep_database=False)  # fmt: skip

        for n in range(1, trials + 1):
            t = study.ask()
            values = {d.name: d.value(_suggest(t, d)) for d in space}
            shown = " ".join(f"{d.env}={values[d.name]}" for d in space)
            refused = _refusal(base, values, on)
            if refused:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
                done.append(Trial(n, values, note=refused))
                progress(f"trial {n}/{trials}: {shown} -> refused: {refused}")
                continue
            t0 = time.monotonic()
            result = backtest(values, parts.in_sample)
            if not result.reconciled:
                raise RuntimeError(f"trial {n}: the backtest ledger does not reconcile")
            f = result.total
            constrain = getattr(t, "set_constraint", None)  # optuna >= 5 (before: best only)
            if constrain is not None:
                constrain("min_trades", min_trades - f.trades)  # feasible when <= 0
            study.tell(t, float(f.pnl))
            trial = Trial(n, values, f.pnl, f.trades, wall_s=time.monotonic() - t0, figures=f)
            note = "" if f.trades >= min_trades else f" (under --min-trades {min_trades})"
            done.append(replace(trial, note=note.strip()))
            progress(f"trial {n}/{trials}: {shown} -> in-sample PnL {f.pnl:+,} won, "
                     f"{f.trades} trades{note} ({trial.wall_s:.1f}s)")  # fmt: skip
        feasible = [t for t in done if t.pnl is not None and t.trades >= min_trades]
        best = max(feasible, key=lambda t: (t.pnl, -t.number)) if feasible else None
        in_fig = out_fig = None
        if best is not None:
            progress(f"best: trial {best.number}; out-of-sample run over "
                     f"{parts.out_of_sample[0]}..{parts.out_of_sample[-1]}")  # fmt: skip
            in_fig = best.figures
            out_fig = backtest(best.params, parts.out_of_sample).total
    return TuneResult(str(spec), str(data), parts, seed, workers, min_trades, space,
                      tuple(done), best, in_fig, out_fig,
                      wall_s=time.monotonic() - started)  # fmt: skip


def _configured(settings: Settings) -> Any:
    from worker.settings import strategy_of

    return strategy_of(settings)


def _suggest(t: Any, d: Dimension) -> float:
    if d.kind == "int":
        return float(t.suggest_int(d.name, int(d.low), int(d.high), log=d.log))
    return float(t.suggest_float(d.name, d.low, d.high, log=d.log))


def _refusal(base: Any, values: Mapping[str, Any], settings: Settings) -> str:
    """Why these parameters cannot run ("" when they can): the model's own checks, and the bars
    a scan fetches (a window must fit in N_BARS - 1, as the settings require)."""
    from strategy.base import ParamError

    try:
        strategy = base.with_params(**values)
    except ParamError as exc:
        return str(exc)
    if strategy.bars_needed + 1 > settings.n_bars:
        return f"a window of {strategy.bars_needed} bars needs N_BARS > {strategy.bars_needed}"
    return ""


# ----- rendering ------------------------------------------------------------------------


def _num(x: Decimal | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(result: TuneResult) -> str:
    s = result.split
    head = [
        f"tune {result.data}: strategy {result.strategy}, {len(result.trials)} trials, "
        f"seed {result.seed}, {result.workers} worker(s)",
        f"in-sample {s.in_sample[0]}..{s.in_sample[-1]} ({len(s.in_sample)} day(s)), "
        f"out-of-sample {s.out_of_sample[0]}..{s.out_of_sample[-1]} "
        f"({len(s.out_of_sample)} day(s)); objective: in-sample net PnL",
        "",
    ]
    if result.best is None:
        return "\n".join([*head, f"no trial had {result.min_trades} or more in-sample trades"])
    rows: list[tuple[str, str, str]] = []
    a, b = result.in_sample, result.out_of_sample
    assert a is not None
    assert b is not None

    def pct(x: Decimal | None) -> str:
        return "-" if x is None else f"{x * 100:.1f}"

    figures: tuple[tuple[str, Callable[[Figures], str]], ...] = (
        ("PnL", lambda f: _num(f.pnl, "+,.0f")),
        ("trades", lambda f: str(f.trades)),
        ("win rate %", lambda f: pct(f.win_rate)),
        ("profit factor", lambda f: _num(f.profit_factor, ".2f")),
        ("max drawdown", lambda f: _num(f.max_drawdown, ",.0f")),
        ("Sharpe", lambda f: _num(f.sharpe, ".2f")),
    )
    for label, fmt in figures:
        rows.append((label, fmt(a), fmt(b)))
    table = [f"{'':<14} {'in-sample':>12} {'out-of-sample':>14}"]
    table += [f"{n:<14} {x:>12} {y:>14}" for n, x, y in rows]
    return "\n".join([*head, f"best: trial {result.best.number}", *result.env_lines(), "", *table])


def tune_command(settings: Settings, args: Any) -> int:
    """The CLI verb: 0 with a best trial, 1 when no trial was feasible."""
    result = tune(
        Path(args.data), args.first, args.last, args.trials, settings=settings,
        strategy_spec=args.strategy, workers=args.workers, split=args.split,
        params=parse_params(args.params), seed=args.seed, min_trades=args.min_trades,
    )  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    else:
        sys.stdout.write(render(result) + "\n")
    _progress(f"tune: {len(result.trials)} trials in {result.wall_s:.1f}s wall")
    return 0 if result.best is not None else 1
