"""``mux-rpc demo --short`` and ``mux-rpc bench --quick --json`` as subprocesses,
over real AF_XDP (each brings up its own veth pair, agent and host process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import afxdp_required

pytestmark = pytest.mark.afxdp

REPO = Path(__file__).resolve().parents[2]


def mux_rpc(*args: str, timeout: float, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MUX_RPC_STATS_DIR=str(tmp_path / "stats"))
    return subprocess.run([sys.executable, "-m", "mux_rpc", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_demo_short_over_afxdp(tmp_path: Path) -> None:
    afxdp_required()
    p = mux_rpc("demo", "--short", "--backend", "afxdp", timeout=150, tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for service in ("kv/echo (msgpack-rpc)", "add (ndjson, custom framer)",
                    "block I/O (NVMe/TCP PDUs)"):
        assert service in out
    assert "transport: AF_XDP on a veth pair" in out
    assert "[  ok] no message lost" in out
    assert "[  ok] agent -> host: every message delivered" in out
    assert "[  ok] link drops = 0 under load" in out
    assert "FAIL" not in out and "demo passed" in out
    for line in out.splitlines():  # every service answered, none failed
        if line.startswith(("kv/echo", "add (ndjson", "block I/O")):
            cols = line.split()
            assert int(cols[-4]) == 0, line  # errors
            assert int(cols[-5].replace(",", "")) > 0, line  # calls
    assert "load" in p.stderr  # the progress line


def test_bench_quick_json_has_every_cell(tmp_path: Path) -> None:
    afxdp_required()
    plot = tmp_path / "e2e.png"
    p = mux_rpc("bench", "--quick", "--json", "--plot", str(plot), timeout=300,
                tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads(p.stdout)
    c_path = os.environ.get("MUX_RPC_PURE_PYTHON") != "1"  # floor[c] measured
    cells = {(c["mode"], c["connections"]): c for c in summary["cells"]}
    assert set(cells) == {(m, n) for m in ("afxdp", "afpacket", "direct")
                          for n in (1, 64, 1000)}
    for key, c in cells.items():
        assert c["calls"] > 0 and c["errors"] == 0 and c["lost"] == 0, key
        assert c["rpc_per_s"] > 0 and c["host_cpu_s_per_100k"] > 0, key
        assert (c["agent_cpu_s_per_100k"] is None) == (key[0] == "direct"), key
        # each sample carries the floor measured right after it, and its ratio to it
        for s in c["samples"]:
            if c_path:
                assert s["floor_s_per_100k"] > s["floor_c_s_per_100k"] > 0, key
            assert s["vs_floor"] == pytest.approx(s["host_cpu_s_per_100k"] / s["floor_s_per_100k"])
            # the kernel's share: part of the host's CPU, against the same floor
            assert 0 <= s["host_kernel_s_per_100k"] <= s["host_cpu_s_per_100k"], key
            assert s["kernel_vs_floor"] == pytest.approx(
                s["host_kernel_s_per_100k"] / s["floor_s_per_100k"])
    assert summary["floor"]["host_cpu_s_per_100k"] > 0
    # the runtime's C dispatch path, measured beside the pure-Python floor
    # (left out, and said so, when it is switched off)
    if c_path:
        assert summary["floor_c"]["path"] == "c-many8"
        assert 0 < summary["floor_c"]["host_cpu_s_per_100k"] \
            < summary["floor"]["host_cpu_s_per_100k"]
    else:
        assert summary["floor_c"] is None and "floor[c]: not measured" in p.stderr
    assert [r["connections"] for r in summary["ratios"]] == [1, 64, 1000]
    for r in summary["ratios"]:
        # per sample kernel <= all, so the medians keep that order
        assert 0 <= r["afxdp_kernel_vs_floor"] <= r["afxdp_vs_floor"] + 1e-9, r
        for k in ("afxdp_vs_direct", "afxdp_vs_floor", *(["afxdp_vs_floor_c"] * c_path),
                  "afpacket_vs_direct", "afpacket_vs_floor", "direct_vs_floor"):
            assert r[k] > 0, (r, k)
    assert set(summary["targets"]) == {"afxdp_vs_direct_at_64", "afxdp_vs_floor_max"}
    assert summary["transport"]["afxdp"]["backend"] == "afxdp"
    assert summary["transport"]["afpacket"]["backend"] == "afpacket"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "host CPU per RPC, ratios" in p.stderr



def _reset_signals() -> None:
    # a shell that started pytest in the background leaves SIGINT ignored, and
    # an ignored signal stays ignored across exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_demo_interrupted_under_load_leaves_nothing(tmp_path: Path, sig: int,
                                                    status: int) -> None:
    """Ctrl-C (or SIGTERM) in the middle of the load: exit 130 (143), no
    traceback, and the host process, the agent, the veth pair and the stats
    directory are all gone."""
    afxdp_required()
    from xport._topology import link_exists

    env = dict(os.environ, MUX_RPC_STATS_DIR=str(tmp_path / "stats"), TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "mux_rpc", "demo", "--short", "--backend",
                          "afxdp", "--duration", "30"], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=_reset_signals)  # noqa: PLW1509
    pids: list[int] = []
    ifname = ""
    err = ""
    try:
        assert p.stderr is not None
        for line in p.stderr:
            err += line
            if m := re.search(r"host pid (\d+), agent pid (\d+)", line):
                pids = [int(m.group(1)), int(m.group(2))]
                cmdline = Path(f"/proc/{pids[1]}/cmdline").read_bytes().split(b"\0")
                ifname = cmdline[cmdline.index(b"--ifname") + 1].decode()
            if "load " in line:  # the progress line: the clients are running
                break
        assert pids and ifname and link_exists(ifname), err
        os.killpg(p.pid, sig)  # what the terminal does with Ctrl-C: the whole group
        err += p.stderr.read()
        assert p.wait(30) == status, err
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert "Traceback" not in err, err
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(
            f"/proc/{pid}/status").read_bytes(), (pid, err)
    assert not link_exists(ifname)
    assert not list(tmp_path.glob("mux-rpc-stats-*")), err  # the host's stats directory
