"""The XDP program: build, verdicts, counters, attach/detach in every mode, netns."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest
from conftest import afxdp_required

pytestmark = pytest.mark.afxdp

ROOT = pathlib.Path(__file__).resolve().parents[2]
OURS = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"payload" * 8
IPV4 = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + b"\x45" + b"\x00" * 40
VLAN_OURS = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x81\x00\x00\x01\x88\xb5" + b"x" * 40


@pytest.fixture
def prog():  # type: ignore[no-untyped-def]
    afxdp_required()
    from xport._bpfload import XdpProgram

    with XdpProgram() as p:
        yield p


def test_header_shared_with_user_space() -> None:
    afxdp_required()
    from xport._xsk import lib

    hdr = (ROOT / "bpf" / "mux_xdp.h").read_text()
    assert "#define MUX_ETHERTYPE 0x88B5" in hdr
    assert lib.MUX_ETHERTYPE == 0x88B5 and lib.MUX_XSKS_MAP_MAX_ENTRIES == 64
    src = (ROOT / "bpf" / "mux_xdp.c").read_text()
    assert src.startswith("// SPDX-License-Identifier:")
    assert "BPF_MAP_TYPE_XSKMAP" in src and "BPF_MAP_TYPE_PERCPU_ARRAY" in src


def test_build_is_idempotent_and_quick() -> None:
    afxdp_required()
    obj = ROOT / "bpf" / "mux_xdp.o"
    subprocess.run(["bash", str(ROOT / "bpf" / "build.sh")], check=True, timeout=120)
    before = obj.stat().st_mtime_ns
    t = time.monotonic()
    subprocess.run(["bash", str(ROOT / "bpf" / "build.sh")], check=True, timeout=60)
    assert time.monotonic() - t < 2.0
    assert obj.stat().st_mtime_ns == before  # nothing newer: nothing rebuilt


def test_verdicts_and_counters(prog) -> None:  # type: ignore[no-untyped-def]
    from xport._xsk import lib

    # Ours with no socket in the XSKMAP: the redirect falls back to XDP_PASS.
    assert prog.test_run(OURS) == lib.XDP_PASS
    assert prog.test_run(IPV4) == lib.XDP_PASS
    assert prog.test_run(IPV4) == lib.XDP_PASS
    # A VLAN-tagged frame is not ours (outer EtherType 0x8100): passed untouched.
    assert prog.test_run(VLAN_OURS) == lib.XDP_PASS
    assert prog.counters() == {"redirected": 1, "passed": 3, "too_short": 0}
    # The kernel's test runner refuses frames shorter than an Ethernet header, so
    # too_short (the bounds check) only guards drivers that could hand one over.
    with pytest.raises(OSError):
        prog.test_run(b"\xff" * 10)


def test_missing_object_file_is_clear(tmp_path: pathlib.Path) -> None:
    afxdp_required()
    from xport._bpfload import XdpProgram

    with pytest.raises(FileNotFoundError, match="setup.sh"):
        XdpProgram(tmp_path / "nope.o")
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(OSError):
        XdpProgram(bad)


def _xdp_attr(ifindex: int, ns: str | None = None) -> dict[str, object]:
    """IFLA_XDP of a link as ``ip -d link`` would show it (attached mode, prog id)."""
    from pyroute2 import IPRoute, NetNS

    with (NetNS(ns) if ns else IPRoute()) as ipr:
        link = ipr.get_links(ifindex)[0]
    xdp = link.get_attr("IFLA_XDP")
    out: dict[str, object] = {"attached": "none", "prog_id": 0}
    if xdp is not None:
        out["attached"] = xdp.get_attr("IFLA_XDP_ATTACHED") or "none"
        out["prog_id"] = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
    return out


# pyroute2 names the IFLA_XDP_ATTACHED values as ``ip -d link`` does
XDP_ATTACHED_DRV, XDP_ATTACHED_SKB = "xdp", "xdpgeneric"


@pytest.mark.parametrize("mode,attached", [("native", XDP_ATTACHED_DRV),
                                           ("generic", XDP_ATTACHED_SKB),
                                           ("auto", XDP_ATTACHED_DRV)])
def test_attach_detach_each_mode(veth_pair, mode: str, attached: str) -> None:  # type: ignore[no-untyped-def]
    from xport._bpfload import XdpProgram, attached_prog_id

    end = veth_pair.agent
    with XdpProgram() as p:
        got = p.attach(end.ifname, mode)  # type: ignore[arg-type]
        assert got == ("native" if mode == "auto" else mode)
        assert p.mode_on(end.ifname) == got
        assert _xdp_attr(end.ifindex) == {"attached": attached, "prog_id": p.prog_id}
        assert attached_prog_id(end.ifindex, got) == p.prog_id
    # Detached with the same mode flag: nothing stays, in either mode.
    assert _xdp_attr(end.ifindex)["attached"] == "none"
    assert attached_prog_id(end.ifindex) == 0


def test_does_not_replace_foreign_program(veth_pair) -> None:  # type: ignore[no-untyped-def]
    from xport._bpfload import XdpProgram, attached_prog_id

    end = veth_pair.agent
    with XdpProgram() as first, XdpProgram() as second:
        first.attach(end.ifname, "native")
        with pytest.raises(OSError):
            second.attach(end.ifname, "auto")
        assert second.attachments == ()
        assert attached_prog_id(end.ifindex) == first.prog_id
        second.close()  # must not detach the first one's program
        assert attached_prog_id(end.ifindex) == first.prog_id
    assert attached_prog_id(end.ifindex) == 0


def test_detach_one_interface_and_idempotent_close(veth_pair) -> None:  # type: ignore[no-untyped-def]
    from xport._bpfload import XdpProgram, attached_prog_id

    a, h = veth_pair.agent, veth_pair.host
    p = XdpProgram()
    p.attach(a.ifname, "generic")
    p.attach(h.ifname, "native")
    p.detach(a.ifname)
    assert attached_prog_id(a.ifindex) == 0 and attached_prog_id(h.ifindex) == p.prog_id
    p.close()
    p.close()
    assert attached_prog_id(h.ifindex) == 0
    with pytest.raises(ValueError):
        p.attach(a.ifname)


def test_program_removed_when_interface_goes_first() -> None:
    afxdp_required()
    from xport._bpfload import XdpProgram
    from xport._topology import VethPair

    with XdpProgram() as p:
        with VethPair() as pair:
            assert pair.agent is not None
            p.attach(pair.agent.ifname)
        p.close()  # interface already gone: no error


def test_garbage_collected_program_is_detached(veth_pair) -> None:  # type: ignore[no-untyped-def]
    import gc

    from xport._bpfload import XdpProgram, attached_prog_id

    p = XdpProgram()
    p.attach(veth_pair.agent.ifname, "generic")
    del p
    gc.collect()
    assert attached_prog_id(veth_pair.agent.ifindex) == 0


_NETNS_CHILD = r"""
import json, sys
from pyroute2 import netns
netns.setns(sys.argv[1])
sys.path.insert(0, sys.argv[3])
from xport._bpfload import XdpProgram, attached_prog_id
import socket
idx = socket.if_nametoindex(sys.argv[2])
with XdpProgram() as p:
    mode = p.attach(sys.argv[2])
    during = attached_prog_id(idx)
    ours = p.prog_id
