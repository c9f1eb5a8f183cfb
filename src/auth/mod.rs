//! Authentication: accounts, login sessions and password hashing, behind the `AuthStore` port.
//! Passwords are kept only as Argon2id PHC strings and sessions only under the SHA-256 digest of
//! their opaque token. This module must never log a secret (password, token, hash) nor store a
//! raw token or password. Deciding who may do what (e.g. no self-registered admins) is the HTTP
//! layer's job; this module only says who the caller is. Resolved tokens are cached in process
//! (`cache`), and revocations reach every instance's cache (`revocations`, on PostgreSQL).

pub mod cache;
#[cfg(test)]
pub mod contract;
pub mod memory;
pub mod password;
pub mod postgres;
pub mod revocations;
pub mod service;
pub mod store;
pub mod token;

pub use service::{AuthService, LoginSession};
pub use store::{AuthError, AuthStore, Principal, Role, User};
