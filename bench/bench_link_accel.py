"""Link per-message cost with and without the C accelerator (``xport._linkfast``).

    .venv/bin/python bench/bench_link_accel.py [--size 64] [--runs 5] [--seconds 0.4]

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="DATA payload bytes")
    ap.add_argument("--batch", type=int, default=512, help="messages queued per cycle")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4, help="per run")
    ap.add_argument("--objects", action="store_true", help="Data objects, not raw tuples")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(measure(a.size, a.seconds, a.batch, not a.objects)))
        return 0
    argv = [sys.executable, __file__, "--worker", "--size", str(a.size), "--batch",
            str(a.batch), "--seconds", str(a.seconds)] + (["--objects"] * a.objects)  # fmt: skip
    res: dict[str, list[dict[str, float]]] = {"c": [], "pure": []}
    for _ in range(a.runs):
        for mode in res:
            env = dict(os.environ)
            env.pop("XPORT_PURE_PYTHON", None)
            if mode == "pure":
                env["XPORT_PURE_PYTHON"] = "1"
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return 1
            res[mode].append(json.loads(out.stdout))
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


if __name__ == "__main__":
    sys.exit(main())
