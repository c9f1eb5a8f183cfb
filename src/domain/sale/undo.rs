//! Taking tentative events back. A writer decides a batch on its state before it knows
//! whether the batch will be appended (an optimistic turn appends only if nobody wrote the
//! sale meanwhile). When it is not, the state goes back to what it was before the batch, and
//! the writer catches up on the other writer's events instead of loading the whole sale
//! again. `SaleState::apply_undoable` notes, before folding an event, every entry the event
//! can change: its stream's version, and the entry of the reservation (with its customer's
//! ticket count) or payment it is about. The event and the inventory, small, are kept whole
//! once per batch (`Undo::new`).

use super::SaleState;
use crate::domain::concert::Event;
use crate::domain::events::{DomainEvent, StreamId};
use crate::domain::ids::{PaymentId, ReservationId, UserId};
use crate::domain::inventory::Inventory;
use crate::domain::payment::Payment;
use crate::domain::reservation::Reservation;

/// How to put a `SaleState` back as it was when `Undo::new` was called.
#[derive(Debug)]
pub struct Undo {
    event: Option<Event>,
    inventory: Inventory,
    /// Entries as they were before each event changed them, in the order they were noted.
    before: Vec<Before>,
}

#[derive(Debug)]
enum Before {
    Version(StreamId, Option<u64>),
    Reservation(ReservationId, Option<Reservation>),
    Tickets(UserId, Option<u32>),
    Payment(PaymentId, Option<Payment>),
}

impl Undo {
    pub fn new(state: &SaleState) -> Self {
        Self {
            event: state.event.clone(),
            inventory: state.inventory.clone(),
            before: Vec::new(),
        }
    }
}

impl SaleState {
    /// `apply`, noting in `undo` what it changes.
    pub fn apply_undoable(&mut self, event: &DomainEvent, undo: &mut Undo) {
        let stream = event.stream();
        let version = self.versions.get(&stream).copied();
        undo.before.push(Before::Version(stream, version));
        match stream {
            StreamId::Reservation(id) => {
                let reservation = self.reservations.get(&id).cloned();
                let customer = match (&reservation, event) {
                    (Some(r), _) => Some(r.user_id),
                    (None, DomainEvent::ReservationPlaced(placed)) => Some(placed.user_id),
                    (None, _) => None,
                };
                if let Some(user) = customer {
                    let tickets = self.tickets_by_customer.get(&user).copied();
                    undo.before.push(Before::Tickets(user, tickets));
                }
                undo.before.push(Before::Reservation(id, reservation));
            }
            StreamId::Payment(id) => {
                let payment = self.payments.get(&id).cloned();
                undo.before.push(Before::Payment(id, payment));
            }
            StreamId::Event(_) | StreamId::Inventory(_) => {}
        }
        self.apply(event);
    }

    /// Puts the state back as it was when `undo` was made, undoing every event applied with
    /// it since.
    pub fn undo(&mut self, undo: Undo) {
        for before in undo.before.into_iter().rev() {
            match before {
                Before::Version(stream, version) => restore(&mut self.versions, stream, version),
                Before::Reservation(id, r) => restore(&mut self.reservations, id, r),
                Before::Tickets(user, n) => restore(&mut self.tickets_by_customer, user, n),
                Before::Payment(id, p) => restore(&mut self.payments, id, p),
            }
        }
        self.event = undo.event;
        self.inventory = undo.inventory;
    }
}

fn restore<K: Ord, V>(map: &mut std::collections::BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}
