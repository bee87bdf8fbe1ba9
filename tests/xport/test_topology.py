"""VethPair: creates and removes the pair and the netns, IPv6 off, no addresses, queues."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import afxdp_required

pytestmark = pytest.mark.afxdp


def _need_root() -> None:
    if os.geteuid() != 0:
        afxdp_required()  # skips (or fails under MUX_RPC_REQUIRE_AFXDP=1) without root


def _in_ns(ns: str | None, fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` in a thread that entered ``ns`` (so /proc/sys/net is that netns's)."""
    from pyroute2 import netns

    out: list[object] = []

    def run() -> None:
        if ns:
            netns.setns(ns)
        out.append(fn())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def _ipv6_disabled(ifname: str, ns: str | None) -> bool:
    def read() -> str:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6") as f:
            return f.read().strip()

    return bool(_in_ns(ns, read) == "1")


def _addresses(ifindex: int, ns: str | None) -> list[object]:
    from pyroute2 import IPRoute, NetNS

    with (NetNS(ns) if ns else IPRoute()) as ipr:
        return list(ipr.get_addr(index=ifindex))


def _link(ifindex: int, ns: str | None):  # type: ignore[no-untyped-def]
    from pyroute2 import IPRoute, NetNS

    with (NetNS(ns) if ns else IPRoute()) as ipr:
        return ipr.get_links(ifindex)[0]


@pytest.mark.parametrize("host_netns", [False, True])
@pytest.mark.parametrize("queues", [1, 4])
def test_pair_up_ipv6_off_no_addresses_queues(host_netns: bool, queues: int) -> None:
    _need_root()
    from pyroute2 import netns

    from xport._topology import VethPair, link_exists

    with VethPair(queues=queues, host_netns=host_netns, mtu=1400) as pair:
        assert pair.agent is not None and pair.host is not None
        assert (pair.host.netns is not None) == host_netns
        if host_netns:
            assert pair.netns in netns.listnetns()
            assert not link_exists(pair.host.ifname)  # moved out of the root namespace
        for end in (pair.agent, pair.host):
            assert link_exists(end.ifname, end.netns)
            link = _link(end.ifindex, end.netns)
            assert link.get_attr("IFLA_OPERSTATE") in ("UP", "LOWERLAYERDOWN", "UNKNOWN")
            assert link.get_attr("IFLA_MTU") == 1400
            assert link.get_attr("IFLA_NUM_TX_QUEUES") == queues
            assert link.get_attr("IFLA_NUM_RX_QUEUES") == queues
            assert _ipv6_disabled(end.ifname, end.netns)
            assert _addresses(end.ifindex, end.netns) == []  # no IPv4, no IPv6 link-local
        names = (pair.agent.ifname, pair.host.ifname, pair.netns)
    assert not link_exists(names[0])
    if host_netns:
        assert names[2] not in netns.listnetns()


def test_names_unique_and_close_idempotent() -> None:
    _need_root()
    from xport._topology import VethPair, link_exists

    a, b = VethPair(), VethPair()
    with a, b:
        assert a.agent is not None and b.agent is not None
        assert a.agent.ifname != b.agent.ifname
    a.close()
    b.close()
    assert not link_exists(a._agent_name) and not link_exists(b._agent_name)


def test_cleanup_on_exception() -> None:
    _need_root()
    from pyroute2 import netns

    from xport._topology import VethPair, link_exists

    with pytest.raises(RuntimeError, match="boom"), VethPair(host_netns=True, queues=2) as pair:
        name, ns = pair._agent_name, pair.netns
        raise RuntimeError("boom")
    assert not link_exists(name)
    assert ns not in netns.listnetns()


def test_cleanup_when_creation_fails() -> None:
    _need_root()
    from pyroute2 import netns
    from pyroute2.netlink.exceptions import NetlinkError

    from xport._topology import VethPair, link_exists

    with VethPair() as first:
        assert first.agent is not None
        clash = VethPair(agent_name=first.agent.ifname, host_netns=True)  # name taken
        with pytest.raises(NetlinkError):  # EEXIST
            clash.create()
        assert clash.netns not in netns.listnetns()
        assert link_exists(first.agent.ifname)  # the failed pair removed nothing of others


def test_bad_arguments() -> None:
    from xport._topology import VethPair

    with pytest.raises(ValueError):
        VethPair(queues=0)
    with pytest.raises(ValueError):
        VethPair(queues=65)
    with pytest.raises(ValueError):
        VethPair(mtu=20)


def test_close_from_a_thread_inside_the_host_namespace() -> None:
    """A caller that moved into the pair's netns still removes the pair from its home."""
    from pyroute2 import netns

    from xport._topology import VethPair, link_exists

    pair = VethPair(host_netns=True).create()
    assert pair.agent is not None and pair.netns is not None
    name, ns = pair.agent.ifname, pair.netns
    _in_ns(ns, pair.close)
    assert not link_exists(name)
    assert ns not in netns.listnetns()
