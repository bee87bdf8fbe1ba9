"""The ``mux-rpc`` command line.

Every subcommand imports what it needs lazily, inside its function: ``mux-rpc
--help`` never loads cffi, pyroute2 or the agent.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
mux-rpc: a message-multiplexing RPC runtime. TCP and message framing run in an
offload agent (on a SmartNIC's CPU, or a separate process here); the host
receives whole messages over AF_XDP (or shared memory) with credit-based flow
control.

subcommands:
  agent   run the offload agent (TCP termination, framing, mux onto the link)
  serve   run a host application (module:app) behind an agent
  demo    end-to-end demo: veth pair, agent process, host echo service, TCP clients
  bench   benchmarks of the offload path against plain asyncio TCP
  stats   print the counters of running agents and hosts
  cleanup remove veth pairs and namespaces left by killed mux-rpc processes

Ctrl-C (SIGINT) or SIGTERM tears down whatever a command brought up (agent,
host processes, XDP program, veth pair, namespace); the exit status is then
130 (SIGINT) or 143 (SIGTERM). SIGKILL cannot be caught: what a killed
process leaves behind is removed by "mux-rpc cleanup", which demo and bench
(and the first veth pair any process creates) run first.
"""

CLEANUP_DESCRIPTION = """Remove the veth pairs and network namespaces that mux-rpc processes killed by
SIGKILL (or the OOM killer, or a crash) left behind; Ctrl-C and SIGTERM never
leave any.

Only our own are ever removed. Every veth end and namespace mux-rpc creates is
named

    mx<role><pid><random>        e.g. mxa00ilx3f9a1c (14 bytes)

  role    a = agent end, h = host end, n = network namespace
  pid     the creating process's pid, 5 base-36 digits (0-9a-z)
  random  6 hex digits, shared by the pair's names

and its veth ends carry the alias "mux-rpc owner pid=P start=T pidns=N" (see
"ip -d link"), T being the owner's start time from /proc/P/stat. A veth (link
kind veth, in this network namespace) or a namespace (/run/netns) is removed
when its name matches exactly AND its owner is gone: no process P, a zombie, or
a process P with another start time (the pid was reused). Any other interface
or namespace, and ours whose owner is alive or in another pid namespace, is
left alone. XDP programs go with their interface (and mux-rpc attaches them
through a bpf_link where the kernel has them, which the kernel removes when
the owning process dies).

Needs root (CAP_NET_ADMIN) to remove anything. Exit status 0 when everything
stale was removed (or nothing was), 1 when something could not be.
"""

SERVE_EPILOG = """\
APP is "package.module:attribute". The attribute may be
  - a mux_rpc App (served by a mux_rpc Server);
  - an async callable taking one offloaded connection (a MessageConnection),
    called once per accepted connection;
  - an object with "async serve(listener)" (e.g. a mux_rpc Server), given the
    offloaded listener;
  - a zero-argument callable returning one of the above (a factory).
The default framer is msgpack-rpc for a mux_rpc App (or a Server of one),
length for anything else.

Without --ifname, serve builds everything itself: a veth pair (random names,
removed on exit), an agent process on one end, the host on the other.
With --ifname, the host end already exists and an agent already runs on the
peer end (e.g. on a SmartNIC): serve only attaches to it.

With --workers N (AF_XDP only), serve creates a veth pair with N queues,
attaches the XDP program once, starts N host worker processes, each owning
one queue's AF_XDP socket and serving APP on it, then the agent. Every worker
listens on the same port; the agent spreads the connections round robin over
the workers' queues. A worker or the agent exiting stops everything (exit 1).
"""

STATS_EPILOG = """\
Every agent and host process serves its counters as one JSON object on a UNIX
socket named <role>-<pid>.sock in $MUX_RPC_STATS_DIR, else /run/mux-rpc (root),
else /tmp/mux-rpc-<uid>. Connect and read until EOF; stats does exactly that.
"""


