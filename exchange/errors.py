"""Refusals as KIS sends them: an HTTP status and a JSON body with ``rt_cd``, ``msg_cd``, ``msg1``.

ExchangeError                    raised by a handler; the REST layer turns it into the reply
└── (catalogue below)            one factory per reason, with the real / mock domain's code

Gateway refusals (EGW...) come back as HTTP 500 (403 for a token issued too soon), business
refusals as HTTP 200 with ``rt_cd`` "1" (input validation: "2"). Codes the public record
confirms: EGW00201 (rate), EGW00121 / EGW00123 (token invalid / expired), EGW00133 (token
issued within a minute), OPSQ2000 / OPSQ2001 (invalid input), 40580000 (mock: market closed),
40310000 (mock: not tradable), APBK0952 (real: not enough cash), OPSQ0002 (unknown service).
The other codes are this exchange's best guesses; clients should key on ``rt_cd`` and treat the
code as a label.
"""

from __future__ import annotations

from typing import Any


class ExchangeError(Exception):
    """A refusal: `status` is the HTTP status, `body` the KIS JSON body."""

    def __init__(self, status: int, msg_cd: str, msg1: str, rt_cd: str = "1") -> None:
        super().__init__(f"{msg_cd} {msg1}")
        self.status = status
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1

    @property
    def body(self) -> dict[str, Any]:
        return {"rt_cd": self.rt_cd, "msg_cd": self.msg_cd, "msg1": self.msg1}


class TokenError(ExchangeError):
    """A refusal of the token endpoint: KIS answers these with error_code / error_description."""

    @property
    def body(self) -> dict[str, Any]:
        return {"error_description": self.msg1, "error_code": self.msg_cd}


# ----- gateway --------------------------------------------------------------------------------


def rate_limited() -> ExchangeError:
    return ExchangeError(500, "EGW00201", "초당 거래건수를 초과하였습니다.")


def token_invalid() -> ExchangeError:
    return ExchangeError(500, "EGW00121", "유효하지 않은 token 입니다.")


def token_expired() -> ExchangeError:
    return ExchangeError(500, "EGW00123", "기간이 만료된 token 입니다.")


def token_too_soon() -> TokenError:
    return TokenError(403, "EGW00133", "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)")


def bad_app_key() -> ExchangeError:
    return ExchangeError(500, "EGW00103", "유효하지 않은 AppKey입니다.")


def bad_app_secret() -> ExchangeError:
    return ExchangeError(500, "EGW00105", "유효하지 않은 AppSecret입니다.")


def bad_token_request(what: str) -> TokenError:
    return TokenError(403, "EGW00002", f"잘못된 요청입니다. ({what})")


def unknown_service(tr_id: str) -> ExchangeError:
    return ExchangeError(500, "OPSQ0002", f"없는 서비스 코드 입니다 ({tr_id or '-'})")


def not_on_mock() -> ExchangeError:
    return ExchangeError(200, "40100000", "모의투자에서는 해당업무가 제공되지 않습니다.")


def routing_error() -> ExchangeError:
    """The ambiguous reply of the fault injection (HTTP 500 from the gateway)."""
    return ExchangeError(500, "EGW00203", "OPS라우팅 중 오류가 발생했습니다.")


def processing_timeout() -> ExchangeError:
    """The other ambiguous reply: HTTP 200, rt_cd 1, the order system did not answer in time."""
    return ExchangeError(200, "APBK9999", "주문 처리 중 응답시간이 초과되었습니다.")


# ----- input ----------------------------------------------------------------------------------


def invalid_input(field: str) -> ExchangeError:
    return ExchangeError(200, "OPSQ2001", f"ERROR : INPUT INVALID_CHECK_{field}", rt_cd="2")


def invalid_account() -> ExchangeError:
    return ExchangeError(200, "OPSQ2000", "ERROR : INPUT INVALID_CHECK_ACNO", rt_cd="2")


def no_data() -> ExchangeError:
    return ExchangeError(200, "MCA00124", "조회할 자료가 없습니다")


# ----- orders (real code, mock code) -----------------------------------------------------------


def _order(mock: bool, real: tuple[str, str], moc: tuple[str, str]) -> ExchangeError:
    code, msg = moc if mock else real
    return ExchangeError(200, code, msg)


def market_closed(mock: bool) -> ExchangeError:
    return _order(
        mock, ("APBK0918", "장운영시간이 아닙니다."), ("40580000", "모의투자 장종료 입니다.")
    )


def before_open(mock: bool) -> ExchangeError:
    return _order(mock, ("APBK0917", "장시작전 입니다."), ("40570000", "모의투자 장시작전 입니다."))


def not_tradable(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0656", "해당종목정보가 없습니다."),
        ("40310000", "모의투자 주문처리가 안되었습니다(매매불가 종목)"),
    )


def not_enough_cash(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0952", "주문가능금액을 초과 했습니다"),
        ("40250000", "모의투자 주문가능금액을 초과 했습니다"),
    )


def not_enough_shares(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0400", "주문가능수량을 초과 하였습니다."),
        ("40270000", "모의투자 주문가능수량을 초과 하였습니다."),
    )


def off_grid(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0506", "호가단위가 맞지 않습니다."),
        ("40060000", "모의투자 호가단위 오류입니다."),
    )


def outside_limits(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0507", "주문가격이 상하한가를 벗어났습니다."),
        ("40070000", "모의투자 상하한가 오류입니다."),
    )


def bad_quantity(mock: bool) -> ExchangeError:
    return _order(
        mock, ("APBK0634", "주문수량을 확인하세요."), ("40120000", "모의투자 주문수량 오류입니다.")
    )


def bad_order_division(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0630", "주문구분을 확인하세요."),
        ("40110000", "모의투자 주문구분 오류입니다."),
    )


def nothing_to_cancel(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0344", "정정/취소할 수량이 없습니다."),
        ("40330000", "모의투자 정정/취소할 수량이 없습니다."),
    )


def unknown_original(mock: bool) -> ExchangeError:
    return _order(
        mock,
        ("APBK0915", "원주문번호가 존재하지 않습니다."),
        ("40320000", "모의투자 원주문번호가 존재하지 않습니다."),
    )


def not_modelled(what: str) -> ExchangeError:
    """A request this exchange does not model (modify, partial cancel, IOC/FOK, NXT)."""
    return ExchangeError(200, "EXCH0001", f"이 거래소에서 지원하지 않는 주문입니다: {what}")
