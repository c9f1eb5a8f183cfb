//! The contract both insights adapters keep, on the read models' fixture history delivered
//! as the bus delivers it: the expected sales and history, duplicates that change nothing,
//! and the same answers whatever order different streams arrive in; batches (`batches.rs`).

use super::{Insights, RecentSales, Revenue};
use crate::bus::consumer::Applied;
use crate::bus::envelope::{self, BusEvent};
use crate::bus::Topics;
use crate::domain::EventId;
use crate::paging::PageRequest;
use crate::projections::contract::fixture::*;
use crate::projections::contract::page_of;
use crate::projections::{SalesView, SectionSales};
use uuid::Uuid;

mod batches;

/// The fixture as a consumer receives it: events that do not open (the fixture's undecodable
/// ones) would be dead-lettered, so they are left out.
fn deliveries() -> Vec<BusEvent> {
    let topics = Topics::new("t.");
    history()
        .iter()
        .filter_map(|e| envelope::seal(&topics, e))
        .filter_map(|m| envelope::open(&m).ok())
        .collect()
}

async fn apply_all(insights: &dyn Insights, events: &[BusEvent]) -> Vec<Applied> {
    let mut out = Vec::new();
    for e in events {
        out.push(insights.apply(e).await.unwrap());
    }
    out
}

/// Sales count confirmations and take refunds back; history lists purchases, refunded too.
async fn answers_match_the_fixture(insights: &dyn Insights) {
    let sold = |section: &str, tickets, revenue| SectionSales {
        section: section.into(),
        tickets_sold: tickets,
        revenue_cents: revenue,
    };
    assert_eq!(
        insights.sales(SHOW).await.unwrap(),
        Some(SalesView {
            event_id: SHOW.0,
            tickets_sold: 4,
            revenue_cents: 12500,
            currency: "USD".into(),
            // In the order sections first sold, not by name.
            by_section: vec![sold("floor", 1, 5000), sold("balcony", 3, 7500)],
        })
    );
    assert_eq!(
        insights.sales(GALA).await.unwrap(),
        Some(SalesView {
            event_id: GALA.0,
            tickets_sold: 0,
            revenue_cents: 0,
            currency: "EUR".into(),
            by_section: vec![]
        })
    );
    assert_eq!(
        insights.sales(EventId(Uuid::from_u128(7))).await.unwrap(),
        None
    );
    let request = |page, page_size| PageRequest { page, page_size };
    let carol = vec![history_entry(R2, 18), history_entry(R5, 17)];
    assert_eq!(
        insights
            .history(CAROL, PageRequest::default())
            .await
            .unwrap(),
        page_of(carol.clone(), 1, 20, 2)
    );
    assert_eq!(
        insights.history(CAROL, request(2, 1)).await.unwrap(),
        page_of(carol[1..].to_vec(), 2, 1, 2)
    );
    assert_eq!(
        insights.history(CAROL, request(3, 1)).await.unwrap(),
        page_of(vec![], 3, 1, 2)
    );
    assert_eq!(
        insights
            .history(DAVE, PageRequest::default())
            .await
            .unwrap(),
        page_of(vec![history_entry(R6, 34)], 1, 20, 1)
    );
    assert_eq!(
        insights
            .history(ALICE, PageRequest::default())
            .await
            .unwrap(),
        page_of(vec![], 1, 20, 0)
    );

    // Recent sales: confirmed purchases from `since` on; R5's refund takes it back out.
    let usd = |amount_cents| Revenue {
        currency: "USD".into(),
        amount_cents,
    };
    let since = |minutes| async move { insights.sales_since(t(minutes)).await.unwrap() };
    assert_eq!(
        since(0).await,
        RecentSales {
            tickets_sold: 4,
            revenue: vec![usd(12500)]
        },
        "everything the sales view counts"
    );
    assert_eq!(
        since(18).await,
        RecentSales {
            tickets_sold: 4,
            revenue: vec![usd(12500)]
        },
        "a purchase confirmed at `since` counts"
    );
    assert_eq!(
        since(19).await,
        RecentSales {
            tickets_sold: 1,
            revenue: vec![usd(5000)]
        }
    );
    assert_eq!(since(35).await, RecentSales::default());
}

