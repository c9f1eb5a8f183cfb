//! The `Inventory` aggregate (`inventory-<event id>`): seat counts per section. It owns
//! invariant 1: `held + sold <= capacity` in every section, whatever the command order.
//! It never knows who holds the seats (that is `reservation`), and its `apply` saturates
//! instead of panicking.

use super::events::{DomainEvent, SectionSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("no section named {0:?}")]
    UnknownSection(String),
    #[error("section {section:?} has only {available} seats left")]
    SoldOut { section: String, available: u32 },
    #[error("section {section:?} has {committed} seats held or sold; its capacity cannot go below that or be removed")]
    CapacityBelowCommitted { section: String, committed: u32 },
}

/// Counts for one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    pub name: String,
    pub capacity: u32,
    pub price_cents: i64,
    pub held: u32,
    pub sold: u32,
}

impl Stock {
    pub fn available(&self) -> u32 {
        self.capacity
            .saturating_sub(self.held.saturating_add(self.sold))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub sections: Vec<Stock>,
}

impl Inventory {
    pub fn section(&self, name: &str) -> Result<&Stock, InventoryError> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| InventoryError::UnknownSection(name.to_owned()))
    }

    fn section_mut(&mut self, name: &str) -> Option<&mut Stock> {
        self.sections.iter_mut().find(|s| s.name == name)
    }

    /// May `quantity` more seats of `section` be held?
    pub fn check_hold(&self, section: &str, quantity: u32) -> Result<&Stock, InventoryError> {
        let stock = self.section(section)?;
        if stock.available() < quantity {
            return Err(InventoryError::SoldOut {
                section: section.to_owned(),
                available: stock.available(),
            });
        }
        Ok(stock)
    }

    /// May the sections be redefined as `specs` without dropping seats already committed?
    pub fn check_restock(&self, specs: &[SectionSpec]) -> Result<(), InventoryError> {
        for stock in &self.sections {
            let committed = stock.held.saturating_add(stock.sold);
            let new_capacity = specs
                .iter()
                .find(|s| s.name == stock.name)
                .map_or(0, |s| s.capacity);
            if committed > new_capacity {
                return Err(InventoryError::CapacityBelowCommitted {
                    section: stock.name.clone(),
                    committed,
                });
            }
        }
        Ok(())
    }

    /// Folds one event; saturating arithmetic so that `apply` can never panic.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::InventoryStocked(e) => {
                let old = std::mem::take(&mut self.sections);
                self.sections = e
                    .sections
                    .iter()
                    .map(|spec| {
                        let (held, sold) = old
                            .iter()
                            .find(|s| s.name == spec.name)
                            .map_or((0, 0), |s| (s.held, s.sold));
                        Stock {
                            name: spec.name.clone(),
                            capacity: spec.capacity,
                            price_cents: spec.price_cents,
                            held,
                            sold,
                        }
                    })
                    .collect();
            }
            DomainEvent::SeatsHeld(e) => {
                if let Some(s) = self.section_mut(&e.section) {
                    s.held = s.held.saturating_add(e.quantity);
                }
            }
            DomainEvent::HeldSeatsReleased(e) => {
                if let Some(s) = self.section_mut(&e.section) {
                    s.held = s.held.saturating_sub(e.quantity);
                }
            }
            DomainEvent::HeldSeatsSold(e) => {
                if let Some(s) = self.section_mut(&e.section) {
                    s.held = s.held.saturating_sub(e.quantity);
                    s.sold = s.sold.saturating_add(e.quantity);
                }
            }
            DomainEvent::SoldSeatsReturned(e) => {
                if let Some(s) = self.section_mut(&e.section) {
                    s.sold = s.sold.saturating_sub(e.quantity);
                }
            }
            _ => {}
        }
    }
}
