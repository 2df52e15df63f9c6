"""What a worker is built from: its ports (clock, market, broker, ledger, Redis coordination)
and its parameters. The process shell (`worker.app`) builds one per worker."""

from __future__ import annotations

from dataclasses import dataclass

from broker.port import Broker, MarketData
from coordination.fences import FenceSeeder
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from coordination.registry import WorkerRegistry
from ledger.repository import Ledger
from market.calendar import Session
from market.clock import Clock
from market.costs import CostModel
from market.types import Board, Tier
from trading.config import TradingConfig
from trading.live import FIXED_PARAMS, ParamSource
from trading.metrics import NULL_METRICS, WorkerMetrics


@dataclass(frozen=True)
class Deps:
    config: TradingConfig
    clock: Clock
    session: Session
    broker: Broker
    market: MarketData
    ledger: Ledger
    lock: RedisSymbolLock
    registry: WorkerRegistry
    notices: Notices
    costs: CostModel
    boards: dict[str, Board]
    tiers: dict[str, Tier]
    fences: FenceSeeder
    metrics: WorkerMetrics = NULL_METRICS
    #: the fleet's live parameters, asked at each step (`trading.live`)
    params: ParamSource = FIXED_PARAMS
