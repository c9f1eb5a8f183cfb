#!/usr/bin/env bash
# How far the bus-fed insights fall behind a durable reserve-only flash sale, and how long they
# take to catch up once it ends. The service runs on a fresh PostgreSQL database with the
# in-process bus; while the load generator runs, /metrics is read every 0.5 s for what the
# insights consumer settled (ticketing_consumer_events_total{consumer="insights"}) and its lag
# (ticketing_consumer_lag, measured by the consumer once a second); after the sale it is read
# until the lag is 0 (at most 600 s).
# Usage: scripts/bench-insights.sh [seats] [buyers] [rounds] [concurrency]
# BIN_DIR (default target/release, built here) selects the binaries, to compare two builds.
set -euo pipefail
cd "$(dirname "$0")/.."

SEATS=${1:-5000}
BUYERS=${2:-500}
ROUNDS=${3:-20}
CONCURRENCY=${4:-64}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
PORT=${BENCH_PORT:-18095}
BIN_DIR=${BIN_DIR:-target/release}

./scripts/services.sh >/dev/null
if [ "$BIN_DIR" = target/release ]; then
    cargo build --release --bins --locked
fi

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS bench_insights" -c "CREATE DATABASE bench_insights" 2>&1 | grep -v NOTICE || true
DB="${ADMIN_URL%/*}/bench_insights?${ADMIN_URL#*\?}"

# Only the processes this script started are stopped, never another one by name.
SERVICE_PID=
trap 'if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null || true; fi' EXIT
DATABASE_URL=$DB BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn \
    RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
    RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
    "$BIN_DIR/ticketing" &
SERVICE_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
    sleep 0.1
done

# settled LAG: what the insights consumer settled so far, and its lag ("?" while unknown).
figures() {
    curl -sf "http://127.0.0.1:$PORT/metrics" | awk '
        /^ticketing_consumer_events_total\{.*consumer="insights"/ { settled += $NF }
        /^ticketing_consumer_lag_events\{.*consumer="insights"/ { lag = $NF }
        END { printf "%d %s\n", settled, (lag == "" ? "?" : lag) }'
}

read -r settled_before _ < <(figures)
"$BIN_DIR/loadgen" --base-url "http://127.0.0.1:$PORT" --no-pay \
    --seats "$SEATS" --buyers "$BUYERS" --rounds "$ROUNDS" --concurrency "$CONCURRENCY" \
    >/tmp/bench-insights-loadgen.$$ 2>/dev/null &
LOADGEN=$!
started=$(date +%s.%N)
while kill -0 "$LOADGEN" 2>/dev/null; do
    sleep 0.5
done
wait "$LOADGEN" || true
ended=$(date +%s.%N)
read -r settled_at_end lag_at_end < <(figures)
cat /tmp/bench-insights-loadgen.$$
rm -f /tmp/bench-insights-loadgen.$$

caught_up=
while :; do
    read -r settled lag < <(figures)
    now=$(date +%s.%N)
    if [ "$lag" = 0 ]; then
        caught_up=$(echo "$now - $ended" | bc)
        break
    fi
    if [ "$(echo "$now - $ended > 600" | bc)" = 1 ]; then
        break
    fi
    sleep 0.5
done
echo "== insights (includes the untimed sign-up of $BUYERS buyers before the sale)"
echo "run (sign-up + sale): $(echo "$ended - $started" | bc) s"
echo "settled by the insights consumer during the run: $((settled_at_end - settled_before))"
echo "insights lag when the sale ended: $lag_at_end messages"
echo "settled in all: $((settled - settled_before))"
if [ -n "$caught_up" ]; then
    echo "insights lag back to 0: $caught_up s after the sale ended"
else
    echo "insights lag still $lag after 600 s"
fi
