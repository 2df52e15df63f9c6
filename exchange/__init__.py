"""A KIS-compatible exchange over the simulated KRX market (REST + WebSocket).

A real KIS client works against it with only its base URLs changed: the same paths, tr_ids
(V-prefixed trading ids on the mock domain), headers, field names, string values, ``rt_cd`` /
``msg_cd`` / ``msg1`` replies, HTTP statuses and error codes, paging keys and WebSocket frames.
Matching is the project's paper broker over the simulated market on the given clock.

Python API (tests, the CLI)::

    from exchange import ExchangeAccount, ExchangeConfig, serve_exchange

    cfg = ExchangeConfig(
        domain="mock",  # or "real"
        accounts=(ExchangeAccount("app-key", "app-secret", account="12345678-01",
                                  hts_id="user01", cash=Decimal(50_000_000)),),
        seed=0, n_symbols=300,
        session=None,          # a market.calendar.Session; default: the clock's day or the next
        rate_limit=True,       # 20/s real, 2/s mock per app key (rate_per_s overrides)
        listing_lag_s=0.0,     # orders appear in inquire-daily-ccld this late (clock seconds)
        ambiguous_rate=0.0,    # share of order-cash replies that lie (the order IS placed)
    )
    async with serve_exchange(cfg, clock, host="127.0.0.1", port=0, ws_port=0) as running:
        running.rest_url       # http://127.0.0.1:PORT  (KIS_BASE_URL)
        running.ws_url         # ws://127.0.0.1:PORT    (KIS_WS_URL; any path, e.g. /tryitout)
        running.venue          # state and fault hooks:
        running.venue.faults.force_ambiguous(2)   # the next two order-cash replies lie
        running.venue.accounts["app-key"].cash    # Decimal
        running.venue.orders                      # every row of inquire-daily-ccld
        await running.venue.sync()                # match up to the clock now
        running.limiter.enabled = False           # switch the rate limit off
        running.venue.listen(callback)            # every fill notice (exchange.venue.Notice)

Endpoints: ``POST /oauth2/tokenP``, ``POST /oauth2/Approval``, ``GET /__exchange/stats``
(JSON counts per app key and tr_id, token issues, orders, fills, cash and holdings per
account), ``GET /__exchange/arrivals?since=T`` (``[arrived, handled]`` of each API request,
monotonic seconds of the machine: the rate limit counts the arrival), ``GET
/__exchange/orders`` (each order's quantity and fills, as the exchange has them),
``POST /__exchange/admin/{sell,transfer,drop-notices}`` (`exchange.admin`: a sale
or a transfer behind the account's back, lost fill notices) and under
``/uapi/domestic-stock/v1``: quotations ``inquire-price``,
``inquire-asking-price-exp-ccn``, ``inquire-time-itemchartprice``,
``inquire-daily-itemchartprice``, ``volume-rank`` (real only); trading ``order-cash``,
``order-rvsecncl`` (cancel all), ``inquire-psbl-rvsecncl`` (real only),
``inquire-daily-ccld``, ``inquire-balance``, ``inquire-psbl-order``. WebSocket: H0STCNT0,
H0STASP0, H0STCNI0 (real) / H0STCNI9 (mock).

Modules: `config` (settings and constants), `errors` (refusals and their codes), `admin`
(operator endpoints), `arrival` (each request's arrival: the kernel's receive time), `auth`
(tokens, approval keys, rate limit), `venue` (accounts, orders, matching, notices, faults),
`accounts`, `traits`, `wire` (request/reply, formatting, paging), `quotes` and `trading`
(handlers), `rest`, `ws` and `frames` (the two servers), `server` (`serve_exchange`).
"""

from exchange.config import ExchangeAccount, ExchangeConfig
from exchange.server import RunningExchange, serve_exchange
from exchange.venue import Notice, Venue

__all__ = [
    "ExchangeAccount",
    "ExchangeConfig",
    "Notice",
    "RunningExchange",
    "Venue",
    "serve_exchange",
]
