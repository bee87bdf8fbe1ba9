"""Our top-level names exist on the package index as unrelated projects:
check that every one of them imports from this repository."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["mux_rpc", "framing", "agent", "xport"])
def test_package_imports_from_this_repo(name: str) -> None:
    mod = importlib.import_module(name)
    assert mod.__file__ is not None
    assert Path(mod.__file__).resolve().parent == REPO / name
    assert (REPO / name / "py.typed").exists()
