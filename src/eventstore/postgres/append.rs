//! The write half of the PostgreSQL event store's append path: the one statement that moves
//! the sale's head and the log's head, numbers and inserts a batch and notifies listeners.
//! Used by the store's `append` and the optimistic turn with its arguments bound (an
//! autocommit statement of its own), and by the locked turn with its arguments written in as
//! literals (`inlined`), so that the statement and the turn's `COMMIT` go as one simple query:
//! one round trip while the turn holds the sale.

use super::{to_u64, CHANNEL};
use crate::domain::EventId;
use crate::eventstore::NewEvent;
use chrono::{DateTime, Utc};

/// The append statement. The sale's head: created by the sale's first append (a missing row
/// counts as 0 events), else moved only if it is what the caller expects. The log's head moves
/// only if the sale's did (and after it); rows go in only if the log's head moved; the
/// notification carries the store's tag so its own listener leaves the head to the appender
/// (see `tail.rs`). No row when nothing was inserted (the LATERAL filters it out); else all
/// are set. Its arguments, in order, are those `Arguments` lists.
const APPEND: &str = "WITH sale AS (
             INSERT INTO sale_heads AS h (sale_id, events)
             VALUES ($1::uuid, $9::bigint)
             ON CONFLICT (sale_id) DO UPDATE SET events = h.events + EXCLUDED.events
             WHERE $10::bigint IS NULL OR h.events = $10::bigint
             RETURNING h.events),
         log AS (
             UPDATE event_log_head SET position = position + $9::bigint
             WHERE id = 1 AND EXISTS (SELECT FROM sale)
             RETURNING position - $9::bigint AS start),
         inserted AS (
             INSERT INTO events (position, sale_id, stream_id, version, event_type, event_version, payload, metadata)
             SELECT log.start + x.n, $1::uuid, x.s, x.v, x.t, x.tv, x.pl, x.m::jsonb
             FROM log,
                  UNNEST($2::text[], $3::bigint[], $4::text[], $5::int[], $6::bytea[], $7::text[])
                      WITH ORDINALITY AS x(s, v, t, tv, pl, m, n)
             RETURNING position, recorded_at)
         SELECT l.last, l.at, (SELECT events FROM sale)
         FROM (SELECT MAX(position) AS last, MIN(recorded_at) AS at FROM inserted) l,
              LATERAL (SELECT pg_notify($8, l.last::text || ':' || $11::text)
                       WHERE l.last IS NOT NULL) n";

/// A batch as the statement appended it.
pub(super) struct Appended {
    /// Position of the last event (the batch ends there, consecutive).
    pub last: u64,
    /// The events' `recorded_at` (the transaction's time, the same for all).
    pub recorded_at: DateTime<Utc>,
    /// The sale's head after the batch: how many events the sale has.
    pub head: u64,
}

/// What `insert` and `inlined` both derive from a batch for the statement's arguments.
struct Arguments<'a> {
    events: &'a [NewEvent],
    /// Each event's metadata as JSON text.
    metadata: Vec<String>,
    expected: Option<u64>,
}

impl<'a> Arguments<'a> {
    fn new(events: &'a [NewEvent], expected: Option<u64>) -> Result<Self, sqlx::Error> {
        let metadata = events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        Ok(Arguments {
            events,
            metadata,
            expected,
        })
    }

    fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.events
            .iter()
            .map(|e| i64::try_from(e.version).unwrap_or(i64::MAX))
    }

    fn count(&self) -> i64 {
        i64::try_from(self.events.len()).unwrap_or(i64::MAX)
    }

    fn expected(&self) -> Option<i64> {
        self.expected.map(|e| i64::try_from(e).unwrap_or(i64::MAX))
    }
}

