//! Events: creation with `Location` and `ETag`, optimistic concurrency on updates (`If-Match`
//! or `expected_version`), capacity that cannot drop below sold and held seats, list
//! visibility and pagination, and the sales lifecycle.

use super::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

async fn step(app: &TestApp, user: &User, event: Uuid, action: &str) -> Answer {
    app.call(
        Method::POST,
        &format!("/api/events/{event}/{action}"),
        Some(&user.token),
        None,
    )
    .await
}

async fn put(
    app: &TestApp,
    user: &User,
    event: Uuid,
    body: Value,
    if_match: Option<&str>,
) -> Answer {
    let headers: Vec<(&str, &str)> = if_match.map(|v| ("if-match", v)).into_iter().collect();
    app.call_with(
        Method::PUT,
        &format!("/api/events/{event}"),
        Some(&user.token),
        Some(body),
        &headers,
    )
    .await
}

/// The ids of a list answer's `items`, in order.
fn ids(answer: &Answer) -> Vec<Uuid> {
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    answer.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {:#}", answer.body))
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

/// Creating an event answers 201 with the draft, its `Location` and `ETag: "1"`.
#[tokio::test]
async fn creating_an_event_answers_201_with_location_and_the_first_etag() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;

    let created = app
        .post(
            "/api/events",
            Some(&organizer.token),
            TestApp::event_body(50),
        )
        .await;

    assert_eq!(created.status, 201, "{:#}", created.body);
    let id = created.id("id");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/events/{id}").as_str())
    );
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["status"], "draft");
    assert_eq!(created.body["owner_id"], organizer.id.to_string());
    assert_eq!(created.body["currency"], "USD");
    assert_eq!(created.body["sections"][0]["capacity"], 50);
    assert_eq!(created.body["sections"][0]["available"], 50);

    let read = app
        .get(&format!("/api/events/{id}"), Some(&organizer.token))
        .await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.header("etag"), Some("\"1\""));
    assert_eq!(read.body["name"], "Test Concert");
}

/// Every read of an event carries the `ETag` of its current version, which moves on each change.
#[tokio::test]
async fn reading_an_event_returns_the_etag_of_its_current_version() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let id = app.draft_event(&organizer, 10).await;
    assert_eq!(step(&app, &organizer, id, "publish").await.status, 200);

    let read = app.get(&format!("/api/events/{id}"), None).await;

    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.header("etag"), Some("\"2\""));
    assert_eq!(read.body["version"], 2);
}

/// An update with `If-Match` of the current `ETag` succeeds and answers the next `ETag`.
#[tokio::test]
async fn an_update_with_the_current_etag_succeeds_and_moves_the_etag() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let id = app.draft_event(&organizer, 10).await;
    let etag = app
        .get(&format!("/api/events/{id}"), Some(&organizer.token))
        .await
        .header("etag")
        .map(str::to_owned)
        .expect("an ETag");

    let updated = put(
        &app,
        &organizer,
        id,
        json!({"name": "Renamed"}),
        Some(&etag),
    )
    .await;

    assert_eq!(updated.status, 200, "{:#}", updated.body);
    assert_eq!(updated.header("etag"), Some("\"2\""));
    assert_eq!(updated.body["name"], "Renamed");
    assert_eq!(updated.body["version"], 2);
    let read = app
        .get(&format!("/api/events/{id}"), Some(&organizer.token))
        .await;
    assert_eq!(read.body["name"], "Renamed");
    assert_eq!(read.header("etag"), Some("\"2\""));
}

/// A stale `If-Match` is a 409 `version-mismatch` naming both versions, changing nothing.
#[tokio::test]
async fn an_update_with_a_stale_etag_is_a_409_version_mismatch() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let id = app.draft_event(&organizer, 10).await;
    let first = put(
        &app,
        &organizer,
        id,
        json!({"name": "First"}),
        Some("\"1\""),
    )
    .await;
    assert_eq!(first.status, 200, "{:#}", first.body);

    let stale = put(
        &app,
        &organizer,
        id,
        json!({"name": "Second"}),
        Some("\"1\""),
    )
    .await;

    stale.assert_problem(409, "version-mismatch");
    assert_eq!(stale.body["expected_version"], 1);
    assert_eq!(stale.body["actual_version"], 2);
    let read = app
        .get(&format!("/api/events/{id}"), Some(&organizer.token))
        .await;
    assert_eq!(read.body["name"], "First");
    assert_eq!(read.header("etag"), Some("\"2\""));
}

