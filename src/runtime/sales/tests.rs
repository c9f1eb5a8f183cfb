use super::*;
use crate::domain::DomainEvent;
use crate::eventstore::memory::MemoryEventStore;
use crate::eventstore::{Decide, Known, NewEvent, RecordedEvent, StoreError, TurnMode, Turned};
use crate::runtime::expiry;
use tokio::sync::{watch, Notify, Semaphore};

/// A memory store whose calls can be held at gates: every turn (a writer stuck on a slow
/// database), or the last page of a hydration before it is returned (a writer that read its
/// whole sale while another instance writes). With `decides_first`, an optimistic turn has
/// the writer decide before it finds the sale's head moved, as on PostgreSQL (the memory
/// store looks at the head first). It counts the reads of a sale (`read_sale`).
struct Gated {
    inner: Arc<dyn EventStore>,
    turns: Option<Gate>,
    hydrations: Option<Gate>,
    decides_first: bool,
    reads: std::sync::atomic::AtomicUsize,
}

/// Where a call waits until the test lets it pass; `entered` tells the test one is waiting.
struct Gate {
    pass: Semaphore,
    entered: Notify,
}

impl Gate {
    fn closed() -> Self {
        Self {
            pass: Semaphore::new(0),
            entered: Notify::new(),
        }
    }

    async fn wait(&self) {
        self.entered.notify_one();
        let _pass = self.pass.acquire().await;
    }

    fn open(&self) {
        self.pass.add_permits(1_000);
    }
}

impl Gated {
    fn new(inner: Arc<dyn EventStore>) -> Self {
        Self {
            inner,
            turns: None,
            hydrations: None,
            decides_first: false,
            reads: Default::default(),
        }
    }
}

#[async_trait]
impl EventStore for Gated {
    async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
        self.inner.append(sale_id, events).await
    }
    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError> {
        if let Some(gate) = &self.turns {
            gate.wait().await;
        }
        if self.decides_first && mode == TurnMode::Optimistic {
            let decided = decide(&[]);
            return self
                .inner
                .take_turn(sale_id, known, mode, &mut |_| decided.clone())
                .await;
        }
        self.inner.take_turn(sale_id, known, mode, decide).await
    }
    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let page = self.inner.read_sale(sale_id, after, limit).await?;
        if let Some(gate) = self.hydrations.as_ref().filter(|_| page.len() < limit) {
            gate.wait().await;
        }
        Ok(page)
    }
    async fn first_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Arc<RecordedEvent>>, StoreError> {
        self.inner.first_of_stream(stream_id).await
    }
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_head()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "gated"
    }
}

fn expire(now: DateTime<Utc>) -> SaleCommand {
    SaleCommand::ExpireReservation {
        reservation_id: ReservationId(uuid::Uuid::new_v4()),
        now,
    }
}

/// With the writer stuck on the store and its mailbox full, the next command is refused at
/// once (and counted) instead of waiting; once the store answers, everything queued is
/// decided and the mailbox takes commands again.
#[tokio::test]
async fn a_full_mailbox_refuses_at_once() {
    let store = Arc::new(Gated {
        turns: Some(Gate::closed()),
        ..Gated::new(Arc::new(MemoryEventStore::new()))
    });
    let turns = store.turns.as_ref().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (expiry, _inbox) = expiry::channel();
    let sales = Sales::new(
        Arc::clone(&store) as Arc<dyn EventStore>,
        expiry,
        Arc::clone(&metrics),
        (1, 2),
        unwatched(),
    );
    let sale = EventId(uuid::Uuid::new_v4());
    let now = Utc::now();
    let run = |sales: &Sales| {
        let sales = sales.clone();
        tokio::spawn(async move { sales.execute(sale, expire(now), Metadata::default()).await })
    };

    // The first command is in the writer's hands, stuck in the store.
    let first = run(&sales);
    turns.entered.notified().await;
    // Two more fill the mailbox of two.
    let queued = [run(&sales), run(&sales)];
    let resilience = &metrics.resilience;
    let mut spins = 0;
    while resilience.mailbox_peak.get() < 2 {
        spins += 1;
        assert!(spins < 10_000, "the mailbox never filled");
        tokio::task::yield_now().await;
    }

    // Bounded only so that a mailbox that waits instead of refusing fails rather than hangs.
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sales.execute(sale, expire(now), Metadata::default()),
    )
    .await
    .expect("refused at once, not left waiting");
    assert!(
        matches!(refused, Err(CommandError::Overloaded)),
        "{refused:?}"
    );
    assert_eq!(resilience.mailbox_refusals.get(), 1);

    turns.open();
    for waiting in std::iter::once(first).chain(queued) {
        let answer = waiting.await.unwrap();
        // Decided (the reservation is unknown), not refused.
        assert!(
            matches!(answer, Err(CommandError::Rejected(_))),
            "{answer:?}"
        );
    }
    let again = sales.execute(sale, expire(now), Metadata::default()).await;
    assert!(matches!(again, Err(CommandError::Rejected(_))), "{again:?}");
    assert_eq!(resilience.mailbox_refusals.get(), 1);
}

