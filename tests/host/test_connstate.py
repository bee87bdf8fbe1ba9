"""The offloaded connection's lifecycle table: every (state, event) pair."""

from __future__ import annotations

import itertools

import pytest

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
