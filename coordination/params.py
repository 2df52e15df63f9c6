"""The fleet's live parameters in Redis: ``{prefix}:params`` and ``{prefix}:params:version``.

The hash holds only the settings changed from the environment (name in upper case -> value as
text); the version only ever rises. Both are replaced together by one script
(``params_publish.lua``), which refuses a version not newer than the one held, so two
publishers racing never take the fleet backwards. Workers read the version with one GET per
step and the whole set, with its version, in one MULTI when it changed.

This module only stores and reads text: what a value means, and whether it is valid, is the
settings' business (``worker.params``). The record of every change is the ledger's
(``param_changes``); Redis publishes its latest state.

    redis-cli HGETALL fleet:params
    redis-cli GET fleet:params:version
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, LuaScript, bounded, text
from coordination.bad_data import BadData, OnBadData, report
from coordination.keys import Keyspace

_PUBLISH = LuaScript("params_publish")


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
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.timeout_s = timeout_s
        self._on_bad_data = on_bad_data
        self._bad: str | None = None  # the bad version last reported: once, not every step

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
        """The published version (0: none). One GET: what a worker asks every step."""
        async with bounded("get params version", self.timeout_s):
            raw = await self.redis.get(self.keys.params_version)
        return self._version(raw)

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
