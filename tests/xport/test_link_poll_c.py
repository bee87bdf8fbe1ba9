"""``Link.poll`` in one C call (``xport._linkfast.Poller``, used past the
peer's HELLO when the backend receives straight into bytes: AF_XDP) against
the Python poll it stands for (``Link._poll_c = None``), over the fake AF_XDP
rings of test_umem_rings (no kernel): the random receive batches of
test_link_fast_frames (clean frames mixed with every §1-§4 anomaly,
fragments, control messages, restarts, counters near the wrap), delivered a
few frames at a time and polled in random slices, with ``raw_data``,
``raw_runs`` or objects. Both must return the same messages (types
included) and leave the same statistics, handshake and credit state and
``_last_rx``. Skipped only when ``XPORT_PURE_PYTHON=1`` forces the fallback."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_link_fast_frames import _shape, batches  # beside this file
from test_umem_rings import PAYLOAD, make_fake

from xport import _link
from xport._backend import BackendStats
from xport._link import Link, LinkConfig
from xport._protocol import Role

pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)


def _receive(c_poll: bool, frames: list[bytes], raw: int, per_poll: int, slice_: int) -> Any:
    be, kern, _ = make_fake(0, n_rx=8, rx_ring=4)
    be.statistics = lambda: BackendStats()  # type: ignore[method-assign]  # no kernel counters
    try:
        link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD), session=1)
        assert link._poll_c is not None
        if not c_poll:
            link._poll_c = None
        link.raw_data = raw == 1
        link.raw_runs = raw == 2
        restarts: list[bool] = []
        link.on_peer_hello = lambda hello, restarted: restarts.append(restarted)
        got: list[Any] = []
        pending = [f[:PAYLOAD] for f in frames]
        clock = 0.0
        while pending:
            for _ in range(slice_):
                if pending and kern.receive(pending[0]):
                    pending.pop(0)
            clock += 1.0
            batch = link.poll(per_poll, clock if per_poll % 2 else None)
            got += [_shape(m) for m in batch]
        got += [_shape(m) for m in link.poll(64, 99.0)]
        stats = asdict(link.stats)
        stats.pop("backend")
        lc = link.credit
        return (got, stats, restarts, link.peer_session, link._last_rx,
                {n: getattr(lc, n) for n in type(lc).__slots__})
    finally:
        be.close()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches(), st.integers(0, 2), st.integers(1, 5), st.integers(1, 4))
def test_c_poll_is_the_python_poll(frames: list[bytes], raw: int, per_poll: int,
                                   slice_: int) -> None:
    assert _link._Poller is not None, "xport._linkfast not built: run scripts/setup.sh"
    assert _receive(True, frames, raw, per_poll, slice_) == \
        _receive(False, frames, raw, per_poll, slice_)
