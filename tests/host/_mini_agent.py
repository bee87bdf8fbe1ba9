"""A minimal stand-in agent process for orchestration tests: brings up the
agent end of the link (AF_XDP or shm), answers LISTEN, echoes DATA back, and
exits on SIGTERM. No TCP: that is the real agent's job."""

from __future__ import annotations

import argparse
import select
import signal
import sys
import time

from xport import _protocol as P
from xport._link import Link, LinkConfig


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ifname")
    ap.add_argument("--queues", type=int, default=1)
    ap.add_argument("--backend", default="afxdp")
    ap.add_argument("--shm-name")
    args, _ = ap.parse_known_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    backends = []
    if args.backend == "afxdp":
        from xport._afxdp import AfXdpBackend
        from xport._bpfload import XdpProgram

        prog = XdpProgram()
        prog.attach(args.ifname, "native")
        for q in range(args.queues):
            backends.append(AfXdpBackend.open(args.ifname, q, bpf=prog))
    else:
        from xport._shm import ShmBackend

        for q in range(args.queues):
            backends.append(ShmBackend.attach(f"{args.shm_name}-q{q}"))
    cfg = LinkConfig(role=P.Role.AGENT, local_mac=b"\x02\x00\x00\x00\x00\x01",
                     peer_mac=b"\x02\x00\x00\x00\x00\x02")
    links = [Link(b, cfg, now=time.monotonic()) for b in backends]
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        r, _, _ = select.select([l.fileno() for l in links], [], [], 0.05)
        now = time.monotonic()
        for link in links:
            for m in link.poll(64, now):
                if isinstance(m, P.Listen):
                    links[0].send(P.ListenResult(m.listener_id, P.Status.OK, m.port or 40000))
                elif isinstance(m, P.Data):
                    link.send(P.Data(m.conn_id, bytes(m.payload), m.header_length))
                elif isinstance(m, P.Close):
                    link.send(P.Closed(m.conn_id, P.Status.LOCAL_CLOSE))
            link.tick(now)
            link.flush(now)
    for b in backends:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
