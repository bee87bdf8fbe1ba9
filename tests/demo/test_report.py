"""The demo's report and checks, and the load generator's parts, without a link."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import msgpack
import pytest

from mux_rpc import demo
from mux_rpc._loadgen import (
    LoadResult,
    MsgpackWorkload,
    Progress,
    cpu_seconds,
    cpu_split,
    percentile,
    run_load,
)


def test_transport_line_says_why_not_afxdp() -> None:
    line = demo._transport_line({"backend": "shm", "queues": 2,
                                 "why_not_afxdp": "not running as root"})
    assert "shared-memory" in line and "not running as root" in line
    line = demo._transport_line({"backend": "afxdp", "queues": 4, "xdp_modes": ["copy"],
                                 "netns": True})
    assert "AF_XDP" in line and "copy" in line and "namespace" in line


def stats(n: int, *, agent_to: int | None = None, dropped: dict[str, int] | None = None,
          ) -> dict[str, Any]:
    return {"host": {"messages_in": n, "messages_out": n, "protocol_errors": 0},
            "agent": {"messages_to_host": n if agent_to is None else agent_to,
                      "messages_from_host": n,
                      "links": [{"dropped": dropped or {}}, {"dropped": {"seq_gap": 1}}]},
            "links": [{"frames_in": 2, "frames_out": 2, "messages_in": n, "messages_out": n,
                       "dropped": {}}]}


def workload(calls: int, errors: int = 0, lost: int = 0) -> MsgpackWorkload:
    w = MsgpackWorkload(1, connections=1)
    w.result.sent = calls + errors
    w.result.calls = calls
    w.result.errors = errors
    w.result.lost = lost
    return w


def test_summary_passes_when_everything_adds_up() -> None:
    s = demo._summarise({"backend": "afxdp"}, [workload(10)], stats(10), 1.0, stats(0))
    assert s["ok"], s["checks"]
    assert s["link"]["startup_drops"] == 1  # one seq_gap per queue is the start-up HELLO
    assert "demo passed" in demo.format_report(s)


@pytest.mark.parametrize("kw,wl,check", [
    ({}, workload(9, errors=1, lost=1), "no message lost"),
    ({"agent_to": 11}, workload(10), "agent -> host: every message delivered"),
    ({"dropped": {"seq_gap": 2}}, workload(10), "link drops = 0 under load"),
    ({"dropped": {"no_buffer": 1}}, workload(10), "link drops = 0 under load"),
])
def test_summary_fails_on_errors_losses_and_drops(kw: dict[str, Any], wl: MsgpackWorkload,
                                                  check: str) -> None:
    s = demo._summarise({"backend": "afxdp"}, [wl], stats(10, **kw), 1.0, stats(0))
    assert not s["ok"]
    assert not next(c for c in s["checks"] if c["check"] == check)["ok"]
    assert "FAILED" in demo.format_report(s)


def test_percentile_nearest_rank() -> None:
    vals = [float(i) for i in range(1, 101)]
    assert percentile(vals, 50) == 50.0 and percentile(vals, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_cpu_seconds_of_this_process() -> None:
    import os

    assert cpu_seconds(os.getpid()) > 0
    assert sum(cpu_split(os.getpid())) == pytest.approx(cpu_seconds(os.getpid()), abs=0.05)


def _burn(seconds: float, in_kernel: bool) -> None:
    import os
    import time

    end = time.monotonic() + seconds
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        while time.monotonic() < end:
            if in_kernel:
                os.read(fd, 1 << 20)  # the kernel clears a MiB: system time
            else:
                sum(range(20_000))  # the interpreter: user time
    finally:
        os.close(fd)


def test_cpu_split_tells_user_time_from_the_kernels() -> None:
    # bench's "afxdp kernel/fl" is the host's system time alone: the split must
    # put time where it was spent (tick-sampled: 0.4 s is 40 ticks of 10 ms)
    import os

    pid = os.getpid()
    u0, s0 = cpu_split(pid)
    _burn(0.4, in_kernel=False)
    u1, s1 = cpu_split(pid)
    _burn(0.4, in_kernel=True)
    u2, s2 = cpu_split(pid)
    assert u1 - u0 > 2 * (s1 - s0)
    assert s2 - s1 > 2 * (u2 - u1)


def test_progress_without_a_terminal_prints_lines() -> None:
    buf = io.StringIO()
    p = Progress(10, "load", stream=buf, every=0.0)
    p.update(5, "half")
    p.close("done")
    assert buf.getvalue() == "load  50% half\ndone\n"


def test_msgpack_driver_checks_every_reply() -> None:
    w = MsgpackWorkload(1, depth=2, mix="kv")
    d = w.driver(0)
    d.encode(4, 0.0)  # put, get, echo, echo
    replies = [[1, 0, None, True], [1, 1, None, 0], [1, 2, None, ["hello", 2]],
               [1, 3, None, "wrong"]]
    n = d.feed(b"".join(msgpack.packb(r) for r in replies), 1.0)
    assert n == 4 and w.result.calls == 3 and w.result.errors == 1
    assert "wrong result" in w.result.error_samples[0]


def test_replies_never_sent_are_lost() -> None:
    async def main() -> LoadResult:
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1 << 16)
            await asyncio.sleep(5)
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        w = MsgpackWorkload(port, connections=2, depth=3)
        async with server:
            await run_load([w], duration=0.1, drain_timeout=0.2)
        return w.result

    r = asyncio.run(main())
    assert r.calls == 0 and r.lost == 6 and r.errors == 6


def test_cli_help_names_the_options() -> None:
    from mux_rpc.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    demo = sub.choices["demo"].format_help()  # type: ignore[attr-defined]
    for opt in ("--short", "--duration", "--connections", "--queues", "--netns",
                "--backend", "-v"):
        assert opt in demo
    bench = sub.choices["bench"].format_help()  # type: ignore[attr-defined]
    for opt in ("--quick", "--json", "--plot", "--connections", "--modes", "--repeat"):
        assert opt in bench
