#!/usr/bin/env bash
# Scale-out benchmark: the same durable hot sale (one event, reserve-only) against one instance,
# then against three instances on one PostgreSQL database, the load generator's requests taking
# the instances in turn as a round-robin load balancer would. Both on the Kafka-protocol broker
# (one relay publishes, the insights consumers share the partitions), one run, so the two rates
# are comparable. Usage:
#   scripts/bench-instances.sh [seats] [buyers] [rounds] [concurrency]
# Environment: DB_MAX_CONNECTIONS per instance (default 6: three instances then open at most
# 3 x 35 connections; `scripts/services.sh` raises PostgreSQL's max_connections to 300),
# PROFILE (release), PAIRS (1): how many times to run the pair, alternating, to see the
# machine's noise.
set -euo pipefail
cd "$(dirname "$0")/.."

SEATS=${1:-10000}
BUYERS=${2:-500}
ROUNDS=${3:-40}
CONCURRENCY=${4:-64}
PROFILE=${PROFILE:-release}
POOL=${DB_MAX_CONNECTIONS:-6}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
BROKERS=${TEST_KAFKA_BROKERS:-127.0.0.1:9092}
FIRST_PORT=18191

./scripts/services.sh
if [[ $PROFILE == release ]]; then
    cargo build --release --bins --locked
else
    cargo build --bins --locked
fi
BIN=./target/$PROFILE

fresh_db() {
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>&1 | grep -v NOTICE || true
    echo "${ADMIN_URL%/*}/$1?${ADMIN_URL#*\?}"
}

# The instances this script started, stopped by their process ids only.
PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_all EXIT

# run NAME INSTANCES: INSTANCES services on a fresh database and topic prefix, one sale.
run() {
    local name=$1 count=$2
    local db prefix urls=()
    # Every run starts on a settled server: the other run's database dropped and its writes
    # checkpointed, or its vacuum and dirty pages slow this run down (by ~25% in session 23).
    for other in 1 3; do
        psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS bench_instances_$other" 2>&1 | grep -v NOTICE || true
    done
    psql "$ADMIN_URL" -qc "CHECKPOINT" ||
        echo "bench-instances: CHECKPOINT refused (needs superuser or pg_checkpoint): runs may be uneven" >&2
    db=$(fresh_db "bench_instances_$count")
    prefix="bench$(date +%s%N)."
    for i in $(seq 0 $((count - 1))); do
        local port=$((FIRST_PORT + i))
        # The load generator is one address signing up every buyer: lift the edge rate limits.
        DATABASE_URL=$db KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=$prefix \
            BIND_ADDR=127.0.0.1:$port RUST_LOG=warn DB_MAX_CONNECTIONS=$POOL \
            RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
            RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
            "$BIN/ticketing" &
        PIDS+=($!)
        urls+=("http://127.0.0.1:$port")
        # One at a time: each migrates and catches up before the next starts.
        for _ in $(seq 1 300); do
            curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
            sleep 0.1
        done
    done
    echo "== $name"
    local joined
    joined=$(IFS=,; echo "${urls[*]}")
    "$BIN/loadgen" --base-url "$joined" --no-pay \
        --seats "$SEATS" --buyers "$BUYERS" --rounds "$ROUNDS" --concurrency "$CONCURRENCY" 2>/dev/null || true
    stop_all
}

for pair in $(seq 1 "${PAIRS:-1}"); do
    run "pair $pair, 1 instance: reserve (hold seats + reservation)" 1
    run "pair $pair, 3 instances, requests round robin: reserve (hold seats + reservation)" 3
done
