"""Throughput of the link hot path over the in-memory pair (a smoke test and a tool).

As a tool: ``.venv/bin/python tests/xport/test_link_throughput.py [messages] [size]``
prints messages/s packed *and* unpacked (both ends run in this one process),
wall clock and CPU time, and messages per frame.
"""

from __future__ import annotations

import sys
import time

from xport._link import LinkConfig
from xport._protocol import Role
from xport.testing import memory_link_pair


def run(n: int, size: int = 24, rx_buffers: int = 256) -> dict[str, float]:
    a, b = memory_link_pair(
        LinkConfig(role=Role.AGENT), LinkConfig(role=Role.HOST), rx_buffers=rx_buffers
    )
    payload = b"m" * size
    send = a.send_data
    got = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while got < n:
        for i in range(min(2560, n - got)):
            send(i & 63, payload)
        while a.queued_messages:
            a.flush()
            got += len(b.poll(256))
            b.flush()
            a.poll()
        got += len(b.poll(256))
        b.flush()
        a.poll()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    backend = b.statistics().backend
    assert backend is not None
    return {
        "messages": got,
        "wall_msgs_per_s": got / wall,
        "cpu_msgs_per_s": got / cpu if cpu else float("inf"),
        "msgs_per_frame": a.stats.messages_out / max(1, a.stats.frames_out),
        "drops": backend.rx_fill_empty + sum(b.stats.dropped.values()),
    }


def test_small_messages_pack_about_forty_to_a_frame_without_drops() -> None:
    r = run(20_000)
    assert r["messages"] == 20_000
    assert r["drops"] == 0
    assert r["msgs_per_frame"] > 35


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    run(20_000, size)  # warm up
    r = run(n, size)
    print(
        f"{r['messages']:.0f} messages of {size} B: {r['wall_msgs_per_s']:,.0f} msg/s wall, "
        f"{r['cpu_msgs_per_s']:,.0f} msg/s CPU, {r['msgs_per_frame']:.1f} msg/frame, "
        f"drops {r['drops']:.0f}"
    )
