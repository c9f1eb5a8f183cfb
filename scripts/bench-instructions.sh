#!/usr/bin/env bash
# Instructions the service executes per request, counted by valgrind's callgrind: a figure
# that, unlike requests per second, does not move with whatever else this noisy 2-core machine
# is doing, so two builds can be compared on one run each. Starts BIN (in memory) under
# callgrind, warms it up, zeroes the counters, sends N requests of PATH (curl, 4 at a time,
# a new connection each) and prints the instructions per request (the background tasks' share
# over those seconds included, the same for both builds).
#
# PATH `reserve` measures holds instead: a sale is opened (one customer, scripts/lean/sale.sh)
# and each request is a POST /api/reservations of one seat with a fresh Idempotency-Key, so
# the count includes everything a hold sets off in the background (the read models, the bus
# and its consumers). PATH `purchase`: each "request" is a hold and then its payment. PATH
# `availability`: a GET of that sale's availability, anonymous.
#
# BENCH_CALLGRIND_OUT=FILE keeps the profile (callgrind_annotate FILE: where they go).
# BENCH_RUST_LOG sets the service's RUST_LOG (default warn; the service's own default is info).
#
# Usage: scripts/bench-instructions.sh [BIN] [N] [PATH|reserve|purchase|availability]
#   e.g. scripts/bench-instructions.sh ./target/release/ticketing 500 /health
set -euo pipefail

BIN=${1:-./target/release/ticketing}
N=${2:-500}
REQUEST_PATH=${3:-/health}
PORT=${BENCH_PORT:-18096}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
BIND_ADDR=127.0.0.1:$PORT RUST_LOG="${BENCH_RUST_LOG:-warn}" RATE_LIMIT_READS_PER_SECOND=10000000 \
    RATE_LIMIT_WRITES_PER_SECOND=10000000 RATE_LIMIT_AUTH_PER_MINUTE=1000000 \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$BIN" > "$OUT/service.log" 2>&1 &
VALGRIND_PID=$!
for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 "$VALGRIND_PID" 2>/dev/null || { cat "$OUT/service.log" >&2; exit 1; }
    sleep 0.5
done
case $REQUEST_PATH in reserve | purchase | availability)
    BASE=http://127.0.0.1:$PORT
    # shellcheck source=scripts/lean/sale.sh
    . "$(dirname "$0")/lean/sale.sh"
    event=$(open_sale "Instructions" "$(account "org-$$@bench.test" organizer)")
    token=$(account "buyer-$$@bench.test" customer)
    ;;
esac
if [ "$REQUEST_PATH" = availability ]; then
    request() { curl -sf -o /dev/null "$BASE/api/events/$event/availability"; }
elif [ "$REQUEST_PATH" = reserve ] || [ "$REQUEST_PATH" = purchase ]; then
    request() {
        local held
        held=$(curl -sf -X POST "$BASE/api/reservations" -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' -H "Idempotency-Key: $1" \
            -d "{\"event_id\":\"$event\",\"section\":\"Floor\",\"quantity\":1}")
        [ "$REQUEST_PATH" = reserve ] && return
        curl -sf -o /dev/null -X POST "$BASE/api/payments" -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' -H "Idempotency-Key: pay-$1" \
            -d "{\"reservation_id\":\"$(jq -r .reservation_id <<< "$held")\",\"payment_method\":{\"type\":\"card\",\"token\":\"tok_visa\"}}"
    }
else
    request() { curl -sf -o /dev/null "http://127.0.0.1:$PORT$REQUEST_PATH"; }
fi
export -f request
export PORT REQUEST_PATH BASE event token
for i in $(seq 1 50); do request "warm-$i"; done
callgrind_control -z "$VALGRIND_PID" >/dev/null
seq 1 "$N" | xargs -P4 -I{} bash -c 'request "key-{}"'
callgrind_control -d "$VALGRIND_PID" >/dev/null
kill "$VALGRIND_PID"
wait "$VALGRIND_PID" 2>/dev/null || true
if [ -n "${BENCH_CALLGRIND_OUT:-}" ]; then cp "$OUT"/cg.*.1 "$BENCH_CALLGRIND_OUT"; fi
total=$(callgrind_annotate "$OUT"/cg.*.1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per $REQUEST_PATH: $((total / N)) ($N requests, $total in all)"
