#!/usr/bin/env bash
# The service measured with a lean client: wrk (C, from Debian's packages) instead of the Rust
# load generator, so the client's CPU does not hide the service's speed on a 2-core machine.
# Runs, against one release binary: reservations (one seat each, a fresh Idempotency-Key per
# request, bearer tokens of BUYERS logged-in customers in turn), full purchases (reserve, then
# pay that hold; `scripts/lean/purchase.lua`), availability reads and /health.
# On PostgreSQL it also runs the naive baseline with pgbench (the same 64 connections, one
# `SELECT ... FOR UPDATE` purchase transaction each) in the same run, and prints PostgreSQL
# statements per reservation from pg_stat_statements, and the busiest statements with the rows and
# WAL they wrote (BENCH_PG_STATEMENTS=1 loads the extension, which restarts PostgreSQL: never on a
# machine whose database others are using).
#
# BENCH_PERF=FILE records a CPU profile of the service (perf) during the reservation run, or
# during the full-purchase run with BENCH_PERF_RUN=purchase.
#
# BENCH_BIN=PATH measures another build of the service (an A/B comparison in one session).
#
# BENCH_RUST_LOG sets the service's RUST_LOG (default warn; the service's own default is info).
#
# Usage: scripts/bench-lean.sh [memory|postgres] [seconds per run] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=${1:-memory}
DURATION=${2:-10}
CONNECTIONS=${3:-64}
BUYERS=${BENCH_BUYERS:-64}
THREADS=${BENCH_WRK_THREADS:-2}
PORT=${BENCH_PORT:-18095}
case ${BENCH_PERF_RUN:-reserve} in
    reserve | purchase) ;;
    *) echo "bench-lean: BENCH_PERF_RUN is reserve or purchase, not $BENCH_PERF_RUN" >&2; exit 2 ;;
esac
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
BASE=http://127.0.0.1:$PORT
WORK=$(mktemp -d)

if ! command -v wrk >/dev/null; then
    echo "bench-lean: installing wrk" >&2
    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release --bins --locked