/// `expected_version` in the body works like `If-Match`: current succeeds, stale is a 409.
#[tokio::test]
async fn expected_version_in_the_body_is_checked_like_if_match() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let id = app.draft_event(&organizer, 10).await;

    let current = put(
        &app,
        &organizer,
        id,
        json!({"name": "First", "expected_version": 1}),
        None,
    )
    .await;
    assert_eq!(current.status, 200, "{:#}", current.body);
    assert_eq!(current.header("etag"), Some("\"2\""));

    let stale = put(
        &app,
        &organizer,
        id,
        json!({"name": "Second", "expected_version": 1}),
        None,
    )
    .await;

    stale.assert_problem(409, "version-mismatch");
    assert_eq!(stale.body["expected_version"], 1);
    assert_eq!(stale.body["actual_version"], 2);
    let read = app
        .get(&format!("/api/events/{id}"), Some(&organizer.token))
        .await;
    assert_eq!(read.body["name"], "First");
}

/// Capacity shrinks to the held plus sold seats but not below: 409 `capacity-below-committed`.
#[tokio::test]
async fn shrinking_capacity_below_held_seats_is_a_409() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let held = app.reserve(&buyer, event, 3).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    let paid = app.reserve(&buyer, event, 2).await;
    assert_eq!(
        app.pay(&buyer, paid.id("reservation_id"), "tok_visa")
            .await
            .status,
        201
    );
    let capacity =
        |n: u32| json!({"sections": [{"name": "floor", "capacity": n, "price_cents": 2500}]});

    let below = put(&app, &organizer, event, capacity(4), None).await;

    below.assert_problem(409, "capacity-below-committed");
    assert_eq!(app.floor(event).await, (5, 3, 2));
    let exact = put(&app, &organizer, event, capacity(5), None).await;
    assert_eq!(exact.status, 200, "{:#}", exact.body);
    assert_eq!(app.floor(event).await, (0, 3, 2));
}

/// Drafts are listed only to their owner and admins; everyone sees published events.
#[tokio::test]
async fn drafts_are_listed_only_to_their_owner_and_admins() {
    let app = spawn_app().await;
    let alice = app.organizer().await;
    let bob = app.organizer().await;
    let customer = app.customer().await;
    let admin = app.admin().await;
    let alice_draft = app.draft_event(&alice, 10).await;
    let bob_draft = app.draft_event(&bob, 10).await;
    let public = app.event_on_sale(&alice, 10).await;

    let anonymous = app.get("/api/events", None).await;
    assert_eq!(ids(&anonymous), [public]);
    let anonymous_drafts = app.get("/api/events?status=draft", None).await;
    assert_eq!(ids(&anonymous_drafts), Vec::<Uuid>::new());
    let as_customer = app.get("/api/events", Some(&customer.token)).await;
    assert_eq!(ids(&as_customer), [public]);
    let as_alice = app.get("/api/events", Some(&alice.token)).await;
    assert_eq!(sorted(ids(&as_alice)), sorted(vec![alice_draft, public]));
    let as_bob = app.get("/api/events", Some(&bob.token)).await;
    assert_eq!(sorted(ids(&as_bob)), sorted(vec![bob_draft, public]));
    let as_admin = app.get("/api/events", Some(&admin.token)).await;
    assert_eq!(
        sorted(ids(&as_admin)),
        sorted(vec![alice_draft, bob_draft, public])
    );
    let bobs_drafts_for_alice = app
        .get(
            &format!("/api/events?owner_id={}&status=draft", bob.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(ids(&bobs_drafts_for_alice), Vec::<Uuid>::new());
    let bobs_for_admin = app
        .get(
            &format!("/api/events?owner_id={}", bob.id),
            Some(&admin.token),
        )
        .await;
    assert_eq!(ids(&bobs_for_admin), [bob_draft]);
}

/// The `status` filter returns only events in that status; an unknown status is a 400.
#[tokio::test]
async fn the_status_filter_returns_only_events_in_that_status() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let draft = app.draft_event(&organizer, 10).await;
    let published = app.draft_event(&organizer, 10).await;
    assert_eq!(
        step(&app, &organizer, published, "publish").await.status,
        200
    );
    let on_sale = app.event_on_sale(&organizer, 10).await;
    let token = Some(organizer.token.as_str());

    for (status, expected) in [
        ("draft", draft),
        ("published", published),
        ("on_sale", on_sale),
    ] {
        let list = app
            .get(&format!("/api/events?status={status}"), token)
            .await;
        assert_eq!(ids(&list), [expected], "status={status}");
        assert_eq!(list.body["items"][0]["status"], status);
    }
    let closed = app.get("/api/events?status=sales_closed", token).await;
    assert_eq!(ids(&closed), Vec::<Uuid>::new());
    app.get("/api/events?status=bogus", token)
        .await
        .assert_problem(400, "bad-request");
}

/// Three events at page_size=2 make two pages: 2 items then 1, with exact page figures.
#[tokio::test]
async fn the_event_list_paginates_with_exact_page_figures() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(app.event_on_sale(&organizer, 5).await);
    }

    let first = app.get("/api/events?page=1&page_size=2", None).await;
    let second = app.get("/api/events?page=2&page_size=2", None).await;
    let beyond = app.get("/api/events?page=3&page_size=2", None).await;

    for (answer, page, count) in [(&first, 1, 2), (&second, 2, 1), (&beyond, 3, 0)] {
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        assert_eq!(answer.body["page"], page, "{:#}", answer.body);
        assert_eq!(answer.body["page_size"], 2);
        assert_eq!(answer.body["total_count"], 3);
        assert_eq!(answer.body["total_pages"], 2);
        assert_eq!(answer.body["items"].as_array().unwrap().len(), count);
    }
    let mut seen = ids(&first);
    seen.extend(ids(&second));
    assert_eq!(sorted(seen), sorted(all));
    let default = app.get("/api/events", None).await;
    assert_eq!(default.body["page"], 1);
    assert_eq!(default.body["page_size"], 20);
    assert_eq!(default.body["total_pages"], 1);
}

