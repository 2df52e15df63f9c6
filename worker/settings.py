"""Settings, built once from the environment in `__main__` and passed down, frozen.

Every field is an environment variable of the same name in upper case (`CAPITAL_LIMIT`, ...).
Every field has a range: numbers are finite and bounded on both sides, dates lie inside the
KRX calendar's range, URLs carry the right scheme and a valid host and port. A value outside
raises `ConfigError` whose message is one line naming the variable; `__main__` prints it and
exits 2 before anything connects. The README's configuration table lists every field, its range
and its default.

An environment variable that is not a setting but is a near miss of one (`PAPER_SPEEED`) is a
`ConfigError` too: a typo would otherwise run silently on the default. See `check_environment`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from market.calendar import CALENDAR_END, CALENDAR_START
from market.types import check_symbol_codes, split_symbol_codes
from strategy.momentum import MomentumFields

if TYPE_CHECKING:  # imported lazily: a paper worker needs nothing of broker.kis
    from broker.kis import KisConfig
    from strategy import Strategy


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line naming it."""


# --- bounds shared by several settings -------------------------------------------------------

#: won: the most any money setting may say (a trillion won)
MONEY_MAX = Decimal(10**12)
#: minutes of a regular KRX session (09:00-15:30)
SESSION_MIN = 390
#: clock seconds of a regular KRX session
SESSION_S = SESSION_MIN * 60
#: one minute bar per session minute: no window is longer
MAX_BARS = SESSION_MIN
_ID = r"^[A-Za-z0-9_.\-]+$"


# --- value checks ------------------------------------------------------------------------------


def _calendar_instant(value: datetime | None) -> datetime | None:
    if value is not None and not CALENDAR_START <= value.date() <= CALENDAR_END:
        raise ValueError(f"must lie inside the calendar range {CALENDAR_START}..{CALENDAR_END}")
    return value


def _calendar_day(value: date | None) -> date | None:
    if value is not None and not CALENDAR_START <= value <= CALENDAR_END:
        raise ValueError(f"must lie inside the calendar range {CALENDAR_START}..{CALENDAR_END}")
    return value


def _parse_epoch(value: Any) -> Any:
    """PAPER_EPOCH: Unix seconds or ISO 8601 (a naive ISO time is read as UTC)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                return datetime.fromtimestamp(float(text), tz=UTC)
            parsed = datetime.fromisoformat(text)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("must be Unix seconds or an ISO 8601 time") from None
    return value


#: a KRX short code (what the market modules key everything by)

#: the most names KIS_UNIVERSE may list (the gateway reads about 4 requests a name a cycle)
MAX_KIS_UNIVERSE = 200


def _universe(value: tuple[str, ...]) -> tuple[str, ...]:
    """KIS_UNIVERSE: 6-digit codes, each once, at most `MAX_KIS_UNIVERSE`."""
    check_symbol_codes(value)
    seen: set[str] = set()
    for s in value:
        if s in seen:
            raise ValueError(f"lists {s} twice")
        seen.add(s)
    if len(value) > MAX_KIS_UNIVERSE:
        raise ValueError(f"at most {MAX_KIS_UNIVERSE} codes, got {len(value)}")
    return value


#: a host name label; `_` too, as Docker and compose service names have it
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host(value: str) -> str:
    """An IP address or an RFC 1123 host name whose last label is not all digits (so that
    `999.1.1.1` is a bad address, not a name)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if (
        len(value) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError("must be an IP address or a host name")
    return value


def _url(value: str, schemes: Iterable[str], example: str, *, need_host: bool) -> SplitResult:
    """Split `value`; ValueError unless its scheme is one of `schemes` and its host and port are
    well formed. The message never repeats the URL (it may carry a password)."""
    allowed = tuple(schemes)
    if "://" not in value:
        raise ValueError(f"must be a URL like {example}")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises for a bad port
    except ValueError:
        raise ValueError(f"host or port malformed; must be a URL like {example}") from None
    if parts.scheme.lower() not in allowed:
        raise ValueError(f"scheme must be one of {', '.join(allowed)}: a URL like {example}")
    if host:
        _host(host)
    elif need_host:
        raise ValueError(f"host missing; must be a URL like {example}")
    return parts


def _postgres_url(value: str | None) -> str | None:
    if not value:
        return value
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    base = scheme.split("+", 1)[0]
    if base not in ("postgresql", "postgres"):
        raise ValueError("must be a PostgreSQL URL: postgresql+psycopg://user:pw@host:5432/db")
    if "," in value.split("://", 1)[1].split("/", 1)[0]:
        return value  # libpq's multi-host form; psycopg checks it
    _url(value, (scheme,), "postgresql+psycopg://user:pw@host:5432/db", need_host=False)
    return value


def _redis_url(value: str | None) -> str | None:
    if not value:
        return value
    example = "redis://host:6379/0 (or rediss://, unix://)"
    parts = _url(value, ("redis", "rediss", "unix"), example, need_host=False)
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path: unix:///run/redis.sock")
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"the path must be a database number: {example}")
    return value


