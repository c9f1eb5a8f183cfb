//! Idempotent answers in PostgreSQL (`idempotency_keys`), read and written in batches
//! (`Batcher`): every look-up or answer that arrives while a statement is in flight goes into
//! the next one (group commit, as the event store's writers do). Under a flash sale that turns
//! one SELECT and one INSERT per keyed request into one of each per batch, without changing
//! what a retry sees. A stored refusal gives way to a later success of its key (`save`).

use super::{Answer, Key, Stored};
use crate::batcher::{Batch, Batcher};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

enum Request {
    Load(Key),
    Save(Key, Stored),
}

/// The handle the idempotency store talks to; the batching task ends once it is dropped.
pub(super) struct DurableAnswers {
    batcher: Batcher<Batched>,
    pool: sqlx::PgPool,
    /// Statements the batching task has run.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "only the test that measures the batching reads it"
        )
    )]
    statements: Arc<AtomicU64>,
}

impl DurableAnswers {
    pub(super) fn start(pool: sqlx::PgPool, limit: std::time::Duration) -> Self {
        let statements = Arc::new(AtomicU64::new(0));
        let batched = Batched {
            pool: pool.clone(),
            statements: Arc::clone(&statements),
        };
        Self {
            batcher: Batcher::start(batched, limit),
            pool,
            statements,
        }
    }

    #[cfg(test)]
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }

    /// The answer stored for `key` in the last 24 hours; `None` also when the database
    /// cannot be read (logged): the request then runs, and ids derived from the key keep a
    /// second run from creating anything twice.
    pub(super) async fn load(&self, key: &Key) -> Option<Stored> {
        self.batcher.ask(Request::Load(key.clone())).await.ok()?
    }

    /// Stores an answer in the background: the client is not kept waiting for it. Until the
    /// row lands, a retry reaching another instance re-runs the handler, which the
    /// key-derived ids make harmless (it finds what the first attempt created).
    pub(super) fn save_later(&self, key: &Key, stored: &Stored) {
        let request = Request::Save(key.clone(), stored.clone());
        if let Err(lost) = self.batcher.tell(request) {
            tracing::warn!(%lost, "the idempotency writer has stopped or is full; an answer was not stored");
        }
    }

    /// Deletes answers older than 24 hours.
    pub(super) async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
    }
}

/// Runs a batch as one INSERT (the answers) and one SELECT (the look-ups).
struct Batched {
    pool: sqlx::PgPool,
    statements: Arc<AtomicU64>,
}

impl Batch for Batched {
    type Request = Request;
    /// A look-up's stored answer; `None` for a save.
    type Answer = Option<Stored>;

    async fn run(&mut self, batch: &[Request]) -> Vec<Option<Stored>> {
        let saves: Vec<(&Key, &Stored)> = batch
            .iter()
            .filter_map(|request| match request {
                Request::Save(key, stored) => Some((key, stored)),
                Request::Load(_) => None,
            })
            .collect();
        let loads: Vec<&Key> = batch
            .iter()
            .filter_map(|request| match request {
                Request::Load(key) => Some(key),
                Request::Save(..) => None,
            })
            .collect();
        // Answers first: a look-up in the same batch then already sees them.
        if !saves.is_empty() {
            self.statements.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = save(&self.pool, &saves).await {
                tracing::warn!(error = %e, count = saves.len(), "cannot store idempotent answers");
            }
        }
        let mut found = HashMap::new();
        if !loads.is_empty() {
            self.statements.fetch_add(1, Ordering::SeqCst);
            match load(&self.pool, &loads).await {
                Ok(loaded) => found = loaded,
                Err(e) => tracing::warn!(error = %e, "cannot read idempotency keys"),
            }
        }
        let mut loaded = 0..;
        batch
            .iter()
            .map(|request| match request {
                Request::Load(_) => loaded.next().and_then(|index| found.remove(&index)),
                Request::Save(..) => None,
            })
            .collect()
    }
}

type Row = (i64, Vec<u8>, i16, Value, Option<String>);

/// The stored answers of a batch of keys: one primary-key look-up per key, whatever the
/// table's statistics. A LATERAL with a LIMIT is not flattened into a join, so no plan can
/// read the whole table; a plain join got a generic plan cached while the table was empty (a
/// hash join over a sequential scan) and kept it as the table grew during the sale: 2.8 ms a
/// look-up at 20 000 keys, the run's largest statement (BENCHMARKS.md, session 23).
const LOAD: &str = "SELECT (k.i - 1)::int8, ik.fingerprint, ik.status, ik.body, ik.location
       FROM UNNEST($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS k(user_id, scope, key, i)
       CROSS JOIN LATERAL (
           SELECT fingerprint, status, body, location FROM idempotency_keys
            WHERE user_id = k.user_id AND scope = k.scope AND key = k.key
              AND created_at > now() - interval '24 hours'
            LIMIT 1) ik";

/// The stored answers of `keys`, by their index in `keys`.
async fn load(pool: &sqlx::PgPool, keys: &[&Key]) -> Result<HashMap<usize, Stored>, sqlx::Error> {
    let users: Vec<uuid::Uuid> = keys.iter().map(|k| k.0 .0).collect();
    let scopes: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let rows: Vec<Row> = sqlx::query_as(LOAD)
        .bind(users)
        .bind(scopes)
        .bind(names)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().filter_map(decode).collect())
}

