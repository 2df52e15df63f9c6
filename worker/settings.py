"""Settings, built once from the environment in `__main__` and passed down, frozen.

Every field is an environment variable of the same name in upper case (`CAPITAL_LIMIT`, ...).
A bad value raises `ConfigError` whose message is one line naming the variable; `__main__`
prints it and exits 2. The README's configuration table lists every field and its default.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line naming it."""


def _parse_epoch(value: Any) -> Any:
    """PAPER_EPOCH: Unix seconds or ISO 8601 (a naive ISO time is read as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _split_symbols(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    # --- servers and identity (contract) ---
    database_url: str | None = None
    redis_url: str | None = None
    fleet_prefix: str = Field("fleet", pattern=r"^[A-Za-z0-9_.\-]+$")
    worker_id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=r"^[A-Za-z0-9_.\-]+$")
    broker: Literal["paper", "kis"] = "paper"

    # --- paper broker (contract) ---
    paper_speed: float = Field(1.0, ge=1.0, le=100_000.0)
    paper_epoch: Annotated[datetime | None, BeforeValidator(_parse_epoch)] = None
    paper_seed: int = Field(0, ge=0)
    paper_symbols: int = Field(300, ge=10, le=5_000)
    paper_venue: str | None = Field(None, pattern=r"^https?://[^\s/]+")  # an exchange's URL
    paper_day: date | None = None  # the session to simulate; default: today (KST) or the next one

    # --- exchange (`python -m worker exchange`): what it accepts; keys generated when unset ---
    exchange_app_key: str | None = Field(None, repr=False, min_length=1)
    exchange_app_secret: str | None = Field(None, repr=False, min_length=1)
    exchange_account: str = Field("12345678-01", pattern=r"^\d{8}-?\d{2}$")
    exchange_hts_id: str = Field("user01", min_length=1, max_length=16)
    exchange_cash: Decimal = Field(Decimal(100_000_000), ge=0)
    exchange_rate_limit: bool = True  # 0: no per-app-key limit (a paper venue for the fleet)
    exchange_listing_lag_s: float = Field(0.0, ge=0, le=3_600)
    exchange_ambiguous_rate: float = Field(0.0, ge=0, le=1)

    # --- embedded default ---
    embedded_workers: int = Field(4, ge=1, le=64)
    embedded_speed: float = Field(1_000.0, ge=1.0, le=100_000.0)

    # --- money and risk ---
    capital_limit: Decimal = Field(Decimal(10_000_000), gt=0)
    daily_loss_limit: Decimal = Field(Decimal(2_000_000), gt=0)
    commission_rate: Decimal = Field(Decimal("0.000140527"), ge=0, lt=Decimal("0.01"))
    liquidation_lead_min: int = Field(15, ge=1, le=120)
    thin_liquidation_lead_min: int = Field(25, ge=1, le=180)

    # --- coordination ---
    lock_ttl_ms: int = Field(10_000, ge=500, le=600_000)
    heartbeat_ms: int | None = Field(None, ge=50)
    worker_ttl_ms: int = Field(30_000, ge=1_000)
    events_maxlen: int = Field(100_000, ge=1_000)
    connect_attempts: int = Field(6, ge=1, le=100)
    wait_for_session: bool = False  # `run` stays up: sleeps between sessions (k8s Deployment)

    # --- pacing (clock seconds: simulated seconds under PAPER_SPEED > 1) ---
    scan_interval_s: float = Field(30.0, gt=0)
    hold_interval_s: float = Field(10.0, gt=0)
    order_poll_s: float = Field(2.0, gt=0)
    order_timeout_s: float = Field(60.0, gt=0)
    # an unknown order outcome is not "not placed" before the broker had this long to list it
    listing_lag_s: float = Field(30.0, ge=0, le=3_600)

    # --- strategy ---
    n_bars: int = Field(60, ge=10, le=390)
    short_ma_bars: int = Field(5, ge=2)
    long_ma_bars: int = Field(20, ge=3)
    breakout_bars: int = Field(30, ge=2)
    surge_bars: int = Field(5, ge=1)
    min_volume: int = Field(20_000, ge=0)
    min_traded_value: Decimal = Field(Decimal(300_000_000), ge=0)
    max_spread_ticks: int = Field(3, ge=1)
    min_price: Decimal = Field(Decimal(1_000), gt=0)
    max_price: Decimal = Field(Decimal(1_000_000), gt=0)
    exclude_symbols: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_symbols)] = ()
    min_score: float = 0.5
    max_candidates: int = Field(20, ge=1, le=500)
    stop_loss_pct: Decimal = Field(Decimal("1.5"), gt=0, lt=50)
    take_profit_pct: Decimal = Field(Decimal("3.0"), gt=0, lt=100)
    max_hold_min: int = Field(90, ge=1)
    trend_break_pct: Decimal = Field(Decimal("0.5"), ge=0, lt=50)
    trend_min_hold_min: int = Field(5, ge=0)

    # --- KIS Open API (BROKER=kis) ---
    kis_app_key: str | None = Field(None, repr=False)
    kis_app_secret: str | None = Field(None, repr=False)
    kis_account: str | None = None
    kis_domain: Literal["real", "mock"] = "mock"
    kis_base_url: str | None = Field(None, pattern=r"^https?://")  # default: KIS's URL per domain
    kis_ws_url: str | None = Field(None, pattern=r"^wss?://")  # default: KIS's URL per domain
    kis_hts_id: str | None = None  # fill notices over the WebSocket only when set
    kis_custtype: Literal["P", "B"] = "P"
    kis_rate_per_s: float | None = Field(None, gt=0, le=1_000)  # default: 20 real, 2 mock

    # --- operations: /healthz and /metrics over HTTP (0 = no server) ---
    health_port: int = Field(0, ge=0, le=65_535)
    health_host: str = Field("127.0.0.1", min_length=1)

    # --- logging ---
    log_json: bool = False
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a PostgreSQL URL: postgresql+psycopg://user:pw@host:5432/db")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        if value.split("://", 1)[0] not in ("redis", "rediss", "unix") or "://" not in value:
            raise ValueError("must be a Redis URL: redis://host:6379/0 (or rediss://, unix://)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.short_ma_bars >= self.long_ma_bars:
            raise ValueError("SHORT_MA_BARS must be smaller than LONG_MA_BARS")
        if max(self.long_ma_bars, self.breakout_bars) + 1 > self.n_bars:
            raise ValueError("N_BARS must exceed LONG_MA_BARS and BREAKOUT_BARS")
        if self.heartbeat_ms is not None and self.heartbeat_ms >= self.lock_ttl_ms:
            raise ValueError("HEARTBEAT_MS must be smaller than LOCK_TTL_MS")
        if self.broker == "kis":
            missing = [
                n for n in ("kis_app_key", "kis_app_secret", "kis_account") if not getattr(self, n)
            ]
            if missing:
                raise ValueError(f"{missing[0].upper()} is required with BROKER=kis")
        return self

    @property
    def heartbeat_s(self) -> float:
        return (self.heartbeat_ms or self.lock_ttl_ms // 3) / 1000

    @property
    def embedded(self) -> bool:
        """Neither server configured: `python -m worker` runs the embedded default."""
        return not self.database_url and not self.redis_url


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus overrides); one-line `ConfigError` on failure."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return msg
    name = loc[0].upper()
    given = err.get("input")
    # URLs may carry a password, keys and secrets are secrets: never echoed
    secret = name.endswith(("_URL", "_KEY", "_SECRET", "_ACCOUNT"))
    shown = f" (got {given!r})" if isinstance(given, str | int | float) and not secret else ""
    return f"{name}: {msg}{shown}"
