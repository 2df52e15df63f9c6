"""Reconcile a dead worker's unfinished orders with the broker before acting on its position.

An order row without a broker id may or may not have reached the broker (the worker died
between the intent row and the reply): it is looked up, never resent. An order still working
is cancelled, and whatever filled is applied to the ledger, so the adopter sells exactly what
the broker says is held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.errors import BrokerError, UnknownOrder
from broker.port import Broker, BrokerOrderId, ClientOrderId, OrderRequest
from ledger.orders import OrderState
from ledger.repository import Ledger

if TYPE_CHECKING:
    from trading.orders import OrderExecutor


async def reconcile_unfinished(
    executor: OrderExecutor,
    ledger: Ledger,
    broker: Broker,
    worker_id: str,
    symbol: str,
    log: Any,
) -> None:
    for order in await ledger.unfinished_orders(worker_id):
        if order.symbol != symbol:
            continue
        cid = ClientOrderId(order.client_order_id)
        broker_id = BrokerOrderId(order.broker_order_id) if order.broker_order_id else None
        if broker_id is None:
            request = OrderRequest(
                order.symbol, order.side, order.qty, order.order_type, order.price
            )
            ack = await executor.reconcile(cid, request, order.created_at)
            if ack is None:
                continue
            broker_id = ack.broker_order_id
            await ledger.mark_order_sent(cid, broker_id, executor.clock.now())
        try:
            status = await broker.order_status(broker_id)
            if not status.done:
                status = await broker.cancel_order(broker_id)
        except UnknownOrder:
            log.error("order {} ({}) unknown to the broker; marked expired", cid, broker_id)
            await ledger.mark_order(
                cid, OrderState.EXPIRED, executor.clock.now(), "unknown to the broker at adoption"
            )
            continue
        except BrokerError as exc:
            log.error("could not reconcile order {}: {}", cid, exc)
            continue
        await executor.apply(cid, status)
        log.info("reconciled order {}: filled {}/{}", cid, status.filled_qty, status.qty)
