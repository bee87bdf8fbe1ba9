"""``mux-rpc demo``: the whole offload path, end to end, in one command.

What happens (docs/demo.md has the longer story):

1. a host process starts (:class:`mux_rpc._loadgen.HostProcess`); it creates a
   veth pair (host end optionally in its own network namespace), attaches the
   XDP program, opens one AF_XDP socket per queue - or, where AF_XDP cannot be
   used, creates shared-memory rings and says why - and starts the agent as
   its own process on the other end;
2. the host asks the agent to listen on three loopback ports and serves the
   example services on them: kv/echo over msgpack-rpc
   (examples/kv_service.py), a JSON-lines calculator over a custom framer
   (examples/custom_framer_service.py) and an NVMe/TCP-style block device
   receiving PDU headers and data apart (examples/nvme_pdu_handler.py);
3. this process opens TCP clients to the three ports and drives pipelined
   calls for the duration, checking every reply, with a progress bar on
   stderr;
4. it reads every counter of the host and the agent, prints the results table
   and the checks, and tears everything down (agent, XDP program, veth pair,
   namespace) - also on failure or Ctrl-C.

Exit status: 0 when every call got its correct reply and no message was lost
between agent and host; 1 otherwise; 2 when the path could not be brought up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from ._loadgen import (
    HostProcess,
    MsgpackWorkload,
    NdjsonWorkload,
    NvmeWorkload,
    Progress,
    Workload,
    client_loop_factory,
    raise_fd_limit,
    run_load,
)
from ._orchestrate import sweep_leftovers

__all__ = ["run", "run_demo"]

SHORT_DURATION = 2.0
DEFAULT_DURATION = 10.0
SHORT_CONNECTIONS = 16
DEFAULT_CONNECTIONS = 64


def _say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def _host_config(args: argparse.Namespace) -> dict[str, Any]:
    verbose = getattr(args, "verbose", 0) or 0
    return {"mode": "offload", "backend": args.backend, "queues": args.queues,
            "netns": bool(args.netns), "services": ["kv", "ndjson", "nvme"],
            "log_level": logging.WARNING - 10 * min(verbose, 2),
            "agent_args": ["-v"] * min(verbose, 2)}


def _transport_line(info: dict[str, Any]) -> str:
    backend = info.get("backend")
    q = info.get("queues")
    where = ", host end in its own network namespace" if info.get("netns") else ""
    if backend == "afxdp":
        modes = info.get("xdp_modes") or ["?"]
        why = (" (veth has no AF_XDP zero-copy support: the kernel copies each frame into "
               "the UMEM)" if modes == ["copy"] else "")
        return (f"AF_XDP on a veth pair, {'/'.join(modes)} mode{why}, XDP program in native "
                f"mode, {q} queue(s){where}")
    if backend == "shm":
        reason = info.get("why_not_afxdp")
        return (f"shared-memory rings, {q} queue(s): "
                + (f"AF_XDP unusable here ({reason})" if reason else "as asked (--backend shm)"))
    return f"{backend}, {q} queue(s){where}"


def run_demo(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Run the demo; returns (exit status, summary)."""
    duration = args.duration or (SHORT_DURATION if args.short else DEFAULT_DURATION)
    conns = args.connections or (SHORT_CONNECTIONS if args.short else DEFAULT_CONNECTIONS)
    if conns < 1 or duration <= 0 or args.depth < 1 or args.queues < 1:
        raise SystemExit("mux-rpc demo: --connections, --duration, --depth and --queues "
                         "must be positive")
    raise_fd_limit(4 * conns + 1024)
    side = max(1, conns // 4)
    _say(f"mux-rpc demo: bringing up the link ({args.backend}, {args.queues} queue(s)"
         f"{', host end in a netns' if args.netns else ''}), the agent and the host ...")
    t_up = time.monotonic()
    with HostProcess(_host_config(args)) as hp:
        info = hp.info
        _say(f"  up in {time.monotonic() - t_up:.1f} s: {_transport_line(info)}")
        _say(f"  host pid {info['pid']}, agent pid {info.get('agent_pid')}; services on "
             + ", ".join(f"{k} 127.0.0.1:{v}" for k, v in info["ports"].items()))
        ports = info["ports"]
        workloads: list[Workload] = [
            MsgpackWorkload(ports["kv"], connections=conns, depth=args.depth, mix="kv"),
            NdjsonWorkload(ports["ndjson"], connections=side, depth=args.depth),
            NvmeWorkload(ports["nvme"], connections=side, depth=args.depth),
        ]
        total_conns = sum(w.connections for w in workloads)
        _say(f"  driving {total_conns} TCP clients on loopback for {duration:g} s, "
             f"{args.depth} calls in flight each ...")
        before = hp.stats()
        bar = Progress(duration, "  load")

        def progress(elapsed: float, calls: int) -> None:
            bar.update(elapsed, f"{calls:,} calls, {calls / max(elapsed, 1e-9):,.0f}/s")

        with asyncio.Runner(loop_factory=client_loop_factory()) as runner:
            runner.run(run_load(workloads, duration=duration, progress=progress))
        bar.close()
        # closes of the clients reach the agent and the host asynchronously
        stats = _settled_stats(hp, total_conns)
    summary = _summarise(info, workloads, stats, duration, before)
    print(format_report(summary))
    return (0 if summary["ok"] else 1), summary


def _settled_stats(hp: HostProcess, conns: int, timeout: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = hp.stats()
        host = stats.get("host", {})
        if host.get("connections_open", 0) == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def _link_drops(link: dict[str, Any]) -> tuple[int, int]:
    """(drops, start-up drops) of one link end.

    The host says HELLO on every queue as soon as its sockets are bound, which
    is before the agent's are: those first frames find no socket, and the
    agent's link counts one ``seq_gap`` per queue when the next frame on that
    queue arrives (on an idle queue that may be during the load). One seq_gap
    per queue is that start-up, not a loss; anything beyond it is."""
    dropped = dict(link.get("dropped", {}))
    startup = min(int(dropped.get("seq_gap", 0)), 1)
    return sum(dropped.values()) - startup, startup


def _drops(stats: dict[str, Any]) -> tuple[int, int, int, int]:
    """(host link drops, agent link drops, host backend RX drops, start-up drops)."""
    links = stats.get("links", [])
    agent = stats.get("agent", {})
    agent_links = agent.get("links", []) if isinstance(agent.get("links"), list) else []
    agent_d = [_link_drops(l) for l in agent_links]
    return (sum(sum(l.get("dropped", {}).values()) for l in links),
            sum(d for d, _ in agent_d),
            sum(int((l.get("backend") or {}).get("rx_dropped", 0)) for l in links),
            sum(s for _, s in agent_d))


def _summarise(info: dict[str, Any], workloads: list[Workload], stats: dict[str, Any],
               duration: float, before: dict[str, Any] | None = None) -> dict[str, Any]:
    services = [w.result.summary() | {"port": w.port} for w in workloads]
    host = stats.get("host", {})
    agent = stats.get("agent", {})
    links = stats.get("links", [])
    frames_in = sum(int(l.get("frames_in", 0)) for l in links)
    frames_out = sum(int(l.get("frames_out", 0)) for l in links)
    msgs_in = sum(int(l.get("messages_in", 0)) for l in links)
    msgs_out = sum(int(l.get("messages_out", 0)) for l in links)
    link = {
        "frames_in": frames_in, "frames_out": frames_out,
        "messages_in": msgs_in, "messages_out": msgs_out,
        "messages_per_frame_in": msgs_in / frames_in if frames_in else 0.0,
        "messages_per_frame_out": msgs_out / frames_out if frames_out else 0.0,
        "credit_stalls": sum(int(l.get("credit_stalls", 0)) for l in links),
        "tx_short": sum(int(l.get("tx_short", 0)) for l in links),
    }
    # drops while the clients ran (the counters' growth); HELLOs lost at link
    # start-up are reported apart (see _link_drops)
    now_d = _drops(stats)
    start_d = _drops(before) if before is not None else (0, 0, 0, 0)
    host_drops, agent_drops, rx_drops, _ = (a - b for a, b in zip(now_d, start_d))
    startup = now_d[3]
    link.update(drops=host_drops, agent_drops=agent_drops, backend_rx_dropped=rx_drops,
                startup_drops=startup)
    calls = sum(s["calls"] for s in services)
    sent = sum(s["sent"] for s in services)
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    errors = sum(s["errors"] for s in services)
    lost = sum(s["lost"] for s in services)
    check("every reply correct", errors == 0 and calls == sent and calls > 0,
          f"{calls:,} of {sent:,} calls answered correctly, {errors} errors")
    check("no message lost", lost == 0, f"{lost} replies missing at the end")
    h_in, h_out = host.get("messages_in"), host.get("messages_out")
    a_to, a_from = agent.get("messages_to_host"), agent.get("messages_from_host")
    check("agent -> host: every message delivered", a_to is not None and a_to == h_in == calls,
          f"agent sent {a_to}, host received {h_in}, clients got {calls} replies")
    check("host -> agent: every reply delivered", a_from is not None and a_from == h_out,
          f"host sent {h_out} DATA messages (a run's msgpack-rpc replies go joined in one), "
          f"agent received {a_from}")
    check("link drops = 0 under load", host_drops == 0 and agent_drops == 0 and rx_drops == 0,
          f"host end {host_drops}, agent end {agent_drops}, backend rx {rx_drops}"
          + (f"; {startup} HELLO frame(s) sent before the agent's sockets were bound, at "
             "start-up (one seq_gap per queue)" if startup else ""))
    bad = {k: v for k, v in host.items()
           if k in ("protocol_errors", "credit_violations", "unknown_conn", "agent_errors",
                    "links_lost", "backlog_overflow", "early_dropped") and v}
    check("host protocol counters clean", not bad and "error" not in agent,
          ", ".join(f"{k}={v}" for k, v in bad.items()) or "no protocol errors, credit "
          "violations or lost links")
    return {"duration": duration, "transport": info, "services": services, "link": link,
            "host": host, "agent": agent, "checks": checks,
            "ok": all(c["ok"] for c in checks)}


def format_report(s: dict[str, Any]) -> str:
    out = [""]
    hdr = (f"{'service':<30} {'port':>5} {'conns':>5} {'calls':>9} {'errors':>6} "
           f"{'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    out += [hdr, "-" * len(hdr)]
    for r in s["services"]:
        out.append(f"{r['name']:<30} {r['port']:>5} {r['connections']:>5} {r['calls']:>9,} "
                   f"{r['errors']:>6} {r['calls_per_s']:>9,.0f} {r['p50_us'] / 1e3:>7.2f} "
                   f"{r['p99_us'] / 1e3:>7.2f}")
    tot_calls = sum(r["calls"] for r in s["services"])
    secs = max((r["seconds"] for r in s["services"]), default=0.0) or 1.0
    out.append(f"{'total':<30} {'':>5} {sum(r['connections'] for r in s['services']):>5} "
               f"{tot_calls:>9,} {sum(r['errors'] for r in s['services']):>6} "
               f"{tot_calls / secs:>9,.0f}")
    out.append("")
    out.append(f"transport: {_transport_line(s['transport'])}")
    lk = s["link"]
    out.append(f"link, host end: {lk['frames_in']:,} frames in ({lk['messages_per_frame_in']:.1f} "
               f"messages/frame), {lk['frames_out']:,} frames out "
               f"({lk['messages_per_frame_out']:.1f} messages/frame), "
               f"{lk['credit_stalls']} credit stalls, {lk['tx_short']} short TX batches, "
               f"{lk['drops'] + lk['agent_drops']} drops under load")
    h, a = s["host"], s["agent"]
    out.append(f"host:  {h.get('messages_in', 0):,} messages in, {h.get('messages_out', 0):,} "
               f"out, {h.get('connections_accepted', 0)} connections accepted, "
               f"{h.get('credits_sent', 0):,} credit grants sent, "
               f"{h.get('peer_half_closes', 0)} client half-closes answered, close reasons "
               f"{h.get('close_reasons', {})}")
    if "error" in a:
        out.append(f"agent: {a['error']}")
    else:
        out.append(f"agent: {a.get('messages_to_host', 0):,} messages to host, "
                   f"{a.get('messages_from_host', 0):,} from host, "
                   f"{a.get('connections_accepted', 0)} connections accepted, "
                   f"{a.get('read_pauses', 0)} read pauses (out of credit), "
                   f"{a.get('framing_errors', 0)} framing errors, closed {a.get('closed', {})}")
    out.append("")
    for c in s["checks"]:
        out.append(f"  [{'ok' if c['ok'] else 'FAIL':>4}] {c['check']}: {c['detail']}")
    out.append("")
    out.append("demo " + ("passed" if s["ok"] else "FAILED") + "; link, agent and host torn down.")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """``mux-rpc demo``."""
    sweep_leftovers(lambda line: _say(f"mux-rpc demo: {line}"))
    try:
        rc, _ = run_demo(args)
        return rc
    except KeyboardInterrupt:
        _say("\nmux-rpc demo: interrupted; everything was torn down")
        return 130
    except (RuntimeError, TimeoutError, OSError, ConnectionError) as exc:
        _say(f"mux-rpc demo: {exc}")
        return 2
