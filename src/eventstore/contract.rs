//! The contract every `EventStore` adapter passes. Each adapter's tests call `run_all`.

use super::{EventStore, Metadata, NewEvent, StoreError};
use crate::domain::EventId;

fn event(stream: &str, version: u64) -> NewEvent {
    NewEvent {
        stream_id: stream.to_owned(),
        version,
        event_type: "event.published",
        event_version: 1,
        payload: vec![version as u8],
        metadata: Metadata {
            correlation_id: Some("corr".into()),
            ..Metadata::default()
        },
    }
}

/// Runs every contract check against a fresh, empty store.
pub async fn run_all(store: &dyn EventStore) {
    assert_eq!(
        store.read_all(0, 1).await.unwrap().len(),
        0,
        "the contract needs an empty store"
    );
    appends_are_read_back_in_order(store).await;
    stale_versions_conflict_and_write_nothing(store).await;
    read_all_pages_without_gaps(store).await;
    malformed_appends_are_rejected(store).await;
}

async fn appends_are_read_back_in_order(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("event-{sale}");
    let last = store
        .append(sale, vec![event(&s, 1), event(&s, 2)])
        .await
        .unwrap();
    let read = store.read_sale(sale, 0).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].position, last);
    assert_eq!((read[0].version, read[1].version), (1, 2));
    assert_eq!(read[0].metadata.correlation_id.as_deref(), Some("corr"));
    let newer = store.read_sale(sale, read[0].position).await.unwrap();
    assert_eq!(newer.iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
    assert!(store
        .read_sale(EventId::random(), 0)
        .await
        .unwrap()
        .is_empty());
}

async fn stale_versions_conflict_and_write_nothing(store: &dyn EventStore) {
    let sale = EventId::random();
    let (a, b) = (format!("inventory-{sale}"), format!("reservation-{sale}"));
    store.append(sale, vec![event(&a, 1)]).await.unwrap();
    // The second stream is fine but the first is stale: nothing of the batch may land.
    let err = store
        .append(sale, vec![event(&b, 1), event(&a, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref stream_id, attempted: 1, actual: 1 } if *stream_id == a),
        "{err:?}"
    );
    assert_eq!(store.read_sale(sale, 0).await.unwrap().len(), 1);
    store
        .append(sale, vec![event(&b, 1), event(&a, 2)])
        .await
        .unwrap();
}

async fn read_all_pages_without_gaps(store: &dyn EventStore) {
    let mut head = store.subscribe_head();
    let sale = EventId::random();
    let s = format!("payment-{sale}");
    let last = store
        .append(sale, (1..=5).map(|v| event(&s, v)).collect())
        .await
        .unwrap();
    assert!(*head.borrow_and_update() >= last);
    let first = store.read_all(last - 5, 3).await.unwrap();
    let rest = store.read_all(first[2].position, 100).await.unwrap();
    let positions: Vec<u64> = first.iter().chain(&rest).map(|e| e.position).collect();
    assert_eq!(positions, ((last - 4)..=last).collect::<Vec<_>>());
}

async fn malformed_appends_are_rejected(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("event-{sale}");
    let gap = store.append(sale, vec![event(&s, 1), event(&s, 3)]).await;
    assert!(matches!(gap, Err(StoreError::InvalidAppend(_))));
    let zero = store.append(sale, vec![event(&s, 0)]).await;
    assert!(matches!(zero, Err(StoreError::InvalidAppend(_))));
}
