//! The authorization matrix: every route of API.md, called by every kind of caller, with the
//! exact status each must get. The expected statuses come from the one authorization table in
//! the code (`ticketing::http::access::TABLE`, which the router enforces): this file only adds
//! fixtures (which resource a row names, its body, what an allowed call answers). The runner
//! collects every wrong cell before failing.

use super::helpers::*;
use reqwest::Method;
use serde_json::Value;
use std::fmt::Write as _;
use ticketing::http::access::{self, Audience, Decision};
use uuid::Uuid;

/// API.md's Auth, Events, Reservations and payments, and Analytics tables: every route the
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
    ("POST", "/api/reservations"),
    ("GET", "/api/reservations"),
    ("GET", "/api/reservations/{id}"),
    ("POST", "/api/reservations/{id}/cancel"),
    ("POST", "/api/payments"),
    ("GET", "/api/payments/{id}"),
    ("GET", "/api/payments/user/{user_id}"),
    ("POST", "/api/payments/{id}/refund"),
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

/// One row: a route with its fixtures and the status an allowed caller gets.
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
    /// The status of a caller the table allows (a success, or a state conflict).
    success: u16,
    /// The problem kind of a 409 in this row.
    conflict: Option<&'static str>,
    /// The call changes what it touches: every cell gets fresh events, reservation and payment.
    fresh: bool,
    /// The call ends the caller's session: every cell signs in anew first.
    new_session: bool,
}

fn case(method: Method, path: &'static str, body: Option<&'static str>, success: u16) -> Case {
    Case {
        method,
        path,
        body,
        success,
        conflict: None,
        fresh: false,
        new_session: false,
    }
}

impl Case {
    /// The table's rule for this row.
    fn rule(&self) -> &'static access::Rule {
        access::find(&self.method, &route_of(self.path))
            .unwrap_or_else(|| panic!("no rule for {} {}", self.method, self.path))
    }

    /// Whether the event this row concerns is a draft (in the path or the body).
    fn on_draft(&self) -> bool {
        self.path.contains("{draft}") || self.body.is_some_and(|b| b.contains("{draft}"))
    }

    /// The status `caller` must get, from the table.
    fn expected(&self, caller: Caller) -> u16 {
        let rule = self.rule();
        let who = match caller {
            Caller::BadToken | Caller::Malformed if rule.audience == Audience::Public => {
                return self.success
            }
            Caller::BadToken | Caller::Malformed => return 401,
            Caller::Anonymous => access::Caller::Anonymous,
            Caller::Owner => access::Caller::RecordOwner,
            Caller::OtherCustomer => access::Caller::OtherCustomer,
            Caller::EventOrganizer => access::Caller::EventOwner,
            Caller::OtherOrganizer => access::Caller::OtherOrganizer,
            Caller::Admin => access::Caller::Admin,
        };
        match rule.decide(who, self.on_draft()) {
            Decision::Allow => self.success,
            Decision::Unauthorized => 401,
            Decision::Forbidden => 403,
            Decision::NotFound => 404,
        }
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

/// The matrix rows: a fixture per route (and per event state where drafts answer
/// differently) with the status of an allowed call; who is allowed comes from the table.
#[rustfmt::skip]
fn matrix() -> Vec<Case> {
    vec![
        // Operations
        case(GET,  "/health", None, 200),
        case(GET,  "/ready", None, 200),
        case(GET,  "/metrics", None, 200),
        case(GET,  "/openapi.json", None, 200),
        // Auth
        case(POST, "/auth/register", Some(r#"{"email": "{new_email}", "password": "correct-horse-1"}"#), 201),
        case(POST, "/auth/login", Some(r#"{"email": "{owner_email}", "password": "correct-horse-1"}"#), 200),
        case(GET,  "/auth/me", None, 200),
        case(POST, "/auth/logout", None, 204).new_session(),
        // Events
        case(POST, "/api/events", Some(NEW_EVENT), 201),
        case(GET,  "/api/events", None, 200),
        case(GET,  "/api/events/{published}", None, 200),
        case(GET,  "/api/events/{draft}", None, 200),
        case(PUT,  "/api/events/{published}", Some(PATCH), 200),
        case(PUT,  "/api/events/{draft}", Some(PATCH), 200),
        case(DELETE, "/api/events/{published}", None, 204).fresh(),
        case(DELETE, "/api/events/{draft}", None, 204).fresh(),
        case(POST, "/api/events/{draft}/publish", None, 200).fresh(),
        case(POST, "/api/events/{published}/publish", None, 409).conflict("invalid-state"),
        case(POST, "/api/events/{published}/open-sales", None, 200).fresh(),
        case(POST, "/api/events/{on_sale}/close-sales", None, 200).fresh(),
        case(GET,  "/api/events/{published}/availability", None, 200),
        case(GET,  "/api/events/{draft}/availability", None, 200),
        // Reservations and payments
        case(POST, "/api/reservations", Some(RESERVE_ON_SALE), 201),
        case(POST, "/api/reservations", Some(RESERVE_DRAFT), 409).conflict("sales-not-open"),
        case(GET,  "/api/reservations", None, 200),
        case(GET,  "/api/reservations/{reservation}", None, 200),
        case(POST, "/api/reservations/{reservation}/cancel", None, 200).fresh(),
        case(POST, "/api/payments", Some(PAY), 201).fresh(),
        case(GET,  "/api/payments/{payment}", None, 200),
        case(GET,  "/api/payments/user/{owner}", None, 200),
        case(POST, "/api/payments/{payment}/refund", Some(r#"{"reason": "matrix"}"#), 200).fresh(),
        // Analytics
        case(GET,  "/api/analytics/events/{published}/sales", None, 200),
        case(GET,  "/api/analytics/events/{draft}/sales", None, 200),
        case(GET,  "/api/customers/{owner}/history", None, 200),
        // Admin. No dead letter exists in the fixture, so an admin reaches the handler and
        // gets 404 for an entry.
        case(GET,  "/admin/dlq", None, 200),
        case(GET,  "/admin/dlq/stats", None, 200),
        case(GET,  "/admin/dlq/{dead_letter}", None, 404),
        case(POST, "/admin/dlq/{dead_letter}/retry", None, 404),
        case(POST, "/admin/dlq/{dead_letter}/resolve", Some(r#"{"notes": "matrix"}"#), 404),
        case(POST, "/admin/dlq/{dead_letter}/discard", Some(r#"{"reason": "matrix"}"#), 404),
        case(GET,  "/admin/dashboard/system", None, 200),
        case(GET,  "/admin/dashboard/sales", None, 200),
        case(GET,  "/admin/audit", None, 200),
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
    Resources {
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
    let path = path.replace("/user/{owner}", "/user/{user_id}");
    [
        "{draft}",
        "{published}",
        "{on_sale}",
        "{reservation}",
        "{payment}",
        "{owner}",
        "{dead_letter}",
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

/// The table has a rule for exactly the routes of API.md, and the matrix a row for every rule.
#[tokio::test]
async fn the_table_and_the_matrix_cover_every_route_of_the_contract() {
    let table: std::collections::BTreeSet<(String, String)> = access::TABLE
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let contract = pairs(API_ROUTES.iter().chain(OPERATIONS_AND_ADMIN));
    assert_eq!(table, contract);

    let covered: std::collections::BTreeSet<(String, String)> = matrix()
        .iter()
        .map(|c| (c.method.to_string(), route_of(c.path)))
        .collect();
    assert_eq!(covered, table);
}