/// A row that does not decode (a fingerprint of the wrong length, a status out of range) is
/// treated as absent: the request runs again, which the key-derived ids make harmless.
fn decode((index, fingerprint, status, body, location): Row) -> Option<(usize, Stored)> {
    let stored = Stored {
        fingerprint: fingerprint.try_into().ok()?,
        answer: Answer {
            status: u16::try_from(status).ok()?,
            body: body.to_string().into(),
            location,
        },
        at: Instant::now(),
    };
    Some((usize::try_from(index).ok()?, stored))
}

/// Stores a batch of answers. A key's stored refusal gives way to a success (the request ran
/// again on an instance without the refusal in memory and the state had changed, seats came
/// back): the table then says what the key made, so a later retry anywhere replays the
/// success, not a refusal of what exists. A success is never overwritten, nor a refusal by
/// another refusal (a retry of a refused request finds the first refusal and replays it). An
/// answer older than 24 hours, which no look-up returns, gives way to any new one.
async fn save(pool: &sqlx::PgPool, saves: &[(&Key, &Stored)]) -> Result<(), sqlx::Error> {
    // One row per key: `ON CONFLICT DO UPDATE` refuses a statement that names a row twice,
    // which would lose the whole batch. A key is saved once per run, and a run replays what
    // this instance keeps, so a repeat is a key whose answer was forgotten here meanwhile:
    // the later answer is the one kept. In key order, so two instances' batches upserting
    // the same keys wait for each other's rows instead of deadlocking.
    let latest: BTreeMap<&Key, &Stored> = saves.iter().copied().collect();
    let saves: Vec<(&Key, &Stored)> = latest.into_iter().collect();
    let users: Vec<uuid::Uuid> = saves.iter().map(|(k, _)| k.0 .0).collect();
    let scopes: Vec<&str> = saves.iter().map(|(k, _)| k.1).collect();
    let names: Vec<&str> = saves.iter().map(|(k, _)| k.2.as_str()).collect();
    let fingerprints: Vec<&[u8]> = saves
        .iter()
        .map(|(_, s)| s.fingerprint.as_slice())
        .collect();
    let statuses: Vec<i16> = saves
        .iter()
        .map(|(_, s)| i16::try_from(s.answer.status).unwrap_or(i16::MAX))
        .collect();
    let bodies: Vec<&str> = saves.iter().map(|(_, s)| &*s.answer.body).collect();
    let locations: Vec<Option<&str>> = saves
        .iter()
        .map(|(_, s)| s.answer.location.as_deref())
        .collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, scope, key, fingerprint, status, body, location)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int2[],
                              $6::text[]::jsonb[], $7::text[])
         ON CONFLICT (user_id, scope, key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
                body = EXCLUDED.body, location = EXCLUDED.location, created_at = now()
          WHERE (idempotency_keys.status >= 400 AND EXCLUDED.status < 400)
             OR idempotency_keys.created_at <= now() - interval '24 hours'",
    )
    .bind(users)
    .bind(scopes)
    .bind(names)
    .bind(fingerprints)
    .bind(statuses)
    .bind(bodies)
    .bind(locations)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db;

    /// Planned for an empty table and kept (a generic plan, as after five executions), the
    /// look-up still reads keys through the primary key, never the whole table.
    #[tokio::test]
    async fn the_lookup_never_scans_the_table_whatever_plan_is_cached() {
        let mut conn = db::testing::migrated_connection(db::auth_migrator()).await;
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut conn)
            .await
            .unwrap();
        // EXPLAIN of a statement with parameters plans it anew; a prepared one shows the
        // plan it keeps.
        sqlx::raw_sql(&format!(
            "PREPARE lookup(uuid[], text[], text[]) AS {}",
            super::LOAD
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let explain = format!(
            "EXPLAIN EXECUTE lookup('{{{}}}', '{{reserve}}', '{{key}}')",
            uuid::Uuid::new_v4()
        );
        let plan: Vec<String> = sqlx::query_scalar(&explain)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        db::testing::assert_probes_only(&plan, "idempotency_keys_pkey");
    }
}
