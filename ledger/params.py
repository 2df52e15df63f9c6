"""The record of the fleet's live parameters (`param_changes`): statements and records.

A change is one transaction under an advisory lock: read the live set and its version, let the
caller decide what changes (`plan`: it validates, and may refuse by raising), insert one row per
changed setting at the next version. So two changes racing get distinct versions, and each one
is decided on the set the other left: none is lost. What a value means is not the ledger's
business; it stores and returns text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.models import ParamChange

#: pg_advisory_xact_lock key serializing changes: "TFPARAMS" in short
_CHANGE_LOCK_KEY = 0x5446_5041_524D


@dataclass(frozen=True)
class LiveValue:
    """A setting set live: its value as text, and the change that set it."""

    value: str
    version: int
    changed_at: datetime
    changed_by: str


@dataclass(frozen=True)
class ParamState:
    """The live set: the settings set live (name -> `LiveValue`) and the latest version (0:
    never changed)."""

    version: int = 0
    live: dict[str, LiveValue] = field(default_factory=dict)

    def values(self) -> dict[str, str]:
        """Name -> value text, as Redis publishes it."""
        return {k: v.value for k, v in self.live.items()}


@dataclass(frozen=True)
class ParamEdit:
    """One setting a change touches: effective value before and after, as text; `live` False
    when it returns to the environment's value."""

    key: str
    old: str
    new: str
    live: bool


@dataclass(frozen=True)
class ParamChangeRecord:
    """One row of `param_changes`."""

    version: int
    key: str
    old_value: str
    new_value: str
    live: bool
    changed_by: str
    changed_at: datetime
    forced: bool


#: decides a change on the current live set: the edits to record (none: nothing changes), or
#: raises to refuse it (the transaction rolls back, nothing is recorded)
Plan = Callable[[ParamState], Sequence[ParamEdit]]


async def read_state(s: AsyncSession) -> ParamState:
    """The live set: the latest row per key, those with `live`; and the latest version."""
    latest = (
        select(ParamChange)
        .ext(distinct_on(ParamChange.key))
        .order_by(ParamChange.key, ParamChange.version.desc())
    )
    rows = (await s.execute(latest)).scalars().all()
    version = (await s.execute(select(func.coalesce(func.max(ParamChange.version), 0)))).scalar()
    live = {
        r.key: LiveValue(r.new_value, r.version, r.changed_at, r.changed_by) for r in rows if r.live
    }
    return ParamState(int(version or 0), live)


async def change(
    s: AsyncSession, plan: Plan, *, by: str, at: datetime, forced: bool
) -> tuple[ParamState, list[ParamChangeRecord]]:
    """Decide and record one change (see the module docstring); the live set after it and the
    rows recorded (none: nothing changed, no version used)."""
    await s.execute(select(func.pg_advisory_xact_lock(_CHANGE_LOCK_KEY)))
    state = await read_state(s)
    edits = list(plan(state))
    if not edits:
        return state, []
    version = state.version + 1
    records = [
        ParamChangeRecord(version, e.key, e.old, e.new, e.live, by, at, forced) for e in edits
    ]
    await s.execute(
        insert(ParamChange),
        [
            {"version": r.version, "key": r.key, "old_value": r.old_value,
             "new_value": r.new_value, "live": r.live, "changed_by": r.changed_by,
             "changed_at": r.changed_at, "forced": r.forced}
            for r in records
        ],
    )  # fmt: skip
    live = dict(state.live)
    for r in records:
        if r.live:
            live[r.key] = LiveValue(r.new_value, version, at, by)
        else:
            live.pop(r.key, None)
    return ParamState(version, live), records


async def history(s: AsyncSession, limit: int) -> list[ParamChangeRecord]:
    """The latest `limit` rows, newest first."""
    stmt = select(ParamChange).order_by(ParamChange.version.desc(), ParamChange.key).limit(limit)
    return [
        ParamChangeRecord(
            r.version, r.key, r.old_value, r.new_value, r.live, r.changed_by, r.changed_at, r.forced
        )
        for r in (await s.execute(stmt)).scalars()
    ]