/// Two instances (two `Sales`) on one store: a writer that had its sale to itself, and so
/// takes optimistic turns, notices the other instance's write and decides on the whole truth
/// (opening sales needs the other instance's publication).
#[tokio::test]
async fn a_writer_that_had_its_sale_to_itself_notices_another_instances_write() {
    use crate::domain::sale::Lifecycle;

    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let instance = || instance_on(&store);
    let ((a, _a_expiry), (b, _b_expiry)) = (instance(), instance());
    let sale = EventId(uuid::Uuid::new_v4());
    let now = Utc::now();
    let lifecycle = |action| SaleCommand::ChangeLifecycle { action, now };
    a.execute(sale, create_gala(now), Metadata::default())
        .await
        .unwrap();
    // A now knows the sale as it wrote it; B publishes it.
    b.execute(sale, lifecycle(Lifecycle::Publish), Metadata::default())
        .await
        .unwrap();
    let opened = a
        .execute(sale, lifecycle(Lifecycle::OpenSales), Metadata::default())
        .await;
    assert!(opened.is_ok(), "decided on a stale state: {opened:?}");
    let event_stream: Vec<u64> = store
        .read_sale(sale, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.stream_id.starts_with("event-"))
        .map(|e| e.version)
        .collect();
    assert_eq!(event_stream, [1, 2, 3], "created, published, opened");
}

/// A 15-minute hold of one seat on the gala's floor, for a new customer.
pub(crate) fn hold_one_seat(reservation_id: ReservationId, now: DateTime<Utc>) -> SaleCommand {
    SaleCommand::Reserve {
        reservation_id,
        user_id: crate::domain::UserId(uuid::Uuid::new_v4()),
        section: "Floor".into(),
        quantity: 1,
        hold_for: chrono::Duration::minutes(15),
        now,
    }
}

/// One instance's `Sales` on `store`, with the orders its writers send the expiry scheduler.
fn instance_on(
    store: &Arc<dyn EventStore>,
) -> (Sales, tokio::sync::mpsc::UnboundedReceiver<expiry::Order>) {
    let (expiry, inbox) = expiry::channel();
    let sales = Sales::new(
        Arc::clone(store),
        expiry,
        Arc::new(Metrics::new()),
        (8, 8),
        unwatched(),
    );
    (sales, inbox)
}

/// One instance's `Sales` on `store` whose optimistic turns decide before they find the
/// sale's head moved, as on PostgreSQL (`Gated::decides_first`), with that gated store, its
/// metrics and the orders its writers send the expiry scheduler.
fn deciding_first_on(
    store: &Arc<dyn EventStore>,
) -> (
    Sales,
    Arc<Gated>,
    Arc<Metrics>,
    tokio::sync::mpsc::UnboundedReceiver<expiry::Order>,
) {
    let decides_first = Arc::new(Gated {
        decides_first: true,
        ..Gated::new(Arc::clone(store))
    });
    let (expiry, inbox) = expiry::channel();
    let metrics = Arc::new(Metrics::new());
    let sales = Sales::new(
        Arc::clone(&decides_first) as Arc<dyn EventStore>,
        expiry,
        Arc::clone(&metrics),
        (8, 8),
        unwatched(),
    );
    (sales, decides_first, metrics, inbox)
}

