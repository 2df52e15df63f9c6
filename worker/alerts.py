"""Alerts to a person: the fleet's one sender, from the notice stream to the configured endpoint.

    notices on {prefix}:events  --(consumer group "alerts", one consumer: the lease holder)-->
    alert_of(notice)  -->  RedisAlertGate.admit (dedup window, fleet rate limit)  -->
    deliver(notifier, alert, ALERT_ATTEMPTS)  -->  ack

Every process of the fleet stands by for the lease ``{prefix}:singleton:alerts``
(`coordination.singleton`); its holder alone reads the stream and sends, so a fleet of any
size sends each alert once, and a standby takes over within one lease TTL when the holder dies
(what it left pending is claimed and, thanks to the dedup window, not sent twice).

Which notices become alerts (`alert_of`): ``risk.halt``, ``order.failed``, ``lock.lost`` (a
lease lost while held), ``worker.state`` on ``adopted`` (an orphan adopted), ``lock.expired``
(the reaper, or the next acquirer, found a worker that stopped renewing: crashed or stalled),
``worker.crashed``, ``server.unreachable``, ``account.drift`` and ``position.left_open``. Each
says what happened, where (worker, symbol, order) and what to do.

A failing endpoint (hangs, 5xx, refused) never slows trading: the sender is a task of its own
beside the workers, every request is bounded (ALERT_TIMEOUT_S) and retried a bounded number of
times (ALERT_ATTEMPTS), then logged at ERROR and counted (``tradefleet_alerts_total{outcome=
"failed"}``) and the sender moves on. The notices that report a crash are published by
`FleetAlerts.watch_crashes`; when Redis itself is the server away, the process sends that one alert
directly (nothing can deduplicate it then).

The adapters are in `worker.notifier`; the Redis side (dedup, rate limit) in
`coordination.alerts`. This module lives in the process shell because it joins the two with
the ledger (positions left open at the close) and the workers (crashes).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import redis.asyncio as aioredis
from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from broker.errors import BrokerUnavailable
from coordination.alerts import RedisAlertGate, Verdict
from coordination.errors import BackendUnavailable, CoordinationError
from coordination.keys import Keyspace
from coordination.notices import Notice, Notices, NoticeType
from coordination.singleton import RedisSingleton
from ledger.errors import LedgerError, LedgerUnavailable
from market.calendar import Session
from market.clock import Clock
from worker.notifier import Alert, AlertFailed, Notifier, deliver, notifier_from
from worker.settings import ConfigError, Settings

if TYPE_CHECKING:
    from ledger.repository import Ledger
    from trading.loop import Worker

#: the consumer group of the sender on the notice stream
GROUP = "alerts"
#: the singleton lease whose holder sends (`{prefix}:singleton:alerts`)
LEASE_NAME = "alerts"


# --- notices -> alerts ---------------------------------------------------------------------


def _s(data: Mapping[str, Any], key: str, default: str = "?") -> str:
    value = data.get(key)
    return default if value is None or value == "" else str(value)


def _risk_halt(n: Notice, fleet: str) -> Alert:
    return Alert(
        n.type, "Daily loss limit reached: no new buys for the rest of the day",
        "Sells and the forced liquidation go on. Review the day's trades ('python -m worker "
        "summary') and the strategy before the next session; buying resumes then.",
        n.ts, fleet, n.worker_id, detail=_s(n.data, "why", ""),
    )  # fmt: skip


def _order_failed(n: Notice, fleet: str) -> Alert:
    d = n.data
    side = _s(d, "side")
    detail = (f"{side} {_s(d, 'order_type', '')} x{_s(d, 'qty')} @ {_s(d, 'price', 'market')}: "
              f"{_s(d, 'status_reason', 'rejected')}")  # fmt: skip
    if side == "SELL":
        action = ("The position is still held: the worker keeps selling it (more urgently) and "
                  "forced liquidation sells it by the close. If this repeats, check the broker "
                  "or KIS gateway and the account's holdings.")  # fmt: skip
    else:
        action = ("Nothing was bought; the worker scans on. If this repeats, check the broker "
                  "or KIS gateway and the account's cash.")  # fmt: skip
    return Alert(n.type, f"{side} order on {n.symbol} failed", action, n.ts, fleet, n.worker_id,
                 n.symbol, _s(d, "client_order_id", "") or None, detail)  # fmt: skip


def _lock_lost(n: Notice, fleet: str) -> Alert:
    return Alert(
        n.type, f"Lease on {n.symbol} lost while held (fence {_s(n.data, 'fence')})",
        "The worker stopped acting on the symbol; a live worker adopts any position and orders "
        "on it within one lock TTL ('python -m worker locks'). Find out why the lease was not "
        "renewed: Redis latency, a paused process, the network.",
        n.ts, fleet, n.worker_id, n.symbol, detail=_s(n.data, "reason", ""),
    )  # fmt: skip


def _adopted(n: Notice, fleet: str) -> Alert | None:
    if n.data.get("event") != "adopted":
        return None
    return Alert(
        n.type, f"Orphaned position on {n.symbol} adopted by worker {n.worker_id}",
        "The adopter manages it to its exit. If its previous owner did not stop on purpose "
        "(SIGTERM), find out why it stopped ('python -m worker workers', its log).",
        n.ts, fleet, n.worker_id, n.symbol,
    )  # fmt: skip


def _lock_expired(n: Notice, fleet: str) -> Alert:
    seen = "reaped" if n.data.get("reaped") else "taken over by the next owner"
    return Alert(
        n.type,
        f"Worker {n.worker_id} stopped renewing its lease on {n.symbol}: crashed or stalled",
        "Check the worker's process or pod (crash, OOM kill, pause) and its last log lines; a "
        "live worker adopts its position and orders ('python -m worker workers').",
        n.ts, fleet, n.worker_id, n.symbol, detail=f"fence {_s(n.data, 'fence')} expired, {seen}",
    )  # fmt: skip


def _worker_crashed(n: Notice, fleet: str) -> Alert:
    return Alert(
        n.type, f"Worker {n.worker_id} stopped on an error",
        "Read the worker's log for the traceback and restart it; live workers of the fleet adopt "
        "its positions.",
        n.ts, fleet, n.worker_id, detail=_s(n.data, "error", ""),
    )  # fmt: skip


def _server_unreachable(n: Notice, fleet: str) -> Alert:
    server = _s(n.data, "server", "a server")
    return Alert(
        n.type, f"{server} unreachable past the retry budget: worker {n.worker_id} stopped",
        f"Restore {server}, then restart the worker (it exits 1; Kubernetes restarts it). "
        "Positions it held are adopted by live workers once they can reach it too.",
        n.ts, fleet, n.worker_id, detail=_s(n.data, "error", ""),
    )  # fmt: skip


def _account_drift(n: Notice, fleet: str) -> Alert:
    d = n.data
    where = n.symbol or "cash"
    figures = (f"broker cash {_s(d, 'broker_cash')}, expected {_s(d, 'expected_cash')}"
               if not n.symbol else
               f"broker qty {_s(d, 'broker_qty')}, ledger qty {_s(d, 'ledger_qty')}")  # fmt: skip
    blocked = f"No worker buys {n.symbol} until" if n.symbol else "Buying goes on; check before"
    return Alert(
        n.type, f"Account drift on {where}: the broker's account and the ledger disagree",
        f"{blocked} a later reconciliation finds it consistent. Compare the account with the "
        f"ledger (account_drifts record {_s(d, 'drift_id')}) and correct the cause.",
        n.ts, fleet, n.worker_id, n.symbol,
        detail=f"{_s(d, 'kind')}: {_s(d, 'why', '')} ({figures})",
    )  # fmt: skip


def _left_open(n: Notice, fleet: str) -> Alert:
    d = n.data
    return Alert(
        n.type, f"Position on {n.symbol} still open at the close (x{_s(d, 'qty')})",
        "Forced liquidation did not make it flat: sell it at the broker (or in the next "
        "session's opening) and read the owner's log for why its sells failed.",
        n.ts, fleet, n.worker_id, n.symbol,
        detail=f"x{_s(d, 'qty')} at average {_s(d, 'avg_price')} won, {_s(d, 'status')}, "
               f"session of {_s(d, 'day')}",
    )  # fmt: skip


_ALERTS: dict[str, Callable[[Notice, str], Alert | None]] = {
    NoticeType.RISK_HALT: _risk_halt,
    NoticeType.ORDER_FAILED: _order_failed,
    NoticeType.LOCK_LOST: _lock_lost,
    NoticeType.WORKER_STATE: _adopted,
    NoticeType.LOCK_EXPIRED: _lock_expired,
    NoticeType.WORKER_CRASHED: _worker_crashed,
    NoticeType.SERVER_UNREACHABLE: _server_unreachable,
    NoticeType.ACCOUNT_DRIFT: _account_drift,
    NoticeType.POSITION_LEFT_OPEN: _left_open,
}


def alert_of(notice: Notice, fleet: str) -> Alert | None:
    """The alert a person gets for `notice`, or None when it is no alert."""
    make = _ALERTS.get(str(notice.type))
    return None if make is None else make(notice, fleet)


def probe_alert(fleet: str, sender: str) -> Alert:
    return Alert("alert.test", "Test alert: alerts from this fleet reach you",
                 "Nothing to do.", datetime.now(UTC), fleet, sender)  # fmt: skip


# --- metrics -------------------------------------------------------------------------------


class AlertMetrics:
    """``tradefleet_alerts_total{outcome}``: sent, duplicate, rate_limited, failed."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, AlertMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.total = Counter("tradefleet_alerts", "Alerts by outcome", ["outcome"],
                             registry=registry)  # fmt: skip

    @classmethod
    def of(cls, registry: CollectorRegistry) -> AlertMetrics:
        """The alert metrics of `registry` (one set per registry, however many fleets)."""
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found

    def count(self, outcome: str) -> None:
        self.total.labels(outcome).inc()

    def value(self, outcome: str) -> float:
        return float(self.total.labels(outcome)._value.get())


