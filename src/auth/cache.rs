//! `SessionCache`: resolved bearer tokens (token digest -> caller and session expiry) kept in
//! process, so that a repeated authenticated request asks the store nothing. It is bounded in
//! entries (`CAPACITY`, quick_cache's S3-FIFO: when full, a new token gets a short trial, and
//! one asked for again, at the latest after one more look-up, is kept ahead of tokens nobody
//! asks for again, so the buyers of an on-sale keep theirs while new tokens keep coming) and in
//! age (`MAX_AGE`, a safety net only: an entry past it is a miss, and the store's answer
//! replaces it).
//!
//! Revocations evict: `AuthService` evicts at once what its own logout or role change touched,
//! and the revocation feed (`revocations.rs`, PostgreSQL LISTEN/NOTIFY) evicts what other
//! processes changed. A *guarded* cache (several instances share the accounts) serves and
//! stores entries only while the feed is confirmed live: each heartbeat heard on it allows
//! `LIVENESS` more, and a lost feed clears the cache. A *local* cache (in memory, one
//! instance) is always live. A store answer that raced a revocation is never kept: every
//! eviction moves a generation, and `put` refuses an answer read under an older one.

use super::store::Principal;
use crate::domain::UserId;
use crate::observability::Metrics;
use chrono::{DateTime, Utc};
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::UnitWeighter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// About the most tokens kept (quick_cache bounds each of its shards, which together may keep a
/// few dozen more).
pub const CAPACITY: usize = 100_000;
/// Oldest entry served, whatever the feed says (a bound on anything the feed cannot see, such
/// as a session deleted by hand in SQL).
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How long a guarded cache serves after the last heartbeat it heard: a revocation that the
/// feed lost stops being served within this (plus the heartbeat's delivery), under 1 s.
pub const LIVENESS: Duration = Duration::from_millis(800);

/// The `cache` label of `ticketing_cache_requests_total` for session look-ups.
const LABEL: &str = "sessions";

#[derive(Clone)]
struct Entry {
    principal: Principal,
    expires_at: DateTime<Utc>,
    cached_at: Instant,
}

/// What a look-up found.
pub enum Cached {
    /// The caller and the session's expiry, as the store said at most `MAX_AGE` ago.
    Hit(Principal, DateTime<Utc>),
    /// Ask the store, then `put` the answer with this ticket.
    Miss(Ticket),
    /// The cache may not be used now (its revocation feed is not live): ask the store.
    Off,
}

/// The generation a miss was seen under; `put` refuses it after any eviction since.
pub struct Ticket(u64);

type Entries = Cache<String, Entry, UnitWeighter, foldhash::fast::RandomState>;

pub struct SessionCache {
    entries: Entries,
    /// Orders `put` against evictions: a put checks the generation and stores under a read
    /// guard, an eviction moves the generation and removes under the write guard, so no answer
    /// read before an eviction is stored after it.
    fence: RwLock<()>,
    generation: AtomicU64,
    /// `None`: local, always live. `Some`: milliseconds since `origin` until which the feed
    /// counts as live (0: not live).
    live_until: Option<AtomicU64>,
    origin: Instant,
    max_age: Duration,
    metrics: Arc<Metrics>,
}

impl SessionCache {
    /// A cache that sees every revocation itself (one instance: in memory).
    pub fn local(metrics: Arc<Metrics>) -> Self {
        Self::build(None, metrics, MAX_AGE, CAPACITY)
    }

    /// A cache that depends on a revocation feed; it serves nothing until the feed's first
    /// heartbeat (`confirm_live`).
    pub fn guarded(metrics: Arc<Metrics>) -> Self {
        Self::build(Some(AtomicU64::new(0)), metrics, MAX_AGE, CAPACITY)
    }

    fn build(
        live_until: Option<AtomicU64>,
        metrics: Arc<Metrics>,
        max_age: Duration,
        capacity: usize,
    ) -> Self {
        let entries = Cache::with(
            capacity,
            u64::try_from(capacity).unwrap_or(u64::MAX),
            UnitWeighter,
            foldhash::fast::RandomState::default(),
            DefaultLifecycle::default(),
        );
        Self {
            entries,
            fence: RwLock::new(()),
            generation: AtomicU64::new(0),
            live_until,
            origin: Instant::now(),
            max_age,
            metrics,
        }
    }

