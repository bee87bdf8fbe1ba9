"""Load generation for the demo and the end-to-end benchmark.

Theory of operation
-------------------
Clients: :func:`run_load` opens many TCP connections on loopback (all of them
first, at most ``connect_concurrency`` at a time), then starts every one at
the same instant. Each connection is a bare :class:`asyncio.Protocol` driven by
a per-connection :class:`Driver` of its :class:`Workload`: it keeps ``depth``
requests in flight (a reply makes room for the next request, written in the
same ``data_received``), checks every reply against what it expects, and
records each call's latency (request written -> reply parsed). At the deadline
(or after ``max_calls`` per connection) a connection stops sending and waits
for its outstanding replies; replies still missing ``drain_timeout`` seconds
after the deadline are *lost* (an error). A connection closed with replies
outstanding counts them as lost too.

Server under test: :class:`HostProcess` runs the host side in a child process
(``python -c 'import mux_rpc._loadgen as m; m.host_child_main()'``), so that
its CPU time is its own and the clients never share its event loop. The child
reads one JSON line of configuration, brings up its mode (``offload``: the
offload path of :mod:`mux_rpc._orchestrate` with its own agent process;
``direct``: :func:`mux_rpc.serve_direct`), serves the requested example
services and answers with one JSON line (ports, pids, backend). Afterwards
each ``stats`` line on its stdin is answered with a JSON snapshot of every
counter (host, links, agent); ``stop`` or EOF tears everything down. The child
writes its answers on a private duplicate of its stdout and points fd 1 at
stderr, so nothing its own children print can corrupt the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import msgpack

__all__ = [
    "Driver",
    "HostProcess",
    "LoadResult",
    "MsgpackWorkload",
    "NdjsonWorkload",
    "NvmeWorkload",
    "Progress",
    "Workload",
    "cpu_seconds",
    "cpu_split",
    "percentile",
    "run_load",
]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MAX_ERRORS_KEPT = 5


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100, nearest rank) of an ascending sequence; NaN if empty."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of process ``pid`` in seconds (threads included, children
    not), from /proc: user space and the kernel."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) may contain spaces and parentheses: split after the last ")"
    fields = stat[stat.rindex(b")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (threads included, children not), from /proc."""
    return sum(cpu_split(pid))


def raise_fd_limit(want: int = 16384) -> None:
    """Raise RLIMIT_NOFILE towards ``want`` (1,000 connections need ~1,000 fds per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- results ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What the clients of one workload saw."""

    name: str
    connections: int = 0
    sent: int = 0
    calls: int = 0
    """Replies received and found correct."""
    errors: int = 0
    """Wrong replies, failed connections and lost replies."""
    lost: int = 0
    """Requests whose reply never came (included in ``errors``)."""
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str, n: int = 1) -> None:
        self.errors += n
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(text)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def latency_us(self, p: float) -> float:
        return percentile(self.latencies, p) * 1e6

    def summary(self) -> dict[str, Any]:
        self.latencies.sort()
        return {"name": self.name, "connections": self.connections, "sent": self.sent,
                "calls": self.calls, "errors": self.errors, "lost": self.lost,
                "seconds": round(self.seconds, 4), "calls_per_s": round(self.calls_per_s, 1),
                "p50_us": round(self.latency_us(50), 1), "p99_us": round(self.latency_us(99), 1),
                "error_samples": list(self.error_samples)}


# -- workloads ------------------------------------------------------------------------


class Driver:
    """One connection's requests and reply checks (subclasses implement both).

    ``encode(k, now)`` returns the bytes of the next ``k`` requests and
    remembers what each should get back; ``feed(data, now)`` parses replies,
    checks them, records latencies in ``result`` and returns how many replies
    it consumed (correct or not)."""

    def __init__(self, result: LoadResult) -> None:
        self.result = result
        self.outstanding = 0

    def encode(self, k: int, now: float) -> bytes:
        raise NotImplementedError

    def feed(self, data: bytes, now: float) -> int:
        raise NotImplementedError


