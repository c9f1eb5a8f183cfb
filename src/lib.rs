//! # Layout
//! - `domain`: pure reducers (event, inventory, reservation, payment, and the sale composing them).
pub mod domain;
