"""Bring the offload path up on one machine: link, agent process, host side.

Theory of operation
-------------------
:class:`OffloadRuntime` is an async context manager that, on enter:

1. picks the backend: AF_XDP when it is usable (root, the ``xport._xsk_cffi``
   extension, ``bpf/mux_xdp.o``), else the shared-memory ring backend, and
   logs why (``runtime.why_not_afxdp``); ``"afpacket"`` only when asked (the
   comparison baseline);
2. AF_XDP: creates a :class:`~xport._topology.VethPair` with ``queues``
   queues (random names; the host end optionally in its own network
   namespace), attaches the XDP program to the host end in native mode (per
   queue steering on veth needs it) and opens one AF_XDP socket per queue.
   AF_PACKET: the same veth pair with one queue (a packet socket is bound to
   the whole interface, it cannot be bound to one queue), no XDP program, one
   AF_PACKET socket with mmap rings.
   Shared memory: creates one ring file per queue for the agent to attach to;
3. starts the agent as a child process (``python -m agent --ifname <agent
   end> --queues N --backend ...``), its output going to ours;
4. wraps each backend in a link (:mod:`xport._link`) and a :class:`LinkPort`,
   starts the :class:`~mux_rpc._offload.Host` and waits for the agent's HELLO
   (failing early, with the agent's exit code, if the agent dies first).

On exit, failure or Ctrl-C (SIGINT raises KeyboardInterrupt; SIGTERM is turned
into SystemExit by :func:`xport._topology.install_cleanup_handlers`) it tears
down in reverse: host (CLOSE to every connection), agent (SIGTERM, then
SIGKILL after ``agent_stop_timeout``), sockets, XDP program, veth pair and
namespace. Every step runs even if an earlier one failed.

:func:`run_offloaded` wraps all that around an application for tests, the
demo and ``mux-rpc serve``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from xport._netns import run_in_netns

from ._linkport import link_port
from ._offload import Host, HostConfig
from ._stats import StatsServer
from ._streams import use_host

__all__ = [
    "BACKENDS",
    "OffloadOptions",
    "OffloadRuntime",
    "afpacket_unavailable_reason",
    "afxdp_unavailable_reason",
    "default_framer",
    "run_offloaded",
    "serve_listener",
    "serve_main",
    "sweep_leftovers",
]

log = logging.getLogger("mux_rpc.orchestrate")

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def afxdp_unavailable_reason() -> str | None:
    """Why AF_XDP cannot be used here, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        importlib.import_module("xport._xsk_cffi")
    except ImportError as exc:
        return f"cffi extension xport._xsk_cffi not built ({exc}); run scripts/setup.sh"
    from xport._bpfload import DEFAULT_OBJECT

    if not Path(DEFAULT_OBJECT).exists():
        return f"BPF object {DEFAULT_OBJECT} not built; run scripts/setup.sh"
    return None


def sweep_leftovers(say: Callable[[str], None] | None = None) -> tuple[str, ...]:
    """Remove the veth pairs and namespaces that killed mux-rpc processes left
    behind (:func:`xport._topology.sweep_stale`: names of ours whose owner is
    gone, nothing else); the demo and the bench run it first.

    Returns the names removed. As root only (nothing could be removed
    otherwise), and not when ``MUX_RPC_NO_SWEEP=1``. Never raises: a failed
    sweep is logged and the caller goes on. ``say`` gets one line when
    something was removed (``sweep_stale`` logs each name as well)."""
    if os.geteuid() != 0:
        return ()
    from xport._topology import sweep_once

    # this process's sweep: its first VethPair does not sweep again
    result = sweep_once(force=True)
    if result is None:
        return ()
    if result.removed and say is not None:
        say(f"removed what killed mux-rpc processes left behind: {', '.join(result.removed)}")
    return result.removed


