//! The authorization table: every route of API.md (method x path template) with who may call
//! it (`Audience`, enforced here by the `enforce` middleware before any handler runs) and the
//! ownership rule on the resource it names (`Ownership`, enforced by the handler through
//! `policy`, because it needs the resource). `Rule::decide` says what each kind of caller
//! gets; the access-matrix API test checks every route against its own, independent table.
//! A route missing from the table is refused (fail closed); a unit test keeps the router and
//! the table in step.

use super::error::{ApiError, AppError};
use super::extract::{bearer, RequestContext, VerifiedPrincipal};
use super::AppState;
use crate::auth::{Principal, Role};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Who may call a route at all, whatever it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Anyone; credentials are ignored (operations, register, login).
    Public,
    /// Anyone; a token, when sent, must be valid (it may widen what is visible).
    Anyone,
    /// Any signed-in user.
    User,
    /// Organizers and admins.
    Staff,
    /// Admins only.
    Admin,
}

/// What the caller must be to the resource the path (or body) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing beyond the audience.
    None,
    /// The event's organizer or an admin; others get 403, or 404 if the event is a draft.
    Event,
    /// Drafts are seen only by their organizer and admins (404 to others); otherwise open.
    EventVisible,
    /// The customer who owns the record (reservation, payment) or an admin; others get 404.
    Record,
    /// Only the customer who owns the record (paying): an admin gets 403, others 404.
    RecordOwnerOnly,
    /// The user named in the path or an admin; others get 403.
    PathUser,
    /// The organizer who registered the webhook endpoint, or an admin; others get 404.
    Endpoint,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    /// The route template, as the router and API.md spell it.
    pub path: &'static str,
    pub audience: Audience,
    pub ownership: Ownership,
}

/// A kind of caller, relative to the resource a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// The customer who owns the record, or the user the path names.
    RecordOwner,
    OtherCustomer,
    /// The organizer who owns the event.
    EventOwner,
    OtherOrganizer,
    Admin,
}

/// What the table says a caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Past the access rules; the handler answers (success, or a state conflict).
    Allow,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404: the resource is hidden from this caller.
    NotFound,
}

const fn rule(
    method: &'static str,
    path: &'static str,
    audience: Audience,
    ownership: Ownership,
) -> Rule {
    Rule {
        method,
        path,
        audience,
        ownership,
    }
}

use Audience::{Admin, Anyone, Public, Staff, User};
use Ownership as O;

