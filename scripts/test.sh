#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, contract and API tests, with the
# API suite twice: on the in-memory adapters and on PostgreSQL + Redis (TEST_BACKEND); then the
# HTTP contract from outside (tests/conformance/run.sh).
# Starts (or installs) the services the tests need first, so a fresh machine with only the
# Rust toolchain passes with this one command.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
started=$(date +%s)

# The tests create databases named ticketing_test_<unix seconds>_<id>; drop the ones this run
# created once it ends. One still in use refuses the DROP: a test service killed moments
# before still holds connections that close soon after, so refused drops are tried again for
# a few seconds; one that stays in use (another run's) is kept, and services.sh drops
# leftovers over two hours old.
drop_this_runs_databases() {
    local attempt name created left
    for attempt in 1 2 3 4 5; do
        left=0
        for name in $(psql "$PGURL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ticketing\_test\_%'" 2>/dev/null); do
            created=${name#ticketing_test_}
            created=${created%%_*}
            if [[ $created =~ ^[0-9]+$ ]] && (( created >= started )); then
                psql "$PGURL" -qtAc "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || left=1
            fi
        done
        (( left == 0 )) && return
        sleep 1
    done
}
trap drop_this_runs_databases EXIT

./scripts/services.sh
# The reference Standard Webhooks verifier the webhook API tests ask (tests/api/webhooks.rs).
if [[ ! -x target/swh-venv/bin/python ]] || ! target/swh-venv/bin/python -c 'import standardwebhooks' 2>/dev/null; then
    python3 -m venv target/swh-venv
    target/swh-venv/bin/pip install -q standardwebhooks==1.1.0
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The property tests take more cases here than proptest's default 256.
export PROPTEST_CASES=${PROPTEST_CASES:-1024}
TEST_BACKEND=memory cargo test --all-targets --locked
api_started=$(date +%s)
TEST_BACKEND=postgres cargo test --locked --test api
echo "test.sh: the API suite on PostgreSQL + Redis took $(( $(date +%s) - api_started )) s"
# The HTTP contract from outside: a generated client and schemathesis against the binary.
./tests/conformance/run.sh