/// An event with one section of 10 seats, starting in 30 days.
pub(crate) fn create_gala(now: DateTime<Utc>) -> SaleCommand {
    use crate::domain::events::{EventDetails, SectionSpec, Venue};
    use crate::domain::{Currency, UserId};
    let details = EventDetails {
        name: "Gala".into(),
        description: None,
        venue: Venue {
            name: "Hall".into(),
            address: "1 Main St".into(),
        },
        starts_at: now + chrono::Duration::days(30),
        ends_at: now + chrono::Duration::days(30) + chrono::Duration::hours(2),
        sections: vec![SectionSpec {
            name: "Floor".into(),
            capacity: 10,
            price_cents: 5000,
        }],
        max_tickets_per_customer: None,
    };
    SaleCommand::CreateEvent {
        owner_id: UserId(uuid::Uuid::new_v4()),
        currency: Currency::USD,
        details,
        now,
    }
}

/// A `CommitWatch` that keeps what it was told: each batch's position and event types, kept
/// only after blocking its caller for `slow` (a watch taking its time).
#[derive(Default)]
struct Seen {
    told: std::sync::Mutex<Vec<(u64, Vec<&'static str>)>>,
    slow: Duration,
}

impl CommitWatch for Seen {
    fn committed(&self, position: u64, events: &mut dyn Iterator<Item = &DomainEvent>) {
        let types = events.map(DomainEvent::event_type).collect();
        std::thread::sleep(self.slow);
        self.told.lock().unwrap().push((position, types));
    }
}

impl Seen {
    fn last(&self) -> Option<(u64, Vec<&'static str>)> {
        self.told.lock().unwrap().last().cloned()
    }
}

fn unwatched() -> Arc<dyn CommitWatch> {
    Arc::new(Seen::default())
}

/// Every batch a writer commits is told to the watch before its command is answered, a
/// hold's timer (`EndHold`) as a request's; a refused command commits nothing and tells
/// nothing. The watch takes its time on another worker thread: a command answered before it
/// was told would find it not told yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_told_before_it_is_answered() {
    use crate::domain::sale::Lifecycle;

    let (expiry, _inbox) = expiry::channel();
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let seen = Arc::new(Seen {
        slow: Duration::from_millis(20),
        ..Seen::default()
    });
    let watch = Arc::clone(&seen) as Arc<dyn CommitWatch>;
    let sales = Sales::new(store, expiry, Arc::new(Metrics::new()), (8, 8), watch);
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |command| sales.execute(sale, command, Metadata::default());
    let created = run(create_gala(now)).await.unwrap();
    assert_eq!(seen.last().unwrap().0, created.position);
    for action in [Lifecycle::Publish, Lifecycle::OpenSales] {
        run(SaleCommand::ChangeLifecycle { action, now })
            .await
            .unwrap();
    }
    let hold = ReservationId::random();
    let placed = run(hold_one_seat(hold, now)).await.unwrap();
    assert_eq!(
        seen.last(),
        Some((
            placed.position,
            vec!["inventory.seats_held", "reservation.placed"]
        ))
    );
    let early = sales.end_hold(sale, hold, now).await;
    assert!(matches!(early, HoldEnd::NotYet(_)), "{early:?}");
    assert_eq!(seen.last().unwrap().0, placed.position, "nothing committed");

    let ended = sales
        .end_hold(sale, hold, now + chrono::Duration::minutes(16))
        .await;
    assert!(matches!(ended, HoldEnd::Ended), "{ended:?}");
    let (position, types) = seen.last().unwrap();
    assert!(position > placed.position);
    assert!(types.contains(&"reservation.expired"), "{types:?}");
}