/// The table: API.md's routes, in its order.
#[rustfmt::skip]
pub const TABLE: &[Rule] = &[
    // Operations
    rule("GET",    "/health",                          Public, O::None),
    rule("GET",    "/ready",                           Public, O::None),
    rule("GET",    "/metrics",                         Public, O::None),
    rule("GET",    "/openapi.json",                    Public, O::None),
    // Auth
    rule("POST",   "/auth/register",                   Public, O::None),
    rule("POST",   "/auth/login",                      Public, O::None),
    rule("POST",   "/auth/logout",                     User,   O::None),
    rule("GET",    "/auth/me",                         User,   O::None),
    // Events
    rule("POST",   "/api/events",                      Staff,  O::None),
    rule("GET",    "/api/events",                      Anyone, O::None),
    rule("GET",    "/api/events/{id}",                 Anyone, O::EventVisible),
    rule("PUT",    "/api/events/{id}",                 User,   O::Event),
    rule("DELETE", "/api/events/{id}",                 User,   O::Event),
    rule("POST",   "/api/events/{id}/publish",         User,   O::Event),
    rule("POST",   "/api/events/{id}/open-sales",      User,   O::Event),
    rule("POST",   "/api/events/{id}/close-sales",     User,   O::Event),
    rule("GET",    "/api/events/{id}/availability",    Anyone, O::EventVisible),
    // Fair on-sales: the waiting room
    rule("PUT",    "/api/events/{id}/queue",           User,   O::Event),
    rule("GET",    "/api/events/{id}/queue",           Anyone, O::EventVisible),
    rule("POST",   "/api/events/{id}/queue/join",      User,   O::EventVisible),
    rule("GET",    "/api/events/{id}/queue/me",        User,   O::EventVisible),
    // Reservations and payments (a reservation names its event in the body)
    rule("POST",   "/api/reservations",                User,   O::EventVisible),
    rule("GET",    "/api/reservations",                User,   O::None),
    rule("GET",    "/api/reservations/{id}",           User,   O::Record),
    rule("POST",   "/api/reservations/{id}/cancel",    User,   O::Record),
    rule("POST",   "/api/payments",                    User,   O::RecordOwnerOnly),
    rule("GET",    "/api/payments/{id}",               User,   O::Record),
    rule("GET",    "/api/payments/user/{user_id}",     User,   O::PathUser),
    rule("POST",   "/api/payments/{id}/refund",        User,   O::Record),
    // Webhooks
    rule("POST",   "/api/webhooks",                    Staff,  O::None),
    rule("GET",    "/api/webhooks",                    Staff,  O::None),
    rule("GET",    "/api/webhooks/{id}",               Staff,  O::Endpoint),
    rule("DELETE", "/api/webhooks/{id}",               Staff,  O::Endpoint),
    rule("POST",   "/api/webhooks/{id}/rotate-secret", Staff,  O::Endpoint),
    rule("GET",    "/api/webhooks/{id}/deliveries",    Staff,  O::Endpoint),
    rule("POST",   "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver", Staff, O::Endpoint),
    // Analytics
    rule("GET",    "/api/analytics/events/{id}/sales", User,   O::Event),
    rule("GET",    "/api/customers/{id}/history",      User,   O::PathUser),
    // Admin
    rule("GET",    "/admin/dlq",                       Admin,  O::None),
    rule("GET",    "/admin/dlq/stats",                 Admin,  O::None),
    rule("GET",    "/admin/dlq/{id}",                  Admin,  O::None),
    rule("POST",   "/admin/dlq/{id}/retry",            Admin,  O::None),
    rule("POST",   "/admin/dlq/{id}/resolve",          Admin,  O::None),
    rule("POST",   "/admin/dlq/{id}/discard",          Admin,  O::None),
    rule("GET",    "/admin/dashboard/system",          Admin,  O::None),
    rule("GET",    "/admin/dashboard/sales",           Admin,  O::None),
    rule("GET",    "/admin/audit",                     Admin,  O::None),
];

/// The rule of `method` on the route template `path` (HEAD is GET's).
pub fn find(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    TABLE.iter().find(|r| r.method == method && r.path == path)
}

/// The route template a concrete `path` takes, as the router matches it (with axum's own
/// matcher, `matchit`: a literal segment wins over a `{parameter}`, which takes one non-empty
/// segment), for callers that run before routing (the request's span and metrics).
pub fn template_of(path: &str) -> Option<&'static str> {
    TEMPLATES.at(path).ok().map(|found| *found.value)
}

/// Every distinct route template of the table, each under itself.
static TEMPLATES: std::sync::LazyLock<matchit::Router<&'static str>> =
    std::sync::LazyLock::new(|| {
        let distinct: std::collections::BTreeSet<_> = TABLE.iter().map(|r| r.path).collect();
        let mut templates = matchit::Router::new();
        for template in distinct {
            // The table's templates are the router's, which it accepted (a test finds each).
            if let Err(error) = templates.insert(template, template) {
                tracing::error!(%error, template, "a route template the matcher refuses");
            }
        }
        templates
    });

impl Audience {
    /// Whether a signed-in caller of `role` passes (anonymous callers: `admits_anonymous`).
    pub fn admits(self, role: Role) -> bool {
        match self {
            Public | Anyone | User => true,
            Staff => matches!(role, Role::Organizer | Role::Admin),
            Admin => role == Role::Admin,
        }
    }

