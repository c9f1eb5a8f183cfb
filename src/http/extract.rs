//! Request extractors that fail with problem+json instead of axum's plain-text rejections:
//! JSON bodies (then validated field by field), typed path and query parameters, the bearer
//! token, and the request context (correlation id) that goes into event metadata.

use super::error::{ApiError, AppError, FieldError};
use super::AppState;
use crate::audit::{AuditRecord, AuditResult};
use crate::auth::Principal;
use crate::eventstore::Metadata;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

/// A JSON body that decoded and passed its `validator` rules.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Buffered first (within the body limit) to look for NUL, then decoded from the
        // buffer. The content type is read before the request is consumed: cloning the
        // request's head for a second extraction copied every header and extension.
        let (parts, body) = req.into_parts();
        let json = is_json(&parts.headers);
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::BadRequest(e.body_text()),
            })?;
        if has_nul(&bytes) {
            return Err(AppError::Validation(vec![FieldError::new(
                "body",
                "text must not contain the NUL character (\\u0000)",
            )])
            .into());
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes).map_err(json_rejection)?;
        value.validate().map_err(validation_errors)?;
        Ok(ApiJson(value))
    }
}

/// Whether the body is declared JSON, as axum's `Json` extractor decides it: a media type
/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
}

/// Whether a JSON text holds a string with the NUL character: the escape `\u0000` (a raw
/// control character is not valid JSON), not preceded by an odd run of backslashes (`\\u0000`
/// is the text backslash-u0000). No store keeps NUL in text (PostgreSQL refuses it), so such a
/// value would be accepted here and fail later: in a read model's projector, for good.
fn has_nul(json: &[u8]) -> bool {
    const ESCAPE: &[u8] = b"\\u0000";
    json.windows(ESCAPE.len())
        .enumerate()
        .filter(|(_, w)| *w == ESCAPE)
        .any(|(at, _)| {
            let backslashes_before = json[..at].iter().rev().take_while(|b| **b == b'\\').count();
            backslashes_before % 2 == 0
        })
}

/// What `Json::from_bytes` refused, as the API answers it.
fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            AppError::Validation(vec![data_error(&e.body_text())]).into()
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!(
            "malformed JSON: {}",
            e.body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        // `from_bytes` gives only the two above; the type has more variants.
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// Turns serde's "path: message" text into a field error.
fn data_error(text: &str) -> FieldError {
    let text =
        text.trim_start_matches("Failed to deserialize the JSON body into the target type: ");
    if let Some(rest) = text.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return FieldError::new(field, "is required");
        }
    }
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') && path != "." => {
            FieldError::new(path, message)
        }
        _ => FieldError::new("body", text),
    }
}

