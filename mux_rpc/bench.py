"""``mux-rpc bench``: the end-to-end benchmark.

The same kv/echo service (examples/kv_service.py, ``echo("hello", i)`` calls)
is measured three ways, each in a host process of its own:

* ``afxdp``: offloaded - the agent process terminates TCP and frames the
  streams, the host receives whole messages over AF_XDP on a veth pair;
* ``afpacket``: offloaded the same way over AF_PACKET mmap rings (one queue),
  the transport baseline;
* ``direct``: :func:`mux_rpc.serve_direct`, asyncio TCP in the host process
  itself (uvloop where installed), the usual way to serve it.

For every mode and connection count, clients in this process (see
:mod:`mux_rpc._loadgen`) keep ``--pipeline`` calls in flight per connection
for ``--duration`` seconds, ``--repeat`` times; the cell is the median. The
modes' host processes run side by side and their samples of a connection
count alternate (afxdp, afpacket, direct, then the reverse, ...), so that X/direct is the
median of ratios of samples taken one after the other, not of medians
measured minutes apart on a machine whose speed drifts. Host
CPU is the host process's own utime + stime from ``/proc/<pid>/stat`` over
the measured interval (first request to last reply). The stime part alone
(``afxdp kernel/fl`` in the table) is the kernel's share, paid per wake-up
rather than per call: sleeping and waking in epoll, and the TX kick, which on
a veth pair also runs the agent end's receive (bench/bench_wakeup.py measures
the least a wake-up costs with no RPC work at all). The agent's is reported
next to it (it runs on the "application CPU" and is not host CPU). The
pure-Python floor (bench/bench_floor.py: decode, dispatch, encode with no I/O)
runs in the same invocation. Ratios: offloaded host CPU per RPC / direct, and
/ floor, per connection count, against the targets (<= 0.5x direct at 64
connections, <= 2x the floor everywhere).

The runtime decodes, dispatches and encodes plain-function calls in C
(mux_rpc._rpcfast) on both the offloaded and the direct path, so the same
invocation also measures that work with no I/O - ``floor[c]``: the floor's
loop through ``Dispatcher.dispatch_many`` in batches of ``--pipeline`` - and
shows ``afxdp/floor[c]`` beside the targets' ratios: what the I/O path costs
on top of the runtime's own per-call work. The targets are stated against the
pure-Python floor, as the issue defines it.

This shared machine's speed drifts by up to 2x within minutes, so a floor
measured once would skew every ratio: each sample of a cell is followed by its
own short floor and floor[c] measurement (50,000 calls, best of 3, about 0.2 s),
and the ratios to the floor are medians of per-sample ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ._loadgen import (
    REPO,
    HostProcess,
    MsgpackWorkload,
    Progress,
    client_loop_factory,
    raise_fd_limit,
    run_load,
)
from ._orchestrate import sweep_leftovers

__all__ = ["run", "run_bench", "sample_floors"]

MODES = ("afxdp", "afpacket", "direct")
TARGET_VS_DIRECT = 0.5  # offloaded host CPU per RPC <= 0.5x direct, at 64 connections
TARGET_VS_DIRECT_AT = 64
TARGET_VS_FLOOR = 2.0  # offloaded host CPU per RPC <= 2x the floor, at every count


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def machine_notes() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        uv = getattr(uvloop, "__version__", "?")
    except ImportError:
        uv = None
    return {"cpu": model, "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uv}


@functools.cache
def _floor_module() -> Any:
    path = REPO / "bench" / "bench_floor.py"
    spec = importlib.util.spec_from_file_location("mux_rpc_bench_floor", path)
    if spec is None or spec.loader is None or not path.exists():
        raise FileNotFoundError(f"{path} not found: the benchmark runs from a checkout")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_floor(n: int, repeat: int, dispatch: str = "python", batch: int = 16) -> dict[str, Any]:
    """bench/bench_floor.py's echo mix: decode + dispatch + encode, no I/O
    (``dispatch`` "python": the pure-Python floor; "c-many": the C fast path in batches)."""
    row: dict[str, Any] = _floor_module().run_floor("echo", n, repeat, dispatch, batch)
    return row


SAMPLE_FLOOR_N = 50_000


def _c_dispatch() -> bool:
    """Whether floor[c] can be measured: the C dispatch path is built and not
    switched off (``MUX_RPC_PURE_PYTHON=1``); without it, it is left out."""
    from ._dispatch import ACCELERATED

    return ACCELERATED


def sample_floors(depth: int) -> tuple[float, float | None]:
    """(floor, floor[c]) in CPU s per 100k RPCs, measured now (see the module doc);
    floor[c] in batches of ``depth``, None when the C dispatch path is off."""
    py = run_floor(SAMPLE_FLOOR_N, 3)["cpu_us_per_request"] / 10
    if not _c_dispatch():
        return py, None
    c = run_floor(SAMPLE_FLOOR_N, 3, "c-many", depth)["cpu_us_per_request"] / 10
    return py, c


def _cell_config(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    if mode == "direct":
        return {"mode": "direct", "services": ["kv"]}
    return {"mode": "offload", "backend": mode, "services": ["kv"],
            "queues": 1 if mode == "afpacket" else args.queues, "netns": args.netns,
            "log_level": 30 - 10 * min(getattr(args, "verbose", 0) or 0, 2)}


def _measure(hp: HostProcess, port: int, conns: int, depth: int, duration: float,
             progress: Progress | None) -> dict[str, Any]:
    w = MsgpackWorkload(port, connections=conns, depth=depth, mix="echo")
    marks: dict[str, float] = {}

    def start() -> None:
        marks["host_user0"], marks["host_sys0"] = hp.cpu_split()
        marks["agent0"] = hp.agent_cpu_seconds() or 0.0
        marks["me0"] = time.process_time()

    def end() -> None:
        marks["host_user1"], marks["host_sys1"] = hp.cpu_split()
        marks["agent1"] = hp.agent_cpu_seconds() or 0.0
        marks["me1"] = time.process_time()

    def prog(elapsed: float, calls: int) -> None:
        if progress is not None:
            progress.update(elapsed, f"{calls:,} calls")

    with asyncio.Runner(loop_factory=client_loop_factory()) as runner:
        seconds = runner.run(run_load([w], duration=duration, progress=prog,
                                      on_start=start, on_end=end,
                                      connect_concurrency=200))
    r = w.result.summary()
    floor_py, floor_c = sample_floors(depth)
    calls = max(r["calls"], 1)
    kernel = marks["host_sys1"] - marks["host_sys0"]
    host = marks["host_user1"] - marks["host_user0"] + kernel
    agent = marks["agent1"] - marks["agent0"] if hp.info.get("agent_pid") else None
    return {
        "calls": r["calls"], "errors": r["errors"], "lost": r["lost"],
        "error_samples": r["error_samples"], "seconds": seconds,
        "rpc_per_s": r["calls"] / seconds if seconds > 0 else 0.0,
        "host_cpu_s": host,
        "host_cpu_s_per_100k": host / calls * 1e5,
        "host_cpu_us_per_rpc": host / calls * 1e6,
        "host_cpu_utilisation": host / seconds if seconds > 0 else 0.0,
        "host_kernel_s_per_100k": kernel / calls * 1e5,
        "agent_cpu_s_per_100k": None if agent is None else agent / calls * 1e5,
        "client_cpu_s_per_100k": (marks["me1"] - marks["me0"]) / calls * 1e5,
        "p50_us": r["p50_us"], "p99_us": r["p99_us"],
        "floor_s_per_100k": floor_py, "floor_c_s_per_100k": floor_c,
        "vs_floor": host / calls * 1e5 / floor_py,
        "kernel_vs_floor": kernel / calls * 1e5 / floor_py,
        "vs_floor_c": None if floor_c is None else host / calls * 1e5 / floor_c,
    }


def _median_cell(samples: list[dict[str, Any]]) -> dict[str, Any]:
    cell: dict[str, Any] = {}
    for key in ("rpc_per_s", "host_cpu_s_per_100k", "host_cpu_us_per_rpc",
                "host_cpu_utilisation", "agent_cpu_s_per_100k", "client_cpu_s_per_100k",
                "p50_us", "p99_us", "floor_s_per_100k", "floor_c_s_per_100k", "vs_floor",
                "vs_floor_c", "host_kernel_s_per_100k", "kernel_vs_floor"):
        vals = [s[key] for s in samples if s[key] is not None]
        cell[key] = statistics.median(vals) if vals else None
    cell["calls"] = sum(s["calls"] for s in samples)
    cell["errors"] = sum(s["errors"] for s in samples)
    cell["lost"] = sum(s["lost"] for s in samples)
    cell["error_samples"] = [e for s in samples for e in s["error_samples"]][:5]
    return cell


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every cell; return the JSON-able summary."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"mux-rpc bench: unknown mode(s) {bad} (known: {', '.join(MODES)})")
    conn_counts = [int(c) for c in str(args.connections).split(",") if c.strip()]
    duration = 0.5 if args.quick else args.duration
    repeat = 1 if args.quick else max(1, args.repeat)
    floor_n = 20_000 if args.quick else 200_000
    raise_fd_limit(max(4096, 2 * max(conn_counts) + 1024))
    started = _dt.datetime.now(_dt.UTC)

    _say(f"floor: decode + dispatch + encode of {floor_n:,} echo calls, best of 3 ...")
    floor = run_floor(floor_n, 3)
    floor_100k = floor["cpu_us_per_request"] / 10  # us/RPC -> s per 100k RPCs
    _say(f"floor: {floor['requests_per_s']:,.0f} RPC/s, {floor_100k:.3f} CPU s per 100k RPCs")
    floor_c: dict[str, Any] | None = None
    if _c_dispatch():
        floor_c = run_floor(floor_n, 3, "c-many", args.pipeline)
        _say(f"floor[c] (the C dispatch path, batches of {args.pipeline}): "
             f"{floor_c['cpu_us_per_request'] / 10:.3f} CPU s per 100k RPCs")
    else:
        _say("floor[c]: not measured (the C dispatch path is not built, or "
             "MUX_RPC_PURE_PYTHON=1)")

    cells: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        # every mode's host process up at once (an idle one costs nothing), so
        # that the modes' samples of a connection count can alternate
        hosts: dict[str, tuple[HostProcess, int]] = {}
        for mode in modes:
            _say(f"{mode}: starting the host process ...")
            hp = stack.enter_context(HostProcess(_cell_config(mode, args)))
            info = hp.info
            notes[mode] = {k: info.get(k) for k in ("backend", "why_not_afxdp", "xdp_modes",
                                                     "queues", "loop", "netns")}
            if mode != "direct" and info.get("backend") != mode:
                raise RuntimeError(f"{mode} requested, the host runs {info.get('backend')} "
                                   f"({info.get('why_not_afxdp')})")
            port = int(info["ports"]["kv"])
            # warm-up: first connections, caches, the agent's listener
            _measure(hp, port, min(conn_counts), args.pipeline, min(0.3, duration), None)
            hosts[mode] = (hp, port)
        for conns in conn_counts:
            samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for rep in range(repeat):
                # one sample of each mode, in turn (reversed every other round),
                # so a drift of the machine's speed hits every mode alike
                for mode in (modes if rep % 2 == 0 else modes[::-1]):
                    hp, port = hosts[mode]
                    prog = Progress(duration, f"{mode:>8} {conns:>5} conns "
                                              f"run {rep + 1}/{repeat}", every=2.0)
                    samples[mode].append(_measure(hp, port, conns, args.pipeline, duration,
                                                  prog))
                    prog.close()
            for mode in modes:
                cell = {"mode": mode, "connections": conns, **_median_cell(samples[mode]),
                        "samples": samples[mode]}
                cells.append(cell)
                _say(f"{mode:>8} {conns:>5} conns: {cell['rpc_per_s']:>9,.0f} RPC/s, host "
                     f"{cell['host_cpu_s_per_100k']:.2f} CPU s/100k RPCs, p50 "
                     f"{cell['p50_us'] / 1e3:.2f} ms"
                     + (f", {cell['errors']} errors" if cell["errors"] else ""))
        for mode in modes:
            if mode != "direct":
                notes[mode]["counters"] = _counters(hosts[mode][0].stats())

    ratios = _ratios(cells, conn_counts)
    # the floor beside every sample (module doc): its median and spread
    sample_py = [s["floor_s_per_100k"] for c in cells for s in c["samples"]]
    sample_c = [s["floor_c_s_per_100k"] for c in cells for s in c["samples"]
                if s["floor_c_s_per_100k"] is not None]
    return {
        "benchmark": "mux-rpc bench (end to end)",
        "date": started.isoformat(timespec="seconds"),
        "command": "mux-rpc bench " + " ".join(_argv_of(args)),
        "machine": machine_notes(),
        "config": {"modes": modes, "connections": conn_counts, "duration": duration,
                   "repeat": repeat, "pipeline": args.pipeline, "queues": args.queues,
                   "netns": args.netns, "workload": "echo('hello', i), msgpack-rpc"},
        "floor": {"rpc_per_s": floor["requests_per_s"], "host_cpu_s_per_100k": floor_100k,
                  "host_cpu_us_per_rpc": floor["cpu_us_per_request"], "requests": floor_n,
                  **_spread(sample_py)},
        "floor_c": None if floor_c is None else {
            "rpc_per_s": floor_c["requests_per_s"],
            "host_cpu_s_per_100k": floor_c["cpu_us_per_request"] / 10,
            "host_cpu_us_per_rpc": floor_c["cpu_us_per_request"],
            "requests": floor_n, "path": floor_c["path"], **_spread(sample_c)},
        "transport": notes,
        "cells": cells,
        "ratios": ratios,
        "targets": _targets(ratios),
        "errors": sum(c["errors"] for c in cells),
    }


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = []
    for opt in ("modes", "connections", "duration", "repeat", "pipeline", "queues"):
        out += [f"--{opt}", str(getattr(args, opt))]
    for flag in ("netns", "quick", "json"):
        if getattr(args, flag, False):
            out.append(f"--{flag}")
    return out


def _counters(stats: dict[str, Any]) -> dict[str, Any]:
    links = stats.get("links", [])
    frames = sum(int(l.get("frames_in", 0)) + int(l.get("frames_out", 0)) for l in links)
    msgs = sum(int(l.get("messages_in", 0)) + int(l.get("messages_out", 0)) for l in links)
    return {"frames": frames, "messages": msgs,
            "messages_per_frame": msgs / frames if frames else None,
            "credit_stalls": sum(int(l.get("credit_stalls", 0)) for l in links),
            "link_drops": sum(sum(l.get("dropped", {}).values()) for l in links)}


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {}
    return {"per_sample_median": statistics.median(values), "per_sample_min": min(values),
            "per_sample_max": max(values)}


def _paired(x: dict[str, Any], direct: dict[str, Any]) -> float:
    """X/direct: the median of the ratios of samples taken side by side (the
    i-th of each cell, measured one after the other); the cells' medians when
    the samples do not pair up."""
    xs, ds = x.get("samples", []), direct.get("samples", [])
    if xs and len(xs) == len(ds):
        return float(statistics.median(a["host_cpu_s_per_100k"] / b["host_cpu_s_per_100k"]
                                       for a, b in zip(xs, ds, strict=True)))
    return float(x["host_cpu_s_per_100k"] / direct["host_cpu_s_per_100k"])


def _ratios(cells: list[dict[str, Any]], conn_counts: list[int]) -> list[dict[str, Any]]:
    """Per connection count: X/direct from the samples taken side by side
    (:func:`_paired`); X/floor from the medians of per-sample ratios (each
    sample against its own floor)."""
    by = {(c["mode"], c["connections"]): c for c in cells}
    out = []
    for n in conn_counts:
        row: dict[str, Any] = {"connections": n}
        direct = by.get(("direct", n))
        for mode in ("afxdp", "afpacket"):
            c = by.get((mode, n))
            if c is None:
                continue
            row[f"{mode}_vs_floor"] = c["vs_floor"]
            if mode == "afxdp":
                row["afxdp_kernel_vs_floor"] = c["kernel_vs_floor"]
                if c["vs_floor_c"] is not None:
                    row["afxdp_vs_floor_c"] = c["vs_floor_c"]
            if direct is not None:
                row[f"{mode}_vs_direct"] = _paired(c, direct)
        if direct is not None:
            row["direct_vs_floor"] = direct["vs_floor"]
        out.append(row)
    return out


def _targets(ratios: list[dict[str, Any]]) -> dict[str, Any]:
    at = next((r for r in ratios if r["connections"] == TARGET_VS_DIRECT_AT), None)
    vs_direct = at.get("afxdp_vs_direct") if at else None
    vs_floor = [r["afxdp_vs_floor"] for r in ratios if "afxdp_vs_floor" in r]
    return {
        "afxdp_vs_direct_at_64": {"target": TARGET_VS_DIRECT, "measured": vs_direct,
                                  "met": None if vs_direct is None
                                  else vs_direct <= TARGET_VS_DIRECT},
        "afxdp_vs_floor_max": {"target": TARGET_VS_FLOOR,
                               "measured": max(vs_floor) if vs_floor else None,
                               "met": None if not vs_floor
                               else max(vs_floor) <= TARGET_VS_FLOOR},
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = []
    m = summary["machine"]
    lines.append(f"mux-rpc bench, {summary['date']}, {m['cpu']} ({m['cpus_usable']} CPUs), "
                 f"Linux {m['kernel']}, Python {m['python']}")
    cfg = summary["config"]
    lines.append(f"workload: {cfg['workload']}, {cfg['pipeline']} in flight per connection, "
                 f"{cfg['duration']} s x {cfg['repeat']} per cell (median)")
    lines.append("")
    hdr = (f"{'mode':<9} {'conns':>5} {'RPC/s':>9} {'host CPU s':>10} {'agent CPU s':>11} "
           f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    lines += [hdr, f"{'':<9} {'':>5} {'':>9} {'per 100k':>10} {'per 100k':>11}", "-" * len(hdr)]
    for c in summary["cells"]:
        agent = c["agent_cpu_s_per_100k"]
        lines.append(f"{c['mode']:<9} {c['connections']:>5} {c['rpc_per_s']:>9,.0f} "
                     f"{c['host_cpu_s_per_100k']:>10.2f} "
                     f"{'-' if agent is None else f'{agent:.2f}':>11} "
                     f"{c['p50_us'] / 1e3:>7.2f} {c['p99_us'] / 1e3:>7.2f} {c['errors']:>6}")
    f = summary["floor"]
    lines.append(f"{'floor':<9} {'-':>5} {f['rpc_per_s']:>9,.0f} "
                 f"{f['host_cpu_s_per_100k']:>10.2f} {'-':>11} {'-':>7} {'-':>7} {'-':>6}")
    fc = summary.get("floor_c")
    if fc is not None:
        lines.append(f"{'floor[c]':<9} {'-':>5} {fc['rpc_per_s']:>9,.0f} "
                     f"{fc['host_cpu_s_per_100k']:>10.2f} {'-':>11} {'-':>7} {'-':>7} {'-':>6}")
    if "per_sample_min" in f:
        lines.append(f"(floor beside each sample: {f['per_sample_min']:.2f}-"
                     f"{f['per_sample_max']:.2f}, median {f['per_sample_median']:.2f}; "
                     f"ratios to the floor use each sample's own)")
    lines.append("")
    lines.append("host CPU per RPC, ratios (lower is better):")
    cols = ["afxdp_vs_direct", "afxdp_vs_floor", "afxdp_kernel_vs_floor", "afxdp_vs_floor_c",
            "afpacket_vs_direct", "afpacket_vs_floor", "direct_vs_floor"]
    present = [k for k in cols if any(k in r for r in summary["ratios"])]
    names = {"afxdp_vs_direct": "afxdp/direct", "afxdp_vs_floor": "afxdp/floor",
             "afxdp_kernel_vs_floor": "afxdp kernel/fl", "afxdp_vs_floor_c": "afxdp/floor[c]",
             "afpacket_vs_direct": "afpacket/direct", "afpacket_vs_floor": "afpacket/floor",
             "direct_vs_floor": "direct/floor"}
    lines.append(f"{'conns':>5} " + " ".join(f"{names[k]:>16}" for k in present))
    for r in summary["ratios"]:
        lines.append(f"{r['connections']:>5} " + " ".join(
            f"{r[k]:>16.2f}" if k in r else f"{'-':>16}" for k in present))
    lines.append("")
    t = summary["targets"]
    for key, text in (("afxdp_vs_direct_at_64", "afxdp host CPU/RPC <= 0.5x direct at 64 conns"),
                      ("afxdp_vs_floor_max", "afxdp host CPU/RPC <= 2x floor, every count")):
        v = t[key]
        verdict = ("n/a" if v["met"] is None else "MET" if v["met"] else "MISSED")
        meas = "-" if v["measured"] is None else f"{v['measured']:.2f}x"
        lines.append(f"target: {text}: measured {meas}: {verdict}")
    lines.append("(floor = the pure-Python floor the targets name; floor[c] = the same work "
                 "through the runtime's C dispatch path; afxdp kernel/fl = the host's system "
                 "time alone, over the floor)")
    for mode, n in summary["transport"].items():
        if "counters" in n:
            k = n["counters"]
            mpf = k["messages_per_frame"]
            lines.append(f"{mode}: {n.get('backend')} {','.join(n.get('xdp_modes') or [])}, "
                         f"{n.get('queues')} queue(s); {k['frames']:,} frames, "
                         f"{'-' if mpf is None else f'{mpf:.1f}'} messages/frame, "
                         f"{k['credit_stalls']} credit stalls, {k['link_drops']} link drops")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Throughput against host CPU per 100k RPCs, one series per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"afxdp": "o", "afpacket": "s", "direct": "^"}
    for mode in summary["config"]["modes"]:
        cs = [c for c in summary["cells"] if c["mode"] == mode]
        xs = [c["host_cpu_s_per_100k"] for c in cs]
        ys = [c["rpc_per_s"] for c in cs]
        ax.plot(xs, ys, marker=markers.get(mode, "o"), label=mode)
        for c, x, y in zip(cs, xs, ys):
            ax.annotate(f"{c['connections']}", (x, y), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    f = summary["floor"]
    fl = f.get("per_sample_median", f["host_cpu_s_per_100k"])
    ax.axvline(fl, color="grey", linestyle="--", label=f"floor ({fl:.2f} s)")
    ax.axvline(2 * fl, color="grey", linestyle=":", label="2x floor (target)")
    ax.set_xlabel("host CPU seconds per 100k RPCs (lower is better)")
    ax.set_ylabel("RPCs/s")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title("mux-rpc end to end: kv/echo, labels = client connections", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """``mux-rpc bench``."""
    sweep_leftovers(lambda line: _say(f"mux-rpc bench: {line}"))
    try:
        summary = run_bench(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        _say(f"mux-rpc bench: {exc}")
        return 1
    table = format_table(summary)
    if args.plot:
        path = Path(args.plot)
        if not path.is_absolute() and not path.parent.exists() and (REPO / path.parent).exists():
            path = REPO / path
        plot(summary, path)
        summary["plot"] = str(path)
        table += f"\nplot: {path}"
    if args.json:
        _say(table)
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(table)
    return 1 if summary["errors"] else 0