# --- the sender ----------------------------------------------------------------------------


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class AlertSender:
    """The lease holder's job: read the stream in group `GROUP`, admit, send, acknowledge."""

    def __init__(
        self,
        notices: Notices,
        gate: RedisAlertGate,
        notifier: Notifier,
        consumer: str,
        *,
        fleet: str,
        attempts: int,
        metrics: AlertMetrics,
        backoff_s: float = 0.5,
        block_ms: int = 500,
    ) -> None:
        self.notices = notices
        self.gate = gate
        self.notifier = notifier
        self.consumer = consumer
        self.fleet = fleet
        self.attempts = attempts
        self.metrics = metrics
        self.backoff_s = backoff_s
        self.block_ms = block_ms
        self.active = False
        #: id of the last notice handled (sent, dropped, or failed), "0-0" before any
        self.handled_upto = "0-0"
        #: set once the group exists and this sender reads it
        self.reading = anyio.Event()
        self._progress = anyio.Event()

    async def run(self) -> None:
        """Send until cancelled; Redis away only pauses it (its notices wait in the group)."""
        self.active = True
        try:
            delay, ready = 0.1, False
            while True:
                try:
                    if not ready:
                        # a new group starts at the end: history is no news
                        await self.notices.ensure_group(GROUP, start_id="$")
                        # what a previous holder (or this one, before a Redis error) left
                        # pending: claimed now; the dedup window keeps it from going out twice
                        await self._handle_all(
                            await self.notices.autoclaim(GROUP, self.consumer, 0, count=100)
                        )
                        ready = True
                        self.reading.set()
                    batch = await self.notices.consume(GROUP, self.consumer, count=20,
                                                       block_ms=self.block_ms)  # fmt: skip
                    await self._handle_all(batch)
                    delay = 0.1
                except CoordinationError as exc:
                    logger.warning("alerts: Redis unavailable, retrying in {:.1f} s: {}", delay,
                                   exc)  # fmt: skip
                    ready = False
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self.active = False

    async def _handle_all(self, notices: list[Notice]) -> None:
        for notice in notices:
            await self.handle(notice)
            await self.notices.ack(GROUP, [notice.id])
            if _id_key(notice.id) > _id_key(self.handled_upto):
                self.handled_upto = notice.id
            self._progress.set()
            self._progress = anyio.Event()

    async def handle(self, notice: Notice) -> str | None:
        """Admit and send the alert of `notice`; its outcome, or None when it is no alert.
        Raises `CoordinationError` when Redis cannot admit it (left pending, claimed again)."""
        alert = alert_of(notice, self.fleet)
        if alert is None:
            return None
        admission = await self.gate.admit(alert.identity())
        if admission.verdict is Verdict.DUPLICATE:
            logger.debug("alert {} on {} is a duplicate: dropped", alert.kind, notice.id)
            self.metrics.count("duplicate")
            return "duplicate"
        if admission.verdict is Verdict.LIMITED:
            logger.warning("alert {} ({}) dropped: the fleet's alert rate limit is reached",
                           alert.kind, alert.where())  # fmt: skip
            self.metrics.count("rate_limited")
            return "rate_limited"
        if admission.suppressed:
            alert = alert.with_detail(
                f"{admission.suppressed} earlier alert(s) dropped by the rate limit"
            )
        return await send_logged(self.notifier, alert, self.attempts, self.metrics,
                                 backoff_s=self.backoff_s)  # fmt: skip

    async def settle(self, upto: str, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until the notice `upto` is handled, when this process is
        the sender. True when it was."""
        with anyio.move_on_after(timeout_s):
            while self.active and _id_key(self.handled_upto) < _id_key(upto):
                await self._progress.wait()
        return _id_key(self.handled_upto) >= _id_key(upto)


async def send_logged(
    notifier: Notifier, alert: Alert, attempts: int, metrics: AlertMetrics | None,
    *, backoff_s: float = 0.5,
) -> str:  # fmt: skip
    """`deliver` with the outcome logged and counted: "sent" or "failed" (never raises
    `AlertFailed`)."""
    try:
        tries = await deliver(notifier, alert, attempts, backoff_s=backoff_s)
    except AlertFailed as exc:
        logger.error("alert {} ({}) not delivered to the {} endpoint: {}", alert.kind,
                     alert.where(), notifier.kind, exc)  # fmt: skip
        if metrics is not None:
            metrics.count("failed")
        return "failed"
    logger.info("alert {} ({}) sent to the {} endpoint{}", alert.kind, alert.where(),
                notifier.kind, f" after {tries} attempts" if tries > 1 else "")  # fmt: skip
    if metrics is not None:
        metrics.count("sent")
    return "sent"


# --- this process's part -------------------------------------------------------------------


def build_notifier(settings: Settings) -> Notifier | None:
    """The configured endpoint's adapter, or None when alerts are off."""
    if not settings.alert_webhook_url:
        return None
    return notifier_from(
        settings.alert_webhook_url,
        settings.alert_kind,
        settings.alert_telegram_chat,
        timeout_s=settings.alert_timeout_s,
    )


def _server_of(cause: BaseException) -> str | None:
    if isinstance(cause, BrokerUnavailable):
        return "the broker"
    if isinstance(cause, LedgerUnavailable):
        return "Postgres"
    if isinstance(cause, BackendUnavailable):
        return "Redis"
    return None


@dataclass
class FleetAlerts:
    """One process's part in the fleet's alerts: it stands by for the sender's lease (and sends
    while it holds it), publishes the notices of its workers' crashes and, at the close, of
    positions left open."""

    settings: Settings
    notices: Notices
    lease: RedisSingleton
    sender: AlertSender | None
    notifier: Notifier | None
    metrics: AlertMetrics | None
    last_published: str = "0-0"
    _reported: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: aioredis.Redis,
        keys: Keyspace,
        notices: Notices,
        registry: CollectorRegistry | None,
    ) -> FleetAlerts:
        lease = RedisSingleton(redis, keys, LEASE_NAME, settings.worker_id,
                               ttl_ms=settings.lock_ttl_ms)  # fmt: skip
        notifier = build_notifier(settings)
        if notifier is None:
            return cls(settings, notices, lease, None, None, None)
        metrics = AlertMetrics.of(registry) if registry is not None else AlertMetrics(None)
        gate = RedisAlertGate(redis, keys, dedup_ms=int(settings.alert_dedup_s * 1000),
                              limit=settings.alert_max_per_min)  # fmt: skip
        sender = AlertSender(notices, gate, notifier, settings.worker_id,
                             fleet=settings.fleet_prefix, attempts=settings.alert_attempts,
                             metrics=metrics)  # fmt: skip
        return cls(settings, notices, lease, sender, notifier, metrics)

    async def run(self) -> None:
        """Stand by for the sender's lease and send while holding it, until cancelled. Returns
        at once when alerts are off."""
        if self.sender is None or self.notifier is None:
            return
        try:
            await self.lease.exclusive(self.sender.run)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.notifier.aclose()

    async def watch_crashes(self, fleet: Sequence[Worker], every_s: float = 0.5) -> None:
        """Announce each worker of `fleet` that stopped on an error (`Worker.crashed`), once,
        until cancelled; `close_day` announces those that stopped after the last look."""
        while True:
            await self._report_crashed(fleet)
            await anyio.sleep(every_s)

    async def _report_crashed(self, fleet: Sequence[Worker]) -> None:
        for w in fleet:
            if w.crashed is not None and w.id not in self._reported:
                self._reported.add(w.id)
                await self.report_crash(w.id, w.crashed)

    async def report_crash(self, worker_id: str, cause: BaseException) -> None:
        server = _server_of(cause)
        error = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        kind = NoticeType.WORKER_CRASHED if server is None else NoticeType.SERVER_UNREACHABLE
        data = {"error": error[:500], **({"server": server} if server else {})}
        with anyio.CancelScope(shield=True):
            try:
                self._published(await self.notices.publish(kind, worker_id, None, data))
                return
            except CoordinationError as exc:
                logger.error("{} notice of worker {} not published: {}", kind, worker_id, exc)
            if self.notifier is not None:  # Redis away: nobody can deduplicate; sent from here
                notice = Notice("0-0", kind, worker_id, None, datetime.now(UTC), data)
                alert = alert_of(notice, self.settings.fleet_prefix)
                assert alert is not None
                with anyio.move_on_after(self._delivery_bound_s()):
                    await send_logged(self.notifier, alert, self.settings.alert_attempts,
                                      self.metrics)  # fmt: skip

    async def close_day(
        self, ledger: Ledger, session: Session, clock: Clock, fleet: Sequence[Worker] = ()
    ) -> None:
        """When the fleet's workers are done: announce the crashes not announced yet and, at
        the close, every position still open (`position.left_open`, under its owner's id, so
        every process's report is one alert); then give the sender, if it is this process, a
        bounded time to deliver them before the process ends."""
        await self._report_crashed(fleet)
        if clock.now() >= session.close:
            try:
                positions = [p for p in await ledger.open_positions() if p.qty > 0]
            except LedgerError as exc:
                logger.error("positions left open at the close not checked: {}", exc)
                positions = []
            for p in positions:
                logger.error("position {} x{} of {} still open at the close", p.symbol, p.qty,
                             p.worker_id)  # fmt: skip
                data = {
                    "qty": p.qty,
                    "avg_price": p.avg_price,
                    "status": p.status,
                    "day": session.day.isoformat(),
                    "seen_by": self.settings.worker_id,
                }
                try:
                    self._published(await self.notices.publish(
                        NoticeType.POSITION_LEFT_OPEN, p.worker_id, p.symbol, data))  # fmt: skip
                except CoordinationError as exc:
                    logger.error("position.left_open of {} not published: {}", p.symbol, exc)
        if self.sender is not None and self.sender.active and self.last_published != "0-0":
            await self.sender.settle(self.last_published, min(self._delivery_bound_s(), 15.0))

    def _published(self, entry_id: str) -> None:
        if _id_key(entry_id) > _id_key(self.last_published):
            self.last_published = entry_id

    def _delivery_bound_s(self) -> float:
        """The longest one alert's delivery can take (`deliver` with its backoff)."""
        s = self.settings
        return float(s.alert_attempts * (2 * s.alert_timeout_s + 0.5 * 2**s.alert_attempts))


# --- `python -m worker alert --test` -------------------------------------------------------


def send_test(settings: Settings) -> int:
    """Send one test alert straight to the endpoint (no Redis, no dedup): 0 when it was
    accepted; raises `AlertFailed` (the CLI's one line, exit 1) when not."""
    if not settings.alert_webhook_url:
        raise ConfigError("ALERT_WEBHOOK_URL: required for 'alert' (alerts are off)")
    notifier = build_notifier(settings)
    assert notifier is not None
    alert = probe_alert(settings.fleet_prefix, settings.worker_id)

    async def main() -> int:
        try:
            return await deliver(notifier, alert, settings.alert_attempts)
        finally:
            await notifier.aclose()

    tries = anyio.run(main)
    print(f"test alert accepted by the {notifier.kind} endpoint"
          f"{f' after {tries} attempts' if tries > 1 else ''}")  # fmt: skip
    return 0


__all__ = ["GROUP", "LEASE_NAME", "AlertMetrics", "AlertSender", "FleetAlerts", "alert_of",
           "send_test"]  # fmt: skip
