#!/usr/bin/env bash
# The HTTP contract tried from outside, as its users meet it, against the real binary:
#  1. a client generated from /openapi.json (openapi-python-client) calls every operation
#     through a purchase, a declined card, a refund, the listings and the admin's dead
#     letter flow (client_flow.py);
#  2. schemathesis runs every check and every phase (examples, coverage, fuzzing, stateful)
#     as an admin, for CONFORMANCE_SECONDS (150 by default), and must find nothing;
#     /auth/logout, which revokes the token it is called with, is fuzzed on its own with a
#     token of its own (stateful testing needs the links between operations, so not there).
#     The document's links (event -> publish -> open sales -> reservation -> payment ->
#     refund) let the stateful phase walk a sale.
# Part of ./scripts/test.sh. Needs the Kafka-protocol broker of ./scripts/services.sh on
# 127.0.0.1:9092 (the dead letter flow produces poison messages onto it) and Python 3 with
# pip; the pinned Python packages are installed when missing.
# Env: TICKETING_BIN (default: the newer of target/release and target/debug, else a debug
# build), CONFORMANCE_SECONDS, CONFORMANCE_SEED, KAFKA_BROKERS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

pins=(schemathesis==4.32.5 openapi-python-client==0.29.1 confluent-kafka==2.6.1)
for pin in "${pins[@]}"; do
    if [[ $(python3 -m pip show "${pin%%==*}" 2>/dev/null | sed -n 's/^Version: //p') != "${pin#*==}" ]]; then
        echo "conformance: installing $pin" >&2
        python3 -m pip install -q "$pin" >&2
    fi
done

bin=${TICKETING_BIN:-}
if [[ -z $bin ]]; then
    for candidate in "$root/target/release/ticketing" "$root/target/debug/ticketing"; do
        if [[ -x $candidate && ( -z $bin || $candidate -nt $bin ) ]]; then bin=$candidate; fi
    done
fi
if [[ -z $bin ]]; then
    (cd "$root" && cargo build --locked --bin ticketing)
    bin=$root/target/debug/ticketing
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
brokers=${KAFKA_BROKERS:-127.0.0.1:9092}
prefix=conformance-$(date +%s)-$RANDOM.
admin_email=admin@example.com
admin_password=conformance-admin-pw

# One loopback client makes every request: the per-IP and per-user limits are lifted.
BIND_ADDR=127.0.0.1:$port ADMIN_EMAIL=$admin_email ADMIN_PASSWORD=$admin_password \
    KAFKA_BROKERS=$brokers KAFKA_TOPIC_PREFIX=$prefix RUST_LOG=${SERVICE_RUST_LOG:-warn} \
    RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000 \
    RATE_LIMIT_WRITES_PER_SECOND=1000000 RATE_LIMIT_READS_PER_SECOND=1000000 \
    DATABASE_URL= REDIS_URL= "$bin" >"$work/service.log" 2>&1 &
service=$!
cleanup() {
    kill "$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 600); do
    if curl -sf "$base/ready" >/dev/null; then break; fi
    if ! kill -0 "$service" 2>/dev/null; then cat "$work/service.log" >&2; exit 1; fi
    sleep 0.1
done
curl -sf "$base/openapi.json" >"$work/openapi.json"

login() {
    curl -sf -H 'Content-Type: application/json' "$base/auth/login" \
        -d "{\"email\":\"$1\",\"password\":\"$2\"}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}

echo "conformance: generated client against $bin" >&2
openapi-python-client generate --path "$work/openapi.json" --meta none \
    --output-path "$work/ticketing_client" >/dev/null
PYTHONPATH=$work python3 "$here/client_flow.py" "$base" "$brokers" "$prefix" \
    "$admin_email" "$admin_password"

seconds=${CONFORMANCE_SECONDS:-150}
seed=(${CONFORMANCE_SEED:+--seed "$CONFORMANCE_SEED"})
echo "conformance: schemathesis, every check and phase, ${seconds} s" >&2
cd "$here"
TICKETING_TOKEN=$(login "$admin_email" "$admin_password") SCHEMATHESIS_HOOKS=hooks PYTHONPATH=$here \
    schemathesis --config-file "$here/schemathesis.toml" run "$base/openapi.json" \
    --exclude-path /auth/logout --max-time "$seconds" --no-color "${seed[@]}"

curl -sf -H 'Content-Type: application/json' "$base/auth/register" \
    -d '{"email":"logout@example.com","password":"logout-pw-1"}' >/dev/null
TICKETING_TOKEN=$(login logout@example.com logout-pw-1) SCHEMATHESIS_HOOKS=hooks PYTHONPATH=$here \
    schemathesis --config-file "$here/schemathesis.toml" run "$base/openapi.json" \
    --include-path /auth/logout --phases examples,coverage,fuzzing --max-examples 20 \
    --no-color "${seed[@]}"
