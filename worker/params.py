"""Live parameters: strategy and risk settings changed for the whole fleet without a restart.

`python -m worker params set KEY=VALUE ...` validates the values exactly as the environment's
(the same `Settings` model and validators, over the environment plus every live value, so a
cross-field rule such as SHORT_MA_BARS < LONG_MA_BARS holds too), records the change in the
ledger (`param_changes`: who, when, old, new, at a new version), publishes the whole live set to
Redis (``{prefix}:params`` and ``{prefix}:params:version``) and announces it on the notice
stream (``params.changed``). `params reset [KEY ...]` returns settings to the environment's
values, recorded the same way; `params show` prints the effective values and their source.

Every worker asks for the version at the top of each step (one GET, or none while the
process's watch of the notice stream heard of no change: `coordination.params`) and, when it
changed, rebuilds its `TradingConfig` from its own settings plus the live set (`FleetParams`).

Live are the core's `CORE_LIVE` and the strategy's own parameters (`live_names`); the rest are
read once at start (servers, identity, coordination timings, the broker, liquidation times) and
refused with one line. Money limits (`MONEY_LIMITS`) may only be tightened while a session is
in progress, unless ``--force``.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import ValidationError

from worker.settings import (
    ConfigError,
    Settings,
    _one_line,
    load_settings,
    near_miss,
    strategy_of,
)

if TYPE_CHECKING:
    from coordination.params import RedisParams
    from ledger.params import ParamChangeRecord, ParamEdit, ParamState, Plan
    from ledger.repository import Ledger
    from market.calendar import Session
    from strategy import Strategy
    from trading.config import TradingConfig

#: the trading core's live settings, read afresh at every step; the strategy's own parameters
#: are live too (`live_names`): for the shipped strategy STOP_LOSS_PCT, TAKE_PROFIT_PCT,
#: MAX_HOLD_MIN, TREND_*, MIN_SCORE, the scan and liquidity filters and the moving-average
#: windows; for a plug-in its STRATEGY_* parameters
CORE_LIVE: tuple[str, ...] = (
    "CAPITAL_LIMIT", "DAILY_LOSS_LIMIT", "SCAN_INTERVAL_S", "HOLD_INTERVAL_S", "ORDER_TIMEOUT_S",
)  # fmt: skip
#: a larger value is a looser limit; while a session is in progress only lowering is allowed
MONEY_LIMITS = frozenset({"CAPITAL_LIMIT", "DAILY_LOSS_LIMIT"})


class ParamsRefused(ConfigError):
    """A change the rules refuse (loosening a money limit mid-session without --force)."""


# --- names and values ------------------------------------------------------------------------


def strategy_names(settings: Settings) -> dict[str, str]:
    """The parameters of the strategy `settings` name (STRATEGY): environment name -> field."""
    from strategy.loading import strategy_class

    params = strategy_class(settings.strategy, setting="STRATEGY").Params
    return {params.env_name(f): f for f in params.model_fields}


def live_names(settings: Settings) -> tuple[str, ...]:
    """The live parameters: the core's (money limits first), then the strategy's."""
    return CORE_LIVE + tuple(n for n in strategy_names(settings) if n not in CORE_LIVE)


def check_name(name: str, settings: Settings) -> str:
    """`name` in upper case if it is a live parameter; otherwise a one-line `ConfigError`: an
    unknown name (with the settings' did-you-mean), or a setting that is not live."""
    upper = name.strip().upper()
    if upper in live_names(settings):
        return upper
    known = [*(n.upper() for n in Settings.model_fields), *strategy_names(settings)]
    if upper not in known:
        meant = near_miss(upper, known)
        hint = f"; did you mean {meant}?" if meant else ""
        raise ConfigError(f"{upper or repr(name)}: unknown setting{hint}")
    raise ConfigError(
        f"{upper}: not a live parameter (read once at start: change the environment and "
        "restart); 'params show' lists the live ones"
    )


def parse_assignments(items: Sequence[str], settings: Settings) -> dict[str, str]:
    """``KEY=VALUE`` arguments -> {KEY: VALUE}; names checked with `check_name`."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected KEY=VALUE")
        key = check_name(name, settings)
        if key in out:
            raise ConfigError(f"{key}: given twice")
        out[key] = value.strip()
    return out


def value_text(value: Any) -> str:
    """A setting's value as the text the environment would give it."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Effective:
    """Settings and strategy with the live values, as a worker runs them."""

    settings: Settings
    strategy: Strategy[Any]

    def value(self, key: str) -> Any:
        """The value of live parameter `key`: the strategy's own, else the setting's."""
        field = strategy_names(self.settings).get(key)
        if field is not None:
            return getattr(self.strategy.params, field)
        return getattr(self.settings, key.lower())


def _split(live: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Live values that are settings (by field name) and those only a strategy knows."""
    fields = {k.lower(): v for k, v in live.items() if k.lower() in Settings.model_fields}
    return fields, {k: v for k, v in live.items() if k.lower() not in Settings.model_fields}


def _strategy(settings: Settings, only_strategy: Mapping[str, str]) -> Strategy[Any]:
    """The settings' strategy, its own parameters read from the environment plus the live ones
    (as the environment would give them)."""
    if not only_strategy:
        return strategy_of(settings)
    return strategy_of(settings, environ={**os.environ, **only_strategy})


def with_live(base: Settings, live: Mapping[str, str]) -> Effective:
    """`base` with the live values, validated by the settings' own validators (the whole
    model, so cross-field rules hold) and the strategy's; a one-line `ConfigError`."""
    given, only_strategy = _split(live)
    try:
        valid = Settings(**{**base.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    # what was given explicitly stays so (a strategy takes only explicit settings over its own
    # parameter sources), plus the live values
    settings = Settings.model_construct(_fields_set=base.model_fields_set | set(given),
                                        **valid.model_dump())  # fmt: skip
    return Effective(settings, _strategy(settings, only_strategy))


def env_with_live(live: Mapping[str, str]) -> Effective:
    """This process's environment with the live values, exactly as `load_settings` reads it."""
    given, only_strategy = _split(live)
    settings = load_settings(**given)
    return Effective(settings, _strategy(settings, only_strategy))


# --- deciding a change ---------------------------------------------------------------------


def plan_change(
    requested: Mapping[str, str | None] | None,
    *,
    session: Session | None,
    force: bool,
    environment: Callable[[Mapping[str, str]], Effective] = env_with_live,
) -> Plan:
    """The change as the ledger's `Plan`: on the live set it finds, the edits to record.

    `requested`: KEY -> value text, or None to return KEY to the environment's value; None
    for all of them: every live setting back to the environment's. Raises `ConfigError` for a
    value the settings refuse, `ParamsRefused` for a money limit loosened while `session` is
    in progress without `force`.
    """
    from ledger.params import ParamEdit

    def plan(state: ParamState) -> list[ParamEdit]:
        live = state.values()
        wanted = dict.fromkeys(live) if requested is None else dict(requested)
        after = dict(live)
        for key, value in wanted.items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        before_s, after_s = environment(live), environment(after)
        edits = []
        for key in sorted(wanted):
            old, new = before_s.value(key), after_s.value(key)
            if old == new and (key in live) == (key in after):
                continue
            if key in MONEY_LIMITS and Decimal(new) > Decimal(old) and session and not force:
                raise ParamsRefused(
                    f"{key}: {value_text(old)} -> {value_text(new)} loosens a money limit during "
                    f"the session of {session.day}; only tightening until the close (--force "
                    "overrides)"
                )
            edits.append(ParamEdit(key, value_text(old), value_text(new), key in after))
        return edits

    return plan


def session_in_progress(settings: Settings, now: datetime | None = None) -> Session | None:
    """The session in progress on the fleet's clock (as `worker.app.plan_session` plans it),
    or None: the real KRX session in real time; under PAPER_SPEED > 1 the simulated one
    (PAPER_DAY, else today or the next session day) opening at PAPER_EPOCH; without an epoch it
    counts as open (the cautious answer)."""
    from market.calendar import default_calendar
    from market.clock import KST, SimClock

    calendar = default_calendar()
    speed = 1.0 if settings.broker == "kis" else settings.paper_speed
    today = datetime.now(KST).date()
    if speed <= 1:
        session = calendar.session(today)
        at = now or datetime.now(KST)
    else:
        day = settings.paper_day or today
        session = calendar.session(day) or calendar.next_session(day)
        epoch = settings.paper_epoch.timestamp() if settings.paper_epoch else None
        at = now or SimClock(session.open, speed, epoch).now()
    if session is None or not session.open <= at < session.close:
        return None
    return session


def author(by: str | None) -> str:
    """Who changes: `by`, or the OS user at this host."""
    if by and by.strip():
        return by.strip()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --- applying a change to the fleet ----------------------------------------------------------


@dataclass(frozen=True)
class Changed:
    """What one `set`/`reset` did: the live set after it, the rows recorded (none: nothing
    changed), whether Redis took the publication."""

    state: ParamState
    records: list[ParamChangeRecord]
    published: bool


async def change(
    ledger: Ledger,
    store: RedisParams,
    publish_notice: Callable[[Mapping[str, Any]], Any],
    plan: Plan,
    *,
    by: str,
    forced: bool,
    at: datetime | None = None,
) -> Changed:
    """Record the change in the ledger (the plan decides under the change lock), publish the
    whole live set to Redis (also when nothing changed: it repairs a lost publication), and
    announce it (`publish_notice(data)`) when something changed."""
    state, records = await ledger.change_params(plan, by=by, at=at or datetime.now(UTC),
                                                forced=forced)  # fmt: skip
    published = await republish(state, store)
    if records:
        await publish_notice(
            {
                "version": state.version, "by": by, "forced": forced,
                "changes": [{"key": r.key, "old": r.old_value, "new": r.new_value,
                             "source": "live" if r.live else "env"} for r in records],
            }
        )  # fmt: skip
    return Changed(state, records, published)


async def republish(state: ParamState, store: RedisParams) -> bool:
    """Publish the ledger's live set to Redis unless Redis holds its version or a newer one."""
    if state.version == 0:
        return False
    return await store.publish(state.version, state.values())


class FleetParams:
    """One worker's `trading.live.ParamSource`: the fleet's live set in Redis over the worker's
    own settings and strategy, built into a `TradingConfig` by `build`
    (`worker.app.trading_config`)."""

    def __init__(
        self,
        store: RedisParams,
        base: Settings,
        build: Callable[[Settings, Strategy[Any]], TradingConfig],
    ) -> None:
        self.store = store
        self.base = base
        self.build = build
        self.version = 0
        self._refused = 0  # a version whose values failed validation: not tried again
        self._away = False
        self.log = logger.bind(worker=base.worker_id)

    async def load(self, default: TradingConfig) -> TradingConfig:
        """The config to start with: the live set's if one is published, else `default`."""
        config = await self.poll()
        return config if config is not None else default

    async def watch(self) -> None:
        """`trading.live.WatchedSource`: the store's watch, shared by the process's workers."""
        await self.store.watch()

    async def poll(self) -> TradingConfig | None:
        from coordination.errors import CoordinationError

        try:
            version = await self.store.version()
            if version in (self.version, self._refused, 0):
                # 0: nothing published, or Redis lost it: keep what runs (start-up republishes)
                return None
            published = await self.store.read()
        except CoordinationError as exc:
            if not self._away:
                self._away = True
                self.log.error("live parameters unreadable, still running v{}: {}",
                               self.version, exc)  # fmt: skip
            return None
        if self._away:
            self._away = False
            self.log.warning("live parameters readable again")
        try:
            live = with_live(self.base, published.values)
            config = self.build(live.settings, live.strategy)
        except (ConfigError, ValueError) as exc:
            self._refused = published.version
            self.log.error("live parameters v{} refused, still running v{}: {}",
                           published.version, self.version, exc)  # fmt: skip
            return None
        self.version = published.version
        return config


# --- the command -----------------------------------------------------------------------------


def command(settings: Settings, args: Any) -> int:
    """`params show|set|reset`: exit 0, 2 for a bad or refused change (nothing changed)."""
    import anyio

    action = args.params_command
    if action == "show":
        return anyio.run(_show, settings, args.json)
    if action == "set":
        requested: dict[str, str | None] | None = dict(
            parse_assignments(args.assignments, settings)
        )
        assert requested is not None
        env_with_live({k: v for k, v in requested.items() if v is not None})  # fail before I/O
    else:
        requested = {check_name(k, settings): None for k in args.keys} if args.keys else None
    session = session_in_progress(settings)
    plan = plan_change(requested, session=session, force=args.force)
    result = anyio.run(_change, settings, plan, author(args.by), args.force)
    print(_changed_text(result))
    return 0


async def _change(settings: Settings, plan: Plan, by: str, force: bool) -> Changed:
    from coordination.keys import Keyspace
    from coordination.notices import Notices, NoticeType
    from coordination.params import RedisParams
    from ledger.repository import Ledger
    from market.costs import CostModel
    from worker.inspect import _servers

    async with _servers(settings, redis=True, postgres=True) as (redis, engine):
        assert redis is not None
        assert engine is not None
        keys = Keyspace(settings.fleet_prefix)
        notices = Notices(redis, keys, maxlen=settings.events_maxlen)

        async def announce(data: Mapping[str, Any]) -> None:
            await notices.publish(NoticeType.PARAMS_CHANGED, "", None, data)

        return await change(Ledger(engine, CostModel()), RedisParams(redis, keys), announce,
                            plan, by=by, forced=force)  # fmt: skip


def _changed_text(result: Changed) -> str:
    if not result.records:
        return f"params unchanged at v{result.state.version}"
    head = result.records[0]
    forced = " (forced)" if head.forced else ""
    lines = [f"params v{head.version} by {head.changed_by}{forced}:"]
    for r in result.records:
        lines.append(f"  {r.key} {r.old_value} -> {r.new_value}"
                     f"{'' if r.live else ' (environment)'}")  # fmt: skip
    return "\n".join(lines)


async def _show(settings: Settings, as_json: bool) -> int:
    import orjson

    from coordination.keys import Keyspace
    from coordination.params import RedisParams
    from ledger.repository import Ledger
    from market.clock import KST
    from market.costs import CostModel
    from worker.inspect import _servers

    async with _servers(settings, redis=True, postgres=True) as (redis, engine):
        assert redis is not None
        assert engine is not None
        state = await Ledger(engine, CostModel()).live_params()
        published = await RedisParams(redis, Keyspace(settings.fleet_prefix)).version()
    effective = env_with_live(state.values())
    names = live_names(settings)
    rows = []
    for key in names:
        live = state.live.get(key)
        rows.append({
            "key": key, "value": value_text(effective.value(key)),
            "source": "live" if live else "env", "version": live.version if live else None,
            "changed_at": live.changed_at.isoformat() if live else None,
            "changed_by": live.changed_by if live else None,
        })  # fmt: skip
    if as_json:
        doc = {"version": state.version, "published_version": published, "params": rows}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    note = "" if published == state.version else f"; Redis publishes v{published}"
    lines = [f"live parameters v{state.version}{note}",
             f"{'setting':<20} {'value':>12}  source"]  # fmt: skip
    for row, key in zip(rows, names, strict=True):
        source = "env"
        live = state.live.get(key)
        if live is not None:
            source = (f"live v{live.version} {live.changed_at.astimezone(KST):%Y-%m-%d %H:%M:%S}"
                      f" KST by {live.changed_by}")  # fmt: skip
        lines.append(f"{key:<20} {row['value']:>12}  {source}")
    print("\n".join(lines))
    return 0
