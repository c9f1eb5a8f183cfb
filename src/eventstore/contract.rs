//! The contract every `EventStore` adapter passes. Each adapter's tests call `run_all`.

use super::{EventStore, Known, Metadata, NewEvent, RecordedEvent, StoreError, TurnMode, Turned};
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
    read_sale_pages_without_gaps(store).await;
    a_stream_s_first_event_is_found_by_its_id(store).await;
    malformed_appends_are_rejected(store).await;
    a_turn_reads_what_is_new_and_appends_what_it_decides(store).await;
    concurrent_turns_on_one_sale_queue_instead_of_conflicting(store).await;
    a_stale_turn_still_conflicts_and_writes_nothing(store).await;
    an_optimistic_turn_appends_only_on_the_head_it_knows(store).await;
    a_first_optimistic_turn_on_a_new_sale_wins_once(store).await;
}

/// A turn's events as `take_turn` answers them: (last position, what the writer now knows).
fn done(turned: Result<Turned, StoreError>) -> (Option<u64>, Known) {
    match turned {
        Ok(Turned::Done { last, known }) => (last, known),
        other => panic!("expected a finished turn, got {other:?}"),
    }
}

async fn appends_are_read_back_in_order(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("event-{sale}");
    let last = store
        .append(sale, vec![event(&s, 1), event(&s, 2)])
        .await
        .unwrap();
    assert_eq!(
        store.head().await.unwrap(),
        last,
        "the head is the last append"
    );
    let read = store.read_sale(sale, 0, usize::MAX).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].position, last);
    assert_eq!((read[0].version, read[1].version), (1, 2));
    assert_eq!(read[0].metadata.correlation_id.as_deref(), Some("corr"));
    let newer = store
        .read_sale(sale, read[0].position, usize::MAX)
        .await
        .unwrap();
    assert_eq!(newer.iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
    assert!(store
        .read_sale(EventId::random(), 0, usize::MAX)
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
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 1);
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

/// A sale read a page at a time, while another sale's events are interleaved with it, gives
/// every event of the sale once, in order.
async fn read_sale_pages_without_gaps(store: &dyn EventStore) {
    let (sale, other) = (EventId::random(), EventId::random());
    let (s, o) = (format!("payment-{sale}"), format!("payment-{other}"));
    for v in 1..=5 {
        store.append(sale, vec![event(&s, v)]).await.unwrap();
        store.append(other, vec![event(&o, v)]).await.unwrap();
    }
    let mut versions = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_sale(sale, after, 2).await.unwrap();
        assert!(page.len() <= 2, "a page holds at most its limit");
        versions.extend(page.iter().map(|e| e.version));
        match page.last() {
            Some(last) => after = last.position,
            None => break,
        }
    }
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

/// The first event of a stream is found by the stream's id, with its metadata, however many
/// followed it and whatever else the sale appended in between; an unknown stream has none.
async fn a_stream_s_first_event_is_found_by_its_id(store: &dyn EventStore) {
    let sale = EventId::random();
    let (r, i) = (format!("reservation-{sale}"), format!("inventory-{sale}"));
    store.append(sale, vec![event(&i, 1)]).await.unwrap();
    let mut first = event(&r, 1);
    first.metadata.request_fingerprint = Some("ab".repeat(32));
    let placed = store
        .append(sale, vec![event(&i, 2), first, event(&r, 2)])
        .await
        .unwrap();
    store.append(sale, vec![event(&r, 3)]).await.unwrap();
    let found = store.first_of_stream(&r).await.unwrap().expect("found");
    assert_eq!(
        (found.stream_id.as_str(), found.version, found.position),
        (r.as_str(), 1, placed - 1)
    );
    assert_eq!(found.metadata.request_fingerprint, Some("ab".repeat(32)));
    assert_eq!(found.metadata.correlation_id.as_deref(), Some("corr"));
    let unknown = format!("reservation-{}", EventId::random());
    assert!(store.first_of_stream(&unknown).await.unwrap().is_none());
}

async fn malformed_appends_are_rejected(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("event-{sale}");
    let gap = store.append(sale, vec![event(&s, 1), event(&s, 3)]).await;
    assert!(matches!(gap, Err(StoreError::InvalidAppend(_))));
    let zero = store.append(sale, vec![event(&s, 0)]).await;
    assert!(matches!(zero, Err(StoreError::InvalidAppend(_))));
}

async fn a_turn_reads_what_is_new_and_appends_what_it_decides(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("inventory-{sale}");
    let first = store
        .append(sale, vec![event(&s, 1), event(&s, 2)])
        .await
        .unwrap();
    let mut given = Vec::new();
    let known = Known {
        position: first - 1,
        events: 1,
    };
    let (appended, known) = done(
        store
            .take_turn(sale, known, TurnMode::Locked, &mut |fresh| {
                given = fresh.iter().map(|e| e.version).collect();
                assert_eq!(fresh[0].payload, event(&s, 2).payload, "payload intact");
                assert_eq!(fresh[0].metadata.correlation_id.as_deref(), Some("corr"));
                vec![event(&s, 3)]
            })
            .await,
    );
    let appended = appended.expect("the turn appended");
    assert_eq!(
        given,
        [2],
        "the turn is given the events after `after` only"
    );
    assert_eq!(
        known,
        Known {
            position: appended,
            events: 3
        },
        "the writer knows its own append"
    );
    let read = store.read_sale(sale, 0, usize::MAX).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(read[2].position, appended);
    // A writer that knows the whole sale is given nothing.
    let (nothing, same) = done(
        store
            .take_turn(sale, known, TurnMode::Locked, &mut |fresh| {
                assert!(fresh.is_empty(), "{fresh:?}");
                Vec::new()
            })
            .await,
    );
    assert_eq!((nothing, same), (None, known));
    // Deciding nothing writes nothing.
    let (nothing, hydrated) = done(
        store
            .take_turn(sale, Known::default(), TurnMode::Locked, &mut |_| {
                Vec::new()
            })
            .await,
    );
    assert_eq!((nothing, hydrated), (None, known));
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 3);
    // Malformed decisions are refused like malformed appends.
    let gap = store
        .take_turn(sale, known, TurnMode::Locked, &mut |_| {
            vec![event(&s, 4), event(&s, 6)]
        })
        .await;
    assert!(matches!(gap, Err(StoreError::InvalidAppend(_))), "{gap:?}");
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 3);
}