/// The writer arms a timer for each hold it places and disarms it when it commits the hold's
/// end (here a cancellation), so the scheduler counts only pending holds.
#[tokio::test]
async fn a_hold_ended_by_its_writer_is_disarmed() {
    use crate::domain::sale::Lifecycle;

    let (expiry, mut inbox) = expiry::channel();
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let sales = Sales::new(store, expiry, Arc::new(Metrics::new()), (8, 8), unwatched());
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |command| sales.execute(sale, command, Metadata::default());
    run(create_gala(now)).await.unwrap();
    for action in [Lifecycle::Publish, Lifecycle::OpenSales] {
        run(SaleCommand::ChangeLifecycle { action, now })
            .await
            .unwrap();
    }
    let (kept, cancelled) = (ReservationId::random(), ReservationId::random());
    for reservation_id in [kept, cancelled] {
        run(hold_one_seat(reservation_id, now)).await.unwrap();
    }
    let cancel = SaleCommand::CancelReservation {
        reservation_id: cancelled,
        now,
    };
    run(cancel).await.unwrap();

    let expires = now + chrono::Duration::minutes(15);
    let mut orders = Vec::new();
    while let Ok(order) = inbox.try_recv() {
        orders.push(order);
    }
    assert_eq!(
        orders,
        [
            expiry::Order::Arm((expires, sale, kept)),
            expiry::Order::Arm((expires, sale, cancelled)),
            expiry::Order::Disarm((sale, cancelled)),
        ]
    );
}

/// A writer with no command for its idle time stops and lets its sale's state go (counted in
/// `ticketing_sale_writers`); the sale's next command starts a fresh writer, which hydrates
/// from the store and decides on the whole sale.
#[tokio::test(start_paused = true)]
async fn an_idle_writer_stops_and_the_next_command_hydrates_a_new_one() {
    use crate::domain::sale::Lifecycle;

    let (expiry, _inbox) = expiry::channel();
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let idle = std::time::Duration::from_secs(60);
    let sales =
        Sales::new(store, expiry, Arc::clone(&metrics), (8, 8), unwatched()).idle_after(idle);
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |command| sales.execute(sale, command, Metadata::default());
    run(create_gala(now)).await.unwrap();
    assert!(sales.is_running(sale));
    assert_eq!(metrics.sale_writers.get(), 1);

    tokio::time::sleep(idle / 2).await;
    let publish = SaleCommand::ChangeLifecycle {
        action: Lifecycle::Publish,
        now,
    };
    run(publish).await.unwrap();
    tokio::time::sleep(idle / 2).await;
    assert!(sales.is_running(sale), "a command restarts the idle time");

    tokio::time::sleep(idle).await;
    assert!(!sales.is_running(sale), "stopped once idle");
    assert_eq!(metrics.sale_writers.get(), 0);

    // The fresh writer knows the sale is published: opening its sales is allowed.
    let open = SaleCommand::ChangeLifecycle {
        action: Lifecycle::OpenSales,
        now,
    };
    run(open).await.unwrap();
    assert!(sales.is_running(sale));
    assert_eq!(metrics.sale_writers.get(), 1);
    let publish_again = SaleCommand::ChangeLifecycle {
        action: Lifecycle::Publish,
        now,
    };
    assert!(
        matches!(run(publish_again).await, Err(CommandError::Rejected(_))),
        "the fresh writer decided on the hydrated state"
    );
}

/// A hold placed on one instance and cancelled on another: the placing instance's writer
/// disarms its timer when it reads the other's events (here in the reload its next command
/// causes), so neither instance keeps counting the hold.
#[tokio::test]
async fn a_hold_ended_on_another_instance_is_disarmed_where_it_was_placed() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let instance = || instance_on(&store);
    let ((here, mut here_orders), (there, mut there_orders)) = (instance(), instance());
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |sales: &Sales, command| {
        let sales = sales.clone();
        async move { sales.execute(sale, command, Metadata::default()).await }
    };
    open_gala(&here, sale, now).await;
    let reserve = |reservation_id| hold_one_seat(reservation_id, now);
    let (cancelled, next) = (ReservationId::random(), ReservationId::random());
    run(&here, reserve(cancelled)).await.unwrap();
    let cancel = SaleCommand::CancelReservation {
        reservation_id: cancelled,
        now,
    };
    run(&there, cancel).await.unwrap();
    run(&here, reserve(next)).await.unwrap();

    let drain = |inbox: &mut tokio::sync::mpsc::UnboundedReceiver<expiry::Order>| {
        let mut orders = Vec::new();
        while let Ok(order) = inbox.try_recv() {
            orders.push(order);
        }
        orders
    };
    let expires = now + chrono::Duration::minutes(15);
    assert_eq!(
        drain(&mut here_orders),
        [
            expiry::Order::Arm((expires, sale, cancelled)),
            expiry::Order::Disarm((sale, cancelled)),
            expiry::Order::Arm((expires, sale, next)),
        ]
    );
    assert_eq!(
        drain(&mut there_orders),
        [expiry::Order::Disarm((sale, cancelled))]
    );
}

