"""``mux-rpc serve --workers N``: one host process per AF_XDP queue.

Theory of operation
-------------------
The parent (:class:`WorkerPool`) owns everything shared and nothing per
connection:

1. a :class:`~xport._topology.VethPair` with N queues (random names; the host
   end optionally in its own namespace) and the XDP program attached once,
   natively, to the host end (per-queue steering on veth needs native mode);
2. N worker processes (``python -c "...; worker_main()"``), each given the
   program's XSKMAP fd (``pass_fds``): worker *i* opens the AF_XDP socket of
   queue *i* (inserting it into slot *i* of the shared map) and says so;
3. only then the agent (``python -m agent --queues N``): its first frames (the
   HELLOs) find a socket on every queue;
4. each worker builds its link and its own :class:`~mux_rpc._offload.Host`
   over that one queue; the agent's queue *i* is the worker's queue 0;
5. the workers LISTEN on the same address one after the other, the last
   queue first (it picks the port when ``--port 0``). The agent answers a
   LISTEN on the queue it came on, and LISTENs of several queues for one
   address form a *listen group* (agent/_agent.py): one TCP listener, each
   new connection going round robin to one member and getting an id on that
   member's queue, so its NEW_CONNECTION, DATA and CLOSED reach that worker.
   Since the first LISTEN comes from a queue other than 0, no connection is
   ever spread onto a queue whose worker has not listened yet.

Parent and worker speak JSON lines over the worker's stdin and a dup of its
stdout (anything else the worker prints goes to stderr).

Shutdown (Ctrl-C, SIGTERM, a worker or the agent exiting): workers are told
to stop (each closes its Host: CLOSE per connection), then the agent gets
SIGTERM (SIGKILL after a timeout), then the XDP program and the veth pair go.
Every step runs even if one fails. Workers and the agent die with the parent
(``PR_SET_PDEATHSIG``) and a worker whose stdin closes stops by itself.

Limits: AF_XDP only; ``--ifname`` is not supported; a worker that dies is not
restarted (the pool stops, exit status 1); ``Host.connect`` from a worker is
not routed to it (the agent maps host-made ids by ``id % queues``), so
workers serve incoming connections only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Self

from xport._netns import run_in_netns

log = logging.getLogger("mux_rpc.workers")

__all__ = ["WorkerPool", "serve_workers", "worker_main"]

_PR_SET_PDEATHSIG = 1
try:  # resolved here: the child between fork and exec only calls it
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM to the child when the parent dies (Linux). It runs
    between fork and exec while our reader threads may be running; it only
    calls the prctl resolved at import (no lock, no allocation), so it is safe."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class _Worker:
    """One worker process and its JSON-lines channel."""

    def __init__(self, queue: int, proc: subprocess.Popen[bytes]) -> None:
        self.queue = queue
        self.proc = proc
        #: its Host is up and it reads commands (before that, only a signal stops it)
        self.up = False
        self._lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True, name=f"worker-{queue}").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._cv:
                self._lines.append(msg)
                self._cv.notify_all()
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def send(self, obj: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._lines:
                if self._eof:
                    rc = self.proc.wait(5)
                    raise RuntimeError(f"worker {self.queue} exited (status {rc})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer from worker {self.queue} within {timeout} s")
                self._cv.wait(left)
            msg = self._lines.pop(0)
        if "error" in msg:
            raise RuntimeError(f"worker {self.queue}: {msg['error']}")
        return msg

    def stop(self, timeout: float) -> None:
        p = self.proc
        if not self.up and p.poll() is None:
            p.terminate()  # still starting: it holds no connection yet
        with contextlib.suppress(OSError, ValueError):
            self.send("stop")
            assert p.stdin is not None
            p.stdin.close()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker %d (pid %d) did not stop: terminating it", self.queue, p.pid)
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class WorkerPool:
    """veth pair + XDP program + N worker processes + the agent; see the module doc.

    ``app`` is the ``module:attribute`` spec each worker imports."""

    def __init__(self, app: str, workers: int, *, port: int = 0, framer: str = "length",
                 bind: str = "127.0.0.1", host_netns: bool = False, frame_size: int = 2048,
                 startup_timeout: float = 30.0, stop_timeout: float = 10.0,
                 agent_args: tuple[str, ...] = ()) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.app = app
        self.n = workers
        self.port = port
        self.framer = framer
        self.bind = bind
        self.host_netns = host_netns
        self.frame_size = frame_size
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.agent_args = agent_args
        self.veth: Any = None
        self.program: Any = None
        self.workers: list[_Worker] = []
        self.agent_proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start -----------------------------------------------------------------
    def start(self) -> None:
        from xport._topology import VethPair

        self.veth = VethPair(queues=self.n, host_netns=self.host_netns).create()
        self._attach_program()
        env = _child_env()
        for q in range(self.n):
            self.workers.append(self._spawn_worker(q, env))
        for w in self.workers:  # every queue has its socket before the agent speaks
            w.reply(self.startup_timeout)
        cmd = [sys.executable, "-m", "agent", "--ifname", self.veth.agent.ifname,
               "--queues", str(self.n), "--backend", "afxdp", *self.agent_args]
        log.info("starting agent: %s", " ".join(cmd))
        # its own session too: on Ctrl-C the workers close their connections first
        self.agent_proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                           start_new_session=True,
                                           preexec_fn=_die_with_parent)  # noqa: PLW1509
        for w in self.workers:
            self._reply(w)  # Host up: the agent's HELLO came on its queue
            w.up = True
        port = self.port
        for w in reversed(self.workers):  # the last queue first: see the module doc
            w.send({"listen": port})
            port = int(self._reply(w)["port"])
        self.port = port
        log.info("%d workers serving %s:%d (%s)", self.n, self.bind, self.port, self.framer)

    def _reply(self, w: _Worker) -> dict[str, Any]:
        """A worker's answer; fails at once if the agent died meanwhile."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                return w.reply(0.2)
            except TimeoutError:
                rc = self.agent_proc.poll() if self.agent_proc is not None else None
                if rc is not None:
                    raise RuntimeError(f"the agent did not come up (exit code {rc})") from None
                if time.monotonic() > deadline:
                    raise

    def _attach_program(self) -> None:
        from xport._bpfload import XdpProgram

        def attach() -> None:
            self.program = XdpProgram()
            self.program.attach(self.veth.host.ifname, "native")

        # in the host end's namespace (when it has one), from a throwaway thread
        run_in_netns(self.veth.netns, attach)

    def _spawn_worker(self, q: int, env: dict[str, str]) -> _Worker:
        fd = self.program.xskmap_fd
        proc = subprocess.Popen(
            [sys.executable, "-c", "import mux_rpc._workers as w; w.worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=(fd,),
            # its own session: a Ctrl-C reaches only the parent, which stops the
            # workers in order ("stop", or EOF on their stdin)
            start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
        w = _Worker(q, proc)
        w.send({"app": self.app, "queue": q, "queues": self.n, "ifname": self.veth.host.ifname,
                "netns": self.veth.netns, "xskmap_fd": fd, "framer": self.framer,
                "bind": self.bind, "frame_size": self.frame_size,
                "startup_timeout": self.startup_timeout,
                "log_level": logging.getLogger().getEffectiveLevel()})
        return w

    # -- run -------------------------------------------------------------------
    def wait(self) -> int:
        """Block until a worker or the agent exits: 1 (Ctrl-C / SIGTERM raise)."""
        while True:
            for w in self.workers:
                rc = w.proc.poll()
                if rc is not None:
                    log.error("worker %d (pid %d) exited with status %s: stopping",
                              w.queue, w.proc.pid, rc)
                    return 1
            if self.agent_proc is not None and (rc := self.agent_proc.poll()) is not None:
                log.error("the agent exited with status %s: stopping", rc)
                return 1
            time.sleep(0.2)

    def stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every worker's Host snapshot, by queue."""
        out = []
        for w in self.workers:
            w.send("stats")
            out.append(w.reply(timeout))
        return out

    # -- stop ------------------------------------------------------------------
    def close(self) -> None:
        steps = [("workers", self._stop_workers), ("agent", self._stop_agent),
                 ("xdp", self._close_program), ("veth", self._close_veth)]
        for name, step in steps:
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - every step runs; reported
                log.warning("teardown of %s: %r", name, exc)

    def _stop_workers(self) -> None:
        threads = [threading.Thread(target=w.stop, args=(self.stop_timeout,))
                   for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.workers.clear()

    def _stop_agent(self) -> None:
        p, self.agent_proc = self.agent_proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("agent pid %d ignored SIGTERM: killing it", p.pid)
            p.kill()
            p.wait(5)

    def _close_program(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None

    def _close_veth(self) -> None:
        if self.veth is not None:
            self.veth.close()
            self.veth = None


def _child_env() -> dict[str, str]:
    from ._orchestrate import REPO

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.getcwd(),
                                                      env.get("PYTHONPATH")]))
    env.setdefault("LIBXDP_SKIP_DISPATCHER", "1")
    return env


def serve_workers(args: Any, framer: str) -> int:
    """``mux-rpc serve APP --workers N``."""
    from ._orchestrate import afxdp_unavailable_reason

    n = int(args.workers)
    problem = None
    if args.ifname:
        problem = "--workers with --ifname is not supported (workers need their own veth pair)"
    elif args.queues not in (None, n):
        problem = f"--workers {n} uses {n} queues (one per worker), not --queues {args.queues}"
    elif args.backend not in ("auto", "afxdp"):
        problem = f"--workers needs the AF_XDP backend, not {args.backend}"
    elif (reason := afxdp_unavailable_reason()) is not None:
        problem = f"--workers needs AF_XDP, which is unavailable: {reason}"
    if problem:
        print(f"mux-rpc serve: {problem}", file=sys.stderr)
        return 2
    from xport._topology import install_cleanup_handlers

    install_cleanup_handlers()  # SIGTERM -> SystemExit: the pool's teardown runs
    bind = getattr(args, "bind", None) or "127.0.0.1"
    pool = WorkerPool(args.app, n, port=args.port, framer=framer, bind=bind,
                      host_netns=args.netns)
    try:
        with pool:
            print(f"serving on {bind}:{pool.port} ({framer}), {n} workers "
                  f"(pids {' '.join(str(w.proc.pid) for w in pool.workers)})", flush=True)
            return pool.wait()
    except KeyboardInterrupt:  # the pool is torn down by then
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"mux-rpc serve: {exc}", file=sys.stderr)
        return 1


