//! The contract both dead letter queues keep: entries round-trip, open entries block their
//! stream, status transitions are guarded, stats and listing agree, abandoned claims return
//! to pending after the claim timeout, parking behind an entry races safely with its close, and
//! closed entries whose followers were never replayed are found.

use super::{Closing, DeadLetters, DlqError, DlqStatus, NewDeadLetter, Parked};
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
        dlq.claim(second, at("2026-11-27T10:30:00Z"))
            .await
            .unwrap_err(),
        DlqError::Blocked {
            id: second,
            behind: first
        }
    );

    // A failed retry goes back to pending with the new error and one more retry.
    let claimed = dlq.claim(first, at("2026-11-27T10:30:00Z")).await.unwrap();
    assert_eq!(claimed.status, DlqStatus::Processing);
    assert!(matches!(
        dlq.claim(first, at("2026-11-27T10:30:00Z")).await,
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
    dlq.claim(first, at("2026-11-27T11:30:00Z")).await.unwrap();
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

/// A claim older than the timeout returns to pending (its instance died mid-retry); a fresh
/// one stays; the entry can then be claimed and closed as usual.
pub async fn abandoned_claims_return_to_pending(dlq: &dyn DeadLetters) {
    let id = dlq.park(letter("reservation-claimed", 1)).await.unwrap();
    let fresh = dlq.park(letter("reservation-fresh", 1)).await.unwrap();
    let untouched = dlq.park(letter("reservation-pending", 1)).await.unwrap();
    dlq.claim(id, at("2026-11-27T10:00:00Z")).await.unwrap();
    dlq.claim(fresh, at("2026-11-27T10:10:00Z")).await.unwrap();
    assert_eq!(
        dlq.release_stale_claims(at("2026-11-27T10:00:00Z"))
            .await
            .unwrap(),
        Vec::<i64>::new(),
        "a claim exactly at the bound is not stale yet"
    );
    assert_eq!(
        dlq.release_stale_claims(at("2026-11-27T10:05:00Z"))
            .await
            .unwrap(),
        vec![id]
    );
    assert_eq!(dlq.get(id).await.unwrap().status, DlqStatus::Pending);
    assert_eq!(dlq.get(fresh).await.unwrap().status, DlqStatus::Processing);
    assert_eq!(dlq.get(untouched).await.unwrap().status, DlqStatus::Pending);
    assert_eq!(dlq.get(id).await.unwrap().retry_count, 0);
    // Released, it is claimed and closed like any pending entry; closed, it is never released.
    dlq.claim(id, at("2026-11-27T10:20:00Z")).await.unwrap();
    let closing = Closing {
        status: DlqStatus::Resolved,
        by: None,
        notes: None,
        at: at("2026-11-27T10:21:00Z"),
    };
    dlq.close(id, DlqStatus::Processing, closing).await.unwrap();
    assert_eq!(
        dlq.release_stale_claims(at("2026-11-28T00:00:00Z"))
            .await
            .unwrap(),
        vec![fresh]
    );
    assert_eq!(dlq.get(id).await.unwrap().status, DlqStatus::Resolved);
}

/// Parking behind an open entry: nothing is recorded while the stream is clear; otherwise the
/// entry waits behind the oldest open one. Raced against the head's close followed by the
/// look-up for followers (what `app::dead_letters` does), a parked entry is always found by
/// that look-up, never stranded behind a closed head.
pub async fn parking_races_safely_with_closing_the_head(dlq: &dyn DeadLetters) {
    assert_eq!(
        dlq.park_behind_open(letter("reservation-clear", 1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        dlq.open_entry_of("insights", "reservation-clear")
            .await
            .unwrap(),
        None,
        "nothing recorded for a clear stream"
    );
    let head = dlq.park(letter("reservation-blocked", 1)).await.unwrap();
    let Some(Parked { id, behind }) = dlq
        .park_behind_open(letter("reservation-blocked", 2))
        .await
        .unwrap()
    else {
        panic!("not parked behind an open head");
    };
    assert_eq!(behind, head);
    assert_eq!(dlq.get(id).await.unwrap().parked_behind, Some(head));
    assert_eq!(dlq.get(id).await.unwrap().status, DlqStatus::Pending);

    for round in 0..100 {
        let stream = format!("reservation-race-{round}");
        let head = dlq.park(letter(&stream, 1)).await.unwrap();
        let closing = Closing {
            status: DlqStatus::Discarded,
            by: None,
            notes: None,
            at: at("2026-11-27T12:00:00Z"),
        };
        let close_then_look = async {
            dlq.close(head, DlqStatus::Pending, closing).await.unwrap();
            dlq.open_entry_of("insights", &stream).await.unwrap()
        };
        let park = async { dlq.park_behind_open(letter(&stream, 2)).await.unwrap() };
        let (seen, parked) = tokio::join!(close_then_look, park);
        match parked {
            Some(p) => assert_eq!(
                seen,
                Some(p.id),
                "round {round}: entry {} parked behind {head}, which closed unseen",
                p.id
            ),
            None => assert_eq!(
                dlq.open_entry_of("insights", &stream).await.unwrap(),
                None,
                "round {round}"
            ),
        }
    }
}

/// A closed entry is a stranded head while the oldest open entry of its stream is parked
/// behind it and was never tried, once it closed before the bound; a follower that was tried
/// (and failed again) waits for an admin instead.
pub async fn stranded_heads_are_closed_entries_whose_followers_wait(dlq: &dyn DeadLetters) {
    let stream = "reservation-stranded";
    let stranded = |before: &'static str| async move {
        let heads = dlq.stranded_heads(at(before)).await.unwrap();
        heads
            .into_iter()
            .filter(|h| h.stream_id.as_deref() == Some(stream))
            .map(|h| h.id)
            .collect::<Vec<_>>()
    };
    let head = dlq.park(letter(stream, 1)).await.unwrap();
    let mut followers = Vec::new();
    for version in [2, 3] {
        let mut behind = letter(stream, version);
        behind.parked_behind = Some(head);
        followers.push(dlq.park(behind).await.unwrap());
    }
    assert_eq!(
        stranded("2027-01-01T00:00:00Z").await,
        Vec::<i64>::new(),
        "the head is open"
    );
    let closing = |minute: &str| Closing {
        status: DlqStatus::Resolved,
        by: None,
        notes: None,
        at: at(&format!("2026-11-27T10:{minute}:00Z")),
    };
    dlq.close(head, DlqStatus::Pending, closing("00"))
        .await
        .unwrap();
    assert_eq!(
        stranded("2026-11-27T10:00:00Z").await,
        Vec::<i64>::new(),
        "closed just now"
    );
    assert_eq!(stranded("2026-11-27T10:06:00Z").await, [head]);
    dlq.claim(followers[0], at("2026-11-27T10:06:00Z"))
        .await
        .unwrap();
    assert_eq!(
        stranded("2026-11-27T10:06:00Z").await,
        Vec::<i64>::new(),
        "being replayed"
    );
    dlq.close(followers[0], DlqStatus::Processing, closing("07"))
        .await
        .unwrap();
    assert_eq!(
        stranded("2026-11-27T10:06:00Z").await,
        [head],
        "the next one"
    );
    dlq.claim(followers[1], at("2026-11-27T10:08:00Z"))
        .await
        .unwrap();
    dlq.retry_failed(
        followers[1],
        "again".into(),
        Vec::new(),
        at("2026-11-27T10:08:00Z"),
    )
    .await
    .unwrap();
    assert_eq!(
        stranded("2026-11-27T10:06:00Z").await,
        Vec::<i64>::new(),
        "tried: an admin's turn"
    );
}

async fn run_all(dlq: &dyn DeadLetters) {
    run(dlq).await;
    abandoned_claims_return_to_pending(dlq).await;
    parking_races_safely_with_closing_the_head(dlq).await;
    stranded_heads_are_closed_entries_whose_followers_wait(dlq).await;
}

#[tokio::test]
async fn the_in_memory_dead_letter_queue_keeps_the_contract() {
    run_all(&super::memory::MemoryDeadLetters::new()).await;
}

#[tokio::test]
async fn the_postgres_dead_letter_queue_keeps_the_contract() {
    let url = crate::db::testing::fresh_database().await;
    let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
        .await
        .unwrap();
    crate::db::events_migrator().run(&pool).await.unwrap();
    run_all(&super::postgres::PostgresDeadLetters::new(pool)).await;
}
