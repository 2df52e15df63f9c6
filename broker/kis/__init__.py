"""KIS Open API (Korea Investment & Securities) adapter: `KisBroker` behind the broker ports.

    client.py     HTTP, headers, tr_id per domain, error mapping (`KisClient`, `KisConfig`)
    token.py      the fleet's one access token in Redis (`RedisTokenCache`)
    ratelimit.py  the fleet's one request budget in Redis (`RedisRateLimiter`)
    adapter.py    `KisBroker`: orders (order-cash, order-rvsecncl, inquire-daily-ccld)
    market.py     `KisMarketData`: quotations (price, orderbook, minute bars, volume rank)
    wire.py       paths, tr_ids and field parsing
    errors.py     KIS message codes and the KIS branch of the error tree

Redis keys (prefix ``fleet``): ``fleet:kis:rate`` (zset), ``fleet:kis:token`` (string, PX),
``fleet:kis:token:issue`` (string, PX); see ratelimit.py and token.py.
"""

from broker.kis.adapter import KisBroker
from broker.kis.client import KisClient, KisConfig

__all__ = ["KisBroker", "KisClient", "KisConfig"]
