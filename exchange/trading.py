"""Trading handlers: cash orders, cancels, cancellable orders, daily orders/fills, balance,
buying power. Each checks CANO / ACNT_PRDT_CD against the app key's account.

inquire-daily-ccld shows an order once `listing_lag_s` of exchange-clock time has passed since
it was placed. A cancel shows twice: on the original row (``rmn_qty`` 0, ``cnc_cfrm_qty`` the
quantity taken away) and as its own row (``orgn_odno`` the original, ``cncl_yn`` "Y"). An order
the close ended with quantity left shows ``rmn_qty`` 0 (nothing works any more).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from exchange import errors
from exchange.config import BALANCE_PAGE, CCLD_PAGE, PSBL_RVSECNCL_PAGE
from exchange.venue import LIMIT, MARKET, VenueOrder
from exchange.wire import Call, Reply, avg, hms, ok, paginate, pct, rate, s, ymd
from market.orders import Side
from market.types import Board

SELL_CODE, BUY_CODE = "01", "02"
_DVSN_NAME = {LIMIT: "지정가", MARKET: "시장가"}


def _exchange_id(call: Call, *, inquiry: bool = False) -> None:
    excg = call.get("EXCG_ID_DVSN_CD", "KRX") or "KRX"
    allowed = {"KRX"} if call.mock else {"KRX", "SOR"} | ({"ALL"} if inquiry else set())
    if excg in allowed:
        return
    if call.mock:
        raise errors.not_on_mock()
    if excg == "NXT":
        raise errors.not_modelled("NXT")
    raise errors.invalid_input("EXCG_ID_DVSN_CD")


def _order_reply_msg(call: Call, side: Side) -> tuple[str, str]:
    if call.mock:
        what = "매수" if side is Side.BUY else "매도"
        return "40600000", f"모의투자 {what}주문이 완료 되었습니다."
    return "APBK0013", "주문 전송 완료 되었습니다."


async def order_cash(call: Call, side: Side) -> Reply:
    """TTTC0012U / TTTC0011U (V... on mock) order-cash."""
    call.check_account()
    _exchange_id(call)
    symbol = call.need("PDNO")
    dvsn = call.need("ORD_DVSN")
    if dvsn not in (LIMIT, MARKET):
        raise errors.bad_order_division(call.mock) if call.mock else errors.not_modelled(dvsn)
    qty = call.number("ORD_QTY")
    unpr = call.get("ORD_UNPR", "0").strip() or "0"
    if not unpr.isdigit():
        raise errors.invalid_input("ORD_UNPR")
    price = Decimal(unpr) if dvsn == LIMIT else Decimal(0)
    order = await call.venue.place(call.app_key, symbol, side, dvsn, qty, price)
    ambiguous = call.venue.faults.draw()
    if ambiguous is not None:  # placed, but the reply says otherwise
        call.venue.stats.ambiguous += 1
        raise ambiguous
    code, msg = _order_reply_msg(call, side)
    out = {
        "KRX_FWDG_ORD_ORGNO": call.venue.orgno,
        "ODNO": order.odno,
        "ORD_TMD": hms(order.ordered_at),
    }
    return Reply(ok(msg, code, output=out))


async def order_rvsecncl(call: Call) -> Reply:
    """TTTC0013U / VTTC0013U order-rvsecncl: cancel everything still working of an order."""
    call.check_account()
    _exchange_id(call)
    if call.need("KRX_FWDG_ORD_ORGNO").lstrip("0") != call.venue.orgno.lstrip("0"):
        raise errors.invalid_input("KRX_FWDG_ORD_ORGNO")
    original = call.need("ORGN_ODNO")
    if call.need("RVSE_CNCL_DVSN_CD") != "02":
        raise errors.not_modelled("정정 (modify)")
    if call.need("QTY_ALL_ORD_YN") != "Y":
        raise errors.not_modelled("일부취소 (partial cancel)")
    row = await call.venue.cancel(call.app_key, original)
    out = {"krx_fwdg_ord_orgno": call.venue.orgno, "odno": row.odno, "ord_tmd": hms(row.ordered_at)}
    code, msg = (
        ("40640000", "모의투자 취소주문이 완료 되었습니다.")
        if call.mock
        else (
            "APBK0013",
            "주문 전송 완료 되었습니다.",
        )
    )
    return Reply(ok(msg, code, output=out))


def _side_code(o: VenueOrder) -> str:
    return SELL_CODE if o.side is Side.SELL else BUY_CODE


def _ccld_row(call: Call, o: VenueOrder) -> dict[str, str]:
    instrument = call.venue.market.instrument(o.symbol)
    name = instrument.name
    return {
        "ord_dt": ymd(o.ordered_at),
        "ord_gno_brno": call.venue.orgno,
        "odno": o.odno,
        "orgn_odno": o.orgn_odno,
        "ord_dvsn_name": "취소" + _DVSN_NAME[o.dvsn] if o.is_cancel else _DVSN_NAME[o.dvsn],
        "sll_buy_dvsn_cd": _side_code(o),
        "sll_buy_dvsn_cd_name": ("매도" if o.side is Side.SELL else "매수")
        + ("취소" if o.is_cancel else ""),
        "pdno": o.symbol,
        "prdt_name": name,
        "ord_qty": s(o.qty),
        "ord_unpr": s(o.price),
        "ord_tmd": hms(o.ordered_at),
        "tot_ccld_qty": s(o.filled_qty),
        "avg_prvs": avg(o.filled_amount, o.filled_qty),
        "cncl_yn": "Y" if o.is_cancel else "N",
        "tot_ccld_amt": s(o.filled_amount),
        "loan_dt": "",
        "ordr_empno": "OpnAPI",
        "ord_dvsn_cd": o.dvsn,
        "cnc_cfrm_qty": s(o.canceled_qty),
        "rmn_qty": s(o.remaining),
        "rjct_qty": "0",
        "ccld_cndt_name": "없음",
        "inqr_ip_addr": "",
        "cpbc_ordp_ord_rcit_dvsn_cd": "",
        "cpbc_ordp_infm_mthd_dvsn_cd": "",
        "infm_tmd": hms(o.informed_at) if o.informed_at else "",
        "ctac_tlno": "",
        "prdt_type_cd": "300",
        "excg_dvsn_cd": "02" if instrument.board is Board.KOSDAQ else "01",
        "cpbc_ordp_mtrl_dvsn_cd": "",
        "ord_orgno": call.venue.orgno,
        "rsvn_ord_end_dt": "",
        "excg_id_dvsn_Cd": o.excg,
        "stpm_cndt_pric": "0",
        "stpm_efct_occr_dtmd": "",
    }


def _selected(call: Call, rows: Sequence[VenueOrder]) -> list[VenueOrder]:
    start, end = call.need("INQR_STRT_DT"), call.need("INQR_END_DT")
    side = call.get("SLL_BUY_DVSN_CD", "00") or "00"
    ccld = call.get("CCLD_DVSN", "00") or "00"
    if side not in ("00", SELL_CODE, BUY_CODE):
        raise errors.invalid_input("SLL_BUY_DVSN_CD")
    if ccld not in ("00", "01", "02"):
        raise errors.invalid_input("CCLD_DVSN")
    symbol = call.get("PDNO").strip()
    odno = call.get("ODNO").strip().lstrip("0")
    out = [
        o
        for o in rows
        if start <= ymd(o.ordered_at) <= end
        and side in ("00", _side_code(o))
        and symbol in ("", o.symbol)
        and odno in ("", o.odno.lstrip("0"))
        and (ccld == "00" or (ccld == "01") == (o.filled_qty > 0))
    ]
    if (call.get("INQR_DVSN", "00") or "00") == "00":  # 00: newest first
        out.reverse()
    return out


async def daily_ccld(call: Call) -> Reply:
    """TTTC0081R / VTTC0081R inquire-daily-ccld (see the module docstring)."""
    call.check_account()
    _exchange_id(call, inquiry=True)
    await call.venue.sync()
    rows = _selected(call, call.venue.listed(call.account))
    condition = "^".join(
        call.get(k)
        for k in ("CANO", "ACNT_PRDT_CD", "INQR_STRT_DT", "INQR_END_DT", "SLL_BUY_DVSN_CD",
                  "PDNO", "CCLD_DVSN", "INQR_DVSN", "ODNO")
    )  # fmt: skip
    page = paginate(call, rows, lambda o: o.odno, CCLD_PAGE[call.config.domain], condition)
    orders = [o for o in rows if not o.is_cancel]
    qty = sum(o.filled_qty for o in orders)
    amount = sum((o.filled_amount for o in orders), Decimal(0))
    out2 = {
        "tot_ord_qty": s(sum(o.qty for o in orders)),
        "tot_ccld_qty": s(qty),
        "tot_ccld_amt": s(amount),
        "prsm_tlex_smtl": s(call.account.fees),
        "pchs_avg_pric": avg(amount, qty, 4),
    }
    body = ok(
        "조회가 완료되었습니다." if page.rows else "조회할 내용이 없습니다.",
        "KIOK0460" if page.rows else "KIOK0560",
        ctx_area_fk100=page.fk100,
        ctx_area_nk100=page.nk100,
        output1=[_ccld_row(call, o) for o in page.rows],
        output2=out2,
    )
    return Reply(body, page.tr_cont)


async def psbl_rvsecncl(call: Call) -> Reply:
    """TTTC0084R inquire-psbl-rvsecncl (real domain only): orders with quantity to cancel."""
    if call.mock:
        raise errors.not_on_mock()
    call.check_account()
    await call.venue.sync()
    side = call.get("INQR_DVSN_2", "0") or "0"
    rows = [
        o
        for o in call.venue.listed(call.account)
        if o.working and side in ("0", "1" if o.side is Side.SELL else "2")
    ]
    if call.get("INQR_DVSN_1", "0") == "1":
        rows.sort(key=lambda o: (o.symbol, o.odno))
    keys = ("CANO", "ACNT_PRDT_CD", "INQR_DVSN_1", "INQR_DVSN_2")
    condition = "^".join(call.get(k) for k in keys)
    page = paginate(call, rows, lambda o: o.odno, PSBL_RVSECNCL_PAGE, condition)
    out = [
        {
            "ord_gno_brno": call.venue.orgno,
            "odno": o.odno,
            "orgn_odno": "",
            "ord_dvsn_name": _DVSN_NAME[o.dvsn],
            "pdno": o.symbol,
            "prdt_name": call.venue.market.instrument(o.symbol).name,
            "rvse_cncl_dvsn_name": "",
            "ord_qty": s(o.qty),
            "ord_unpr": s(o.price),
            "ord_tmd": hms(o.ordered_at),
            "tot_ccld_qty": s(o.filled_qty),
            "tot_ccld_amt": s(o.filled_amount),
            "psbl_qty": s(o.remaining),
            "sll_buy_dvsn_cd": _side_code(o),
            "ord_dvsn_cd": o.dvsn,
            "mgco_aptm_odno": "",
            "excg_dvsn_cd": "01",
            "excg_id_dvsn_cd": o.excg,
            "excg_id_dvsn_name": o.excg,
            "stpm_cndt_pric": "0",
            "stpm_efct_occr_yn": "N",
        }
        for o in page.rows
    ]
    body = ok(ctx_area_fk100=page.fk100, ctx_area_nk100=page.nk100, output=out)
    return Reply(body, page.tr_cont)


async def balance(call: Call) -> Reply:
    """TTTC8434R / VTTC8434R inquire-balance: holdings (output1) and account totals (output2)."""
    call.check_account()
    await call.venue.sync()
    venue, acct = call.venue, call.account
    now = venue.clock.now()
    held = sorted(
        (h for h in acct.holdings.values() if h.qty or h.sold_qty), key=lambda h: h.symbol
    )
    condition = "^".join(call.get(k) for k in ("CANO", "ACNT_PRDT_CD", "INQR_DVSN", "PRCS_DVSN"))
    page = paginate(call, held, lambda h: h.symbol, BALANCE_PAGE[call.config.domain], condition)
    rows: list[dict[str, Any]] = []
    evaluated = Decimal(0)
    cost = Decimal(0)
    for h in held:
        evaluated += h.qty * venue.market.quote(h.symbol, now, 0).price
        cost += h.cost
    for h in page.rows:
        q = venue.market.quote(h.symbol, now, 0)
        value = h.qty * q.price
        rows.append(
            {
                "pdno": h.symbol,
                "prdt_name": venue.market.instrument(h.symbol).name,
                "trad_dvsn_name": "현금",
                "bfdy_buy_qty": "0",
                "bfdy_sll_qty": "0",
                "thdt_buyqty": s(h.bought_qty),
                "thdt_sll_qty": s(h.sold_qty),
                "hldg_qty": s(h.qty),
                "ord_psbl_qty": s(max(0, venue.sellable(acct, h.symbol))),
                "pchs_avg_pric": avg(h.cost, h.qty, 4),
                "pchs_amt": s(h.cost),
                "prpr": s(q.price),
                "evlu_amt": s(value),
                "evlu_pfls_amt": s(value - h.cost),
                "evlu_pfls_rt": pct(value - h.cost, h.cost),
                "evlu_erng_rt": rate(Decimal(0), 8),
                "loan_dt": "",
                "loan_amt": "0",
                "stln_slng_chgs": "0",
                "expd_dt": "",
                "fltt_rt": pct(q.price - q.prev_close, q.prev_close),
                "bfdy_cprs_icdc": s(q.price - q.prev_close),
                "item_mgna_rt_name": "",
                "grta_rt_name": "",
                "sbst_pric": "0",
                "stck_loan_unpr": "0",
            }
        )
    start_cash = acct.spec.cash
    total = acct.cash + evaluated
    out2 = {
        "dnca_tot_amt": s(acct.cash),
        "nxdy_excc_amt": s(acct.cash),
        "prvs_rcdl_excc_amt": s(acct.cash),
        "cma_evlu_amt": "0",
        "bfdy_buy_amt": "0",
        "thdt_buy_amt": s(acct.bought),
        "nxdy_auto_rdpt_amt": "0",
        "bfdy_sll_amt": "0",
        "thdt_sll_amt": s(acct.sold),
        "d2_auto_rdpt_amt": "0",
        "bfdy_tlex_amt": "0",
        "thdt_tlex_amt": s(acct.fees),
        "tot_loan_amt": "0",
        "scts_evlu_amt": s(evaluated),
        "tot_evlu_amt": s(total),
        "nass_amt": s(total),
        "fncg_gld_auto_rdpt_yn": "N",
        "pchs_amt_smtl_amt": s(cost),
        "evlu_amt_smtl_amt": s(evaluated),
        "evlu_pfls_smtl_amt": s(evaluated - cost),
        "tot_stln_slng_chgs": "0",
        "bfdy_tot_asst_evlu_amt": s(start_cash),
        "asst_icdc_amt": s(total - start_cash),
        "asst_icdc_erng_rt": rate(Decimal(0), 8),
    }
    body = ok(ctx_area_fk100=page.fk100, ctx_area_nk100=page.nk100, output1=rows, output2=[out2])
    return Reply(body, page.tr_cont)


async def psbl_order(call: Call) -> Reply:
    """TTTC8908R / VTTC8908R inquire-psbl-order: buying power for one symbol at one price.

    A market order (ORD_DVSN "01") or no price is valued at the upper limit, as a market BUY
    reserves cash at it.
    """
    call.check_account()
    await call.venue.sync()
    venue, acct = call.venue, call.account
    symbol = call.need("PDNO")
    if symbol not in venue.market.symbols:
        raise errors.not_tradable(call.mock)
    dvsn = call.get("ORD_DVSN", LIMIT) or LIMIT
    unpr = (call.get("ORD_UNPR", "0") or "0").strip()
    if not unpr.isdigit():
        raise errors.invalid_input("ORD_UNPR")
    upper = venue.market.limits(symbol)[1]
    price = Decimal(unpr) if dvsn == LIMIT and int(unpr) > 0 else upper
    cash = max(Decimal(0), venue.available_cash(acct))
    qty = acct.costs.max_buy_qty(cash, price)
    amount = acct.buy_cost(qty * price) if qty else Decimal(0)
    out = {
        "ord_psbl_cash": s(cash),
        "ord_psbl_sbst": "0",
        "ruse_psbl_amt": "0",
        "fund_rpch_chgs": "0",
        "psbl_qty_calc_unpr": s(price),
        "nrcvb_buy_amt": s(amount),
        "nrcvb_buy_qty": s(qty),
        "max_buy_amt": s(amount),
        "max_buy_qty": s(qty),
        "cma_evlu_amt": "0",
        "ovrs_re_use_amt_wcrc": "0",
        "ord_psbl_frcr_amt_wcrc": "0",
    }
    return Reply(ok(output=out))