SERVICE_PID=
cleanup() {
    if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# CPU the service used (user + system, in clock ticks): per request it is a server-side figure
# that other load on the machine skews far less than requests per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVICE_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# The whole machine's busy and total ticks (all cores): whether a run was bound by CPU at all.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
# PostgreSQL's CPU (user + system ticks of the children of the postmaster serving
# TEST_DATABASE_URL's cluster, its backends among them): what the database spends per request
# beside the service. A child that exits during a run (an autovacuum worker) takes its ticks
# along, so this slightly undercounts.
pg_ticks() {
    local postmaster
    postmaster=$(head -n 1 "$(psql "$ADMIN_URL" -tAc 'SHOW data_directory' 2>/dev/null)/postmaster.pid" 2>/dev/null) || { echo 0; return; }
    for pid in $(pgrep -P "$postmaster"); do awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null; done |
        awk '{s += $1} END {print s + 0}'
}
# lean_run NAME WRK_ARGS...: one wrk run, then the service's CPU time per answered request.
lean_run() {
    local name=$1 start end answered
    shift
    echo "== lean client ($BACKEND): $name, $CONNECTIONS connections, ${DURATION} s"
    local machine_start machine_end pg_start=0
    [ "$BACKEND" = postgres ] && pg_start=$(pg_ticks)
    start=$(cpu_ticks)
    machine_start=$(machine_ticks)
    # The client's own CPU (user and system seconds, from bash's `time`): what it takes from the
    # service on these shared cores (the purchase script's Lua runs for every answer).
    { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" > "$WORK/last.out"; } 2> "$WORK/client.time"
    cat "$WORK/last.out"
    end=$(cpu_ticks)
    machine_end=$(machine_ticks)
    answered=$(grep -oE '^ *[0-9]+ requests in' "$WORK/last.out" | grep -oE '[0-9]+')
    echo "service CPU per request: $(( (end - start) * TICK_US / answered )) us"
    if [ "$BACKEND" = postgres ]; then
        echo "PostgreSQL CPU per request: $(( ($(pg_ticks) - pg_start) * TICK_US / answered )) us"
    fi
    tail -n 1 "$WORK/client.time" | awk -v n="$answered" '{printf "client (wrk) CPU per request: %d us\n", ($1 + $2) * 1000000 / n}'
    echo "$machine_start $machine_end" | awk '{printf "machine CPU busy during the run: %d%% (service, PostgreSQL and wrk together)\n", 100 * ($3 - $1) / ($4 - $2)}'
}

db_url() { echo "${ADMIN_URL%/*}/$1?${ADMIN_URL#*\?}"; }

env_for_backend=()
if [ "$BACKEND" = postgres ]; then
    ./scripts/services.sh
    if [ "${BENCH_PG_STATEMENTS:-}" = 1 ] && ! psql "$ADMIN_URL" -tAc "SHOW shared_preload_libraries" | grep -q pg_stat_statements; then
        echo "bench-lean: loading pg_stat_statements (restarts PostgreSQL)" >&2
        psql "$ADMIN_URL" -qc "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main restart
        until psql "$ADMIN_URL" -qtAc "SELECT 1" >/dev/null 2>&1; do sleep 0.2; done
    fi
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS bench_lean" -c "CREATE DATABASE bench_lean" 2>&1 | grep -v NOTICE || true
    env_for_backend=(DATABASE_URL="$(db_url bench_lean)")
elif [ "$BACKEND" != memory ]; then
    echo "usage: $0 [memory|postgres] [seconds] [connections]" >&2
    exit 2
fi

# The one client address signs up every buyer: lift the edge rate limits.
env "${env_for_backend[@]}" BIND_ADDR=127.0.0.1:$PORT RUST_LOG="${BENCH_RUST_LOG:-warn}" \
    RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
    RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
    "${BENCH_BIN:-./target/release/ticketing}" &
SERVICE_PID=$!
for _ in $(seq 1 300); do
    curl -sf "$BASE/ready" >/dev/null && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { echo "bench-lean: the service exited" >&2; exit 1; }
    sleep 0.1
done

# shellcheck source=scripts/lean/sale.sh
. scripts/lean/sale.sh
run=$(date +%s)
organizer=$(account "org-$run@bench.test" organizer)
event=$(open_sale "Lean bench $run" "$organizer")
for i in $(seq 1 "$BUYERS"); do account "buyer-$run-$i@bench.test" customer; done > "$WORK/tokens"

statements_now() {
    psql "$(db_url bench_lean)" -tAc "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench_lean')" 2>/dev/null || echo unknown
}
if [ "$BACKEND" = postgres ]; then
    psql "$(db_url bench_lean)" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null || true
fi
before=$(statements_now)
held_before=$(curl -sf "$BASE/api/events/$event/availability" | jq '[.sections[].held] | add // 0')

# BENCH_PERF=FILE records a CPU profile of the service during one run (BENCH_PERF_RUN).
profile_if() {
    if [ -n "${BENCH_PERF:-}" ] && [ "${BENCH_PERF_RUN:-reserve}" = "$1" ]; then
        perf record -F 499 -g -p "$SERVICE_PID" -o "$BENCH_PERF" -- sleep "$DURATION" 2>/dev/null &
    fi
}
profile_if reserve
TOKENS_FILE=$WORK/tokens EVENT_ID=$event lean_run "POST /api/reservations" -s scripts/lean/reserve.lua "$BASE"
cp "$WORK/last.out" "$WORK/reserve.out"
after=$(statements_now)
answered=$(grep -oE '^ *[0-9]+ requests in' "$WORK/reserve.out" | grep -oE '[0-9]+')
refused=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' "$WORK/reserve.out" | grep -oE '[0-9]+$' || echo 0)
reservations=$((answered - refused))
echo "reservations acknowledged (201, counted by wrk): $reservations; other answers: $refused"
# The view is eventually consistent: wait until it stops moving, then compare (it may count up
# to one request per connection more: wrk drops the answers in flight when its time is up).
held=-1
for _ in $(seq 1 50); do
    now=$(curl -sf "$BASE/api/events/$event/availability" | jq '[.sections[].held] | add // 0')
    [ "$now" = "$held" ] && break
    held=$now
    sleep 0.2
done
echo "service RSS after the reservations: $(awk '/VmRSS/ {print $2 / 1024 " MB"}' "/proc/$SERVICE_PID/status")"
echo "seats held in the availability view: $((held - held_before)) (capacity 1000000, quantity 1 each)"
if [ "$before" = unknown ] || [ "$after" = unknown ]; then
    echo "PostgreSQL statements per reservation: unknown (pg_stat_statements not loaded; BENCH_PG_STATEMENTS=1)"
elif [ "$reservations" -gt 0 ]; then
    echo "PostgreSQL statements per reservation (whole service, consumers included): $(echo "scale=2; ($after - $before) / $reservations" | bc)"
fi

# Full purchases: reserve, then pay that hold as its owner (one buyer per wrk thread, so more
# threads than for the reservations: BENCH_PURCHASE_THREADS, default 8).
THREADS_BEFORE=$THREADS
THREADS=${BENCH_PURCHASE_THREADS:-8}
before=$(statements_now)
curl -sf "$BASE/metrics" > "$WORK/metrics.before"
profile_if purchase
TOKENS_FILE=$WORK/tokens EVENT_ID=$event lean_run "full purchase (POST /api/reservations, then POST /api/payments)" -s scripts/lean/purchase.lua "$BASE"
after=$(statements_now)
THREADS=$THREADS_BEFORE
paid=$(grep -oE 'lean purchases: reserved [0-9]+, paid [0-9]+' "$WORK/last.out" | grep -oE '[0-9]+$')
echo "full purchases/s: $(echo "scale=1; $paid / $DURATION" | bc)"
curl -sf "$BASE/metrics" > "$WORK/metrics.after"
# Where a payment's time goes, server side, over the purchase run: the mean of each histogram's
# new samples (sum and count before and after the run).
mean_ms() { # mean_ms NAME LABELS: the mean of NAME's samples whose labels contain LABELS
    local name=$1 labels=$2 f part
    for f in before after; do
        for part in sum count; do
            grep "^${name}_${part}" "$WORK/metrics.$f" | grep -F -- "$labels" | awk '{s += $2} END {printf "%s ", s + 0}'
        done
    done | awk '{n = $4 - $2; if (n > 0) printf "%.1f ms (%d)", 1000 * ($3 - $1) / n, n; else printf "none"}'
}
echo "a payment, server side (means over the run): $(mean_ms ticketing_http_request_duration_seconds 'route="/api/payments"') in all;" \
    "processor charge $(mean_ms ticketing_gateway_call_duration_seconds 'operation="charge"')," \
    "read-model wait $(mean_ms ticketing_read_your_writes_wait_seconds '');" \
    "a sale's append (holds and payments alike) $(mean_ms ticketing_store_append_duration_seconds '')"
if [ "$BACKEND" = postgres ] && [ "$before" != unknown ] && [ "$after" != unknown ] && [ "$paid" -gt 0 ]; then
    echo "PostgreSQL statements per full purchase (whole service, consumers included): $(echo "scale=2; ($after - $before) / $paid" | bc)"
    # Where PostgreSQL's time went over both write runs (and the set-up): the statements that
    # took most of it, with the rows and the WAL they wrote.
    echo "PostgreSQL's busiest statements (reservation and purchase runs):"
    psql "$(db_url bench_lean)" -F $'\t' -tAc "SELECT calls, round(total_exec_time)::bigint AS ms,
            rows, pg_size_pretty(wal_bytes), left(regexp_replace(query, '\s+', ' ', 'g'), 90)
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench_lean')
        ORDER BY total_exec_time DESC LIMIT 6" 2>/dev/null |
        awk -F '\t' '{printf "  %8d calls %7d ms %9d rows %9s WAL  %s\n", $1, $2, $3, $4, $5}'
fi

lean_run "GET /api/events/{id}/availability" "$BASE/api/events/$event/availability"
lean_run "GET /health" "$BASE/health"

kill "$SERVICE_PID"
wait "$SERVICE_PID" 2>/dev/null || true
SERVICE_PID=

if [ "$BACKEND" = postgres ]; then
    echo "== naive baseline with pgbench: one SELECT ... FOR UPDATE purchase transaction, $CONNECTIONS clients, ${DURATION} s"
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS bench_lean_naive" -c "CREATE DATABASE bench_lean_naive" 2>&1 | grep -v NOTICE || true
    naive=$(db_url bench_lean_naive)
    psql "$naive" -qc "CREATE TABLE sections (id int PRIMARY KEY, available int NOT NULL)
        ; INSERT INTO sections VALUES (1, 100000000)
        ; CREATE TABLE orders (id bigserial PRIMARY KEY, section_id int NOT NULL, customer int NOT NULL,
            quantity int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    cat > "$WORK/naive.sql" <<'SQL'
\set customer random(1, 64)
BEGIN;
SELECT available FROM sections WHERE id = 1 FOR UPDATE;
UPDATE sections SET available = available - 1 WHERE id = 1 AND available >= 1;
INSERT INTO orders (section_id, customer, quantity) VALUES (1, :customer, 1);
COMMIT;
SQL
    pgbench -n -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" -f "$WORK/naive.sql" "$naive" | grep -E "tps|latency|transactions"
fi
