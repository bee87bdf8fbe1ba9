#!/usr/bin/env python3
"""The least one wake-up costs a host on this machine, next to the pure-Python floor.

Theory of operation
-------------------
At one client connection with ``--pipeline 8`` (``mux-rpc bench``'s default),
the host wakes once per round trip and finds about 8 calls. What a wake-up
costs in the kernel - sleeping in ``epoll_wait``, being woken, the TX kick
that on a veth pair also runs the peer's receive - is shared by those 8 calls
only, so it sets a lower bound on host CPU per call that no work in the RPC
runtime can go below. This benchmark measures that bound with no RPC work at
all. Two C programs play round trips, and the host's stand-in (``echo``) only
wakes in ``epoll_wait``, copies what came in back out, kicks once and sleeps:

* ``afxdp``: ``bench/c/xsk_floor echo`` on the host end of a veth pair and
  ``xsk_floor ping`` on the agent end, one frame each way per round, as large
  as the agent's frame of ``--calls`` requests (the agent packs a connection's
  calls into one frame, the host joins their replies into one DATA). The same
  link, XDP program and socket options as ``mux-rpc bench``'s afxdp mode.
* ``tcp``: ``bench/c/tcp_floor echo`` and ``ping`` over loopback TCP, ``--calls``
  request-sized messages per round: one read and one write per wake-up, the
  kernel work the direct asyncio server does.

Each sample is one run of every transport (``--seconds`` each; the order is
reversed every other sample), followed at once by the pure-Python floor and
floor[c] (the runtime's C dispatch in batches of ``--calls``), both from
``mux_rpc.bench.sample_floors``: bench/bench_floor.py's echo mix, 50,000
calls, best of 3, what ``mux-rpc bench`` measures beside each of its samples.
The echo's CPU is its own user + system time from its first frame to its last,
per round trip; each round is one wake-up. Per sample, ``wake-up/calls /
floor`` is how much of the 2x-the-floor target the transport's kernel work
alone takes at ``--calls`` calls per wake-up, and ``+ floor[c]`` adds the
least the runtime's own per-call work adds. The table quotes medians of
per-sample values.

The veth pair is created here (VethPair: removed on exit, failure or
Ctrl-C); traffic stays on it and on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

from _procs import Peer

from xport._protocol import HEADER_SIZE
from xport._wire import FRAME_HEADER_SIZE

XSK_FLOOR = os.path.join(HERE, "c", "xsk_floor")
TCP_FLOOR = os.path.join(HERE, "c", "tcp_floor")
BPF_OBJ = os.path.join(ROOT, "bpf", "mux_xdp.o")
TRANSPORTS = ("afxdp", "tcp")
#: one call as the clients send it: an ``echo("hello", i)`` msgpack-rpc request
CALL_BYTES = len(msgpack.packb([0, 100_000, "echo", ["hello", 100_000]]))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_wakeup.py",
        description="The least host CPU one wake-up costs on this machine: C round trips over "
                    "the AF_XDP veth link and over loopback TCP, with no RPC work, next to the "
                    "pure-Python floor per call. Shows how much of mux-rpc bench's "
                    "2x-the-floor target the kernel alone takes when a wake-up carries "
                    "--calls calls (one connection with --pipeline 8 carries 8). Table on "
                    "stderr; --json for a summary on stdout. Needs root for the veth pair.")
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help="comma-separated, from afxdp (C echo/ping over a veth pair) and tcp "
                        "(C echo/ping over loopback) (default both)")
    p.add_argument("--calls", type=int, default=8,
                   help="calls one wake-up carries: the divisor per call, the TCP messages "
                        "per round, and floor[c]'s batch (default 8, as mux-rpc bench's "
                        "--pipeline at one connection)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="round trips per transport per sample, in seconds (default 2)")
    p.add_argument("--repeat", type=int, default=5,
                   help="samples; the table quotes medians (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="a short smoke run: --seconds 0.3 --repeat 1")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.repeat = 0.3, 1
    a.transports = [t.strip() for t in a.transports.split(",") if t.strip()]
    for t in a.transports:
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t!r} (choose from {', '.join(TRANSPORTS)})")
    if not a.transports:
        p.error("--transports is empty")
    if a.repeat < 1 or a.seconds <= 0 or not 1 <= a.calls <= 64:
        p.error("--repeat must be >= 1, --seconds > 0 and --calls 1..64")
    return a


# -- one round-trip run per transport ------------------------------------------------

def _per_round(echo: dict[str, Any], ping: dict[str, Any]) -> dict[str, Any]:
    rounds = int(echo["rounds"])
    if rounds <= 0 or int(ping["rounds"]) <= 0:
        raise RuntimeError(f"no round trips: echo {echo}, ping {ping}")
    user, system = float(echo["cpu_user"]), float(echo["cpu_sys"])
    return {
        "rounds": rounds,
        "rounds_per_s": float(ping["rounds_per_s"]),
        "echo_us_per_wakeup": (user + system) / rounds * 1e6,
        "echo_user_us_per_wakeup": user / rounds * 1e6,
        "echo_sys_us_per_wakeup": system / rounds * 1e6,
        "ping_us_per_round": (float(ping["cpu_user"]) + float(ping["cpu_sys"]))
        / int(ping["rounds"]) * 1e6,
    }


def _play(name: str, echo_argv: list[str], ping_argv: Callable[[dict[str, Any]], list[str]],
          seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the echo, then the ping (its argv from the echo's ready line); their results."""
    with Peer(echo_argv, name=f"{name} echo") as echo:
        ready = echo.wait_ready(timeout=30.0)
        with Peer(ping_argv(ready), name=f"{name} ping") as ping:
            pres = ping.result(timeout=seconds + 30.0)
        eres = echo.result(timeout=10.0)
    return eres, pres


