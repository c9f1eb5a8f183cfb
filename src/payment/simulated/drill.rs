//! Fault drills on the simulated processor of a running process: `FAULT_GATEWAY_FILE` (refused
//! in production) names a file holding `<latency_ms> <failure_rate>`, which the process follows
//! while it runs, so a test or an operator's drill can make the processor slow, then failing,
//! then healthy again without a restart. A missing file changes nothing.

use super::SimulatedGateway;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the file is read.
const EVERY: Duration = Duration::from_millis(100);

/// The processor's conditions as the file states them: (latency, failure rate).
pub fn parse(text: &str) -> Option<(Duration, f64)> {
    let mut words = text.split_whitespace();
    let latency_ms: u64 = words.next()?.parse().ok()?;
    let failure_rate: f64 = words.next()?.parse().ok()?;
    let valid = words.next().is_none() && (0.0..=1.0).contains(&failure_rate);
    valid.then_some((Duration::from_millis(latency_ms), failure_rate))
}

/// Applies the file's conditions to `gateway` whenever they change; runs until aborted.
pub async fn follow(gateway: Arc<SimulatedGateway>, path: PathBuf) {
    let mut applied = None;
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            match parse(&text) {
                Some(conditions) if applied != Some(conditions) => {
                    tracing::warn!(
                        ?conditions,
                        "fault drill: the processor's conditions change"
                    );
                    gateway.set_latency(conditions.0);
                    gateway.set_failure_rate(conditions.1);
                    applied = Some(conditions);
                }
                Some(_) => {}
                None => tracing::warn!(?path, "fault drill: want `<latency_ms> <failure_rate>`"),
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two numbers, a rate within 0..=1, nothing else.
    #[test]
    fn the_file_states_latency_and_failure_rate() {
        assert_eq!(parse("2000 0\n"), Some((Duration::from_secs(2), 0.0)));
        assert_eq!(parse(" 0  1 "), Some((Duration::ZERO, 1.0)));
        for bad in ["", "2000", "2000 1.5", "fast 0", "1 0 extra", "-1 0"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
