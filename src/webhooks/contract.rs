//! The contract both webhook stores keep: endpoints round-trip with their secrets, listing
//! is per owner, rotation keeps the old secret with its deadline, subscriptions filter by
//! owner, type and event, deliveries are unique per (endpoint, message id), a delivery is
//! held by one sender at a time and only its holder records attempts, attempts and
//! redelivery update the log, and deleting an endpoint deletes its deliveries.

use super::*;
use chrono::TimeZone;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 9, minute, 0).unwrap()
}

fn endpoint(owner: Uuid, types: &[&str], event: Option<Uuid>, minute: u32) -> Endpoint {
    Endpoint {
        id: Uuid::new_v4(),
        owner_id: owner,
        url: "https://example.com/hook".into(),
        event_types: types.iter().map(|t| t.to_string()).collect(),
        event_id: event,
        description: Some("crm".into()),
        status: EndpointStatus::Active,
        secret: signing::new_secret(),
        previous_secret: None,
        created_at: at(minute),
        from_position: u64::from(minute) * 1000,
    }
}

fn delivery(endpoint: Uuid, message: &str) -> Delivery {
    Delivery {
        id: Uuid::new_v4(),
        endpoint_id: endpoint,
        message_id: message.into(),
        event_type: "reservation.confirmed".into(),
        body: r#"{"type":"reservation.confirmed"}"#.into(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_status_code: None,
        next_attempt_at: Some(at(1)),
        created_at: at(1),
    }
}

const PAGE: PageRequest = PageRequest {
    page: 1,
    page_size: 50,
};