/// Flattens nested validator errors into `field`, `venue.name`, `sections[0].capacity` paths.
pub fn validation_errors(errors: ValidationErrors) -> ApiError {
    fn walk(prefix: &str, errors: &ValidationErrors, out: &mut Vec<FieldError>) {
        for (field, kind) in errors.errors() {
            let path = if prefix.is_empty() {
                field.to_string()
            } else {
                format!("{prefix}.{field}")
            };
            match kind {
                // Struct-level rules report under `__all__`; they name their field in `field`.
                ValidationErrorsKind::Field(list) if field == "__all__" => {
                    out.extend(list.iter().map(|e| {
                        let named = e.params.get("field").and_then(|f| f.as_str());
                        FieldError::new(named.map_or(prefix, |f| f).to_owned(), describe(e))
                    }))
                }
                ValidationErrorsKind::Field(list) => out.extend(
                    list.iter()
                        .map(|e| FieldError::new(path.clone(), describe(e))),
                ),
                ValidationErrorsKind::Struct(inner) => walk(&path, inner, out),
                ValidationErrorsKind::List(items) => {
                    for (i, inner) in items {
                        walk(&format!("{path}[{i}]"), inner, out)
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk("", &errors, &mut out);
    out.sort_by(|a, b| a.field.cmp(&b.field));
    AppError::Validation(out).into()
}

/// A failed rule across fields, reported under `field` (see `validation_errors`).
pub fn field_rule(field: &str, message: &'static str) -> validator::ValidationError {
    let mut error = validator::ValidationError::new("rule").with_message(message.into());
    error.add_param("field".into(), &field);
    error
}

/// A sentence for one validator failure, from its message or its code and bounds.
fn describe(e: &validator::ValidationError) -> String {
    if let Some(message) = &e.message {
        return message.to_string();
    }
    let bound = |name: &str| e.params.get(name).map(|v| v.to_string());
    match (e.code.as_ref(), bound("min"), bound("max"), bound("equal")) {
        ("length", _, _, Some(n)) => format!("must be exactly {n} characters long"),
        ("length", Some(min), Some(max), _) => format!("length must be between {min} and {max}"),
        ("length", Some(min), None, _) => format!("length must be at least {min}"),
        ("length", None, Some(max), _) => format!("length must be at most {max}"),
        ("range", Some(min), Some(max), _) => format!("must be between {min} and {max}"),
        ("range", Some(min), None, _) => format!("must be at least {min}"),
        ("range", None, Some(max), _) => format!("must be at most {max}"),
        ("email", ..) => "must be a valid email address".to_owned(),
        (code, ..) => format!("is invalid ({code})"),
    }
}

/// A typed path parameter; a malformed id is a 400 problem.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid path parameter: {}", e.body_text())))
    }
}

/// Typed query parameters; a malformed value is a 400 problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // `%00` decodes to NUL, which no store keeps in text (see `has_nul`).
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(ApiError::BadRequest(
                "invalid query: the NUL character (%00) is not allowed".into(),
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
    }
}

/// The bearer token, if an `Authorization` header is present; a malformed header is a 401.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AppError::Unauthorized)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AppError::Unauthorized.into()),
    }
}

/// The caller behind this request's bearer token, already verified by the rate-limit or the
/// access middleware; only those insert it, so handlers skip a second token look-up.
#[derive(Debug, Clone)]
pub struct VerifiedPrincipal(pub Principal);

/// A signed-in caller; 401 otherwise.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(VerifiedPrincipal(principal)) = parts.extensions.get::<VerifiedPrincipal>() {
            return Ok(Authenticated(principal.clone()));
        }
        let token = bearer(&parts.headers)?.ok_or(AppError::Unauthorized)?;
        Ok(Authenticated(state.auth.authenticate(token).await?))
    }
}

/// An optional caller: anonymous is fine, but a bad token is still a 401.
pub struct MaybeAuthenticated(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeAuthenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(VerifiedPrincipal(principal)) = parts.extensions.get::<VerifiedPrincipal>() {
            return Ok(MaybeAuthenticated(Some(principal.clone())));
        }
        match bearer(&parts.headers)? {
            None => Ok(MaybeAuthenticated(None)),
            Some(token) => Ok(MaybeAuthenticated(Some(
                state.auth.authenticate(token).await?,
            ))),
        }
    }
}

