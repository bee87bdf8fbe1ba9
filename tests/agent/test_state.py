"""The connection lifecycle table: every (state, event) pair, h2 style."""

from __future__ import annotations

import itertools

import pytest

from agent import TRANSITIONS, Action, ConnEvent, ConnState, StateError, transition
from agent._state import REASON_FOR_EVENT

S, E, A = ConnState, ConnEvent, Action

ALL_PAIRS = list(itertools.product(ConnState, ConnEvent))

#: actions that end the connection (the shell forgets it afterwards)
TERMINAL_ACTIONS = {A.REPORT_CONNECT_FAILED, A.CLOSE_AND_REPORT, A.ABORT_AND_REPORT,
                    A.REPORT_CLOSED, A.FINISH_CLOSE, A.ABORT_SILENT}

#: the pairs that cannot happen: a client event before any TCP connection exists,
#: or a connect outcome for a connection that is already established
EXPECTED_INVALID = {
    *((S.CONNECTING, e) for e in (E.CLIENT_EOF, E.CLIENT_RESET, E.FRAMING_ERROR,
                                  E.LIMIT_EXCEEDED, E.PENDING_DELIVERED, E.WRITES_DRAINED)),
    *((s, e) for s in (S.OPEN, S.DRAINING, S.CLOSING)
      for e in (E.CONNECT_OK, E.CONNECT_FAILED)),
}


def test_table_is_total() -> None:
    assert set(TRANSITIONS) == set(ConnState)
    for state in ConnState:
        assert set(TRANSITIONS[state]) == set(ConnEvent), state


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS,
                         ids=[f"{s.name}-{e.name}" for s, e in ALL_PAIRS])
def test_every_pair(state: ConnState, event: ConnEvent) -> None:
    action, nxt = TRANSITIONS[state][event]
    if (state, event) in EXPECTED_INVALID:
        assert action is A.INVALID
        with pytest.raises(StateError):
            transition(state, event)
        return
    assert transition(state, event) == (action, nxt)
    # terminal actions, and only they, lead to CLOSED from a live state
    if state is not S.CLOSED:
        assert (action in TERMINAL_ACTIONS) == (nxt is S.CLOSED), (state, event)
    # CLOSED absorbs everything quietly; host data that crossed is counted
    if state is S.CLOSED:
        assert nxt is S.CLOSED
        assert action is (A.DROP_HOST_DATA if event is E.HOST_DATA else A.IGNORE)


def test_link_loss_and_restart_end_every_live_state_silently() -> None:
    for state in (S.CONNECTING, S.OPEN, S.DRAINING, S.CLOSING):
        for ev in (E.LINK_LOST, E.PEER_RESTARTED):
            assert transition(state, ev) == (A.ABORT_SILENT, S.CLOSED)


def test_host_data_is_written_only_while_the_client_can_get_it() -> None:
    written = {s for s in ConnState if TRANSITIONS[s][E.HOST_DATA][0] is A.WRITE}
    assert written == {S.OPEN, S.DRAINING}


def test_close_paths() -> None:
    # host CLOSE flushes first, then finishes when the writes drained
    assert transition(S.OPEN, E.HOST_CLOSE) == (A.BEGIN_CLOSE, S.CLOSING)
    assert transition(S.CLOSING, E.WRITES_DRAINED) == (A.FINISH_CLOSE, S.CLOSED)
    # a client FIN drains what was parsed before it, then closes gracefully
    assert transition(S.OPEN, E.CLIENT_EOF) == (A.START_DRAIN, S.DRAINING)
    assert transition(S.DRAINING, E.PENDING_DELIVERED) == (A.CLOSE_AND_REPORT, S.CLOSED)
    # bad input resets the client
    assert transition(S.OPEN, E.FRAMING_ERROR) == (A.ABORT_AND_REPORT, S.CLOSED)


def test_reasons_are_machine_names() -> None:
    for ev, reason in REASON_FOR_EVENT.items():
        assert reason.isidentifier() and reason.islower(), (ev, reason)
