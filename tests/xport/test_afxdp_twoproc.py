"""AF_XDP between two processes over a veth pair, the host end in its own netns.

The receiver runs in a child process that enters the namespace *before*
creating its socket (and loads and attaches its own XDP program there). The
send window of :func:`backend_pairs.two_process` keeps the sender from
overrunning it: the receiver sends CRED frames back over the same link
carrying its cumulative ``rx_buffers_posted()``, and the sender never has sent
more than that. With the window, no frame may be lost: the test checks order,
integrity (every byte), and that the kernel counted no drop and no
empty-fill-ring event.

Run directly for a quick throughput figure::

    .venv/bin/python tests/xport/test_afxdp_twoproc.py --count 500000
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytest
from backend_pairs import two_process  # beside this file (puts the repository on sys.path)

#: the ends' ring sizes: a deep receive side (2048 RX slots) behind a small
#: sender (256 RX slots for the CRED frames), credit returned every 64 frames
RECEIVER = {"frame_count": 4096, "rx_size": 2048, "tx_size": 512}
SENDER = {"frame_count": 1024, "rx_size": 256, "tx_size": 512}
CREDIT_EVERY = 64


def run_two_process(count: int, size: int, *, copy: bool = True,
                    timeout: float = 60.0) -> dict[str, Any]:
    """Sender here on the agent end, receiver in a child in the host end's netns."""
    return two_process("afxdp", netns=True, count=count, size=size, copy=copy,
                       timeout=timeout, ring=RECEIVER["rx_size"], credit_every=CREDIT_EVERY,
                       receiver_open=RECEIVER, sender_open=SENDER)


@pytest.mark.afxdp
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero-copy-views"])
def test_two_processes_host_in_netns_lossless(copy: bool) -> None:
    from conftest import afxdp_required

    afxdp_required()
    count = 300_000 if copy else 100_000
    res = run_two_process(count, 64 if copy else 300, copy=copy, timeout=60)
    r, s = res["receiver"], res["sender"]
    assert s["sent"] == count
    assert r["received"] == count and r["out_of_order"] == 0 and r["damaged"] == 0
    assert r["mode"] == "copy" and r["xdp_mode"] == "native"
    st = r["stats"]
    assert st["rx_dropped"] == 0 and st["rx_fill_empty"] == 0
    assert st["extra"]["xdp_rx_ring_full"] == 0
    assert st["extra"]["bpf_redirected"] == count
    assert st["rx_frames"] == count
    assert s["stats"]["tx_frames"] == count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--zero-copy", action="store_true")
    args = ap.parse_args(argv)
    res = run_two_process(args.count, args.size, copy=not args.zero_copy,
                          timeout=args.timeout)
    r, s = res["receiver"], res["sender"]
    print(f"afxdp two-process: {r['received']} frames of {args.size} B in {r['seconds']:.3f} s"
          f" = {r['received'] / max(r['seconds'], 1e-9):,.0f} frames/s; out of order "
          f"{r['out_of_order']}, damaged {r['damaged']}, rx_dropped {r['stats']['rx_dropped']}, "
          f"fill_empty {r['stats']['rx_fill_empty']}, sender kicks "
          f"{s['stats']['extra']['kicks']} busy {s['stats']['extra']['kick_busy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
