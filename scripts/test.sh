#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, contract and API tests.
# Safe on a fresh machine with only the Rust toolchain: nothing else is needed yet.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
