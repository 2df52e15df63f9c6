"""The fleet's live parameters in Redis: ``{prefix}:params`` and ``{prefix}:params:version``.

The hash holds only the settings changed from the environment (name in upper case -> value as
text); the version only ever rises. Both are replaced together by one script
(``params_publish.lua``), which refuses a version not newer than the one held, so two
publishers racing never take the fleet backwards. Workers read the version at every step and
the whole set, with its version, in one MULTI when it changed.

Reading the version is one GET, unless a watch (`RedisParams.watch`, one per instance: the
workers of a process share it) is running: it follows the notice stream (XREAD BLOCK) from
the state it read, and the version read once stays valid until a ``params.changed`` notice
arrives, or the stream stays quiet for `watch_block_ms` (a set published without a notice: a
republish after a Redis restart, a hand edit), or the watch stops. So a change announced by
``params set`` reaches a worker's first step after this process hears the notice, and the
steps in between cost no round trip.

This module only stores and reads text: what a value means, and whether it is valid, is the
settings' business (``worker.params``). The record of every change is the ledger's
(``param_changes``); Redis publishes its latest state.

    redis-cli HGETALL fleet:params
    redis-cli GET fleet:params:version
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
from loguru import logger
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, LuaScript, bounded, text
from coordination.bad_data import BadData, OnBadData, report
from coordination.errors import CoordinationError
from coordination.keys import Keyspace
from coordination.notices import NoticeType

_PUBLISH = LuaScript("params_publish")
_CHANGED = NoticeType.PARAMS_CHANGED.value
#: quiet stream time after which a watch reads the version again (below the socket timeout)
WATCH_BLOCK_MS = 1_000
_WATCH_RETRY_S = 1.0  # a watch that lost Redis tries again after this long (wall seconds)


@dataclass(frozen=True)
class ParamSet:
    """The live set as Redis holds it: `version` 0 and no values when none was ever set."""

    version: int
    values: Mapping[str, str] = field(default_factory=dict)


class RedisParams:
    """Read and publish the fleet's live parameters. Every call is bounded by `timeout_s`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_bad_data: OnBadData | None = None,
        watch_block_ms: int = WATCH_BLOCK_MS,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.timeout_s = timeout_s
        self._on_bad_data = on_bad_data
        self._bad: str | None = None  # the bad version last reported: once, not every step
        self.watch_block_ms = watch_block_ms
        # the watch (module docstring): the version read while it ran and nothing changed
        # since (None: read it); `_gen` counts what made a read stale, so a GET that was under
        # way when a notice came is not kept
        self._watching = False
        self._known: int | None = None
        self._gen = 0
        self._watch_lock: anyio.Lock | None = None
        self._watch_failing = False  # its failure was logged: once until it is back

    def _version(self, raw: Any) -> int:
        if raw is None:
            return 0
        try:
            version = int(text(raw))
        except ValueError:
            version = -1
        if version < 0:
            if self._bad != text(raw):
                self._bad = text(raw)
                report(self._on_bad_data, BadData.PARAMS, self.keys.params_version,
                       f"{text(raw)[:40]!r} is no version")  # fmt: skip
            return 0
        self._bad = None
        return version

    async def version(self) -> int:
        """The published version (0: none), what a worker asks every step: one GET, or none
        while a watch runs and has heard of no change since the last one."""
        known = self._known
        if known is not None:
            return known
        gen = self._gen
        async with bounded("get params version", self.timeout_s):
            raw = await self.redis.get(self.keys.params_version)
        version = self._version(raw)
        if self._watching and gen == self._gen:
            self._known = version
        return version

    def _forget(self) -> None:
        """The version read so far may be stale: the next `version` reads it."""
        self._gen += 1
        self._known = None

    async def watch(self) -> None:
        """Keep `version` current without a GET per call, until cancelled (module docstring).
        Any number of tasks may call it: one of them watches, the others wait to take over
        when it stops. Redis away is logged once; `version` reads every time meanwhile."""
        if self._watch_lock is None:
            self._watch_lock = anyio.Lock()
        async with self._watch_lock:
            while True:
                try:
                    await self._follow()
                except Exception as exc:  # the watch is an optimisation: it never fails a worker
                    if not self._watch_failing:
                        self._watch_failing = True
                        logger.opt(exception=not isinstance(exc, CoordinationError)).warning(
                            "live parameters' watch stopped ({}); the version is read every "
                            "step until it is back", exc)  # fmt: skip
                finally:
                    self._watching = False
                    self._forget()
                await anyio.sleep(_WATCH_RETRY_S)

    async def _follow(self) -> None:
        """The watch: the stream's last entry and the version read together, then every new
        entry; returns never (raises a `CoordinationError` when Redis fails)."""
        events = self.keys.events
        async with (
            bounded("watch params", self.timeout_s),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            pipe.xrevrange(events, count=1)
            pipe.get(self.keys.params_version)
            last, raw = await pipe.execute()
        last_id = text(last[0][0]) if last else "0-0"
        self._forget()
        self._known = self._version(raw)
        self._watching = True
        if self._watch_failing:
            self._watch_failing = False
            logger.info("live parameters' watch back")
        wait_s = self.timeout_s + self.watch_block_ms / 1000
        while True:
            async with bounded("watch params", wait_s):
                reply = await self.redis.xread(
                    {events: last_id}, count=100, block=self.watch_block_ms
                )
            entries = _stream_entries(reply)
            if not entries or any(_type_of(fields) == _CHANGED for _, fields in entries):
                self._forget()  # quiet (a publication without a notice?) or a change
            if entries:
                last_id = text(entries[-1][0])

    async def read(self) -> ParamSet:
        """The published set and its version, read together (MULTI)."""
        async with (
            bounded("read params", self.timeout_s),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            pipe.get(self.keys.params_version)
            pipe.hgetall(self.keys.params)
            raw_version, raw_values = await pipe.execute()
        values = {text(k): text(v) for k, v in (raw_values or {}).items()}
        return ParamSet(self._version(raw_version), values)

    async def publish(self, version: int, values: Mapping[str, str]) -> bool:
        """Replace the set with `values` at `version`; False (nothing written) when Redis
        already holds that version or a newer one."""
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise ValueError(f"version must be a positive integer, got {version!r}")
        args: list[EncodableT] = [version]
        for name, value in sorted(values.items()):
            args += [name, value]
        k = self.keys
        async with bounded(f"publish params v{version}", self.timeout_s):
            done = await _PUBLISH(self.redis, 2, k.params, k.params_version, *args)
        return int(done) == 1


def _stream_entries(reply: Any) -> Sequence[Any]:
    """The (id, fields) entries of an XREAD reply on one stream, whatever the protocol."""
    if not reply:
        return []
    if isinstance(reply, Mapping):  # RESP3: {stream: [entries]}
        entries: Sequence[Any] = next(iter(reply.values()), [])
        return entries
    entries = reply[0][1]
    return entries


def _type_of(fields: Any) -> str | None:
    raw = fields.get(b"type", fields.get("type")) if isinstance(fields, Mapping) else None
    return None if raw is None else text(raw)
