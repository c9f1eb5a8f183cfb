//! # Layout
//! - `auth`: accounts, login sessions and password hashing behind the `AuthStore` port.
//! - `domain`: pure reducers (event, inventory, reservation, payment, and the sale composing them).
//! - `eventstore`: the `EventStore` port, its adapters and the event codec.
//! - `runtime`: clock, per-sale writers with group commit, expiry, subscriptions.
//! - `observability`: metrics and tracing set-up.
pub mod auth;
pub mod domain;
pub mod eventstore;
pub mod observability;
pub mod runtime;
