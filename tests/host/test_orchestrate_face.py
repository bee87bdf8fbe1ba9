"""The offload face is reachable from the package root."""

from __future__ import annotations

import mux_rpc
from mux_rpc import offload


def test_package_root_exports_the_offload_face() -> None:
    names = ["offload", "run_offloaded", "Host", "start_server", "open_connection",
             "OffloadRuntime", "OffloadOptions"]
    assert set(names) <= set(mux_rpc.__all__)
    for name in names[1:]:
        assert getattr(mux_rpc, name) is getattr(offload, name)
    assert mux_rpc.offload is offload
    assert all(hasattr(mux_rpc, n) for n in mux_rpc.__all__)
    assert all(hasattr(offload, n) for n in offload.__all__)
