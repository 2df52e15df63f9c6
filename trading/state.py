"""The worker's state machine as data: states, events, and the transition table.

    IDLE --start--> SCAN --bought/adopted--> HOLD --sold/lock_lost/handed_off--> SCAN
      \\                \\                        \\
       `--stop--> EXIT   `--stop--> EXIT          `--stop--> EXIT

Anything not in `TRANSITIONS` raises `InvalidTransition`. Every transition is logged in one
fixed format ("state SCAN -> HOLD on bought") by the caller that persists it.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    IDLE = "IDLE"
    SCAN = "SCAN"
    HOLD = "HOLD"
    EXIT = "EXIT"


class WorkerEvent(StrEnum):
    START = "start"  # the session is open
    BOUGHT = "bought"  # an entry filled (fully or partly): we hold a position
    ADOPTED = "adopted"  # took over an orphaned position
    SOLD = "sold"  # the position is flat again
    LOCK_LOST = "lock_lost"  # the lease expired or was taken: stop acting on the symbol
    HANDED_OFF = "handed_off"  # position left for another worker to adopt
    STOP = "stop"  # close reached, SIGTERM, or fatal error


TRANSITIONS: dict[tuple[WorkerState, WorkerEvent], WorkerState] = {
    (WorkerState.IDLE, WorkerEvent.START): WorkerState.SCAN,
    (WorkerState.IDLE, WorkerEvent.STOP): WorkerState.EXIT,
    (WorkerState.SCAN, WorkerEvent.BOUGHT): WorkerState.HOLD,
    (WorkerState.SCAN, WorkerEvent.ADOPTED): WorkerState.HOLD,
    (WorkerState.SCAN, WorkerEvent.STOP): WorkerState.EXIT,
    (WorkerState.HOLD, WorkerEvent.SOLD): WorkerState.SCAN,
    (WorkerState.HOLD, WorkerEvent.LOCK_LOST): WorkerState.SCAN,
    (WorkerState.HOLD, WorkerEvent.HANDED_OFF): WorkerState.SCAN,
    (WorkerState.HOLD, WorkerEvent.STOP): WorkerState.EXIT,
}


class InvalidTransition(RuntimeError):
    def __init__(self, state: WorkerState, event: WorkerEvent) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


def next_state(state: WorkerState, event: WorkerEvent) -> WorkerState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None
