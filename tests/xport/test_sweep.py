"""What a SIGKILLed process leaves behind, and the sweep that removes it.

A child process (a real subprocess, not a fork of pytest) creates a veth pair
with its host end in a namespace, attaches the XDP program to the agent end
through a bpf_link and, from inside the namespace, to the host end through
netlink, and is SIGKILLed. The kernel detaches the bpf_link program by itself;
the netlink one, the pair and the namespace stay until :func:`sweep_stale`,
which must remove exactly those and keep every decoy: names that almost match,
a pair of ours whose owner is alive, a pair whose alias is not ours.

Other test sessions on this machine sweep too (the first VethPair of every
process does), and may remove the child's leftovers first: the scenario then
runs again (a few times at most) instead of checking nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import afxdp_required

pytestmark = pytest.mark.afxdp

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOREIGN_ALIAS = "someone else's"

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from xport._bpfload import XdpProgram, attached_prog_id
from xport._netns import run_in_netns
from xport._topology import VethPair

pair = VethPair(host_netns=True).create()
prog = XdpProgram()  # via="auto": a bpf_link on this kernel
prog.attach(pair.agent.ifname, "native")

def attach_inside():
    p = XdpProgram(via="netlink")
    p.attach(pair.host.ifname, "generic")
    return p

host_prog = run_in_netns(pair.netns, attach_inside)
print(json.dumps({
    "agent": pair.agent.ifname, "agent_index": pair.agent.ifindex,
    "host": pair.host.ifname, "host_index": pair.host.ifindex, "netns": pair.netns,
    "prog_id": prog.prog_id, "via": prog.via_on(pair.agent.ifname),
    "host_prog_id": host_prog.prog_id, "host_via": host_prog.via_on(pair.host.ifindex),
}), flush=True)
time.sleep(120)
"""


class Interfered(Exception):
    """Another process's sweep removed the child's leftovers before ours."""


def _prog_on(ifindex: int, ns: str | None = None) -> int:
    """The XDP program id on ``ifindex`` (0: none); Interfered when the link is gone."""
    from xport._bpfload import attached_prog_id
    from xport._netns import run_in_netns

    try:
        return run_in_netns(ns, lambda: attached_prog_id(ifindex))
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
            raise Interfered(f"ifindex {ifindex} gone before our sweep") from exc
        raise


@contextlib.contextmanager
def _killed_child() -> Iterator[dict[str, Any]]:
    """Run the child until it reports, SIGKILL it, reap it; yield its report."""
    env = {**os.environ, "LIBXDP_SKIP_DISPATCHER": "1", "MUX_RPC_NO_SWEEP": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(ROOT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"child did not report (exit {proc.returncode}): {err[-2000:]}")
        report = json.loads(line)
        report["pid"] = proc.pid
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        yield report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def _set_alias(ifname: str, alias: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], ifalias=alias)


def _scenario() -> None:
    from pyroute2 import netns

    from xport._topology import (
        Owner,
        VethPair,
        current_owner,
        link_exists,
        owned_name,
        parse_owned_name,
        random_suffix,
        sweep_stale,
    )

    with contextlib.ExitStack() as st, _killed_child() as child:
        dead = child["pid"]
        assert child["via"] == "link" and child["host_via"] == "netlink"
        # The bpf_link died with its process; the netlink attachment did not.
        if _prog_on(child["agent_index"]) != 0:
            deadline = time.monotonic() + 2  # the link's last fd closes as the task exits
            while _prog_on(child["agent_index"]) != 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert _prog_on(child["agent_index"]) == 0
        assert _prog_on(child["host_index"], child["netns"]) == child["host_prog_id"] != 0
        leftovers = {child["agent"], child["netns"]}

        # Decoys. Near misses of the pattern, with the dead child's pid in them:
        r = random_suffix()
        near = VethPair(agent_name="mxq" + owned_name("a", dead, r)[3:],  # no such role
                        host_name=owned_name("h", dead, r) + "x",  # 15 bytes
                        host_netns=owned_name("n", dead, r).upper())
        st.enter_context(near)
        # ours by name, the dead child's pid, but an alias that is not ours:
        r2 = random_suffix()
        foreign = st.enter_context(VethPair(agent_name=owned_name("a", dead, r2),
                                            host_name=owned_name("h", dead, r2)))
        assert foreign.agent and foreign.host
        for end in (foreign.agent, foreign.host):
            _set_alias(end.ifname, FOREIGN_ALIAS)
        # ours, owner alive (this process):
        live = st.enter_context(VethPair(host_netns=True))
        # ours, this pid, but another start time: what a reused pid looks like
        reused = st.enter_context(VethPair())
        me = current_owner()
        assert me.start is not None
        assert reused.agent and reused.host
        for end in (reused.agent, reused.host):
            _set_alias(end.ifname, Owner(me.pid, me.start - 1, me.pidns).alias)
        assert near.agent and near.host and near.netns
        assert live.agent and live.host and live.netns
        keep = {near.agent.ifname, near.host.ifname, near.netns, foreign.agent.ifname,
                foreign.host.ifname, live.agent.ifname, live.netns}

        dry = sweep_stale(dry_run=True)
        real = sweep_stale()
        if not leftovers <= set(dry.removed):
            raise Interfered(f"leftovers {leftovers - set(dry.removed)} swept by someone else")

        # exactly: the child's leftovers are gone, nothing we keep was touched
        assert dry.dry_run and not real.dry_run
        assert not link_exists(child["agent"]) and not link_exists(child["host"], child["netns"])
        assert child["netns"] not in netns.listnetns()
        assert not link_exists(reused.agent.ifname) and not link_exists(reused.host.ifname)
        assert not keep & (set(dry.removed) | set(real.removed))
        for name in (near.agent.ifname, foreign.agent.ifname, foreign.host.ifname,
                     live.agent.ifname):
            assert link_exists(name), name
        assert link_exists(near.host.ifname, near.netns)
        assert link_exists(live.host.ifname, live.netns)
        assert {near.netns, live.netns} <= set(netns.listnetns())
        # whatever else a sweep removed (other sessions' leftovers) was ours by name
        for name in set(dry.removed) | set(real.removed):
            assert parse_owned_name(name) is not None, name
        kept = dict(real.kept)
        assert kept[live.agent.ifname] == f"owner pid {me.pid} is alive"
        assert kept[foreign.agent.ifname] == f"alias {FOREIGN_ALIAS!r} is not one of ours"
        # what the caller removes itself after a sweep is not an error
        reused.close()


