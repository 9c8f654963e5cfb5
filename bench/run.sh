#!/usr/bin/env bash
# Run the yardstick with roomd beside Node.js socket.io and python-socketio,
# interleaved, in one invocation (see docs/performance.md).
#   BENCH_DIR    the yardstick (default: ../shared/bench next to this checkout)
#   SCENARIOS    default saturate,fanout,rooms,idle;  REPS default 3
#   OUT          where results.json and summary.md go
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
if [ ! -f "$bench/bench.py" ]; then
  echo "bench: no yardstick at $bench (set BENCH_DIR to the folder holding bench.py)" >&2
  exit 1
fi
bash "$bench/setup.sh" >/dev/null
home=${SIO_BENCH_HOME:-$HOME/.cache/sio-bench}
out=${OUT:-/tmp/roomd-bench-$(date +%Y%m%d-%H%M%S)}
admin=$(mktemp -d /tmp/roomd-bench-admin.XXXXXX)
trap 'rm -rf "$admin"' EXIT
cd "$bench"
python3 bench.py \
  --server roomd="$root/.venv/bin/roomd serve --app bench.app:io --app-dir $root --port {port} --socket $admin/{port}.sock --log-level warning" \
  --server node='node servers/node_socketio.js {port}' \
  --server py="$home/.venv/bin/python servers/py_socketio.py {port}" \
  --scenarios "${SCENARIOS:-saturate,fanout,rooms,idle}" --reps "${REPS:-3}" \
  --subs 1000 --duration 10 --fanout-rate 20 \
  --rooms-clients 5000 --rooms-rate 1000 --publishers 10 --idle-clients 5000,10000 \
  --out "$out"
echo "results: $out/summary.md"
