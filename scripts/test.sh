#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the whole test suite.
# As root, AF_XDP tests are required: a test that needs AF_XDP and cannot get
# it fails instead of skipping (set MUX_RPC_REQUIRE_AFXDP=0 to allow skips).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/framing -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) -eq 0 ]]; then
    export MUX_RPC_REQUIRE_AFXDP=${MUX_RPC_REQUIRE_AFXDP:-1}
fi
echo "[test] ruff" >&2
.venv/bin/ruff check --quiet .
echo "[test] mypy --strict (mux_rpc framing agent xport)" >&2
.venv/bin/mypy --strict --no-error-summary mux_rpc framing agent xport
echo "[test] pytest" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
