"""The offloaded connection's lifecycle table: every (state, event) pair."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux_rpc._connstate import TRANSITIONS, Action, ConnEvent, ConnState, transition

S, E, A = ConnState, ConnEvent, Action
TERMINAL = {S.CLOSED, S.BROKEN}


def test_table_is_complete() -> None:
    assert set(TRANSITIONS) == set(itertools.product(ConnState, ConnEvent))


@pytest.mark.parametrize("state,event", list(itertools.product(ConnState, ConnEvent)))
def test_every_pair(state: ConnState, event: ConnEvent) -> None:
    action, nxt = transition(state, event)
    assert isinstance(action, Action) and isinstance(nxt, ConnState)
    # a terminal state is never left, except BROKEN -> CLOSED when the app closes
    if state in TERMINAL:
        if (state, event) == (S.BROKEN, E.LOCAL_CLOSE):
            assert (action, nxt) == (A.NONE, S.CLOSED)
        else:
            assert nxt is state
            assert action in (A.IGNORE, A.NONE)
    # the application's close always ends up closed or closing, never sends twice
    if event is E.LOCAL_CLOSE:
        assert nxt in (S.CLOSING, S.CLOSED)
        if state in (S.CLOSING, S.CLOSED, S.BROKEN, S.PEER_CLOSED):
            assert action is not A.SEND_CLOSE
    # data is only ever queued while the connection can still be received from
    if action is A.DELIVER:
        assert state in (S.CONNECTING, S.OPEN) and nxt is state
    # losing the link never leaves a live state behind
    if event is E.LINK_LOST:
        assert nxt in (S.BROKEN, S.CLOSED, S.PEER_CLOSED)
    # actions that wake waiters with an error land in a terminal state
    if action in (A.BREAK, A.BREAK_AND_CLOSE, A.CONNECT_FAILED):
        assert nxt is S.BROKEN
    if action is A.FORGET:
        assert nxt is S.CLOSED


@pytest.mark.parametrize(
    "path,expected",
    [
        ([E.CONNECTED_OK, E.DATA, E.CREDIT, E.LOCAL_CLOSE, E.DATA, E.CLOSED_ACK], S.CLOSED),
        ([E.CONNECTED_OK, E.PEER_EOF, E.LINK_LOST, E.LOCAL_CLOSE], S.CLOSED),
        ([E.CONNECTED_OK, E.PEER_ERROR, E.DATA, E.LOCAL_CLOSE], S.CLOSED),
        ([E.CONNECTED_FAIL, E.DATA], S.BROKEN),
        ([E.DATA, E.CONNECTED_OK, E.OVERRUN], S.BROKEN),
        ([E.LOCAL_CLOSE, E.CONNECTED_OK, E.DATA, E.CLOSED_ACK, E.DATA], S.CLOSED),
        ([E.CONNECTED_OK, E.LINK_LOST, E.DATA, E.CREDIT], S.BROKEN),
        # half-close: replies go on (credit), then our close is acknowledged
        ([E.CONNECTED_OK, E.DATA, E.PEER_HALF_CLOSE, E.CREDIT, E.LOCAL_CLOSE, E.CLOSED_ACK],
         S.CLOSED),
        ([E.CONNECTED_OK, E.PEER_HALF_CLOSE, E.PEER_ERROR], S.BROKEN),  # half_close_timeout
        ([E.CONNECTED_OK, E.PEER_HALF_CLOSE, E.PEER_EOF, E.LOCAL_CLOSE], S.CLOSED),
        ([E.PEER_HALF_CLOSE, E.CONNECTED_OK, E.CREDIT], S.HALF_CLOSED),  # EOF overtook it
        ([E.CONNECTED_OK, E.LOCAL_CLOSE, E.PEER_HALF_CLOSE, E.CLOSED_ACK], S.CLOSED),
    ],
)
def test_walks(path: list[ConnEvent], expected: ConnState) -> None:
    state = S.CONNECTING
    for ev in path:
        _, state = transition(state, ev)
    assert state is expected


def test_hot_path_matches_the_table() -> None:
    # Host._on_message delivers DATA for OPEN connections without the lookup
    assert transition(S.OPEN, E.DATA) == (A.DELIVER, S.OPEN)
    # ... and CREDIT likewise
    assert transition(S.OPEN, E.CREDIT) == (A.ADD_CREDIT, S.OPEN)


def test_half_close_keeps_sending_and_ends_the_incoming_stream() -> None:
    assert transition(S.OPEN, E.PEER_HALF_CLOSE) == (A.HALF_EOF, S.HALF_CLOSED)
    # the agent's credit keeps the replies flowing; our close is the normal one
    assert transition(S.HALF_CLOSED, E.CREDIT) == (A.ADD_CREDIT, S.HALF_CLOSED)
    assert transition(S.HALF_CLOSED, E.LOCAL_CLOSE) == (A.SEND_CLOSE, S.CLOSING)
    # nothing may follow EOF: counted, never delivered
    assert transition(S.HALF_CLOSED, E.DATA) == (A.PROTOCOL_ERROR, S.HALF_CLOSED)
    assert transition(S.HALF_CLOSED, E.PEER_HALF_CLOSE) == (A.PROTOCOL_ERROR, S.HALF_CLOSED)
    # the old full close still means "the agent forgot it: sending is over"
    assert transition(S.OPEN, E.PEER_EOF) == (A.EOF, S.PEER_CLOSED)


_LIVE_SENDERS = {S.CONNECTING, S.OPEN, S.HALF_CLOSED}


@given(st.lists(st.sampled_from(ConnEvent), max_size=30))
def test_random_walks_keep_the_half_close_promises(events: list[ConnEvent]) -> None:
    """Whatever the agent and the application do: HALF_EOF happens at most
    once, nothing is delivered after it, CLOSE is sent at most once, and a
    connection that could send before an EOF still can after it."""
    state, half_eofs, closes, eof_seen = S.CONNECTING, 0, 0, False
    for ev in events:
        action, nxt = transition(state, ev)
        if action is A.HALF_EOF:
            half_eofs += 1
            assert state in _LIVE_SENDERS and nxt is S.HALF_CLOSED
            eof_seen = True
        if action is A.DELIVER:
            assert not eof_seen
        if action in (A.SEND_CLOSE, A.BREAK_AND_CLOSE):
            closes += 1
        if ev is E.PEER_HALF_CLOSE and state in (S.CONNECTING, S.OPEN):
            assert nxt in _LIVE_SENDERS
        state = nxt
    assert half_eofs <= 1 and closes <= 1
