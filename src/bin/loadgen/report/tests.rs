use super::*;

/// Nearest rank: p50 of 1..=10 ms is 5 ms, p90 is 9 ms, p99 is the maximum.
#[test]
fn percentiles_use_the_nearest_rank() {
    let sorted: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
    assert_eq!(percentile(&sorted, 50), Duration::from_millis(5));
    assert_eq!(percentile(&sorted, 90), Duration::from_millis(9));
    assert_eq!(percentile(&sorted, 99), Duration::from_millis(10));
    assert_eq!(percentile(&sorted[..1], 50), Duration::from_millis(1));
}

/// No samples means no latency figures rather than a panic.
#[test]
fn empty_latencies_have_no_summary() {
    assert!(Latency::from_durations(Vec::new()).is_none());
}
