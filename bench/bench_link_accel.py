"""Link per-message cost with and without the C accelerator (``xport._linkfast``).

    .venv/bin/python bench/bench_link_accel.py [--size 64] [--runs 5] [--seconds 0.4]
    .venv/bin/python bench/bench_link_accel.py --wakeup [--batch 4] [--base /tmp/wt-link]

Two :class:`xport._link.Link` ends over ``xport.testing``'s in-memory backend
pair (no kernel, no copies but the link's own): the sender queues a batch of
DATA messages (``send_data``) and ``flush``es; the receiver ``poll``s them
(``raw_data`` on, as the host runs it) and ``flush``es its credit back, which
the sender ``poll``s. Reported per message, in ns: ``tx`` (the sender's
``flush``), ``rx`` (the receiver's ``poll``) and ``cycle`` (everything,
``send_data`` included). Each mode runs in its own process
(``XPORT_PURE_PYTHON=1`` for the pure-Python loops), alternated ``runs``
times; medians of the runs and the pure/C ratios are printed. The machine is
noisy: compare ratios, not absolute numbers.

``--wakeup`` (root): the host's per-wake-up cost over real AF_XDP (a veth
pair, one process, both ends): the agent end sends ``--batch`` small DATA
(default 4, over ``--conns`` connections in turn, default 2) and flushes; the host end ``poll``s (``raw_runs``, as the host
runs it), queues one reply per message (``try_send_runs``) and ``flush``es;
the agent polls the replies. Reported per wake-up, in us of wall time (one
process, no waiting inside the measured calls): ``poll``, ``queue`` (the
replies' ``try_send_runs``) and ``flush`` of the host end and ``wakeup``
(the three together), each the median wake-up of each run (robust to a noisy
neighbour preempting a few), and ``cycle_cpu``: the process's CPU time (user + system,
both ends and the kernel's veth/XDP work) per request/reply round. With ``--base DIR`` a third mode runs the same with ``DIR`` (an
older tree, e.g. a git worktree with the built ``*.so`` copied in) first on
``PYTHONPATH``: before/after in one run. ``--steps``: the ``c`` runs turn the
host link's one-call ``poll`` and ``flush`` (``Poller``, ``Flusher``) off every
other round and report those rounds apart (paired in time: robust to noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def measure(size: int, seconds: float, batch: int, raw: bool) -> dict[str, float]:
    """One run in this process: ns per message for tx, rx and the whole cycle."""
    sys.path.insert(0, str(REPO))
    from xport import _link
    from xport.testing import memory_link_pair

    a, b = memory_link_pair(rx_buffers=256)
    b.raw_data = raw
    for _ in range(20):  # handshake (§3.1)
        a.flush(), b.flush(), a.poll(), b.poll()
    assert a.established and b.established
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    clock = time.perf_counter_ns
    tx = rx = total = msgs = 0
    deadline = clock() + int(seconds * 1e9)
    while clock() < deadline:
        t0 = clock()
        for _ in range(batch):
            a.send_data(1, payload)
        t1 = clock()
        while a.queued_messages:
            a.flush()
            t2 = clock()
            got = b.poll(256)
            t3 = clock()
            b.flush()
            a.poll(256)
            tx += t2 - t1
            rx += t3 - t2
            msgs += len(got)
            t1 = clock()
        total += t1 - t0
    assert a.stats.dropped == {} and b.stats.dropped == {}
    return {
        "accelerated": float(getattr(_link, "ACCELERATED", False)),  # absent before it
        "tx": tx / msgs,
        "rx": rx / msgs,
        "cycle": total / msgs,
    }


def _veth_links(st: Any) -> tuple[Any, Any, Any, Any]:
    """An agent Link and a host Link (raw runs) over AF_XDP on a new veth
    pair with one queue, closed with ``st`` (a contextlib.ExitStack), past
    their handshake; and a ``select.poll`` on each."""
    import select

    from xport._afxdp import AfXdpBackend
    from xport._link import Link, LinkConfig
    from xport._protocol import Role
    from xport._topology import VethPair

    pair = st.enter_context(VethPair(queues=1))
    assert pair.agent is not None and pair.host is not None
    ends = [st.enter_context(AfXdpBackend.open(e.ifname, 0, frame_count=512,
                                               rx_size=256, tx_size=256))
            for e in (pair.agent, pair.host)]
    a = Link(ends[0], LinkConfig(role=Role.AGENT))
    h = Link(ends[1], LinkConfig(role=Role.HOST))
    h.raw_runs = True
    pa, ph = select.poll(), select.poll()
    pa.register(a.fileno(), select.POLLIN)
    ph.register(h.fileno(), select.POLLIN)
    for _ in range(200):  # handshake (§3.1)
        a.flush(), h.flush()
        ph.poll(5), h.poll(), pa.poll(5), a.poll()
        if a.established and h.established:
            break
    assert a.established and h.established
    return a, h, pa, ph


def measure_wakeup(size: int, seconds: float, batch: int, conns: int = 2) -> dict[str, float]:
    """One run: us per host wake-up (poll, flush) over a real AF_XDP veth pair."""
    import contextlib

    from xport import _link
    from xport._link import AsyncLink

    with contextlib.ExitStack() as st:
        a, h, pa, ph = _veth_links(st)
        # --steps: every other round with the host's one-call poll and flush off
        ab = os.environ.get("BENCH_STEPS_AB") == "1"
        steps = (getattr(h, "_poll_c", None), getattr(h, "_flush_c", None))
        # the host's queueing, without an event loop: what AsyncLink.try_send_runs does
        shim: Any = object.__new__(AsyncLink)
        shim.link, shim._closed, shim._max_queued = h, False, h.config.max_queued_bytes
        shim._flush_scheduled, shim._blocked = True, False
        payload = bytes(size)
        clock = time.perf_counter_ns
        times: dict[bool, tuple[list[int], list[int], list[int]]] = {
            False: ([], [], []), True: ([], [], [])}  # fmt: skip
        wakeups = msgs = rounds = 0
        deadline = clock() + int(seconds * 1e9)
        cpu0 = time.process_time_ns()
        while clock() < deadline:
            off = ab and rounds % 2 == 1
            rounds += 1
            if ab:
                h._poll_c, h._flush_c = (None, None) if off else steps
            polls, queues, flushes = times[off]
            for i in range(batch):
                a.send_data(1 + i % conns, payload)
            a.flush()
            got = 0
            while got < batch:
                ph.poll(1000)
                t0 = clock()
                out = h.poll(64)
                t1 = clock()
                n = sum(len(p) for _c, p in out)  # the engine counts as it goes: not timed
                t1q = clock()
                shim.try_send_runs(out, [], n * size)
                t2 = clock()
                h.flush()
                t3 = clock()
                polls.append(t1 - t0)
                queues.append(t2 - t1q)
                flushes.append(t3 - t2)
                wakeups += 1
                got += n
            msgs += got
            back = 0
            while back < batch:
                pa.poll(1000)
                back += len(a.poll(64))
        cpu = time.process_time_ns() - cpu0
        assert a.stats.dropped == {} and h.stats.dropped == {}, (a.stats, h.stats)
        polls, queues, flushes = times[False]
        extra: dict[str, float] = {}
        if ab:  # the rounds with the steps off, paired in time with the others
            p_off, q_off, f_off = times[True]
            extra = {"steps_" + k: statistics.median(v) / 1e3 for k, v in (
                ("poll", p_off), ("queue", q_off), ("flush", f_off),
                ("wakeup", list(map(sum, zip(p_off, q_off, f_off, strict=True)))))}
        return extra | {
            "accelerated": float(getattr(_link, "ACCELERATED", False)),
            # medians: a wake-up preempted by a neighbour does not count
            "poll": statistics.median(polls) / 1e3,
            "queue": statistics.median(queues) / 1e3,
            "flush": statistics.median(flushes) / 1e3,
            # poll + try_send_runs + flush of one wake-up, median
            "wakeup": statistics.median(map(sum, zip(polls, queues, flushes,
                                                     strict=True))) / 1e3,
            "msgs": msgs / wakeups,
            "wakeups": float(wakeups),
            # process CPU (user + system, both ends, the kernel's sends included)
            # per request/reply round: what a neighbour's preemption does not inflate
            "cycle_cpu": cpu / (msgs / batch) / 1e3,
        }


def measure_waker(size: int, seconds: float, batch: int, conns: int = 2) -> dict[str, float]:
    """One run: the host's whole wake-up as the event loop calls it, the
    Python ``AsyncLink._on_readable`` and the C ``Waker`` alternated round
    by round over the same real AF_XDP veth pair: us per wake-up (median)
    and process CPU per request/reply round, for each."""
    import asyncio
    import contextlib
    import select

    from xport import _link
    from xport._link import AsyncLink

    async def run(a: Any, h: Any) -> dict[str, float]:
        count = [0]
        al: Any = None

        def serve(msgs: list[Any]) -> None:  # the run engine's shape: one reply per request
            n = sum(len(p) for _c, p in msgs)
            count[0] += n
            al.try_send_runs(msgs, [], n * size)

        al = AsyncLink(h, on_messages=serve)
        al._loop.remove_reader(h.fileno())  # called here, not by the loop
        waker = al._reader
        assert type(waker) is _link._Waker, "the C Waker is not in use"
        pa, ph = select.poll(), select.poll()
        pa.register(a.fileno(), select.POLLIN)
        ph.register(h.fileno(), select.POLLIN)
        payload = bytes(size)
        clock, cpu = time.perf_counter_ns, time.process_time_ns
        # True: the Waker, False: _on_readable
        times: dict[bool, list[int]] = {True: [], False: []}
        cpus: dict[bool, int] = {True: 0, False: 0}
        roundtrips: dict[bool, int] = {True: 0, False: 0}
        rounds = 0
        deadline = clock() + int(seconds * 1e9)
        while clock() < deadline:
            c_side = rounds % 2 == 0
            rounds += 1
            reader = waker if c_side else al._on_readable
            c0 = cpu()
            for i in range(batch):
                a.send_data(1 + i % conns, payload)
            a.flush()
            count[0] = 0
            while count[0] < batch:
                ph.poll(1000)
                t0 = clock()
                reader()
                times[c_side].append(clock() - t0)
            back = 0
            while back < batch:
                pa.poll(1000)
                back += len(a.poll(64))
            cpus[c_side] += cpu() - c0
            roundtrips[c_side] += 1
        al.close()
        assert a.stats.dropped == {} and h.stats.dropped == {}, (a.stats, h.stats)
        return {
            "waker": statistics.median(times[True]) / 1e3,
            "python": statistics.median(times[False]) / 1e3,
            "waker_cycle_cpu": cpus[True] / roundtrips[True] / 1e3,
            "python_cycle_cpu": cpus[False] / roundtrips[False] / 1e3,
            "wakeups": float(len(times[True]) + len(times[False])),
        }

    with contextlib.ExitStack() as st:
        a, h, pa, ph = _veth_links(st)
        return asyncio.run(run(a, h))


def measure_waker_fake(batch: int, size: int, rounds: int = 20000) -> dict[str, float]:
    """The same without a kernel: the host link over the fake AF_XDP rings of
    tests/xport/test_umem_rings (frames written into its RX ring, replies
    taken from its TX ring between wake-ups): what the two readers cost
    themselves, us per wake-up (median), alternated wake-up by wake-up."""
    import asyncio

    sys.path[:0] = [str(REPO / "tests" / "xport"), str(REPO / "tests")]  # the test rig
    from test_link_fast_frames import _frame
    from test_umem_rings import PAYLOAD, make_fake

    from xport import _link
    from xport._backend import BackendStats
    from xport._link import AsyncLink, Link, LinkConfig
    from xport._protocol import Data, Hello, Role, encode

    be, kern, _ = make_fake(0, n_rx=8, n_tx=8, rx_ring=8, tx_ring=8)
    be.statistics = lambda: BackendStats()  # type: ignore[method-assign]  # no kernel
    rfd, wfd = os.pipe()  # a descriptor for add_reader (the fake rings have none)
    be.fileno = lambda: rfd  # type: ignore[method-assign]

    async def run() -> dict[str, float]:
        h = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD), session=1)
        h.raw_runs = True
        al: Any = None

        def serve(msgs: list[Any]) -> None:
            n = sum(len(p) for _c, p in msgs)
            al.try_send_runs(msgs, [], n * size)

        al = AsyncLink(h, on_messages=serve)
        al._loop.remove_reader(rfd)
        assert type(al._reader) is _link._Waker, "the C Waker is not in use"
        kern.receive(_frame(0, 1, 0, 1 << 20, 0,
                            encode(Hello(Role.AGENT, session=7, peer_session=1))))
        al._on_readable()
        kern.transmit(8)
        msgs = [encode(Data(1 + i % 2, bytes(size))) for i in range(batch)]
        per = max(1, (PAYLOAD - 64) // len(msgs[0]))  # messages per frame
        bodies = [msgs[i:i + per] for i in range(0, batch, per)]
        assert len(bodies) <= 8, "--batch too large for the fake RX ring"
        times: dict[bool, list[int]] = {True: [], False: []}
        clock = time.perf_counter_ns
        seq = 1
        for rnd in range(rounds):
            c_side = rnd % 2 == 0
            reader = al._reader if c_side else al._on_readable
            for b in bodies:
                assert kern.receive(_frame(0, len(b), seq, (1 << 20) + seq, 0, b"".join(b)))
                seq += 1
            t0 = clock()
            reader()
            times[c_side].append(clock() - t0)
            kern.transmit(8)
        al.close()
        assert h.stats.dropped == {} and h.stats.messages_out >= rounds * batch, h.stats
        return {"fake_waker": statistics.median(times[True]) / 1e3,
                "fake_python": statistics.median(times[False]) / 1e3}

    try:
        return asyncio.run(run())
    finally:
        os.close(rfd)
        os.close(wfd)
        be.close()


def run_modes(
    argv: list[str], modes: dict[str, tuple[bool, str]], runs: int, timeout: float,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> dict[str, list[dict[str, float]]] | None:
    """``argv`` (a worker printing one JSON dict) once per mode, the modes
    alternated ``runs`` times; a mode is (pure Python?, tree: "" for this
    one, else put first on PYTHONPATH, BENCH_TREE and the cwd), with
    ``extra_env[mode]`` set. None (its stderr shown) when a worker fails."""
    res: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(runs):
        for mode, (pure, tree) in modes.items():
            env = dict(os.environ)
            env.update((extra_env or {}).get(mode, {}))
            env.pop("XPORT_PURE_PYTHON", None)
            if pure:
                env["XPORT_PURE_PYTHON"] = "1"
            if tree:
                env["BENCH_TREE"] = tree
                env["PYTHONPATH"] = tree
            out = subprocess.run(argv, env=env, capture_output=True, text=True,
                                 timeout=timeout, cwd=tree or None)  # fmt: skip
            if out.returncode:
                sys.stderr.write(out.stderr)
                return None
            res[mode].append(json.loads(out.stdout))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="DATA payload bytes")
    ap.add_argument("--batch", type=int, default=0,
                    help="messages queued per cycle (default 512; 4 with --wakeup)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4, help="per run")
    ap.add_argument("--objects", action="store_true", help="Data objects, not raw tuples")
    ap.add_argument("--wakeup", action="store_true",
                    help="per host wake-up over real AF_XDP (root; --batch default 4)")
    ap.add_argument("--conns", type=int, default=2,
                    help="with --wakeup: connections the batch's messages rotate over "
                         "(runs of one message each while batch <= conns)")
    ap.add_argument("--steps", action="store_true",
                    help="with --wakeup: every other round of the c runs with the host "
                         "link's one-call poll and flush (Poller, Flusher) off, paired")
    ap.add_argument("--waker", action="store_true",
                    help="with --wakeup: the whole wake-up as the event loop calls it, "
                         "AsyncLink._on_readable (Python) against the C Waker, alternated "
                         "round by round in each run")
    ap.add_argument("--base", default="", help="with --wakeup: also run this tree (before)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.wakeup:
        return wakeup_main(a)
    if a.worker:
        print(json.dumps(measure(a.size, a.seconds, a.batch, not a.objects)))
        return 0
    a.batch = a.batch or 512
    argv = [sys.executable, __file__, "--worker", "--size", str(a.size), "--batch",
            str(a.batch), "--seconds", str(a.seconds)] + (["--objects"] * a.objects)  # fmt: skip
    res = run_modes(argv, {"c": (False, ""), "pure": (True, "")}, a.runs, 60)
    if res is None:
        return 1
    if not all(r["accelerated"] for r in res["c"]):
        print("xport._linkfast is not built: run scripts/setup.sh", file=sys.stderr)
        return 1
    kind = "Data objects" if a.objects else "raw tuples"
    print(f"{a.size}-byte DATA, {kind}, {a.runs} runs of {a.seconds}s, median ns/message")
    print(f"{'':6}{'pure':>9}{'C':>9}{'pure/C':>8}")
    for key in ("tx", "rx", "cycle"):
        p = statistics.median(r[key] for r in res["pure"])
        c = statistics.median(r[key] for r in res["c"])
        print(f"{key:6}{p:9.0f}{c:9.0f}{p / c:8.2f}")
    return 0


def wakeup_main(a: argparse.Namespace) -> int:
    batch = a.batch or 4
    if a.worker:
        sys.path.insert(0, os.environ.get("BENCH_TREE") or str(REPO))
        fn = measure_waker if a.waker else measure_wakeup
        res = fn(a.size, a.seconds, batch, a.conns)
        if a.waker:
            res |= measure_waker_fake(batch, a.size)
        print(json.dumps(res))
        return 0
    if a.waker:
        return waker_main(a, batch)
    argv = [sys.executable, __file__, "--wakeup", "--worker", "--size", str(a.size),
            "--batch", str(batch), "--seconds", str(a.seconds), "--conns", str(a.conns)]  # fmt: skip
    modes = {"pure": (True, str(REPO)), "c": (False, str(REPO))}
    if a.base:
        modes["base"] = (False, a.base)
    res = run_modes(argv, modes, a.runs, 120, {"c": {"BENCH_STEPS_AB": "1"}} if a.steps else None)
    if res is None:
        return 1
    print(f"AF_XDP host wake-up, {a.size}-byte DATA, {batch} per batch over {a.conns} "
          f"connections, {a.runs} runs of "
          f"{a.seconds}s, median us per wake-up")
    print(f"{'':7}" + "".join(f"{m:>9}" for m in res) + "".join(
        f"{m + '/c':>9}" for m in res if m != "c"))
    keys = [k for k in ("poll", "queue", "flush", "wakeup", "cycle_cpu", "msgs")
            if all(k in r for rs in res.values() for r in rs)]  # an older tree: no queue
    for key in keys:
        med = {m: statistics.median(r[key] for r in rs) for m, rs in res.items()}
        row = "".join(f"{med[m]:9.2f}" for m in res)
        row += "".join(f"{med[m] / med['c']:9.2f}" for m in res if m != "c")
        print(f"{key:7}{row}")
    if a.steps:  # rounds of the c runs alternated with the one-call poll and flush off
        print("c runs, every other round with the host's Poller/Flusher off (paired):")
        print(f"{'':7}{'on':>9}{'off':>9}{'off/on':>9}")
        for key in ("poll", "queue", "flush", "wakeup"):
            on = statistics.median(r[key] for r in res["c"])
            off = statistics.median(r["steps_" + key] for r in res["c"])
            print(f"{key:7}{on:9.2f}{off:9.2f}{off / on:9.2f}")
    return 0


def waker_main(a: argparse.Namespace, batch: int) -> int:
    """--wakeup --waker: each run alternates the two readers round by round."""
    argv = [sys.executable, __file__, "--wakeup", "--waker", "--worker", "--size", str(a.size),
            "--batch", str(batch), "--seconds", str(a.seconds), "--conns", str(a.conns)]
    res = run_modes(argv, {"c": (False, str(REPO))}, a.runs, 120)
    if res is None:
        return 1
    rs = res["c"]
    print(f"AF_XDP host wake-up as the event loop calls it, {a.size}-byte DATA, {batch} per "
          f"batch over {a.conns} connections, one reply each, {a.runs} runs of {a.seconds}s "
          "(readers alternated round by round), median of the runs' medians")
    print(f"{'':11}{'python':>9}{'waker':>9}{'py/waker':>10}")
    for key, label in (("python", "wakeup us"), ("python_cycle_cpu", "cycle_cpu"),
                       ("fake_python", "no kernel")):
        py = statistics.median(r[key] for r in rs)
        c = statistics.median(r[key.replace("python", "waker")] for r in rs)
        print(f"{label:11}{py:9.2f}{c:9.2f}{py / c:10.2f}")
    print("per run (python/waker, wakeup): "
          + " ".join(f"{r['python'] / r['waker']:.2f}" for r in rs))
    print("no kernel: the host link over tests/xport's fake AF_XDP rings (no syscall, no "
          "peer), us per wake-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