def afpacket_unavailable_reason() -> str | None:
    """Why the AF_PACKET backend cannot be used here, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root (AF_PACKET sockets need CAP_NET_RAW, the veth pair CAP_NET_ADMIN)"
    return None


BACKENDS = ("auto", "afxdp", "afpacket", "shm")


@dataclass
class OffloadOptions:
    """How :class:`OffloadRuntime` brings the offload path up."""

    queues: int = 2
    """Transport queues (veth queues; one AF_XDP socket per queue per side).
    The AF_PACKET backend always carries one (``runtime.queues`` says what is used)."""
    backend: str = "auto"
    """``"afxdp"``, ``"afpacket"`` (AF_PACKET mmap rings on the veth pair, one
    queue: the comparison baseline), ``"shm"`` or ``"auto"`` (AF_XDP when
    usable, else shm)."""
    host_netns: bool = False
    """Move the host end of the veth pair into a network namespace of its own."""
    host_config: HostConfig = field(default_factory=HostConfig)
    """Windows, keepalive and limits of the host side."""
    agent_args: Sequence[str] = ()
    """Extra arguments for the agent process."""
    agent_command: Sequence[str] | None = None
    """The agent command (default ``[sys.executable, "-m", "agent"]``)."""
    startup_timeout: float = 20.0
    """Seconds to wait for the agent's HELLO."""
    agent_stop_timeout: float = 5.0
    """Seconds the agent gets after SIGTERM before SIGKILL."""
    frame_size: int = 2048
    """UMEM / ring slot size."""
    stats_socket: bool = True
    """Serve the host's counters for ``mux-rpc stats``."""
    ifname: str | None = None
    """Attach to this existing host-end interface (AF_XDP or AF_PACKET) instead of
    creating a veth pair and starting an agent: an agent already runs on its peer."""


