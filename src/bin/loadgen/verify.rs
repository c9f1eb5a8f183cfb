//! The invariants a flash sale must hold, checked from the client's counts and the
//! service's availability figures (or, for the naive baseline, its tables).
//!
//! Pure: no I/O, so each rule is unit-tested below. Returns what was violated, in words.

use serde::Serialize;

use crate::api::{Availability, SectionAvailability, SECTION};

/// What the run asked for.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub seats: u64,
    pub buyers: u64,
    pub quantity: u64,
    pub pay: bool,
}

/// What the client saw during the measured phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Reservations answered 201.
    pub reserved: u64,
    /// Payments answered 201 with status `captured`.
    pub captured: u64,
    /// Answers with a 5xx status, set-up and verification excluded.
    pub server_errors: u64,
    /// Expected statuses whose body did not decode.
    pub malformed: u64,
}

impl Plan {
    /// Seats the sale should end with sold (or held, with `--no-pay`): every buyer served
    /// until fewer than `quantity` seats are left.
    pub fn expected_seats(&self) -> u64 {
        let sellable = self.seats - self.seats % self.quantity;
        sellable.min(self.buyers.saturating_mul(self.quantity))
    }
}

/// What the naive baseline's tables hold for its event after the measured phase. Signed, as
/// read from SQL, so that a broken sale (negative `available`) is reported, not clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ledger {
    pub capacity: i64,
    pub available: i64,
    pub orders: i64,
    /// Sum of the orders' quantities.
    pub ordered_seats: i64,
    /// Sum of the orders' amounts.
    pub amount_cents: i64,
    pub price_cents: i64,
}

/// Every invariant the naive baseline broke: each sale left exactly one order, the orders add
/// up to the seats taken off the section and to `min(seats, demand)`, nothing was oversold,
/// and no SQL statement failed (`sql_errors`).
pub fn naive_violations(
    plan: Plan,
    seen: Seen,
    sql_errors: u64,
    ledger: Result<&Ledger, &str>,
) -> Vec<String> {
    let mut broken = Vec::new();
    if sql_errors > 0 {
        broken.push(format!("{sql_errors} SQL errors"));
    }
    let granted = seen.reserved.saturating_mul(plan.quantity);
    if granted > plan.seats {
        broken.push(format!(
            "purchases granted {granted} seats of {}",
            plan.seats
        ));
    }
    let ledger = match ledger {
        Ok(ledger) => ledger,
        Err(error) => {
            broken.push(format!("tables unreadable: {error}"));
            return broken;
        }
    };
    let seats = i64::try_from(plan.seats).unwrap_or(i64::MAX);
    let expected = i64::try_from(plan.expected_seats()).unwrap_or(i64::MAX);
    let granted = i64::try_from(granted).unwrap_or(i64::MAX);
    let purchases = i64::try_from(seen.reserved).unwrap_or(i64::MAX);
    let sold = ledger.capacity - ledger.available;
    if ledger.capacity != seats {
        broken.push(format!("capacity {} != {seats} seats", ledger.capacity));
    }
    if ledger.available < 0 {
        broken.push(format!("available {} < 0", ledger.available));
    }
    if ledger.ordered_seats != sold {
        broken.push(format!(
            "orders hold {} seats != capacity - available {sold}",
            ledger.ordered_seats
        ));
    }
    if ledger.ordered_seats != expected {
        broken.push(format!(
            "orders hold {} seats, expected {expected}",
            ledger.ordered_seats
        ));
    }
    if ledger.ordered_seats != granted {
        broken.push(format!(
            "orders hold {} seats != purchased seats {granted}",
            ledger.ordered_seats
        ));
    }
    if ledger.orders != purchases {
        broken.push(format!("{} orders != {purchases} purchases", ledger.orders));
    }
    let revenue = ledger.ordered_seats.saturating_mul(ledger.price_cents);
    if ledger.amount_cents != revenue {
        broken.push(format!(
            "orders amount to {} cents != seats x price {revenue}",
            ledger.amount_cents
        ));
    }
    broken
}