/// Appends `events` to `sale_id` in one statement, only if the sale's head is `expected`
/// (`None`: whatever it is); `Ok(None)` when it was not (nothing is written). The sale's head
/// row is locked first, the log's head row second (every append takes them in that order, so
/// they cannot deadlock); the log's row stays locked until commit, so the next append's
/// UPDATE waits and then (READ COMMITTED) numbers after this one: gap-free, in commit order.
pub(super) async fn insert<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    sale_id: EventId,
    events: &[NewEvent],
    expected: Option<u64>,
    tag: &str,
) -> Result<Option<Appended>, sqlx::Error> {
    let args = Arguments::new(events, expected)?;
    let row: Option<(i64, DateTime<Utc>, i64)> = sqlx::query_as(APPEND)
        .bind(sale_id.0)
        .bind(
            events
                .iter()
                .map(|e| e.stream_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(args.versions().collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| i32::from(e.event_version))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.payload.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(&args.metadata)
        .bind(CHANNEL)
        .bind(args.count())
        .bind(args.expected())
        .bind(tag)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(appended))
}

/// The statement's row as the caller uses it.
pub(super) fn appended((last, recorded_at, head): (i64, DateTime<Utc>, i64)) -> Appended {
    Appended {
        last: to_u64(last),
        recorded_at,
        head: to_u64(head),
    }
}

/// The append statement as `insert` would send it, with every argument written in as a
/// literal: an escaped `E'...'` string each, arrays as one array literal (so that
/// `pg_stat_statements` counts every batch size as one statement), payloads as `\x` hex
/// elements; nothing an event carries can end a literal early. For a simple query (no bound
/// arguments), which can carry the turn's `COMMIT` along.
pub(super) fn inlined(
    sale_id: EventId,
    events: &[NewEvent],
    expected: Option<u64>,
    tag: &str,
) -> Result<String, sqlx::Error> {
    let args = Arguments::new(events, expected)?;
    let literals = [
        text(&sale_id.0.to_string()),
        array(events.iter().map(|e| e.stream_id.clone())),
        array(args.versions().map(|v| v.to_string())),
        array(events.iter().map(|e| e.event_type.to_owned())),
        array(events.iter().map(|e| e.event_version.to_string())),
        array(
            events
                .iter()
                .map(|e| format!("\\x{}", hex::encode(&e.payload))),
        ),
        array(args.metadata.iter().cloned()),
        text(CHANNEL),
        args.count().to_string(),
        args.expected()
            .map_or_else(|| "NULL".to_owned(), |e| e.to_string()),
        text(tag),
    ];
    Ok(substitute(APPEND, &literals))
}

/// `value` as an escape string constant: the same text whatever `standard_conforming_strings`
/// says, since in `E'...'` a doubled backslash is one backslash and a doubled quote one quote.
fn text(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `items` as one array literal (`{"a","b"}`, each element quoted, its backslashes and double
/// quotes escaped) in a string constant; the statement casts it to the array's type.
fn array(items: impl Iterator<Item = String>) -> String {
    let elements: Vec<String> = items
        .map(|item| format!("\"{}\"", item.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    text(&format!("{{{}}}", elements.join(",")))
}

/// `template` with each `$N` replaced by `literals[N - 1]`, in one pass (a literal that
/// happens to contain `$2` is left alone).
fn substitute(template: &str, literals: &[String]) -> String {
    let mut out =
        String::with_capacity(template.len() + literals.iter().map(String::len).sum::<usize>());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let number: Option<usize> = rest[at + 1..at + 1 + digits].parse().ok();
        match number
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| literals.get(i))
        {
            Some(literal) => out.push_str(literal),
            None => out.push_str(&rest[at..at + 1 + digits]),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{array, substitute, text};

    #[test]
    fn text_literals_escape_quotes_and_backslashes() {
        assert_eq!(text("plain"), "E'plain'");
        assert_eq!(text("it's"), "E'it''s'");
        assert_eq!(
            text("a\\'); DROP TABLE events; --"),
            "E'a\\\\''); DROP TABLE events; --'"
        );
    }

    #[test]
    fn array_literals_quote_every_element_then_escape_the_whole() {
        let items = ["a", "b\"c", "d\\e", "f'g"].map(str::to_owned);
        assert_eq!(
            array(items.into_iter()),
            r#"E'{"a","b\\"c","d\\\\e","f''g"}'"#
        );
    }

    #[test]
    fn placeholders_are_replaced_once_each_and_in_one_pass() {
        let literals = ["'$2'".to_owned(), "two".to_owned()];
        assert_eq!(substitute("$1, $2, $10, $", &literals), "'$2', two, $10, $");
    }
}
