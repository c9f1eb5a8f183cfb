//! A writer's turn on a sale (`EventStore::take_turn`) on PostgreSQL. A locked turn is one
//! transaction in two round trips: `BEGIN`, the lock of the sale's head row (`SELECT ... FOR
//! UPDATE`, created first for a new sale) and a read of the sale's events after what the writer
//! knows (only when the head moved past it) as one simple query; then, once decided, the append
//! (`append.rs`, its arguments written in) and `COMMIT` as another. Other instances' writers
//! wait for the sale for one round trip after the decision. An optimistic turn decides first
//! and sends one autocommit statement that appends only if the sale's head is still what the
//! writer knows: one statement per batch when a writer has its sale to itself.

use super::append::{appended, inlined, insert, Appended};
use super::{to_u64, EventRow, PostgresEventStore, COLUMNS};
use crate::domain::EventId;
use crate::eventstore::{
    check_contiguous, Decide, Known, NewEvent, RecordedEvent, StoreError, Turned,
};
use sqlx::pool::PoolConnection;
use sqlx::{FromRow, Postgres, Row};
use std::sync::Arc;

/// What a turn returns to `take_turn`: `Ok(Err(..))` is a store error found before anything was
/// sent (malformed events, unreadable rows); `Err` is a database error.
type TurnResult = Result<Result<Turned, StoreError>, sqlx::Error>;

impl PostgresEventStore {
    pub(super) async fn locked_turn(
        &self,
        sale_id: EventId,
        known: Known,
        decide: &mut Decide<'_>,
        events: &mut Vec<NewEvent>,
    ) -> TurnResult {
        let mut conn = TurnConnection {
            conn: self.pool.acquire().await?,
            in_transaction: false,
        };
        // The lock and the read in one round trip, the transaction's `BEGIN` with them: three
        // statements of one simple query (values formatted: a UUID and integers, nothing to
        // escape). The read must be a statement of its own: a statement's snapshot is taken
        // when it starts, so it must start after the lock was granted to see the previous
        // holder's commit. It reads nothing when the head is what the writer knows (the usual
        // case with one instance), and everything when the writer knows nothing (a sale that
        // had no events when its writer hydrated: no head is trusted, an older binary may not
        // have moved it).
        let moved = if known == Known::default() {
            String::new()
        } else {
            format!(
                "AND COALESCE((SELECT events FROM sale_heads WHERE sale_id = '{sale}'), 0) <> {known}",
                sale = sale_id.0,
                known = i64::try_from(known.events).unwrap_or(i64::MAX),
            )
        };
        let lock_and_read = format!(
            "SELECT events FROM sale_heads WHERE sale_id = '{sale}' FOR UPDATE;
             SELECT {COLUMNS} FROM events WHERE sale_id = '{sale}' AND position > {after} {moved}
             ORDER BY position",
            sale = sale_id.0,
            after = i64::try_from(known.position).unwrap_or(i64::MAX),
        );
        let mut sql = format!("BEGIN; {lock_and_read}");
        let mut created = false;
        let (head, fresh) = loop {
            // A `&str` without arguments goes as a simple query, several statements allowed.
            let rows = conn.run(&sql).await?;
            match read_rows(&rows) {
                Ok((Some(head), fresh)) => break (head, fresh),
                // A sale nothing was appended to has no head row to lock: create it (waiting
                // for a writer that is creating it too), then lock it.
                Ok((None, _)) if !created => {
                    sql = format!(
                        "INSERT INTO sale_heads (sale_id, events) VALUES ('{sale}', 0)
                         ON CONFLICT DO NOTHING; {lock_and_read}",
                        sale = sale_id.0
                    );
                    created = true;
                }
                Ok((None, _)) => {
                    conn.rollback().await?;
                    return Ok(Err(StoreError::Unavailable(format!(
                        "the head of sale {sale_id} vanished"
                    ))));
                }
                Err(e) => {
                    conn.rollback().await?;
                    return Ok(Err(e));
                }
            }
        };
        // Committed by other instances: this instance's readers of the log will want them.
        self.tail.learned(&fresh);
        let known = Known {
            position: fresh.last().map_or(known.position, |e| e.position),
            events: head,
        };
        *events = decide(&fresh);
        if events.is_empty() {
            conn.rollback().await?;
            return Ok(Ok(Turned::Done { last: None, known }));
        }
        if let Err(e) = check_contiguous(events) {
            conn.rollback().await?;
            return Ok(Err(e));
        }
        // The append and the commit in one round trip: the sale is held for one more
        // round trip after the decision, not two. With the head locked, the statement cannot
        // find it moved; if it did (no row), the commit commits nothing.
        let sql = format!(
            "{}; COMMIT",
            inlined(sale_id, events, Some(head), &self.tag)?
        );
        let rows = conn.end(&sql).await?;
        let Some(row) = rows.first() else {
            return Ok(Ok(Turned::Stale));
        };
        let row = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let appended = appended(row);
        self.tail
            .committed(sale_id, events, appended.last, appended.recorded_at);
        Ok(Ok(appended_turn(&appended)))
    }

