"""The account as KIS reports it: `read_account` behind `KisBroker.account`.

* Holdings and cash: GET ``trading/inquire-balance`` (TTTC8434R / VTTC8434R), every page: while
  the ``tr_cont`` response header says F or M, the next page is asked with ``tr_cont: N`` and
  ``CTX_AREA_FK100`` / ``CTX_AREA_NK100`` sent back byte for byte. ``output1`` rows carry
  ``pdno``, ``hldg_qty`` (held now), ``pchs_avg_pric`` and ``ord_psbl_qty``; rows of symbols
  sold out today come with ``hldg_qty`` 0 and are left out. ``output2`` carries the deposit:
  ``prvs_rcdl_excc_amt`` (D+2, after today's executions settle) is taken as the cash, else
  ``dnca_tot_amt``.
* Buying power: GET ``trading/inquire-psbl-order`` (TTTC8908R / VTTC8908R) for one symbol at
  a market price (``ORD_DVSN`` 01): ``ord_psbl_cash``. KIS wants a symbol; the cash does not
  depend on it.

Every number is parsed as an exact `Decimal` from KIS's strings.
Assumptions, not yet confirmed against a live account: ``prvs_rcdl_excc_amt`` moves with each
execution of the day (fees and taxes included); ``hldg_qty`` includes today's executions.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from broker.errors import BrokerUnavailable
from broker.kis import wire
from broker.kis.client import KisClient, TrId
from market.account import AccountSnapshot, Holding
from market.clock import Clock

BALANCE = "/uapi/domestic-stock/v1/trading/inquire-balance"
PSBL_ORDER = "/uapi/domestic-stock/v1/trading/inquire-psbl-order"
TR_BALANCE = TrId("TTTC8434R", "VTTC8434R")
TR_PSBL_ORDER = TrId("TTTC8908R", "VTTC8908R")

#: Most balance pages read for one question (50 rows a page on a real account, 20 on mock).
MAX_PAGES = 100


async def read_balance(client: KisClient) -> tuple[list[Holding], dict[str, Any]]:
    """Every holding (qty > 0), in the order KIS lists them, and the account totals."""
    cfg = client.config
    params = {
        "CANO": cfg.cano,
        "ACNT_PRDT_CD": cfg.product_code,
        "AFHR_FLPR_YN": "N",  # regular session prices
        "OFL_YN": "",
        "INQR_DVSN": "02",  # by symbol
        "UNPR_DVSN": "01",
        "FUND_STTL_ICLD_YN": "N",
        "FNCG_AMT_AUTO_RDPT_YN": "N",
        "PRCS_DVSN": "00",  # today's trades included
        "CTX_AREA_FK100": "",
        "CTX_AREA_NK100": "",
    }
    holdings: list[Holding] = []
    totals: dict[str, Any] = {}
    for page in range(MAX_PAGES):
        reply = await client.get(BALANCE, TR_BALANCE, params, tr_cont="N" if page else "")
        for row in wire.rows(reply.body, "output1"):
            qty = wire.qty(row, "hldg_qty")
            if qty <= 0:
                continue
            holdings.append(
                Holding(
                    symbol=wire.field(row, "pdno"),
                    qty=qty,
                    avg_price=wire.num(row, "pchs_avg_pric"),
                    sellable_qty=wire.qty(row, "ord_psbl_qty"),
                )
            )
        totals = wire.output(reply.body, "output2") or totals
        if not reply.more:
            break
        # fixed-width, space-padded: sent back exactly as received, never trimmed
        params["CTX_AREA_FK100"] = wire.raw(reply.body, "ctx_area_fk100")
        params["CTX_AREA_NK100"] = wire.raw(reply.body, "ctx_area_nk100")
    else:
        raise BrokerUnavailable(f"inquire-balance: more than {MAX_PAGES} pages")
    return holdings, totals


async def read_orderable_cash(client: KisClient, symbol: str) -> Decimal:
    """Buying power now (``ord_psbl_cash``), asked for `symbol` at a market price."""
    cfg = client.config
    params = {
        "CANO": cfg.cano,
        "ACNT_PRDT_CD": cfg.product_code,
        "PDNO": symbol,
        "ORD_UNPR": "0",
        "ORD_DVSN": "01",
        "CMA_EVLU_AMT_ICLD_YN": "N",
        "OVRS_ICLD_YN": "N",
    }
    reply = await client.get(PSBL_ORDER, TR_PSBL_ORDER, params)
    return wire.num(wire.output(reply.body), "ord_psbl_cash")


async def read_account(
    client: KisClient, clock: Clock, symbols: Sequence[str] = ()
) -> AccountSnapshot:
    """Holdings and cash (inquire-balance), and buying power (inquire-psbl-order) asked for
    the first holding or else the first of `symbols` (skipped when there is neither)."""
    as_of = clock.now()
    holdings, totals = await read_balance(client)
    deposit = wire.field(totals, "prvs_rcdl_excc_amt")
    cash = wire.num(totals, "prvs_rcdl_excc_amt" if deposit else "dnca_tot_amt")
    probe = holdings[0].symbol if holdings else (symbols[0] if symbols else "")
    orderable = await read_orderable_cash(client, probe) if probe else None
    return AccountSnapshot(
        cash=cash,
        holdings={h.symbol: h for h in holdings},
        orderable_cash=orderable,
        as_of=as_of,
    )
