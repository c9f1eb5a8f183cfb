//! The revocation feed on PostgreSQL: how a logout or role change made by one process reaches
//! the `SessionCache` of every other. The PostgreSQL store announces each deleted session and
//! each changed user on `CHANNEL` in the transaction that makes the change (`NOTIFY` is
//! delivered at commit, in commit order). Every instance LISTENs and evicts what it hears, and
//! sends a heartbeat on the same channel every `HEARTBEAT`: hearing one proves that everything
//! committed before it has been heard, so each keeps the cache live for `cache::LIVENESS`. A
//! lost or silent connection therefore turns the cache off within that bound; a new
//! connection starts with an empty cache, since revocations sent meanwhile are lost. A
//! heartbeat that gets no answer is given up, so a silent connection cannot stop them.

use super::cache::SessionCache;
use crate::backoff::Backoff;
use crate::domain::UserId;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The channel of session revocations and heartbeats.
pub const CHANNEL: &str = "ticketing_sessions";
/// Payload prefix of a deleted session (followed by its token digest).
pub const SESSION: &str = "session:";
/// Payload prefix of a changed user (followed by the user id).
pub const USER: &str = "user:";
/// The heartbeat's payload.
const ALIVE: &str = "alive";
/// How often each instance sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// A listener that heard nothing (not even a heartbeat) for this long is given up and
/// replaced, in case its connection died silently.
const SILENCE: Duration = Duration::from_secs(2);

/// Follows the feed into `cache` (built `SessionCache::guarded`) on a connection of `listen`
/// (which it keeps) and sends this instance's heartbeats over `notify` (one short statement
/// each; the service gives both the same pool of two), until aborted.
pub fn spawn(listen: PgPool, notify: PgPool, cache: Arc<SessionCache>) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::join!(heartbeat(notify), follow(listen, cache));
    })
}

async fn heartbeat(pool: PgPool) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let send = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(ALIVE)
            .execute(&pool);
        // A heartbeat stuck on a connection gone silent would stop them all, and with them
        // the cache: it is given up after `SILENCE` (its connection dropped, `db::within`).
        let sent = crate::db::within(SILENCE, send, || sqlx::Error::PoolTimedOut).await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot send the session feed heartbeat");
        }
    }
}

async fn follow(pool: PgPool, cache: Arc<SessionCache>) {
    let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match listen(&pool).await {
            Ok(mut listener) => {
                backoff.reset();
                // Whatever was revoked while nobody listened is unknown here.
                cache.clear();
                while let Ok(Ok(Some(notification))) =
                    tokio::time::timeout(SILENCE, listener.try_recv()).await
                {
                    apply(&cache, notification.payload());
                }
                cache.lose_feed();
                tracing::warn!("lost the session revocation feed: sessions bypass the cache");
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for session revocations"),
        }
        backoff.wait().await;
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = crate::db::listener(pool).await?;
    // A lost connection ends this listener (and the cache's liveness) instead of being
    // replaced behind our back.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// One notification's effect on the cache. Anything unreadable clears it: safe, if slower.
fn apply(cache: &SessionCache, payload: &str) {
    if payload == ALIVE {
        cache.confirm_live();
    } else if let Some(token_hash) = payload.strip_prefix(SESSION) {
        cache.evict_session(token_hash);
    } else if let Some(user) = payload
        .strip_prefix(USER)
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
    {
        cache.evict_user(UserId(user));
    } else {
        cache.clear();
    }
}

#[cfg(test)]
mod tests;