/// One turn: reads the whole sale and appends the inventory's next version.
async fn next_version_in_a_turn(store: &dyn EventStore, sale: EventId) -> Result<u64, StoreError> {
    let stream = format!("inventory-{sale}");
    let decide = |fresh: &[std::sync::Arc<RecordedEvent>]| {
        let version = fresh.iter().filter(|e| e.stream_id == stream).count() as u64 + 1;
        vec![event(&stream, version)]
    };
    let mut decide = decide;
    match store
        .take_turn(sale, Known::default(), TurnMode::Locked, &mut decide)
        .await?
    {
        Turned::Done { last, .. } => Ok(last.unwrap_or(0)),
        Turned::Stale => Err(StoreError::Unavailable(
            "a locked turn is never stale".into(),
        )),
    }
}

async fn concurrent_turns_on_one_sale_queue_instead_of_conflicting(store: &dyn EventStore) {
    let sale = EventId::random();
    let (a, b, c, d) = tokio::join!(
        next_version_in_a_turn(store, sale),
        next_version_in_a_turn(store, sale),
        next_version_in_a_turn(store, sale),
        next_version_in_a_turn(store, sale),
    );
    for result in [a, b, c, d] {
        assert!(result.is_ok(), "a turn failed: {result:?}");
    }
    let versions: Vec<u64> = store
        .read_sale(sale, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4], "each turn saw the one before");
}

async fn a_stale_turn_still_conflicts_and_writes_nothing(store: &dyn EventStore) {
    let sale = EventId::random();
    let (a, b) = (format!("inventory-{sale}"), format!("reservation-{sale}"));
    store.append(sale, vec![event(&a, 1)]).await.unwrap();
    // A decision that ignores what it was given (as a writer that skips turns would).
    let err = store
        .take_turn(sale, Known::default(), TurnMode::Locked, &mut |_| {
            vec![event(&b, 1), event(&a, 1)]
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref stream_id, attempted: 1, actual: 1 } if *stream_id == a),
        "{err:?}"
    );
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 1);
}

/// An optimistic turn decides on nothing new and appends only while the sale's head is what
/// the writer knows; once another writer appended, it is stale (also when it decided nothing)
/// and writes nothing, and a locked turn then hands over exactly what was missed.
async fn an_optimistic_turn_appends_only_on_the_head_it_knows(store: &dyn EventStore) {
    let sale = EventId::random();
    let (a, b) = (format!("inventory-{sale}"), format!("reservation-{sale}"));
    let first = store.append(sale, vec![event(&a, 1)]).await.unwrap();
    let known = Known {
        position: first,
        events: 1,
    };
    let (last, known) = done(
        store
            .take_turn(sale, known, TurnMode::Optimistic, &mut |fresh| {
                assert!(fresh.is_empty(), "{fresh:?}");
                vec![event(&a, 2), event(&b, 1)]
            })
            .await,
    );
    let last = last.expect("the optimistic turn appended");
    assert_eq!(
        known,
        Known {
            position: last,
            events: 3
        }
    );
    let (nothing, same) = done(
        store
            .take_turn(sale, known, TurnMode::Optimistic, &mut |_| Vec::new())
            .await,
    );
    assert_eq!((nothing, same), (None, known), "a current refusal stands");

    // Another writer appends to the sale.
    let c = format!("payment-{sale}");
    let foreign = store.append(sale, vec![event(&c, 1)]).await.unwrap();
    let stale = store
        .take_turn(sale, known, TurnMode::Optimistic, &mut |_| {
            vec![event(&a, 3)]
        })
        .await;
    assert_eq!(stale, Ok(Turned::Stale));
    let stale = store
        .take_turn(sale, known, TurnMode::Optimistic, &mut |_| Vec::new())
        .await;
    assert_eq!(stale, Ok(Turned::Stale), "a refusal on a stale state too");
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 4);

    let mut given = Vec::new();
    let (last, known) = done(
        store
            .take_turn(sale, known, TurnMode::Locked, &mut |fresh| {
                given = fresh.iter().map(|e| e.position).collect();
                vec![event(&a, 3)]
            })
            .await,
    );
    assert_eq!(given, [foreign], "exactly what the other writer appended");
    assert_eq!(
        known,
        Known {
            position: last.expect("appended"),
            events: 5
        }
    );
}

/// Two writers' first optimistic turns on a sale nothing was appended to: one appends, the
/// other is stale.
async fn a_first_optimistic_turn_on_a_new_sale_wins_once(store: &dyn EventStore) {
    let sale = EventId::random();
    let s = format!("event-{sale}");
    let (last, known) = done(
        store
            .take_turn(sale, Known::default(), TurnMode::Optimistic, &mut |_| {
                vec![event(&s, 1)]
            })
            .await,
    );
    assert_eq!(known.events, 1);
    assert_eq!(known.position, last.expect("appended"));
    let second = store
        .take_turn(sale, Known::default(), TurnMode::Optimistic, &mut |_| {
            vec![event(&s, 1)]
        })
        .await;
    assert_eq!(second, Ok(Turned::Stale));
    assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 1);
}