/// An event goes draft -> published -> on_sale -> sales_closed -> on_sale and sells again.
#[tokio::test]
async fn the_lifecycle_runs_publish_open_close_and_reopen() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.draft_event(&organizer, 10).await;

    for (action, status) in [
        ("publish", "published"),
        ("open-sales", "on_sale"),
        ("close-sales", "sales_closed"),
        ("open-sales", "on_sale"),
    ] {
        let answer = step(&app, &organizer, event, action).await;
        assert_eq!(answer.status, 200, "{action}: {:#}", answer.body);
        assert_eq!(answer.body["status"], status, "{action}");
        let etag = format!("\"{}\"", answer.body["version"]);
        assert_eq!(answer.header("etag"), Some(etag.as_str()), "{action}");
        let read = app.get(&format!("/api/events/{event}"), None).await;
        assert_eq!(read.body["status"], status, "{action}");
    }
    let held = app.reserve(&buyer, event, 2).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    assert_eq!(app.floor(event).await, (8, 2, 0));
}

/// Cancelling an event releases its holds and refunds its paid tickets.
#[tokio::test]
async fn cancelling_an_event_releases_holds_and_refunds_paid_tickets() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let held = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let paid = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let payment = app.pay(&buyer, paid, "tok_visa").await.id("payment_id");
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);

    let cancelled = app
        .call(
            Method::DELETE,
            &format!("/api/events/{event}"),
            Some(&organizer.token),
            None,
        )
        .await;

    assert_eq!(cancelled.status, 204, "{:#}", cancelled.body);
    let read = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(read.body["status"], "cancelled");
    let token = Some(buyer.token.as_str());
    let hold = app.get(&format!("/api/reservations/{held}"), token).await;
    assert_eq!(hold.body["status"], "cancelled", "{:#}", hold.body);
    let refunded = app.get(&format!("/api/payments/{payment}"), token).await;
    assert_eq!(refunded.body["status"], "refunded", "{:#}", refunded.body);
    assert_eq!(app.floor(event).await, (10, 0, 0));
    // The gateway refund runs after the commit, from the event log.
    let gateway = app.gateway.clone();
    eventually(
        "the gateway refunds the paid tickets",
        std::time::Duration::from_secs(5),
        || {
            let gateway = gateway.clone();
            async move { gateway.net_captured_cents().await.unwrap() == 0 }
        },
    )
    .await;
}
