"""Quotation handlers: current price, asking price, today's minute bars, daily bars, volume rank.

All read the simulated market at the exchange clock's instant. Minute bars are labelled with
the minute they start (``stck_cntg_hour`` HHMM00), newest first, 30 a call, today only, up to
the requested hour (a later hour reads as now). The bar still forming comes first; until its
first trade its ``cntg_vol`` repeats the previous bar's (KIS documents that quirk). No bars
exist for the closing auction (15:20-15:30): after the close one bar at the close time carries
the auction's price and volume.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np

from exchange import errors
from exchange.config import BARS_PER_CALL, RANK_ROWS
from exchange.traits import Traits
from exchange.wire import Call, Reply, hms, ok, pct, rate, s, sign, ymd
from market.calendar import default_calendar
from market.clock import KST
from market.sim import Phase
from market.ticks import tick_size
from market.types import Board

_MINUTE = timedelta(minutes=1)
_US = timedelta(microseconds=1)
_MARKETS = ("J", "UN")


def _symbol(call: Call) -> str:
    if call.get("FID_COND_MRKT_DIV_CODE", "J") not in _MARKETS:
        raise errors.invalid_input("FID_COND_MRKT_DIV_CODE")
    symbol = call.need("FID_INPUT_ISCD")
    if symbol not in call.venue.market.symbols:
        raise errors.no_data()
    return symbol


def _market_name(call: Call, symbol: str) -> str:
    inst = call.venue.market.instrument(symbol)
    if inst.board is Board.KOSDAQ:
        return "KOSDAQ"
    return "KOSPI200" if inst.kospi200 else "KOSPI"


def _open_price(call: Call, symbol: str) -> Decimal:
    market = call.venue.market
    if market.phase(call.venue.clock.now()) is Phase.PRE_OPEN:
        return Decimal(0)
    return market.quote(symbol, market.session.open, 0).price


def _status_code(t: Traits) -> str:
    # iscd_stat_cls_code: 51 administrative, 54 caution/warning, 55 credit-able, 57 100% margin
    if t.administrative:
        return "51"
    if t.warning:
        return "54"
    return "57" if t.no_credit else "55"


def price(call: Call) -> Reply:
    """FHKST01010100 inquire-price."""
    symbol = _symbol(call)
    venue = call.venue
    q = venue.market.quote(symbol, venue.clock.now(), 0)
    t = venue.traits[symbol]
    diff = q.price - q.prev_close
    out: dict[str, str] = {
        "iscd_stat_cls_code": _status_code(t),
        "marg_rate": "100.00" if t.no_credit else "40.00",
        "rprs_mrkt_kor_name": _market_name(call, symbol),
        "new_hgpr_lwpr_cls_code": "",
        "bstp_kor_isnm": "",
        "temp_stop_yn": "N",
        "oprc_rang_cont_yn": "N",
        "clpr_rang_cont_yn": "N",
        "crdt_able_yn": "N" if t.no_credit else "Y",
        "grmn_rate_cls_code": "40",
        "elw_pblc_yn": "N",
        "stck_prpr": s(q.price),
        "prdy_vrss": s(diff),
        "prdy_vrss_sign": sign(q.price, q.prev_close, q.upper_limit, q.lower_limit),
        "prdy_ctrt": pct(diff, q.prev_close),
        "acml_tr_pbmn": s(q.traded_value),
        "acml_vol": s(q.volume),
        "prdy_vrss_vol_rate": "0.00",
        "stck_oprc": s(_open_price(call, symbol)),
        "stck_hgpr": s(q.day_high),
        "stck_lwpr": s(q.day_low),
        "stck_mxpr": s(q.upper_limit),
        "stck_llam": s(q.lower_limit),
        "stck_sdpr": s(q.prev_close),
        "wghn_avrg_stck_prc": rate(q.traded_value / q.volume) if q.volume else "0.00",
        "hts_frgn_ehrt": "0.00",
        "frgn_ntby_qty": "0",
        "pgtr_ntby_qty": "0",
        "aspr_unit": s(tick_size(q.price)),
        "hts_deal_qty_unit_val": "1",
        "lstn_stcn": "0",
        "hts_avls": "0",
        "per": "0.00",
        "pbr": "0.00",
        "vol_tnrt": "0.00",
        "eps": "0.00",
        "bps": "0.00",
        "w52_hgpr": s(max(q.prev_high, q.day_high)),
        "w52_lwpr": s(min(q.prev_low, q.day_low)),
        "whol_loan_rmnd_rate": "0.00",
        "ssts_yn": "Y",
        "stck_shrn_iscd": symbol,
        "fcam_cnnm": "",
        "cpfn_cnnm": "",
        "frgn_hldn_qty": "0",
        "vi_cls_code": "Y" if q.halted_until else "N",
        "ovtm_vi_cls_code": "N",
        "last_ssts_cntg_qty": "0",
        "invt_caful_yn": "Y" if t.warning else "N",
        "mrkt_warn_cls_code": "01" if t.warning else "00",
        "short_over_yn": "N",
        "sltr_yn": "Y" if t.liquidation else "N",
        "mang_issu_cls_code": "Y" if t.administrative else "N",
    }
    return Reply(ok(output=out))


def _operation_code(call: Call) -> str:
    # new_mkop_cls_code: "20" continuous, "30" closing single price, "00" before / after hours
    phase = call.venue.market.phase(call.venue.clock.now())
    return {Phase.CONTINUOUS: "20", Phase.CLOSING_AUCTION: "30"}.get(phase, "00")


def asking_price(call: Call) -> Reply:
    """FHKST01010200 inquire-asking-price-exp-ccn."""
    symbol = _symbol(call)
    venue = call.venue
    now = venue.clock.now()
    bids, asks = venue.market.book(symbol, now, 10)
    q = venue.market.quote(symbol, now, 0)
    out1: dict[str, str] = {"aspr_acpt_hour": hms(now)}
    for side, levels in (("askp", asks), ("bidp", bids)):
        for i in range(10):
            p, n = levels[i] if i < len(levels) else (Decimal(0), 0)
            out1[f"{side}{i + 1}"] = s(p)
            out1[f"{side}_rsqn{i + 1}"] = s(n)
            out1[f"{side}_rsqn_icdc{i + 1}"] = "0"
    auction = venue.market.phase(now) is Phase.CLOSING_AUCTION or q.halted_until is not None
    expected = q.price if auction else Decimal(0)
    common = {
        "antc_mkop_cls_code": "311" if auction else "",
        "stck_prpr": s(q.price),
        "stck_oprc": s(_open_price(call, symbol)),
        "stck_hgpr": s(q.day_high),
        "stck_lwpr": s(q.day_low),
        "stck_sdpr": s(q.prev_close),
        "antc_cnpr": s(expected),
        "antc_cntg_vrss_sign": sign(expected, q.prev_close, q.upper_limit, q.lower_limit)
        if auction
        else "3",
        "antc_cntg_vrss": s(expected - q.prev_close) if auction else "0",
        "antc_cntg_prdy_ctrt": pct(expected - q.prev_close, q.prev_close) if auction else "0.00",
        "antc_vol": "0",
        "stck_shrn_iscd": symbol,
        "vi_cls_code": "Y" if q.halted_until else "N",
    }
    out1.update(
        {
            "total_askp_rsqn": s(sum(n for _, n in asks)),
            "total_bidp_rsqn": s(sum(n for _, n in bids)),
            "total_askp_rsqn_icdc": "0",
            "total_bidp_rsqn_icdc": "0",
            "ovtm_total_askp_icdc": "0",
            "ovtm_total_bidp_icdc": "0",
            "ovtm_total_askp_rsqn": "0",
            "ovtm_total_bidp_rsqn": "0",
            "ntby_aspr_rsqn": s(sum(n for _, n in bids) - sum(n for _, n in asks)),
            "new_mkop_cls_code": _operation_code(call),
            **common,
        }
    )
    return Reply(ok(output1=out1, output2=common))


def _bar(call: Call, symbol: str, start: datetime, end: datetime) -> dict[str, str]:
    """The bar of [start, end) (end: the minute's end, or now for the forming bar)."""
    market = call.venue.market
    q_start = market.quote(symbol, start, 0)
    q_end = market.quote(symbol, end, 0)  # cumulative volume and value are exact at `end`
    boundary = end - start == _MINUTE
    # At a minute boundary the path already shows the next minute's open: read the close
    # just before it.
    close = market.quote(symbol, end - _US, 0).price if boundary else q_end.price
    low, high = market.traded_range(symbol, start, end)
    return {
        "stck_bsop_date": ymd(start),
        "stck_cntg_hour": start.strftime("%H%M00"),
        "stck_prpr": s(close),
        "stck_oprc": s(q_start.price),
        "stck_hgpr": s(high),
        "stck_lwpr": s(low),
        "cntg_vol": s(q_end.volume - q_start.volume),
        "acml_tr_pbmn": s(q_end.traded_value),
    }


def minute_bars(call: Call) -> Reply:
    """FHKST03010200 inquire-time-itemchartprice (see the module docstring)."""
    symbol = _symbol(call)
    venue = call.venue
    market, session = venue.market, venue.market.session
    now = venue.clock.now()
    hour = call.need("FID_INPUT_HOUR_1")
    if len(hour) != 6 or not hour.isdigit() or int(hour[:2]) > 23 or int(hour[2:4]) > 59:
        raise errors.invalid_input("FID_INPUT_HOUR_1")
    asked = datetime.combine(
        session.day, time(int(hour[:2]), int(hour[2:4]), min(59, int(hour[4:]))), tzinfo=KST
    )
    until = min(asked, now)
    rows: list[dict[str, str]] = []
    if until >= session.close:  # the closing auction's single bar
        q_close = market.quote(symbol, session.close, 0)
        q_before = market.quote(symbol, session.continuous_close, 0)
        p = s(q_close.price)
        rows.append(
            {
                "stck_bsop_date": ymd(session.close),
                "stck_cntg_hour": session.close.strftime("%H%M00"),
                "stck_prpr": p,
                "stck_oprc": p,
                "stck_hgpr": p,
                "stck_lwpr": p,
                "cntg_vol": s(q_close.volume - q_before.volume),
                "acml_tr_pbmn": s(q_close.traded_value),
            }
        )
    forming: datetime | None = None
    if until >= session.continuous_close:
        m = market.n_minutes - 1
    elif until >= session.open:
        m = int((until - session.open) // _MINUTE)
        forming = until
    else:
        m = -1
    while m >= 0 and len(rows) < BARS_PER_CALL:
        start = session.open + m * _MINUTE
        rows.append(_bar(call, symbol, start, forming or start + _MINUTE))
        if forming is not None and rows[-1]["cntg_vol"] == "0" and m > 0:
            # KIS: until the forming bar's first trade, its volume shows the previous bar's.
            prev = session.open + (m - 1) * _MINUTE
            rows[-1]["cntg_vol"] = _bar(call, symbol, prev, start)["cntg_vol"]
        forming = None
        m -= 1
    q = market.quote(symbol, now, 0)
    diff = q.price - q.prev_close
    out1 = {
        "prdy_vrss": s(diff),
        "prdy_vrss_sign": sign(q.price, q.prev_close, q.upper_limit, q.lower_limit),
        "prdy_ctrt": pct(diff, q.prev_close),
        "stck_prdy_clpr": s(q.prev_close),
        "acml_vol": s(q.volume),
        "acml_tr_pbmn": s(q.traded_value),
        "hts_kor_isnm": market.instrument(symbol).name,
        "stck_prpr": s(q.price),
    }
    return Reply(ok(output1=out1, output2=rows[:BARS_PER_CALL]))


def daily_bars(call: Call) -> Reply:
    """FHKST03010100 inquire-daily-itemchartprice: today so far and the previous session.

    The simulation knows one earlier session (its close, high and low); its traded value is
    taken to be today's full-day value, which keeps the liquidity tier a client derives from it
    the simulation's.
    """
    symbol = _symbol(call)
    venue = call.venue
    market, session = venue.market, venue.market.session
    now = venue.clock.now()
    q = market.quote(symbol, now, 0)
    inst = market.instrument(symbol)
    full_day = market.quote(symbol, session.close, 0).traded_value
    prev_day = default_calendar().previous_session(session.day).day
    rows: list[dict[str, Any]] = []
    if now >= session.open:
        rows.append(
            {
                "stck_bsop_date": ymd(now),
                "stck_clpr": s(q.price),
                "stck_oprc": s(_open_price(call, symbol)),
                "stck_hgpr": s(q.day_high),
                "stck_lwpr": s(q.day_low),
                "acml_vol": s(q.volume),
                "acml_tr_pbmn": s(q.traded_value),
                "prdy_vrss": s(q.price - q.prev_close),
                "prdy_vrss_sign": sign(q.price, q.prev_close, q.upper_limit, q.lower_limit),
            }
        )
    rows.append(
        {
            "stck_bsop_date": prev_day.strftime("%Y%m%d"),
            "stck_clpr": s(inst.prev_close),
            "stck_oprc": s(inst.prev_close),
            "stck_hgpr": s(inst.prev_high),
            "stck_lwpr": s(inst.prev_low),
            "acml_vol": s(full_day / inst.prev_close),
            "acml_tr_pbmn": s(full_day),
            "prdy_vrss": "0",
            "prdy_vrss_sign": "3",
        }
    )
    out1 = {
        "hts_kor_isnm": inst.name,
        "stck_shrn_iscd": symbol,
        "stck_prpr": s(q.price),
        "stck_prdy_clpr": s(q.prev_close),
        "stck_mxpr": s(q.upper_limit),
        "stck_llam": s(q.lower_limit),
        "acml_vol": s(q.volume),
        "acml_tr_pbmn": s(q.traded_value),
    }
    return Reply(ok(output1=out1, output2=rows))


def volume_rank(call: Call) -> Reply:
    """FHPST01710000 volume-rank (real domain only): 30 rows, exclusion flags applied."""
    if call.mock:
        raise errors.not_on_mock()
    if call.get("FID_COND_MRKT_DIV_CODE", "J") not in ("J", "UN"):
        raise errors.invalid_input("FID_COND_MRKT_DIV_CODE")
    exclusions = call.get("FID_TRGT_EXLS_CLS_CODE", "")
    if len(exclusions) > 10 or set(exclusions) - {"0", "1"}:
        raise errors.invalid_input("FID_TRGT_EXLS_CLS_CODE")
    division = call.get("FID_DIV_CLS_CODE", "0")
    by_value = call.get("FID_BLNG_CLS_CODE", "0") == "3"
    low = Decimal(call.get("FID_INPUT_PRICE_1") or 0)
    high = Decimal(call.get("FID_INPUT_PRICE_2") or 0)
    min_volume = int(call.get("FID_VOL_CNT") or 0)
    venue = call.venue
    snap = venue.market.snapshot(venue.clock.now(), 0)
    order = np.argsort(-(snap.traded_value if by_value else snap.volume), kind="stable")
    rows: list[dict[str, str]] = []
    for i in order:
        symbol = snap.symbols[i]
        t = venue.traits[symbol]
        price_i = Decimal(int(snap.price[i]))
        if t.excluded(exclusions) or (division == "1" and t.preferred):
            continue
        if (division == "2" and not t.preferred) or price_i < low or (high and price_i > high):
            continue
        if snap.volume[i] < min_volume:
            continue
        inst = venue.market.instrument(symbol)
        lower, upper = venue.market.limits(symbol)
        diff = price_i - inst.prev_close
        rows.append(
            {
                "hts_kor_isnm": inst.name,
                "mksc_shrn_iscd": symbol,
                "data_rank": str(len(rows) + 1),
                "stck_prpr": s(price_i),
                "prdy_vrss_sign": sign(price_i, inst.prev_close, upper, lower),
                "prdy_vrss": s(diff),
                "prdy_ctrt": pct(diff, inst.prev_close),
                "acml_vol": s(int(snap.volume[i])),
                "prdy_vol": "0",
                "lstn_stcn": "0",
                "avrg_vol": s(int(snap.volume[i])),
                "n_befr_clpr_vrss_prpr_rate": pct(diff, inst.prev_close),
                "vol_inrt": "0.00",
                "vol_tnrt": "0.00",
                "nday_vol_tnrt": "0.00",
                "avrg_tr_pbmn": s(int(snap.traded_value[i])),
                "tr_pbmn_tnrt": "0.00",
                "nday_tr_pbmn_tnrt": "0.00",
                "acml_tr_pbmn": s(int(snap.traded_value[i])),
            }
        )
        if len(rows) == RANK_ROWS:
            break
    return Reply(ok(output=rows))