# -- the worker process ----------------------------------------------------------------


def worker_main() -> None:
    """Entry point of one worker process (see :class:`WorkerPool`)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to fd 1 goes to stderr
    cfg = json.loads(sys.stdin.readline() or "{}")
    q = int(cfg["queue"])
    logging.basicConfig(level=int(cfg.get("log_level", logging.WARNING)),
                        format=f"%(asctime)s worker[{q}] %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop

    def answer(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, default=str) + "\n")

    try:
        asyncio.run(_worker(cfg, answer))
    except Exception as exc:  # reported to the parent, then exit 1
        logging.getLogger("mux_rpc.workers").debug("worker failed", exc_info=True)
        answer({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)


async def _worker(cfg: dict[str, Any], answer: Any) -> None:
    from xport._afxdp import AfXdpBackend

    from ._linkport import link_port
    from ._offload import Host, HostConfig
    from ._orchestrate import _load_app, _open_with_retry, _resolve_app, serve_listener
    from ._stats import StatsServer

    q = int(cfg["queue"])
    _, app = _resolve_app(_load_app(cfg["app"]))
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, '"stop"')

    backend = await asyncio.to_thread(_open_with_retry, lambda: AfXdpBackend.open(
        cfg["ifname"], q, xskmap_fd=int(cfg["xskmap_fd"]), frame_size=int(cfg["frame_size"]),
        netns=cfg.get("netns") or None))
    host: Host | None = None
    stats: StatsServer | None = None
    serving: asyncio.Task[None] | None = None
    try:
        answer({"ready": True, "queue": q, "pid": os.getpid()})
        # the agent's HELLO must be waiting before our link says HELLO (see
        # OffloadRuntime: a HELLO sent before the peer's socket exists is lost)
        timeout = float(cfg.get("startup_timeout", 30.0))
        deadline = time.monotonic() + timeout
        while not select.select([backend.fileno()], [], [], 0)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no frame from the agent on queue {q} within {timeout} s")
            await asyncio.sleep(0.01)
        hc = HostConfig()
        host = Host([link_port(backend, max_message_size=hc.max_message_size,
                               keepalive_interval=hc.keepalive_interval,
                               peer_timeout=hc.keepalive_timeout)], hc)
        await host.start()
        up = host

        stats = StatsServer("host", lambda: {**up.snapshot(), "worker": q,
                                             "agent_queue": q, "backend": "afxdp"})
        try:
            await stats.start()
        except OSError as exc:
            log.warning("stats socket unavailable: %s", exc)
            stats = None
        answer({"up": True})
        threading.Thread(target=read_commands, daemon=True, name="commands").start()
        while True:
            cmd: Any = json.loads(await commands.get() or '""')
            if cmd == "stop":
                break
            if cmd == "stats":
                answer(host.snapshot())
            elif isinstance(cmd, dict) and "listen" in cmd:
                if serving is not None:
                    answer({"error": "already listening"})
                    continue
                listener = await host.listen(int(cmd["listen"]), cfg["framer"],
                                             bind=cfg.get("bind") or "127.0.0.1")
                serving = loop.create_task(serve_listener(app, listener))
                answer({"port": listener.port})
    finally:
        if serving is not None:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving
        if stats is not None:
            await stats.close()
        if host is not None:
            await asyncio.wait_for(host.close(), 5.0)
        backend.close()