/// A writer hydrates outside its turns, so another instance's writer goes on meanwhile; what
/// that one appends after the hydration's last page is handed to the locked turn that follows,
/// so the first decides on the whole sale: here the last seat, taken by the other instance
/// during the hydration, is not sold again.
#[tokio::test]
async fn what_another_instance_appends_during_a_hydration_is_decided_on() {
    let inner: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let paused = Arc::new(Gated {
        hydrations: Some(Gate::closed()),
        ..Gated::new(Arc::clone(&inner))
    });
    let hydrations = paused.hydrations.as_ref().unwrap();
    let (there, _there_orders) = instance_on(&inner);
    let (expiry, _here_orders) = expiry::channel();
    let metrics = Arc::new(Metrics::new());
    let here = Sales::new(
        paused.clone(),
        expiry,
        Arc::clone(&metrics),
        (8, 8),
        unwatched(),
    );
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |sales: &Sales, command| {
        let sales = sales.clone();
        async move { sales.execute(sale, command, Metadata::default()).await }
    };
    open_gala(&there, sale, now).await;
    // Nine of the gala's ten seats held.
    for _ in 0..9 {
        run(&there, hold_one_seat(ReservationId::random(), now))
            .await
            .unwrap();
    }

    let late = tokio::spawn(run(&here, hold_one_seat(ReservationId::random(), now)));
    // Bounded only so that a writer that does not hydrate page by page fails rather than hangs.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        hydrations.entered.notified(),
    )
    .await
    .expect("the writer reads its sale with `read_sale`");
    // The hydration has read nine holds; meanwhile the other instance takes the last seat.
    run(&there, hold_one_seat(ReservationId::random(), now))
        .await
        .expect("the other instance's writer is not held up by a hydration");
    hydrations.open();
    let refused = late.await.unwrap();
    assert!(
        matches!(refused, Err(CommandError::Rejected(_))),
        "the last seat was sold twice: {refused:?}"
    );
    assert_eq!(
        metrics.store_conflicts.get(),
        0,
        "decided on the whole sale at once, not after a version conflict"
    );
    assert_eq!(holds_placed(inner.as_ref(), sale).await, 10);
}

/// A writer's optimistic turn decides a hold, then finds that another instance wrote the
/// sale: the hold is taken back (not left in the writer's state as a phantom) and decided
/// again in a locked turn that hands the writer the other instance's holds, without loading
/// the whole sale again. Here that hold gets the last seat, and the next is refused.
#[tokio::test]
async fn a_stale_optimistic_batch_is_undone_and_decided_again_without_a_reload() {
    let inner: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let (here, _, metrics, _here_orders) = deciding_first_on(&inner);
    let (there, _there_orders) = instance_on(&inner);
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let run = |sales: &Sales, command| {
        let sales = sales.clone();
        async move { sales.execute(sale, command, Metadata::default()).await }
    };
    open_gala(&here, sale, now).await;
    // Of the gala's ten seats, four held here and then five on the other instance.
    for sales in [&here; 4].into_iter().chain([&there; 5]) {
        run(sales, hold_one_seat(ReservationId::random(), now))
            .await
            .unwrap();
    }

    let last = run(&here, hold_one_seat(ReservationId::random(), now)).await;
    assert!(last.is_ok(), "the last seat: {last:?}");
    let none_left = run(&here, hold_one_seat(ReservationId::random(), now)).await;
    assert!(
        matches!(none_left, Err(CommandError::Rejected(_))),
        "{none_left:?}"
    );
    assert_eq!(holds_placed(inner.as_ref(), sale).await, 10);
    let loads = metrics
        .hydration_duration
        .with_label_values(&["gated"])
        .get_sample_count();
    assert_eq!(
        loads, 1,
        "the sale was loaded once, when the writer started"
    );
    assert_eq!(metrics.store_conflicts.get(), 0);
}

