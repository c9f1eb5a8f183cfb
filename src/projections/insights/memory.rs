//! Insights in memory, for the in-memory service and tests.

use super::{version_gap, Insights, InsightsError, RecentSales, Revenue};
use crate::bus::consumer::Applied;
use crate::bus::envelope::BusEvent;
use crate::domain::reservation::ReservationStatus;
use crate::domain::{DomainEvent, EventId, ReservationId, UserId};
use crate::paging::{Page, PageRequest};
use crate::projections::{HistoryEntry, ReadError, SalesView, SectionSales};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
struct EventRow {
    name: Option<String>,
    currency: Option<String>,
    tickets_sold: u64,
    revenue_cents: i64,
    /// (section, position of its first sale, tickets, revenue), in first-sale order.
    sections: Vec<(String, u64, u64, i64)>,
}

struct Purchase {
    event_id: EventId,
    user_id: UserId,
    section: String,
    quantity: u32,
    total_cents: i64,
    currency: String,
    status: ReservationStatus,
    payment_id: Option<uuid::Uuid>,
    purchased_at: Option<DateTime<Utc>>,
}

/// `streams` and `purchases` grow with every reservation. `purchases` is a B-tree, so that
/// growing never rehashes it all at once under the lock the analytics reads take. `streams` is
/// a hash map all the same: the consumer looks it up for every event, and a B-tree keyed by
/// text cost a hold in memory about 2.6% more (BENCHMARKS.md, session 44). Its rare growth
/// runs in the consumer (an analytics read may wait that moment); the in-memory event store
/// keys its streams the same way.
#[derive(Default)]
struct Tables {
    streams: HashMap<String, u64>,
    events: HashMap<EventId, EventRow>,
    purchases: BTreeMap<ReservationId, Purchase>,
}

#[derive(Default)]
pub struct MemoryInsights(Mutex<Tables>);

impl MemoryInsights {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Tables {
    fn count_sale(&mut self, reservation: ReservationId, sign: i64, position: u64) {
        let Some(p) = self.purchases.get(&reservation) else {
            return;
        };
        let row = self.events.entry(p.event_id).or_default();
        row.currency.get_or_insert_with(|| p.currency.clone());
        let tickets = u64::from(p.quantity);
        let apply = |count: &mut u64, revenue: &mut i64| {
            *count = if sign > 0 {
                *count + tickets
            } else {
                count.saturating_sub(tickets)
            };
            *revenue += sign * p.total_cents;
        };
        apply(&mut row.tickets_sold, &mut row.revenue_cents);
        match row.sections.iter_mut().find(|s| s.0 == p.section) {
            Some(s) => {
                apply(&mut s.2, &mut s.3);
                if sign > 0 {
                    s.1 = s.1.min(position);
                }
            }
            None if sign > 0 => {
                row.sections
                    .push((p.section.clone(), position, tickets, p.total_cents));
            }
            None => {}
        }
        row.sections.sort_by_key(|s| s.1);
    }

    /// Applies `e` unless its stream is at or past its version.
    fn apply_versioned(&mut self, e: &BusEvent) -> Result<Applied, InsightsError> {
        let at = self.streams.get(&e.stream_id).copied().unwrap_or(0);
        if at >= e.version {
            return Ok(Applied::Duplicate);
        }
        if let Some(gap) = version_gap(e, at) {
            return Err(gap);
        }
        self.apply(e)?;
        self.streams.insert(e.stream_id.clone(), e.version);
        Ok(Applied::Applied)
    }

    /// Whether `apply` would refuse `e` (a reservation event of a reservation never placed,
    /// here or earlier in the batch: `placed`), without changing anything.
    fn check(
        &self,
        e: &BusEvent,
        placed: &mut HashSet<ReservationId>,
    ) -> Result<(), InsightsError> {
        use DomainEvent as E;
        let reservation = match &e.event {
            E::ReservationPlaced(p) => {
                placed.insert(p.reservation_id);
                return Ok(());
            }
            E::ReservationConfirmed(c) => c.reservation_id,
            E::ReservationRefunded(r) => r.reservation_id,
            E::ReservationCancelled(c) => c.reservation_id,
            E::ReservationExpired(x) => x.reservation_id,
            _ => return Ok(()),
        };
        if self.purchases.contains_key(&reservation) || placed.contains(&reservation) {
            Ok(())
        } else {
            Err(InsightsError::Inconsistent {
                stream_id: e.stream_id.clone(),
                version: e.version,
                reason: "the reservation was never placed".into(),
            })
        }
    }

