#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, contract and API tests.
# Starts (or installs) the services the tests need first, so a fresh machine with only the
# Rust toolchain passes with this one command.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/services.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