/// Per-request context set by the middleware.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub correlation_id: String,
    pub request_id: String,
    /// The client's address as the rate limiter sees it (`X-Forwarded-For` only behind a
    /// trusted proxy); `None` for an in-process call. Written out only for an audit record.
    pub client_ip: Option<std::net::IpAddr>,
    /// The `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// Event metadata for a command issued by `user` in this request.
    pub fn metadata(&self, user: &Principal) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.clone()),
            causation_id: Some(self.request_id.clone()),
            user_id: Some(user.user_id),
            // The request's span: the writer, the relay and the consumers continue its trace.
            traceparent: crate::observability::tracecontext::current_traceparent(),
            // Set by a use case whose answer the log records (`app::idempotency`).
            request_fingerprint: None,
        }
    }

    /// The context the middleware left in `extensions`, or new ids for a call without it.
    pub fn of(extensions: &axum::http::Extensions) -> RequestContext {
        extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext {
                correlation_id: uuid::Uuid::new_v4().to_string(),
                request_id: uuid::Uuid::new_v4().to_string(),
                client_ip: None,
                user_agent: None,
            })
    }

    /// An audit record of `action` on a `resource_type`, with this request's correlation id,
    /// client address and user agent, and `caller` (their role as label) as the actor.
    pub fn audit(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        caller: Option<&Principal>,
        action: &str,
        resource_type: &str,
        result: AuditResult,
    ) -> AuditRecord {
        let mut record = AuditRecord {
            correlation_id: Some(self.correlation_id.clone()),
            client_ip: self.client_ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.clone(),
            ..AuditRecord::new(at, action, resource_type, result)
        };
        if let Some(caller) = caller {
            record = record.actor(Some(caller.user_id.0), caller.role.as_str());
        }
        record
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(RequestContext::of(&parts.extensions))
    }
}

/// The `Idempotency-Key` header, if any.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => match v.to_str() {
                Ok(key) if (1..=255).contains(&key.trim().len()) => {
                    Ok(IdempotencyKey(Some(key.trim().to_owned())))
                }
                _ => Err(ApiError::field(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                )),
            },
        }
    }
}

/// JSON Schema counts `5.0` as an integer, serde does not: integer fields of request bodies
/// take this, so that every body the OpenAPI document allows decodes (a fraction or a value
/// out of the field's range is still a 422 naming the field).
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let number = <serde_json::Number as serde::Deserialize>::deserialize(deserializer)?;
    whole(&number).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a whole number in range, got {number}"))
    })
}

/// `whole_number` for an optional field.
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    match <Option<serde_json::Number> as serde::Deserialize>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => whole(&number).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number in range, got {number}"))
        }),
    }
}

fn whole<T: TryFrom<i64> + TryFrom<u64>>(number: &serde_json::Number) -> Option<T> {
    if let Some(n) = number.as_u64() {
        return T::try_from(n).ok();
    }
    if let Some(n) = number.as_i64() {
        return T::try_from(n).ok();
    }
    // Beyond 2^53 a float is not exact; no field of ours goes that far.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let f = number
        .as_f64()
        .filter(|f| f.fract() == 0.0 && f.abs() < EXACT)?;
    #[allow(clippy::cast_possible_truncation)]
    T::try_from(f as i64).ok()
}

#[cfg(test)]
mod tests {
    use super::{has_nul, is_json};
    use axum::http::{header, HeaderMap, HeaderValue};

    /// The media types axum's own `Json` extractor takes, and only those.
    #[test]
    fn json_is_application_json_or_a_json_suffix() {
        let declared = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_bytes(value).unwrap(),
            );
            is_json(&headers)
        };
        let yes = [
            "application/json",
            "application/json; charset=utf-8",
            "application/a+json",
        ];
        let no = ["text/json", "application/jsonx", "text/plain", "json", ""];
        for (value, json) in yes
            .map(|v| (v, true))
            .into_iter()
            .chain(no.map(|v| (v, false)))
        {
            assert_eq!(declared(value.as_bytes()), json, "{value}");
        }
        assert!(!declared(b"application/json\xff"), "not text");
        assert!(!is_json(&HeaderMap::new()), "no content type");
    }

    #[test]
    fn nul_is_found_only_as_an_escape_of_its_own() {
        assert!(has_nul(br#"{"name":"x\u0000"}"#));
        assert!(
            has_nul(br#"{"name":"\\\u0000"}"#),
            "an escaped backslash, then NUL"
        );
        assert!(
            !has_nul(br#"{"name":"\\u0000"}"#),
            "the text backslash-u0000"
        );
        assert!(has_nul(br#"["\u0000"]"#));
        assert!(!has_nul(br#"{"name":"\u0001 \u00e9"}"#));
    }
}
