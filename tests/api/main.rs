//! Black-box API tests: each test starts the real application on port 0 and talks HTTP.
//! One test binary (modules below) so the crate links once.

mod access;
mod auth;
mod errors;
mod events;
mod helpers;
mod operations;
mod smoke;