/// Every invariant the run broke; empty when the sale was correct.
pub fn violations(
    plan: Plan,
    seen: Seen,
    availability: Result<&Availability, &str>,
) -> Vec<String> {
    let mut broken = Vec::new();
    if seen.server_errors > 0 {
        broken.push(format!("{} 5xx answers", seen.server_errors));
    }
    if seen.malformed > 0 {
        broken.push(format!("{} success bodies did not decode", seen.malformed));
    }
    let granted = seen.reserved.saturating_mul(plan.quantity);
    if granted > plan.seats {
        broken.push(format!(
            "reservations granted {granted} seats of {}",
            plan.seats
        ));
    }
    match availability {
        Ok(availability) => broken.extend(figure_violations(plan, seen, availability)),
        Err(error) => broken.push(format!("availability unreadable: {error}")),
    }
    broken
}

/// The rules that need the service's availability figures.
fn figure_violations(plan: Plan, seen: Seen, availability: &Availability) -> Vec<String> {
    let Some(section) = availability.sections.iter().find(|s| s.name == SECTION) else {
        return vec![format!("section {SECTION:?} missing from availability")];
    };
    let mut broken = consistency_violations(plan, section);
    let total: u64 = availability.sections.iter().map(|s| s.available).sum();
    if availability.total_available != total {
        broken.push(format!(
            "total_available {} != sum of sections {total}",
            availability.total_available
        ));
    }
    let granted = seen.reserved.saturating_mul(plan.quantity);
    let expected = plan.expected_seats();
    let (settled, unsettled, settled_name, unsettled_name) = if plan.pay {
        (section.sold, section.held, "sold", "held")
    } else {
        (section.held, section.sold, "held", "sold")
    };
    if unsettled != 0 {
        broken.push(format!("{unsettled_name} {unsettled}, expected 0"));
    }
    if settled != granted {
        broken.push(format!(
            "{settled_name} {settled} != reserved seats {granted}"
        ));
    }
    if settled != expected {
        broken.push(format!("{settled_name} {settled}, expected {expected}"));
    }
    let paid = seen.captured.saturating_mul(plan.quantity);
    if plan.pay && section.sold != paid {
        broken.push(format!("sold {} != captured seats {paid}", section.sold));
    }
    broken
}

