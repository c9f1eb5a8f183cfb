//! The authorization matrix: every route the service serves, called by every kind of caller,
//! with the exact status each must get. The expected statuses are written down here, row by
//! row, from the "who" column of API.md: they do not come from the code's authorization table
//! (`ticketing::http::access::TABLE`), so a wrong rule there fails this test. The runner
//! collects every wrong cell before failing.

use super::helpers::*;
use reqwest::Method;
use serde_json::Value;
use std::fmt::Write as _;
use uuid::Uuid;

/// API.md's Auth, Events, Reservations and payments, Webhooks and Analytics tables: every route the
/// matrix must cover (and that `/openapi.json` must document).
pub const API_ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/logout"),
    ("GET", "/auth/me"),
    ("POST", "/api/events"),
    ("GET", "/api/events"),
    ("GET", "/api/events/{id}"),
    ("PUT", "/api/events/{id}"),
    ("DELETE", "/api/events/{id}"),
    ("POST", "/api/events/{id}/publish"),
    ("POST", "/api/events/{id}/open-sales"),
    ("POST", "/api/events/{id}/close-sales"),
    ("GET", "/api/events/{id}/availability"),
    ("PUT", "/api/events/{id}/queue"),
    ("GET", "/api/events/{id}/queue"),
    ("POST", "/api/events/{id}/queue/join"),
    ("GET", "/api/events/{id}/queue/me"),
    ("POST", "/api/reservations"),
    ("GET", "/api/reservations"),
    ("GET", "/api/reservations/{id}"),
    ("POST", "/api/reservations/{id}/cancel"),
    ("POST", "/api/payments"),
    ("GET", "/api/payments/{id}"),
    ("GET", "/api/payments/user/{user_id}"),
    ("POST", "/api/payments/{id}/refund"),
    ("POST", "/api/webhooks"),
    ("GET", "/api/webhooks"),
    ("GET", "/api/webhooks/{id}"),
    ("DELETE", "/api/webhooks/{id}"),
    ("POST", "/api/webhooks/{id}/rotate-secret"),
    ("GET", "/api/webhooks/{id}/deliveries"),
    (
        "POST",
        "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    ),
    ("GET", "/api/analytics/events/{id}/sales"),
    ("GET", "/api/customers/{id}/history"),
];

/// Who calls. The columns of the matrix, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// `Authorization: Bearer nope`.
    BadToken,
    /// `Authorization: Basic x`.
    Malformed,
    /// The customer who owns the reservations and payments.
    Owner,
    /// Another customer.
    OtherCustomer,
    /// The organizer who owns the events.
    EventOrganizer,
    /// An organizer who owns none of them.
    OtherOrganizer,
    Admin,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::BadToken,
    Caller::Malformed,
    Caller::Owner,
    Caller::OtherCustomer,
    Caller::EventOrganizer,
    Caller::OtherOrganizer,
    Caller::Admin,
];

/// API.md's Operations and Admin tables.
const OPERATIONS_AND_ADMIN: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/admin/dlq"),
    ("GET", "/admin/dlq/stats"),
    ("GET", "/admin/dlq/{id}"),
    ("POST", "/admin/dlq/{id}/retry"),
    ("POST", "/admin/dlq/{id}/resolve"),
    ("POST", "/admin/dlq/{id}/discard"),
    ("GET", "/admin/dashboard/system"),
    ("GET", "/admin/dashboard/sales"),
    ("GET", "/admin/audit"),
];

/// One row: a route with its fixtures and, written out, the status each caller must get.
///
/// `path` and `body` are templates: `{draft}`, `{published}`, `{on_sale}` are events of the
/// event organizer; `{reservation}` is a pending reservation and `{payment}` a captured payment
/// of the owner; `{owner}` is the owner's user id, `{owner_email}` their email,
/// `{new_email}` an address never used before, and `{dead_letter}` the id of a dead letter
/// that does not exist.
struct Case {
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    /// The status of each caller, in the order of `CALLERS`.
    expected: [u16; 8],
    /// The problem kind of a 409 in this row.
    conflict: Option<&'static str>,
    /// The call changes what it touches: every cell gets fresh events, reservation and payment.
    fresh: bool,
    /// The call ends the caller's session: every cell signs in anew first.
    new_session: bool,
}

