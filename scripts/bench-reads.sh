#!/usr/bin/env bash
# The read-heavy benchmark: a sale on PostgreSQL while many clients poll its availability, run
# three times on fresh databases (cache off, in-process cache, Redis cache) with the same load.
# Reports the service's read-model loads per availability read (from /metrics) and every
# transaction the database counted for the whole run (pg_stat_database, read after the service
# exited, so every backend has flushed its counts).
# Usage: scripts/bench-reads.sh [pollers] [seats] [buyers] [rounds] [concurrency]
# PROFILE=debug reuses a dev build instead of building --release.
set -euo pipefail
cd "$(dirname "$0")/.."

POLLERS=${1:-64}
SEATS=${2:-2000}
BUYERS=${3:-100}
ROUNDS=${4:-10}
CONCURRENCY=${5:-8}
PROFILE=${PROFILE:-release}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
PORT=18091

./scripts/services.sh
if [ "$PROFILE" = release ]; then
    cargo build --release --bin ticketing --bin loadgen --locked
else
    cargo build --bin ticketing --bin loadgen --locked
fi
BIN=./target/$PROFILE

fresh_db() {
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>&1 | grep -v NOTICE || true
    echo "${ADMIN_URL%/*}/$1?${ADMIN_URL#*\?}"
}

# run NAME DBNAME [env assignments...]: the service on a fresh database, one polled sale.
run() {
    local name=$1 dbname=$2
    shift 2
    local db
    db=$(fresh_db "$dbname")
    # The load generator is one address signing up every buyer: lift the edge rate limits.
    env "$@" DATABASE_URL="$db" BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn \
        RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
        RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
        "$BIN/ticketing" &
    local service=$!
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
        sleep 0.1
    done
    echo "== $name"
    "$BIN/loadgen" --base-url "http://127.0.0.1:$PORT" --pollers "$POLLERS" \
        --seats "$SEATS" --buyers "$BUYERS" --rounds "$ROUNDS" --concurrency "$CONCURRENCY" \
        2>&1 >/dev/null | grep '^read-heavy' || true
    kill "$service"
    wait "$service" 2>/dev/null || true
    psql "$ADMIN_URL" -tAc "SELECT 'postgres: ' || (xact_commit + xact_rollback) || ' transactions in the run' \
        FROM pg_stat_database WHERE datname = '$dbname'"
}

run "cache off (CACHE_ENABLED=false)" bench_reads_off CACHE_ENABLED=false
run "in-process cache" bench_reads_memory CACHE_ENABLED=true
run "Redis cache" bench_reads_redis CACHE_ENABLED=true REDIS_URL=redis://127.0.0.1:6379/0 \
    REDIS_KEY_PREFIX="bench:$$:"