/// How many holds `sale` has had placed in `store`.
async fn holds_placed(store: &dyn EventStore, sale: EventId) -> usize {
    store
        .read_sale(sale, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "reservation.placed")
        .count()
}

/// Creates the gala on `sales`, publishes it and opens its sales.
async fn open_gala(sales: &Sales, sale: EventId, now: DateTime<Utc>) {
    use crate::domain::sale::Lifecycle;
    sales
        .execute(sale, create_gala(now), Metadata::default())
        .await
        .unwrap();
    for action in [Lifecycle::Publish, Lifecycle::OpenSales] {
        let lifecycle = SaleCommand::ChangeLifecycle { action, now };
        sales
            .execute(sale, lifecycle, Metadata::default())
            .await
            .unwrap();
    }
}

/// A warm start: a sale loaded before its first command here is not loaded again by that
/// command, whose turn (a locked one) hands the writer what another instance appended after
/// the load: here the last seat, so the hold is refused, in one turn and without a conflict.
#[tokio::test]
async fn a_warmed_writer_catches_up_in_its_first_turn_without_loading_again() {
    let inner: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let (here, _, metrics, _here_orders) = deciding_first_on(&inner);
    let (there, _there_orders) = instance_on(&inner);
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    open_gala(&there, sale, now).await;
    for _ in 0..9 {
        let hold = hold_one_seat(ReservationId::random(), now);
        there
            .execute(sale, hold, Metadata::default())
            .await
            .unwrap();
    }

    here.warm(sale).await.unwrap();
    assert!(here.is_running(sale), "the warmed writer runs");
    let last = hold_one_seat(ReservationId::random(), now);
    there
        .execute(sale, last, Metadata::default())
        .await
        .unwrap();
    let late = hold_one_seat(ReservationId::random(), now);
    let refused = here.execute(sale, late, Metadata::default()).await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(_))),
        "the last seat was sold twice: {refused:?}"
    );
    let count = |histogram: &prometheus::HistogramVec| {
        histogram.with_label_values(&["gated"]).get_sample_count()
    };
    assert_eq!(count(&metrics.hydration_duration), 1, "loaded once, warm");
    assert_eq!(count(&metrics.append_duration), 1, "one turn, a locked one");
    assert_eq!(metrics.store_conflicts.get(), 0);
    assert_eq!(holds_placed(inner.as_ref(), sale).await, 10);
}

/// A writer that took no turn for a while (here two seconds, while another instance sold)
/// reads what was appended meanwhile in pages before its turn, not in the (locked) turn,
/// where a long read would hold the sale from every other writer; it then decides on it: the
/// last seat, sold on the other instance, is not sold again. A writer busy on its sale reads
/// nothing before its turns.
#[tokio::test(start_paused = true)]
async fn a_writer_back_from_a_pause_reads_what_it_missed_before_its_turn() {
    let inner: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let (here, gated, metrics, _here_orders) = deciding_first_on(&inner);
    let (there, _there_orders) = instance_on(&inner);
    let (sale, now) = (EventId(uuid::Uuid::new_v4()), Utc::now());
    let hold = || hold_one_seat(ReservationId::random(), now);
    open_gala(&here, sale, now).await;
    here.execute(sale, hold(), Metadata::default())
        .await
        .unwrap();
    let reads = || gated.reads.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reads(), 1, "the sale is read once, when its writer starts");

    for _ in 0..8 {
        there
            .execute(sale, hold(), Metadata::default())
            .await
            .unwrap();
    }
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    here.execute(sale, hold(), Metadata::default())
        .await
        .unwrap();
    assert_eq!(reads(), 2, "what the writer missed is read before its turn");
    let none_left = here.execute(sale, hold(), Metadata::default()).await;
    assert!(
        matches!(none_left, Err(CommandError::Rejected(_))),
        "the last seat was sold twice: {none_left:?}"
    );
    assert_eq!(
        reads(),
        2,
        "a writer busy on its sale reads nothing before its turns"
    );
    assert_eq!(holds_placed(inner.as_ref(), sale).await, 10);
    let loads = metrics.hydration_duration.with_label_values(&["gated"]);
    assert_eq!(loads.get_sample_count(), 1, "caught up, not loaded again");
}