    pub fn admits_anonymous(self) -> bool {
        matches!(self, Public | Anyone)
    }
}

impl Rule {
    /// What `caller` gets on this route; `draft` when the event concerned is a draft.
    pub fn decide(&self, caller: Caller, draft: bool) -> Decision {
        let role = match caller {
            Caller::Anonymous => None,
            Caller::RecordOwner | Caller::OtherCustomer => Some(Role::Customer),
            Caller::EventOwner | Caller::OtherOrganizer => Some(Role::Organizer),
            Caller::Admin => Some(Role::Admin),
        };
        match role {
            None if !self.audience.admits_anonymous() => return Decision::Unauthorized,
            Some(role) if !self.audience.admits(role) => return Decision::Forbidden,
            _ => {}
        }
        let admin = caller == Caller::Admin;
        match self.ownership {
            O::None => Decision::Allow,
            O::Event if admin || caller == Caller::EventOwner => Decision::Allow,
            O::Event if draft => Decision::NotFound,
            O::Event => Decision::Forbidden,
            O::EventVisible if draft && !(admin || caller == Caller::EventOwner) => {
                Decision::NotFound
            }
            O::EventVisible => Decision::Allow,
            O::Record if admin || caller == Caller::RecordOwner => Decision::Allow,
            O::Record => Decision::NotFound,
            O::RecordOwnerOnly if caller == Caller::RecordOwner => Decision::Allow,
            O::RecordOwnerOnly if admin => Decision::Forbidden,
            O::RecordOwnerOnly => Decision::NotFound,
            O::PathUser if admin || caller == Caller::RecordOwner => Decision::Allow,
            O::PathUser => Decision::Forbidden,
            O::Endpoint if admin || caller == Caller::EventOwner => Decision::Allow,
            O::Endpoint => Decision::NotFound,
        }
    }
}

/// The middleware (a route layer, so the route template is known): finds the route's rule and
/// enforces its audience. The caller it verified is left in the request, so handlers do not
/// look the token up again.
pub async fn enforce(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(template) = template else {
        return next.run(request).await;
    };
    let Some(rule) = find(request.method(), &template) else {
        if TABLE.iter().any(|r| r.path == template) {
            // Another method of a known route: the router answers 405.
            return next.run(request).await;
        }
        return AppError::Internal(anyhow::anyhow!(
            "route {} {template} has no access rule",
            request.method()
        ))
        .into_response();
    };
    if rule.audience == Public {
        return next.run(request).await;
    }
    let verified = request.extensions().get::<VerifiedPrincipal>().cloned();
    let principal = match caller(&state, verified, request.headers()).await {
        Ok(principal) => principal,
        Err(e) => return e.into_response(),
    };
    match principal {
        None if rule.audience.admits_anonymous() => {}
        None => return AppError::Unauthorized.into_response(),
        Some(p) if !rule.audience.admits(p.role) => {
            return refuse_by_role(&state, &request, &p, rule)
        }
        Some(p) => {
            request.extensions_mut().insert(VerifiedPrincipal(p));
        }
    }
    next.run(request).await
}

/// The 403 of a signed-in caller whose role the route does not admit, recorded in the audit
/// trail (`access.denied` on the route, as `METHOD /template`): a customer trying the
/// operators' routes is what an operator looks for there. Recorded as a refusal the caller
/// can repeat at will (`AuditLog::record_refusal`: a burst, then one a second per caller).
fn refuse_by_role(
    state: &AppState,
    request: &Request,
    caller: &Principal,
    rule: &Rule,
) -> Response {
    let refusal = ApiError::from(AppError::Forbidden(match rule.audience {
        Staff => "only organizers and admins may do this",
        _ => "only admins may do this",
    }));
    let route = format!("{} {}", rule.method, rule.path);
    let record = state.audit_record(
        &RequestContext::of(request.extensions()),
        Some(caller),
        "access.denied",
        ("route", Some(route)),
        Some(&refusal),
        serde_json::json!({}),
    );
    state.audit.record_refusal(caller.user_id.0, record);
    refusal.into_response()
}

