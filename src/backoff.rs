//! `Backoff`: the one retry schedule of the service. Each wait doubles from `first` up to
//! `max`; with full jitter a wait is a random share of that ceiling, so that many tasks
//! failing together (consumers, relays, writers of several instances) do not retry in
//! lockstep. It only computes and sleeps; what to retry and how often is the caller's.

use rand::Rng;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