    /// Looks `token_hash` up, counting a hit, a miss, or (`Off`) an error.
    pub fn get(&self, token_hash: &str) -> Cached {
        let found = if self.is_live() {
            let ticket = Ticket(self.generation.load(Ordering::SeqCst));
            match self.entries.get(token_hash) {
                Some(e) if e.cached_at.elapsed() < self.max_age => {
                    Cached::Hit(e.principal, e.expires_at)
                }
                _ => Cached::Miss(ticket),
            }
        } else {
            Cached::Off
        };
        let result = match found {
            Cached::Hit(..) => "hit",
            Cached::Miss(_) => "miss",
            Cached::Off => "error",
        };
        self.metrics
            .cache_requests
            .with_label_values(&[LABEL, result])
            .inc();
        found
    }

    /// Keeps the store's answer for a miss, unless anything was evicted since the miss (the
    /// answer may predate a revocation) or the cache went off meanwhile.
    pub fn put(
        &self,
        ticket: Ticket,
        token_hash: String,
        principal: Principal,
        expires_at: DateTime<Utc>,
    ) {
        let _fence = self.fence.read().unwrap_or_else(|e| e.into_inner());
        if ticket.0 != self.generation.load(Ordering::SeqCst) || !self.is_live() {
            return;
        }
        self.entries.insert(
            token_hash,
            Entry {
                principal,
                expires_at,
                cached_at: Instant::now(),
            },
        );
    }

    /// Forgets one session (logout, expiry).
    pub fn evict_session(&self, token_hash: &str) {
        self.evict(|entries| {
            entries.remove(token_hash);
        });
    }

    /// Forgets every session of `user` (a role change).
    pub fn evict_user(&self, user: UserId) {
        self.evict(|entries| entries.retain(|_, e| e.principal.user_id != user));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.evict(Entries::clear);
    }

    /// The revocation feed heard its heartbeat: serve for `LIVENESS` more.
    pub fn confirm_live(&self) {
        if let Some(live_until) = &self.live_until {
            let until = self.now_ms().saturating_add(millis(LIVENESS));
            live_until.fetch_max(until, Ordering::SeqCst);
        }
    }

    /// The revocation feed is lost (revocations may be missed): stop serving and start empty.
    pub fn lose_feed(&self) {
        if let Some(live_until) = &self.live_until {
            live_until.store(0, Ordering::SeqCst);
        }
        self.clear();
    }

    /// Whether entries may be served and stored now.
    pub fn is_live(&self) -> bool {
        self.live_until
            .as_ref()
            .is_none_or(|until| self.now_ms() < until.load(Ordering::SeqCst))
    }

