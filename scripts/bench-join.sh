#!/usr/bin/env bash
# An instance joining a long sale mid-run: instance A sells one event alone until the sale has
# many events (FILL seconds of reservations, two events each: 7 000-8 000 events a second
# on the bench machine), then serves a lean client (wrk, 32 connections) for 14 s; 3 s in,
# instance B starts on the same database and places one hold, so B's writer loads the whole
# sale while A keeps selling.
# Prints A's requests and latency over the 14 s (wrk's time-out raised to 30 s, so a stalled
# request is counted, not dropped), how long B took to pass `/ready` (since session 34 it
# loads the sales on sale first), B's first answer, and each instance's sale loads
# (`ticketing_sale_hydration_duration_seconds`) and version conflicts.
#
# BENCH_BIN=PATH measures another build (an A/B comparison in one session). HOLD_AFTER=SECONDS
# has B wait that long after it is ready before its hold, while A sells (what B's writer then
# reads to catch up).
#
# Usage: scripts/bench-join.sh [fill seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

FILL=${1:-30}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
BIN=${BENCH_BIN:-./target/release/ticketing}
PORT_A=18111
PORT_B=18112
WORK=$(mktemp -d)

if ! command -v wrk >/dev/null; then
    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
./scripts/services.sh
[ -n "${BENCH_BIN:-}" ] || cargo build --release --bins --locked

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS bench_join" -c "CREATE DATABASE bench_join" 2>&1 | grep -v NOTICE || true
DB="${ADMIN_URL%/*}/bench_join?${ADMIN_URL#*\?}"

start() { # start PORT: an instance on the bench database, its pid in PIDS
    env DATABASE_URL="$DB" BIND_ADDR="127.0.0.1:$1" RUST_LOG=warn \
        RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
        RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
        "$BIN" > "$WORK/service-$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return
        sleep 0.1
    done
    echo "bench-join: the instance on port $1 did not become ready" >&2
    exit 1
}
BASE="http://127.0.0.1:$PORT_A"
# shellcheck source=scripts/lean/sale.sh
. scripts/lean/sale.sh
loads() { # loads PORT: the instance's sale loads and version conflicts so far
    curl -sf "http://127.0.0.1:$1/metrics" | awk '
        /^ticketing_sale_hydration_duration_seconds_sum/ {s = $2}
        /^ticketing_sale_hydration_duration_seconds_count/ {n = $2}
        /^ticketing_store_conflicts_total/ {c = $2}
        END {printf "%d sale loads, %.2f s in all; %d version conflicts\n", n, s, c}'
}

start "$PORT_A"
organizer=$(account "org@bench.test" organizer)
event=$(open_sale "Join bench" "$organizer")
for i in $(seq 1 32); do account "buyer-$i@bench.test" customer; done > "$WORK/tokens"

reserve() { # reserve PORT ARGS...: wrk reserving one seat a request on PORT
    local port=$1
    shift
    TOKENS_FILE=$WORK/tokens EVENT_ID=$event wrk -t2 -c32 --timeout 30s --latency "$@" \
        -s scripts/lean/reserve.lua "http://127.0.0.1:$port"
}
echo "== filling the sale: $FILL s of reservations on A"
reserve "$PORT_A" -d"${FILL}s" | grep -E 'requests in'
events=$(psql "$DB" -tAc "SELECT count(*) FROM events WHERE sale_id = '$event'")
echo "the sale has $events events"

echo "== A sells for 14 s; B starts 3 s in and places one hold"
(
    sleep 3
    began=$(date +%s.%N)
    start "$PORT_B"
    awk -v began="$began" -v now="$(date +%s.%N)" \
        'BEGIN {printf "B ready: %.2f s after it started\n", now - began}'
    echo "${PIDS[-1]}" > "$WORK/b.pid"
    sleep "${HOLD_AFTER:-0}"
    token=$(head -n 1 "$WORK/tokens")
    curl -s -o /dev/null -w "B's first hold: %{http_code} in %{time_total} s\n" \
        -X POST "http://127.0.0.1:$PORT_B/api/reservations" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' -H "Idempotency-Key: join-$RANDOM$RANDOM" \
        -d "{\"event_id\":\"$event\",\"section\":\"Floor\",\"quantity\":1}"
    echo "B: $(loads "$PORT_B")"
) &
joiner=$!
reserve "$PORT_A" -d14s | grep -E 'Latency|50%|99%|requests in|Socket|Non-2xx'
wait "$joiner" || true
echo "A: $(loads "$PORT_A")"
kill "$(cat "$WORK/b.pid")" 2>/dev/null || true
