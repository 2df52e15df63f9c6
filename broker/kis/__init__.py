"""KIS Open API (Korea Investment & Securities) adapter: `KisBroker` behind the broker ports.

    client.py     HTTP, headers, tr_id per domain, error mapping (`KisClient`, `KisConfig`)
    token.py      the fleet's one access token per domain and app key in Redis
    ratelimit.py  the fleet's one request budget in Redis (`RedisRateLimiter`)
    keys.py       the Redis key names below (`KisKeys`)
    adapter.py    `KisBroker`: orders (order-cash, order-rvsecncl, inquire-daily-ccld)
    account.py    the account: holdings and deposit (inquire-balance), buying power
    market.py     `KisMarketData`: quotations (price, orderbook, minute bars, volume rank)
    notices.py    `KisNoticeFeed`: fill notices (and real-time trades) over the WebSocket
    fanout.py     the gateway's services: market data published once for the fleet, fill
                  notices routed to the worker holding the symbol
    feed.py       the worker's side: `GatewayMarketData`, fill hints (`HintedBroker`)
    wire.py       paths, tr_ids and field parsing
    errors.py     KIS message codes and the KIS branch of the error tree

Redis keys (prefix ``fleet``; ``{d}`` the domain, real or mock; ``{h}`` twelve hex digits of
SHA-256 of the app key, so no key name shows the app key):

================================  ======  ======================  ==============================
key                               type    TTL                     meaning
================================  ======  ======================  ==============================
``fleet:kis:rate``                zset    PX window + 1 s         one member per request granted
                                                                  in the sliding window
                                                                  (ratelimit.py)
``fleet:kis:token:{d}:{h}``       string  PX until KIS's expiry   JSON ``{"token",
                                          less a margin           "expires_at", "use_until"}``:
                                                                  the access token (token.py)
``fleet:kis:token:issue:{d}:{h}`` string  PX one issue interval   held by the process whose turn
                                                                  it is to ask KIS for a token;
                                                                  ``wait`` after a refusal
``fleet:kis:md:{d}:universe``     string  PX one day              JSON: the day's instruments
                                                                  and the bars kept (fanout.py)
``fleet:kis:md:{d}:rows``         hash    PX one day, renewed     symbol -> JSON: its latest
                                                                  quotation, bars, read time
``fleet:kis:md:{d}:trades``       hash    PX one day, renewed     symbol -> JSON: latest
                                                                  real-time trade (held symbols)
``fleet:kis:md:{d}:state``        hash    PX one day, renewed     the publisher's last cycle
``fleet:kis:fills:{h}:{worker}``  stream  PX one day, MAXLEN~1k   fill notices routed to the
                                                                  worker (hints, feed.py)
================================  ======  ======================  ==============================
"""

from broker.kis.adapter import KisBroker
from broker.kis.client import KisClient, KisConfig
from broker.kis.notices import FillNotice, KisNoticeFeed

__all__ = ["FillNotice", "KisBroker", "KisClient", "KisConfig", "KisNoticeFeed"]
