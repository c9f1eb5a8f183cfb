//! # Layout
//! - `batcher`: the group commit of small statements (one task runs what queued meanwhile).
//! - `breaker`: the circuit breaker each dependency is called through.
//! - `config`: typed configuration from the environment.
//! - `db`: PostgreSQL pools, migrations and test databases shared by the adapters.
//! - `domain`: pure reducers (concert, inventory, reservation, payment, and the sale composing them).
//! - `eventstore`: the `EventStore` port, its adapters and the event codec.
//! - `runtime`: clock, per-sale writers with group commit, expiry, subscriptions.
//! - `projections`: read models (views the HTTP queries answer from) and their adapters.
//! - `payment`: the gateway port, the simulated processor, refund settlement.
//! - `audit`: the audit trail of sensitive actions, written in the background.
//! - `cache`: cache-aside of hot event reads (in process or Redis), invalidated by the projector.
//! - `auth`: accounts, login sessions and password hashing behind the `AuthStore` port.
//! - `webhooks`: organizers' endpoints, the bus consumer that makes deliveries, and the
//!   per-endpoint dispatcher that signs and sends them.
//! - `queue`: the virtual waiting room of on-sales: durable queue state (memory, PostgreSQL),
//!   the admission rule and the signed passes.
//! - `http`: the axum router, one module per resource, problem+json errors, access policy,
//!   and the edge: rate limits, security headers, CORS, request timeout.
//! - `observability`: metrics and tracing set-up.
//! - `startup`: builds the application from a `Config` and serves it until shutdown.
pub mod app;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod batcher;
pub mod breaker;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod config;
pub mod db;
pub mod dlq;
pub mod domain;
pub mod eventstore;
pub mod http;
pub mod observability;
pub mod paging;
pub mod payment;
pub mod projections;
pub mod queue;
pub mod runtime;
pub mod startup;
pub mod webhooks;