def run_afxdp(a: argparse.Namespace, host_if: str, agent_if: str) -> dict[str, Any]:
    # the frame the agent sends: the calls packed behind one frame header, each
    # behind its message header (docs/protocol.md)
    frame_size = FRAME_HEADER_SIZE + a.calls * (HEADER_SIZE + CALL_BYTES)
    eres, pres = _play(
        "afxdp",
        [XSK_FLOOR, "echo", "--ifname", host_if, "--bpf-obj", BPF_OBJ, "--idle-ms", "200"],
        lambda _: [XSK_FLOOR, "ping", "--ifname", agent_if, "--bpf-obj", BPF_OBJ,
                   "--frame-size", str(frame_size), "--seconds", str(a.seconds)],
        a.seconds)
    if int(eres["frames"]) != int(pres["rounds"]) * int(pres["frames_per_round"]):
        raise RuntimeError(f"afxdp: echo saw {eres['frames']} frames for {pres['rounds']} "
                           f"rounds of {pres['frames_per_round']}")
    return _per_round(eres, pres)


def run_tcp(a: argparse.Namespace) -> dict[str, Any]:
    eres, pres = _play(
        "tcp", [TCP_FLOOR, "echo", "--port", "0", "--idle-ms", "200"],
        lambda ready: [TCP_FLOOR, "ping", "--port", str(int(ready["port"])),
                       "--messages", str(a.calls), "--size", str(CALL_BYTES),
                       "--seconds", str(a.seconds)],
        a.seconds)
    if int(eres["bytes"]) != int(pres["rounds"]) * int(pres["bytes_per_round"]):
        raise RuntimeError(f"tcp: echo saw {eres['bytes']} bytes for {pres['rounds']} rounds "
                           f"of {pres['bytes_per_round']}")
    return _per_round(eres, pres)


# -- floors ---------------------------------------------------------------------------

def floors(calls: int) -> tuple[float, float | None]:
    """(pure-Python floor, floor[c]) in CPU µs per call, measured now: ``mux-rpc
    bench``'s own per-sample floors (floor[c] None when the C dispatch path is off)."""
    from mux_rpc.bench import sample_floors

    py, c = sample_floors(calls)  # CPU s per 100k calls = 10 µs per call
    return py * 10, None if c is None else c * 10


# -- driver ---------------------------------------------------------------------------

def build() -> None:
    r = subprocess.run(["bash", os.path.join(HERE, "c", "build.sh")], capture_output=True,
                       text=True, timeout=180, check=False)
    if r.returncode != 0:
        raise SystemExit(f"bench/c/build.sh failed:\n{r.stderr[-2000:]}")
    if not os.path.exists(BPF_OBJ):
        raise SystemExit("bpf/mux_xdp.o is not built: run scripts/setup.sh")


def sample_ratios(s: dict[str, Any], calls: int) -> None:
    """Adds each transport's per-call cost and its ratios to this sample's floors."""
    for t in TRANSPORTS:
        if t in s:
            per_call = s[t]["echo_us_per_wakeup"] / calls
            s[t]["us_per_call"] = per_call
            s[t]["vs_floor"] = per_call / s["floor_us"]
            s[t]["with_floor_c_vs_floor"] = (None if s["floor_c_us"] is None
                                             else (per_call + s["floor_c_us"]) / s["floor_us"])


