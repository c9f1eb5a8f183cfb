//! The contract both dead letter queues keep: entries round-trip, open entries block their
//! stream, status transitions are guarded, stats and listing agree.

use super::{Closing, DeadLetters, DlqError, DlqStatus, NewDeadLetter};
use crate::domain::UserId;
use crate::paging::PageRequest;
use chrono::{DateTime, Utc};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn letter(stream: &str, version: u64) -> NewDeadLetter {
    NewDeadLetter {
        consumer: "insights".into(),
        topic: "t.reservations".into(),
        partition: 2,
        offset: 7,
        message_key: stream.into(),
        stream_id: Some(stream.into()),
        stream_version: Some(version),
        event_type: Some("reservation.placed".into()),
        event_version: Some(9),
        payload: vec![1, 2, 3, 255],
        headers: vec![("correlation-id".into(), "c-1".into())],
        error: "unknown event reservation.placed version 9".into(),
        causes: vec!["outer".into(), "inner".into()],
        parked_behind: None,
        retry_count: 0,
        failed_at: at("2026-11-27T10:00:00Z"),
    }
}

pub async fn run(dlq: &dyn DeadLetters) {
    let page = PageRequest {
        page: 1,
        page_size: 10,
    };
    let first = dlq.park(letter("reservation-a", 2)).await.unwrap();
    let mut behind = letter("reservation-a", 3);
    behind.parked_behind = Some(first);
    let second = dlq.park(behind).await.unwrap();
    let other = dlq.park(letter("reservation-b", 1)).await.unwrap();

    // Round trip.
    let e = dlq.get(first).await.unwrap();
    assert_eq!(e.status, DlqStatus::Pending);
    assert_eq!(e.payload(), vec![1, 2, 3, 255]);
    assert!(e
        .headers()
        .contains(&("correlation-id".to_owned(), "c-1".to_owned())));
    assert_eq!(e.causes, vec!["outer", "inner"]);
    assert_eq!((e.partition, e.offset), (2, 7));
    assert_eq!(e.event_version, Some(9));
    assert_eq!(dlq.get(second).await.unwrap().parked_behind, Some(first));
    assert!(matches!(dlq.get(9999).await, Err(DlqError::NotFound(9999))));
    // Ids a client can send that no entry has (found by fuzzing: `i64::MIN - 1` overflowed).
    for id in [0, -1, i64::MIN, i64::MAX] {
        assert!(
            matches!(dlq.get(id).await, Err(DlqError::NotFound(_))),
            "{id}"
        );
    }

    // The oldest open entry blocks its stream, and only its stream.
    assert_eq!(
        dlq.open_entry_of("insights", "reservation-a")
            .await
            .unwrap(),
        Some(first)
    );
    assert_eq!(
        dlq.open_entry_of("other-consumer", "reservation-a")
            .await
            .unwrap(),
        None
    );
    // The same for a batch of streams, in one look-up: only streams with an open entry.
    assert_eq!(
        dlq.open_entries_of(
            "insights",
            &["reservation-a", "reservation-b", "reservation-z"]
        )
        .await
        .unwrap(),
        [
            ("reservation-a".to_owned(), first),
            ("reservation-b".to_owned(), other)
        ]
        .into_iter()
        .collect()
    );
    assert!(dlq
        .open_entries_of("other-consumer", &["reservation-a"])
        .await
        .unwrap()
        .is_empty());
    assert!(dlq
        .open_entries_of("insights", &[])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        dlq.claim(second).await.unwrap_err(),
        DlqError::Blocked {
            id: second,
            behind: first
        }
    );

    // A failed retry goes back to pending with the new error and one more retry.
    let claimed = dlq.claim(first).await.unwrap();
    assert_eq!(claimed.status, DlqStatus::Processing);
    assert!(matches!(
        dlq.claim(first).await,
        Err(DlqError::WrongStatus {
            status: DlqStatus::Processing,
            ..
        })
    ));
    let failed = dlq
        .retry_failed(
            first,
            "still broken".into(),
            vec![],
            at("2026-11-27T11:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, DlqStatus::Pending);
    assert_eq!(failed.retry_count, 1);
    assert_eq!(failed.error, "still broken");
    assert_eq!(failed.last_failed_at, at("2026-11-27T11:00:00Z"));
    assert_eq!(failed.first_failed_at, at("2026-11-27T10:00:00Z"));

    // Closing records who and when, once.
    let admin = UserId(uuid::Uuid::new_v4());
    dlq.claim(first).await.unwrap();
    let resolved = dlq
        .close(
            first,
            DlqStatus::Processing,
            Closing {
                status: DlqStatus::Resolved,
                by: Some(admin),
                notes: Some("retried".into()),
                at: at("2026-11-27T12:00:00Z"),
            },
        )
        .await
        .unwrap();
    assert_eq!(resolved.status, DlqStatus::Resolved);
    assert_eq!(resolved.resolved_by, Some(admin.0));
    assert_eq!(resolved.notes.as_deref(), Some("retried"));
    let discard = Closing {
        status: DlqStatus::Discarded,
        by: Some(admin),
        notes: Some("bad data".into()),
        at: at("2026-11-27T12:00:00Z"),
    };
    assert!(matches!(
        dlq.close(first, DlqStatus::Pending, discard.clone()).await,
        Err(DlqError::WrongStatus {
            status: DlqStatus::Resolved,
            ..
        })
    ));
    // With the first resolved, the stream's next entry is the open one and may be claimed.
    assert_eq!(
        dlq.open_entry_of("insights", "reservation-a")
            .await
            .unwrap(),
        Some(second)
    );
    dlq.close(other, DlqStatus::Pending, discard).await.unwrap();

    let stats = dlq.stats().await.unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.processing,
            stats.resolved,
            stats.discarded
        ),
        (1, 0, 1, 1)
    );
    let all = dlq.list(None, page).await.unwrap();
    assert_eq!(all.total_count, 3);
    assert_eq!(
        all.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![other, second, first],
        "newest first"
    );
    let pending = dlq.list(Some(DlqStatus::Pending), page).await.unwrap();
    assert_eq!(pending.items.len(), 1);
    assert_eq!(pending.items[0].id, second);
}

#[tokio::test]
async fn the_in_memory_dead_letter_queue_keeps_the_contract() {
    run(&super::memory::MemoryDeadLetters::new()).await;
}

#[tokio::test]
async fn the_postgres_dead_letter_queue_keeps_the_contract() {
    let url = crate::db::testing::fresh_database().await;
    let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
        .await
        .unwrap();
    crate::db::events_migrator().run(&pool).await.unwrap();
    run(&super::postgres::PostgresDeadLetters::new(pool)).await;
}
