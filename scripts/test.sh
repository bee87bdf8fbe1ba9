#!/usr/bin/env bash
# Set everything up, then run the whole test suite.
# As root, AF_XDP tests are required: a test that needs AF_XDP and cannot get
# it fails instead of skipping (set MUX_RPC_REQUIRE_AFXDP=0 to allow skips).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) -eq 0 ]]; then
    export MUX_RPC_REQUIRE_AFXDP=${MUX_RPC_REQUIRE_AFXDP:-1}
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
