//! Answers of the command routes: `201 Created` with `Location`, and the `Idempotency-Key`
//! wrapper that stores each answer through `app::idempotency` and replays it (marked
//! `Idempotent-Replayed: true`) for a retry with the same key and body.

use super::error::{problem_response, ApiError};
use super::AppState;
use crate::app::idempotency::{Answer, Outcome, Scope};
use crate::domain::UserId;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

/// A successful answer as a handler produces it: its JSON body already serialized, once, for
/// the client and for the stored answer alike.
pub struct Reply {
    pub status: StatusCode,
    pub body: Arc<str>,
    pub location: Option<String>,
}

impl Reply {
    /// `201 Created` for a new resource at `location`.
    pub fn created(location: String, view: &impl Serialize) -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::CREATED,
            location: Some(location),
            body: serde_json::to_string(view)
                .map_err(anyhow::Error::from)?
                .into(),
        })
    }

    /// The reply as a response: its status, the JSON body and `Location`.
    pub fn into_response(self) -> Response {
        json_response(self.status, &self.body, self.location.as_deref())
    }
}

/// Runs `work` at most once per (user, scope, key) and body, and answers with its result,
/// or with the stored answer of the first request that used the key.
pub async fn idempotent<F>(
    s: &AppState,
    user: UserId,
    scope: Scope,
    key: Option<String>,
    body: &impl Serialize,
    work: F,
) -> Response
where
    F: std::future::Future<Output = Result<Reply, ApiError>>,
{
    // Boxed once, here: `work` passes through three wrappers (this one, the store's `run` and
    // its task-local scope), and each would hold it by value again (rustc does not let a
    // future's unstarted argument share room with its running state). Unboxed, a hold's
    // handler future took 22 KB for 3 KB of work, copied whole as axum boxes it per request.
    let work = Box::pin(work);
    let mut fresh = None;
    let stored = s
        .app
        .idempotency()
        .run(user, scope, key, body, async {
            let result = work.await;
            let answer = answer_of(&result);
            fresh = Some(result);
            answer
        })
        .await;
    match stored {
        Err(refused) => ApiError::from(refused).into_response(),
        Ok(Outcome {
            replayed: true,
            answer,
        }) => {
            let mut response = render(&answer);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Ok(Outcome { answer, .. }) => match fresh {
            Some(result) => respond(result),
            None => render(&answer),
        },
    }
}

fn answer_of(result: &Result<Reply, ApiError>) -> Answer {
    match result {
        Ok(reply) => Answer {
            status: reply.status.as_u16(),
            body: reply.body.clone(),
            location: reply.location.clone(),
        },
        Err(e) => {
            let (status, body) = e.to_problem();
            Answer {
                status: status.as_u16(),
                body: body.to_string().into(),
                location: None,
            }
        }
    }
}

fn respond(result: Result<Reply, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(e) => e.into_response(),
    }
}

fn render(answer: &Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    if status.is_client_error() || status.is_server_error() {
        return problem_response(status, answer.body.to_string());
    }
    json_response(status, &answer.body, answer.location.as_deref())
}

/// `body`, JSON text, as an `application/json` answer with `Location` when there is one.
fn json_response(status: StatusCode, body: &str, location: Option<&str>) -> Response {
    let mut response = (status, body.to_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}
