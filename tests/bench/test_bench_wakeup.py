"""Smoke test of bench/bench_wakeup.py: both round-trip transports run and report.

Runs ``bench/bench_wakeup.py --quick --json`` (a few seconds): the C echo and
ping over a fresh veth pair (AF_XDP) and over loopback TCP, then the floors.
Checks that round trips happened, that the echo saw exactly what ping sent
(the driver refuses otherwise), that the per-call figures follow from the
per-wake-up ones, and that the veth pair is gone afterwards. No speed
assertion: the numbers belong to the benchmark's table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import afxdp_required

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "bench_wakeup.py")


def _our_links() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n.startswith(("mxa", "mxh"))}


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    afxdp_required()
    before = _our_links()
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", "--calls", "4"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert _our_links() <= before, "the benchmark left its veth pair behind"
    assert "µs/wake-up" in proc.stderr  # the table went to stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.afxdp
def test_both_transports_made_round_trips(summary: dict[str, Any]) -> None:
    assert set(summary["transports"]) == {"afxdp", "tcp"}
    (sample,) = summary["samples"]
    for t in ("afxdp", "tcp"):
        r = sample[t]
        assert r["rounds"] > 0 and r["rounds_per_s"] > 0
        assert r["echo_us_per_wakeup"] > 0
        assert r["echo_us_per_wakeup"] == pytest.approx(
            r["echo_user_us_per_wakeup"] + r["echo_sys_us_per_wakeup"])


@pytest.mark.afxdp
def test_per_call_figures_follow_from_the_wakeup(summary: dict[str, Any]) -> None:
    (sample,) = summary["samples"]
    assert summary["calls_per_wakeup"] == 4
    assert sample["floor_us"] > 0
    c_path = os.environ.get("MUX_RPC_PURE_PYTHON") != "1"  # floor[c] measured
    assert (sample["floor_c_us"] is not None) == c_path
    for t in ("afxdp", "tcp"):
        r = sample[t]
        assert r["us_per_call"] == pytest.approx(r["echo_us_per_wakeup"] / 4)
        assert r["vs_floor"] == pytest.approx(r["us_per_call"] / sample["floor_us"])
        if c_path:
            assert sample["floor_c_us"] > 0
            assert r["with_floor_c_vs_floor"] == pytest.approx(
                (r["us_per_call"] + sample["floor_c_us"]) / sample["floor_us"])
        else:
            assert r["with_floor_c_vs_floor"] is None
        # one sample: the medians are that sample
        assert summary["transports"][t]["vs_floor"] == pytest.approx(r["vs_floor"])


def test_help_explains_and_bad_arguments_are_refused() -> None:
    out = subprocess.run([sys.executable, BENCH, "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "wake-up" in out and "--calls" in out
    bad = subprocess.run([sys.executable, BENCH, "--transports", "carrier-pigeon"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown transport" in bad.stderr
