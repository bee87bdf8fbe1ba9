"""The connection lifecycle table: every (state, event) pair, h2 style."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import TRANSITIONS, Action, ConnEvent, ConnState, StateError, transition
from agent._state import REASON_FOR_EVENT

S, E, A = ConnState, ConnEvent, Action

ALL_PAIRS = list(itertools.product(ConnState, ConnEvent))

#: actions that end the connection (the shell forgets it afterwards)
TERMINAL_ACTIONS = {A.REPORT_CONNECT_FAILED, A.CLOSE_AND_REPORT, A.ABORT_AND_REPORT,
                    A.REPORT_CLOSED, A.FINISH_CLOSE, A.ABORT_SILENT, A.EXPIRE}

#: every state but the terminal one (derived: a new state is covered at once)
LIVE = tuple(s for s in ConnState if s is not S.CLOSED)

#: the pairs that cannot happen: a client event before any TCP connection exists,
#: or a connect outcome for a connection that is already established
EXPECTED_INVALID = {
    *((S.CONNECTING, e) for e in (E.CLIENT_EOF, E.CLIENT_CLOSED, E.CLIENT_RESET,
                                  E.FRAMING_ERROR, E.LIMIT_EXCEEDED, E.PENDING_DELIVERED,
                                  E.WRITES_DRAINED, E.HALF_CLOSE_TIMEOUT)),
    *((s, e) for s in LIVE if s is not S.CONNECTING
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
    for state in LIVE:
        for ev in (E.LINK_LOST, E.PEER_RESTARTED):
            assert transition(state, ev) == (A.ABORT_SILENT, S.CLOSED)


def test_host_data_is_written_only_while_the_client_can_get_it() -> None:
    written = {s for s in ConnState if TRANSITIONS[s][E.HOST_DATA][0] is A.WRITE}
    # a half-closed client still reads; a TLS one that closed cannot (the
    # closed transport drops the write, the table keeps the credit honest)
    assert written == {S.OPEN, S.DRAINING, S.HALF_CLOSED, S.DRAINING_CLOSED}


def test_close_paths() -> None:
    # host CLOSE flushes first, then finishes when the writes drained
    assert transition(S.OPEN, E.HOST_CLOSE) == (A.BEGIN_CLOSE, S.CLOSING)
    assert transition(S.CLOSING, E.WRITES_DRAINED) == (A.FINISH_CLOSE, S.CLOSED)
    # a client FIN drains what was parsed before it, tells the host EOF and
    # keeps answering until the host closes (flush, then FIN)
    assert transition(S.OPEN, E.CLIENT_EOF) == (A.START_DRAIN, S.DRAINING)
    assert transition(S.DRAINING, E.PENDING_DELIVERED) == (A.REPORT_EOF, S.HALF_CLOSED)
    assert transition(S.HALF_CLOSED, E.HOST_CLOSE) == (A.BEGIN_CLOSE, S.CLOSING)
    # ... or until the host stays silent too long
    assert transition(S.HALF_CLOSED, E.HALF_CLOSE_TIMEOUT) == (A.EXPIRE, S.CLOSED)
    # TLS cannot half-close: drain, then close as before
    assert transition(S.OPEN, E.CLIENT_CLOSED) == (A.START_DRAIN, S.DRAINING_CLOSED)
    assert transition(S.DRAINING_CLOSED, E.PENDING_DELIVERED) == (A.CLOSE_AND_REPORT,
                                                                  S.CLOSED)
    # bad input resets the client
    assert transition(S.OPEN, E.FRAMING_ERROR) == (A.ABORT_AND_REPORT, S.CLOSED)


def test_reasons_are_machine_names() -> None:
    for ev, reason in REASON_FOR_EVENT.items():
        assert reason.isidentifier() and reason.islower(), (ev, reason)


def test_eof_is_reported_once_and_only_after_everything_was_delivered() -> None:
    reports = {(s, e) for s in ConnState for e in ConnEvent
               if TRANSITIONS[s][e][0] is A.REPORT_EOF}
    assert reports == {(S.DRAINING, E.PENDING_DELIVERED)}
    # and nothing leads back into a state that reads or reports EOF again
    for e in ConnEvent:
        for s in (S.HALF_CLOSED, S.DRAINING_CLOSED, S.CLOSING):
            action, nxt = TRANSITIONS[s][e]
            assert nxt not in (S.OPEN, S.DRAINING), (s, e)


def test_half_close_timeout_only_ends_a_half_closed_connection() -> None:
    for s in ConnState:
        action, nxt = TRANSITIONS[s][E.HALF_CLOSE_TIMEOUT]
        if s is S.HALF_CLOSED:
            assert (action, nxt) == (A.EXPIRE, S.CLOSED)
        elif s is S.CONNECTING:
            assert action is A.INVALID
        else:
            assert (action, nxt) == (A.IGNORE, s)


def test_every_live_state_is_reachable_from_open_or_connecting() -> None:
    seen, todo = {S.CONNECTING}, [S.CONNECTING]
    while todo:
        s = todo.pop()
        for action, nxt in TRANSITIONS[s].values():
            if action is not A.INVALID and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(ConnState)


@given(st.sampled_from([S.CONNECTING, S.OPEN]), st.lists(st.sampled_from(ConnEvent), max_size=40))
def test_random_walks_report_eof_at_most_once_and_only_after_a_fin(
        start: ConnState, events: list[ConnEvent]) -> None:
    state, fin, eofs, host_closed = start, False, 0, False
    for ev in events:
        action, nxt = TRANSITIONS[state][ev]
        if action is A.INVALID:
            continue  # the shell never produces these (test_every_pair)
        if ev is E.CLIENT_EOF and state in (S.OPEN,):
            fin = True
        if ev is E.HOST_CLOSE and state is not S.CLOSED:
            host_closed = True
        if action is A.REPORT_EOF:
            eofs += 1
            assert fin and not host_closed
        if state is S.CLOSED:
            assert nxt is S.CLOSED
        # a half-closed connection writes replies until the host closes it
        if state is S.HALF_CLOSED and ev is E.HOST_DATA:
            assert action is A.WRITE
        state = nxt
    assert eofs <= 1
