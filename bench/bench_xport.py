#!/usr/bin/env python3
"""Transport benchmark: frames and packed messages between two processes.

Theory of operation
-------------------
For every cell (backend x workload) the benchmark starts two processes: a
*receiver* on the host end of a veth pair (optionally inside its own network
namespace, ``--netns``) and, once the receiver reports ready, a *sender* on
the agent end. The sender pushes as fast as its backend takes frames for
``--seconds``; the receiver counts what arrives and stops ``--idle-ms`` after
the last frame. Throughput is measured **at the receiver**: frames (or
messages) divided by the time from its first to its last frame. Each cell runs
``--repeat`` times, repetitions interleaved across cells (so a noisy
neighbour hits every cell alike), and the table quotes medians.

Backends: ``c`` (bench/c/xsk_floor, the floor: libxdp's xsk.h and nothing
else), ``afxdp`` (:class:`xport._afxdp.AfXdpBackend`), ``afpacket``
(:class:`xport._afpacket.AfPacketBackend`, the kernel-socket baseline) and
``shm`` (:class:`xport._shm.ShmBackend`, no veth at all). Workloads: raw
64-byte and 1500-byte frames through ``send_batch``/``recv_batch`` (no
link-level credits: received may be below sent, and the loss is reported), and
small messages (``--msg-size`` bytes each) packed many to a frame by
:class:`xport._link.Link`, lossless by its credits.

Ratios printed: Python AF_XDP frames/s / C floor frames/s for 64-byte frames
(target >= 0.5 on the reference machine) and AF_XDP / AF_PACKET per workload
(target > 1). Speed targets live here, never in unit tests.

Run ``bench/bench_xport.py --help``. Each peer is this same file run as
``bench_xport.py worker ...`` (see ``bench_xport.py worker --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

from _procs import Peer, PeerError

C_FLOOR = os.path.join(HERE, "c", "xsk_floor")
BPF_OBJ = os.path.join(ROOT, "bpf", "mux_xdp.o")
ETHERTYPE = 0x88B5
#: AfXdpBackend.open sets XDP_MAX_TX_SKB_BUDGET to its TX ring size (2048); the floor matches
C_TX_BUDGET = 2048
ALL_BACKENDS = ("c", "afxdp", "afpacket", "shm")
#: workload name -> (kind, frame size); "msg" frames are as large as the link makes them
WORKLOADS: dict[str, tuple[str, int]] = {
    "64": ("frames", 64),
    "1500": ("frames", 1500),
    "msg": ("messages", 1500),
}
LABELS = {"64": "64 B frames", "1500": "1500 B frames", "msg": "small messages"}


def log(msg: str) -> None:
    print(f"[bench_xport] {msg}", file=sys.stderr, flush=True)


# ============================================================================
# Worker side: one peer, one backend, one workload.
# ============================================================================

_stop = False


def _on_stop(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def _frame_template(size: int) -> bytes:
    hdr = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + ETHERTYPE.to_bytes(2, "big")
    return hdr + bytes(size - len(hdr))


def open_backend(name: str, role: str, a: argparse.Namespace) -> Any:
    """The backend for this peer. The receiver side loads/attaches XDP where needed."""
    if name == "shm":
        from xport._shm import ShmBackend

        if role == "recv":
            return ShmBackend.create(a.shm_name, slots=2048, frame_size=2048)
        return ShmBackend.attach(a.shm_name)
    if name == "afxdp":
        from xport._afxdp import AfXdpBackend

        # Each end loads bpf/mux_xdp.o and attaches it (native mode where the
        # driver allows: veth does), as the agent and the host do.
        return AfXdpBackend.open(a.ifname, a.queue)
    if name == "afpacket":
        from xport._afpacket import AfPacketBackend

        return AfPacketBackend.open(a.ifname, frame_size=2048, frame_count=2048)
    raise SystemExit(f"unknown backend {name!r}")


def _run_frames_send(be: Any, a: argparse.Namespace) -> dict[str, Any]:
    frame = _frame_template(a.frame_size)
    batch = [frame] * a.batch
    full = a.batch
    sent = rounds = 0
    send = be.send_batch
    now = time.monotonic
    t0 = now()
    deadline = t0 + a.seconds
    while not _stop:
        n = send(batch)
        sent += n
        if n < full:
            be.flush()
        rounds += 1
        if not rounds & 15 and now() >= deadline:
            break
    t_end = now()
    drain_until = t_end + 1.0
    while be.tx_pending() and now() < drain_until:
        be.flush()
    secs = t_end - t0
    return {"role": "send", "frames": sent, "bytes": sent * a.frame_size, "seconds": secs,
            "frames_per_s": sent / secs if secs else 0.0}


def _run_frames_recv(be: Any, a: argparse.Namespace) -> dict[str, Any]:
    frames = nbytes = 0
    t_first = t_last = 0.0
    now = time.monotonic
    recv = be.recv_batch
    idle = a.idle_ms / 1000.0
    t_start = now()
    batch = a.batch
    _ready()
    spin = a.rx_wait == "spin"
    t_empty = 0.0
    was_empty = False
    while not _stop:
        got = recv(batch)
        if not got:
            t = now()
            if not was_empty:
                was_empty, t_empty = True, t
            if frames and (t - t_last > idle or t - t_first > a.seconds + 1.0):
                break
            if not frames and t - t_start > a.seconds + 30.0:
                break
            # spin: sleep only after 1 ms without frames (as bench/c/xsk_floor does)
            if not spin or t - t_empty > 1e-3:
                be.wait_readable(0.01)
            continue
        was_empty = False
        for f in got:
            nbytes += len(f)
        t_last = now()
        if not frames:
            t_first = t_last
        frames += len(got)
    secs = t_last - t_first
    return {"role": "recv", "frames": frames, "bytes": nbytes, "seconds": secs,
            "frames_per_s": frames / secs if secs > 0 else 0.0,
            "mb_per_s": nbytes / secs / 1e6 if secs > 0 else 0.0}


def _link(be: Any, role: str) -> Any:
    from xport._link import Link, LinkConfig
    from xport._protocol import Role

    agent, host = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    if role == "send":  # the agent end sends, the host end receives (DESIGN.md picture)
        cfg = LinkConfig(role=Role.AGENT, local_mac=agent, peer_mac=host)
    else:
        cfg = LinkConfig(role=Role.HOST, local_mac=host, peer_mac=agent)
    return Link(be, cfg, now=time.monotonic())


def _run_msgs_send(be: Any, a: argparse.Namespace) -> dict[str, Any]:
    """Queue small DATA messages, flush (packs them ~46 to a frame), poll for credit."""
    link = _link(be, "send")
    payload = bytes(a.msg_size)
    # keep about two flushes' worth of messages queued: the link packs, credit paces
    per_frame = max(1, (be.frame_size - 34) // (16 + a.msg_size))
    low = 2 * a.batch * per_frame
    send = link.send_data
    flush, poll = link.flush, link.poll
    queued = 0
    now = time.monotonic
    t0 = now()
    deadline = t0 + a.seconds
    rounds = 0
    while not _stop:
        q = link.queued_messages
        if q < low:
            for _ in range(low - q):
                send(1, payload)
            queued += low - q
        if not flush():
            poll(a.batch)  # out of link credit: take the peer's credit frames
            if not flush():
                be.wait_readable(0.001)
        poll(a.batch)
        rounds += 1
        if not rounds & 7 and now() >= deadline:
            break
    t_end = now()
    # drain what is queued (the receiver is still counting), bounded in time
    until = t_end + 3.0
    while (link.queued_messages or be.tx_pending()) and now() < until and not _stop:
        if not flush():
            be.wait_readable(0.001)
        poll(a.batch)
    st = link.statistics()
    secs = t_end - t0
    msgs = st.messages_out - 1  # minus the HELLO
    return {"role": "send", "frames": st.frames_out, "messages": msgs,
            "messages_queued": queued, "unsent_messages": link.queued_messages,
            "seconds": secs, "messages_per_s": msgs / secs if secs else 0.0,
            "credit_stalls": st.credit_stalls, "credit_only_in": st.credit_only_in}


def _run_msgs_recv(be: Any, a: argparse.Namespace) -> dict[str, Any]:
    """Poll whole messages, count them and their payload bytes, flush credit back."""
    link = _link(be, "recv")
    poll, flush = link.poll, link.flush
    msgs = nbytes = 0
    t_first = t_last = 0.0
    now = time.monotonic
    idle = a.idle_ms / 1000.0
    spin = a.rx_wait == "spin"
    t_start = now()
    t_empty = 0.0
    was_empty = False
    _ready()
    while not _stop:
        got = poll(a.batch)
        # Credit (and our HELLO) go back only once the sender is up: a frame sent
        # before the peer's socket exists is lost, and the credit it carried with it.
        if msgs or got:
            flush()
        if not got:
            t = now()
            if not was_empty:
                was_empty, t_empty = True, t
            if msgs and (t - t_last > idle or t - t_first > a.seconds + 3.0):
                break
            if not msgs and t - t_start > a.seconds + 30.0:
                break
            if not spin or t - t_empty > 1e-3:
                be.wait_readable(0.01)
            continue
        was_empty = False
        for m in got:
            nbytes += len(m.payload)
        t_last = now()
        if not msgs:
            t_first = t_last
        msgs += len(got)
    st = link.statistics()
    secs = t_last - t_first
    frames = st.frames_in - st.credit_only_in
    return {"role": "recv", "frames": frames, "messages": msgs, "bytes": nbytes,
            "seconds": secs, "messages_per_s": msgs / secs if secs > 0 else 0.0,
            "frames_per_s": frames / secs if secs > 0 else 0.0,
            "mb_per_s": nbytes / secs / 1e6 if secs > 0 else 0.0,
            "messages_per_frame": msgs / frames if frames else 0.0,
            "credit_only_out": st.credit_only_out, "dropped": dict(st.dropped)}


def _ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


def worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench_xport.py worker",
        description="One benchmark peer (started by bench_xport.py; runnable by hand). "
                    "Prints {\"event\":\"ready\"} (receiver) then one JSON result line.")
    p.add_argument("--role", choices=("send", "recv"), required=True,
                   help="send on this end, or receive and count")
    p.add_argument("--backend", choices=("afxdp", "afpacket", "shm"), required=True,
                   help="frame backend to use")
    p.add_argument("--workload", choices=("frames", "messages"), default="frames",
                   help="raw frames through the backend, or small messages through xport._link")
    p.add_argument("--ifname", default="", help="interface (veth end); unused for shm")
    p.add_argument("--queue", type=int, default=0, help="queue id (default 0)")
    p.add_argument("--shm-name", default="", help="shared-memory link name (shm backend)")
    p.add_argument("--frame-size", type=int, default=64, help="frame length in bytes (frames)")
    p.add_argument("--msg-size", type=int, default=16, help="message payload bytes (messages)")
    p.add_argument("--batch", type=int, default=64, help="frames per send_batch/recv_batch call")
    p.add_argument("--seconds", type=float, default=2.0, help="how long the sender sends")
    p.add_argument("--idle-ms", type=int, default=500,
                   help="receiver stops this long after the last frame")
    p.add_argument("--rx-wait", choices=("spin", "poll"), default="poll",
                   help="receiver with an empty ring: spin, sleeping only after 1 ms without "
                        "frames, or sleep in wait_readable() at once")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    be = open_backend(a.backend, a.role, a)
    try:
        if a.workload == "frames":
            res = (_run_frames_send if a.role == "send" else _run_frames_recv)(be, a)
        else:
            res = (_run_msgs_send if a.role == "send" else _run_msgs_recv)(be, a)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["cpu_user"], res["cpu_sys"] = ru.ru_utime, ru.ru_stime
        stats = be.statistics()
        res["backend_stats"] = stats.as_dict()
        res["mode"] = be.mode
    finally:
        be.close()
    print(json.dumps(res), flush=True)
    return 0


# ============================================================================
# Driver side: cells, repetitions, table, JSON, plot.
# ============================================================================

@dataclass
class Cell:
    backend: str
    workload: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float:
        vals = [float(r[key]) for r in self.runs if key in r]
        return statistics.median(vals) if vals else 0.0

    def summary(self) -> dict[str, Any]:
        kind, fsize = WORKLOADS[self.workload]
        out: dict[str, Any] = {
            "backend": self.backend, "workload": self.workload, "kind": kind,
            "repeats": len(self.runs), "error": self.error,
            "frames": int(self.median("frames")),
            "frames_sent": int(self.median("sent_frames")),
            "frames_per_s": self.median("frames_per_s"),
            "mb_per_s": self.median("mb_per_s"),
            "loss": self.median("loss"),
            "cpu_us_per_frame": {
                f"{side}_{kind_}": round(self.median(f"{side}_{kind_}_us_per_frame"), 3)
                for side in ("send", "recv") for kind_ in ("user", "sys")},
            "frames_per_s_runs": [round(float(r.get("frames_per_s", 0.0)), 1)
                                  for r in self.runs],
        }
        if kind == "frames":
            out["frame_size"] = fsize
        else:
            out["messages"] = int(self.median("messages"))
            out["messages_per_s"] = self.median("messages_per_s")
            out["messages_per_frame"] = self.median("messages_per_frame")
        return out


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.pair: Any = None
        self.py = sys.executable
        self.me = os.path.abspath(__file__)

    # -- availability -----------------------------------------------------------
    def unavailable(self, backend: str) -> str | None:
        needs_root = backend in ("c", "afxdp", "afpacket")
        if needs_root and os.geteuid() != 0:
            return "needs root"
        if backend == "c":
            build = os.path.join(HERE, "c", "build.sh")
            r = subprocess.run(["bash", build], capture_output=True, text=True, timeout=120,
                               check=False)
            if r.returncode != 0:
                return f"bench/c/build.sh failed: {r.stderr.strip()[-300:]}"
            if not os.path.exists(BPF_OBJ):
                return "bpf/mux_xdp.o not built (scripts/setup.sh)"
            return None
        mod = {"afxdp": "xport._afxdp", "afpacket": "xport._afpacket", "shm": "xport._shm"}
        try:
            __import__(mod[backend])
        except ImportError as exc:
            return f"{mod[backend]} not importable ({exc})"
        if backend == "afxdp" and not os.path.exists(BPF_OBJ):
            return "bpf/mux_xdp.o not built (scripts/setup.sh)"
        return None

    # -- one run of one cell -------------------------------------------------------
    def run_cell(self, cell: Cell, rep: int) -> dict[str, Any]:
        a = self.a
        kind, fsize = WORKLOADS[cell.workload]
        if cell.backend != "shm" and (self.pair is None or self.pair.host is None
                                      or self.pair.agent is None):
            raise RuntimeError(f"cell {cell.backend}/{cell.workload} needs the veth pair")
        host = self.pair.host if self.pair else None
        agent = self.pair.agent if self.pair else None
        netns = host.netns if host else None
        common = ["--seconds", str(a.seconds), "--batch", str(a.batch)]
        rx_wait = ["--rx-wait", a.rx_wait]
        if cell.backend == "c":
            assert host is not None and agent is not None  # checked above
            recv_argv = [C_FLOOR, "recv", "--ifname", host.ifname, "--bpf-obj", BPF_OBJ,
                         "--idle-ms", str(a.idle_ms), *rx_wait, *common]
            # same socket configuration as AfXdpBackend: TX budget = TX ring size
            send_argv = [C_FLOOR, "send", "--ifname", agent.ifname, "--frame-size",
                         str(fsize), "--tx-budget", str(C_TX_BUDGET), *common]
        else:
            base = [self.py, self.me, "worker", "--backend", cell.backend, "--workload", kind,
                    "--frame-size", str(fsize), "--msg-size", str(a.msg_size),
                    "--idle-ms", str(a.idle_ms), *common]
            if cell.backend == "shm":
                shm = f"bench{os.getpid()}x{rep}"
                recv_argv = [*base, "--role", "recv", "--shm-name", shm, *rx_wait]
                send_argv = [*base, "--role", "send", "--shm-name", shm]
                netns = None
            else:
                assert host is not None and agent is not None  # checked above
                recv_argv = [*base, "--role", "recv", "--ifname", host.ifname, *rx_wait]
                send_argv = [*base, "--role", "send", "--ifname", agent.ifname]
        timeout = a.seconds + 30.0
        with Peer(recv_argv, name=f"{cell.backend}/{cell.workload} recv", netns=netns) as rx:
            rx.wait_ready(timeout=30.0)
            with Peer(send_argv, name=f"{cell.backend}/{cell.workload} send") as tx:
                sres = tx.result(timeout=timeout)
            rres = rx.result(timeout=timeout)
        sent = int(sres.get("frames", 0))
        got = int(rres.get("frames", 0))
        run = dict(rres)
        run["sent_frames"] = sent
        run["loss"] = (sent - got) / sent if sent and kind == "frames" else 0.0
        run["sender"] = sres
        # Where time goes, per frame moved (whole process lifetimes, start-up included).
        for side, res in (("send", sres), ("recv", rres)):
            n = max(1, int(res.get("frames", 0)))
            run[f"{side}_user_us_per_frame"] = float(res.get("cpu_user", 0.0)) * 1e6 / n
            run[f"{side}_sys_us_per_frame"] = float(res.get("cpu_sys", 0.0)) * 1e6 / n
        return run

    # -- the whole matrix ---------------------------------------------------------
    def run(self) -> list[Cell]:
        a = self.a
        backends = [b for b in a.backends]
        cells: list[Cell] = []
        skipped: dict[str, str] = {}
        for b in backends:
            why = self.unavailable(b)
            if why:
                skipped[b] = why
                log(f"backend {b}: unavailable: {why}")
        for b in backends:
            for w in a.workloads:
                if b == "c" and WORKLOADS[w][0] == "messages":
                    continue  # the C floor moves frames only
                c = Cell(b, w)
                c.error = skipped.get(b)
                if c.error is None and WORKLOADS[w][0] == "messages":
                    c.error = link_unavailable()
                cells.append(c)
        needs_veth = any(c.error is None and c.backend != "shm" for c in cells)
        from xport._topology import VethPair, install_cleanup_handlers

        self.pair = VethPair(queues=1, host_netns=bool(a.netns)) if needs_veth else None
        try:
            if self.pair:
                self.pair.create()
            # Only now: pyroute2 forks helper processes while it creates the netns, and
            # those inherit the handler; one that runs there tears our pair down.
            install_cleanup_handlers()
            if self.pair:
                log(f"veth {self.pair.agent.ifname} <-> {self.pair.host.ifname}"
                    + (f" (host end in netns {self.pair.netns})" if self.pair.netns else ""))
            for rep in range(a.repeat):
                for c in cells:
                    if c.error:
                        continue
                    t = time.monotonic()
                    try:
                        r = self.run_cell(c, rep)
                    except PeerError as exc:
                        c.error = str(exc).splitlines()[0]
                        log(f"{c.backend}/{c.workload}: FAILED: {exc}")
                        continue
                    c.runs.append(r)
                    extra = (f", {r.get('messages_per_s', 0) / 1e6:.2f} M msg/s"
                             if "messages_per_s" in r else "")
                    log(f"rep {rep + 1}/{a.repeat} {c.backend:8s} {LABELS[c.workload]:15s} "
                        f"{r.get('frames_per_s', 0) / 1e3:8.1f} k frames/s{extra}  "
                        f"recv {r.get('frames', 0)}/{r['sent_frames']} sent "
                        f"({time.monotonic() - t:.1f}s)")
        finally:
            if self.pair:
                self.pair.close()
        return cells


def link_unavailable() -> str | None:
    try:
        from xport._link import Link  # noqa: F401
    except ImportError as exc:
        return f"xport._link.Link not importable ({exc})"
    return None


# -- reporting ---------------------------------------------------------------------

def ratios(cells: list[Cell]) -> dict[str, float | None]:
    by = {(c.backend, c.workload): c for c in cells if c.runs}

    def rate(b: str, w: str) -> float | None:
        c = by.get((b, w))
        if c is None:
            return None
        key = "messages_per_s" if WORKLOADS[w][0] == "messages" else "frames_per_s"
        v = c.median(key)
        return v or None

    def div(x: float | None, y: float | None) -> float | None:
        return round(x / y, 3) if x and y else None

    def paired(b1: str, b2: str, w: str) -> float | None:
        # median over repetitions of the ratio of two cells run next to each other
        c1, c2 = by.get((b1, w)), by.get((b2, w))
        if c1 is None or c2 is None:
            return None
        key = "messages_per_s" if WORKLOADS[w][0] == "messages" else "frames_per_s"
        rs = [float(x[key]) / float(y[key]) for x, y in zip(c1.runs, c2.runs)
              if x.get(key) and y.get(key)]
        return round(statistics.median(rs), 3) if rs else None

    out: dict[str, float | None] = {
        "python_afxdp_over_c_64": div(rate("afxdp", "64"), rate("c", "64")),
        "python_afxdp_over_c_1500": div(rate("afxdp", "1500"), rate("c", "1500")),
    }
    for w in WORKLOADS:
        out[f"afxdp_over_afpacket_{w}"] = div(rate("afxdp", w), rate("afpacket", w))
    # the same ratios as medians of per-repetition (paired) ratios: less sensitive to
    # a neighbour's load that comes and goes between repetitions
    out["paired_python_afxdp_over_c_64"] = paired("afxdp", "c", "64")
    out["paired_python_afxdp_over_c_1500"] = paired("afxdp", "c", "1500")
    for w in WORKLOADS:
        out[f"paired_afxdp_over_afpacket_{w}"] = paired("afxdp", "afpacket", w)
    return out


def table(cells: list[Cell], rat: dict[str, float | None]) -> str:
    lines = [(f"{'backend':9s} {'workload':15s} {'frames/s':>12s} {'msgs/s':>12s} "
              f"{'MB/s':>9s} {'recv/sent':>9s} {'CPU us/frame snd u+s, rcv u+s':>30s}  "
              f"{'runs (k frames/s)':s}")]
    for c in cells:
        if not c.runs:
            lines.append(f"{c.backend:9s} {LABELS[c.workload]:15s} "
                         f"  -- {c.error or 'no result'}")
            continue
        s = c.summary()
        msgs = f"{s['messages_per_s']:12,.0f}" if "messages_per_s" in s else f"{'':>12s}"
        rs = " ".join(f"{v / 1e3:.0f}" for v in s["frames_per_s_runs"])
        recv_sent = (f"{1 - s['loss']:9.4f}" if s["kind"] == "frames" else f"{'lossless':>9s}")
        cpu = s["cpu_us_per_frame"]
        cpus = (f"{cpu['send_user']:.2f}+{cpu['send_sys']:.2f}, "
                f"{cpu['recv_user']:.2f}+{cpu['recv_sys']:.2f}")
        lines.append(f"{c.backend:9s} {LABELS[c.workload]:15s} {s['frames_per_s']:12,.0f} "
                     f"{msgs} {s['mb_per_s']:9.1f} {recv_sent} {cpus:>30s}  {rs}")
    lines.append("")
    r64 = rat.get("python_afxdp_over_c_64")
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    p64 = rat.get("paired_python_afxdp_over_c_64")
    lines.append("ratio (of medians; median of per-repetition ratios in brackets)")
    lines.append(f"Python AF_XDP / C floor, 64 B frames/s : {fmt(r64)} [{fmt(p64)}]  "
                 f"(target >= 0.5: "
                 f"{'n/a' if r64 is None else ('met' if r64 >= 0.5 else 'MISSED')})")
    for w in WORKLOADS:
        v = rat.get(f"afxdp_over_afpacket_{w}")
        pv = rat.get(f"paired_afxdp_over_afpacket_{w}")
        lines.append(f"AF_XDP / AF_PACKET, {LABELS[w]:15s}: {fmt(v)} [{fmt(pv)}]  "
                     f"(target > 1: "
                     f"{'n/a' if v is None else ('met' if v > 1 else 'MISSED')})")
    return "\n".join(lines)


def plot(cells: list[Cell], path: str) -> None:
    """Bars of AF_XDP vs AF_PACKET (and the C floor): frames/s, and messages/s if run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(c.backend, c.workload): c for c in cells if c.runs}
    groups = [("frames", [w for w in WORKLOADS if WORKLOADS[w][0] == "frames"]),
              ("messages", [w for w in WORKLOADS if WORKLOADS[w][0] == "messages"])]
    groups = [(k, [w for w in ws if ("afxdp", w) in by or ("afpacket", w) in by])
              for k, ws in groups]
    groups = [(k, ws) for k, ws in groups if ws]
    if not groups:
        log("plot: no AF_XDP/AF_PACKET results, nothing to plot")
        return
    ratios_ = [len(ws) + 0.6 for _, ws in groups]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 + 2.2 * sum(ratios_), 4.2),
                             gridspec_kw={"width_ratios": ratios_}, squeeze=False)
    series = [("afxdp", "AF_XDP (Python)", "tab:blue"),
              ("afpacket", "AF_PACKET (Python)", "tab:orange"),
              ("c", "AF_XDP C floor", "tab:green")]
    width = 0.27
    for ax, (kind, ws) in zip(axes[0], groups):
        key = "messages_per_s" if kind == "messages" else "frames_per_s"
        present = [(b, lab, col) for b, lab, col in series if any((b, w) in by for w in ws)]
        for i, (b, label, col) in enumerate(present):
            vals = [by[(b, w)].median(key) / 1e6 if (b, w) in by else 0.0 for w in ws]
            off = (i - (len(present) - 1) / 2) * width
            bars = ax.bar([j + off for j in range(len(ws))], vals, width, label=label,
                          color=col)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(ws)))
        ax.set_xticklabels([LABELS[w] for w in ws])
        ax.set_ylabel(f"million {kind}/s (median, at receiver)")
        ax.legend(fontsize=8)
    fig.suptitle("mux-rpc transport, two processes over veth: AF_XDP vs AF_PACKET")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot saved to {path}")