/// Runs the contract on two fresh adapters: `in_order` gets the log in position order,
/// `by_stream` gets it one stream at a time, streams in reverse order of appearance.
pub async fn run(in_order: &dyn Insights, by_stream: &dyn Insights) {
    let log = deliveries();
    assert!(
        apply_all(in_order, &log)
            .await
            .iter()
            .all(|a| *a == Applied::Applied),
        "a first delivery is applied"
    );
    answers_match_the_fixture(in_order).await;

    // Redelivery, of everything or of an older event of a stream, changes nothing.
    assert!(
        apply_all(in_order, &log)
            .await
            .iter()
            .all(|a| *a == Applied::Duplicate),
        "a redelivery is a duplicate"
    );
    answers_match_the_fixture(in_order).await;

    let mut streams: Vec<&str> = Vec::new();
    for e in &log {
        if !streams.contains(&e.stream_id.as_str()) {
            streams.push(&e.stream_id);
        }
    }
    let reordered: Vec<BusEvent> = streams
        .iter()
        .rev()
        .flat_map(|s| log.iter().filter(move |e| e.stream_id == *s).cloned())
        .collect();
    apply_all(by_stream, &reordered).await;
    answers_match_the_fixture(by_stream).await;
}

#[tokio::test]
async fn in_memory_insights_keep_the_contract() {
    run(
        &super::memory::MemoryInsights::new(),
        &super::memory::MemoryInsights::new(),
    )
    .await;
}

#[tokio::test]
async fn in_memory_insights_keep_the_batch_contract() {
    batches::run_batches(&super::memory::MemoryInsights::new()).await;
    batches::run_confirmations_in_one_run(&super::memory::MemoryInsights::new()).await;
    batches::run_consumer_batch(
        std::sync::Arc::new(super::memory::MemoryInsights::new()),
        std::sync::Arc::new(crate::dlq::memory::MemoryDeadLetters::new()),
    )
    .await;
}

#[tokio::test]
async fn postgres_insights_keep_the_batch_contract() {
    let pools = postgres_pools(3).await;
    batches::run_batches(&super::postgres::PostgresInsights::new(pools[0].clone())).await;
    batches::run_confirmations_in_one_run(&super::postgres::PostgresInsights::new(
        pools[2].clone(),
    ))
    .await;
    let events = crate::db::connect(
        &crate::db::testing::fresh_database().await,
        &crate::db::PoolSettings::default(),
    )
    .await
    .unwrap();
    crate::db::events_migrator().run(&events).await.unwrap();
    batches::run_consumer_batch(
        std::sync::Arc::new(super::postgres::PostgresInsights::new(pools[1].clone())),
        std::sync::Arc::new(crate::dlq::postgres::PostgresDeadLetters::new(events)),
    )
    .await;
}

/// Two members applying the same events at once on one database (a rebalance): each event
/// counts once. Run a few times: the interleavings differ from run to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_insights_count_an_event_once_when_two_members_apply_it() {
    for _ in 0..3 {
        let pool = postgres_pools(1).await.remove(0);
        batches::run_concurrent_members(
            std::sync::Arc::new(super::postgres::PostgresInsights::new(pool.clone())),
            std::sync::Arc::new(super::postgres::PostgresInsights::new(pool)),
        )
        .await;
    }
}

/// `n` fresh databases with the read models' tables.
async fn postgres_pools(n: usize) -> Vec<sqlx::PgPool> {
    let mut pools = Vec::new();
    for _ in 0..n {
        let url = crate::db::testing::fresh_database().await;
        let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
            .await
            .unwrap();
        crate::db::projections_migrator().run(&pool).await.unwrap();
        pools.push(pool);
    }
    pools
}

#[tokio::test]
async fn postgres_insights_keep_the_contract() {
    let mut adapters = Vec::new();
    for _ in 0..2 {
        let url = crate::db::testing::fresh_database().await;
        let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
            .await
            .unwrap();
        crate::db::projections_migrator().run(&pool).await.unwrap();
        adapters.push(super::postgres::PostgresInsights::new(pool));
    }
    run(&adapters[0], &adapters[1]).await;
}

/// A reservation event whose reservation was never placed is inconsistent: retrying will not
/// help, so it is refused without moving the stream's version.
#[tokio::test]
async fn an_event_of_an_unknown_reservation_is_refused() {
    let log = deliveries();
    let confirm = log
        .iter()
        .find(|e| e.event_type == "reservation.confirmed")
        .unwrap();
    let insights = super::memory::MemoryInsights::new();
    let err = insights.apply(confirm).await.unwrap_err();
    assert!(
        matches!(err, super::InsightsError::Inconsistent { .. }),
        "{err}"
    );
}

