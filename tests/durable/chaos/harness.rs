//! The chaos harness: N instances on a fresh database, a flash sale (`SEATS` seats, `ATTEMPTS`
//! purchase attempts by `ACCOUNTS` customers through `CLIENTS` concurrent clients, each retrying
//! with the same `Idempotency-Key` on 503 or no answer, bounded), a fault a scenario injects
//! mid-sale, recovery on every instance within 30 s, and the checks in SQL that end every
//! scenario.

use super::super::client::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

pub const SEATS: u32 = 50;
pub const ATTEMPTS: usize = 150;
pub const ACCOUNTS: usize = 30;
pub const CLIENTS: usize = 30;
/// How long one request may take before the client counts it as unanswered.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Sends of one request (the first and the retries), 250 ms apart.
const SENDS: usize = 40;
/// Longest the last holds may stay pending, or captures unreconciled, after the sale.
const SETTLE: Duration = Duration::from_secs(30);
/// The `path` of availability reads in an `Answer`.
pub const AVAILABILITY: &str = "availability";
/// Recovery bound: a purchase succeeds again on every instance this long after the fault ends.
pub const RECOVERY: Duration = Duration::from_secs(30);

/// Short holds, a frequent sweep and reconciliation, small pools: each scenario takes seconds.
const ENV: [(&str, &str); 5] = [
    ("RESERVATION_TTL_SECONDS", "6"),
    ("EXPIRY_SWEEP_SECONDS", "1"),
    ("RECONCILE_INTERVAL_SECONDS", "1"),
    ("REQUEST_TIMEOUT_SECONDS", "10"),
    ("DB_MAX_CONNECTIONS", "4"),
];

/// An answer of 500 or more, as a failure message shows it.
#[derive(Debug, Clone)]
#[allow(dead_code)] // read through `Debug` only
pub struct Answer {
    pub instance: usize,
    pub path: &'static str,
    pub status: u16,
    /// When it was sent and answered: it is excused if it was in flight during the fault.
    pub sent: Instant,
    pub answered: Instant,
    pub body: Value,
}

#[derive(Debug, Default)]
pub struct Told {
    /// Reservations acknowledged (201).
    pub holds: Vec<Uuid>,
    /// Purchases acknowledged (201 or 200): (reservation, payment).
    pub purchases: Vec<(Uuid, Uuid)>,
    /// Every answer of 500 or more (not a request that got no answer).
    pub server_errors: Vec<Answer>,
    /// Requests that got no answer (a killed instance, a cut) and were sent again.
    pub unanswered: usize,
    /// Attempts whose retries ran out.
    pub gave_up: usize,
}

impl Told {
    /// Keeps an answer of 500 or more.
    fn note(
        &mut self,
        instance: usize,
        path: &'static str,
        status: u16,
        sent: Instant,
        body: &Value,
    ) {
        if status >= 500 {
            self.server_errors.push(Answer {
                instance,
                path,
                status,
                sent,
                answered: Instant::now(),
                body: body.clone(),
            });
        }
    }
}

/// Which 503 answers a fault excuses: those to `paths` in flight at some time from its start
/// until every instance recovered. Anything else of 500 or more fails the scenario.
pub struct Excused {
    pub paths: &'static [&'static str],
    pub from: Instant,
    pub until: Instant,
}

