//! Identifier newtypes. Each wraps a UUID so that an `EventId` can never be passed where a
//! `ReservationId` is expected. Ids are minted by the caller (HTTP edge, tests), never by reducers.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// An event people buy tickets for (a concert, a match).
    EventId
);
id_type!(
    /// A hold on seats that becomes a purchase once paid.
    ReservationId
);
id_type!(
    /// One payment attempt against a reservation.
    PaymentId
);
id_type!(
    /// A registered account.
    UserId
);
