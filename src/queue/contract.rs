//! The contract both queue stores keep: settings round-trip and replace without resetting
//! admission; joining needs an enabled queue and gives one ticket per (event, user);
//! shuffled joins come before arrival-order joins; positions count those waiting ahead;
//! admission follows the rate from the moment the queue was made (or the shuffle window's
//! end), admits in rank order, never anyone twice, and at most one burst after an idle spell.

use super::*;
use chrono::{Duration, TimeZone};

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap() + Duration::seconds(seconds)
}

fn settings(event_id: Uuid, rate: u32, shuffle_until: Option<DateTime<Utc>>) -> QueueSettings {
    QueueSettings {
        event_id,
        enabled: true,
        admit_per_minute: rate,
        pass_ttl_seconds: 600,
        shuffle_until,
    }
}

pub async fn run(store: &dyn QueueStore) {
    settings_and_joins(store).await;
    concurrent_joins(store).await;
    admission_in_order(store).await;
    shuffled_before_arrivals(store).await;
}

async fn settings_and_joins(store: &dyn QueueStore) {
    let event = Uuid::new_v4();
    let user = Uuid::new_v4();
    assert_eq!(store.settings(event).await.unwrap(), None);
    assert_eq!(
        store.join(event, user, None, at(0)).await,
        Err(QueueError::NoQueue)
    );
    let mut s = settings(event, 60, None);
    s.enabled = false;
    store.put_settings(&s, at(0)).await.unwrap();
    assert_eq!(store.settings(event).await.unwrap(), Some(s.clone()));
    assert!(!store
        .enabled()
        .await
        .unwrap()
        .iter()
        .any(|q| q.event_id == event));
    assert_eq!(
        store.join(event, user, None, at(0)).await,
        Err(QueueError::NoQueue)
    );
    s.enabled = true;
    store.put_settings(&s, at(1)).await.unwrap();
    assert!(store.enabled().await.unwrap().contains(&s));
    let (first, created) = store.join(event, user, None, at(1)).await.unwrap();
    assert!(created);
    assert_eq!((first.event_id, first.user_id), (event, user));
    assert_eq!(first.admitted_at, None);
    let (again, created) = store.join(event, user, Some(5), at(2)).await.unwrap();
    assert!(!created);
    assert_eq!(again, first);
    assert_eq!(
        store.ticket(event, user).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.ticket(event, Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(store.position(&first).await.unwrap(), 1);
    let counts = store.counts(event).await.unwrap();
    assert_eq!(
        counts,
        QueueCounts {
            waiting: 1,
            admitted: 0
        }
    );
    assert_eq!(
        store.counts(Uuid::new_v4()).await.unwrap(),
        QueueCounts::default()
    );
}

/// Joins at once (the PostgreSQL store writes them in batches): one ticket per user, made
/// by exactly one of a user's joins, each in line once.
async fn concurrent_joins(store: &dyn QueueStore) {
    let event = Uuid::new_v4();
    store
        .put_settings(&settings(event, 60, None), at(0))
        .await
        .unwrap();
    let users: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let nowhere = Uuid::new_v4();
    let joins = users
        .iter()
        .chain(&users[..10])
        .map(|user| store.join(event, *user, None, at(1)))
        .chain(std::iter::once(store.join(nowhere, users[0], None, at(1))));
    let answers = all_at_once(joins.collect()).await;
    let (refused, answers) = answers.split_last().unwrap();
    assert_eq!(refused, &Err(QueueError::NoQueue));
    let mut made = std::collections::HashMap::new();
    for answer in answers {
        let (ticket, created) = answer.clone().unwrap();
        let first = made.entry(ticket.user_id).or_insert((ticket.clone(), 0));
        assert_eq!(first.0, ticket);
        first.1 += usize::from(created);
    }
    assert_eq!(made.len(), 40);
    assert!(made.values().all(|(_, created)| *created == 1));
    assert_eq!(store.counts(event).await.unwrap().waiting, 40);
}

async fn admission_in_order(store: &dyn QueueStore) {
    let event = Uuid::new_v4();
    // 60 per minute from 09:00:00: one a second, bursts of 5.
    store
        .put_settings(&settings(event, 60, None), at(0))
        .await
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..10 {
        let (t, _) = store
            .join(event, Uuid::new_v4(), None, at(0))
            .await
            .unwrap();
        assert_eq!(store.position(&t).await.unwrap(), i + 1);
        tickets.push(t);
    }
    assert!(store.advance(event, at(0)).await.unwrap().is_empty());
    let first = store.advance(event, at(2)).await.unwrap();
    assert_eq!(ids(&first), ids(&tickets[..2]));
    assert!(first.iter().all(|t| t.admitted_at == Some(at(2))));
    // Asked again at the same moment, or by another instance: nobody more.
    assert!(store.advance(event, at(2)).await.unwrap().is_empty());
    assert_eq!(store.position(&tickets[0]).await.unwrap(), 0);
    assert_eq!(store.position(&tickets[2]).await.unwrap(), 1);
    assert_eq!(store.position(&tickets[9]).await.unwrap(), 8);
    let line = store.waiting_line(event).await.unwrap();
    assert_eq!(line.admitted, 2);
    let order: Vec<(i64, Uuid)> = tickets[2..].iter().map(|t| (t.rank, t.id)).collect();
    assert_eq!(line.order, order);
    let since = |t: &Ticket, after: Option<&Ticket>| {
        let after = after.map(|a| (a.rank, a.id));
        let t = t.clone();
        async move { store.position_since(&t, after).await.unwrap() }
    };
    assert_eq!(
        since(&tickets[9], None).await,
        Since {
            admitted: 2,
            between: 8
        }
    );
    let between = since(&tickets[9], Some(&tickets[6])).await;
    assert_eq!(
        between,
        Since {
            admitted: 2,
            between: 3
        }
    );
    assert_eq!(since(&tickets[0], None).await.between, 0);
    assert_eq!(since(&tickets[5], Some(&tickets[7])).await.between, 0);
    assert_eq!(
        store.waiting_line(Uuid::new_v4()).await.unwrap(),
        WaitingLine::default()
    );
    // Changing the settings keeps the admission state.
    store
        .put_settings(&settings(event, 60, None), at(3))
        .await
        .unwrap();
    let second = store.advance(event, at(3)).await.unwrap();
    assert_eq!(ids(&second), ids(&tickets[2..3]));
    // An hour of nobody asking: one burst (5), not 3600.
    let burst = store.advance(event, at(3600)).await.unwrap();
    assert_eq!(ids(&burst), ids(&tickets[3..8]));
    let counts = store.counts(event).await.unwrap();
    assert_eq!(
        counts,
        QueueCounts {
            waiting: 2,
            admitted: 8
        }
    );
    let admitted = store
        .ticket(event, tickets[4].user_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admitted.admitted_at, Some(at(3600)));
    // Slots with nobody waiting are spent, not saved for later joiners.
    let rest = store.advance(event, at(3605)).await.unwrap();
    assert_eq!(ids(&rest), ids(&tickets[8..]));
    let late = store
        .join(event, Uuid::new_v4(), None, at(3605))
        .await
        .unwrap()
        .0;
    assert!(store.advance(event, at(3605)).await.unwrap().is_empty());
    assert_eq!(
        store.advance(event, at(3606)).await.unwrap(),
        vec![Ticket {
            admitted_at: Some(at(3606)),
            ..late
        }]
    );
    // A disabled queue admits nobody.
    let mut off = settings(event, 60, None);
    off.enabled = false;
    store.put_settings(&off, at(3606)).await.unwrap();
    store.put_settings(&off, at(3606)).await.unwrap();
    assert!(store.advance(event, at(4000)).await.unwrap().is_empty());
}

async fn shuffled_before_arrivals(store: &dyn QueueStore) {
    let event = Uuid::new_v4();
    store
        .put_settings(&settings(event, 60, Some(at(100))), at(0))
        .await
        .unwrap();
    let late = store
        .join(event, Uuid::new_v4(), None, at(1))
        .await
        .unwrap()
        .0;
    let drawn_high = store
        .join(event, Uuid::new_v4(), Some(900), at(2))
        .await
        .unwrap()
        .0;
    let drawn_low = store
        .join(event, Uuid::new_v4(), Some(7), at(3))
        .await
        .unwrap()
        .0;
    assert_eq!(store.position(&drawn_low).await.unwrap(), 1);
    assert_eq!(store.position(&drawn_high).await.unwrap(), 2);
    assert_eq!(store.position(&late).await.unwrap(), 3);
    // Nobody enters before the window ends.
    assert!(store.advance(event, at(99)).await.unwrap().is_empty());
    let admitted = store.advance(event, at(102)).await.unwrap();
    assert_eq!(ids(&admitted), vec![drawn_low.id, drawn_high.id]);
}

/// Runs the futures concurrently (polled together, as a crowd's requests are) and returns
/// their outputs in order.
async fn all_at_once<'a, T>(
    futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>>,
) -> Vec<T> {
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(future) = slot {
                if let std::task::Poll::Ready(value) = future.as_mut().poll(cx) {
                    *out = Some(value);
                    *slot = None;
                }
            }
        }
        match pending.iter().all(Option::is_none) {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

fn ids(tickets: &[Ticket]) -> Vec<Uuid> {
    tickets.iter().map(|t| t.id).collect()
}
