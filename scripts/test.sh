#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, contract and API tests, with the
# API suite twice: on the in-memory adapters and on PostgreSQL + Redis (TEST_BACKEND).
# Starts (or installs) the services the tests need first, so a fresh machine with only the
# Rust toolchain passes with this one command.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
started=$(date +%s)

# The tests create databases named ticketing_test_<unix seconds>_<id>; drop the ones this run
# created once it ends (a database still in use, e.g. another run's, refuses and is kept;
# services.sh drops leftovers over two hours old).
drop_this_runs_databases() {
    psql "$PGURL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ticketing\_test\_%'" 2>/dev/null |
        while read -r name; do
            local created=${name#ticketing_test_}
            created=${created%%_*}
            if [[ $created =~ ^[0-9]+$ ]] && (( created >= started )); then
                psql "$PGURL" -qtAc "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || true
            fi
        done
}
trap drop_this_runs_databases EXIT

./scripts/services.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The property tests take more cases here than proptest's default 256.
export PROPTEST_CASES=${PROPTEST_CASES:-1024}
TEST_BACKEND=memory cargo test --all-targets --locked
api_started=$(date +%s)
TEST_BACKEND=postgres cargo test --locked --test api
echo "test.sh: the API suite on PostgreSQL + Redis took $(( $(date +%s) - api_started )) s"
