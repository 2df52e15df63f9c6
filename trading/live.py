"""Live parameters: the fleet's strategy and risk parameters, changed without a restart.

A worker asks its `ParamSource` at the top of each step (SCAN and HOLD) whether the fleet's
parameters changed; a new `TradingConfig` applies from that step on, and the worker reports the
version it runs in the registry. In production (`worker.params.FleetParams`) asking costs one
Redis GET per step, or none while the source's watch (`WatchedSource`, which the worker runs
beside its loop) has heard of no change; a worker built without a source (tests, tools) runs
its first config for the whole day (`FIXED_PARAMS`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from trading.config import TradingConfig


class ParamSource(Protocol):
    """Where one worker's live parameters come from."""

    @property
    def version(self) -> int:
        """The version of the config `poll` last returned (0: the environment's)."""
        ...

    async def poll(self) -> TradingConfig | None:
        """The worker's config at the fleet's current version when that differs from `version`,
        else None (keep running what it runs). A version that cannot be read or applied is
        logged by the source and yields None: the worker keeps its config and asks again at its
        next step. Never raises for a server away or bad data."""
        ...


@runtime_checkable
class WatchedSource(ParamSource, Protocol):
    """A source that can hear of changes: `watch`, run beside the worker's loop for its day,
    lets `poll` skip the round trip while nothing changed. Cancelled when the worker ends;
    never raises for a server away (`poll` then asks every time)."""

    async def watch(self) -> None: ...


class FixedParams:
    """A source whose parameters never change: version 0, `poll` always None."""

    version = 0

    async def poll(self) -> TradingConfig | None:
        return None


FIXED_PARAMS = FixedParams()
