//! The insights consumer's version guard on PostgreSQL (`consumer_stream_versions`), set-based:
//! two statements per batch whatever its size. `lock` reads (and locks, in stream order) the
//! versions of the batch's streams; `GuardedBatch` decides in memory which events are new
//! (above their stream's version, counting earlier events of the batch) and `record` moves the
//! versions in one statement: existing rows updated, rows of new streams inserted. A stream
//! absent at `lock` is not locked, so another member of the group (two briefly hold one
//! partition during a rebalance) may insert it meanwhile: then the insert skips it, `record`
//! reports the race lost, and the caller rolls the whole batch back and decides again.

use super::{version_gap, InsightsError, CONSUMER};
use crate::bus::consumer::Applied;
use crate::bus::envelope::BusEvent;
use sqlx::{Postgres, Transaction};
use std::collections::HashMap;

/// What the guard decided for one batch.
pub(super) struct GuardedBatch {
    /// One answer per event of the batch, in order.
    pub applied: Vec<Applied>,
    /// The first event that skips versions of its stream (`version_gap`): the batch is
    /// refused.
    pub gap: Option<InsightsError>,
    /// The versions the batch's streams were at (absent: never applied).
    before: HashMap<String, i64>,
    /// The version each stream reaches with the batch's new events.
    after: HashMap<String, i64>,
}

/// The versions of a batch's streams (`$2`, sorted), locked one stream after another in that
/// order, so two members locking overlapping batches cannot deadlock. One primary-key probe
/// per stream whatever the table's size: `stream_id = ANY($2)` was planned as a sequential
/// scan of the whole table for batches of tens of streams while the table held a few
/// thousand rows, and kept scanning as it grew (one scan per batch, 1.6 M rows read in one
/// benchmark run; BENCHMARKS.md, session 23). A subquery that locks rows is never flattened
/// into a join, so it stays a nested loop over the batch's streams.
const LOCK: &str = "SELECT v.stream_id, v.version FROM UNNEST($2::text[]) AS s(id)
    CROSS JOIN LATERAL (SELECT stream_id, version FROM consumer_stream_versions
                         WHERE consumer = $1 AND stream_id = s.id FOR UPDATE) v";

/// Locks the versions of `events`' streams and decides which events are new.
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    events: &[BusEvent],
) -> Result<GuardedBatch, sqlx::Error> {
    let mut streams: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    let before: HashMap<String, i64> = sqlx::query_as(LOCK)
        .bind(CONSUMER)
        .bind(&streams)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    let mut after = before.clone();
    let mut gap = None;
    let applied = events
        .iter()
        .map(|e| {
            let version = i64::try_from(e.version).unwrap_or(i64::MAX);
            let at = after.entry(e.stream_id.clone()).or_insert(0);
            if version > *at {
                if gap.is_none() {
                    gap = version_gap(e, u64::try_from(*at).unwrap_or(0));
                }
                *at = version;
                Applied::Applied
            } else {
                Applied::Duplicate
            }
        })
        .collect();
    after.retain(|_, v| *v > 0);
    Ok(GuardedBatch {
        applied,
        gap,
        before,
        after,
    })
}

impl GuardedBatch {
    /// Whether any event of the batch is new.
    pub fn any_applied(&self) -> bool {
        self.applied.contains(&Applied::Applied)
    }

    /// Moves the versions in one statement. False when another transaction inserted a
    /// stream this batch found absent (the decisions are then void: roll back, decide again).
    pub async fn record(&self, tx: &mut Transaction<'_, Postgres>) -> Result<bool, sqlx::Error> {
        let (mut fresh, mut moved) = ((vec![], vec![]), (vec![], vec![]));
        // In stream order, as `lock` locks: two members inserting the same new streams wait
        // for each other in one order, never in a circle.
        let mut after: Vec<(&String, &i64)> = self.after.iter().collect();
        after.sort_unstable();
        for (stream, &version) in after {
            match self.before.get(stream) {
                None => (fresh.0.push(stream.as_str()), fresh.1.push(version)),
                Some(&was) if was < version => {
                    (moved.0.push(stream.as_str()), moved.1.push(version))
                }
                Some(_) => continue,
            };
        }
        let (inserted, updated): (i64, i64) = sqlx::query_as(
            "WITH fresh AS (
                 INSERT INTO consumer_stream_versions (consumer, stream_id, version)
                 SELECT $1, s, v FROM UNNEST($2::text[], $3::bigint[]) AS n(s, v)
                 ON CONFLICT (consumer, stream_id) DO NOTHING RETURNING 1),
             moved AS (
                 UPDATE consumer_stream_versions c SET version = m.v
                   FROM UNNEST($4::text[], $5::bigint[]) AS m(s, v)
                  WHERE c.consumer = $1 AND c.stream_id = m.s AND c.version < m.v RETURNING 1)
             SELECT (SELECT COUNT(*) FROM fresh), (SELECT COUNT(*) FROM moved)",
        )
        .bind(CONSUMER)
        .bind(&fresh.0)
        .bind(&fresh.1)
        .bind(&moved.0)
        .bind(&moved.1)
        .fetch_one(&mut **tx)
        .await?;
        let expected = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(inserted == expected(fresh.0.len()) && updated == expected(moved.0.len()))
    }
}

#[cfg(test)]
mod tests {
    use crate::db;

    /// A batch of 70 streams against a table of 5 000 is read through the primary key (the
    /// `ANY` form was a sequential scan there).
    #[tokio::test]
    async fn the_lock_probes_the_primary_key_whatever_the_table_size() {
        let mut conn = db::testing::migrated_connection(db::projections_migrator()).await;
        sqlx::raw_sql(
            "INSERT INTO consumer_stream_versions
             SELECT 'insights', 'reservation-' || gen_random_uuid(), 1 FROM generate_series(1, 5000);
             ANALYZE consumer_stream_versions",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let mut streams: Vec<String> =
            sqlx::query_scalar("SELECT stream_id FROM consumer_stream_versions LIMIT 70")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        streams.sort_unstable();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", super::LOCK))
            .bind(super::CONSUMER)
            .bind(&streams)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        db::testing::assert_probes_only(&plan, "consumer_stream_versions_pkey");
    }
}
