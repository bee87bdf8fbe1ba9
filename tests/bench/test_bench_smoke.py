"""Smoke test of the transport benchmark: every cell runs and reports, no speed assertion.

Runs ``bench/bench_xport.py --quick --json`` (about 20 s) over a fresh veth
pair and checks the JSON summary's shape: each backend (C floor, AF_XDP,
AF_PACKET, shared memory) and each workload produced frames at the receiver,
and the Python/C and AF_XDP/AF_PACKET ratios were computed. Speed targets
belong to the benchmark's own table, never to a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import afxdp_required

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "bench_xport.py")

EXPECTED = {
    ("c", "64"), ("c", "1500"),
    ("afxdp", "64"), ("afxdp", "1500"), ("afxdp", "msg"),
    ("afpacket", "64"), ("afpacket", "1500"), ("afpacket", "msg"),
    ("shm", "64"), ("shm", "1500"), ("shm", "msg"),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], str]:
    afxdp_required()
    png = str(tmp_path_factory.mktemp("bench") / "xport.png")
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--json", "--plot", png],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    summary: dict[str, object] = json.loads(proc.stdout)
    return summary, png


@pytest.fixture(scope="module")
def quick_summary(quick_run: tuple[dict[str, object], str]) -> dict[str, object]:
    return quick_run[0]


@pytest.mark.afxdp
def test_every_cell_moved_frames(quick_summary: dict[str, object]) -> None:
    cells = quick_summary["cells"]
    assert isinstance(cells, list)
    got = {(c["backend"], c["workload"]): c for c in cells}
    assert set(got) == EXPECTED
    for key, c in got.items():
        assert c["error"] is None, (key, c["error"])
        assert c["repeats"] == 1, key
        assert c["frames"] > 0, key
        assert c["frames_per_s"] > 0, key
        assert c["mb_per_s"] > 0, key
        if c["kind"] == "messages":
            assert c["messages"] > c["frames"], key  # many messages to a frame
            assert c["messages_per_s"] > 0, key


@pytest.mark.afxdp
def test_ratios_present(quick_summary: dict[str, object]) -> None:
    ratios = quick_summary["ratios"]
    assert isinstance(ratios, dict)
    for name in ("python_afxdp_over_c_64", "afxdp_over_afpacket_64",
                 "afxdp_over_afpacket_1500", "afxdp_over_afpacket_msg"):
        assert isinstance(ratios[name], float) and ratios[name] > 0, name
    targets = quick_summary["targets"]
    assert isinstance(targets, dict)
    assert set(targets) == {"python_afxdp_over_c_64_ge_0.5", "afxdp_beats_afpacket"}


@pytest.mark.afxdp
def test_machine_notes_recorded(quick_summary: dict[str, object]) -> None:
    machine = quick_summary["machine"]
    assert isinstance(machine, dict)
    assert machine["kernel"] and machine["date"] and machine["cpus"]


@pytest.mark.afxdp
def test_plot_written(quick_run: tuple[dict[str, object], str]) -> None:
    with open(quick_run[1], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