def machine_notes() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "kernel": platform.release(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": _cpu_model()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_xport.py",
        description="Transport benchmark between two processes over a veth pair: Python "
                    "AF_XDP, AF_PACKET and shared-memory backends against a C AF_XDP floor "
                    "(bench/c/xsk_floor). Throughput is measured at the receiver; the table "
                    "shows medians of --repeat runs. Progress goes to stderr.",
        epilog="Each peer runs as 'bench_xport.py worker ...' (see 'worker --help'). "
               "Needs root for veth/AF_XDP/AF_PACKET; shm runs anywhere.")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help="comma-separated backends to run, from c, afxdp, afpacket, shm "
                        "(default: all; unavailable ones are reported, not run)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated workloads: 64 and 1500 (raw frames of that many "
                        "bytes), msg (small messages packed into frames by xport._link) "
                        "(default: all)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="how long the sender sends in each run (default 2.0)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per cell; the table quotes medians (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="short smoke run (~20 s): --seconds 0.5 --repeat 1 --idle-ms 200")
    p.add_argument("--batch", type=int, default=64,
                   help="frames per send/receive call, Python and C alike (default 64)")
    p.add_argument("--msg-size", type=int, default=16,
                   help="payload bytes per message in the msg workload (default 16)")
    p.add_argument("--idle-ms", type=int, default=300,
                   help="a receiver stops this long after its last frame (default 300)")
    p.add_argument("--rx-wait", choices=("poll", "spin"), default="poll",
                   help="what every receiver (C and Python) does when its ring is empty: sleep "
                        "in poll() at once (default), or spin and sleep only after 1 ms without "
                        "frames (no wake-up cost for the sender, but on 2 cores the spinning "
                        "receiver takes CPU from the kernel's veth/XDP work: slower here)")
    p.add_argument("--netns", action="store_true",
                   help="put the host (receiver) end of the veth pair in its own netns")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout instead of the table")
    p.add_argument("--plot", default=os.path.join(HERE, "out", "xport.png"), metavar="PNG",
                   help="save a bar plot of AF_XDP vs AF_PACKET (and the C floor) here "
                        "(default bench/out/xport.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.repeat, a.idle_ms = 0.5, 1, 200
    a.backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for b in a.backends:
        if b not in ALL_BACKENDS:
            p.error(f"unknown backend {b!r} (choose from {', '.join(ALL_BACKENDS)})")
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")
    if a.repeat < 1 or a.seconds <= 0:
        p.error("--repeat must be >= 1 and --seconds > 0")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        return worker_main(argv[1:])
    a = parse_args(argv)
    t0 = time.monotonic()
    try:
        cells = Bench(a).run()
    except KeyboardInterrupt:  # peers, veth, netns and XDP programs are already gone
        log("interrupted")
        return 130
    rat = ratios(cells)
    if not a.no_plot:
        try:
            plot(cells, a.plot)
        except Exception as exc:  # noqa: BLE001 - a failed plot must not lose the numbers
            log(f"plot failed: {exc}")
    machine = machine_notes()
    summary: dict[str, Any] = {
        "machine": machine,
        "config": {"seconds": a.seconds, "repeat": a.repeat, "batch": a.batch,
                   "msg_size": a.msg_size, "netns": a.netns, "quick": a.quick},
        "cells": [c.summary() for c in cells],
        "ratios": rat,
        "targets": {
            "python_afxdp_over_c_64_ge_0.5": (rat["python_afxdp_over_c_64"] or 0) >= 0.5,
            "afxdp_beats_afpacket": all((rat.get(f"afxdp_over_afpacket_{w}") or 0) > 1
                                        for w in a.workloads),
        },
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    text = table(cells, rat)
    if a.json:
        print(json.dumps(summary, indent=2))
        print(text, file=sys.stderr)
    else:
        print(text)
        print(f"\n{machine['date']}, {machine['cpu']}, {machine['cpus']} CPUs, "
              f"Linux {machine['kernel']}, Python {machine['python']}; {a.seconds}s x "
              f"{a.repeat} runs per cell, medians; elapsed {summary['elapsed_s']}s")
    return 0 if all(c.runs for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