class Workload:
    """A kind of client traffic against one port."""

    name = "workload"

    def __init__(self, port: int, *, connections: int = 1, depth: int = 1) -> None:
        self.port = port
        self.connections = connections
        self.depth = depth
        self.result = LoadResult(self.name, connections)

    def driver(self, index: int) -> Driver:
        raise NotImplementedError


class _MsgpackDriver(Driver):
    # msgids cycle over `ring` slots; a slot is reused only after its reply came
    def __init__(self, w: MsgpackWorkload, index: int) -> None:
        super().__init__(w.result)
        self.w = w
        self.ring = w.ring
        self.next = 0
        self.sent_at = [0.0] * self.ring
        self.expect: list[Any] = [None] * self.ring
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)
        self.key_prefix = f"c{index}-"
        self.values: dict[str, int] = {}

    def encode(self, k: int, now: float) -> bytes:
        parts = []
        ring, reqs, mix = self.ring, self.w.echo_requests, self.w.mix
        for _ in range(k):
            slot = self.next % ring
            seq = self.next
            self.next += 1
            self.sent_at[slot] = now
            if mix == "echo" or seq % 4 >= 2:
                parts.append(reqs[slot])
                self.expect[slot] = self.w.echo_results[slot]
            elif seq % 4 == 0:  # put
                key = f"{self.key_prefix}{(seq >> 2) % 8}"
                self.values[key] = seq
                parts.append(msgpack.packb([0, slot, "put", [key, seq]]))
                self.expect[slot] = _ANY_BOOL
            else:  # get of the key just put, on the same connection: in order
                key = f"{self.key_prefix}{(seq >> 2) % 8}"
                parts.append(msgpack.packb([0, slot, "get", [key]]))
                self.expect[slot] = self.values[key]
        self.outstanding += k
        self.result.sent += k
        return b"".join(parts)

    def feed(self, data: bytes, now: float) -> int:
        up = self.unpacker
        up.feed(data)
        n = 0
        res = self.result
        lat = res.latencies.append
        for msg in up:
            n += 1
            if type(msg) is not list or len(msg) != 4 or msg[0] != 1:
                res.error(f"not a msgpack-rpc response: {msg!r:.80}")
                continue
            _, msgid, err, value = msg
            if type(msgid) is not int or not 0 <= msgid < self.ring:
                res.error(f"unexpected msgid {msgid!r}")
                continue
            want = self.expect[msgid]
            if err is not None:
                res.error(f"remote error {err!r:.80}")
            elif want is _ANY_BOOL and type(value) is bool or value == want:
                res.calls += 1
                lat(now - self.sent_at[msgid])
            else:
                res.error(f"wrong result {value!r:.40} (expected {want!r:.40})")
        self.outstanding -= n
        return n


_ANY_BOOL = object()


class MsgpackWorkload(Workload):
    """msgpack-rpc calls to the kv example service (examples/kv_service.py).

    ``mix="echo"``: ``echo("hello", i)`` only (what bench/bench_floor.py's echo
    mix decodes, dispatches and encodes); ``mix="kv"``: a put, a get of what was
    just put, and two echoes in every four calls."""

    name = "kv/echo (msgpack-rpc)"

    def __init__(self, port: int, *, connections: int = 1, depth: int = 1,
                 mix: str = "echo") -> None:
        if mix not in ("echo", "kv"):
            raise ValueError(f"mix must be echo or kv, got {mix!r}")
        super().__init__(port, connections=connections, depth=depth)
        self.mix = mix
        self.ring = max(64, 4 * depth)
        self.echo_results = [["hello", i] for i in range(self.ring)]
        self.echo_requests = [msgpack.packb([0, i, "echo", ["hello", i]])
                              for i in range(self.ring)]

    def driver(self, index: int) -> Driver:
        return _MsgpackDriver(self, index)


