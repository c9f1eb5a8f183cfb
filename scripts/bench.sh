#!/usr/bin/env bash
# The durable flash-sale benchmark: the service on PostgreSQL against the naive baseline (one
# SELECT ... FOR UPDATE transaction per purchase, same PostgreSQL, same concurrency), in one
# run so the two figures are comparable. Usage: scripts/bench.sh [seats] [buyers] [rounds] [concurrency]
# With BENCH_WEBHOOKS=N it runs only the reserve sale twice: without webhooks, then with N webhook
# endpoints of the organizer subscribed to every event type (a receiver inside loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."

SEATS=${1:-10000}
BUYERS=${2:-500}
ROUNDS=${3:-40}
CONCURRENCY=${4:-64}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
PORT=${BENCH_PORT:-18090}

./scripts/services.sh
cargo build --release --bins --locked

fresh_db() {
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>&1 | grep -v NOTICE || true
    echo "${ADMIN_URL%/*}/$1?${ADMIN_URL#*\?}"
}

# Only the service this script started is stopped, never another one by name.
SERVICE_PID=
trap 'if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null || true; fi' EXIT

# run_service NAME DB [loadgen flags...]: the service on a fresh database, one sale.
run_service() {
    local name=$1 db=$2
    shift 2
    # The load generator is one address signing up every buyer: lift the edge rate limits.
    DATABASE_URL=$db BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn \
        RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
        RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
        ./target/release/ticketing &
    local service=$!
    SERVICE_PID=$service
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
        sleep 0.1
    done
    echo "== $name"
    ./target/release/loadgen --base-url "http://127.0.0.1:$PORT" \
        --seats "$SEATS" --buyers "$BUYERS" --rounds "$ROUNDS" --concurrency "$CONCURRENCY" "$@" 2>/dev/null || true
    # What queued for the sale's writer at most (the bound is SALE_MAILBOX_CAPACITY).
    curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^ticketing_sale_mailbox_(peak_depth|refusals_total) ' || true
    kill $service
    wait $service 2>/dev/null || true
    SERVICE_PID=
}

if [ -n "${BENCH_WEBHOOKS:-}" ]; then
    run_service "service on PostgreSQL: reserve, no webhooks" "$(fresh_db bench_webhooks_off)" --no-pay
    run_service "service on PostgreSQL: reserve, $BENCH_WEBHOOKS webhook endpoints subscribed" \
        "$(fresh_db bench_webhooks_on)" --no-pay --webhooks "$BENCH_WEBHOOKS"
    exit 0
fi

SERVICE_DB=$(fresh_db bench_service)
NAIVE_DB=$(fresh_db bench_naive)

run_service "service on PostgreSQL: reserve (hold seats + reservation), like the naive transaction" \
    "$SERVICE_DB" --no-pay
run_service "service on PostgreSQL: full purchase (reserve, then pay)" "$(fresh_db bench_service_pay)"

echo "== naive baseline (SELECT ... FOR UPDATE per purchase)"
./target/release/loadgen --mode naive --database-url "$NAIVE_DB" \
    --seats "$SEATS" --buyers "$BUYERS" --rounds "$ROUNDS" --concurrency "$CONCURRENCY" 2>/dev/null