def _http_url(value: str | None) -> str | None:
    if value:
        _url(value, ("http", "https"), "http://host:port", need_host=True)
    return value


def _ws_url(value: str | None) -> str | None:
    if value:
        _url(value, ("ws", "wss"), "ws://host:port", need_host=True)
    return value


PostgresUrl = Annotated[str | None, AfterValidator(_postgres_url)]
RedisUrl = Annotated[str | None, AfterValidator(_redis_url)]
HttpUrl = Annotated[str | None, AfterValidator(_http_url)]
WsUrl = Annotated[str | None, AfterValidator(_ws_url)]


class Settings(BaseSettings, MomentumFields):
    # allow_inf_nan=False: `1e400` parses to inf and `nan` compares false with every bound
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", case_sensitive=False, allow_inf_nan=False
    )

    # --- servers and identity (contract) ---
    database_url: PostgresUrl = None
    redis_url: RedisUrl = None
    fleet_prefix: str = Field("fleet", pattern=_ID, max_length=64)
    worker_id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=_ID, max_length=64)
    broker: Literal["paper", "kis"] = "paper"

    # --- paper broker (contract) ---
    paper_speed: float = Field(1.0, ge=1.0, le=100_000.0)
    paper_epoch: Annotated[
        datetime | None, BeforeValidator(_parse_epoch), AfterValidator(_calendar_instant)
    ] = None
    paper_seed: int = Field(0, ge=0, le=2**32 - 1)
    paper_symbols: int = Field(300, ge=10, le=5_000)
    paper_venue: HttpUrl = None  # an exchange's URL
    # the session to simulate; default: today (KST) or the next one
    paper_day: Annotated[date | None, AfterValidator(_calendar_day)] = None

    # --- exchange (`python -m worker exchange`): what it accepts; keys generated when unset ---
    exchange_app_key: str | None = Field(None, repr=False, min_length=1, max_length=512)
    exchange_app_secret: str | None = Field(None, repr=False, min_length=1, max_length=512)
    exchange_account: str = Field("12345678-01", pattern=r"^\d{8}-?\d{2}$")
    exchange_hts_id: str = Field("user01", min_length=1, max_length=16)
    exchange_cash: Decimal = Field(Decimal(100_000_000), ge=0, le=1_000 * MONEY_MAX)
    exchange_rate_limit: bool = True  # 0: no per-app-key limit (a paper venue for the fleet)
    exchange_listing_lag_s: float = Field(0.0, ge=0, le=3_600)
    exchange_ambiguous_rate: float = Field(0.0, ge=0, le=1)

    # --- embedded default ---
    embedded_workers: int = Field(4, ge=1, le=64)
    embedded_speed: float = Field(1_000.0, ge=1.0, le=100_000.0)

    # --- money and risk ---
    capital_limit: Decimal = Field(Decimal(10_000_000), gt=0, le=MONEY_MAX)
    daily_loss_limit: Decimal = Field(Decimal(2_000_000), gt=0, le=MONEY_MAX)
    commission_rate: Decimal = Field(Decimal("0.000140527"), ge=0, lt=Decimal("0.01"))
    liquidation_lead_min: int = Field(15, ge=1, le=120)
    thin_liquidation_lead_min: int = Field(25, ge=1, le=180)

    # --- coordination ---
    lock_ttl_ms: int = Field(10_000, ge=500, le=600_000)
    heartbeat_ms: int | None = Field(None, ge=50, le=600_000)
    worker_ttl_ms: int = Field(30_000, ge=1_000, le=3_600_000)
    events_maxlen: int = Field(100_000, ge=1_000, le=10_000_000)
    connect_attempts: int = Field(6, ge=1, le=100)
    wait_for_session: bool = False  # `run` stays up: sleeps between sessions (k8s Deployment)
    wait_for_schema: bool = False  # `run` waits (not ready) for a current schema instead of exit 1

    # --- pacing (clock seconds: simulated seconds under PAPER_SPEED > 1) ---
    scan_interval_s: float = Field(30.0, ge=0.1, le=3_600)
    hold_interval_s: float = Field(10.0, ge=0.1, le=3_600)
    # HOLD wakes on the trade that reaches a sell level (stop, trend break, take profit)
    # where the market data can tell (paper, the KIS gateway); else it polls every interval
    tick_stops: bool = True
    # a held symbol whose last minute's range is this many times its average minute range
    # is checked every VOL_SURGE_HOLD_S instead of HOLD_INTERVAL_S
    vol_surge_ratio: float = Field(2.5, ge=1, le=100)
    vol_surge_hold_s: float = Field(2.0, ge=0.1, le=3_600)
    order_poll_s: float = Field(2.0, ge=0.1, le=600)
    order_timeout_s: float = Field(60.0, ge=1, le=SESSION_S)
    # an unknown order outcome is not "not placed" before the broker had this long to list it
    listing_lag_s: float = Field(30.0, ge=0, le=3_600)
    # the account (cash, holdings) against the ledger: at the start and then this often
    reconcile_interval_s: float = Field(180.0, ge=1, le=3_600)

    # --- strategy: N_BARS here; the shipped strategy's parameters (SHORT_MA_BARS ...
    # TREND_MIN_HOLD_MIN) are `strategy.momentum.MomentumFields`, inherited ---
    n_bars: int = Field(60, ge=10, le=MAX_BARS)
    # as declared there, but read from the environment as comma-separated text, not JSON
    exclude_symbols: Annotated[
        tuple[str, ...],
        NoDecode,
        BeforeValidator(split_symbol_codes),
        AfterValidator(check_symbol_codes),
    ] = ()
    # the strategy (`package.module:Class`; default the shipped one, whose parameters are the
    # settings above) and a TOML file of its parameters (the environment wins over the file)
    strategy: str | None = Field(None, max_length=200)
    strategy_params: Path | None = None

    # --- KIS Open API (BROKER=kis) ---
    kis_app_key: str | None = Field(None, repr=False, max_length=512)
    kis_app_secret: str | None = Field(None, repr=False, max_length=512)
    kis_account: str | None = Field(None, pattern=r"^\d{8}-?\d{2}$")
    kis_domain: Literal["real", "mock"] = "mock"
    kis_base_url: HttpUrl = None  # default: KIS's URL per domain
    kis_ws_url: WsUrl = None  # default: KIS's URL per domain
    kis_hts_id: str | None = Field(None, max_length=16)  # fill notices over the WebSocket
    kis_custtype: Literal["P", "B"] = "P"
    kis_rate_per_s: float | None = Field(None, gt=0, le=1_000)  # default: 20 real, 2 mock
    # fixed universe (comma-separated 6-digit codes) instead of the volume ranking (real) or
    # the built-in list (mock): e.g. names an exchange lists; empty = the default
    kis_universe: Annotated[
        tuple[str, ...], NoDecode, BeforeValidator(split_symbol_codes), AfterValidator(_universe)
    ] = ()

    # --- KIS gateway (`python -m worker gateway`; BROKER=kis workers find it through Redis) ---
    gateway_host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"  # the relay's address
    gateway_port: int = Field(8443, ge=0, le=65_535)  # the relay's port (0: any free one)
    gateway_url: HttpUrl = None  # the relay's URL workers use; default http://HOST:PORT
    gateway_lease_ttl_ms: int = Field(3_000, ge=1_500, le=60_000)  # bounds the takeover

    # --- alerts to a person (off while ALERT_WEBHOOK_URL is unset; worker.alerts) ---
    alert_webhook_url: HttpUrl = None  # never echoed: Slack and Telegram URLs hold a token
    alert_kind: Literal["webhook", "slack", "telegram"] | None = None  # default: webhook
    alert_telegram_chat: str | None = Field(None, pattern=r"^(-?\d{1,20}|@[A-Za-z0-9_]{5,32})$")
    alert_dedup_s: float = Field(600.0, ge=1, le=86_400)  # identical alerts sent once per window
    alert_max_per_min: int = Field(20, ge=1, le=600)  # alerts the fleet sends per minute at most
    alert_timeout_s: float = Field(5.0, ge=0.5, le=60)  # one request to the endpoint
    alert_attempts: int = Field(3, ge=1, le=10)  # tries per alert (5xx, 429, timeouts, refusals)

    # --- operations: /healthz and /metrics over HTTP (0 = no server) ---
    health_port: int = Field(0, ge=0, le=65_535)
    health_host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"

    # --- logging ---
    log_json: bool = False
    log_level: Annotated[
        Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
    ] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if max(self.long_ma_bars, self.breakout_bars) + 1 > self.n_bars:
            raise ValueError("N_BARS must exceed LONG_MA_BARS and BREAKOUT_BARS")
        if self.heartbeat_ms is not None and self.heartbeat_ms >= self.lock_ttl_ms:
            raise ValueError("HEARTBEAT_MS must be smaller than LOCK_TTL_MS")
        if self.worker_ttl_ms <= self.heartbeat_s * 1000:
            raise ValueError("WORKER_TTL_MS must exceed the heartbeat period (HEARTBEAT_MS)")
        _check_alerts(self)
        if self.broker == "kis":
            missing = [
                # no secret: a worker reaches KIS through the gateway, which holds it
                n
                for n in ("kis_app_key", "kis_account")
                if not getattr(self, n)
            ]
            if missing:
                raise ValueError(f"{missing[0].upper()} is required with BROKER=kis")
        return self

    @property
    def heartbeat_s(self) -> float:
        return (self.heartbeat_ms or self.lock_ttl_ms // 3) / 1000

    @property
    def kis_on_exchange(self) -> bool:
        """BROKER=kis rehearsed on an exchange: KIS_BASE_URL set to a host that is not KIS's.
        Then the clock follows PAPER_SPEED / PAPER_EPOCH / PAPER_DAY as the exchange's does;
        against KIS itself the session is today's, in real time."""
        if not self.kis_base_url:
            return False
        host = (urlsplit(self.kis_base_url).hostname or "").lower()
        return not (host == "koreainvestment.com" or host.endswith(".koreainvestment.com"))

    @property
    def embedded(self) -> bool:
        """Neither server configured: `python -m worker` runs the embedded default."""
        return not self.database_url and not self.redis_url


#: the path of a Telegram bot's API URL: /bot<token>, optionally /sendMessage
_TELEGRAM_BOT_PATH = re.compile(r"/bot\d+:[A-Za-z0-9_-]+(/sendMessage)?/?")


def _check_alerts(s: Settings) -> None:
    """The ALERT_* settings fit together; the messages never repeat the URL (it holds a token)."""
    if not s.alert_webhook_url:
        for name in ("alert_kind", "alert_telegram_chat"):
            if getattr(s, name) is not None:
                raise ValueError(f"{name.upper()} needs ALERT_WEBHOOK_URL (alerts are off)")
        return
    if s.alert_kind == "telegram":
        if s.alert_telegram_chat is None:
            raise ValueError("ALERT_TELEGRAM_CHAT is required with ALERT_KIND=telegram")
        if not _TELEGRAM_BOT_PATH.fullmatch(urlsplit(s.alert_webhook_url).path or "/"):
            raise ValueError(
                "ALERT_WEBHOOK_URL: with ALERT_KIND=telegram it must be the bot's API URL, "
                "https://api.telegram.org/bot<token>"
            )
    elif s.alert_telegram_chat is not None:
        raise ValueError("ALERT_TELEGRAM_CHAT is only used with ALERT_KIND=telegram")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus overrides); one-line `ConfigError` on failure,
    also for a near miss of a setting's name among the environment's variables."""
    check_environment(os.environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except SettingsError as exc:  # a value the source could not even decode
        raise ConfigError(str(exc).splitlines()[0]) from None
    strategy_of(settings)  # STRATEGY, its parameters and STRATEGY_PARAMS: exit 2 up front
    return settings


def strategy_of(
    settings: Settings,
    spec: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    setting: str = "STRATEGY",
) -> Strategy[Any]:
    """The strategy `spec` (default `STRATEGY`) names, on its parameters from `STRATEGY_PARAMS`
    and the environment; a parameter whose variable is a setting given explicitly (from the
    environment or an override) takes the setting's value. One-line `ConfigError` on failure;
    `setting` is how the message names the spec (`--strategy` for a command's flag)."""
    from strategy import ParamError, load
    from strategy.loading import strategy_class

    spec = settings.strategy if spec is None else spec
    try:
        params_cls = strategy_class(spec, setting=setting).Params
        given = {
            field: getattr(settings, name)
            for field in params_cls.model_fields
            if (name := params_cls.env_name(field).lower()) in settings.model_fields_set
            and name in Settings.model_fields
        }
        strategy = load(spec, environ=os.environ if environ is None else environ,
                        toml=settings.strategy_params, overrides=given,
                        setting=setting)  # fmt: skip
    except ParamError as exc:
        raise ConfigError(str(exc)) from None
    if strategy.bars_needed > settings.n_bars:
        raise ConfigError(f"N_BARS: the strategy reads {strategy.bars_needed} bars a symbol, "
                          f"N_BARS is {settings.n_bars}")  # fmt: skip
    return strategy


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return msg
    name = loc[0].upper()
    given = err.get("input")
    # URLs may carry a password, keys and secrets are secrets: never echoed
    secret = name.endswith(("_URL", "_VENUE", "_KEY", "_SECRET", "_ACCOUNT"))
    if isinstance(given, str) and len(given) > 40:
        given = given[:37] + "..."
    shown = f" (got {given!r})" if isinstance(given, str | int | float) and not secret else ""
    return f"{name}: {msg}{shown}"


# --- near misses of a setting's name ----------------------------------------------------------

#: Variables of the platform, shells and tools: never taken for a typo of ours.
ALLOWED_NAMES = frozenset(
    {
        "PATH", "HOME", "PWD", "OLDPWD", "LANG", "LANGUAGE", "TERM", "HOSTNAME", "USER",
        "LOGNAME", "SHELL", "SHLVL", "TZ", "TMPDIR", "MAIL", "EDITOR", "PAGER", "DISPLAY",
        "COLUMNS", "LINES", "CI", "_",
    }
)  # fmt: skip
#: Prefixes of the same: Kubernetes' service links, Python, libpq, locale, XDG, tooling.
ALLOWED_PREFIXES = (
    "KUBERNETES_", "PYTHON", "PIP_", "UV_", "PG", "LC_", "XDG_", "DOCKER_", "GIT_", "SSH_",
    "VIRTUAL_ENV", "CONDA_", "PYENV", "PYTEST_", "HYPOTHESIS_", "GITHUB_", "RUNNER_",
)  # fmt: skip


def _max_distance(name: str) -> int:
    """Edits still taken for a typo of `name`: one for short names (BROKER/BROWSER are two
    apart), two from nine characters on (PAPER_SPEEED, CAPITL_LIMIT, DAILY_LOS_LIMT)."""
    return 1 if len(name) <= 8 else 2


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insert, delete, substitute, swap two neighbours),
    or `limit + 1` as soon as it is known to exceed `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], before[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        before, prev = prev, cur
    return prev[-1]


def near_miss(name: str, settings: Iterable[str] | None = None) -> str | None:
    """The setting that environment variable `name` probably meant, or None: it is not a
    setting, not a platform variable, and within `_max_distance` edits of a setting's name."""
    known = sorted(n.upper() for n in (Settings.model_fields if settings is None else settings))
    upper = name.upper()
    if upper in known or upper in ALLOWED_NAMES or upper.startswith(ALLOWED_PREFIXES):
        return None
    best: tuple[int, str] | None = None
    for setting in known:
        limit = _max_distance(setting)
        distance = edit_distance(upper, setting, limit)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, setting)
    return best[1] if best else None


def check_environment(environ: Mapping[str, str]) -> None:
    """ConfigError for the first (by name) variable that is a near miss of a setting."""
    for name in sorted(environ):
        meant = near_miss(name)
        if meant is not None:
            raise ConfigError(f"{name}: unknown setting; did you mean {meant}?")


# --- the start-up line -------------------------------------------------------------------------


def _origin(url: str) -> str:
    """scheme://host:port of `url`: never its user, password, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def mask_account(account: str | None) -> str:
    """`12345678-01` -> `****5678`: enough to tell accounts apart, never the whole number."""
    digits = (account or "").replace("-", "")[:8]
    return "****" + digits[-4:] if len(digits) >= 4 else "****"


def kis_config(settings: Settings, *, app_secret: str = "") -> KisConfig:
    """The `KisConfig` of `KIS_*`; the secret only for the gateway, which alone holds it."""
    from broker.kis import KisConfig

    try:
        return KisConfig(
            app_key=settings.kis_app_key or "",
            app_secret=app_secret,
            account=settings.kis_account or "",
            domain=settings.kis_domain,
            base_url=settings.kis_base_url,
            ws_url=settings.kis_ws_url,
            hts_id=settings.kis_hts_id,
            custtype=settings.kis_custtype,
            rate_per_s=settings.kis_rate_per_s,
            universe=settings.kis_universe or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def describe_venue(settings: Settings) -> str:
    """The start-up line: where this process trades and whether the money is real. Names the
    broker, the KIS domain and a masked account; never a key, a secret or a URL's credentials.

    `BROKER=kis domain=real account=****5678: REAL MONEY`,
    `BROKER=kis domain=mock account=****5678 rest=http://127.0.0.1:29443: mock trading`,
    `BROKER=paper venue=http://exchange:9443`, `BROKER=paper in-process`.
    """
    if settings.broker == "kis":
        line = (
            f"BROKER=kis domain={settings.kis_domain} account={mask_account(settings.kis_account)}"
        )
        if settings.kis_base_url:
            line += f" rest={_origin(settings.kis_base_url)}"
        return line + (": REAL MONEY" if settings.kis_domain == "real" else ": mock trading")
    if settings.paper_venue:
        return f"BROKER=paper venue={_origin(settings.paper_venue)}"
    return "BROKER=paper in-process"