    fn apply(&mut self, e: &BusEvent) -> Result<(), InsightsError> {
        use DomainEvent as E;
        let missing = || InsightsError::Inconsistent {
            stream_id: e.stream_id.clone(),
            version: e.version,
            reason: "the reservation was never placed".into(),
        };
        match &e.event {
            E::EventCreated(c) => {
                let row = self.events.entry(c.event_id).or_default();
                row.name = Some(c.details.name.clone());
                row.currency = Some(c.currency.to_string());
            }
            E::EventDetailsChanged(c) => {
                self.events.entry(c.event_id).or_default().name = Some(c.details.name.clone());
            }
            E::ReservationPlaced(p) => {
                self.purchases.entry(p.reservation_id).or_insert(Purchase {
                    event_id: p.event_id,
                    user_id: p.user_id,
                    section: p.section.clone(),
                    quantity: p.quantity,
                    total_cents: p.total.amount_cents,
                    currency: p.total.currency.to_string(),
                    status: ReservationStatus::Pending,
                    payment_id: None,
                    purchased_at: None,
                });
            }
            E::ReservationConfirmed(c) => {
                let p = self
                    .purchases
                    .get_mut(&c.reservation_id)
                    .ok_or_else(missing)?;
                p.status = ReservationStatus::Confirmed;
                p.payment_id = Some(c.payment_id.0);
                p.purchased_at = Some(c.at);
                self.count_sale(c.reservation_id, 1, e.position);
            }
            E::ReservationRefunded(r) => {
                let p = self
                    .purchases
                    .get_mut(&r.reservation_id)
                    .ok_or_else(missing)?;
                let was_sold = p.status == ReservationStatus::Confirmed;
                p.status = ReservationStatus::Refunded;
                if was_sold {
                    self.count_sale(r.reservation_id, -1, e.position);
                }
            }
            E::ReservationCancelled(c) => {
                self.purchases
                    .get_mut(&c.reservation_id)
                    .ok_or_else(missing)?
                    .status = ReservationStatus::Cancelled;
            }
            E::ReservationExpired(x) => {
                self.purchases
                    .get_mut(&x.reservation_id)
                    .ok_or_else(missing)?
                    .status = ReservationStatus::Expired;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Insights for MemoryInsights {
    async fn apply(&self, event: &BusEvent) -> Result<Applied, InsightsError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply_versioned(event)
    }

    async fn apply_batch(&self, events: &[BusEvent]) -> Result<Vec<Applied>, InsightsError> {
        let mut tables = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // All or nothing: find the event that would fail before changing anything.
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut placed = HashSet::new();
        for e in events {
            let at = versions
                .get(e.stream_id.as_str())
                .or_else(|| tables.streams.get(&e.stream_id))
                .copied()
                .unwrap_or(0);
            if at >= e.version {
                continue;
            }
            if let Some(gap) = version_gap(e, at) {
                return Err(gap);
            }
            versions.insert(&e.stream_id, e.version);
            tables.check(e, &mut placed)?;
        }
        events.iter().map(|e| tables.apply_versioned(e)).collect()
    }

    async fn reset(&self) -> Result<(), InsightsError> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Tables::default();
        Ok(())
    }

    async fn skip(&self, stream_id: &str, version: u64) -> Result<(), InsightsError> {
        let mut tables = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let at = tables.streams.entry(stream_id.to_owned()).or_insert(0);
        *at = (*at).max(version);
        Ok(())
    }

    async fn sales(&self, event: EventId) -> Result<Option<SalesView>, ReadError> {
        let tables = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(row) = tables.events.get(&event) else {
            return Ok(None);
        };
        let Some(currency) = row.currency.clone() else {
            return Ok(None);
        };
        Ok(Some(SalesView {
            event_id: event.0,
            tickets_sold: row.tickets_sold,
            revenue_cents: row.revenue_cents,
            currency,
            by_section: row
                .sections
                .iter()
                .map(|(section, _, tickets_sold, revenue_cents)| SectionSales {
                    section: section.clone(),
                    tickets_sold: *tickets_sold,
                    revenue_cents: *revenue_cents,
                })
                .collect(),
        }))
    }

    async fn sales_since(&self, since: DateTime<Utc>) -> Result<RecentSales, ReadError> {
        let tables = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut recent = RecentSales::default();
        let mut revenue = std::collections::BTreeMap::<&str, i64>::new();
        for p in tables.purchases.values() {
            if p.status == ReservationStatus::Confirmed
                && p.purchased_at.is_some_and(|at| at >= since)
            {
                recent.tickets_sold += u64::from(p.quantity);
                *revenue.entry(&p.currency).or_default() += p.total_cents;
            }
        }
        recent.revenue = revenue
            .into_iter()
            .map(|(currency, amount_cents)| Revenue {
                currency: currency.to_owned(),
                amount_cents,
            })
            .collect();
        Ok(recent)
    }

    async fn history(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<HistoryEntry>, ReadError> {
        let tables = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut items: Vec<HistoryEntry> = tables
            .purchases
            .iter()
            .filter(|(_, p)| p.user_id == user)
            .filter_map(|(id, p)| {
                Some(HistoryEntry {
                    reservation_id: id.0,
                    event_id: p.event_id.0,
                    event_name: tables
                        .events
                        .get(&p.event_id)
                        .and_then(|e| e.name.clone())
                        .unwrap_or_default(),
                    section: p.section.clone(),
                    quantity: p.quantity,
                    total_cents: p.total_cents,
                    currency: p.currency.clone(),
                    status: p.status,
                    payment_id: p.payment_id,
                    purchased_at: p.purchased_at?,
                })
            })
            .collect();
        items.sort_by_key(|x| std::cmp::Reverse((x.purchased_at, x.reservation_id)));
        Ok(page.slice(items))
    }
}
