//! The pure domain: ids, money, the event catalogue (`events`), the four aggregates
//! (`concert` for the `Event`, `inventory`, `reservation`, `payment`) and the `sale` that
//! composes them into one decision. Nothing in here performs I/O, reads a clock or draws
//! random numbers (except `Id::random()`, which only callers at the edge use).

pub mod concert;
pub mod events;
pub mod ids;
pub mod inventory;
pub mod money;
pub mod payment;
pub mod reservation;
pub mod sale;

pub use events::DomainEvent;
pub use ids::{EventId, PaymentId, ReservationId, UserId};
pub use money::{Currency, Money};
pub use sale::{Decision, Effect, Outcome, SaleCommand, SaleError, SaleState};