    /// How many tokens are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict(&self, change: impl FnOnce(&Entries)) {
        let _fence = self.fence.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        change(&self.entries);
    }

    fn now_ms(&self) -> u64 {
        // 0 means "not live", so the clock starts at 1.
        millis(self.origin.elapsed()).saturating_add(1)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn principal(user: UserId) -> Principal {
        Principal {
            user_id: user,
            role: Role::Customer,
            email: "a@example.com".into(),
        }
    }

    fn expiry() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    fn ticket(cache: &SessionCache, key: &str) -> Ticket {
        match cache.get(key) {
            Cached::Miss(t) => t,
            Cached::Hit(..) => panic!("{key} unexpectedly cached"),
            Cached::Off => panic!("cache off"),
        }
    }

    fn hit(cache: &SessionCache, key: &str) -> bool {
        matches!(cache.get(key), Cached::Hit(..))
    }

    fn count(metrics: &Metrics, result: &str) -> u64 {
        metrics
            .cache_requests
            .with_label_values(&[LABEL, result])
            .get()
    }

    /// A miss then a put makes the next look-up a hit; both are counted.
    #[test]
    fn a_stored_answer_is_served_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let cache = SessionCache::local(Arc::clone(&metrics));
        let t = ticket(&cache, "k");
        cache.put(t, "k".into(), principal(UserId::random()), expiry());
        assert!(hit(&cache, "k"));
        assert_eq!((count(&metrics, "miss"), count(&metrics, "hit")), (1, 1));
    }

    /// An answer read before an eviction is refused: it may predate the revocation.
    #[test]
    fn an_answer_that_raced_an_eviction_is_not_kept() {
        let cache = SessionCache::local(Arc::new(Metrics::new()));
        let t = ticket(&cache, "k");
        cache.evict_session("k");
        cache.put(t, "k".into(), principal(UserId::random()), expiry());
        assert!(!hit(&cache, "k"));
    }

    /// Logout evicts one token; a role change evicts every token of that user only.
    #[test]
    fn evictions_remove_a_session_or_a_users_sessions() {
        let cache = SessionCache::local(Arc::new(Metrics::new()));
        let (ada, bob) = (UserId::random(), UserId::random());
        for (key, user) in [("a1", ada), ("a2", ada), ("b1", bob)] {
            let t = ticket(&cache, key);
            cache.put(t, key.into(), principal(user), expiry());
        }
        cache.evict_session("a1");
        assert!(!hit(&cache, "a1") && hit(&cache, "a2") && hit(&cache, "b1"));
        cache.evict_user(ada);
        assert!(!hit(&cache, "a2") && hit(&cache, "b1"));
    }

    /// A guarded cache is off until its feed is live, and a lost feed turns it off and
    /// empties it.
    #[test]
    fn a_guarded_cache_serves_only_while_its_feed_is_live() {
        let metrics = Arc::new(Metrics::new());
        let cache = SessionCache::guarded(Arc::clone(&metrics));
        assert!(matches!(cache.get("k"), Cached::Off));
        assert_eq!(count(&metrics, "error"), 1);
        cache.confirm_live();
        let t = ticket(&cache, "k");
        cache.put(t, "k".into(), principal(UserId::random()), expiry());
        assert!(hit(&cache, "k"));
        cache.lose_feed();
        assert!(matches!(cache.get("k"), Cached::Off));
        cache.confirm_live();
        assert!(!hit(&cache, "k"), "a lost feed empties the cache");
    }

    /// An answer read while the feed was live is not kept once it was lost.
    #[test]
    fn an_answer_read_before_the_feed_was_lost_is_not_kept() {
        let cache = SessionCache::guarded(Arc::new(Metrics::new()));
        cache.confirm_live();
        let t = ticket(&cache, "k");
        cache.lose_feed();
        cache.confirm_live();
        cache.put(t, "k".into(), principal(UserId::random()), expiry());
        assert!(!hit(&cache, "k"));
    }

    /// Entries older than the age bound are misses.
    #[test]
    fn entries_past_the_age_bound_are_misses() {
        let aged = SessionCache::build(None, Arc::new(Metrics::new()), Duration::ZERO, CAPACITY);
        let t = ticket(&aged, "k");
        aged.put(t, "k".into(), principal(UserId::random()), expiry());
        assert!(!hit(&aged, "k"));
    }

    /// A full cache keeps a token that is asked for again: a buyer who signs in while one-off
    /// tokens fill the cache goes back to the store at most once more before the cache keeps
    /// the token, however many new tokens keep coming (a cache that started over when full
    /// sent every buyer back at each fill).
    #[test]
    fn a_full_cache_keeps_the_tokens_in_use() {
        let capacity = 1_000;
        let cache = SessionCache::build(None, Arc::new(Metrics::new()), MAX_AGE, capacity);
        let store = |key: &str| {
            let t = ticket(&cache, key);
            cache.put(t, key.into(), principal(UserId::random()), expiry());
        };
        for n in 0..3 * capacity {
            store(&format!("before-{n}"));
        }
        store("buyer");
        let mut misses = 0;
        for n in 0..20 * capacity {
            store(&format!("once-{n}"));
            if n % 10 == 0 && !hit(&cache, "buyer") {
                misses += 1;
                store("buyer");
            }
        }
        assert!(
            misses <= 1,
            "the buyer's token went back to the store {misses} times"
        );
        let kept = u64::try_from(cache.len()).unwrap();
        assert!(kept <= cache.entries.capacity(), "{kept} tokens kept");
    }
}
