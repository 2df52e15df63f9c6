"""The notice stream ``{prefix}:events``: what happened in the fleet, in past tense.

Each entry has the fields ``type`` (a `NoticeType` value), ``worker_id``, ``symbol`` (empty when
the notice is not about one symbol), ``ts`` (ISO 8601 UTC with milliseconds, the same format the
lock scripts write) and ``data`` (a JSON object, ``{}`` when there is nothing more to say). The
stream is trimmed with ``MAXLEN ~ maxlen``. Lock notices (acquired, released, expired) are
written by the lock scripts themselves; everything else goes through `Notices.publish`.

Readers either follow the stream by id (`read`) or share it through a consumer group
(`ensure_group`, `consume`, `ack`), with `autoclaim` taking over entries a dead consumer left
pending.

An entry that cannot be read as a notice (``type`` or ``ts`` missing, a ``ts`` that is no ISO
8601 time, ``data`` that is no JSON object, bytes that are no UTF-8) was written by something
else. It never reaches a reader and never fails a call: `consume` and `autoclaim` dead-letter it
(`dead_letter`: logged at ERROR once, acknowledged, counted in ``{prefix}:events:dead`` and
through `on_bad_data`), `read` skips it with an ERROR log. A consumer that finds a readable
notice it still cannot use (a lock notice without a fence) dead-letters it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rexc
from loguru import logger
from redis.typing import EncodableT

from coordination._wire import (
    DEFAULT_TIMEOUT_S,
    LuaScript,
    bounded,
    now_iso,
    parse_iso,
    text,
    utc_iso,
)
from coordination.bad_data import BadData, OnBadData, report
from coordination.keys import Keyspace
from market.clock import Clock


class NoticeType(StrEnum):
    """Values of the ``type`` field. ``lock.lost`` is published by a holder that finds its lease
    gone; the other lock types come from the lock scripts and the worker's recovery.
    ``account.drift`` / ``account.drift_cleared`` come from the account reconciliation
    (`trading.reconcile`): the broker's account and the ledger disagree / agree again.
    ``order.failed``: an order ended REJECTED (refused by the broker, or not placed after the
    client's retries). ``worker.crashed`` / ``server.unreachable``: a worker stopped on an error,
    or on a server (``data.server``: broker, Postgres, Redis) still away after its retry budget.
    ``position.left_open``: a position still held at the close (``worker_id`` its owner).
    ``params.changed``: ``python -m worker params set|reset`` changed the fleet's live
    parameters (``worker_id`` empty; data: ``version``, ``by``, ``forced``, ``changes``, a list
    of ``key``, ``old``, ``new``, ``source``)."""

    WORKER_STATE = "worker.state"
    LOCK_ACQUIRED = "lock.acquired"
    LOCK_RELEASED = "lock.released"
    LOCK_EXPIRED = "lock.expired"
    LOCK_RECOVERED = "lock.recovered"
    LOCK_LOST = "lock.lost"
    ORDER_FILLED = "order.filled"
    RISK_HALT = "risk.halt"
    ACCOUNT_DRIFT = "account.drift"
    ACCOUNT_DRIFT_CLEARED = "account.drift_cleared"
    ORDER_FAILED = "order.failed"
    WORKER_CRASHED = "worker.crashed"
    SERVER_UNREACHABLE = "server.unreachable"
    POSITION_LEFT_OPEN = "position.left_open"
    PARAMS_CHANGED = "params.changed"


@dataclass(frozen=True)
class Notice:
    """One stream entry, parsed. `type` is a `NoticeType` unless a newer writer used a type this
    code does not know, in which case it is the raw string (compare with ``==`` either way)."""

    id: str
    type: NoticeType | str
    worker_id: str
    symbol: str | None
    ts: datetime
    data: Mapping[str, Any]


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):  # money travels as an exact decimal string, never a float
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} in notice data")


def _parse_type(raw: str) -> NoticeType | str:
    try:
        return NoticeType(raw)
    except ValueError:
        return raw


def parse_entry(entry_id: bytes | str, fields: Mapping[Any, Any]) -> Notice:
    """A Notice from an XRANGE/XREADGROUP entry (bytes or str replies).

    Raises ValueError, saying what is wrong, for an entry that is no notice: ``type`` or ``ts``
    missing, ``ts`` no ISO 8601 time, ``data`` no JSON object, a field that is no UTF-8.
    """
    f = {text(k): text(v) for k, v in fields.items()}
    for required in ("type", "ts"):
        if required not in f:
            raise ValueError(f"no {required} field")
    try:
        ts = parse_iso(f["ts"])
    except ValueError:
        raise ValueError(f"ts {f['ts'][:40]!r} is not an ISO 8601 time") from None
    try:
        data = orjson.loads(f.get("data") or "{}")
    except orjson.JSONDecodeError:
        raise ValueError(f"data {f['data'][:40]!r} is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"data {f['data'][:40]!r} is not a JSON object")
    return Notice(
        id=text(entry_id),
        type=_parse_type(f["type"]),
        worker_id=f.get("worker_id", ""),
        symbol=f.get("symbol") or None,
        ts=ts,
        data=data,
    )


def _parse_entries(entries: Sequence[Any] | None) -> tuple[list[Notice], list[tuple[str, str]]]:
    """The notices among `entries`, and (id, what is wrong) of those that are none."""
    notices, bad = [], []
    for entry_id, fields in entries or ():
        if fields is None:  # XAUTOCLAIM on Redis 6.2: an entry deleted since it was read
            continue
        try:
            notices.append(parse_entry(entry_id, fields))
        except ValueError as exc:  # UnicodeDecodeError is one too
            bad.append((text(entry_id), str(exc)))
    return notices, bad


def _group_entries(reply: Any) -> list[Any]:
    """The entries of our one stream from an XREADGROUP reply, whatever the protocol."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: entries} or {stream: [entries]}
        entries = next(iter(reply.values()))
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        return list(entries)
    return list(reply[0][1])  # RESP2: [[stream, entries]]


_DEAD_LETTER = LuaScript("dead_letter")


class Notices:
    """Publish to and read the notice stream. Every call is bounded by `timeout_s`; entries that
    are no notice are reported through `on_bad_data(kind, key)` (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        maxlen: int = 100_000,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Clock | None = None,
        on_bad_data: OnBadData | None = None,
    ) -> None:
        if maxlen <= 0:
            raise ValueError(f"maxlen must be positive, got {maxlen!r}")
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.timeout_s = timeout_s
        self._clock = clock
        self._on_bad_data = on_bad_data

    async def publish(
        self,
        type: NoticeType,
        worker_id: str,
        symbol: str | None,
        data: Mapping[str, Any] | None = None,
    ) -> str:
        """Append a notice; returns its stream id."""
        ts = now_iso() if self._clock is None else utc_iso(self._clock.now())
        fields: dict[EncodableT, EncodableT] = {
            "type": NoticeType(type).value,
            "worker_id": worker_id,
            "symbol": symbol or "",
            "ts": ts,
            "data": orjson.dumps(dict(data or {}), default=_json_default),
        }
        async with bounded(f"publish {type}", self.timeout_s):
            entry_id = await self.redis.xadd(
                self.keys.events, fields, maxlen=self.maxlen, approximate=True
            )
        return text(entry_id)

    async def read(self, since_id: str = "0-0", count: int = 100) -> list[Notice]:
        """Up to `count` notices with ids strictly after `since_id`, oldest first. Entries that
        are no notice count towards `count` and are skipped, logged at ERROR on every read
        (with no group, there is nobody to acknowledge them for)."""
        async with bounded("read notices", self.timeout_s):
            entries = await self.redis.xrange(
                self.keys.events, min=f"({since_id}", max="+", count=count
            )
        notices, bad = _parse_entries(entries)
        for entry_id, problem in bad:
            logger.error("notice {} of {} skipped: {}", entry_id, self.keys.events, problem)
        return notices

    async def dead_letter(self, group: str, entries: Sequence[tuple[str, str]]) -> int:
        """Acknowledge in `group` entries no consumer can use, given as (id, what is wrong), and
        count them in ``{prefix}:events:dead`` (field `group`). Each one this call acknowledged
        (that was still pending) is logged at ERROR and reported through `on_bad_data`, so an
        entry is reported once however many consumers race on it. Returns how many those were.
        """
        if not entries:
            return 0
        k = self.keys
        async with bounded(f"dead-letter {group}", self.timeout_s):
            flags = text(
                await _DEAD_LETTER(
                    self.redis, 2, k.events, k.events_dead, group, *(i for i, _ in entries)
                )
            )
        done = 0
        for (entry_id, problem), flag in zip(entries, flags, strict=True):
            if flag == "1":
                report(
                    self._on_bad_data,
                    BadData.EVENT,
                    f"{k.events} {entry_id}",
                    f"{problem}; dead-lettered by group {group}",
                )
                done += 1
        return done

    async def ensure_group(self, group: str, start_id: str = "0") -> bool:
        """Create consumer group `group` (and the stream) if absent. True if it was created.

        `start_id` "0" delivers the whole retained stream to the new group, "$" only new notices.
        """
        async with bounded(f"create group {group}", self.timeout_s):
            try:
                await self.redis.xgroup_create(self.keys.events, group, id=start_id, mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                return False
        return True

    async def consume(
        self, group: str, consumer: str, count: int = 100, block_ms: int | None = None
    ) -> list[Notice]:
        """New notices for `consumer` in `group`; they stay pending until `ack`ed.

        With `block_ms`, wait up to that long for the first one. The wait must be shorter than
        the client's socket timeout, or redis-py would report the quiet stream as a timeout.
        """
        deadline = self.timeout_s
        if block_ms is not None:
            if block_ms < 0:
                raise ValueError(f"block_ms must be >= 0, got {block_ms!r}")
            socket_timeout = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
            if socket_timeout is not None and block_ms / 1000 >= socket_timeout:
                raise ValueError(
                    f"block_ms={block_ms} must be below the client's socket timeout "
                    f"({socket_timeout} s)"
                )
            deadline += block_ms / 1000
        async with bounded(f"consume {group}/{consumer}", deadline):
            reply = await self.redis.xreadgroup(
                group, consumer, {self.keys.events: ">"}, count=count, block=block_ms
            )
        notices, bad = _parse_entries(_group_entries(reply))
        await self.dead_letter(group, bad)
        return notices

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        """Acknowledge handled notices; returns how many were pending."""
        if not ids:
            return 0
        async with bounded(f"ack {group}", self.timeout_s):
            return int(await self.redis.xack(self.keys.events, group, *ids))

    async def autoclaim(
        self, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[Notice]:
        """Take over up to `count` notices pending in `group` for at least `min_idle_ms`
        (their consumer died or stalled); they become `consumer`'s to handle and `ack`.
        Entries that are no notice are dead-lettered instead of returned."""
        claimed: list[Notice] = []
        cursor = "0-0"
        while len(claimed) < count:
            async with bounded(f"autoclaim {group}/{consumer}", self.timeout_s):
                reply = await self.redis.xautoclaim(
                    self.keys.events,
                    group,
                    consumer,
                    min_idle_ms,
                    start_id=cursor,
                    count=count - len(claimed),
                )
            notices, bad = _parse_entries(reply[1])
            await self.dead_letter(group, bad)
            claimed += notices
            cursor = text(reply[0])
            if cursor == "0-0":
                break
        return claimed
