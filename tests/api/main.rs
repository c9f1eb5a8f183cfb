//! Black-box API tests: each test starts the real application on port 0 and talks HTTP.
//! One test binary (modules below) so the crate links once.

mod helpers;
mod invariants;

mod access;
mod analytics;
mod audit;
mod auth;
mod breakers;
mod cache;
mod cancellation;
mod concurrency;
mod dashboard;
mod dead_letters;
mod errors;
mod events;
mod expiry;
mod headers;
mod idempotency;
mod lagging;
mod limits;
mod operations;
mod purchase;
mod queue;
mod ratelimit;
mod reconcile;
mod smoke;
mod text;
mod webhooks;
