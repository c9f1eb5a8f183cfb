#!/usr/bin/env bash
# Overload: ten times more purchase attempts than seats through 512 connections, on
# PostgreSQL. Reports the sale (5xx count, p99 of the 409s) and the service's resident memory
# before the sale, its peak during the sale (sampled every 0.5 s) and after it, and what the
# service logged at WARN and above, grouped by message (the causes of any 5xx).
# Usage: scripts/bench-overload.sh [seats] [buyers] [rounds] [concurrency]
# BENCH_STALL_PROJECTOR=N stalls the projector for N seconds from 1 s into the sale (it locks
# its checkpoint row first in every batch; reads are not blocked), as a projector starved on a
# saturated machine lags, reproducibly.
# BENCH_BIN=path runs another build of the service without building this checkout (an A/B in
# one session); BENCH_LOADGEN=path another load generator (default this checkout's).
set -euo pipefail
cd "$(dirname "$0")/.."

SEATS=${1:-2000}
BUYERS=${2:-2000}
ROUNDS=${3:-10}
CONCURRENCY=${4:-512}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
PORT=${BENCH_PORT:-18091}
DB=bench_overload
BIN=${BENCH_BIN:-./target/release/ticketing}
LOADGEN=${BENCH_LOADGEN:-./target/release/loadgen}
LOG=target/bench-overload-service.log

./scripts/services.sh
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --bins --locked; fi
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>&1 | grep -v NOTICE || true
URL="${ADMIN_URL%/*}/$DB?${ADMIN_URL#*\?}"

# Only the processes this script started are stopped, never another one by name.
SERVICE_PID=
SAMPLER_PID=
STALL_PID=
trap 'for p in $STALL_PID $SAMPLER_PID $SERVICE_PID; do kill "$p" 2>/dev/null || true; done' EXIT

# Default pools (10 connections each). The load generator signs up every buyer from one
# address: lift the edge rate limits.
DATABASE_URL=$URL BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn NO_COLOR=1 \
    RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
    RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
    "$BIN" 2>"$LOG" >&2 &
SERVICE_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVICE_PID/status"; }
echo "rss before: $(rss) kB"
PEAK_FILE=$(mktemp)
(
    peak=0
    while kill -0 "$SERVICE_PID" 2>/dev/null; do
        now=$(rss || echo 0)
        if [ "${now:-0}" -gt "$peak" ]; then peak=$now; echo "$peak" >"$PEAK_FILE"; fi
        sleep 0.5
    done
) &
SAMPLER_PID=$!
LOADGEN_LOG=$(mktemp)
if [ -n "${BENCH_STALL_PROJECTOR:-}" ]; then
    (
        until grep -q '^measured phase:' "$LOADGEN_LOG"; do sleep 0.1; done
        sleep 1
        psql "$URL" -qc "BEGIN; SELECT position FROM projection_checkpoints
            WHERE name = 'read-models' FOR UPDATE; SELECT pg_sleep($BENCH_STALL_PROJECTOR); COMMIT" >/dev/null
    ) &
    STALL_PID=$!
fi
$LOADGEN --base-url "http://127.0.0.1:$PORT" --seats "$SEATS" --buyers "$BUYERS" \
    --rounds "$ROUNDS" --concurrency "$CONCURRENCY" --setup-concurrency 32 2>"$LOADGEN_LOG" ||
    { echo "the load generator exited with an error (a violated invariant, or its last lines):"; tail -3 "$LOADGEN_LOG"; }
echo "rss after: $(rss) kB; peak while running: $(cat "$PEAK_FILE") kB"
curl -s "http://127.0.0.1:$PORT/metrics" |
    grep -E '^ticketing_(sale_mailbox_(peak_depth|refusals_total)|circuit_breaker_state|retry_budget_exhausted_total)' || true
echo "service warnings by message (full log: $LOG):"
grep -E ' (WARN|ERROR) ' "$LOG" | sed -E 's/^[^ ]+ +//; s/ [a-z_.]+=.*$//' | sort | uniq -c | sort -rn | head -10 || true
