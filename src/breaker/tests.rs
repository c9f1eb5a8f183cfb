use super::*;
use crate::clock::ManualClock;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        DateTime::parse_from_rfc3339("2030-01-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
    ))
}

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive: 3,
        ratio_percent: 50,
        window: 0,
        cool_down: Duration::from_secs(10),
    }
}

fn breaker(clock: &Arc<ManualClock>, config: BreakerConfig) -> Arc<Breaker> {
    Breaker::new("dep", config, Arc::clone(clock) as Arc<dyn Clock>)
}

fn fail(b: &Breaker) {
    b.admit().expect("admitted").failure("timeout");
}

fn succeed(b: &Breaker) {
    b.admit().expect("admitted").success();
}

#[test]
fn opens_after_consecutive_failures_only() {
    let clock = clock();
    let b = breaker(&clock, config());
    fail(&b);
    fail(&b);
    succeed(&b); // resets the run
    fail(&b);
    fail(&b);
    assert_eq!(b.snapshot().state, BreakerState::Closed);
    fail(&b);
    let open = b.snapshot();
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.reason.as_deref(), Some("timeout"));
    let refused = b.admit().err().expect("refused while open");
    assert_eq!(refused.retry_after, Duration::from_secs(10));
    assert_eq!(refused.retry_after_secs(), 10);
}

#[test]
fn opens_on_the_failure_ratio_of_the_window() {
    let clock = clock();
    let b = breaker(
        &clock,
        BreakerConfig {
            consecutive: 100,
            window: 10,
            ..config()
        },
    );
    for _ in 0..4 {
        fail(&b);
        succeed(&b);
    }
    fail(&b);
    assert_eq!(b.snapshot().state, BreakerState::Closed, "window not full");
    succeed(&b); // 10 calls, 5 failed: 50 %
    assert_eq!(
        b.snapshot().state,
        BreakerState::Closed,
        "a success never opens"
    );
    fail(&b); // the last 10: 5 failures
    assert_eq!(b.snapshot().state, BreakerState::Open);
}

#[test]
fn after_the_cool_down_one_probe_closes_it() {
    let clock = clock();
    let b = breaker(&clock, config());
    (0..3).for_each(|_| fail(&b));
    clock.advance(chrono::Duration::seconds(4));
    let refused = b.admit().err().expect("still cooling down");
    assert_eq!(refused.retry_after, Duration::from_secs(6));
    clock.advance(chrono::Duration::seconds(6));
    let probe = b.admit().expect("the probe goes through");
    assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    assert_eq!(b.snapshot().reason.as_deref(), Some("timeout"));
    assert!(b.admit().is_err(), "one probe at a time");
    probe.success();
    let closed = b.snapshot();
    assert_eq!(closed.state, BreakerState::Closed);
    assert_eq!(closed.reason, None);
    succeed(&b);
    succeed(&b);
}

#[test]
fn a_failed_probe_opens_it_for_another_cool_down() {
    let clock = clock();
    let b = breaker(&clock, config());
    (0..3).for_each(|_| fail(&b));
    clock.advance(chrono::Duration::seconds(10));
    b.admit().expect("probe").failure("still down");
    let open = b.snapshot();
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.reason.as_deref(), Some("still down"));
    assert_eq!(open.retry_after, Some(Duration::from_secs(10)));
    clock.advance(chrono::Duration::seconds(9));
    assert!(b.admit().is_err());
}

#[test]
fn a_cancelled_probe_lets_the_next_call_probe() {
    let clock = clock();
    let b = breaker(&clock, config());
    (0..3).for_each(|_| fail(&b));
    clock.advance(chrono::Duration::seconds(10));
    drop(b.admit().expect("probe"));
    assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    succeed(&b);
    assert_eq!(b.snapshot().state, BreakerState::Closed);
}

#[tokio::test]
async fn only_the_dependencys_failures_count() {
    let clock = clock();
    let b = breaker(&clock, config());
    let answered = |e: &&str| (*e == "timeout").then(|| e.to_string());
    for _ in 0..5 {
        let r = b.call(async { Err::<(), _>("conflict") }, answered).await;
        assert_eq!(r, Ok(Err("conflict")));
    }
    assert_eq!(b.snapshot().state, BreakerState::Closed);
    for _ in 0..3 {
        let _ = b.call(async { Err::<(), _>("timeout") }, answered).await;
    }
    let refused = b.call(async { Ok::<_, &str>(()) }, answered).await;
    assert!(refused.is_err(), "refused without running the call");
}

#[test]
fn the_observer_hears_every_change_and_witnesses_count() {
    let clock = clock();
    let b = breaker(&clock, config());
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    b.observe(Box::new(move |name, state, reason| {
        log.lock()
            .unwrap()
            .push((name, state, reason.map(str::to_owned)));
    }));
    (0..3).for_each(|_| b.witness(Some("broker down")));
    b.witness(Some("broker down"));
    clock.advance(chrono::Duration::seconds(10));
    succeed(&b);
    let down = Some("broker down".to_owned());
    assert_eq!(
        *heard.lock().unwrap(),
        vec![
            ("dep", BreakerState::Open, down.clone()),
            ("dep", BreakerState::HalfOpen, down),
            ("dep", BreakerState::Closed, None),
        ]
    );
}
