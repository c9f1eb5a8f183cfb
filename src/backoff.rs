//! `Backoff`: the one retry schedule of the service. Each wait doubles from `first` up to
//! `max`; with full jitter a wait is a random share of that ceiling, so that many tasks
//! failing together (consumers, relays, writers of several instances) do not retry in
//! lockstep. It only computes and sleeps; what to retry and how often is the caller's.
//! `RetryBudget` caps how often request-path code may retry one dependency at all: each first
//! attempt deposits a fraction of a token, each retry withdraws a whole one, and a small floor
//! per second keeps rare retries possible; when it is empty the caller fails fast instead of
//! hammering a dependency that is already slow (Finagle's `RetryBudget`, gRPC's throttling).

use rand::Rng;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
    jitter: bool,
}

impl Backoff {
    /// Waits of `first`, `2 * first`, `4 * first`, ... capped at `max`.
    pub fn doubling(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            ceiling: first.min(max),
            jitter: false,
        }
    }

    /// The same ceilings, but each wait is a random duration between zero and its ceiling.
    pub fn with_full_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The wait before retry number `attempt` (from 1) of a fresh schedule, without
    /// advancing this one.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        self.jittered(ceiling)
    }

    /// The next wait; the one after it is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        self.jittered(ceiling)
    }

    /// Sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts the schedule again from `first` (after a success).
    pub fn reset(&mut self) {
        self.ceiling = self.first.min(self.max);
    }

    fn jittered(&self, ceiling: Duration) -> Duration {
        if !self.jitter {
            return ceiling;
        }
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// Retries allowed per first attempt by default (20%: at most 1.2 calls per request).
const RETRY_RATIO: f64 = 0.2;
/// Retries allowed per second whatever the traffic, so a quiet service can still retry.
const RETRIES_PER_SECOND: f64 = 10.0;
/// The most tokens a budget holds (it starts full): a burst of retries after a calm spell.
const MAX_TOKENS: f64 = 100.0;

/// How many retries of one dependency the callers may still make (see the module header).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    per_second: f64,
    max: f64,
    state: Mutex<Tokens>,
}

#[derive(Debug)]
struct Tokens {
    balance: f64,
    refilled: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(RETRY_RATIO, RETRIES_PER_SECOND, MAX_TOKENS)
    }
}

impl RetryBudget {
    /// `ratio` of a token per first attempt, `per_second` tokens a second, at most `max`.
    pub fn new(ratio: f64, per_second: f64, max: f64) -> Self {
        RetryBudget {
            ratio,
            per_second,
            max,
            state: Mutex::new(Tokens {
                balance: max,
                refilled: Instant::now(),
            }),
        }
    }

    /// A first attempt was made: it earns a share of a retry.
    pub fn deposit(&self) {
        let mut tokens = self.tokens();
        tokens.balance = (tokens.balance + self.ratio).min(self.max);
    }

    /// Whether a retry may go ahead now (it then spends a token); `false` means fail fast.
    pub fn try_withdraw(&self) -> bool {
        let mut tokens = self.tokens();
        let now = Instant::now();
        let earned = now.duration_since(tokens.refilled).as_secs_f64() * self.per_second;
        tokens.balance = (tokens.balance + earned).min(self.max);
        tokens.refilled = now;
        if tokens.balance >= 1.0 {
            tokens.balance -= 1.0;
            true
        } else {
            false
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        // Held for a few arithmetic operations, never across an await.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full budget allows `max` retries, then none until first attempts earn more: five
    /// first attempts at 20% buy exactly one retry. No floor here, so time does not refill it.
    #[test]
    fn a_retry_budget_empties_and_first_attempts_refill_it() {
        let budget = RetryBudget::new(0.2, 0.0, 3.0);
        assert!((0..3).all(|_| budget.try_withdraw()));
        assert!(!budget.try_withdraw(), "an empty budget refuses a retry");
        (0..4).for_each(|_| budget.deposit());
        assert!(
            !budget.try_withdraw(),
            "four first attempts earn 0.8 of a retry"
        );
        budget.deposit();
        assert!(budget.try_withdraw(), "the fifth completes a token");
        assert!(!budget.try_withdraw());
        (0..1000).for_each(|_| budget.deposit());
        assert_eq!(
            (0..10).filter(|_| budget.try_withdraw()).count(),
            3,
            "capped at max"
        );
    }

    /// The floor per second refills an empty budget without any traffic.
    #[test]
    fn the_floor_refills_an_idle_budget() {
        let budget = RetryBudget::new(0.0, 1000.0, 1.0);
        assert!(budget.try_withdraw());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            budget.try_withdraw(),
            "5 ms at 1000 a second refill a token"
        );
    }

    /// Waits double from the first one and stop growing at the cap; a reset starts over.
    #[test]
    fn waits_double_up_to_the_cap_and_reset_starts_over() {
        let ms = Duration::from_millis;
        let mut b = Backoff::doubling(ms(100), ms(500));
        let waits: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.delay_for(1), ms(100));
        assert_eq!(b.delay_for(3), ms(400));
        assert_eq!(b.delay_for(30), ms(500));
    }

    /// With full jitter every wait lies between zero and its ceiling, and they are not all
    /// the same.
    #[test]
    fn jittered_waits_stay_under_their_ceiling() {
        let ms = Duration::from_millis;
        let b = Backoff::doubling(ms(100), ms(5000)).with_full_jitter();
        let waits: Vec<_> = (0..200).map(|_| b.delay_for(4)).collect();
        assert!(waits.iter().all(|w| *w <= ms(800)));
        assert!(waits.iter().any(|w| *w != waits[0]));
    }
}
