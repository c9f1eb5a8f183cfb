//! The runtime around the pure domain: the clock, one writer task per sale with group commit
//! and optimistic-concurrency retries, hold expiry, and catch-up subscriptions that drive the
//! read models and process managers.

pub mod checkpoints;
pub mod expiry;
pub mod sales;
pub mod subscription;
pub mod writer;

pub use sales::Sales;
pub use writer::{CommandError, CommitWatch, Committed};
