//! The service's HTTP API as `ticketing-admin` uses it: sign in once, then send requests with
//! the admin's bearer token. Mutations therefore take exactly the path (checks, audit trail)
//! that they take for any other admin client.

use crate::cli::ApiArgs;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// How long one request may take: a DLQ retry re-runs a handler, so not too short.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the service at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status; `body` is its problem+json (or `null`).
    #[error("{method} {path} answered {status}")]
    Refused {
        method: Method,
        path: String,
        status: StatusCode,
        body: Value,
    },
    #[error(
        "no credentials: pass --token (TICKETING_TOKEN) or --email and --password \
         (TICKETING_ADMIN_EMAIL, TICKETING_ADMIN_PASSWORD) before the subcommand"
    )]
    NoCredentials,
    #[error("the login answer carries no token")]
    NoToken,
}

pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(args: &ApiArgs) -> Result<Api, ApiError> {
        let base = args.api.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| ApiError::Unreachable {
                url: base.clone(),
                source,
            })?;
        Ok(Api {
            base,
            http,
            token: args.token.clone(),
        })
    }

    /// Signs in with `--email`/`--password` unless a token was given.
    pub async fn sign_in(mut self, args: &ApiArgs) -> Result<Api, ApiError> {
        if self.token.is_some() {
            return Ok(self);
        }
        let (Some(email), Some(password)) = (&args.email, &args.password) else {
            return Err(ApiError::NoCredentials);
        };
        let login = self
            .call(
                Method::POST,
                "/auth/login",
                Some(json!({"email": email, "password": password})),
            )
            .await?;
        let token = login["token"].as_str().ok_or(ApiError::NoToken)?;
        self.token = Some(token.to_owned());
        Ok(self)
    }

    /// Sends a request and returns the JSON body of a 2xx answer (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        self.send(method, path, &[], body).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let unreachable = |source| ApiError::Unreachable {
            url: self.base.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(ApiError::Refused {
                method,
                path: path.to_owned(),
                status,
                body,
            })
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    /// GETs `path` with the given query parameters (absent ones left out).
    pub async fn list(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<Value, ApiError> {
        let query: Vec<(&str, &str)> = query
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
            .collect();
        self.send(Method::GET, path, &query, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// GETs an operations route (`/health`, `/ready`) without signing in, with a short
    /// timeout: `Ok((status, body))` for any answer, `Err` when nothing answers.
    pub async fn probe(&self, path: &str) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}