/// Capacity bookkeeping that must hold whatever the clients did.
fn consistency_violations(plan: Plan, section: &SectionAvailability) -> Vec<String> {
    let mut broken = Vec::new();
    if section.capacity != plan.seats {
        broken.push(format!(
            "capacity {} != {} seats",
            section.capacity, plan.seats
        ));
    }
    let taken = section.sold.saturating_add(section.held);
    if taken > section.capacity {
        broken.push(format!(
            "sold + held {taken} > capacity {}",
            section.capacity
        ));
    }
    if section.available.saturating_add(taken) != section.capacity {
        broken.push(format!(
            "available {} + sold + held {taken} != capacity {}",
            section.available, section.capacity
        ));
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seats: u64, buyers: u64, quantity: u64, pay: bool) -> Plan {
        Plan {
            seats,
            buyers,
            quantity,
            pay,
        }
    }

    fn figures(capacity: u64, held: u64, sold: u64) -> Availability {
        let available = capacity - held - sold;
        Availability {
            sections: vec![SectionAvailability {
                name: SECTION.to_owned(),
                capacity,
                available,
                held,
                sold,
                price_cents: 5000,
            }],
            total_available: available,
        }
    }

    /// More buyers than seats sell out; the last partial reservation cannot fit.
    #[test]
    fn expected_seats_stop_at_the_last_whole_reservation() {
        assert_eq!(plan(1000, 2000, 1, true).expected_seats(), 1000);
        assert_eq!(plan(1000, 2000, 3, true).expected_seats(), 999);
        assert_eq!(plan(1000, 10, 3, true).expected_seats(), 30);
    }

    /// A sold-out sale where every reservation was paid breaks nothing.
    #[test]
    fn a_clean_sell_out_has_no_violations() {
        let seen = Seen {
            reserved: 1000,
            captured: 1000,
            ..Seen::default()
        };
        let broken = violations(plan(1000, 2000, 1, true), seen, Ok(&figures(1000, 0, 1000)));
        assert!(broken.is_empty(), "{broken:?}");
    }

    /// Without payment the seats stay held, and that is what must be checked.
    #[test]
    fn no_pay_expects_every_reserved_seat_held() {
        let seen = Seen {
            reserved: 333,
            ..Seen::default()
        };
        let broken = violations(plan(1000, 2000, 3, false), seen, Ok(&figures(1000, 999, 0)));
        assert!(broken.is_empty(), "{broken:?}");
    }

    /// Granting more seats than exist is reported even when the figures look fine.
    #[test]
    fn overselling_is_a_violation() {
        let seen = Seen {
            reserved: 1001,
            captured: 1001,
            ..Seen::default()
        };
        let broken = violations(plan(1000, 2000, 1, true), seen, Ok(&figures(1000, 0, 1000)));
        assert!(
            broken.iter().any(|b| b.contains("granted 1001")),
            "{broken:?}"
        );
    }

    /// Leftover holds after paying, 5xx answers and an unreadable availability all count.
    #[test]
    fn holds_errors_and_missing_figures_are_violations() {
        let seen = Seen {
            reserved: 1000,
            captured: 999,
            server_errors: 1,
            ..Seen::default()
        };
        let broken = violations(plan(1000, 2000, 1, true), seen, Ok(&figures(1000, 1, 999)));
        assert!(
            broken.iter().any(|b| b == "held 1, expected 0"),
            "{broken:?}"
        );
        assert!(broken.iter().any(|b| b == "1 5xx answers"), "{broken:?}");
        let broken = violations(plan(1, 1, 1, true), Seen::default(), Err("timeout"));
        assert_eq!(broken, vec!["availability unreadable: timeout".to_owned()]);
    }

    fn ledger(capacity: i64, available: i64, orders: i64, ordered_seats: i64) -> Ledger {
        Ledger {
            capacity,
            available,
            orders,
            ordered_seats,
            amount_cents: ordered_seats * 5000,
            price_cents: 5000,
        }
    }

    /// A naive sell-out whose orders match the seats taken off the section breaks nothing.
    #[test]
    fn a_clean_naive_sell_out_has_no_violations() {
        let seen = Seen {
            reserved: 999 / 3,
            ..Seen::default()
        };
        let broken = naive_violations(
            plan(1000, 2000, 3, true),
            seen,
            0,
            Ok(&ledger(1000, 1, 333, 999)),
        );
        assert!(broken.is_empty(), "{broken:?}");
    }

    /// Overselling, orders that disagree with the section, and SQL errors are all reported.
    #[test]
    fn naive_oversell_mismatch_and_errors_are_violations() {
        let seen = Seen {
            reserved: 1001,
            ..Seen::default()
        };
        let broken = naive_violations(
            plan(1000, 2000, 1, true),
            seen,
            2,
            Ok(&ledger(1000, -1, 1001, 1000)),
        );
        for expected in [
            "2 SQL errors",
            "purchases granted 1001 seats of 1000",
            "available -1 < 0",
            "orders hold 1000 seats != capacity - available 1001",
            "orders hold 1000 seats != purchased seats 1001",
        ] {
            assert!(
                broken.iter().any(|b| b == expected),
                "{expected}: {broken:?}"
            );
        }
        let broken = naive_violations(plan(1, 1, 1, true), Seen::default(), 0, Err("gone"));
        assert_eq!(broken, vec!["tables unreadable: gone".to_owned()]);
    }
}