pub async fn run(store: &dyn WebhookStore) {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let event = Uuid::new_v4();
    let all = endpoint(alice, &["*"], None, 1);
    let only_confirmed = endpoint(alice, &["reservation.confirmed"], Some(event), 2);
    let bobs = endpoint(bob, &["*"], None, 3);
    for e in [&all, &only_confirmed, &bobs] {
        store.create(e).await.unwrap();
    }
    assert_eq!(store.get(all.id).await.unwrap().as_ref(), Some(&all));
    assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
    let listed = store.list(Some(alice), PAGE).await.unwrap();
    assert_eq!(listed.items, vec![all.clone(), only_confirmed.clone()]);
    assert_eq!(listed.total_count, 2);
    assert_eq!(store.list(None, PAGE).await.unwrap().total_count, 3);

    // Subscriptions: owner, type and event (the store gives the owners' endpoints, the
    // fan-out filters them with `Endpoint::wants`).
    let ids = |v: Vec<Endpoint>| {
        v.into_iter()
            .map(|e| e.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let wanted = subscribed(store, alice, event, "reservation.confirmed").await;
    assert_eq!(ids(wanted), [all.id, only_confirmed.id].into());
    let other_event = subscribed(store, alice, Uuid::new_v4(), "reservation.confirmed").await;
    assert_eq!(ids(other_event), [all.id].into());
    let other_type = subscribed(store, alice, event, "payment.captured").await;
    assert_eq!(ids(other_type), [all.id].into());
    let both = store.subscribers(&[alice, bob]).await.unwrap();
    assert_eq!(
        both.iter().map(|e| e.id).collect::<Vec<_>>(),
        {
            let mut by_id = vec![all.id, only_confirmed.id, bobs.id];
            by_id.sort();
            by_id
        },
        "every endpoint of the owners, by id"
    );
    assert!(store
        .subscribers(&[Uuid::new_v4()])
        .await
        .unwrap()
        .is_empty());

    // Rotation keeps the old secret until its deadline.
    let rotated = store
        .rotate(all.id, "whsec_new", at(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.secret, "whsec_new");
    assert_eq!(rotated.previous_secret, Some((all.secret.clone(), at(30))));
    assert_eq!(store.get(all.id).await.unwrap(), Some(rotated));
    assert_eq!(
        store.rotate(Uuid::new_v4(), "x", at(30)).await.unwrap(),
        None
    );

    // Deliveries: unique per (endpoint, message), pending oldest first, log newest first.
    let first = delivery(all.id, "msg_1");
    let second = delivery(all.id, "msg_2");
    let stored = store
        .enqueue(&[first.clone(), second.clone()])
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    let again = store.enqueue(&[delivery(all.id, "msg_1")]).await.unwrap();
    assert!(again.is_empty(), "a message id is stored once per endpoint");
    assert_eq!(
        store
            .enqueue(&[delivery(bobs.id, "msg_1")])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.pending(all.id, 10, at(0)).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        store.pending(all.id, 1, at(0)).await.unwrap(),
        vec![first.clone()]
    );
    // Held by the instance that sends it: nobody else gets it until the hold passes.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(store.claim(first.id, a, at(0), at(2)).await.unwrap());
    assert!(!store.claim(first.id, b, at(1), at(3)).await.unwrap());
    assert!(
        store.claim(first.id, a, at(1), at(2)).await.unwrap(),
        "its holder claims it again before a retry"
    );
    assert_eq!(
        store.pending(all.id, 10, at(1)).await.unwrap(),
        vec![second.clone()]
    );
    assert_eq!(
        store.pending(all.id, 10, at(2)).await.unwrap(),
        vec![first.clone(), second.clone()],
        "a holder that died lets go"
    );
    assert_eq!(
        ids_of(store.endpoints_with_pending().await.unwrap()),
        [all.id, bobs.id].into()
    );
    assert_eq!(store.pending_count().await.unwrap(), 3);

    // The hold ran out and another instance took it: the first holder neither claims it
    // again nor records an attempt over the new holder's.
    assert!(store.claim(first.id, b, at(2), at(4)).await.unwrap());
    assert!(!store.claim(first.id, a, at(3), at(5)).await.unwrap());
    let retry = Attempt {
        status: DeliveryStatus::Pending,
        status_code: Some(500),
        next_attempt_at: Some(at(5)),
        held_until: Some(at(6)),
    };
    assert!(!store.record_attempt(first.id, a, retry).await.unwrap());
    assert!(store.record_attempt(first.id, b, retry).await.unwrap());
    assert_eq!(
        store.pending(all.id, 10, at(5)).await.unwrap(),
        vec![second.clone()],
        "held through its next attempt"
    );
    let failed = Attempt {
        status: DeliveryStatus::Failed,
        status_code: Some(503),
        next_attempt_at: None,
        held_until: None,
    };
    // A settled delivery is never recorded again, even by a holder still named on it.
    let settled = Attempt {
        held_until: Some(at(9)),
        ..failed
    };
    assert!(store.record_attempt(first.id, b, settled).await.unwrap());
    assert!(!store.record_attempt(first.id, b, failed).await.unwrap());
    let log = store.deliveries(all.id, PAGE).await.unwrap();
    assert_eq!(log.total_count, 2);
    assert_eq!(log.items[0].id, second.id, "newest first");
    let logged = &log.items[1];
    assert_eq!(
        (logged.status, logged.attempts, logged.last_status_code),
        (DeliveryStatus::Failed, 2, Some(503))
    );
    assert_eq!(
        store.pending(all.id, 10, at(0)).await.unwrap(),
        vec![second.clone()]
    );
    assert!(
        !store.claim(first.id, b, at(9), at(10)).await.unwrap(),
        "not pending"
    );

    let redelivered = store.redeliver(all.id, first.id).await.unwrap().unwrap();
    assert_eq!(
        (redelivered.status, redelivered.attempts),
        (DeliveryStatus::Pending, 2)
    );
    assert_eq!(redelivered.message_id, "msg_1");
    assert!(
        store.claim(first.id, a, at(0), at(1)).await.unwrap(),
        "a redelivery is nobody's"
    );
    store.redeliver(all.id, first.id).await.unwrap().unwrap();
    assert!(
        !store.record_attempt(first.id, a, failed).await.unwrap(),
        "a redelivery lets go of the hold: the holder's late answer does not settle it"
    );
    let logged = store.deliveries(all.id, PAGE).await.unwrap().items[1].clone();
    assert_eq!(
        (logged.status, logged.attempts),
        (DeliveryStatus::Pending, 2)
    );
    assert_eq!(
        store.redeliver(bobs.id, first.id).await.unwrap(),
        None,
        "another endpoint's delivery"
    );

    // Status, deletion.
    store
        .set_status(bobs.id, EndpointStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(
        store.get(bobs.id).await.unwrap().unwrap().status,
        EndpointStatus::Disabled
    );
    assert!(
        store.subscribers(&[bob]).await.unwrap().is_empty(),
        "a disabled endpoint is no subscriber"
    );
    assert!(store.delete(all.id).await.unwrap());
    assert!(!store.delete(all.id).await.unwrap());
    assert_eq!(store.deliveries(all.id, PAGE).await.unwrap().total_count, 0);
    assert!(
        store
            .enqueue(&[delivery(all.id, "msg_9")])
            .await
            .unwrap()
            .is_empty(),
        "no deliveries to a deleted endpoint"
    );
    assert_eq!(store.pending_count().await.unwrap(), 1);
}

/// The endpoints of `owner` that want `event_type` of `event`, as the fan-out picks them.
async fn subscribed(
    store: &dyn WebhookStore,
    owner: Uuid,
    event: Uuid,
    event_type: &str,
) -> Vec<Endpoint> {
    let mut found = store.subscribers(&[owner]).await.unwrap();
    found.retain(|e| e.wants(event_type, event));
    found
}

fn ids_of(v: Vec<Uuid>) -> std::collections::BTreeSet<Uuid> {
    v.into_iter().collect()
}
