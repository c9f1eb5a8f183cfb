//! `Idempotency-Key` support, independent of HTTP, as the IETF draft
//! (`draft-ietf-httpapi-idempotency-key-header`) has it: the first request with a key runs; a
//! retry with the same key and body gets the first answer again; a retry while the first is
//! still running on this instance is refused at once (409 `idempotency-key-in-use`: retry
//! later); the same key with a different body is a 422. Answers under 500 (but 403) are kept,
//! so that a retry on any instance, or after a restart, is answered the same:
//! - a hold's and a payment's answers in the event log, in the append that made them
//!   (issue 11): the first event of the reservation or payment carries the request's body
//!   fingerprint (`Metadata::request_fingerprint`) and the answer is rebuilt from that event
//!   (and, for a capture refunded in its own commit, the refund after it: `recorded_by`,
//!   `app::replays`) for as long as the log keeps it, crash or not. No instance keeps them in
//!   memory (but a declined card's and that refund's 409): a retry runs again and finds its
//!   answer there;
//! - every other answer (the refusals) for 24 hours in the memory of the instance that gave it
//!   and, with PostgreSQL, in `idempotency_keys` (read and written in batches, `durable`).
//!
//! A 5xx is not kept, so the client may retry it.
//!
//! Handlers derive ids from the key, so a retry after a lost answer (or racing on another
//! instance) finds what the first attempt created instead of creating it twice. That is also
//! how a retry is told from a first attempt without asking the database: a key this instance
//! holds no answer for runs at once, and its saved answer is read only when the use case
//! finds the derived id used already (`seen_again`: the sale's writer or the processor knows
//! it) or refuses the request. What a first attempt costs is then no statement of its own:
//! its answer is in its append (issue 11: nothing per request on the hot path).
//!
//! The price, where the state changed between two attempts on different instances (or across
//! a restart): a refused request runs again first, so a hold refused as sold out and retried
//! elsewhere once seats came back gets the hold (201), which is then its key's answer (in the
//! log, read before the saved refusal; `durable` has a success overwrite a refusal, never the
//! reverse, for answers saved there), and a key used again with another body that derives
//! another id (another event's hold, another reservation's payment) is a new request there,
//! not a 422. The instance that gave a refusal keeps it in memory and replays it until it
//! restarts or 24 hours passed.

mod durable;

use super::AppError;
use crate::domain::UserId;
use durable::DurableAnswers;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// An answer as the edge gives it to the client (a status code, a JSON body and where the
/// created resource lives), success or refusal alike: a retry gets exactly this again.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The body as JSON text, serialized once: what is kept for 24 hours per key is these
    /// bytes (a few hundred), not a tree of JSON values, and a replay shares them.
    pub body: Arc<str>,
    pub location: Option<String>,
}

impl Answer {
    /// A 5xx is not kept: the client may retry it. Nor is a 403: who may do what depends on
    /// what the fingerprint (the body) leaves out, a `Queue-Pass` header or the token's role,
    /// and the refusal changed nothing, so a retry is decided again.
    fn worth_keeping(&self) -> bool {
        self.status < 500 && self.status != 403
    }
}

/// What `IdempotencyStore::run` gives back: the answer, and whether it is a replay of an
/// earlier request's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub answer: Answer,
    pub replayed: bool,
}

#[derive(Clone)]
struct Stored {
    fingerprint: [u8; 32],
    answer: Answer,
    at: Instant,
}

impl Stored {
    /// This answer again, for a request with the same key and the body `fingerprint`: a
    /// replay, or a 422 when the body is another.
    fn replayed_for(&self, fingerprint: [u8; 32]) -> Result<Outcome, AppError> {
        if self.fingerprint != fingerprint {
            return Err(AppError::field(
                "Idempotency-Key",
                "was already used with a different request body",
            ));
        }
        Ok(Outcome {
            answer: self.answer.clone(),
            replayed: true,
        })
    }
}

/// What a key is scoped to, with its user: the same key names different requests in
/// different scopes.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub name: &'static str,
}

/// Holds.
pub const RESERVATIONS: Scope = Scope {
    name: "reservations",
};

/// Payments.
pub const PAYMENTS: Scope = Scope { name: "payments" };

/// What the `Idempotency-Key` wrapper and the use case running inside it tell each other.
#[derive(Clone, Copy)]
struct Keyed {
    /// The SHA-256 of the request's body.
    fingerprint: [u8; 32],
    /// The id the key derives was found used already (`seen_again`).
    seen_again: bool,
    /// The answer is the one the event log records for the request of this body fingerprint
    /// (`recorded_by`).
    recorded: Option<[u8; 32]>,
}

tokio::task_local! {
    /// The keyed request running in this task.
    static KEYED: Cell<Keyed>;
}