    pub(super) async fn optimistic_turn(
        &self,
        sale_id: EventId,
        known: Known,
        decide: &mut Decide<'_>,
        events: &mut Vec<NewEvent>,
    ) -> TurnResult {
        *events = decide(&[]);
        if events.is_empty() {
            // Decisions that write nothing (refusals) were made on the writer's state too:
            // they stand only if nobody wrote the sale meanwhile.
            let head: Option<i64> =
                sqlx::query_scalar("SELECT events FROM sale_heads WHERE sale_id = $1")
                    .bind(sale_id.0)
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(Ok(if head.map_or(0, to_u64) == known.events {
                Turned::Done { last: None, known }
            } else {
                Turned::Stale
            }));
        }
        if let Err(e) = check_contiguous(events) {
            return Ok(Err(e));
        }
        let Some(appended) =
            insert(&self.pool, sale_id, events, Some(known.events), &self.tag).await?
        else {
            return Ok(Ok(Turned::Stale));
        };
        self.tail
            .committed(sale_id, events, appended.last, appended.recorded_at);
        Ok(Ok(appended_turn(&appended)))
    }
}

/// A pooled connection during a locked turn. Its transaction is begun and ended by the turn's
/// own simple queries (`BEGIN` with the lock, `COMMIT` with the append), so sqlx does not know
/// about it: dropped while the transaction may be open (an error, a cancelled turn), the
/// connection is closed rather than pooled, and the server rolls back and releases the sale.
struct TurnConnection {
    conn: PoolConnection<Postgres>,
    in_transaction: bool,
}

impl Drop for TurnConnection {
    fn drop(&mut self) {
        if self.in_transaction {
            self.conn.close_on_drop();
        }
    }
}

impl TurnConnection {
    /// Runs `sql` (which may begin the transaction) as a simple query.
    async fn run(&mut self, sql: &str) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        self.in_transaction = true;
        let conn: &mut sqlx::PgConnection = &mut self.conn;
        sqlx::Executor::fetch_all(conn, sql).await
    }

    /// Runs `sql`, which ends the transaction.
    async fn end(mut self, sql: &str) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        let rows = self.run(sql).await?;
        self.in_transaction = false;
        Ok(rows)
    }

    /// Ends the turn's transaction without writing anything.
    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await.map(drop)
    }
}

/// A turn that appended: the writer now knows the sale up to its own last event.
fn appended_turn(appended: &Appended) -> Turned {
    Turned::Done {
        last: Some(appended.last),
        known: Known {
            position: appended.last,
            events: appended.head,
        },
    }
}

/// The locked turn's rows: the head (the lock's one-column row; `None` without a head row)
/// and the sale's new events.
fn read_rows(
    rows: &[sqlx::postgres::PgRow],
) -> Result<(Option<u64>, Vec<Arc<RecordedEvent>>), StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("unreadable event row: {e}"));
    let mut head = None;
    let mut fresh = Vec::new();
    for row in rows {
        if row.len() == 1 {
            head = Some(to_u64(row.try_get::<i64, _>(0).map_err(corrupt)?));
        } else {
            let row = EventRow::from_row(row).map_err(corrupt)?;
            fresh.push(Arc::new(RecordedEvent::try_from(row)?));
        }
    }
    Ok((head, fresh))
}
