//! The OpenAPI 3.1 document clients and generators use: the handlers' annotations, completed
//! with what the edge does to every operation, derived from the same sources that do it (the
//! authorization table, the extractors, the limits), so the contract cannot drift from them:
//! - the security each operation accepts (none, optional bearer, or bearer);
//! - every refusal it can answer, as `application/problem+json` with the `Problem` schema:
//!   401/403 by audience, 400/404 for a path id, 400/422 for a query or a body, 413/415 for a
//!   body, 429 (where limited) and 503 with `Retry-After`, 431 and 500 everywhere;
//! - the headers the handlers read or write (`Idempotency-Key`, `If-Match`, `ETag`).

use super::access::{Audience, TABLE};
use serde_json::{json, Map, Value};

/// The completed document.
pub fn complete(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        formats_survive_null(schemas);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let audience = TABLE
                    .iter()
                    .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
                    .map(|r| r.audience);
                if let (Some(audience), Some(operation)) = (audience, operation.as_object_mut()) {
                    complete_operation(path, method, audience, operation);
                }
            }
        }
    }
    add_links(&mut doc);
    doc
}

/// OpenAPI links along a sale (event -> publish -> open sales -> reservation -> payment ->
/// refund), so stateful clients and fuzzers can follow it: each names the operation the
/// answer's ids feed.
fn add_links(doc: &mut Value) {
    let id = |pointer: &str| json!({"id": format!("$response.body#/{pointer}")});
    let reserve = json!({"operationId": "create_reservation", "requestBody": {
        "event_id": "$response.body#/id",
        "section": "$response.body#/sections/0/name",
        "quantity": 1,
    }});
    let by_event = |ops: &[&str]| {
        let mut links: Map<String, Value> = ops
            .iter()
            .map(|op| {
                (
                    (*op).to_owned(),
                    json!({"operationId": op, "parameters": id("id")}),
                )
            })
            .collect();
        links.insert("create_reservation".into(), reserve.clone());
        Value::Object(links)
    };
    let links = [
        (
            "/api/events",
            "post",
            "201",
            by_event(&[
                "get_event",
                "update_event",
                "publish",
                "cancel_event",
                "availability",
                "event_sales",
            ]),
        ),
        (
            "/api/events/{id}/publish",
            "post",
            "200",
            by_event(&["open_sales"]),
        ),
        (
            "/api/events/{id}/open-sales",
            "post",
            "200",
            by_event(&["close_sales", "availability"]),
        ),
        (
            "/api/reservations",
            "post",
            "201",
            json!({
                "get_reservation": {"operationId": "get_reservation",
                    "parameters": id("reservation_id")},
                "cancel_reservation": {"operationId": "cancel_reservation",
                    "parameters": id("reservation_id")},
                "create_payment": {"operationId": "create_payment", "requestBody": {
                    "reservation_id": "$response.body#/reservation_id",
                    "payment_method": {"type": "card", "token": "tok_visa"},
                }},
            }),
        ),
        (
            "/api/payments",
            "post",
            "201",
            json!({
                "get_payment": {"operationId": "get_payment", "parameters": id("payment_id")},
                "refund_payment": {"operationId": "refund_payment",
                    "parameters": id("payment_id")},
            }),
        ),
    ];
    for (path, method, status, links) in links {
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        );
        if let Some(response) = doc.pointer_mut(&pointer) {
            response["links"] = links;
        }
    }
}

/// Rewrites `{"type": [T, "null"], "format": F, ...}` (how utoipa spells an `Option` of a
/// formatted type) as `{"anyOf": [{"type": "null"}, {"type": T, "format": F, ...}]}`: with the
/// type list, generators ignore the format (schemathesis sends `""` as a date-time).
fn formats_survive_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let nullable = map
                .get("type")
                .and_then(Value::as_array)
                .filter(|types| types.len() == 2 && types.contains(&json!("null")))
                .and_then(|types| types.iter().find(|t| *t != "null").cloned());
            if let (Some(kind), true) = (nullable, map.contains_key("format")) {
                let mut inner = std::mem::take(map);
                inner.insert("type".into(), kind);
                let description = inner.remove("description");
                map.insert("anyOf".into(), json!([{"type": "null"}, inner]));
                if let Some(description) = description {
                    map.insert("description".into(), description);
                }
                return;
            }
            map.values_mut().for_each(formats_survive_null);
        }
        Value::Array(items) => items.iter_mut().for_each(formats_survive_null),
        _ => {}
    }
}

/// What can refuse a request before or around its handler, by the shape of the operation.
fn refusals(
    path: &str,
    audience: Audience,
    operation: &Map<String, Value>,
) -> Vec<(u16, &'static str)> {
    let has_body = operation.contains_key("requestBody");
    let has_query = parameters(operation).any(|p| p["in"] == "query");
    let has_id = path.contains('{');
    let mut out = vec![
        (431, "the request's headers are over 16 KiB"),
        (500, "an unexpected error; it has been logged"),
        (
            503,
            "a dependency is unavailable or the request timed out; retry after `Retry-After`",
        ),
    ];
    if !super::ratelimit::OPERATIONS.contains(&path) {
        out.push((
            429,
            "too many requests from this client or user; retry after `Retry-After` seconds",
        ));
    }
    if audience != Audience::Public {
        out.push((
            401,
            "the bearer token is missing, malformed, expired or revoked",
        ));
    }
    if matches!(audience, Audience::User | Audience::Staff | Audience::Admin) {
        out.push((403, "the caller's role or ownership does not allow this"));
    }
    if has_query {
        out.push((
            400,
            "a path id, query parameter or body that is not of its type, or a query holding `%00`",
        ));
    } else if has_id || has_body {
        out.push((400, "a path id or body that is not of its type"));
    }
    if has_id {
        out.push((404, "no such resource (or not visible to the caller)"));
    }
    if has_body {
        out.push((
            422,
            "a value outside its constraints, or a body string holding U+0000 (`\\u0000`); `errors` names each field",
        ));
    } else if has_query || parameters(operation).any(|p| p["in"] == "header") {
        out.push((
            422,
            "a value outside its constraints; `errors` names each field",
        ));
    }
    if has_body {
        out.push((413, "the body is over `BODY_LIMIT_BYTES`"));
        out.push((415, "the body is not `application/json`"));
    }
    out
}

