"""``python -m agent`` / ``mux-rpc agent``: run the offload agent on one link end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._config import AgentConfig

__all__ = ["build_parser", "main"]

log = logging.getLogger("agent")

T = TypeVar("T")

_D = AgentConfig()  # defaults (a slotted dataclass has no class-level defaults)

DESCRIPTION = """\
The mux-rpc offload agent. It terminates TCP for the host: it listens and
connects where the host asks (LISTEN / CONNECT over the link), splits every
client's byte stream into whole messages with the connection's framer, and
multiplexes the messages of many connections over a few transport queues to
the host, with per-connection credit in both directions (a connection out of
credit is simply not read: TCP backpressure reaches that client alone).
Optional TLS termination: clients speak TLS, the host sees plaintext messages.
"""

EPILOG = """\
backends:
  afxdp     AF_XDP sockets on --ifname, one per queue (root; the agent loads and
            attaches the mux XDP program on that interface and detaches it on exit)
  afpacket  AF_PACKET mmap rings on --ifname (one queue; the comparison baseline)
  shm       shared-memory rings created by the host: --shm-name BASE attaches to
            BASE-q0, BASE-q1, ... (no root needed)

Client TCP is loopback only unless --allow-non-loopback. SIGINT/SIGTERM close
every connection (reason agent_shutdown), the links, the XDP program.
Counters: --stats-socket (default on) serves them as JSON on a UNIX socket
agent-<pid>.sock in $MUX_RPC_STATS_DIR, /run/mux-rpc (root) or /tmp/mux-rpc-<uid>;
"mux-rpc stats" reads them.

examples:
  python -m agent --ifname mxa1b2c3 --queues 2
  python -m agent --backend shm --shm-name mux1234 --queues 4 -v
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ifname", metavar="IF",
                   help="the agent's end of the link (afxdp, afpacket)")
    p.add_argument("--queues", type=int, default=1, metavar="N",
                   help="transport queues; connection c uses queue c %% N (default 1)")
    p.add_argument("--netns", metavar="NAME",
                   help="run inside this network namespace (the interface and the client "
                        "TCP traffic are both there)")
    p.add_argument("--backend", choices=("afxdp", "afpacket", "shm"), default="afxdp",
                   help="how frames move (default afxdp)")
    p.add_argument("--shm-name", metavar="BASE", help="shared-memory link name (backend shm)")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default=None,
                   help="XDP attach mode (default: native with several queues, else auto)")
    p.add_argument("--max-connections", type=int, default=_D.max_connections, metavar="N",
                   help="live TCP connections at most; a client beyond is closed at once "
                        "(default %(default)s)")
    p.add_argument("--max-message-size", type=int, default=_D.max_message_size,
                   metavar="BYTES", help="largest message from a client or the host, "
                                         "header included (default %(default)s)")
    p.add_argument("--window-messages", type=int, default=_D.initial_window_messages,
                   metavar="N", help="per-connection window granted to the host, messages "
                                     "(default %(default)s)")
    p.add_argument("--window-bytes", type=int, default=_D.initial_window_bytes,
                   metavar="BYTES",
                   help="per-connection window granted to the host, bytes (announced in "
                        "HELLO; >= --max-message-size; default %(default)s)")
    p.add_argument("--max-buffered", type=int, default=_D.max_buffered_total,
                   metavar="BYTES", help="client bytes buffered over all connections")
    p.add_argument("--keepalive", type=float, default=_D.keepalive_interval,
                   metavar="SECONDS",
                   help="KEEPALIVE interval on an idle link (default %(default)s)")
    p.add_argument("--keepalive-timeout", type=float, default=_D.keepalive_timeout,
                   metavar="SECONDS",
                   help="silence from the host after which its link is lost and its "
                        "connections reset (default %(default)s)")
    p.add_argument("--half-close-timeout", type=float, default=_D.half_close_timeout,
                   metavar="SECONDS",
                   help="after a client's FIN the host may still reply; a connection "
                        "the host neither answers nor closes for this long is closed "
                        "(default %(default)s)")
    p.add_argument("--credit-delay", type=float, default=_D.credit_delay, metavar="SECONDS",
                   help="how long a credit grant the host does not need yet may wait to "
                        "ride the next frame to it, instead of a frame and a host wake-up "
                        "of its own (0: every grant at once; default %(default)s)")
    p.add_argument("--tls-cert", metavar="PEM", help="default TLS certificate for LISTEN")
    p.add_argument("--tls-key", metavar="PEM", help="default TLS key for LISTEN")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="allow LISTEN/CONNECT on addresses other than loopback")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                   help="run the event loop on uvloop when it is installed (default: yes; "
                        "--no-uvloop for the standard asyncio loop)")
    p.add_argument("--no-stats-socket", dest="stats_socket", action="store_false",
                   help="do not serve counters on a UNIX socket")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-v info, -vv debug)")
    return p


def _config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        queues=args.queues, max_connections=args.max_connections,
        max_message_size=args.max_message_size,
        max_buffered_per_connection=max(_D.max_buffered_per_connection,
                                        args.max_message_size),
        max_buffered_total=args.max_buffered,
        initial_window_messages=args.window_messages,
        initial_window_bytes=args.window_bytes,
        max_write_buffer=max(_D.max_write_buffer, args.window_bytes),
        keepalive_interval=args.keepalive, keepalive_timeout=args.keepalive_timeout,
        half_close_timeout=args.half_close_timeout, credit_delay=args.credit_delay,
        use_uvloop=args.uvloop, allow_non_loopback=args.allow_non_loopback,
        tls_certfile=args.tls_cert, tls_keyfile=args.tls_key)


