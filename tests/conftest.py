"""Shared test fixtures.

AF_XDP tests use the ``require_afxdp`` fixture (or ``afxdp_required()``): when
``MUX_RPC_REQUIRE_AFXDP=1`` (CI, and ``scripts/test.sh`` run as root) a missing
capability is a failure, otherwise a skip with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

REQUIRE_AFXDP = os.environ.get("MUX_RPC_REQUIRE_AFXDP", "0") == "1"


def afxdp_unavailable_reason() -> str | None:
    """Why AF_XDP cannot be used here, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        import xport._xsk_cffi  # noqa: F401
    except ImportError as exc:
        return f"cffi extension xport._xsk_cffi not built ({exc}); run scripts/setup.sh"
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "bpf", "mux_xdp.o")):
        return "BPF object bpf/mux_xdp.o not built; run scripts/setup.sh"
    return None


def afxdp_required() -> None:
    """Fail (CI) or skip (elsewhere) when AF_XDP cannot be used."""
    reason = afxdp_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_AFXDP:
        pytest.fail(f"AF_XDP required (MUX_RPC_REQUIRE_AFXDP=1) but unavailable: {reason}")
    pytest.skip(f"AF_XDP unavailable: {reason}")


@pytest.fixture
def require_afxdp() -> None:
    afxdp_required()


@pytest.fixture
def veth_pair() -> Iterator[object]:
    """A fresh one-queue veth pair in the root namespace, removed afterwards."""
    afxdp_required()
    from xport._topology import VethPair

    with VethPair(queues=1) as pair:
        yield pair