class _NdjsonDriver(Driver):
    def __init__(self, w: NdjsonWorkload, index: int) -> None:
        super().__init__(w.result)
        self.index = index
        self.seq = 0
        self.buf = b""
        self.pending: dict[int, tuple[float, int]] = {}

    def encode(self, k: int, now: float) -> bytes:
        lines = []
        for _ in range(k):
            self.seq += 1
            a, b = self.index, self.seq
            self.pending[self.seq] = (now, a + b)
            lines.append(b'{"id":%d,"method":"add","params":[%d,%d]}\n' % (self.seq, a, b))
        self.outstanding += k
        self.result.sent += k
        return b"".join(lines)

    def feed(self, data: bytes, now: float) -> int:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        res = self.result
        for line in lines:
            try:
                reply = json.loads(line)
                t, want = self.pending.pop(reply["id"])
            except (ValueError, KeyError, TypeError) as exc:
                res.error(f"bad ndjson reply {line[:60]!r}: {exc!r}")
                continue
            if reply.get("result") == want:
                res.calls += 1
                res.latencies.append(now - t)
            else:
                res.error(f"wrong ndjson reply {reply!r:.80} (expected {want})")
        self.outstanding -= len(lines)
        return len(lines)


class NdjsonWorkload(Workload):
    """``{"id": n, "method": "add", "params": [a, b]}`` lines to the custom-framer
    example (examples/custom_framer_service.py); the reply must carry ``a + b``."""

    name = "add (ndjson, custom framer)"

    def driver(self, index: int) -> Driver:
        return _NdjsonDriver(self, index)


# NVMe/TCP (NVMe/TCP transport specification 1.0, section 3.6.2): a CapsuleCmd
# PDU carries the 64-byte SQE (opcode, flags, CID, NSID, ..., SLBA in CDW10-11,
# NLB in CDW12); writes carry their data in the capsule.
_SQE = struct.Struct("<BBHI")  # opcode, flags, command id, NSID (SQE bytes 0-7)
_CQE_CID = struct.Struct("<HH")  # CQE bytes 12-15: CID, status
NVME_WRITE, NVME_READ = 0x01, 0x02
BLOCK = 512


def nvme_command(opcode: int, cid: int, slba: int, nlb: int = 0, data: bytes = b"") -> Any:
    """A CapsuleCmd PDU (framing.NvmePdu) for an NVM read or write of ``nlb + 1`` blocks."""
    import framing

    sqe = bytearray(64)
    _SQE.pack_into(sqe, 0, opcode, 0, cid, 1)
    struct.pack_into("<QI", sqe, 40, slba, nlb)  # CDW10-11 SLBA, CDW12 NLB (0-based)
    return framing.make_nvme_pdu(framing.PduType.CAPSULE_CMD, bytes(sqe), data)


