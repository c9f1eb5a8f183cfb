//! A writer's turn on a sale (`EventStore::take_turn`) on PostgreSQL. A locked turn is one
//! transaction: lock the sale's head row (`SELECT ... FOR UPDATE`, created first for a new
//! sale), read the sale's events
//! after what the writer knows only when the head moved past it, decide, append (`append.rs`),
//! commit. An optimistic turn decides first and sends one autocommit statement that appends
//! only if the sale's head is still what the writer knows: one statement per batch when a
//! writer has its sale to itself.

use super::append::{insert, Appended};
use super::{to_u64, EventRow, PostgresEventStore, COLUMNS};
use crate::domain::EventId;
use crate::eventstore::{
    check_contiguous, Decide, Known, NewEvent, RecordedEvent, StoreError, Turned,
};
use sqlx::{FromRow, Row};
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
        let mut tx = self.pool.begin().await?;
        // The lock and the read in one round trip: two statements of one simple query (values
        // formatted: a UUID and integers, nothing to escape). The read must be a statement of
        // its own: a statement's snapshot is taken when it starts, so it must start after the
        // lock was granted to see the previous holder's commit. It reads nothing when the head
        // is what the writer knows (the usual case with one instance), and everything when the
        // writer knows nothing (a hydration trusts no head: an older binary may not have moved
        // it).
        let moved = if known == Known::default() {
            String::new()
        } else {
            format!(
                "AND COALESCE((SELECT events FROM sale_heads WHERE sale_id = '{sale}'), 0) <> {known}",
                sale = sale_id.0,
                known = i64::try_from(known.events).unwrap_or(i64::MAX),
            )
        };
        let sql = format!(
            "SELECT events FROM sale_heads WHERE sale_id = '{sale}' FOR UPDATE;
             SELECT {COLUMNS} FROM events WHERE sale_id = '{sale}' AND position > {after} {moved}
             ORDER BY position",
            sale = sale_id.0,
            after = i64::try_from(known.position).unwrap_or(i64::MAX),
        );
        let mut created = false;
        let (head, fresh) = loop {
            // A `&str` without arguments goes as a simple query, several statements allowed.
            let conn: &mut sqlx::PgConnection = &mut tx;
            let rows = sqlx::Executor::fetch_all(conn, sql.as_str()).await?;
            match read_rows(&rows) {
                Ok((Some(head), fresh)) => break (head, fresh),
                // A sale nothing was appended to has no head row to lock: create it (waiting
                // for a writer that is creating it too), then lock it.
                Ok((None, _)) if !created => {
                    sqlx::query(
                        "INSERT INTO sale_heads (sale_id, events) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                    )
                    .bind(sale_id.0)
                    .execute(&mut *tx)
                    .await?;
                    created = true;
                }
                Ok((None, _)) => {
                    tx.rollback().await?;
                    return Ok(Err(StoreError::Unavailable(format!(
                        "the head of sale {sale_id} vanished"
                    ))));
                }
                Err(e) => {
                    tx.rollback().await?;
                    return Ok(Err(e));
                }
            }
        };
        let known = Known {
            position: fresh.last().map_or(known.position, |e| e.position),
            events: head,
        };
        *events = decide(&fresh);
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(Ok(Turned::Done { last: None, known }));
        }
        if let Err(e) = check_contiguous(events) {
            tx.rollback().await?;
            return Ok(Err(e));
        }
        let Some(appended) = insert(&mut *tx, sale_id, events, Some(head), &self.tag).await? else {
            tx.rollback().await?;
            return Ok(Ok(Turned::Stale));
        };
        self.commit(tx, sale_id, events, &appended).await?;
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