fn case(
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    expected: [u16; 8],
) -> Case {
    Case {
        method,
        path,
        body,
        expected,
        conflict: None,
        fresh: false,
        new_session: false,
    }
}

impl Case {
    /// The status `caller` must get: the row's literal entry.
    fn expected(&self, caller: Caller) -> u16 {
        let column = CALLERS
            .iter()
            .position(|c| *c == caller)
            .expect("a caller of the matrix");
        self.expected[column]
    }

    fn fresh(mut self) -> Self {
        self.fresh = true;
        self
    }

    fn conflict(mut self, kind: &'static str) -> Self {
        self.conflict = Some(kind);
        self
    }

    fn new_session(mut self) -> Self {
        self.new_session = true;
        self
    }
}

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const DELETE: Method = Method::DELETE;

const NEW_EVENT: &str = r#"{"name": "Matrix Night", "venue": {"name": "Hall", "address": "1 Main St"},
    "starts_at": "2030-06-01T20:00:00Z", "ends_at": "2030-06-01T23:00:00Z",
    "sections": [{"name": "floor", "capacity": 10, "price_cents": 2500}]}"#;
const RESERVE_ON_SALE: &str = r#"{"event_id": "{on_sale}", "section": "floor", "quantity": 1}"#;
const RESERVE_DRAFT: &str = r#"{"event_id": "{draft}", "section": "floor", "quantity": 1}"#;
const PAY: &str = r#"{"reservation_id": "{reservation}", "payment_method": {"type": "card", "token": "tok_visa"}}"#;
const PATCH: &str = r#"{"description": "updated"}"#;
const QUEUE: &str = r#"{"enabled": true, "admit_per_minute": 60}"#;
const NEW_WEBHOOK: &str = r#"{"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}"#;