class _NvmeDriver(Driver):
    # per connection: write a block, read it back, alternating; the reply to a
    # write is a CapsuleResp with its CID and status 0, the reply to a read a
    # C2HData PDU (LAST_PDU|SUCCESS) with the block written.
    def __init__(self, w: NvmeWorkload, index: int) -> None:
        import framing

        super().__init__(w.result)
        self.index = index
        self.seq = 0
        self.framer = framing.NvmeTcpFramer()
        self.encoder = framing.NvmeTcpFramer()
        self.pending: dict[int, tuple[float, int, bytes | None]] = {}
        self.blocks: dict[int, bytes] = {}

    def encode(self, k: int, now: float) -> bytes:
        out = []
        for _ in range(k):
            seq = self.seq
            self.seq += 1
            cid = seq & 0xFFFF
            lba = self.index * 16 + (seq >> 1) % 16
            if seq % 2 == 0:
                data = (b"%08d:%08d|" % (self.index, seq)) * (BLOCK // 18) + bytes(BLOCK % 18)
                self.blocks[lba] = data
                pdu = nvme_command(NVME_WRITE, cid, lba, 0, data)
                self.pending[cid] = (now, NVME_WRITE, None)
            else:
                pdu = nvme_command(NVME_READ, cid, lba, 0)
                self.pending[cid] = (now, NVME_READ, self.blocks.get(lba, bytes(BLOCK)))
            out.append(self.encoder.encode(pdu))
        self.outstanding += k
        self.result.sent += k
        return b"".join(out)

    def feed(self, data: bytes, now: float) -> int:
        import framing

        res = self.result
        n = 0
        try:
            self.framer.feed(data)
            while (pdu := self.framer.next_message()) is not None:
                n += 1
                self._check(pdu, now)
        except framing.FramingError as exc:
            res.error(f"bad NVMe/TCP reply stream: {exc}")
        self.outstanding -= n
        return n

    def _check(self, pdu: Any, now: float) -> None:
        res = self.result
        if pdu.pdu_type == 0x05:  # CapsuleResp: CQE after the 8-byte common header
            cid, status = _CQE_CID.unpack_from(pdu.header, 8 + 12)
        elif pdu.pdu_type == 0x07:  # C2HData: CCCID at PSH offset 0
            cid = int.from_bytes(pdu.header[8:10], "little")
            status = 0 if pdu.flags & 0x0C == 0x0C else -1
        else:
            res.error(f"unexpected PDU type {pdu.pdu_type:#x}")
            return
        entry = self.pending.pop(cid, None)
        if entry is None:
            res.error(f"reply for unknown CID {cid}")
            return
        t, opcode, want = entry
        if status != 0:
            res.error(f"CID {cid}: status {status:#x}")
        elif opcode == NVME_WRITE and pdu.pdu_type != 0x05:
            res.error(f"write CID {cid} answered with PDU type {pdu.pdu_type:#x}")
        elif opcode == NVME_READ and (pdu.pdu_type != 0x07 or pdu.data != want):
            res.error(f"read CID {cid}: wrong data ({len(pdu.data)} bytes)")
        else:
            res.calls += 1
            res.latencies.append(now - t)


class NvmeWorkload(Workload):
    """NVMe/TCP-style write and read capsules (512-byte blocks) to the PDU
    handler example (examples/nvme_pdu_handler.py)."""

    name = "block I/O (NVMe/TCP PDUs)"

    def driver(self, index: int) -> Driver:
        return _NvmeDriver(self, index)


# -- clients -------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    def __init__(self, run: _Run, driver: Driver, depth: int) -> None:
        self.run = run
        self.driver = driver
        self.depth = depth
        self.transport: asyncio.Transport | None = None
        self.stopping = False
        self.done: asyncio.Future[None] = run.loop.create_future()
        self.connected: asyncio.Future[None] = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected.set_result(None)

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(self.driver.encode(self._room(self.depth), time.perf_counter()))

    def _room(self, k: int) -> int:
        run = self.run
        if run.stopping:
            self.stopping = True
            return 0
        if run.max_calls is not None:
            k = min(k, run.max_calls - self.driver.result.sent)  # sent counts all connections
            if k <= 0:
                self.stopping = True
                return 0
        return k

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()  # uvloop's loop.time() has millisecond resolution
        d = self.driver
        n = d.feed(data, now)
        if n and not self.stopping:
            k = self._room(n)
            if k > 0:
                assert self.transport is not None
                self.transport.write(d.encode(k, now))
        if self.stopping and d.outstanding <= 0 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before connected"))
        if not self.done.done():
            out = self.driver.outstanding
            if out > 0:
                self.driver.result.lost += out
                self.driver.result.error(f"connection closed by the server ({exc or 'EOF'}) "
                                         f"with {out} replies outstanding", out)
                self.driver.outstanding = 0
            self.done.set_result(None)

    def stop(self) -> None:
        self.stopping = True
        if self.driver.outstanding <= 0 and not self.done.done():
            self.done.set_result(None)


@dataclass
class _Run:
    loop: asyncio.AbstractEventLoop
    max_calls: int | None
    stopping: bool = False


class Progress:
    """A plain-text progress line on stderr: redrawn in place on a terminal,
    a line every ``every`` seconds otherwise (logs, CI)."""

    def __init__(self, total: float, label: str = "", *, stream: IO[str] | None = None,
                 every: float = 1.0, enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.enabled = enabled
        self._last = -math.inf
        self._drawn = False

    def update(self, done: float, text: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < self.every:
            return
        self._last = now
        frac = min(1.0, done / self.total) if self.total > 0 else 1.0
        if self.tty:
            width = 30
            bar = "#" * int(frac * width)
            self.stream.write(f"\r{self.label} [{bar:<{width}}] {frac:4.0%} {text}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"{self.label} {frac:4.0%} {text}\n")
        self.stream.flush()

    def close(self, text: str = "") -> None:
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        if text:
            self.stream.write(text + "\n")
        self.stream.flush()


async def run_load(
    workloads: Sequence[Workload], *, duration: float, max_calls: int | None = None,
    drain_timeout: float = 5.0, connect_timeout: float = 10.0, connect_concurrency: int = 100,
    progress: Callable[[float, int], None] | None = None,
    on_start: Callable[[], None] | None = None, on_end: Callable[[], None] | None = None,
) -> float:
    """Drive ``workloads`` for ``duration`` seconds (or ``max_calls`` requests per
    workload); results land in each ``workload.result``. Returns the measured
    seconds (start of traffic to the last reply). ``on_start`` runs right before
    the first request is written, ``on_end`` right after the last reply (before
    the connections close); ``progress(elapsed, calls)`` about 5 times a second.
    Connect errors raise :class:`ConnectionError`."""
    loop = asyncio.get_running_loop()
    run = _Run(loop, max_calls)
    clients: list[tuple[Workload, _Client]] = []
    sem = asyncio.Semaphore(connect_concurrency)

    async def connect(w: Workload, i: int) -> None:
        async with sem:
            c = _Client(run, w.driver(i), w.depth)
            await asyncio.wait_for(
                loop.create_connection(lambda: c, "127.0.0.1", w.port), connect_timeout)
            clients.append((w, c))

    try:
        await asyncio.gather(*(connect(w, i) for w in workloads for i in range(w.connections)))
        if on_start is not None:
            on_start()
        t0 = loop.time()
        for _, c in clients:
            c.start()
        deadline = t0 + duration
        pending = [c.done for _, c in clients]
        while loop.time() < deadline and not all(f.done() for f in pending):
            await asyncio.wait(pending, timeout=min(0.2, max(0.0, deadline - loop.time())))
            if progress is not None:
                progress(loop.time() - t0, sum(w.result.calls for w in workloads))
        run.stopping = True
        for _, c in clients:
            c.stop()
        _, late = await asyncio.wait(pending, timeout=drain_timeout)
        elapsed = loop.time() - t0
        if on_end is not None:
            on_end()
        for w, c in clients:
            if c.done in late:
                out = c.driver.outstanding
                c.driver.outstanding = 0
                c.done.set_result(None)  # counted here, not again when it closes
                w.result.lost += out
                w.result.error(f"{out} replies not received within {drain_timeout} s "
                               f"of the end", out)
        for w in workloads:
            w.result.seconds = elapsed
        if progress is not None:
            progress(elapsed, sum(w.result.calls for w in workloads))
        return elapsed
    finally:
        for _, c in clients:
            if c.transport is not None:
                c.transport.close()
        await asyncio.sleep(0)


def client_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when installed (cheaper clients), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- the server under test, in a child process ------------------------------------------


class HostProcess:
    """The host side (offloaded or direct) in a child process; see the module doc.

    ``config`` keys: ``mode`` (``offload`` | ``direct``), ``backend`` (offload:
    ``auto`` | ``afxdp`` | ``afpacket`` | ``shm``), ``queues``, ``netns`` (bool),
    ``services`` (subset of ``kv``, ``ndjson``, ``nvme``), ``uvloop`` (bool),
    ``host_config`` (keyword arguments of :class:`mux_rpc.offload.HostConfig`),
    ``agent_args`` (extra agent arguments), ``log_level``."""

    def __init__(self, config: dict[str, Any], *, start_timeout: float = 60.0,
                 stop_timeout: float = 20.0) -> None:
        self.config = config
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._stats_dir: tempfile.TemporaryDirectory[str] | None = None
        self._lines: list[bytes] = []
        self._cv = threading.Condition()
        self._eof = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> dict[str, Any]:
        self._stats_dir = tempfile.TemporaryDirectory(prefix="mux-rpc-stats-")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["MUX_RPC_STATS_DIR"] = self._stats_dir.name
        env.setdefault("LIBXDP_SKIP_DISPATCHER", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import mux_rpc._loadgen as m; m.host_child_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            # its own session: a Ctrl-C on the terminal reaches only us, and we
            # stop the host in order ("stop", or EOF on its stdin if we die)
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True, name="host-reader").start()
        try:
            self._send(json.dumps(self.config))
            info = self._reply(self.start_timeout)
            if "error" in info:
                raise RuntimeError(f"host process failed to start: {info['error']}")
            self.info = info
            return info
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self._lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._lines:
                left = deadline - time.monotonic()
                if self._eof:
                    rc = self.proc.wait(5) if self.proc is not None else None
                    raise RuntimeError(f"host process exited (status {rc})")
                if left <= 0:
                    raise TimeoutError(f"no answer from the host process within {timeout} s")
                self._cv.wait(left)
            line = self._lines.pop(0)
        return json.loads(line)  # type: ignore[no-any-return]

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """Every counter of the host process (and of its agent)."""
        self._send("stats")
        return self._reply(timeout)

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of the host process so far."""
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds of the host process so far: (user, system)."""
        return cpu_split(self.pid)

    def agent_cpu_seconds(self) -> float | None:
        pid = self.info.get("agent_pid")
        if not pid:
            return None
        try:
            return cpu_seconds(int(pid))
        except OSError:
            return None

    def stop(self) -> int | None:
        """Ask the child to tear down and wait; kill it after ``stop_timeout``."""
        p = self.proc
        rc: int | None = None
        if p is not None:
            with contextlib.suppress(OSError, ValueError):
                assert p.stdin is not None
                p.stdin.write(b"stop\n")
                p.stdin.close()
            try:
                rc = p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                p.terminate()  # SIGTERM: the orchestration's cleanup handler tears down
                try:
                    rc = p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    rc = p.wait()
            except KeyboardInterrupt:  # a second Ctrl-C while waiting: still reap it
                p.terminate()
                p.wait(10)
                raise
            self.proc = None
        if self._stats_dir is not None:
            self._stats_dir.cleanup()
            self._stats_dir = None
        return rc


def load_example(name: str) -> Any:
    """Import ``examples/<name>.py`` of this checkout as a module."""
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the demo and the benchmark run from a "
                                "checkout of mux-rpc")
    mod_name = f"mux_rpc_example_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


SERVICE_MODULES = {"kv": "kv_service", "ndjson": "custom_framer_service",
                   "nvme": "nvme_pdu_handler"}


def host_child_main() -> None:
    """Entry point of the host child process (see :class:`HostProcess`)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to fd 1 (the agent) goes to stderr
    cfg = json.loads(sys.stdin.readline() or "{}")

    level = int(cfg.get("log_level", logging.WARNING))
    logging.basicConfig(level=level,
                        format="%(asctime)s host %(name)s %(levelname)s %(message)s")
    commands: asyncio.Queue[str] | None = None
    loop_holder: list[asyncio.AbstractEventLoop] = []

    def stdin_reader() -> None:
        for line in sys.stdin:
            loop_holder[0].call_soon_threadsafe(commands.put_nowait, line.strip())  # type: ignore[union-attr]
        loop_holder[0].call_soon_threadsafe(commands.put_nowait, "stop")  # type: ignore[union-attr]

    def answer(obj: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(obj, default=str) + "\n")
        except BrokenPipeError:
            # the parent is gone (killed): nobody reads the answers any more, and
            # the EOF on stdin stops us. Later writes and the final flush go to
            # /dev/null instead of failing again with a traceback.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)

    async def main() -> None:
        nonlocal commands
        commands = asyncio.Queue()
        loop_holder.append(asyncio.get_running_loop())
        threading.Thread(target=stdin_reader, daemon=True, name="commands").start()
        try:
            async with _serve(cfg) as state:
                answer(state.info)
                while (cmd := await commands.get()) != "stop":
                    if cmd == "stats":
                        answer(await state.snapshot())
        except Exception as exc:
            logging.getLogger("mux_rpc.loadgen").debug("host child failed", exc_info=True)
            answer({"error": f"{type(exc).__name__}: {exc}"})

    factory = client_loop_factory() if cfg.get("uvloop", True) else None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass


class _HostState:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {"pid": os.getpid()}
        self.runtime: Any = None
        self.servers: list[Any] = []

    async def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"servers": [_server_stats(s) for s in self.servers]}
        rt = self.runtime
        if rt is not None and rt.host is not None:
            snap["host"] = rt.host.snapshot()
            snap["links"] = [_link_stats(p) for p in rt.host._ports]
            snap["agent"] = await asyncio.to_thread(_agent_stats, rt)
        return snap


def _server_stats(server: Any) -> dict[str, Any]:
    st = getattr(server, "stats", None)
    if st is None:
        return {}
    from dataclasses import asdict, is_dataclass

    return asdict(st) if is_dataclass(st) and not isinstance(st, type) else dict(vars(st))


def _link_stats(port: Any) -> dict[str, Any]:
    stats = getattr(port, "statistics", None)
    return stats() if stats is not None else {}


def _agent_stats(rt: Any) -> dict[str, Any]:
    from ._stats import read_stats, stats_socket_path

    proc = rt.agent_proc
    if proc is None or proc.poll() is not None:
        return {"error": "agent not running"}
    try:
        return read_stats(stats_socket_path("agent", proc.pid))
    except (OSError, ValueError) as exc:
        return {"error": f"agent stats unreachable: {exc}"}


@contextlib.asynccontextmanager
async def _serve(cfg: dict[str, Any]) -> Any:
    import mux_rpc

    state = _HostState()
    services = list(cfg.get("services", ["kv"]))
    apps = {s: load_example(SERVICE_MODULES[s]) for s in services}
    mode = cfg.get("mode", "offload")
    state.info.update(mode=mode, loop=type(asyncio.get_running_loop()).__module__, ports={})
    if mode == "direct":
        if services != ["kv"]:
            raise ValueError("direct mode serves the kv msgpack-rpc service only")
        server = await mux_rpc.serve_direct(apps["kv"].app, "127.0.0.1", 0)
        state.servers.append(server)
        state.info["ports"]["kv"] = server.port
        state.info["backend"] = "tcp"
        try:
            yield state
        finally:
            await server.close()
        return

    from ._offload import HostConfig
    from ._orchestrate import OffloadOptions, OffloadRuntime
    from ._streams import use_host

    opts = OffloadOptions(queues=int(cfg.get("queues", 2)),
                          host_config=HostConfig(**cfg.get("host_config", {})),
                          backend=cfg.get("backend", "auto"),
                          host_netns=bool(cfg.get("netns", False)),
                          agent_args=tuple(cfg.get("agent_args", ())))
    async with OffloadRuntime(opts) as rt:
        state.runtime = rt
        host = rt.host
        assert host is not None  # the runtime is up
        state.info.update(backend=rt.backend_name, why_not_afxdp=rt.why_not_afxdp,
                          agent_pid=rt.agent_proc.pid if rt.agent_proc else None,
                          queues=rt.queues, netns=opts.host_netns,
                          xdp_modes=sorted({getattr(b, "mode", "?") for b in rt.backends}))
        tasks = []
        with use_host(host):
            for name, mod in apps.items():
                srv = mux_rpc.Server(mod.app)
                state.servers.append(srv)
                if name == "kv":
                    lst = await host.listen(0, "msgpack-rpc")
                    state.info["ports"][name] = lst.port
                    tasks.append(asyncio.ensure_future(srv.serve(lst)))
                for spec in mod.app.stream_handlers:
                    lst = await host.listen(0, spec.framer)
                    state.info["ports"][name] = lst.port
                    tasks.append(asyncio.ensure_future(srv.serve(lst, handler=spec)))
            try:
                yield state
            finally:
                for srv in state.servers:
                    await srv.close()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
