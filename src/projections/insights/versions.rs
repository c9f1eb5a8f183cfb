//! The insights consumer's version guard on PostgreSQL, set-based: two statements per batch
//! whatever its size. A reservation stream's version is kept on its purchase row
//! (`insight_purchases.version`, written by the statements that apply its events, each at its
//! event's version: `postgres.rs`, `confirmations.rs`); every other stream's,
//! and a reservation's whose version was kept before that column or set by `skip` before its
//! placement applied, in `consumer_stream_versions`. `lock` reads (and locks, in stream order)
//! both and takes the greater; `GuardedBatch` decides in memory which events are new (above
//! their stream's version, counting earlier events of the batch) and `record` moves the other
//! streams' versions in one statement: existing rows updated, rows of new streams inserted. A
//! stream absent at `lock` is not locked, so another member of the group (two briefly hold one
//! partition during a rebalance) may insert it meanwhile: then the insert skips it (for a new
//! purchase, the placement's insert does), the race is reported lost, and the caller rolls the
//! whole batch back and decides again.

use super::{version_gap, InsightsError, CONSUMER};
use crate::bus::consumer::Applied;
use crate::bus::envelope::BusEvent;
use foldhash::{HashMap, HashMapExt};
use sqlx::{Postgres, Transaction};

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
/// order, then those on the purchase rows of its reservation streams (`$3`, sorted, named by
/// `$4`), so two members locking overlapping batches cannot deadlock. One primary-key probe
/// per stream whatever the tables' size: `stream_id = ANY($2)` was planned as a sequential
/// scan of the whole table for batches of tens of streams while the table held a few
/// thousand rows, and kept scanning as it grew (one scan per batch, 1.6 M rows read in one
/// benchmark run; BENCHMARKS.md, session 23). A subquery that locks rows is never flattened
/// into a join, so it stays a nested loop over the batch's streams.
const LOCK: &str = "SELECT v.stream_id, v.version FROM UNNEST($2::text[]) AS s(id)
    CROSS JOIN LATERAL (SELECT stream_id, version FROM consumer_stream_versions
                         WHERE consumer = $1 AND stream_id = s.id FOR UPDATE) v
    UNION ALL
    SELECT r.name, p.version FROM UNNEST($3::uuid[], $4::text[]) AS r(id, name)
    CROSS JOIN LATERAL (SELECT version FROM insight_purchases
                         WHERE reservation_id = r.id FOR UPDATE) p";

/// The reservation a stream is of, if it is a reservation's stream (`reservation-<uuid>`).
pub(super) fn reservation_of(stream_id: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(stream_id.strip_prefix("reservation-")?).ok()
}

/// Locks the versions of `events`' streams and decides which events are new.
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    events: &[BusEvent],
) -> Result<GuardedBatch, sqlx::Error> {
    let mut streams: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut purchases: Vec<(uuid::Uuid, &str)> = streams
        .iter()
        .filter_map(|s| Some((reservation_of(s)?, *s)))
        .collect();
    purchases.sort_unstable();
    let (ids, names): (Vec<uuid::Uuid>, Vec<&str>) = purchases.into_iter().unzip();
    let mut before: HashMap<String, i64> = HashMap::new();
    let rows: Vec<(String, i64)> = sqlx::query_as(LOCK)
        .bind(CONSUMER)
        .bind(&streams)
        .bind(&ids)
        .bind(&names)
        .fetch_all(&mut **tx)
        .await?;
    for (stream, version) in rows {
        let at = before.entry(stream).or_insert(version);
        *at = (*at).max(version);
    }
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

    /// Moves the versions of the streams other than reservations' in one statement. False
    /// when another transaction inserted a stream this batch found absent (the decisions are
    /// then void: roll back, decide again).
    pub async fn record(&self, tx: &mut Transaction<'_, Postgres>) -> Result<bool, sqlx::Error> {
        let (mut fresh, mut moved) = ((vec![], vec![]), (vec![], vec![]));
        // In stream order, as `lock` locks: two members inserting the same new streams wait
        // for each other in one order, never in a circle.
        let mut after: Vec<(&String, &i64)> = self
            .after
            .iter()
            .filter(|(stream, _)| reservation_of(stream).is_none())
            .collect();
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

    /// A batch of 70 streams against tables of 5 000 is read through their primary keys (the
    /// `ANY` form was a sequential scan there).
    #[tokio::test]
    async fn the_lock_probes_the_primary_keys_whatever_the_table_size() {
        let mut conn = db::testing::migrated_connection(db::projections_migrator()).await;
        sqlx::raw_sql(
            "INSERT INTO consumer_stream_versions
             SELECT 'insights', 'reservation-' || gen_random_uuid(), 1 FROM generate_series(1, 5000);
             INSERT INTO insight_purchases (reservation_id, event_id, user_id, section, quantity,
                                            total_cents, currency, status, version)
             SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'A', 1, 100, 'USD',
                    'pending', 1
               FROM generate_series(1, 5000);
             ANALYZE consumer_stream_versions; ANALYZE insight_purchases",
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
        let mut ids: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT reservation_id FROM insight_purchases LIMIT 70")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        ids.sort_unstable();
        let names: Vec<String> = ids.iter().map(|id| format!("reservation-{id}")).collect();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", super::LOCK))
            .bind(super::CONSUMER)
            .bind(&streams)
            .bind(&ids)
            .bind(&names)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        db::testing::assert_probes_only(&plan, "consumer_stream_versions_pkey");
        db::testing::assert_probes_only(&plan, "insight_purchases_pkey");
    }
}
