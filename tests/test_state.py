import itertools

import pytest

from trading.state import TRANSITIONS, InvalidTransition, WorkerEvent, WorkerState, next_state

ALLOWED = [
    (WorkerState.IDLE, WorkerEvent.START, WorkerState.SCAN),
    (WorkerState.IDLE, WorkerEvent.STOP, WorkerState.EXIT),
    (WorkerState.SCAN, WorkerEvent.BOUGHT, WorkerState.HOLD),
    (WorkerState.SCAN, WorkerEvent.ADOPTED, WorkerState.HOLD),
    (WorkerState.SCAN, WorkerEvent.STOP, WorkerState.EXIT),
    (WorkerState.HOLD, WorkerEvent.SOLD, WorkerState.SCAN),
    (WorkerState.HOLD, WorkerEvent.LOCK_LOST, WorkerState.SCAN),
    (WorkerState.HOLD, WorkerEvent.HANDED_OFF, WorkerState.SCAN),
    (WorkerState.HOLD, WorkerEvent.STOP, WorkerState.EXIT),
]


@pytest.mark.parametrize(("state", "event", "expected"), ALLOWED)
def test_allowed_transition(state: WorkerState, event: WorkerEvent, expected: WorkerState) -> None:
    assert next_state(state, event) is expected


def test_table_is_exactly_the_allowed_list() -> None:
    assert {(s, e): t for s, e, t in ALLOWED} == TRANSITIONS


FORBIDDEN = [
    (s, e)
    for s, e in itertools.product(WorkerState, WorkerEvent)
    if (s, e) not in {(a, b) for a, b, _ in ALLOWED}
]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN)
def test_forbidden_transition_raises(state: WorkerState, event: WorkerEvent) -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state(state, event)
    assert info.value.state is state
    assert info.value.event is event


def test_exit_is_terminal() -> None:
    for event in WorkerEvent:
        with pytest.raises(InvalidTransition):
            next_state(WorkerState.EXIT, event)
