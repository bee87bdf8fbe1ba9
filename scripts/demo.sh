#!/usr/bin/env bash
# Set everything up, then run the main job: the end-to-end demo over AF_XDP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mux-rpc demo "$@"
