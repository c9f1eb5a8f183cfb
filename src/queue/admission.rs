//! The admission rule, one pure function both stores apply under the queue's lock: since
//! admission last advanced, `floor(elapsed x rate / 60 s)` slots are owed; they are handed out
//! whole, and the moment moves on by exactly what they cost, so the fraction of a slot is
//! kept for the next turn and the admitted total never runs ahead of `rate x time`. After a
//! long idle spell (no instance asked) at most one burst is given at once and the rest is
//! forfeited. Slots that find nobody waiting are spent, not saved.

use chrono::{DateTime, Duration, Utc};

/// One burst: the slots of this many seconds at the configured rate (at least one slot).
pub const BURST_SECONDS: i64 = 5;

/// The largest number of slots handed out at once for `admit_per_minute`.
pub fn burst(admit_per_minute: u32) -> u64 {
    (u64::from(admit_per_minute) * BURST_SECONDS as u64)
        .div_ceil(60)
        .max(1)
}

/// Slots owed at `now` and the moment admission has then advanced to. Admission starts at
/// `shuffle_until` when that is later than `advanced_at`. `(0, advanced_at)` when nothing
/// whole is owed yet.
pub fn allowance(
    admit_per_minute: u32,
    shuffle_until: Option<DateTime<Utc>>,
    advanced_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (u64, DateTime<Utc>) {
    let start = shuffle_until.map_or(advanced_at, |s| s.max(advanced_at));
    let Some(elapsed_us) = (now - start).num_microseconds().filter(|us| *us > 0) else {
        return (0, advanced_at);
    };
    let rate = u128::from(admit_per_minute);
    let owed = u128::try_from(elapsed_us).unwrap_or(0) * rate / 60_000_000;
    if owed == 0 {
        return (0, advanced_at);
    }
    let burst = burst(admit_per_minute);
    if owed > u128::from(burst) {
        return (burst, now);
    }
    // What the owed slots cost, rounded up so that admission never runs ahead.
    let cost_us = (owed * 60_000_000).div_ceil(rate);
    let cost = Duration::microseconds(i64::try_from(cost_us).unwrap_or(i64::MAX));
    (u64::try_from(owed).unwrap_or(0), (start + cost).min(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap() + Duration::milliseconds(ms)
    }

    /// Nothing is owed before a whole slot; the fraction is kept, not lost.
    #[test]
    fn fractions_of_a_slot_are_kept_for_the_next_turn() {
        // 60 per minute: one slot a second.
        assert_eq!(allowance(60, None, t(0), t(999)), (0, t(0)));
        assert_eq!(allowance(60, None, t(0), t(1500)), (1, t(1000)));
        assert_eq!(allowance(60, None, t(1000), t(2000)), (1, t(2000)));
    }

    /// Asked every few milliseconds or once, the total over a span is the same.
    #[test]
    fn the_total_follows_the_rate_however_often_it_is_asked() {
        for rate in [1, 7, 60, 90, 1000, 1_000_000] {
            let (mut at, mut total) = (t(0), 0u64);
            for step in 1..=3000 {
                let (n, next) = allowance(rate, None, at, t(step));
                total += n;
                at = next;
            }
            let exact = u64::from(rate) * 3 / 60;
            assert!(total <= exact + 1 && total + 1 >= exact, "{rate}: {total}");
        }
    }

    /// After a long idle spell, one burst at most.
    #[test]
    fn an_idle_spell_gives_one_burst_at_most() {
        assert_eq!(burst(60), 5);
        assert_eq!(burst(1), 1);
        assert_eq!(allowance(60, None, t(0), t(3_600_000)), (5, t(3_600_000)));
    }

    /// Admission waits for the end of the shuffle window.
    #[test]
    fn admission_starts_when_the_shuffle_window_ends() {
        assert_eq!(allowance(60, Some(t(10_000)), t(0), t(9_000)), (0, t(0)));
        assert_eq!(
            allowance(60, Some(t(10_000)), t(0), t(12_500)),
            (2, t(12_000))
        );
    }
}
