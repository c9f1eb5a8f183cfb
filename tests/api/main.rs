//! Black-box API tests: each test starts the real application on port 0 and talks HTTP.
//! One test binary (modules below) so the crate links once.

mod helpers;
mod invariants;

mod analytics;
mod cancellation;
mod concurrency;
mod expiry;
mod idempotency;
mod purchase;
mod smoke;