fn parameters(operation: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    operation
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn retry_after() -> Value {
    json!({"Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }})
}

fn complete_operation(
    path: &str,
    method: &str,
    audience: Audience,
    operation: &mut Map<String, Value>,
) {
    let refusals = refusals(path, audience, operation);
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    if let Some(responses) = responses.as_object_mut() {
        for (status, description) in refusals {
            let response = responses
                .entry(status.to_string())
                .or_insert_with(|| json!({}));
            if response["description"].as_str().is_none_or(str::is_empty) {
                response["description"] = json!(description);
            }
        }
        for (status, response) in responses.iter_mut() {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            response["content"] = json!({"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}
            }});
            match status.as_str() {
                "429" | "503" => response["headers"] = retry_after(),
                "401" => {
                    response["headers"] = json!({"WWW-Authenticate": {
                        "description": "`Bearer`",
                        "schema": {"type": "string"},
                    }})
                }
                _ => {}
            }
        }
    }
    operation.insert(
        "security".into(),
        match audience {
            Audience::Public => json!([]),
            // A token is optional, but a token that is sent must be valid.
            Audience::Anyone => json!([{}, {"bearer": []}]),
            _ => json!([{"bearer": []}]),
        },
    );
    headers(path, method, operation);
}

/// Header parameters with the constraints their extractors enforce.
fn headers(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let list = operation.entry("parameters").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for parameter in list.iter_mut() {
        if parameter["in"] == "header" && parameter["name"] == "Idempotency-Key" {
            *parameter = json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Makes a retry safe: the same key and body replay the first \
                    answer; the same key with another body is 422 (used again, on another \
                    instance than the first answer's, for another event's hold or another \
                    reservation's payment, it makes that one instead); a retry while the first \
                    still runs is 409 `idempotency-key-in-use`. A refusal retried on another \
                    instance is decided again and replayed if refused again: a hold refused as \
                    sold out may get seats that came back meanwhile. Kept 24 hours.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                           "pattern": "^[\\x21-\\x7E]([\\x20-\\x7E]*[\\x21-\\x7E])?$"},
            });
        }
    }
    if method == "put" && path == "/api/events/{id}" {
        list.push(json!({
            "name": "If-Match", "in": "header", "required": false,
            "description": "The `ETag` last read (`\"<version>\"`, or `*`): a stale one is 409 \
                `version-mismatch`.",
            "schema": {"type": "string", "pattern": "^(|\\*|(W/)?\"[0-9]{1,19}\")$"},
        }));
    }
    if list.is_empty() {
        operation.remove("parameters");
    }
    if path == "/api/events/{id}" && matches!(method, "get" | "put") {
        if let Some(ok) = operation
            .get_mut("responses")
            .and_then(|r| r.get_mut("200"))
        {
            ok["headers"] = json!({"ETag": {
                "description": "the event's version, for `If-Match`",
                "schema": {"type": "string"},
            }});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation answers every refusal in problem+json and names its security.
    #[test]
    fn every_error_answer_is_problem_json_and_every_operation_has_security() {
        let doc = complete(&crate::http::raw_openapi());
        let paths = doc["paths"].as_object().unwrap();
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["security"].is_array(),
                    "{method} {path} has no security"
                );
                // A path parameter is one the template names; anything else is a query or
                // a header (openapi-python-client drops operations that break this).
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap();
                    let in_template = path.contains(&format!("{{{name}}}"));
                    assert_eq!(
                        parameter["in"] == "path",
                        in_template,
                        "{method} {path}: {parameter}"
                    );
                }
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        let reserve = &doc["paths"]["/api/reservations"]["post"];
        for status in ["400", "401", "403", "409", "422", "429", "503"] {
            assert!(reserve["responses"][status].is_object(), "no {status}");
        }
        assert!(reserve["responses"]["429"]["headers"]["Retry-After"].is_object());
        let quantity =
            &doc["components"]["schemas"]["CreateReservationRequest"]["properties"]["quantity"];
        assert_eq!(
            (quantity["minimum"].as_u64(), quantity["maximum"].as_u64()),
            (Some(1), Some(10))
        );
        let ids: Vec<&Value> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| &operation["operationId"])
            .collect();
        let mut linked = 0;
        for item in paths.values() {
            for operation in item.as_object().unwrap().values() {
                for response in operation["responses"].as_object().unwrap().values() {
                    for link in response["links"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        assert!(ids.contains(&&link["operationId"]), "{link}");
                        linked += 1;
                    }
                }
            }
        }
        assert!(linked >= 10, "{linked} links");
        let email = &doc["components"]["schemas"]["RegisterRequest"]["properties"]["email"];
        assert_eq!(email["format"], "email");
    }
}
