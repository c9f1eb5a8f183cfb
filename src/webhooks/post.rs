//! One delivery attempt on the wire: a POST of the delivery's body to its endpoint, signed by
//! the Standard Webhooks scheme with every secret that signs now, and what it ended with.

use super::guard;
use super::signing;
use super::{Delivery, Endpoint};

/// What one attempt ended with.
pub(super) enum Sent {
    Answered(u16),
    /// Time-out, refused connection, unresolvable host.
    NoAnswer(String),
    /// A non-public address in production, or an unusable secret: never sent.
    Refused(String),
}

/// POSTs `delivery` to `endpoint` with `client`, signed with the secrets that sign at `now`
/// (the service's clock); `strict` (production) refuses a non-public address given as an IP
/// literal (host names are checked by the client's resolver).
pub(super) async fn post(
    client: &reqwest::Client,
    strict: bool,
    endpoint: &Endpoint,
    delivery: &Delivery,
    now: chrono::DateTime<chrono::Utc>,
) -> Sent {
    if let Err(e) = guard::check_literal(&endpoint.url, strict) {
        return Sent::Refused(e.to_string());
    }
    // The receiver checks this against its own wall clock, so it is the system time.
    let timestamp = chrono::Utc::now().timestamp();
    let secrets = endpoint.signing_secrets(now);
    let signature = match signing::sign(&secrets, &delivery.message_id, timestamp, &delivery.body) {
        Ok(s) => s,
        Err(e) => return Sent::Refused(e.to_string()),
    };
    let request = client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.clone());
    match request.send().await {
        Ok(response) => Sent::Answered(response.status().as_u16()),
        Err(e) if guard::refused_by_resolver(&e) => {
            Sent::Refused("the host resolves to a non-public address".into())
        }
        Err(e) => Sent::NoAnswer(e.without_url().to_string()),
    }
}
