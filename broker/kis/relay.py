"""The gateway's REST relay: KIS requests from the fleet's workers, forwarded within the budget.

(Being filled in: see `broker.kis.gateway`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class RelayReply:
    """KIS's answer as it came: HTTP status, KIS's own headers (``tr_id``, ``tr_cont``,
    ``gt_uid``, lower case) and the body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None
