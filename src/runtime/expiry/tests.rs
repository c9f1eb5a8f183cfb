//! The scheduler keeps one timer per hold: however often a hold is armed (the sweep re-arms
//! every overdue hold on each tick), it is tried once at a time, and a failed attempt retries
//! 5 s later; an ended hold is forgotten, and a disarmed one is neither counted nor tried.

use super::*;
use crate::clock::ManualClock;
use std::sync::Mutex;

/// Counts attempts per hold and answers what it is told.
struct Scripted {
    attempts: Mutex<Vec<DateTime<Utc>>>,
    answer: Mutex<HoldEnd>,
}

#[async_trait]
impl EndHold for Scripted {
    async fn end_hold(&self, _: EventId, _: ReservationId, now: DateTime<Utc>) -> HoldEnd {
        self.attempts.lock().unwrap().push(now);
        self.answer.lock().unwrap().clone()
    }
}

/// A running scheduler ending holds through `ender`, on a manual clock.
fn scheduler(ender: Arc<dyn EndHold>) -> (Arc<ManualClock>, Arc<Metrics>, ExpiryHandle) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let metrics = Arc::new(Metrics::new());
    let (handle, inbox) = channel();
    tokio::spawn(run(inbox, ender, clock.clone(), Arc::clone(&metrics)));
    (clock, metrics, handle)
}

/// Lets the scheduler and the attempts it spawned run.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_hold_armed_again_and_again_is_tried_once_at_a_time() {
    let ender = Arc::new(Scripted {
        attempts: Mutex::new(Vec::new()),
        answer: Mutex::new(HoldEnd::Failed("the store is down".into())),
    });
    let (clock, metrics, handle) = scheduler(ender.clone());
    let (sale, hold) = (EventId::random(), ReservationId::random());
    let overdue = clock.now();
    // The writer's timer, then ten sweep ticks' re-arms of the same overdue hold.
    for _ in 0..11 {
        handle.arm(overdue, sale, hold);
        settle().await;
        clock.advance(Duration::seconds(1));
        settle().await;
    }
    let attempts = ender.attempts.lock().unwrap().clone();
    assert!(
        (2..=3).contains(&attempts.len()),
        "one attempt, then one every 5 s over 11 s: {attempts:?}"
    );
    assert_eq!(metrics.active_holds.get(), 1, "one timer for the hold");

    *ender.answer.lock().unwrap() = HoldEnd::Ended;
    clock.advance(Duration::seconds(5));
    settle().await;
    let tried = ender.attempts.lock().unwrap().len();
    assert_eq!(metrics.active_holds.get(), 0, "ended: forgotten");
    // A late sweep that still saw it pending arms it again: one more (harmless) attempt.
    handle.arm(overdue, sale, hold);
    settle().await;
    assert_eq!(ender.attempts.lock().unwrap().len(), tried + 1);
    assert_eq!(metrics.active_holds.get(), 0);
}

/// Panics on its first attempt, then ends the hold.
struct PanicsOnce {
    attempts: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl EndHold for PanicsOnce {
    async fn end_hold(&self, _: EventId, _: ReservationId, _: DateTime<Utc>) -> HoldEnd {
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(attempt > 0, "the first attempt panics");
        HoldEnd::Ended
    }
}

/// An attempt that panics still tells the scheduler: the hold is tried again 5 s later, not
/// kept armed forever with every later arm ignored.
#[tokio::test]
async fn a_panicking_attempt_is_tried_again() {
    let ender = Arc::new(PanicsOnce {
        attempts: Default::default(),
    });
    let (clock, metrics, handle) = scheduler(ender.clone());
    handle.arm(clock.now(), EventId::random(), ReservationId::random());
    settle().await;
    let tried = || ender.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tried(), 1);
    assert_eq!(metrics.active_holds.get(), 1, "to be tried again");
    clock.advance(Duration::seconds(5));
    settle().await;
    assert_eq!(tried(), 2);
    assert_eq!(metrics.active_holds.get(), 0, "ended");
}

/// A hold that ended otherwise (paid, cancelled) is disarmed: counted no more at once, and
/// never tried when its time comes; armed again later (a sweep that still saw it pending), it
/// has a timer of its own again.
#[tokio::test]
async fn a_disarmed_hold_is_neither_counted_nor_tried() {
    let ender = Arc::new(Scripted {
        attempts: Mutex::new(Vec::new()),
        answer: Mutex::new(HoldEnd::Ended),
    });
    let (clock, metrics, handle) = scheduler(ender.clone());
    let (sale, paid, pending) = (
        EventId::random(),
        ReservationId::random(),
        ReservationId::random(),
    );
    let expires = clock.now() + Duration::minutes(15);
    handle.arm(expires, sale, paid);
    handle.arm(expires, sale, pending);
    settle().await;
    assert_eq!(metrics.active_holds.get(), 2);

    handle.disarm(sale, paid);
    settle().await;
    assert_eq!(metrics.active_holds.get(), 1, "only the pending hold");
    clock.advance(Duration::minutes(15));
    settle().await;
    assert_eq!(
        ender.attempts.lock().unwrap().len(),
        1,
        "the pending hold alone"
    );
    assert_eq!(metrics.active_holds.get(), 0);

    handle.arm(clock.now(), sale, paid);
    settle().await;
    assert_eq!(ender.attempts.lock().unwrap().len(), 2);
}

/// Waits for the test before it answers `Ended`: an attempt still running.
struct Gated {
    attempts: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl EndHold for Gated {
    async fn end_hold(&self, _: EventId, _: ReservationId, _: DateTime<Utc>) -> HoldEnd {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _pass = self.gate.acquire().await;
        HoldEnd::Ended
    }
}

/// A hold disarmed while its attempt runs (the attempt's own release disarms it) is not tried
/// a second time meanwhile, however often the sweep arms it again; the timer goes once the
/// attempt finished.
#[tokio::test]
async fn a_hold_disarmed_while_its_attempt_runs_is_not_tried_twice_at_once() {
    let ender = Arc::new(Gated {
        attempts: Default::default(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let (clock, metrics, handle) = scheduler(ender.clone());
    let (sale, hold) = (EventId::random(), ReservationId::random());
    handle.arm(clock.now(), sale, hold);
    settle().await;
    let tried = || ender.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tried(), 1, "running");

    handle.disarm(sale, hold);
    for _ in 0..3 {
        handle.arm(clock.now(), sale, hold);
        settle().await;
        clock.advance(Duration::seconds(1));
        settle().await;
    }
    assert_eq!(tried(), 1, "still the one attempt");

    ender.gate.add_permits(10);
    settle().await;
    assert_eq!(metrics.active_holds.get(), 0, "forgotten once it finished");
    assert_eq!(tried(), 1);
}
