#!/usr/bin/env bash
# Instructions the service executes per request, counted by valgrind's callgrind: a figure
# that, unlike requests per second, does not move with whatever else this noisy 2-core machine
# is doing, so two builds can be compared on one run each. Starts BIN (in memory) under
# callgrind, warms it up, zeroes the counters, sends N requests of PATH (curl, 4 at a time,
# a new connection each) and prints the instructions per request (the background tasks' share
# over those seconds included, the same for both builds).
#
# Usage: scripts/bench-instructions.sh [BIN] [N] [PATH]
#   e.g. scripts/bench-instructions.sh ./target/release/ticketing 500 /health
set -euo pipefail

BIN=${1:-./target/release/ticketing}
N=${2:-500}
REQUEST_PATH=${3:-/health}
PORT=${BENCH_PORT:-18096}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn RATE_LIMIT_READS_PER_SECOND=10000000 \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$BIN" > "$OUT/service.log" 2>&1 &
VALGRIND_PID=$!
for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 "$VALGRIND_PID" 2>/dev/null || { cat "$OUT/service.log" >&2; exit 1; }
    sleep 0.5
done
for _ in $(seq 1 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT$REQUEST_PATH"; done
callgrind_control -z "$VALGRIND_PID" >/dev/null
seq 1 "$N" | xargs -P4 -I{} curl -sf -o /dev/null "http://127.0.0.1:$PORT$REQUEST_PATH"
callgrind_control -d "$VALGRIND_PID" >/dev/null
kill "$VALGRIND_PID"
wait "$VALGRIND_PID" 2>/dev/null || true
total=$(callgrind_annotate "$OUT"/cg.*.1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per GET $REQUEST_PATH: $((total / N)) ($N requests, $total in all)"
