//! The contract every `AuditStore` adapter passes. Each adapter's tests call `run_all`.
//! Every check uses its own fresh action names, so the store may be shared and non-empty.

use super::{AuditFilter, AuditRecord, AuditResult, AuditStore};
use crate::paging::PageRequest;
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// Whole-second timestamps, so adapters that store microseconds compare equal.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn all(page_size: u32) -> PageRequest {
    PageRequest { page: 1, page_size }
}

/// Runs every contract check against the store.
pub async fn run_all(store: &dyn AuditStore) {
    records_come_back_whole_and_newest_first(store).await;
    filters_select_by_actor_action_and_resource(store).await;
    pages_cut_the_ordered_list(store).await;
    an_empty_batch_is_a_no_op(store).await;
    store.ping().await.unwrap();
    assert!(!store.kind().is_empty());
}

fn fresh_action() -> String {
    format!("test.{}", Uuid::new_v4().simple())
}

async fn records_come_back_whole_and_newest_first(store: &dyn AuditStore) {
    let action = fresh_action();
    let actor = Uuid::new_v4();
    let older = AuditRecord {
        correlation_id: Some("corr-1".into()),
        client_ip: Some("192.0.2.7".into()),
        user_agent: Some("curl/8".into()),
        ..AuditRecord::new(at(1), &action, "payment", AuditResult::Success)
            .actor(Some(actor), "customer")
            .resource_id("p-1")
            .details(serde_json::json!({"reason": "cannot come", "amount_cents": 5000}))
    };
    let newer = AuditRecord::new(at(2), &action, "user", AuditResult::Failure)
        .actor(None, "nobody@example.com");
    // Two records of one instant: the one inserted last comes first.
    let tie_first = AuditRecord::new(at(3), &action, "event", AuditResult::Denied);
    let tie_second = AuditRecord::new(at(3), &action, "event", AuditResult::Success);
    store
        .insert(&[older.clone(), newer.clone(), tie_first.clone()])
        .await
        .unwrap();
    store
        .insert(std::slice::from_ref(&tie_second))
        .await
        .unwrap();
    let filter = AuditFilter {
        action: Some(action),
        ..AuditFilter::default()
    };
    let page = store.list(&filter, all(10)).await.unwrap();
    assert_eq!(page.items, vec![tie_second, tie_first, newer, older]);
    assert_eq!((page.total_count, page.total_pages), (4, 1));
}

async fn filters_select_by_actor_action_and_resource(store: &dyn AuditStore) {
    let (a, b) = (fresh_action(), fresh_action());
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let records = vec![
        AuditRecord::new(at(10), &a, "event", AuditResult::Success)
            .actor(Some(ann), "organizer")
            .resource_id("e-1"),
        AuditRecord::new(at(11), &a, "event", AuditResult::Denied)
            .actor(Some(bob), "customer")
            .resource_id("e-2"),
        AuditRecord::new(at(12), &b, "payment", AuditResult::Success)
            .actor(Some(ann), "organizer")
            .resource_id("e-1"),
    ];
    store.insert(&records).await.unwrap();
    let ids = |filter: AuditFilter| async move {
        let page = store.list(&filter, all(100)).await.unwrap();
        page.items.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(AuditFilter {
            actor_id: Some(ann),
            ..AuditFilter::default()
        })
        .await,
        vec![records[2].id, records[0].id]
    );
    assert_eq!(
        ids(AuditFilter {
            action: Some(a.clone()),
            resource_id: Some("e-2".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![records[1].id]
    );
    assert_eq!(
        ids(AuditFilter {
            actor_id: Some(ann),
            resource_type: Some("event".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![records[0].id]
    );
    assert!(ids(AuditFilter {
        action: Some(a),
        resource_type: Some("payment".into()),
        ..AuditFilter::default()
    })
    .await
    .is_empty());
}

async fn pages_cut_the_ordered_list(store: &dyn AuditStore) {
    let action = fresh_action();
    let records: Vec<_> = (0..5)
        .map(|i| AuditRecord::new(at(100 + i), &action, "event", AuditResult::Success))
        .collect();
    store.insert(&records).await.unwrap();
    let filter = AuditFilter {
        action: Some(action),
        ..AuditFilter::default()
    };
    let second = store
        .list(
            &filter,
            PageRequest {
                page: 2,
                page_size: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![records[2].id, records[1].id]
    );
    assert_eq!((second.total_count, second.total_pages), (5, 3));
    let past_the_end = store
        .list(
            &filter,
            PageRequest {
                page: 4,
                page_size: 2,
            },
        )
        .await
        .unwrap();
    assert!(past_the_end.items.is_empty());
    assert_eq!(past_the_end.total_count, 5);
}

async fn an_empty_batch_is_a_no_op(store: &dyn AuditStore) {
    store.insert(&[]).await.unwrap();
}