def _add_link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queues", type=int, default=2, metavar="N",
                   help="number of link queues (one AF_XDP socket per queue; default 2; "
                        "serve --workers N: N)")
    p.add_argument("--backend", choices=("auto", "afxdp", "afpacket", "shm"), default="auto",
                   help="link backend: AF_XDP on a veth pair when usable (root, cffi "
                        "extension, BPF object), else shared memory (default auto); "
                        "afpacket: AF_PACKET mmap rings on the veth pair, one queue")
    p.add_argument("--netns", action="store_true",
                   help="move the host end of the veth pair into its own network namespace")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mux-rpc", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "agent", add_help=False,
        help="run the offload agent (arguments go to python -m agent; see mux-rpc agent --help)",
        description="Run the offload agent. Every argument is passed to the agent's own parser "
                    "(python -m agent): --ifname IF --queues N --netns NS --backend "
                    "afxdp|afpacket|shm ...")
    p.add_argument("agent_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser(
        "serve", help="run a host application behind an offload agent",
        description="Serve APP on offloaded TCP connections: the agent listens on "
                    "127.0.0.1:PORT, frames each client's bytes into whole messages and "
                    "hands them to APP over the link.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", metavar="APP", help='the application, "module:attribute"')
    p.add_argument("--ifname", metavar="IF",
                   help="attach to this existing host-end interface (an agent must run on "
                        "its peer); default: create a veth pair and start an agent")
    p.add_argument("--port", type=int, default=7000,
                   help="TCP port the agent listens on for clients (default 7000; 0 = any)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address the agent listens on (default 127.0.0.1)")
    p.add_argument("--framer", default=None,
                   help='framer spec for the listener, e.g. "length", "length:size=2,strip=2", '
                        '"msgpack-rpc", "nvme-tcp", "onc-rpc" (default: msgpack-rpc for a '
                        'mux_rpc App, length for anything else)')
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="host worker processes, one per queue, connections spread over "
                        "them (default 1: one process serves every queue); N > 1 needs "
                        "AF_XDP and uses N queues")
    _add_link_options(p)
    p.set_defaults(func=_cmd_serve, queues=None)

    p = sub.add_parser(
        "demo", help="end-to-end demo over a veth pair (what scripts/demo.sh runs)",
        description="Bring up a veth pair (AF_XDP; shared memory where AF_XDP cannot be "
                    "used, saying why), start the agent and the host in their own processes "
                    "with the example services (kv/echo msgpack-rpc, an ndjson custom-framer "
                    "service, an NVMe/TCP-style PDU handler), drive TCP clients on loopback "
                    "through them, check every reply and print a results table with the "
                    "transport and the agent/host counters. Everything is removed on exit. "
                    "Exit status 1 if any call failed or a message was lost.")
    _add_link_options(p)
    p.add_argument("--short", action="store_true",
                   help="a few seconds of load, fewer connections (CI)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="seconds of load (default 10; 2 with --short)")
    p.add_argument("--connections", "--clients", dest="connections", type=int, default=None,
                   metavar="N", help="TCP clients of the kv service (default 64; 16 with "
                                     "--short); the other services get a quarter each")
    p.add_argument("--depth", type=int, default=4, metavar="N",
                   help="requests in flight per client connection (default 4)")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more logging (-v info, -vv debug)")
    p.set_defaults(func=_cmd_module("mux_rpc.demo"))

    p = sub.add_parser(
        "bench", help="benchmarks: offload path vs plain asyncio TCP",
        description="End to end: RPCs/s and host-process CPU per 100k RPCs for the kv/echo "
                    "service offloaded over AF_XDP, offloaded over AF_PACKET, and served "
                    "directly by asyncio TCP (the baseline), at several connection counts, "
                    "next to the pure-Python floor (decode, dispatch, encode; no I/O). "
                    "Prints a table with the ratios and saves a plot.")
    p.add_argument("--modes", default="afxdp,afpacket,direct",
                   help="comma-separated subset of afxdp, afpacket, direct (the asyncio TCP "
                        "baseline) (default all three)")
    p.add_argument("--connections", default="1,64,1000", metavar="N,N,...",
                   help="client connection counts (default 1,64,1000)")
    p.add_argument("--duration", type=float, default=2.0, metavar="SECONDS",
                   help="seconds per measurement (default 2)")
    p.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="measurements per cell; the median is reported (default 3)")
    p.add_argument("--pipeline", type=int, default=8, metavar="N",
                   help="requests in flight per connection (default 8)")
    p.add_argument("--queues", type=int, default=2, metavar="N",
                   help="AF_XDP link queues (default 2; AF_PACKET carries one)")
    p.add_argument("--netns", action="store_true",
                   help="move the host end of the veth pair into its own network namespace")
    p.add_argument("--quick", action="store_true",
                   help="a short run (0.5 s per cell, one measurement) for tests")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout (table on stderr)")
    p.add_argument("--plot", default="bench/out/e2e.png", metavar="PATH",
                   help='PNG plot of throughput against host CPU (default bench/out/e2e.png; '
                        '"" for none)')
    p.set_defaults(func=_cmd_module("mux_rpc.bench"))

    p = sub.add_parser(
        "stats", help="print counters of running agents and hosts",
        description="Read the counters of every running agent and host process from their "
                    "stats sockets and print them.",
        epilog=STATS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", metavar="PATH", action="append",
                   help="read only this socket (repeatable)")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "cleanup", help="remove veth pairs and namespaces left by killed mux-rpc processes",
        description=CLEANUP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="remove nothing; list what would be removed and what is kept")
    p.set_defaults(func=_cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "agent" hands everything after it to the agent's own parser (--help included),
    # which argparse.REMAINDER cannot do when the first of them is an option.
    i = 0
    while i < len(argv) and argv[i] in ("-v", "-vv", "--verbose"):
        i += 1
    if i < len(argv) and argv[i] == "agent":
        args = parser.parse_args(argv[: i + 1])
        args.agent_args = argv[i + 1:]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    terminated, restore = _terminate_on_sigterm()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        rc = func(args)
    except KeyboardInterrupt:
        rc = 130
    finally:
        restore()  # main() called as a function (tests) leaves SIGTERM as it was
    return 128 + signal.SIGTERM if terminated else rc


def _terminate_on_sigterm() -> tuple[list[int], Callable[[], object]]:
    """Make SIGTERM do what Ctrl-C does, so that the same teardown runs (host
    process, agent, veth pair, stats directory) instead of the process dying on
    the spot and orphaning its children: the current SIGINT handler is called
    (asyncio.Runner's cancels its main task; Python's raises KeyboardInterrupt).
    Raising from the handler instead would not do: uvloop reports an exception
    raised inside a protocol callback as a transport error and goes on.

    Returns a list that is non-empty once SIGTERM came (exit status 143 then)
    and a function that puts the previous handler back.
    A process forked from this one (pyroute2's netns helpers) inherits the
    handler; there it exits at once without unwinding the parent's state."""
    owner = os.getpid()
    terminated: list[int] = []

    def on_term(signum: int, frame: types.FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        terminated.append(signum)
        on_int = signal.getsignal(signal.SIGINT)
        if callable(on_int):
            on_int(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job) or default: terminate all the same
            raise KeyboardInterrupt

    prev = signal.getsignal(signal.SIGTERM)
    if prev is not signal.SIG_DFL or threading.current_thread() is not threading.main_thread():
        return terminated, lambda: None
    signal.signal(signal.SIGTERM, on_term)
    return terminated, lambda: signal.signal(signal.SIGTERM, prev)


def _setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- subcommands ------------------------------------------------------------------


def _cmd_agent(args: argparse.Namespace) -> int:
    # The CLI is the agent's entry point here: nothing else imports agent.
    try:
        agent = importlib.import_module("agent")
        entry = getattr(agent, "main", None)
        if entry is None:
            entry = importlib.import_module("agent.__main__").main
    except (ImportError, AttributeError) as exc:
        print(f"mux-rpc agent: the agent is not available: {exc}", file=sys.stderr)
        if "-h" in args.agent_args or "--help" in args.agent_args:
            print("usage: mux-rpc agent --ifname IF [--queues N] [--netns NS] "
                  "[--backend afxdp|afpacket|shm] ...", file=sys.stderr)
        return 2
    rc = entry(list(args.agent_args))
    return int(rc or 0)


def _cmd_module(modname: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            print(f"mux-rpc {args.command}: {modname} is not available in this installation "
                  f"(module {modname} missing)", file=sys.stderr)
            return 2
        rc = mod.run(args)
        return int(rc or 0)

    return run


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._orchestrate import serve_main

    return serve_main(args)


def _cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._stats import read_stats, stats_dir

    paths = [Path(p) for p in args.socket] if args.socket else sorted(stats_dir().glob("*.sock"))
    if not paths:
        print(f"no running agent or host (no stats socket in {stats_dir()})", file=sys.stderr)
        return 1
    rc = 0
    for path in paths:
        try:
            snap = read_stats(path)
        except (OSError, ValueError) as exc:
            print(f"{path}: unreachable ({exc})", file=sys.stderr)
            rc = 1
            continue
        if args.json:
            print(json.dumps({"socket": str(path), **snap}))
        else:
            print(f"== {path.name}")
            _print_flat(snap, "  ")
    return rc


def _cmd_cleanup(args: argparse.Namespace) -> int:
    import logging

    from xport._topology import sweep_stale

    topo_log = logging.getLogger("xport.topology")
    level = topo_log.level
    if not args.verbose:  # the lines below say it once, on stdout
        topo_log.setLevel(logging.ERROR)
    try:
        res = sweep_stale(dry_run=args.dry_run)
    finally:
        topo_log.setLevel(level)
    verb = "would remove" if res.dry_run else "removed"
    for name in res.links:
        print(f"{verb} veth {name}")
    for name in res.netns:
        print(f"{verb} netns {name}")
    for name, why in res.kept:
        print(f"kept {name}: {why}")
    for name, err in res.errors:
        print(f"could not remove {name}: {err}", file=sys.stderr)
    if not (res.removed or res.kept or res.errors):
        print("nothing to clean up: no veth pair or namespace of mux-rpc's is left")
    return 1 if res.errors else 0


def _print_flat(obj: object, indent: str, prefix: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _print_flat(v, indent, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}")
    else:
        print(f"{indent}{prefix:<40} {obj}")