/// Version gaps: an event that skips versions of a stream applied already is refused, alone
/// or in a batch, and changes nothing; once an admin closes the missing event's dead letter
/// (`skip`), the stream goes on. A stream never seen may start at any version.
pub async fn run_gaps(insights: &dyn Insights) {
    let log = deliveries();
    let of = |stream: &str| -> Vec<BusEvent> {
        log.iter()
            .filter(|e| e.stream_id == stream)
            .cloned()
            .collect()
    };
    let streams: Vec<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
    let gapped = streams
        .iter()
        .map(|s| of(s))
        .find(|events| events.len() >= 3)
        .expect("a stream of three events");
    let late = streams
        .iter()
        .map(|s| of(s))
        .find(|events| {
            events.len() >= 2
                && events[0].stream_id != gapped[0].stream_id
                && !events[1].event_type.starts_with("reservation.")
        })
        .expect("another stream of two events");

    assert_eq!(insights.apply(&gapped[0]).await.unwrap(), Applied::Applied);
    for refused in [
        insights.apply(&gapped[2]).await.unwrap_err(),
        insights
            .apply_batch(&[gapped[0].clone(), gapped[2].clone()])
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&refused, super::InsightsError::Inconsistent { reason, .. }
                if reason.contains("version gap")),
            "{refused}"
        );
    }
    insights
        .skip(&gapped[1].stream_id, gapped[1].version)
        .await
        .unwrap();
    assert_eq!(insights.apply(&gapped[2]).await.unwrap(), Applied::Applied);
    assert_eq!(
        insights.apply(&gapped[1]).await.unwrap(),
        Applied::Duplicate,
        "a skipped version is never applied"
    );

    assert_eq!(
        insights.apply(&late[1]).await.unwrap(),
        Applied::Applied,
        "a stream never seen starts where its first delivery does"
    );
}

#[tokio::test]
async fn in_memory_insights_refuse_version_gaps() {
    run_gaps(&super::memory::MemoryInsights::new()).await;
}

#[tokio::test]
async fn postgres_insights_refuse_version_gaps() {
    let pools = postgres_pools(1).await;
    run_gaps(&super::postgres::PostgresInsights::new(pools[0].clone())).await;
}

/// On PostgreSQL a reservation stream's version is kept on its purchase row, never as a row
/// of `consumer_stream_versions` (one per reservation, the guard's largest cost in an
/// on-sale); a version kept there before the column existed (the row at 0) still guards.
#[tokio::test]
async fn postgres_insights_keep_reservation_versions_on_the_purchase_rows() {
    let pool = postgres_pools(1).await.remove(0);
    let insights = super::postgres::PostgresInsights::new(pool.clone());
    let log = deliveries();
    insights.apply_batch(&log).await.unwrap();
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM consumer_stream_versions WHERE stream_id LIKE 'reservation-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 0);
    // Every reservation event is in the fixture, so a statement that changes a purchase
    // without writing its version fails below.
    let covered: std::collections::BTreeSet<&str> = log
        .iter()
        .filter(|e| e.stream_id.starts_with("reservation-"))
        .map(|e| e.event_type.as_str())
        .collect();
    let catalogue: std::collections::BTreeSet<&str> = crate::domain::DomainEvent::CATALOGUE
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| name.starts_with("reservation."))
        .collect();
    assert_eq!(covered, catalogue);
    let mut last = std::collections::BTreeMap::new();
    for e in log
        .iter()
        .filter(|e| e.stream_id.starts_with("reservation-"))
    {
        last.insert(e.stream_id.clone(), i64::try_from(e.version).unwrap());
    }
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT reservation_id, version FROM insight_purchases")
            .fetch_all(&pool)
            .await
            .unwrap();
    let on_rows: std::collections::BTreeMap<String, i64> = rows
        .into_iter()
        .map(|(id, version)| (format!("reservation-{id}"), version))
        .collect();
    assert_eq!(on_rows, last);

    // A purchase applied before the column: its row at 0, its version in the old table.
    let stream = log
        .iter()
        .map(|e| &e.stream_id)
        .filter(|s| s.starts_with("reservation-"))
        .find(|s| log.iter().filter(|e| &e.stream_id == *s).count() >= 2)
        .expect("a reservation with two events");
    let events: Vec<BusEvent> = log
        .iter()
        .filter(|e| &e.stream_id == stream)
        .cloned()
        .collect();
    let pool = &postgres_pools(1).await.remove(0);
    let legacy = super::postgres::PostgresInsights::new(pool.clone());
    legacy.apply(&events[0]).await.unwrap();
    sqlx::query("UPDATE insight_purchases SET version = 0")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO consumer_stream_versions VALUES ('insights', $1, $2)")
        .bind(stream)
        .bind(i64::try_from(events[0].version).unwrap())
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(legacy.apply(&events[0]).await.unwrap(), Applied::Duplicate);
    assert_eq!(legacy.apply(&events[1]).await.unwrap(), Applied::Applied);
    let version: i64 = sqlx::query_scalar("SELECT version FROM insight_purchases")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(version, i64::try_from(events[1].version).unwrap());
}