def test_sigkilled_owner_leftovers_are_swept_and_nothing_else(
        monkeypatch: pytest.MonkeyPatch) -> None:
    afxdp_required()
    # this process's own first-VethPair sweep would take the leftovers before we look
    monkeypatch.setenv("MUX_RPC_NO_SWEEP", "1")
    for _ in range(4):
        try:
            _scenario()
            return
        except Interfered:
            continue
    pytest.fail("every run's leftovers were swept by another process first")


def test_pairs_carry_their_owner_in_names_and_alias() -> None:
    afxdp_required()
    from pyroute2 import IPRoute

    from xport._topology import Owner, VethPair, current_owner, parse_owned_name

    with VethPair(host_netns=True) as pair:
        assert pair.agent and pair.host and pair.netns
        parsed = [parse_owned_name(n) for n in (pair.agent.ifname, pair.host.ifname, pair.netns)]
        assert [p.role if p else None for p in parsed] == ["a", "h", "n"]
        assert {p.pid for p in parsed if p} == {os.getpid()}
        assert len({p.token for p in parsed if p}) == 1
        with IPRoute() as ipr:
            alias = ipr.get_links(pair.agent.ifindex)[0].get_attr("IFLA_IFALIAS")
        assert Owner.parse_alias(alias) == current_owner()
    with VethPair(agent_name="mxtest" + os.urandom(3).hex()) as given:
        assert given.agent and parse_owned_name(given.agent.ifname) is None


def test_cleanup_cli(capsys: pytest.CaptureFixture[str]) -> None:
    afxdp_required()
    from mux_rpc.cli import main
    from xport._topology import VethPair, link_exists

    with VethPair() as live:
        assert live.agent is not None
        assert main(["cleanup", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"kept {live.agent.ifname}: owner pid {os.getpid()} is alive" in out
        assert "removed" not in out  # a dry run says "would remove"
        assert main(["cleanup"]) == 0
        assert link_exists(live.agent.ifname)
    res = subprocess.run([sys.executable, "-m", "mux_rpc", "cleanup", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "--dry-run" in res.stdout
    assert "mx<role><pid><random>" in res.stdout


def test_demo_and_bench_sweep_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """sweep_leftovers removes a stale pair and says so; demo and bench call it first."""
    afxdp_required()
    import argparse

    import mux_rpc.bench
    import mux_rpc.demo
    from mux_rpc._orchestrate import sweep_leftovers
    from xport._topology import Owner, VethPair, current_owner, link_exists

    me = current_owner()
    assert me.start is not None
    with VethPair() as stale:  # this pid, another start time: a reused pid's leftover
        assert stale.agent and stale.host
        for end in (stale.agent, stale.host):
            _set_alias(end.ifname, Owner(me.pid, me.start + 1, me.pidns).alias)
        monkeypatch.setenv("MUX_RPC_NO_SWEEP", "1")
        assert sweep_leftovers() == ()
        assert link_exists(stale.agent.ifname)
        monkeypatch.delenv("MUX_RPC_NO_SWEEP")
        said: list[str] = []
        removed = sweep_leftovers(said.append)
        assert not link_exists(stale.agent.ifname)
        if stale.agent.ifname in removed:  # else another process's sweep was first
            assert len(said) == 1 and stale.agent.ifname in said[0]

    class Swept(Exception):
        pass

    def sweep(say: Any = None) -> tuple[str, ...]:
        raise Swept

    for mod in (mux_rpc.demo, mux_rpc.bench):
        monkeypatch.setattr(mod, "sweep_leftovers", sweep)
        with pytest.raises(Swept):
            mod.run(argparse.Namespace())  # before anything else reads its arguments


def test_the_demo_and_bench_sweep_is_the_process_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """sweep_leftovers (demo, bench) counts as this process's sweep: its first
    VethPair does not list every link and namespace a second time."""
    from mux_rpc._orchestrate import sweep_leftovers
    from xport import _topology

    if os.geteuid() != 0:
        pytest.fail("needs root (sweep_leftovers sweeps as root only)")
    calls: list[int] = []

    def counted(*, dry_run: bool = False) -> _topology.SweepResult:
        calls.append(1)
        return _topology.SweepResult((), (), (), (), dry_run)

    monkeypatch.delenv("MUX_RPC_NO_SWEEP", raising=False)
    monkeypatch.setattr(_topology, "sweep_stale", counted)
    assert sweep_leftovers() == ()
    assert _topology.sweep_once() is None  # VethPair.create's call: already swept
    assert calls == [1]
    assert _topology.sweep_once(force=True) is not None and calls == [1, 1]