def _retry(fn: Callable[[], T], what: str, *, errors: tuple[type[BaseException], ...],
           seconds: float) -> T:
    """Retry ``fn`` on ``errors`` with a short backoff (EBUSY right after a
    previous socket on the same queue closed; a shared-memory link not yet
    created)."""
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return fn()
        except errors as exc:
            if time.monotonic() >= deadline:
                raise
            log.debug("%s: %s; retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class _Links:
    """The backends (and XDP program) of one agent run; closes them in order."""

    def __init__(self) -> None:
        self.backends: list[Any] = []
        self.program: Any = None

    def open(self, args: argparse.Namespace, cfg: AgentConfig) -> list[Any]:
        if args.backend == "shm":
            from xport._shm import ShmBackend

            if not args.shm_name:
                raise SystemExit("--backend shm needs --shm-name")
            for q in range(cfg.queues):
                name = f"{args.shm_name}-q{q}"
                self.backends.append(_retry(functools.partial(ShmBackend.attach, name), f"attach {name}",
                                            errors=(FileNotFoundError, ConnectionRefusedError),
                                            seconds=10.0))
            return self.backends
        if not args.ifname:
            raise SystemExit(f"--backend {args.backend} needs --ifname")
        if args.backend == "afpacket":
            from xport._afpacket import AfPacketBackend

            if cfg.queues != 1:
                raise SystemExit("--backend afpacket carries one queue (--queues 1)")
            self.backends.append(AfPacketBackend.open(args.ifname))
            return self.backends
        from xport._afxdp import AfXdpBackend
        from xport._bpfload import XdpProgram

        mode = args.xdp_mode or ("native" if cfg.queues > 1 else "auto")
        self.program = XdpProgram()
        try:
            self.program.attach(args.ifname, mode)
        except OSError as exc:
            if exc.errno != 16:  # EBUSY: a program is attached already
                raise
            # the agent's end of the link is ours: a program left there is a
            # crashed agent's (SIGKILL skips the detach). Replace it.
            log.warning("replacing the XDP program left on %s (a previous agent crashed?)",
                        args.ifname)
            _detach_all(args.ifname)
            self.program.attach(args.ifname, mode)
        prog = self.program
        for q in range(cfg.queues):
            self.backends.append(_retry(functools.partial(AfXdpBackend.open, args.ifname, q, bpf=prog),
                                        f"AF_XDP {args.ifname} queue {q}", errors=(OSError,),
                                        seconds=2.0))
        return self.backends

    def close(self) -> None:
        for b in self.backends:
            with contextlib.suppress(Exception):
                b.close()
        self.backends.clear()
        if self.program is not None:
            try:
                self.program.close()  # detaches from the interface
            except Exception as exc:  # noqa: BLE001 - teardown goes on, reported
                log.warning("detaching the XDP program: %s", exc)
            self.program = None


def _detach_all(ifname: str) -> None:
    import socket

    from xport._bpfload import _MODE_FLAGS, attached_prog_id
    from xport._xsk import ffi, lib

    ifindex = socket.if_nametoindex(ifname)
    for mode in ("native", "generic"):
        if attached_prog_id(ifindex, mode):
            lib.bpf_xdp_detach(ifindex, _MODE_FLAGS[mode], ffi.NULL)


def _stats_path() -> Path:
    env = os.environ.get("MUX_RPC_STATS_DIR")
    if env:
        d = Path(env)
    elif os.geteuid() == 0:
        d = Path("/run/mux-rpc")
    else:
        d = Path(f"/tmp/mux-rpc-{os.geteuid()}")
    return d / f"agent-{os.getpid()}.sock"


async def _serve_stats(snapshot: Callable[[], dict[str, object]]) -> tuple[Any, Path] | None:
    path = _stats_path()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(snapshot(), default=str).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass  # the reader went away
        finally:
            writer.close()

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(serve, path=str(path))
    except OSError as exc:
        log.warning("stats socket unavailable: %s", exc)
        return None
    return server, path


async def _run(args: argparse.Namespace, cfg: AgentConfig, links: _Links) -> int:
    from ._agent import Agent

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    backends = await asyncio.to_thread(links.open, args, cfg)
    agent = Agent(backends, cfg)
    await agent.start()
    stats = await _serve_stats(agent.statistics) if args.stats_socket else None
    log.info("agent up: backend %s, %d queue(s)%s", args.backend, cfg.queues,
             f", stats on {stats[1]}" if stats else "")
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await agent.close()
        if stats is not None:
            stats[0].close()
            with contextlib.suppress(FileNotFoundError):
                stats[1].unlink()
    return 0


def _raise_fd_limit() -> None:
    """One fd per client connection: lift the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s agent[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        cfg = _config(args)
    except ValueError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    if args.netns:
        from pyroute2 import netns

        try:
            netns.setns(args.netns, flags=0)  # never create one (nothing left behind)
        except (OSError, FileNotFoundError) as exc:
            print(f"agent: cannot enter network namespace {args.netns!r}: {exc}",
                  file=sys.stderr)
            return 2
    links = _Links()
    try:
        if cfg.use_uvloop:
            try:
                import uvloop
            except ImportError:
                log.info("uvloop not installed: using the asyncio event loop")
            else:
                return int(uvloop.run(_run(args, cfg, links)))
        return asyncio.run(_run(args, cfg, links))
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"agent: {exc.code}", file=sys.stderr)
            return 2
        raise
    except (OSError, RuntimeError) as exc:
        log.error("agent failed: %s", exc)
        return 1
    finally:
        links.close()
