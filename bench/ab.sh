#!/bin/bash
# Compare two checkouts of mux-rpc end to end on this noisy machine: run
# `mux-rpc bench` alternately from each tree (A B, then B A, ...) and print one
# line per run with the afxdp cells (host CPU s per 100k RPCs, RPC/s, agent CPU,
# and the ratios to the floor and to direct).
#
#   bench/ab.sh ROUNDS TREE_A TREE_B [bench options...]
#   bench/ab.sh 4 /tmp/wt-a /tmp/wt-b --modes afxdp,direct --connections 1,64 --repeat 2
#
# Each tree must be built: `git worktree add /tmp/wt-a REV`, then in it
# `.venv/bin/python scripts/build_accelerators.py` (with this repository's
# .venv) and copies of bpf/mux_xdp.o and xport/_xsk_cffi*.so from a set-up
# checkout. Compare medians of the lines, never single runs.
set -euo pipefail
if [ $# -lt 3 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
rounds=$1; a=$(realpath "$2"); b=$(realpath "$3"); shift 3
py=$(dirname "$(realpath "$0")")/../.venv/bin/python
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$rounds"); do
    if (( i % 2 )); then order="$a $b"; else order="$b $a"; fi
    for tree in $order; do
        (cd "$tree" && PYTHONPATH="$tree" "$py" -m mux_rpc bench "$@" --plot "" --json \
            2>/dev/null >"$out")
        "$py" - "$tree" "$out" <<'PY'
import json
import sys

tree, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
ratios = {r["connections"]: r for r in d["ratios"]}
cells = []
for c in d["cells"]:
    if c["mode"] != "afxdp":
        continue
    r = ratios.get(c["connections"], {})
    cells.append(f"c{c['connections']}: host {c['host_cpu_s_per_100k']:.3f} "
                 f"rps {c['rpc_per_s']:.0f} agent {c['agent_cpu_s_per_100k']:.2f} "
                 f"/floor {r.get('afxdp_vs_floor') or 0:.2f} "
                 f"/direct {r.get('afxdp_vs_direct') or 0:.2f}")
print(tree, " | ".join(cells), flush=True)
PY
    done
done
