#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, contract and API tests.
# Starts (or installs) the services the tests need first, so a fresh machine with only the
# Rust toolchain passes with this one command.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/services.sh

# The tests make throw-away databases ticketing_test_<unix seconds>_<id>; drop those this run
# made, also when a step fails. One still in use refuses the DROP: a killed test service's
# connections close moments later, so those are tried again for a few seconds; one that stays
# in use (another run's, on a shared server) is left, and scripts/services.sh drops leftovers
# after two hours.
started=$(date +%s)
drop_test_databases() {
    local url=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable}
    local attempt name created
    for attempt in 1 2 3 4 5; do
        local left=0
        for name in $(psql "$url" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ticketing\_test\_%'"); do
            created=${name#ticketing_test_}
            created=${created%%_*}
            if [[ $created =~ ^[0-9]+$ ]] && (( created >= started )); then
                psql "$url" -qtAc "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || left=1
            fi
        done
        (( left == 0 )) && return
        sleep 1
    done
}
trap drop_test_databases EXIT
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# The HTTP contract from outside: a generated client and schemathesis against the binary.
./tests/conformance/run.sh