/// A scenario's instances, its sale, and the event the recovery purchases buy from.
pub struct Chaos {
    pub pool: PgPool,
    pub instances: Vec<Arc<Service>>,
    /// Instances killed on purpose: recovery and the last checks skip them.
    pub dead: Vec<usize>,
    pub event: Uuid,
    probe: Uuid,
    buyers: Vec<String>,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Chaos {
    /// Starts `n` instances on `url` (the database, maybe through a proxy) with the harness's
    /// environment and then `env`; `direct` is the database itself, for the checks.
    pub async fn start(n: usize, url: &str, direct: &str, env: &[(&str, &str)]) -> Chaos {
        let alone = MANY_INSTANCES.lock().await;
        let env: Vec<_> = ENV.iter().chain(env).copied().collect();
        let mut instances = Vec::new();
        for _ in 0..n {
            instances.push(Arc::new(Service::start(url, &env).await));
        }
        let (_, organizer) = instances[0].user("organizer").await;
        let event = instances[0].event_on_sale(&organizer, SEATS).await;
        let probe = instances[0].event_on_sale(&organizer, 1000).await;
        let buyers = sign_up(&instances, ACCOUNTS).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(direct)
            .await
            .expect("the checks connect to the database");
        Chaos {
            pool,
            instances,
            dead: Vec::new(),
            event,
            probe,
            buyers,
            _alone: alone,
        }
    }

    /// Opens the sale: `ATTEMPTS` purchase attempts start at once through `CLIENTS` clients;
    /// every fifth abandons its hold. Returns when `holds` holds were acknowledged.
    pub async fn open_sale(&self, holds: usize) -> Sale {
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let clients = Arc::new(tokio::sync::Semaphore::new(CLIENTS));
        let mut attempts = JoinSet::new();
        for i in 0..ATTEMPTS {
            let buyer = Buyer {
                instances: self.instances.clone(),
                token: self.buyers[i % ACCOUNTS].clone(),
                first: i,
            };
            let (clients, acknowledged, event) =
                (Arc::clone(&clients), Arc::clone(&acknowledged), self.event);
            attempts.spawn(async move {
                let _client = clients.acquire_owned().await.expect("clients");
                buyer.buy(event, i % 5 != 4, &acknowledged).await
            });
        }
        let sale = Sale {
            attempts,
            acknowledged,
        };
        eventually(
            "holds before the fault",
            Duration::from_secs(60),
            || async { sale.acknowledged.load(Ordering::SeqCst) >= holds },
        )
        .await;
        sale
    }

    /// A purchase succeeds again on every live instance within `RECOVERY` of `healed`; returns
    /// when the last one did.
    pub async fn recovered(&self, healed: Instant) -> Instant {
        for (i, service) in self.instances.iter().enumerate() {
            if self.dead.contains(&i) {
                continue;
            }
            while self.sells(service).await.is_none() {
                assert!(
                    healed.elapsed() < RECOVERY,
                    "instance {i} sold nothing within {RECOVERY:?} of the fault's end"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "instance {i} sold again {:?} after the fault",
                healed.elapsed()
            );
        }
        Instant::now()
    }

    /// One purchase of a seat of the probe event on `service` (a hold, then its payment, each
    /// sent again on 503 or no answer as the sale's clients do): the reservation, if paid.
    pub async fn sells(&self, service: &Arc<Service>) -> Option<Uuid> {
        let buyer = Buyer {
            instances: vec![Arc::clone(service)],
            token: self.buyers[0].clone(),
            first: 0,
        };
        let mut told = Told::default();
        let (status, body) = buyer.hold(&mut told, self.probe).await;
        if status != 201 {
            return None;
        }
        let reservation = uuid(&body, "reservation_id");
        let (paid, _) = buyer.pay(&mut told, reservation).await;
        (paid == 201).then_some(reservation)
    }

    /// The checks that end every scenario, in SQL on the database and on what the clients were
    /// told: no acknowledged purchase lost, no oversell, every capture recorded or refunded,
    /// no hold left past its expiry, no 5xx but the excused ones, and the sales balance.
    pub async fn assert_all(&self, told: &Told, excused: &Excused) {
        let unexcused: Vec<_> = told
            .server_errors
            .iter()
            .filter(|a| {
                a.status != 503
                    || !excused.paths.contains(&a.path)
                    || a.answered < excused.from
                    || a.sent > excused.until
            })
            .collect();
        assert!(
            unexcused.is_empty(),
            "5xx not excused by the fault: {unexcused:?}"
        );
        // Holds always end: every hold is over within the TTL (6 s) and the sweep after the
        // sale, so one still pending after `SETTLE` is a hold left past its expiry.
        until_none("holds left past their expiry", || {
            rows(
                &self.pool,
                "SELECT reservation_id, expires_at, now() - expires_at AS overdue
                   FROM reservation_views WHERE status = 'pending'",
            )
        })
        .await;
        // A capture whose append failed is reconciled within the interval (1 s) and the grace
        // (`REQUEST_TIMEOUT_SECONDS` + 2 s).
        until_none("captures neither recorded nor refunded", || {
            unreconciled_captures(&self.pool)
        })
        .await;
        assert_sales_balance_in_sql(&self.pool).await;
        let lost = rows(
            &self.pool,
            &format!(
                "SELECT h FROM unnest(ARRAY[{}]::uuid[]) AS t(h)
                  WHERE NOT EXISTS (SELECT 1 FROM events WHERE stream_id = 'reservation-' || h)",
                quoted(told.holds.iter())
            ),
        )
        .await;
        assert_eq!(
            lost,
            Vec::<String>::new(),
            "acknowledged holds not in the store"
        );
        let (reservations, payments): (Vec<_>, Vec<_>) = told.purchases.iter().copied().unzip();
        let lost = rows(
            &self.pool,
            &format!(
                "SELECT a.r, a.p, v.status, v.payment_id
                   FROM unnest(ARRAY[{}]::uuid[], ARRAY[{}]::uuid[]) a(r, p)
                   LEFT JOIN reservation_views v ON v.reservation_id = a.r
                  WHERE v.status IS DISTINCT FROM 'confirmed' OR v.payment_id IS DISTINCT FROM a.p",
                quoted(reservations.iter()),
                quoted(payments.iter())
            ),
        )
        .await;
        assert_eq!(lost, Vec::<String>::new(), "acknowledged purchases lost");
        let oversold = rows(
            &self.pool,
            "SELECT s.event_id, s.capacity, s.sold, s.held, l.sold FROM event_sections s
               LEFT JOIN (SELECT sale_id, COUNT(*) AS sold FROM events
                           WHERE event_type = 'inventory.held_seats_sold' GROUP BY sale_id) l
                      ON l.sale_id = s.event_id
              WHERE s.sold + s.held > s.capacity OR COALESCE(l.sold, 0) > s.capacity",
        )
        .await;
        assert_eq!(oversold, Vec::<String>::new(), "oversold");
        let sold: i64 = sqlx::query_scalar("SELECT sold FROM event_sections WHERE event_id = $1")
            .bind(self.event)
            .fetch_one(&self.pool)
            .await
            .expect("the sale's section");
        let mut excuses: Vec<_> = told
            .server_errors
            .iter()
            .map(|a| format!("{} {}", a.path, a.body["detail"]))
            .collect();
        excuses.sort();
        excuses.dedup();
        eprintln!(
            "sale: {} holds and {} purchases acknowledged, {sold} sold of {SEATS}, {} 5xx \
             (excused: {excuses:?}), {} unanswered and sent again, {} attempts gave up",
            told.holds.len(),
            told.purchases.len(),
            told.server_errors.len(),
            told.unanswered,
            told.gave_up
        );
        // A purchase whose answer was lost may be sold too (reconciled), never the reverse.
        let sold = usize::try_from(sold).expect("sold");
        assert!(!told.purchases.is_empty(), "nothing was bought");
        assert!(
            sold >= told.purchases.len(),
            "fewer seats sold than purchases acknowledged"
        );
    }
}

/// Polls `wrong` (a query listing what is wrong) until it lists nothing; after `SETTLE` fails
/// with what it still lists.
async fn until_none<F, Fut>(what: &str, wrong: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let started = Instant::now();
    loop {
        let left = wrong().await;
        if left.is_empty() {
            return;
        }
        assert!(started.elapsed() < SETTLE, "{what}: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `'a'::uuid, 'b'::uuid, ...` for an SQL array literal.
fn quoted<'a>(ids: impl Iterator<Item = &'a Uuid>) -> String {
    ids.map(|id| format!("'{id}'::uuid"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sale's purchase attempts, running.
pub struct Sale {
    attempts: JoinSet<Told>,
    acknowledged: Arc<AtomicUsize>,
}

impl Sale {
    /// Waits for every attempt to end and gathers what the clients were told.
    pub async fn finish(mut self) -> Told {
        let mut all = Told::default();
        while let Some(done) = self.attempts.join_next().await {
            let told = done.expect("a purchase attempt panicked");
            all.holds.extend(told.holds);
            all.purchases.extend(told.purchases);
            all.server_errors.extend(told.server_errors);
            all.unanswered += told.unanswered;
            all.gave_up += told.gave_up;
        }
        all
    }
}

/// One customer's client, starting at instance `first` and moving on when one fails it.
struct Buyer {
    instances: Vec<Arc<Service>>,
    token: String,
    first: usize,
}

impl Buyer {
    /// Holds a seat and (if `pays`) pays for it, noting what it was told.
    async fn buy(&self, event: Uuid, pays: bool, acknowledged: &AtomicUsize) -> Told {
        let mut told = Told::default();
        self.look(&mut told, event).await;
        let (status, body) = self.hold(&mut told, event).await;
        if status != 201 {
            assert!(
                matches!(status, 409 | 503 | 599),
                "a reservation answered {status}: {body}"
            );
            return told;
        }
        acknowledged.fetch_add(1, Ordering::SeqCst);
        if pays {
            let reservation = uuid(&body, "reservation_id");
            let (status, body) = self.pay(&mut told, reservation).await;
            // 409: the hold ended before the capture (refunded in the same commit).
            assert!(
                matches!(status, 201 | 409 | 503 | 599),
                "a payment answered {status}: {body}"
            );
        }
        told
    }

    /// Reads the sale's availability first, as a buyer's page does (a cached read).
    async fn look(&self, told: &mut Told, event: Uuid) {
        let at = self.first % self.instances.len();
        let sent = Instant::now();
        let path = format!("/api/events/{event}/availability");
        let (status, body) = self.instances[at].get(&path, None).await;
        if status.as_u16() != 599 {
            told.note(at, AVAILABILITY, status.as_u16(), sent, &body);
        }
    }

    async fn hold(&self, told: &mut Told, event: Uuid) -> (u16, Value) {
        let body = json!({"event_id": event, "section": "floor", "quantity": 1});
        let (status, body) = self.send(told, "/api/reservations", body).await;
        if status == 201 {
            told.holds.push(uuid(&body, "reservation_id"));
        }
        (status, body)
    }

    async fn pay(&self, told: &mut Told, reservation: Uuid) -> (u16, Value) {
        let body = json!({"reservation_id": reservation,
                          "payment_method": {"type": "card", "token": "tok_visa"}});
        let (status, body) = self.send(told, "/api/payments", body).await;
        if matches!(status, 200 | 201) {
            told.purchases
                .push((reservation, uuid(&body, "payment_id")));
        }
        (status, body)
    }

    /// POSTs with one `Idempotency-Key`, sent again (to the next instance) on 503 or no
    /// answer, up to `SENDS` times; returns the last answer (599: none).
    async fn send(&self, told: &mut Told, path: &'static str, body: Value) -> (u16, Value) {
        let key = Uuid::new_v4().to_string();
        let mut last = (599, Value::Null);
        for attempt in 0..SENDS {
            let at = (self.first + attempt) % self.instances.len();
            let service = &self.instances[at];
            let sent = Instant::now();
            let response = service
                .http
                .post(format!("{}{path}", service.base))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", &key)
                .timeout(CLIENT_TIMEOUT)
                .json(&body)
                .send()
                .await;
            last = match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (status, response.json().await.unwrap_or(Value::Null))
                }
                Err(_) => (599, Value::Null),
            };
            if last.0 == 599 {
                told.unanswered += 1;
            } else {
                told.note(at, path, last.0, sent, &last.1);
            }
            if last.0 != 503 && last.0 != 599 {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        told.gave_up += 1;
        last
    }
}