def run(a: argparse.Namespace) -> dict[str, Any]:
    build()
    from xport._topology import VethPair, install_cleanup_handlers

    samples: list[dict[str, Any]] = []
    pair = VethPair(queues=1) if "afxdp" in a.transports else None
    try:
        if pair is not None:
            pair.create()
        install_cleanup_handlers()  # after create: see bench_xport.py
        runners: dict[str, Callable[[], dict[str, Any]]] = {"tcp": lambda: run_tcp(a)}
        if pair is not None:
            assert pair.host is not None and pair.agent is not None
            host_if, agent_if = pair.host.ifname, pair.agent.ifname
            runners["afxdp"] = lambda: run_afxdp(a, host_if, agent_if)
            log(f"veth {agent_if} <-> {host_if}")
        for rep in range(a.repeat):
            order = a.transports if rep % 2 == 0 else list(reversed(a.transports))
            s: dict[str, Any] = {}
            for t in order:
                s[t] = runners[t]()
            s["floor_us"], s["floor_c_us"] = floors(a.calls)
            sample_ratios(s, a.calls)
            samples.append(s)
            log(f"sample {rep + 1}/{a.repeat}: " + ", ".join(
                f"{t} {s[t]['echo_us_per_wakeup']:.1f} µs/wake-up "
                f"({s[t]['rounds_per_s'] / 1e3:.1f}k/s)" for t in a.transports)
                + f"; floor {s['floor_us']:.2f} µs/call, floor[c] "
                + ("-" if s["floor_c_us"] is None else f"{s['floor_c_us']:.2f}"))
    finally:
        if pair is not None:
            pair.close()
    return summarize(a, samples)


def _median(samples: list[dict[str, Any]], *path: str) -> float | None:
    """The median of a value over the samples; None where it was not measured."""
    vals = []
    for s in samples:
        v: Any = s
        for k in path:
            v = v[k]
        if v is not None:
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def summarize(a: argparse.Namespace, samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "wakeup",
        "command": " ".join(["bench/bench_wakeup.py", *sys.argv[1:]]),
        "calls_per_wakeup": a.calls, "seconds": a.seconds, "repeat": a.repeat,
        "floor_us_per_call": _median(samples, "floor_us"),
        "floor_c_us_per_call": _median(samples, "floor_c_us"),
        "transports": {}, "samples": samples,
    }
    for t in a.transports:
        out["transports"][t] = {k: _median(samples, t, k) for k in (
            "echo_us_per_wakeup", "echo_user_us_per_wakeup", "echo_sys_us_per_wakeup",
            "ping_us_per_round", "rounds_per_s", "us_per_call", "vs_floor",
            "with_floor_c_vs_floor")}
    return out


def table(summary: dict[str, Any]) -> str:
    n = summary["calls_per_wakeup"]
    lines = [
        f"host stand-in (echo) CPU per wake-up, no RPC work; {n} calls per wake-up; "
        f"medians of {summary['repeat']} samples",
        f"{'transport':<10}{'µs/wake-up':>11}{'(user':>7}{'sys)':>7}{'round trips/s':>15}"
        f"{'µs/call':>9}{'x floor':>9}{'+floor[c]':>11}",
    ]
    for t, r in summary["transports"].items():
        lines.append(
            f"{t:<10}{r['echo_us_per_wakeup']:>11.1f}{r['echo_user_us_per_wakeup']:>7.1f}"
            f"{r['echo_sys_us_per_wakeup']:>7.1f}{r['rounds_per_s']:>15,.0f}"
            f"{r['us_per_call']:>9.2f}{r['vs_floor']:>9.2f}"
            f"{_fmt(r['with_floor_c_vs_floor'], 11, '.2f')}")
    fc = summary["floor_c_us_per_call"]
    lines.append(f"pure-Python floor {summary['floor_us_per_call']:.2f} µs/call, floor[c] "
                 + ("not measured (the C dispatch path is not built, or MUX_RPC_PURE_PYTHON=1)"
                    if fc is None else f"{fc:.2f} µs/call (batches of {n})"))
    lines.append("x floor: the wake-up's share per call over the floor; +floor[c]: with the "
                 "runtime's C dispatch added. mux-rpc bench's target is 2x the floor.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    if os.geteuid() != 0 and "afxdp" in a.transports:
        log("bench_wakeup.py: the afxdp transport needs root (veth pair, XDP); "
            "run as root or with --transports tcp")
        return 1
    t0 = time.monotonic()
    summary = run(a)
    log(table(summary))
    log(f"({time.monotonic() - t0:.0f} s)")
    if a.json:
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
