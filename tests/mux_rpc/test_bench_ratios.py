"""mux-rpc bench's ratios: X/direct pairs samples taken side by side."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux_rpc.bench import _ratios


def _cell(mode: str, cpus: list[float]) -> dict[str, Any]:
    samples = [{"host_cpu_s_per_100k": c} for c in cpus]
    cpus_sorted = sorted(cpus)
    return {"mode": mode, "connections": 64, "samples": samples,
            "host_cpu_s_per_100k": cpus_sorted[len(cpus) // 2],
            "vs_floor": 1.0, "vs_floor_c": None, "kernel_vs_floor": 0.25}


def test_afxdp_over_direct_is_the_median_of_paired_ratios() -> None:
    # the machine slowed down during the third pair: both modes' samples show it
    cells = [_cell("afxdp", [1.0, 3.0, 10.0]), _cell("direct", [2.0, 3.0, 20.0])]
    (row,) = _ratios(cells, [64])
    assert row["afxdp_vs_direct"] == pytest.approx(0.5)  # pairs: 0.5, 1.0, 0.5
    # the ratio of the medians would have read 1.0


def test_unpaired_samples_fall_back_to_the_medians() -> None:
    cells = [_cell("afxdp", [1.0, 3.0]), _cell("direct", [2.0, 3.0, 20.0])]
    (row,) = _ratios(cells, [64])
    assert row["afxdp_vs_direct"] == pytest.approx(3.0 / 3.0)


@given(st.lists(st.tuples(st.floats(0.01, 10), st.floats(0.01, 10)), min_size=1, max_size=9),
       st.floats(0.1, 10))
def test_a_drift_that_hits_both_modes_of_a_pair_alike_cancels(
        pairs: list[tuple[float, float]], drift: float) -> None:
    base = _ratios([_cell("afxdp", [a for a, _ in pairs]),
                    _cell("direct", [d for _, d in pairs])], [64])[0]["afxdp_vs_direct"]
    slowed = [(a * drift, d * drift) if i % 2 else (a, d) for i, (a, d) in enumerate(pairs)]
    moved = _ratios([_cell("afxdp", [a for a, _ in slowed]),
                     _cell("direct", [d for _, d in slowed])], [64])[0]["afxdp_vs_direct"]
    assert moved == pytest.approx(base)


def test_the_kernel_share_of_afxdp_is_reported_beside_its_ratio_to_the_floor() -> None:
    afxdp = _cell("afxdp", [1.0])
    afxdp["kernel_vs_floor"] = 0.7
    (row,) = _ratios([afxdp, _cell("direct", [2.0])], [64])
    assert row["afxdp_kernel_vs_floor"] == 0.7
    assert "afpacket_kernel_vs_floor" not in row and "direct_kernel_vs_floor" not in row
