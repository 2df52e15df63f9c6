"""Field lists of the real-time frames, in the order KIS's own client parses them
(``examples_llm/domestic_stock``: ``ccnl_notice``, ``ccnl_krx``, ``asking_price_krx``).

Fields the simulation has no value for are sent as "0" (numbers) or "" (text), never left
out: the client splits on ``^`` and maps by position.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from exchange.venue import Notice, Venue
from exchange.wire import hms, pct, rate, s, sign, ymd
from market.orders import Side
from market.sim import Phase

NOTICE_COLUMNS = (
    "CUST_ID", "ACNT_NO", "ODER_NO", "OODER_NO", "SELN_BYOV_CLS", "RCTF_CLS",
    "ODER_KIND", "ODER_COND", "STCK_SHRN_ISCD", "CNTG_QTY", "CNTG_UNPR",
    "STCK_CNTG_HOUR", "RFUS_YN", "CNTG_YN", "ACPT_YN", "BRNC_NO", "ODER_QTY",
    "ACNT_NAME", "ORD_COND_PRC", "ORD_EXG_GB", "POPUP_YN", "FILLER", "CRDT_CLS",
    "CRDT_LOAN_DATE", "CNTG_ISNM40", "ODER_PRC",
)  # fmt: skip

TRADE_COLUMNS = (
    "MKSC_SHRN_ISCD", "STCK_CNTG_HOUR", "STCK_PRPR", "PRDY_VRSS_SIGN",
    "PRDY_VRSS", "PRDY_CTRT", "WGHN_AVRG_STCK_PRC", "STCK_OPRC",
    "STCK_HGPR", "STCK_LWPR", "ASKP1", "BIDP1", "CNTG_VOL", "ACML_VOL",
    "ACML_TR_PBMN", "SELN_CNTG_CSNU", "SHNU_CNTG_CSNU", "NTBY_CNTG_CSNU",
    "CTTR", "SELN_CNTG_SMTN", "SHNU_CNTG_SMTN", "CCLD_DVSN", "SHNU_RATE",
    "PRDY_VOL_VRSS_ACML_VOL_RATE", "OPRC_HOUR", "OPRC_VRSS_PRPR_SIGN",
    "OPRC_VRSS_PRPR", "HGPR_HOUR", "HGPR_VRSS_PRPR_SIGN", "HGPR_VRSS_PRPR",
    "LWPR_HOUR", "LWPR_VRSS_PRPR_SIGN", "LWPR_VRSS_PRPR", "BSOP_DATE",
    "NEW_MKOP_CLS_CODE", "TRHT_YN", "ASKP_RSQN1", "BIDP_RSQN1",
    "TOTAL_ASKP_RSQN", "TOTAL_BIDP_RSQN", "VOL_TNRT",
    "PRDY_SMNS_HOUR_ACML_VOL", "PRDY_SMNS_HOUR_ACML_VOL_RATE",
    "HOUR_CLS_CODE", "MRKT_TRTM_CLS_CODE", "VI_STND_PRC",
)  # fmt: skip

ASKING_COLUMNS = (
    "MKSC_SHRN_ISCD", "BSOP_HOUR", "HOUR_CLS_CODE",
    *(f"ASKP{i}" for i in range(1, 11)),
    *(f"BIDP{i}" for i in range(1, 11)),
    *(f"ASKP_RSQN{i}" for i in range(1, 11)),
    *(f"BIDP_RSQN{i}" for i in range(1, 11)),
    "TOTAL_ASKP_RSQN", "TOTAL_BIDP_RSQN", "OVTM_TOTAL_ASKP_RSQN", "OVTM_TOTAL_BIDP_RSQN",
    "ANTC_CNPR", "ANTC_CNQN", "ANTC_VOL", "ANTC_CNTG_VRSS", "ANTC_CNTG_VRSS_SIGN",
    "ANTC_CNTG_PRDY_CTRT", "ACML_VOL", "TOTAL_ASKP_RSQN_ICDC", "TOTAL_BIDP_RSQN_ICDC",
    "OVTM_TOTAL_ASKP_ICDC", "OVTM_TOTAL_BIDP_ICDC", "STCK_DEAL_CLS_CODE",
)  # fmt: skip


def _ordered(columns: tuple[str, ...], values: dict[str, str]) -> list[str]:
    return [values.get(c, "") for c in columns]


def notice_fields(n: Notice) -> list[str]:
    """H0STCNI0 / H0STCNI9: CNTG_YN "2" for an execution, "1" for an acceptance (order or
    cancel); RCTF_CLS "0" for an order, "2" for a cancel."""
    fill = n.kind == "fill"
    return _ordered(
        NOTICE_COLUMNS,
        {
            "CUST_ID": n.hts_id,
            "ACNT_NO": n.account,
            "ODER_NO": n.odno,
            "OODER_NO": n.orgn_odno,
            "SELN_BYOV_CLS": "01" if n.side is Side.SELL else "02",
            "RCTF_CLS": "2" if n.kind == "cancel" else "0",
            "ODER_KIND": n.dvsn,
            "ODER_COND": "0",
            "STCK_SHRN_ISCD": n.symbol,
            "CNTG_QTY": s(n.qty),
            "CNTG_UNPR": s(n.price),
            "STCK_CNTG_HOUR": hms(n.at),
            "RFUS_YN": "0",
            "CNTG_YN": "2" if fill else "1",
            "ACPT_YN": "2",
            "BRNC_NO": "06010",
            "ODER_QTY": s(n.ord_qty),
            "ACNT_NAME": "",
            "ORD_COND_PRC": "0",
            "ORD_EXG_GB": "1",
            "POPUP_YN": "Y",
            "FILLER": "",
            "CRDT_CLS": "10",
            "CRDT_LOAN_DATE": "",
            "CNTG_ISNM40": n.name,
            "ODER_PRC": s(n.ord_price),
        },
    )


def _hour_code(venue: Venue, at: datetime) -> str:
    # HOUR_CLS_CODE: "0" continuous trading, "A" the closing auction's expected prices
    return "A" if venue.market.phase(at) is Phase.CLOSING_AUCTION else "0"


def trade_fields(
    venue: Venue, symbol: str, at: datetime, prev: tuple[int, Decimal] | None
) -> tuple[list[str] | None, tuple[int, Decimal]]:
    """H0STCNT0 for the trades since `prev` (volume, price); None when nothing traded."""
    market = venue.market
    q = market.quote(symbol, at, 0)
    state = (q.volume, q.price)
    if q.volume == 0 or (prev is not None and prev[0] == q.volume):
        return None, prev or state
    opened = market.quote(symbol, market.session.open, 0).price
    base, up, low = q.prev_close, q.upper_limit, q.lower_limit
    diff = q.price - base
    halted = q.halted_until is not None
    phase = market.phase(at)
    values = {
        "MKSC_SHRN_ISCD": symbol,
        "STCK_CNTG_HOUR": hms(at),
        "STCK_PRPR": s(q.price),
        "PRDY_VRSS_SIGN": sign(q.price, base, up, low),
        "PRDY_VRSS": s(diff),
        "PRDY_CTRT": pct(diff, base),
        "WGHN_AVRG_STCK_PRC": rate(q.traded_value / q.volume),
        "STCK_OPRC": s(opened),
        "STCK_HGPR": s(q.day_high),
        "STCK_LWPR": s(q.day_low),
        "ASKP1": s(q.ask),
        "BIDP1": s(q.bid),
        "CNTG_VOL": s(q.volume - (prev[0] if prev else 0)),
        "ACML_VOL": s(q.volume),
        "ACML_TR_PBMN": s(q.traded_value),
        "SELN_CNTG_CSNU": "0",
        "SHNU_CNTG_CSNU": "0",
        "NTBY_CNTG_CSNU": "0",
        "CTTR": "100.00",
        "SELN_CNTG_SMTN": "0",
        "SHNU_CNTG_SMTN": "0",
        "CCLD_DVSN": "1" if prev is None or q.price >= prev[1] else "5",
        "SHNU_RATE": "0.00",
        "PRDY_VOL_VRSS_ACML_VOL_RATE": "0.00",
        "OPRC_HOUR": market.session.open.strftime("%H%M%S"),
        "OPRC_VRSS_PRPR_SIGN": sign(q.price, opened, up, low),
        "OPRC_VRSS_PRPR": s(q.price - opened),
        "HGPR_HOUR": "",
        "HGPR_VRSS_PRPR_SIGN": sign(q.price, q.day_high, up, low),
        "HGPR_VRSS_PRPR": s(q.price - q.day_high),
        "LWPR_HOUR": "",
        "LWPR_VRSS_PRPR_SIGN": sign(q.price, q.day_low, up, low),
        "LWPR_VRSS_PRPR": s(q.price - q.day_low),
        "BSOP_DATE": ymd(at),
        "NEW_MKOP_CLS_CODE": "30" if phase is Phase.CLOSING_AUCTION else "20",
        "TRHT_YN": "N",
        "ASKP_RSQN1": s(q.ask_qty),
        "BIDP_RSQN1": s(q.bid_qty),
        "TOTAL_ASKP_RSQN": s(q.ask_qty),
        "TOTAL_BIDP_RSQN": s(q.bid_qty),
        "VOL_TNRT": "0.00",
        "PRDY_SMNS_HOUR_ACML_VOL": "0",
        "PRDY_SMNS_HOUR_ACML_VOL_RATE": "0.00",
        "HOUR_CLS_CODE": _hour_code(venue, at),
        "MRKT_TRTM_CLS_CODE": "1" if halted else "0",
        "VI_STND_PRC": s(q.price) if halted else "0",
    }
    return _ordered(TRADE_COLUMNS, values), state


def asking_price_fields(venue: Venue, symbol: str, at: datetime) -> tuple[list[str], Any]:
    """H0STASP0: ten levels a side; the state (the levels) tells whether it changed."""
    market = venue.market
    bids, asks = market.book(symbol, at, 10)
    q = market.quote(symbol, at, 0)
    values = {
        "MKSC_SHRN_ISCD": symbol,
        "BSOP_HOUR": hms(at),
        "HOUR_CLS_CODE": _hour_code(venue, at),
    }
    for name, levels in (("ASKP", asks), ("BIDP", bids)):
        for i in range(10):
            p, n = levels[i] if i < len(levels) else (Decimal(0), 0)
            values[f"{name}{i + 1}"] = s(p)
            values[f"{name}_RSQN{i + 1}"] = s(n)
    auction = market.phase(at) is Phase.CLOSING_AUCTION or q.halted_until is not None
    expected = q.price if auction else Decimal(0)
    values.update(
        {
            "TOTAL_ASKP_RSQN": s(sum(n for _, n in asks)),
            "TOTAL_BIDP_RSQN": s(sum(n for _, n in bids)),
            "OVTM_TOTAL_ASKP_RSQN": "0",
            "OVTM_TOTAL_BIDP_RSQN": "0",
            "ANTC_CNPR": s(expected),
            "ANTC_CNQN": "0",
            "ANTC_VOL": "0",
            "ANTC_CNTG_VRSS": s(expected - q.prev_close) if auction else "0",
            "ANTC_CNTG_VRSS_SIGN": sign(expected, q.prev_close, q.upper_limit, q.lower_limit)
            if auction
            else "3",
            "ANTC_CNTG_PRDY_CTRT": pct(expected - q.prev_close, q.prev_close)
            if auction
            else "0.00",
            "ACML_VOL": s(q.volume),
            "TOTAL_ASKP_RSQN_ICDC": "0",
            "TOTAL_BIDP_RSQN_ICDC": "0",
            "OVTM_TOTAL_ASKP_ICDC": "0",
            "OVTM_TOTAL_BIDP_ICDC": "0",
            "STCK_DEAL_CLS_CODE": "0",
        }
    )
    return _ordered(ASKING_COLUMNS, values), (tuple(bids), tuple(asks))