class OffloadRuntime:
    """Link + agent process + :class:`Host`, as an async context manager.

    >>> async with OffloadRuntime(OffloadOptions(queues=2)) as rt:
    ...     listener = await rt.host.listen(0, "length")
    """

    def __init__(self, options: OffloadOptions | None = None, **kw: Any) -> None:
        self.options = options or OffloadOptions(**kw)
        if self.options.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, "
                             f"got {self.options.backend!r}")
        if self.options.queues < 1:
            raise ValueError(f"queues must be >= 1, got {self.options.queues}")
        self.backend_name = ""
        self.why_not_afxdp: str | None = None
        self.veth: Any = None
        self.agent_proc: subprocess.Popen[bytes] | None = None
        self.host: Host | None = None
        self._program: Any = None
        self._backends: list[Any] = []
        self._shm_base = ""
        self._stats: StatsServer | None = None

    # -- enter ------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    @property
    def queues(self) -> int:
        """The queues actually used: ``options.queues``, or 1 over AF_PACKET."""
        return 1 if self.options.backend == "afpacket" else self.options.queues

    @property
    def backends(self) -> tuple[Any, ...]:
        """The host end's frame backends, one per queue (empty until started)."""
        return tuple(self._backends)

    def _choose_backend(self) -> str:
        want = self.options.backend
        if want == "shm":
            return "shm"
        if want == "afpacket":
            reason = afpacket_unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"AF_PACKET requested but unavailable: {reason}")
            if self.options.queues != 1:
                log.info("AF_PACKET carries one queue: using 1 (queues=%d ignored)",
                         self.options.queues)
            return "afpacket"
        reason = afxdp_unavailable_reason()
        if reason is None:
            return "afxdp"
        if want == "afxdp":
            raise RuntimeError(f"AF_XDP requested but unavailable: {reason}")
        self.why_not_afxdp = reason
        log.warning("AF_XDP unavailable (%s): using the shared-memory backend", reason)
        return "shm"

    async def _start(self) -> None:
        from xport._topology import install_cleanup_handlers, random_suffix

        install_cleanup_handlers()
        opts = self.options
        self.backend_name = self._choose_backend()
        if opts.ifname:
            if self.backend_name == "shm":
                raise RuntimeError("ifname= needs the AF_XDP or AF_PACKET backend")
            await asyncio.to_thread(self._open_link_sockets)
            self.host = self._make_host()
            await self.host.start()  # the running agent answers our HELLO
            await self._start_stats()
            return
        if self.backend_name in ("afxdp", "afpacket"):
            if self.veth is None:
                await asyncio.to_thread(self.prepare_link)
            await asyncio.to_thread(self._open_link_sockets)
            agent_argv = ["--ifname", self.veth.agent.ifname, "--queues", str(self.queues),
                          "--backend", self.backend_name]
        else:
            self._shm_base = f"mux{os.getpid()}{random_suffix()}"
            self._open_shm()
            agent_argv = ["--queues", str(opts.queues), "--backend", "shm",
                          "--shm-name", self._shm_base]
        self._spawn_agent(agent_argv)
        # Build our links only once the agent's first frames (its HELLOs) are
        # waiting: a HELLO sent before the agent's sockets exist is lost, and
        # the agent would then take our next one for a restart.
        await self._wait_agent_frames(opts.startup_timeout)
        self.host = self._make_host()
        start = asyncio.ensure_future(self.host.start())
        watch = asyncio.ensure_future(self._watch_agent())
        try:
            done, _ = await asyncio.wait({start, watch}, timeout=opts.startup_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if start not in done:
            start.cancel()
            rc = self.agent_proc.poll() if self.agent_proc else None
            raise RuntimeError(
                f"the agent did not come up (exit code {rc})" if rc is not None else
                f"no HELLO from the agent within {opts.startup_timeout} s")
        start.result()
        await self._start_stats()
        log.info("offload path up: %s, %d queue(s), agent pid %s", self.backend_name,
                 self.queues, self.agent_proc.pid if self.agent_proc else None)

    async def _start_stats(self) -> None:
        opts = self.options
        if opts.stats_socket and self.host is not None:
            self._stats = StatsServer("host", lambda: {
                **(self.host.snapshot() if self.host else {}), "backend": self.backend_name})
            try:
                await self._stats.start()
            except OSError as exc:
                log.warning("stats socket unavailable: %s", exc)
                self._stats = None

    async def _wait_agent_frames(self, timeout: float) -> None:
        import select

        fds = [b.fileno() for b in self._backends]
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select(fds, [], [], 0)
            if len(ready) == len(fds):
                return
            rc = self.agent_proc.poll() if self.agent_proc else None
            if rc is not None:
                raise RuntimeError(f"the agent did not come up (exit code {rc})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no frame from the agent within {timeout} s")
            await asyncio.sleep(0.01)

    async def _watch_agent(self) -> None:
        while self.agent_proc is not None and self.agent_proc.poll() is None:
            await asyncio.sleep(0.05)

    def prepare_link(self) -> None:
        """Create the veth pair now (idempotent; a no-op for the shm backend).

        Call it before the event loop starts when the host end goes into a
        namespace: pyroute2 configures a link inside a namespace from a forked
        child, and a fork from a process whose other threads hold locks can
        hang. :func:`run_offloaded` does this for you."""
        if (self.veth is not None or self.options.ifname
                or self._choose_backend() not in ("afxdp", "afpacket")):
            return
        from xport._topology import VethPair

        pair = VethPair(queues=self.queues, host_netns=self.options.host_netns)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.veth = pair.create()  # no loop in this thread: pyroute2 may run its own
            return
        # called inside a running loop: pyroute2's sync API needs a thread of its own
        err: list[BaseException] = []

        def run() -> None:
            try:
                pair.create()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                err.append(exc)

        t = threading.Thread(target=run, name="veth-create")
        t.start()
        t.join()
        if err:
            raise err[0]
        self.veth = pair

    def _open_link_sockets(self) -> None:
        if self.backend_name == "afpacket":
            self._open_afpacket()
        else:
            self._open_afxdp()

    def _open_afpacket(self) -> None:
        from xport._afpacket import AfPacketBackend

        host_if = self.options.ifname or self.veth.host.ifname
        netns = self.veth.netns if self.veth is not None and self.veth.netns else None
        self._backends.append(AfPacketBackend.open(
            host_if, frame_size=self.options.frame_size, netns=netns))

    def _open_afxdp(self) -> None:
        from xport._afxdp import AfXdpBackend
        from xport._bpfload import XdpProgram

        opts = self.options
        host_if = opts.ifname or self.veth.host.ifname

        def open_all() -> None:
            self._program = XdpProgram()
            self._program.attach(host_if, "native")
            for q in range(opts.queues):
                self._backends.append(_open_with_retry(functools.partial(
                    AfXdpBackend.open, host_if, q, bpf=self._program,
                    frame_size=opts.frame_size)))

        # in the namespace of the host end (when it has one), entered by a
        # throwaway thread so that the rest of the process stays where it is
        run_in_netns(self.veth.netns if self.veth is not None else None, open_all)

    def _open_shm(self) -> None:
        from xport._shm import ShmBackend

        for q in range(self.options.queues):
            self._backends.append(ShmBackend.create(f"{self._shm_base}-q{q}",
                                                    frame_size=self.options.frame_size))

    def _spawn_agent(self, argv: list[str]) -> None:
        cmd = list(self.options.agent_command or [sys.executable, "-m", "agent"])
        cmd += argv + list(self.options.agent_args)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        log.info("starting agent: %s", " ".join(cmd))
        from ._workers import _die_with_parent

        # its own session: a Ctrl-C on the terminal reaches only us, and the
        # teardown stops the agent after the host closed its connections (a
        # SIGINT in the middle of the agent's imports was a traceback); it
        # still dies with us if we are killed
        self.agent_proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                           start_new_session=True,
                                           preexec_fn=_die_with_parent)  # noqa: PLW1509

    # -- exit ---------------------------------------------------------------------
    async def _stop(self) -> None:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("stats", self._stop_stats),
            ("host", self._stop_host),
            ("agent", self._stop_agent),
            ("backends", self._close_backends),
            ("xdp", self._close_program),
            ("veth", self._close_veth),
        ]
        for name, step in steps:
            try:
                if inspect.iscoroutinefunction(step):
                    await step()
                else:
                    # netlink (pyroute2) and process waits block: keep them off the loop
                    await asyncio.to_thread(step)
            except BaseException as exc:  # noqa: BLE001 - every step runs; report, then go on
                log.warning("teardown of %s: %r", name, exc)

    async def _stop_stats(self) -> None:
        if self._stats is not None:
            await self._stats.close()
            self._stats = None

    async def _stop_host(self) -> None:
        if self.host is not None:
            await asyncio.wait_for(self.host.close(), 5.0)

    def _stop_agent(self) -> None:
        p = self.agent_proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(self.options.agent_stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("agent pid %d ignored SIGTERM: killing it", p.pid)
            p.kill()
            p.wait(5)

    def _close_backends(self) -> None:
        for b in self._backends:
            try:
                b.close()
            except Exception as exc:  # noqa: BLE001 - close the others, reported
                log.warning("closing backend: %s", exc)
        self._backends.clear()

    def _close_program(self) -> None:
        if self._program is not None:
            self._program.close()
            self._program = None

    def _close_veth(self) -> None:
        if self.veth is not None:
            self.veth.close()
            self.veth = None

    # -- convenience ------------------------------------------------------------------
    def _make_host(self) -> Host:
        hc = self.options.host_config
        ports = [link_port(b, max_message_size=hc.max_message_size,
                           keepalive_interval=hc.keepalive_interval,
                           peer_timeout=hc.keepalive_timeout) for b in self._backends]
        return Host(ports, hc)

    async def restart_host(self) -> Host:
        """Drop the host side as a crash would (no CLOSE sent) and start a new
        one on the same link: the agent sees a new HELLO and resets every
        client with reason ``peer_restarted``. For tests and demos."""
        if self.host is not None:
            await self.host.abort()
        self.host = self._make_host()
        await self.host.start()
        return self.host


def _open_with_retry(fn: Callable[[], T], attempts: int = 20) -> T:
    # Field notes: binding a (device, queue) right after a previous socket closed
    # fails with EBUSY for ~15-25 ms.
    for i in range(attempts):
        try:
            return fn()
        except OSError as exc:
            if exc.errno != 16 or i == attempts - 1:  # EBUSY
                raise
            time.sleep(0.01 * (i + 1))
    raise AssertionError("unreachable")


# -- run_offloaded -----------------------------------------------------------------------


def run_offloaded(main: Any, *, port: int = 0, framer: str | None = None,
                  options: OffloadOptions | None = None, **option_kw: Any) -> Any:
    """Run ``main`` with the offload path up, then tear everything down.

    ``main`` may be:
      - an async function taking the :class:`Host` (its result is returned);
      - a coroutine (awaited with the Host current for ``offload.start_server``);
      - a mux_rpc ``App``: served with a ``Server`` on ``port`` (msgpack-rpc
        framer by default) until Ctrl-C.
    """
    opts = options or OffloadOptions(**option_kw)

    rt0 = OffloadRuntime(opts)
    rt0.prepare_link()  # before the loop: see OffloadRuntime.prepare_link

    async def runner() -> Any:
        async with rt0 as rt:
            assert rt.host is not None
            with use_host(rt.host):
                return await _run_app(main, rt.host, port, framer)

    return asyncio.run(runner())


async def _run_app(main: Any, host: Host, port: int, framer: str | None) -> Any:
    if inspect.iscoroutine(main):
        return await main
    from ._service import App

    if isinstance(main, App):
        from ._server import Server

        listener = await host.listen(port, framer or "msgpack-rpc")
        print(f"serving on 127.0.0.1:{listener.port} ({listener.framer})", flush=True)
        async with Server(main) as server:
            await server.serve(listener)
        return None
    if hasattr(main, "serve") and inspect.iscoroutinefunction(main.serve):
        listener = await host.listen(port, framer or "length")
        print(f"serving on 127.0.0.1:{listener.port} ({listener.framer})", flush=True)
        return await main.serve(listener)
    if callable(main):
        params = inspect.signature(main).parameters
        if len(params) == 1:
            return await main(host)
        if len(params) == 0:
            return await _run_app(main(), host, port, framer)
    raise TypeError(f"cannot run {main!r} offloaded")


class AppSpecError(Exception):
    """``mux-rpc serve APP``: APP cannot be loaded or is not servable."""


def _load_app(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise AppSpecError(f"APP must be module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:  # the module, or something it imports, is missing
        raise AppSpecError(f"cannot import {mod_name!r} (APP {spec!r}): {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppSpecError(f"{mod_name!r} has no attribute {attr!r} (APP {spec!r})"
                               ) from None
    return obj


def default_framer(app: Any) -> str:
    """The framer ``mux-rpc serve`` listens with when ``--framer`` is not given:
    msgpack-rpc for a mux_rpc ``App`` (or a ``Server`` of one), length for
    every other shape of APP."""
    from ._server import Server
    from ._service import App

    return "msgpack-rpc" if isinstance(app, App | Server) else "length"


async def serve_listener(app: Any, listener: Any) -> None:
    """Serve ``app`` (as classified by :func:`_resolve_app`) on one listener
    until cancelled: an ``App`` with a ``Server``, an object with ``async
    serve(listener)`` through it, an async callable once per connection."""
    from ._service import App

    if isinstance(app, App):
        from ._server import Server

        async with Server(app) as server:
            await server.serve(listener)
        return
    if inspect.iscoroutinefunction(getattr(app, "serve", None)):
        await app.serve(listener)
        return
    tasks: set[asyncio.Task[Any]] = set()
    while True:
        conn = await listener.accept()
        t = asyncio.get_running_loop().create_task(app(conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def _resolve_app(app: Any) -> tuple[str, Any]:
    """("serve", obj) for an App or an object with ``async serve(listener)``,
    ("conn", fn) for an async callable per connection; a zero-argument factory
    is called once and its result classified."""
    from ._service import App

    for _ in range(2):
        if isinstance(app, App) or inspect.iscoroutinefunction(getattr(app, "serve", None)):
            return "serve", app
        if inspect.iscoroutinefunction(app) or (
                callable(app) and inspect.iscoroutinefunction(type(app).__call__)):
            return "conn", app
        if callable(app) and not inspect.signature(app).parameters:
            app = app()
            continue
        break
    raise AppSpecError(f"{app!r} is neither an App, an object with async serve(listener), "
                       "an async callable per connection, nor a factory")


def serve_main(args: Any) -> int:
    """``mux-rpc serve``."""
    try:
        _, app = _resolve_app(_load_app(args.app))
    except AppSpecError as exc:  # before anything is brought up: nothing to tear down
        print(f"mux-rpc serve: {exc}", file=sys.stderr)
        return 2
    framer = args.framer or default_framer(app)
    if args.workers < 1:
        print(f"mux-rpc serve: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1:
        from ._workers import serve_workers

        return serve_workers(args, framer)
    opts = OffloadOptions(queues=args.queues or 2, backend=args.backend, host_netns=args.netns,
                          ifname=args.ifname)
    bind = getattr(args, "bind", None) or "127.0.0.1"

    async def main(host: Host) -> None:
        listener = await host.listen(args.port, framer, bind=bind)
        print(f"serving on {bind}:{listener.port} ({framer})", flush=True)
        await serve_listener(app, listener)

    try:
        run_offloaded(main, options=opts)
    except KeyboardInterrupt:  # torn down on the way out, like SIGTERM (143)
        return 130
    return 0