/// The caller behind the request's token, if any; an unusable token is a 401.
async fn caller(
    state: &AppState,
    verified: Option<VerifiedPrincipal>,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    if let Some(VerifiedPrincipal(p)) = verified {
        return Ok(Some(p));
    }
    match bearer(headers)? {
        None => Ok(None),
        Some(token) => Ok(Some(state.auth.authenticate(token).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A concrete path finds its template; literal segments win over parameters.
    #[test]
    fn concrete_paths_find_their_template() {
        assert_eq!(template_of("/admin/dlq/stats"), Some("/admin/dlq/stats"));
        assert_eq!(template_of("/admin/dlq/7"), Some("/admin/dlq/{id}"));
        assert_eq!(
            template_of("/api/payments/user/u1"),
            Some("/api/payments/user/{user_id}")
        );
        assert_eq!(
            template_of("/api/events/e1/publish"),
            Some("/api/events/{id}/publish")
        );
        assert_eq!(template_of("/no/such/route"), None);
        // Lengths must agree: a prefix or an extension of a template is not that template.
        assert_eq!(template_of("/admin/dlq"), Some("/admin/dlq"));
        assert_eq!(template_of("/admin/dlq/7/extra/more"), None);
        // A parameter takes a segment, as the router's: an empty one is no route.
        assert_eq!(template_of("/admin/dlq/"), None);
    }

    /// Every template, with its parameters filled in, is found again (the one the span names).
    #[test]
    fn every_template_is_found_from_a_path_it_takes() {
        for rule in TABLE {
            let path: Vec<&str> = rule
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "x1" } else { s })
                .collect();
            assert_eq!(
                template_of(&path.join("/")),
                Some(rule.path),
                "{}",
                rule.path
            );
        }
    }

    /// Every route the router serves has exactly one rule (the router cannot outgrow the table).
    #[test]
    fn every_routed_path_has_exactly_one_rule() {
        let doc = crate::http::openapi();
        let mut routed = vec![("GET".to_owned(), "/openapi.json".to_owned())];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    routed.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        for (method, path) in &routed {
            let count = TABLE
                .iter()
                .filter(|r| r.method == method && r.path == path)
                .count();
            assert_eq!(count, 1, "{method} {path} has {count} rules");
        }
        let mut seen = std::collections::HashSet::new();
        for r in TABLE {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
    }

    /// The decisions API.md states in words, spot-checked.
    #[test]
    fn decisions_follow_the_contract() {
        let get = |m, p| find(&m, p).unwrap();
        let pay = get(Method::POST, "/api/payments");
        assert_eq!(pay.decide(Caller::Admin, false), Decision::Forbidden);
        assert_eq!(pay.decide(Caller::OtherCustomer, false), Decision::NotFound);
        let edit = get(Method::PUT, "/api/events/{id}");
        assert_eq!(
            edit.decide(Caller::OtherOrganizer, false),
            Decision::Forbidden
        );
        assert_eq!(
            edit.decide(Caller::OtherOrganizer, true),
            Decision::NotFound
        );
        assert_eq!(
            edit.decide(Caller::Anonymous, false),
            Decision::Unauthorized
        );
        let create = get(Method::POST, "/api/events");
        assert_eq!(
            create.decide(Caller::RecordOwner, false),
            Decision::Forbidden
        );
        assert_eq!(create.decide(Caller::EventOwner, false), Decision::Allow);
        let audit = get(Method::GET, "/admin/audit");
        assert_eq!(audit.decide(Caller::EventOwner, false), Decision::Forbidden);
        assert_eq!(audit.decide(Caller::Admin, false), Decision::Allow);
        assert_eq!(get(Method::HEAD, "/health").audience, Public);
    }
}