/// Tells the `Idempotency-Key` wrapper around this request, if there is one, that the id its
/// key derives was used already: an earlier attempt with the key ran (on this instance or
/// another, maybe before a restart), so that attempt's stored answer is this one's. The use
/// cases call it where the sale's writer (or the processor) finds the id known.
pub fn seen_again() {
    // Outside a keyed request (no wrapper) there is nothing to tell.
    let _ = KEYED.try_with(|keyed| {
        keyed.set(Keyed {
            seen_again: true,
            ..keyed.get()
        })
    });
}

/// The body fingerprint of the keyed request running in this task, hex-encoded, for the
/// metadata of the events its command makes (`Metadata::request_fingerprint`); `None` without
/// a key.
pub fn request_fingerprint() -> Option<String> {
    KEYED
        .try_with(|keyed| hex::encode(keyed.get().fingerprint))
        .ok()
}

/// Tells the wrapper that the answer about to be given is recorded in the event log by the
/// events this request's command appended (their `request_fingerprint` is this request's).
pub fn recorded_by_this_request() {
    let _ = KEYED.try_with(|keyed| {
        let this = keyed.get();
        keyed.set(Keyed {
            recorded: Some(this.fingerprint),
            ..this
        })
    });
}

/// Tells the wrapper that the answer about to be given is recorded in the event log: it is
/// rebuilt from the events the key's request made (its first attempt's, or this one's), and
/// `fingerprint` (their `request_fingerprint`) is the body of the request that made them. The
/// log holds such an answer for as long as it holds the events, so nothing is saved for it,
/// and a retry with another body is refused (422) as a stored answer's would be. An
/// unreadable fingerprint tells nothing.
pub fn recorded_by(fingerprint: &str) {
    let mut recorded = [0u8; 32];
    if hex::decode_to_slice(fingerprint, &mut recorded).is_ok() {
        let _ = KEYED.try_with(|keyed| {
            keyed.set(Keyed {
                recorded: Some(recorded),
                ..keyed.get()
            })
        });
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Stored>>>;
type Key = (UserId, &'static str, String);

/// The keys of the requests running here, and of the answers this instance keeps (not those
/// the log records). `by_key` is a B-tree: a hash map's growth rehashes every key at once,
/// under the lock each keyed request takes.
#[derive(Default)]
struct Slots {
    by_key: BTreeMap<Key, Slot>,
    /// Keys in the order their answers were kept, so expiry pops from the front in O(1).
    by_age: VecDeque<(Instant, Key)>,
}

#[derive(Default)]
pub struct IdempotencyStore {
    slots: Mutex<Slots>,
    /// Where answers outlive this process, when running on PostgreSQL.
    durable: Option<DurableAnswers>,
}

impl IdempotencyStore {
    /// A store that also keeps answers in the `idempotency_keys` table of `pool`, read and
    /// written in batches by a task of its own (so it must be made inside the runtime); a
    /// batch without an answer within `limit` is abandoned.
    pub fn durable(pool: sqlx::PgPool, limit: std::time::Duration) -> Self {
        Self {
            slots: Mutex::default(),
            durable: Some(DurableAnswers::start(pool, limit)),
        }
    }

    async fn load(&self, key: &Key) -> Option<Stored> {
        self.durable.as_ref()?.load(key).await
    }

    fn save_later(&self, key: &Key, stored: &Stored) {
        if let Some(durable) = &self.durable {
            durable.save_later(key, stored);
        }
    }

    #[cfg(test)]
    fn database_statements(&self) -> u64 {
        self.durable.as_ref().map_or(0, DurableAnswers::statements)
    }

    /// Deletes answers older than 24 hours from the database.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        match &self.durable {
            Some(durable) => durable.purge_expired().await,
            None => Ok(0),
        }
    }

    fn slot(&self, key: Key) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((first_used, _)) = slots.by_age.front() {
            if first_used.elapsed() < KEEP_FOR {
                break;
            }
            if let Some((_, old)) = slots.by_age.pop_front() {
                // A request still holding the slot keeps its own Arc; only the index forgets it.
                slots.by_key.remove(&old);
            }
        }
        if let Some(slot) = slots.by_key.get(&key) {
            return Arc::clone(slot);
        }
        // Indexed by age once it holds an answer (`index`).
        let slot = Slot::default();
        slots.by_key.insert(key, Arc::clone(&slot));
        slot
    }

    /// Runs `work` at most once per (user, scope, key) and body. The same key with another
    /// body is refused (422 `validation-failed` on `Idempotency-Key`); the same key while its
    /// first request still runs, too (409 `idempotency-key-in-use`), without waiting for it.
    pub async fn run<F>(
        &self,
        user: UserId,
        scope: Scope,
        key: Option<String>,
        body: &impl serde::Serialize,
        work: F,
    ) -> Result<Outcome, AppError>
    where
        F: std::future::Future<Output = Answer>,
    {
        let Some(key) = key else {
            return Ok(Outcome {
                answer: work.await,
                replayed: false,
            });
        };
        let fingerprint: [u8; 32] =
            Sha256::digest(serde_json::to_vec(body).unwrap_or_default()).into();
        let key = (user, scope.name, key);
        let (slot, mut stored) = loop {
            let slot = self.slot(key.clone());
            let Ok(stored) = Arc::clone(&slot).try_lock_owned() else {
                return Err(AppError::Conflict {
                    kind: "idempotency-key-in-use",
                    detail: "a request with this Idempotency-Key is still being processed; \
                             retry it later to get its answer"
                        .into(),
                });
            };
            // A slot is let go while locked (`index`): one let go between the look-up and the
            // lock is not the key's any more, and another request may be running in its
            // successor.
            if self.indexed(&key, &slot) {
                break (slot, stored);
            }
        };
        if let Some(previous) = stored.as_ref().filter(|s| s.at.elapsed() < KEEP_FOR) {
            return previous.replayed_for(fingerprint);
        }
        // Indexes the slot when the request ends, finished or dropped (a time-out, a client
        // gone), while it is still locked: declared after the lock, so dropped before it.
        let mut ending = Ending {
            store: self,
            key: &key,
            slot: &slot,
            kept: false,
        };
        let keyed = Keyed {
            fingerprint,
            seen_again: false,
            recorded: None,
        };
        let (answer, keyed) = KEYED
            .scope(Cell::new(keyed), async {
                let answer = work.await;
                (answer, KEYED.with(Cell::get))
            })
            .await;
        let (kept, outcome) = self.settle(&key, fingerprint, keyed, answer).await;
        ending.kept = kept.is_some();
        *stored = kept;
        outcome
    }

    fn indexed(&self, key: &Key, slot: &Slot) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.by_key.get(key).is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// What a finished request answers, and what this instance keeps of it for a retry.
    async fn settle(
        &self,
        key: &Key,
        fingerprint: [u8; 32],
        keyed: Keyed,
        answer: Answer,
    ) -> (Option<Stored>, Result<Outcome, AppError>) {
        if let Some(recorded) = keyed.recorded {
            // The log keeps this answer with the events: nothing to load or save, and nothing
            // a saved answer could replace (it can only be an older refusal). A retry that
            // found it but could not show it yet (503) says so.
            let recorded = Stored {
                fingerprint: recorded,
                answer,
                at: Instant::now(),
            };
            let fails = recorded.answer.status >= 500 && recorded.fingerprint == fingerprint;
            let outcome = match keyed.seen_again && !fails {
                true => recorded.replayed_for(fingerprint),
                false => Ok(Outcome {
                    answer: recorded.answer.clone(),
                    replayed: false,
                }),
            };
            // A refusal is kept here too (a declined card: a retry would ask the processor
            // again); a retry elsewhere finds it in the log.
            let refusal = (400..500).contains(&recorded.answer.status);
            let kept = (refusal && recorded.fingerprint == fingerprint).then_some(recorded);
            return (kept, outcome);
        }
        // Looked up only now: the stored answer (of an earlier attempt on another instance, or
        // before a restart) is read when this attempt found its id used already or was
        // refused, and is then the answer.
        if keyed.seen_again || answer.status >= 400 {
            if let Some(previous) = self.load(key).await {
                let outcome = previous.replayed_for(fingerprint);
                return (Some(previous), outcome);
            }
        }
        let kept = answer.worth_keeping().then(|| Stored {
            fingerprint,
            // Shares the body with the answer given now.
            answer: answer.clone(),
            at: Instant::now(),
        });
        if let Some(kept) = &kept {
            self.save_later(key, kept);
        }
        let outcome = Ok(Outcome {
            answer,
            replayed: false,
        });
        (kept, outcome)
    }

    /// Keeps `slot`, now holding an answer, for 24 hours; or, when it holds none, lets its key
    /// go (a retry runs anew, and finds an answer the log records there).
    fn index(&self, key: &Key, slot: &Slot, kept: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if kept {
            slots.by_age.push_back((Instant::now(), key.clone()));
        } else if slots
            .by_key
            .get(key)
            .is_some_and(|indexed| Arc::ptr_eq(indexed, slot))
        {
            slots.by_key.remove(key);
        }
    }
}

/// A keyed request's slot, indexed (`IdempotencyStore::index`) when the request ends, however
/// it ends.
struct Ending<'a> {
    store: &'a IdempotencyStore,
    key: &'a Key,
    slot: &'a Slot,
    kept: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.store.index(self.key, self.slot, self.kept);
    }
}

/// A stable id derived from the caller, what the request is about (`within`: the event a hold
/// is taken in, the reservation a payment pays for) and their idempotency key, or a random one
/// without a key. `within` keeps a key used again for something else (another event's hold,
/// once its first answer is no longer kept, or at once on another instance before that answer
/// was saved) from naming what the first request made: that id would clash in the log with a
/// stream of another sale, failing the whole group commit it lands in.
pub fn derived_id(user: UserId, scope: &str, within: uuid::Uuid, key: Option<&str>) -> uuid::Uuid {
    match key {
        Some(key) => uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{scope}:{user}:{within}:{key}").as_bytes(),
        ),
        None => uuid::Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests;
