# syntax=docker/dockerfile:1
#
# The `ticketing` service (with the `ticketing-admin` CLI and the `loadgen` load generator) in a
# small runtime image.
#
#   docker build -t ticketing .
#   docker run --rm -p 8080:8080 ticketing                 # the service, in-memory mode
#   docker run --rm --entrypoint loadgen ticketing --help  # the load generator
#   docker compose exec ticketing ticketing-admin --help   # the operator's CLI
#
# Nothing here needs a database at build time: the crate uses no `sqlx::query!` macros, and the
# three migration sets are embedded into the binary by `sqlx::migrate!` at compile time, so the
# runtime image carries no migrations_* directories; they run at start-up from the binary.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################ builder ############################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# rdkafka 0.39 (default features: libz, no ssl, no sasl, no zstd, no curl) builds librdkafka
# from source with its `configure` script and make: it needs bash, make, a C and a C++ compiler
# (the configure step checks for one), python3 (lds-gen.py writes the linker script) and zlib
# headers; pkg-config lets libz-sys find the system zlib. The rust image has most of these;
# naming them keeps the build working if the base image slims down.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc g++ python3 pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# 1. Dependencies only: a manifest with stub sources, so this layer is rebuilt only when
#    Cargo.toml or Cargo.lock change (librdkafka alone takes minutes to compile).
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src/bin/loadgen src/bin/ticketing-admin migrations_events migrations_projections migrations_auth \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/loadgen/main.rs \
 && echo 'fn main() {}' > src/bin/ticketing-admin/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin ticketing --bin ticketing-admin --bin loadgen \
 && rm -rf src target/release/ticketing target/release/ticketing-admin target/release/loadgen \
           target/release/deps/ticketing-* target/release/deps/ticketing_admin-* \
           target/release/deps/libticketing-* \
           target/release/deps/loadgen-* target/release/.fingerprint/ticketing-*

# 2. The crate itself. The migrations are compiled in (sqlx::migrate!), so they are part of
#    the build context here and nowhere else.
COPY migrations_events ./migrations_events
COPY migrations_projections ./migrations_projections
COPY migrations_auth ./migrations_auth
COPY src ./src
# COPY keeps the sources' modification times, which may be older than the stub build: touch
# them so cargo cannot mistake the stub artifacts for up to date.
RUN find src migrations_events migrations_projections migrations_auth build.rs -exec touch {} + \
 && cargo build --release --locked --bin ticketing --bin ticketing-admin --bin loadgen

############################ runtime ############################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: for TLS to managed dependencies; curl: the health check below. The
# binaries link only glibc, libgcc_s and (through librdkafka) zlib, all in the slim base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ticketing \
 && useradd --system --uid 10001 --gid ticketing --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin ticketing

COPY --from=builder /app/target/release/ticketing /app/target/release/ticketing-admin \
     /app/target/release/loadgen /usr/local/bin/

# The service's default BIND_ADDR is 127.0.0.1:8080 (config.rs), which is unreachable from
# outside a container: listen on every interface, same port.
ENV BIND_ADDR=0.0.0.0:8080 \
    RUST_LOG=info

USER 10001:10001
EXPOSE 8080

# Liveness only (/health answers 200 while the process serves). Readiness (/ready, 503 while a
# database is down or during the SIGTERM drain) is for load balancers, not for restarts.
# If you change BIND_ADDR's port, change it here too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/health || exit 1

# SIGTERM starts the graceful shutdown: /ready turns 503 for SHUTDOWN_DRAIN_SECONDS, then
# in-flight requests get up to 20 s. Give the container at least drain + 20 s to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ticketing"]
