"""A trading day with a misbehaving broker: lost replies and refused submits, injected
repeatedly. Nothing is duplicated, nothing is lost, the ledger matches the broker exactly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date

import anyio
import psycopg
import pytest
from support import libpq

from broker.paper import PaperBroker
from trading.loop import Worker
from worker.app import Plan, epoch_soon, run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # processes or a whole simulated day


@pytest.mark.anyio
async def test_lost_replies_and_refusals_reconcile_without_duplicates(
    database_url: str, redis_url: str, prefix: str
) -> None:
    settings = load_settings(
        database_url=database_url, redis_url=redis_url, fleet_prefix=prefix, worker_id="flt",
        paper_seed=5, paper_symbols=300, paper_day=date(2026, 11, 24), lock_ttl_ms=3_000,
    )  # fmt: skip
    brokers: list[PaperBroker] = []

    def started(fleet: Sequence[Worker], _plan: Plan, _ledger: object) -> None:
        broker = fleet[0].d.broker
        assert isinstance(broker, PaperBroker)
        brokers.append(broker)

    async def chaos() -> None:
        while not brokers:
            await anyio.sleep(0.01)
        while True:  # every ~20 simulated minutes: one lost reply, one refused submit
            brokers[0].inject_faults(outcome_unknown=1, unavailable=1)
            await anyio.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(chaos)
        await run_fleet(settings, database_url=database_url, redis_url=redis_url, workers=2,
                        speed=2_500, epoch=epoch_soon(0.3), on_started=started,
                        handle_signals=False)  # fmt: skip
        tg.cancel_scope.cancel()

    broker = brokers[0]
    placed = broker._orders  # every order the broker ever accepted
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT client_order_id, broker_order_id, status, status_reason, filled_qty,"
            " filled_amount FROM orders"
        ).fetchall()
        linked = Counter(r[1] for r in rows if r[1] is not None)
        # no broker order is claimed by two ledger orders (a lost reply is never resent)
        assert linked
        assert max(linked.values()) == 1
        # every order the broker accepted is in the ledger, with the broker's exact fills
        assert set(placed) == set(linked)
        for _cid, boid, status, _reason, filled_qty, filled_amount in rows:
            if boid is None:
                assert status in ("REJECTED", "WITHDRAWN")
                continue
            truth = placed[boid].status()
            assert (filled_qty, filled_amount) == (truth.filled_qty, truth.filled_amount)
            assert truth.done
        statuses = Counter(r[2] for r in rows)
        reasons = Counter(r[3] for r in rows if r[3])
        assert not {"NEW", "SUBMITTING", "SENT", "PARTIALLY_FILLED", "UNKNOWN"} & set(statuses)
        # both faults happened, were recorded, and every lost reply was found at the broker
        assert reasons["not placed: injected fault: broker unavailable, nothing placed"] >= 3
        lost = [r for r in rows if r[3] == "injected fault: order placed, reply lost"]
        assert len(lost) >= 3
        assert all(r[1] is not None for r in lost), "a lost reply was not reconciled"
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)
        pnl, from_fills = conn.execute(
            """SELECT (SELECT pnl FROM daily_summaries),
                      (SELECT sum(CASE WHEN side='SELL' THEN amount ELSE -amount END)
                              - sum(fee) - sum(tax) FROM fills)"""
        ).fetchone()
        assert pnl == from_fills
