#!/usr/bin/env bash
# The cluster bench (docs/performance.md, "Cluster"): a two-node roomd cluster against a
# two-node Node.js socket.io cluster (@socket.io/redis-adapter, classic protocol) on one
# redis-server, interleaved, fan-out to one room at rising rates, then a fan-in step (node 2
# receives broadcasts to a room it has no socket in); then Redis alone
# (redis-benchmark PUBLISH to pattern subscribers). Needs `make install` (the venv,
# tests/node's npm packages, redis-server).
#   SUBS (500)  RATES (10,20,30,50,75,100,150,200,300,400,500)  DURATION (5 s per step)  REPS (2)
#   OUT (default /tmp/roomd-cluster-bench-<time>): results.json, summary.md, logs/
#   EXTRA: more bench.cluster_bench options (see --help)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/roomd-cluster-bench-$(date +%Y%m%d-%H%M%S)}
cd "$root"
# shellcheck disable=SC2086
exec "$root/.venv/bin/python" -m bench.cluster_bench \
  --subs "${SUBS:-500}" --rates "${RATES:-10,20,30,50,75,100,150,200,300,400,500}" \
  --duration "${DURATION:-5}" --reps "${REPS:-2}" --out "$out" ${EXTRA:-}