after = attached_prog_id(idx)
print(json.dumps({"mode": mode, "during": during, "ours": ours, "after": after}))
"""


def test_attach_inside_netns_from_process_that_entered_it() -> None:
    afxdp_required()
    import json

    from xport._topology import VethPair

    with VethPair(host_netns=True) as pair:
        assert pair.host is not None and pair.host.netns
        res = subprocess.run([sys.executable, "-c", _NETNS_CHILD, pair.host.netns,
                              pair.host.ifname, str(ROOT)],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "LIBXDP_SKIP_DISPATCHER": "1"})
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["mode"] == "native" and out["during"] == out["ours"] != 0
        assert out["after"] == 0
        assert _xdp_attr(pair.host.ifindex, pair.host.netns)["attached"] == "none"


def test_detach_from_another_namespace_goes_back_to_the_attach_one() -> None:
    """Attached from a thread inside the host netns, closed from the main thread."""
    afxdp_required()
    import threading

    from pyroute2 import netns

    from xport._bpfload import XdpProgram
    from xport._topology import VethPair

    with VethPair(host_netns=True) as pair:
        host = pair.host
        assert host is not None and host.netns
        holder: list[XdpProgram] = []

        def attach_inside() -> None:
            netns.setns(host.netns)  # this thread only
            p = XdpProgram()
            p.attach(host.ifname, "generic")
            holder.append(p)

        t = threading.Thread(target=attach_inside)
        t.start()
        t.join()
        (prog,) = holder
        assert _xdp_attr(host.ifindex, host.netns) == {
            "attached": XDP_ATTACHED_SKB, "prog_id": prog.prog_id}
        prog.close()  # main thread, root namespace
        assert _xdp_attr(host.ifindex, host.netns)["attached"] == "none"


@pytest.mark.parametrize("via", ["link", "netlink"])
@pytest.mark.parametrize("mode,attached", [("native", XDP_ATTACHED_DRV),
                                           ("generic", XDP_ATTACHED_SKB)])
def test_attach_via_link_or_netlink(veth_pair, via: str, mode: str, attached: str) -> None:  # type: ignore[no-untyped-def]
    """Both ways attach and detach; only a link is tied to its fd (the bpf_link
    kernels refuse a netlink detach of it, which is how we tell them apart)."""
    from xport._bpfload import XdpProgram, attached_prog_id
    from xport._xsk import ffi, lib

    end = veth_pair.agent
    with XdpProgram(via=via) as p:  # type: ignore[arg-type]
        assert p.attach(end.ifname, mode) == mode  # type: ignore[arg-type]
        assert p.via_on(end.ifname) == via and p.via_on(end.ifindex) == via
        (att,) = p.attachments
        assert att.via == via and (att.link_fd >= 0) == (via == "link")
        assert _xdp_attr(end.ifindex) == {"attached": attached, "prog_id": p.prog_id}
        flag = lib.XDP_FLAGS_DRV_MODE if mode == "native" else lib.XDP_FLAGS_SKB_MODE
        if via == "link":
            assert lib.bpf_xdp_detach(end.ifindex, flag, ffi.NULL) == -16  # EBUSY
            assert attached_prog_id(end.ifindex) == p.prog_id
    assert _xdp_attr(end.ifindex)["attached"] == "none"


def test_link_is_the_default_and_via_is_checked(veth_pair) -> None:  # type: ignore[no-untyped-def]
    from xport._bpfload import XdpProgram

    with pytest.raises(ValueError):
        XdpProgram(via="ioctl")  # type: ignore[arg-type]
    with XdpProgram() as p:
        assert p.via == "auto"
        p.attach(veth_pair.agent.ifname, "generic")
        assert p.via_on(veth_pair.agent.ifname) == "link"  # this kernel has XDP links
        assert p.via_on(veth_pair.host.ifname) is None