/// The matrix, written down from the "who" column of API.md (not from the code's table):
/// one row per route and fixture, one literal status per caller.
///
/// How the words of API.md read as statuses: "anyone" on operations, register and login
/// ignores credentials; on the other "anyone" routes a token, when sent, must be valid (401
/// "no or bad token"). "user" is any signed-in account; a role outside the "who" column gets
/// 403; an owner-only record (reservation, payment) is 404 to whoever may not see it ("also
/// for resources the caller may not see"), and so is a draft event to everyone but its
/// organizer and admins; "that user" routes answer 403 to other users; paying is for the
/// reservation's owner only, so an admin gets 403 there.
///
/// Columns: anonymous, bad token, malformed header, owner (customer), other customer, event
/// organizer, other organizer, admin.
#[rustfmt::skip]
fn matrix() -> Vec<Case> {
    vec![
        //                                                                 anon  bad  malf owner othC  org othO admin
        // Operations: anyone
        case(GET,  "/health", None,                                       [200, 200, 200, 200, 200, 200, 200, 200]),
        case(GET,  "/ready", None,                                        [200, 200, 200, 200, 200, 200, 200, 200]),
        case(GET,  "/metrics", None,                                      [200, 200, 200, 200, 200, 200, 200, 200]),
        case(GET,  "/openapi.json", None,                                 [200, 200, 200, 200, 200, 200, 200, 200]),
        // Auth: register and login anyone; logout and me a user
        case(POST, "/auth/register", Some(r#"{"email": "{new_email}", "password": "correct-horse-1"}"#),
                                                                          [201, 201, 201, 201, 201, 201, 201, 201]),
        case(POST, "/auth/login", Some(r#"{"email": "{owner_email}", "password": "correct-horse-1"}"#),
                                                                          [200, 200, 200, 200, 200, 200, 200, 200]),
        case(GET,  "/auth/me", None,                                      [401, 401, 401, 200, 200, 200, 200, 200]),
        case(POST, "/auth/logout", None,                                  [401, 401, 401, 204, 204, 204, 204, 204]).new_session(),
        // Events: create organizer, admin
        case(POST, "/api/events", Some(NEW_EVENT),                        [401, 401, 401, 403, 403, 201, 201, 201]),
        // list anyone
        case(GET,  "/api/events", None,                                   [200, 401, 401, 200, 200, 200, 200, 200]),
        // read anyone (drafts: owner, admin)
        case(GET,  "/api/events/{published}", None,                       [200, 401, 401, 200, 200, 200, 200, 200]),
        case(GET,  "/api/events/{draft}", None,                           [404, 401, 401, 404, 404, 200, 404, 200]),
        // update, cancel, publish, open and close sales: owner, admin
        case(PUT,  "/api/events/{published}", Some(PATCH),                [401, 401, 401, 403, 403, 200, 403, 200]),
        case(PUT,  "/api/events/{draft}", Some(PATCH),                    [401, 401, 401, 404, 404, 200, 404, 200]),
        case(DELETE, "/api/events/{published}", None,                     [401, 401, 401, 403, 403, 204, 403, 204]).fresh(),
        case(DELETE, "/api/events/{draft}", None,                         [401, 401, 401, 404, 404, 204, 404, 204]).fresh(),
        case(POST, "/api/events/{draft}/publish", None,                   [401, 401, 401, 404, 404, 200, 404, 200]).fresh(),
        case(POST, "/api/events/{published}/publish", None,               [401, 401, 401, 403, 403, 409, 403, 409]).conflict("invalid-state"),
        case(POST, "/api/events/{published}/open-sales", None,            [401, 401, 401, 403, 403, 200, 403, 200]).fresh(),
        case(POST, "/api/events/{on_sale}/close-sales", None,             [401, 401, 401, 403, 403, 200, 403, 200]).fresh(),
        // availability anyone (a draft is hidden like its details)
        case(GET,  "/api/events/{published}/availability", None,          [200, 401, 401, 200, 200, 200, 200, 200]),
        case(GET,  "/api/events/{draft}/availability", None,              [404, 401, 401, 404, 404, 200, 404, 200]),
        // Fair on-sales: settings owner, admin; figures anyone; join and own ticket a user.
        // `{queued}` is an event of the organizer on sale with a queue the owner joined;
        // `{on_sale}` has none (join 409 no-queue, own ticket 404).
        case(PUT,  "/api/events/{published}/queue", Some(QUEUE),          [401, 401, 401, 403, 403, 200, 403, 200]).fresh(),
        case(PUT,  "/api/events/{draft}/queue", Some(QUEUE),              [401, 401, 401, 404, 404, 200, 404, 200]).fresh(),
        case(GET,  "/api/events/{queued}/queue", None,                    [200, 401, 401, 200, 200, 200, 200, 200]),
        case(GET,  "/api/events/{draft}/queue", None,                     [404, 401, 401, 404, 404, 200, 404, 200]),
        case(POST, "/api/events/{queued}/queue/join", None,               [401, 401, 401, 200, 201, 201, 201, 201]).fresh(),
        case(POST, "/api/events/{on_sale}/queue/join", None,              [401, 401, 401, 409, 409, 409, 409, 409]).conflict("no-queue"),
        case(GET,  "/api/events/{queued}/queue/me", None,                 [401, 401, 401, 200, 404, 404, 404, 404]),
        case(GET,  "/api/events/{draft}/queue/me", None,                  [401, 401, 401, 404, 404, 404, 404, 404]),
        // Reservations and payments: reserve and list a user
        case(POST, "/api/reservations", Some(RESERVE_ON_SALE),            [401, 401, 401, 201, 201, 201, 201, 201]),
        case(POST, "/api/reservations", Some(RESERVE_DRAFT),              [401, 401, 401, 404, 404, 409, 404, 409]).conflict("sales-not-open"),
        case(GET,  "/api/reservations", None,                             [401, 401, 401, 200, 200, 200, 200, 200]),
        // one reservation, cancel: owner, admin
        case(GET,  "/api/reservations/{reservation}", None,               [401, 401, 401, 200, 404, 404, 404, 200]),
        case(POST, "/api/reservations/{reservation}/cancel", None,        [401, 401, 401, 200, 404, 404, 404, 200]).fresh(),
        // pay: owner of the reservation
        case(POST, "/api/payments", Some(PAY),                            [401, 401, 401, 201, 404, 404, 404, 403]).fresh(),
        // one payment, refund: owner, admin
        case(GET,  "/api/payments/{payment}", None,                       [401, 401, 401, 200, 404, 404, 404, 200]),
        case(POST, "/api/payments/{payment}/refund", Some(r#"{"reason": "matrix"}"#),
                                                                          [401, 401, 401, 200, 404, 404, 404, 200]).fresh(),
        // a user's payments: that user, admin
        case(GET,  "/api/payments/user/{owner}", None,                    [401, 401, 401, 200, 403, 403, 403, 200]),
        // Webhooks: organizer, admin create and list (their own); one endpoint and its
        // deliveries: owner, admin (hidden, 404, from other organizers). No delivery exists
        // under the id the matrix uses, so whoever gets past the rules gets 404 there.
        case(POST, "/api/webhooks", Some(NEW_WEBHOOK),                    [401, 401, 401, 403, 403, 201, 201, 201]),
        case(GET,  "/api/webhooks", None,                                 [401, 401, 401, 403, 403, 200, 200, 200]),
        case(GET,  "/api/webhooks/{webhook}", None,                       [401, 401, 401, 403, 403, 200, 404, 200]),
        case(DELETE, "/api/webhooks/{webhook}", None,                     [401, 401, 401, 403, 403, 204, 404, 204]).fresh(),
        case(POST, "/api/webhooks/{webhook}/rotate-secret", None,         [401, 401, 401, 403, 403, 200, 404, 200]),
        case(GET,  "/api/webhooks/{webhook}/deliveries", None,            [401, 401, 401, 403, 403, 200, 404, 200]),
        case(POST, "/api/webhooks/{webhook}/deliveries/{delivery}/redeliver", None,
                                                                          [401, 401, 401, 403, 403, 404, 404, 404]),
        // Analytics: event owner, admin; history: that user, admin
        case(GET,  "/api/analytics/events/{published}/sales", None,       [401, 401, 401, 403, 403, 200, 403, 200]),
        case(GET,  "/api/analytics/events/{draft}/sales", None,           [401, 401, 401, 404, 404, 200, 404, 200]),
        case(GET,  "/api/customers/{owner}/history", None,                [401, 401, 401, 200, 403, 403, 403, 200]),
        // Admin: admin only. No dead letter exists in the fixture, so an admin reaches the
        // handler and gets 404 for an entry.
        case(GET,  "/admin/dlq", None,                                    [401, 401, 401, 403, 403, 403, 403, 200]),
        case(GET,  "/admin/dlq/stats", None,                              [401, 401, 401, 403, 403, 403, 403, 200]),
        case(GET,  "/admin/dlq/{dead_letter}", None,                      [401, 401, 401, 403, 403, 403, 403, 404]),
        case(POST, "/admin/dlq/{dead_letter}/retry", None,                [401, 401, 401, 403, 403, 403, 403, 404]),
        case(POST, "/admin/dlq/{dead_letter}/resolve", Some(r#"{"notes": "matrix"}"#),
                                                                          [401, 401, 401, 403, 403, 403, 403, 404]),
        case(POST, "/admin/dlq/{dead_letter}/discard", Some(r#"{"reason": "matrix"}"#),
                                                                          [401, 401, 401, 403, 403, 403, 403, 404]),
        case(GET,  "/admin/dashboard/system", None,                       [401, 401, 401, 403, 403, 403, 403, 200]),
        case(GET,  "/admin/dashboard/sales", None,                        [401, 401, 401, 403, 403, 403, 403, 200]),
        case(GET,  "/admin/audit", None,                                  [401, 401, 401, 403, 403, 403, 403, 200]),
    ]
}

/// The accounts every cell uses.
struct People {
    owner: User,
    other_customer: User,
    organizer: User,
    other_organizer: User,
    admin: User,
}

/// The resources the templates name; all belong to `People::organizer` or `People::owner`.
struct Resources {
    draft: Uuid,
    published: Uuid,
    on_sale: Uuid,
    reservation: Uuid,
    payment: Uuid,
    /// A webhook endpoint of the event organizer.
    webhook: Uuid,
    /// An event on sale with a waiting room the owner joined.
    queued: Uuid,
}

async fn resources(app: &TestApp, people: &People) -> Resources {
    let draft = app.draft_event(&people.organizer, 100).await;
    let published = app.draft_event(&people.organizer, 100).await;
    let answer = app
        .post(
            &format!("/api/events/{published}/publish"),
            Some(&people.organizer.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    let on_sale = app.event_on_sale(&people.organizer, 100).await;
    let held = app.reserve(&people.owner, on_sale, 1).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    let paid = app.reserve(&people.owner, on_sale, 1).await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    let payment = app
        .pay(&people.owner, paid.id("reservation_id"), "tok_visa")
        .await;
    assert_eq!(payment.status, 201, "{:#}", payment.body);
    let webhook = app
        .post(
            "/api/webhooks",
            Some(&people.organizer.token),
            serde_json::from_str(NEW_WEBHOOK).expect("JSON"),
        )
        .await;
    assert_eq!(webhook.status, 201, "{:#}", webhook.body);
    let queued = app.event_on_sale(&people.organizer, 100).await;
    let queue = app
        .call(
            Method::PUT,
            &format!("/api/events/{queued}/queue"),
            Some(&people.organizer.token),
            Some(serde_json::from_str(QUEUE).expect("JSON")),
        )
        .await;
    assert_eq!(queue.status, 200, "{:#}", queue.body);
    let joined = app
        .post(
            &format!("/api/events/{queued}/queue/join"),
            Some(&people.owner.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(joined.status, 201, "{:#}", joined.body);
    Resources {
        queued,
        webhook: webhook.id("id"),
        draft,
        published,
        on_sale,
        reservation: held.id("reservation_id"),
        payment: payment.id("payment_id"),
    }
}

/// Everything the resources look like to an admin, to prove a refused call changed nothing.
async fn snapshot(app: &TestApp, people: &People, r: &Resources) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        format!("/api/events/{}", r.draft),
        format!("/api/events/{}", r.published),
        format!("/api/events/{}", r.on_sale),
        format!("/api/reservations/{}", r.reservation),
        format!("/api/payments/{}", r.payment),
        format!("/api/events/{}/queue", r.published),
        format!("/api/events/{}/queue", r.draft),
        format!("/api/events/{}/queue", r.queued),
    ] {
        seen.push(app.get(&path, Some(&people.admin.token)).await.body);
    }
    seen
}

fn fill(template: &str, people: &People, r: &Resources) -> String {
    template
        .replace("{draft}", &r.draft.to_string())
        .replace("{published}", &r.published.to_string())
        .replace("{on_sale}", &r.on_sale.to_string())
        .replace("{reservation}", &r.reservation.to_string())
        .replace("{payment}", &r.payment.to_string())
        .replace("{webhook}", &r.webhook.to_string())
        .replace("{queued}", &r.queued.to_string())
        // No delivery has this id.
        .replace("{delivery}", &Uuid::nil().to_string())
        // No dead letter exists: the id of one that never did.
        .replace("{dead_letter}", "4242")
        .replace("{owner}", &people.owner.id.to_string())
        .replace("{owner_email}", &people.owner.email)
        .replace("{new_email}", &unique_email("matrix"))
}

impl People {
    fn account(&self, caller: Caller) -> Option<&User> {
        match caller {
            Caller::Anonymous | Caller::BadToken | Caller::Malformed => None,
            Caller::Owner => Some(&self.owner),
            Caller::OtherCustomer => Some(&self.other_customer),
            Caller::EventOrganizer => Some(&self.organizer),
            Caller::OtherOrganizer => Some(&self.other_organizer),
            Caller::Admin => Some(&self.admin),
        }
    }
}

/// The problem kind an error status of `case` must carry.
fn kind_for(status: u16, case: &Case) -> &'static str {
    match status {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        409 => case.conflict.expect("a 409 row names its problem kind"),
        other => panic!("the matrix has no kind for {other}"),
    }
}

/// Checks one cell; describes what is wrong, if anything.
fn check_cell(answer: &Answer, expected: u16, case: &Case) -> Option<String> {
    if answer.status.as_u16() != expected {
        return Some(format!(
            "expected {expected}, got {} {}",
            answer.status.as_u16(),
            answer.body
        ));
    }
    let content_type = answer.header("content-type");
    if expected >= 400 {
        let kind = format!("urn:ticketing:problem:{}", kind_for(expected, case));
        if content_type != Some("application/problem+json") {
            return Some(format!("error with content-type {content_type:?}"));
        }
        if answer.body["type"] != kind.as_str() || answer.body["status"] != expected {
            return Some(format!("expected problem {kind}, got {}", answer.body));
        }
        if expected == 401 && answer.header("www-authenticate") != Some("Bearer") {
            return Some("401 without `WWW-Authenticate: Bearer`".to_owned());
        }
    } else if expected != 204
        && !content_type
            .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/plain"))
    {
        return Some(format!("success with content-type {content_type:?}"));
    }
    None
}

/// Each caller gets exactly the matrix's status on every route, with the right problem on errors.
#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_the_authorization_matrix_says() {
    let app = spawn_app().await;
    let people = People {
        owner: app.customer().await,
        other_customer: app.customer().await,
        organizer: app.organizer().await,
        other_organizer: app.organizer().await,
        admin: app.admin().await,
    };
    let shared = resources(&app, &people).await;
    let mut failures = String::new();
    let mut cells = 0;

    for case in matrix() {
        for caller in CALLERS {
            let expected = case.expected(caller);
            let fresh;
            let r = if case.fresh {
                fresh = resources(&app, &people).await;
                &fresh
            } else {
                &shared
            };
            let path = fill(case.path, &people, r);
            let body: Option<Value> = case
                .body
                .map(|b| serde_json::from_str(&fill(b, &people, r)).expect("the template is JSON"));
            let session;
            let token = match people.account(caller) {
                Some(user) if case.new_session => {
                    let password = if caller == Caller::Admin {
                        ADMIN_PASSWORD
                    } else {
                        PASSWORD
                    };
                    session = app.login(&user.email, password).await;
                    Some(session.token.as_str())
                }
                Some(user) => Some(user.token.as_str()),
                None => None,
            };
            let header: &[(&str, &str)] = match caller {
                Caller::BadToken => &[("authorization", "Bearer nope")],
                Caller::Malformed => &[("authorization", "Basic x")],
                _ => &[],
            };
            let refused_change = case.method != Method::GET && expected >= 400;
            let before = match refused_change {
                true => snapshot(&app, &people, r).await,
                false => Vec::new(),
            };
            let answer = app
                .call_with(case.method.clone(), &path, token, body, header)
                .await;
            cells += 1;
            let problem = match check_cell(&answer, expected, &case) {
                None if refused_change && snapshot(&app, &people, r).await != before => {
                    Some(format!("refused with {expected}, yet it changed something"))
                }
                other => other,
            };
            if let Some(problem) = problem {
                let _ = writeln!(
                    failures,
                    "{} {} as {caller:?}: {problem}",
                    case.method, case.path
                );
            }
        }
    }

    assert_eq!(cells, matrix().len() * CALLERS.len());
    assert!(failures.is_empty(), "wrong cells:\n{failures}");
}

/// The route template API.md uses for a matrix row's path.
fn route_of(path: &str) -> String {
    let path = path
        .replace("/user/{owner}", "/user/{user_id}")
        .replace("{delivery}", "{delivery_id}");
    [
        "{draft}",
        "{published}",
        "{on_sale}",
        "{reservation}",
        "{payment}",
        "{owner}",
        "{dead_letter}",
        "{webhook}",
        "{queued}",
    ]
    .iter()
    .fold(path, |path, placeholder| path.replace(placeholder, "{id}"))
}

fn pairs<'a>(
    routes: impl IntoIterator<Item = &'a (&'a str, &'a str)>,
) -> std::collections::BTreeSet<(String, String)> {
    routes
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

/// The matrix has a row for every route the router serves (as `/openapi.json` documents them)
/// and for every route of API.md's tables, and for nothing else.
#[tokio::test]
async fn the_matrix_covers_every_route_the_service_serves() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    let mut served = std::collections::BTreeSet::new();
    served.insert(("GET".to_owned(), "/openapi.json".to_owned()));
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                served.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let covered: std::collections::BTreeSet<(String, String)> = matrix()
        .iter()
        .map(|c| (c.method.to_string(), route_of(c.path)))
        .collect();
    assert_eq!(covered, served, "matrix rows vs routes served");
    assert_eq!(
        covered,
        pairs(API_ROUTES.iter().chain(OPERATIONS_AND_ADMIN)),
        "matrix rows vs API.md"
    );
}
