//! Turns the samples into the summary: rates, latency percentiles, status counts, the
//! availability figures and the invariant verdict; prints it as text or as one JSON object.
//!
//! Only the summary goes to stdout; progress and logs go to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::api::{Availability, SectionAvailability, SECTION};
use crate::cli::Mode;
use crate::measure::{Kind, Measured, Outcome, Sample};
use crate::verify::{self, Ledger, Plan, Seen};

/// Status-count key for requests that got no answer.
const TRANSPORT_KEY: &str = "transport_error";

/// The parameters of the run, echoed in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub run_id: String,
    pub mode: Mode,
    /// The service sold through (service mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The database sold through, password hidden (naive mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    pub event_id: Uuid,
    pub seats: u32,
    pub buyers: u32,
    pub quantity: u32,
    pub concurrency: u32,
    pub pay: bool,
}

/// Latency percentiles in milliseconds (nearest rank), over answered requests.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Figures for one kind of request (reserve or pay).
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub requests: u64,
    pub answered: u64,
    /// Reserve: 201. Pay: 201 with status `captured`.
    pub succeeded: u64,
    pub malformed: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub answered_per_s: f64,
    pub succeeded_per_s: f64,
    pub latency_ms: Option<Latency>,
    /// The same over the 409 answers only (sold out: what most buyers of an overload see).
    pub conflict_latency_ms: Option<Latency>,
    pub status_counts: BTreeMap<String, u64>,
}

/// The invariant verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub violations: Vec<String>,
}

/// Everything the run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: RunConfig,
    pub wall_time_s: f64,
    pub reserve: KindReport,
    pub pay: KindReport,
    pub first_transport_error: Option<String>,
    /// Seats expected sold (held with `--no-pay`) at the end.
    pub expected_seats: u64,
    pub availability: Option<Availability>,
    pub availability_error: Option<String>,
    /// The naive baseline's tables after the run (naive mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
    pub invariants: Verdict,
    /// Invariants held and no request failed in transport: the exit code is 0.
    pub passed: bool,
}

impl KindReport {
    /// Aggregates the samples of one kind over a phase that lasted `wall`.
    pub fn from_samples(samples: &[Sample], kind: Kind, wall: Duration) -> Self {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
        let count = |keep: fn(&Sample) -> bool| to_u64(mine.iter().filter(|s| keep(s)).count());
        let answered = count(|s| matches!(s.outcome, Outcome::Status(_)));
        let succeeded = count(|s| s.succeeded);
        let latencies = mine
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Status(_)))
            .map(|s| s.latency)
            .collect();
        Self {
            requests: to_u64(mine.len()),
            answered,
            succeeded,
            malformed: count(|s| s.malformed),
            server_errors: count(|s| matches!(s.outcome, Outcome::Status(code) if code >= 500)),
            transport_errors: count(|s| s.outcome == Outcome::Transport),
            answered_per_s: per_second(answered, wall),
            succeeded_per_s: per_second(succeeded, wall),
            latency_ms: Latency::from_durations(latencies),
            conflict_latency_ms: Latency::from_durations(
                mine.iter()
                    .filter(|s| s.outcome == Outcome::Status(409))
                    .map(|s| s.latency)
                    .collect(),
            ),
            status_counts: status_counts(&mine),
        }
    }
}

impl Latency {
    /// Sorts the durations and reads the percentiles; `None` when there are none.
    fn from_durations(mut durations: Vec<Duration>) -> Option<Self> {
        durations.sort_unstable();
        let max = *durations.last()?;
        Some(Self {
            count: to_u64(durations.len()),
            p50_ms: millis(percentile(&durations, 50)),
            p90_ms: millis(percentile(&durations, 90)),
            p99_ms: millis(percentile(&durations, 99)),
            max_ms: millis(max),
        })
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len()).div_ceil(100);
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

/// Counts by status code, with transport errors under [`TRANSPORT_KEY`].
fn status_counts(samples: &[&Sample]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for sample in samples {
        let key = match sample.outcome {
            Outcome::Status(code) => code.to_string(),
            Outcome::Transport => TRANSPORT_KEY.to_owned(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

impl Summary {
    /// Aggregates the measured phase and checks the invariants against `availability`.
    pub fn new(
        config: RunConfig,
        measured: Measured,
        availability: Result<Availability, String>,
    ) -> Self {
        let reserve = KindReport::from_samples(&measured.samples, Kind::Reserve, measured.wall);
        let pay = KindReport::from_samples(&measured.samples, Kind::Pay, measured.wall);
        let plan = Plan {
            seats: u64::from(config.seats),
            buyers: u64::from(config.buyers),
            quantity: u64::from(config.quantity),
            pay: config.pay,
        };
        let seen = Seen {
            reserved: reserve.succeeded,
            captured: pay.succeeded,
            server_errors: reserve.server_errors + pay.server_errors,
            malformed: reserve.malformed + pay.malformed,
        };
        let violations =
            verify::violations(plan, seen, availability.as_ref().map_err(String::as_str));
        let invariants = Verdict {
            ok: violations.is_empty(),
            violations,
        };
        let transport_errors = reserve.transport_errors + pay.transport_errors;
        let (availability, availability_error) = match availability {
            Ok(figures) => (Some(figures), None),
            Err(error) => (None, Some(error)),
        };
        Self {
            passed: invariants.ok && transport_errors == 0,
            config,
            wall_time_s: measured.wall.as_secs_f64(),
            reserve,
            pay,
            first_transport_error: measured.first_transport_error,
            expected_seats: plan.expected_seats(),
            availability,
            availability_error,
            ledger: None,
            invariants,
        }
    }

    /// Aggregates a naive-baseline run, whose purchase samples are `Reserve` samples (201
    /// sold, 409 sold out, transport = SQL error), and checks its invariants against `ledger`.
    pub fn naive(config: RunConfig, measured: Measured, ledger: Result<Ledger, String>) -> Self {
        let reserve = KindReport::from_samples(&measured.samples, Kind::Reserve, measured.wall);
        let pay = KindReport::from_samples(&measured.samples, Kind::Pay, measured.wall);
        let plan = Plan {
            seats: u64::from(config.seats),
            buyers: u64::from(config.buyers),
            quantity: u64::from(config.quantity),
            pay: true,
        };
        let seen = Seen {
            reserved: reserve.succeeded,
            ..Seen::default()
        };
        let sql_errors = reserve.transport_errors;
        let violations = verify::naive_violations(
            plan,
            seen,
            sql_errors,
            ledger.as_ref().map_err(String::as_str),
        );
        let invariants = Verdict {
            ok: violations.is_empty(),
            violations,
        };
        let (availability, availability_error, ledger) = match ledger {
            Ok(ledger) => (Some(ledger_availability(&ledger)), None, Some(ledger)),
            Err(error) => (None, Some(error), None),
        };
        Self {
            passed: invariants.ok && sql_errors == 0,
            config,
            wall_time_s: measured.wall.as_secs_f64(),
            reserve,
            pay,
            first_transport_error: measured.first_transport_error,
            expected_seats: plan.expected_seats(),
            availability,
            availability_error,
            ledger,
            invariants,
        }
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// The summary as text, one fact per line; the last line is the invariant verdict.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let naive = c.mode == Mode::Naive;
        let target = c
            .base_url
            .as_deref()
            .or(c.database_url.as_deref())
            .unwrap_or("?");
        line(format!(
            "run {} ({} mode): event {} at {target}",
            c.run_id,
            c.mode.as_str(),
            c.event_id,
        ));
        let pay = match (naive, c.pay) {
            (true, _) => "in the purchase transaction",
            (false, true) => "yes",
            (false, false) => "no",
        };
        line(format!(
            "sale: {} seats, {} buyers, quantity {}, concurrency {}, pay {pay}",
            c.seats, c.buyers, c.quantity, c.concurrency,
        ));
        line(format!("wall time: {:.3} s", self.wall_time_s));
        if naive {
            // Each naive attempt is a whole purchase: its success rate is purchases/s.
            line(kind_line("reserve", &self.reserve, "purchased"));
            line("pay: none (a naive purchase is one SQL transaction)".to_owned());
        } else {
            line(kind_line("reserve", &self.reserve, "succeeded"));
            if c.pay {
                line(kind_line("pay", &self.pay, "captured"));
            } else {
                line("pay: skipped (--no-pay)".to_owned());
            }
        }
        line(format!("latency reserve: {}", latency_text(&self.reserve)));
        if let Some(l) = &self.reserve.conflict_latency_ms {
            line(format!("latency reserve 409: {}", percentiles_text(l)));
        }
        line(format!("latency pay: {}", latency_text(&self.pay)));
        line(format!("status reserve: {}", counts_text(&self.reserve)));
        line(format!("status pay: {}", counts_text(&self.pay)));
        line(self.transport_text());
        for availability_line in self.availability_text() {
            line(availability_line);
        }
        if let Some(l) = &self.ledger {
            line(format!(
                "orders: {} orders, {} seats, {} cents",
                l.orders, l.ordered_seats, l.amount_cents
            ));
        }
        let settled = if c.pay || naive { "sold" } else { "held" };
        line(format!("expected {settled}: {}", self.expected_seats));
        line(self.verdict_text());
        out
    }

    fn transport_text(&self) -> String {
        let total = self.reserve.transport_errors + self.pay.transport_errors;
        match &self.first_transport_error {
            Some(first) => format!("transport errors: {total} (first: {first})"),
            None => format!("transport errors: {total}"),
        }
    }

    fn availability_text(&self) -> Vec<String> {
        let Some(figures) = &self.availability else {
            let error = self.availability_error.as_deref().unwrap_or("not fetched");
            return vec![format!("availability: unreadable ({error})")];
        };
        let mut lines: Vec<String> = figures
            .sections
            .iter()
            .map(|s| {
                format!(
                    "availability {}: capacity {}, available {}, held {}, sold {}",
                    s.name, s.capacity, s.available, s.held, s.sold
                )
            })
            .collect();
        lines.push(format!("total available: {}", figures.total_available));
        lines
    }

    fn verdict_text(&self) -> String {
        if self.invariants.ok {
            "invariants: OK".to_owned()
        } else {
            format!(
                "invariants: VIOLATED ({})",
                self.invariants.violations.join("; ")
            )
        }
    }
}

/// The naive tables shown as availability figures: sold is what the orders hold; there are
/// no holds. Negative or oversized figures (a broken sale) are clamped here and reported by
/// the verdict, which reads the ledger itself.
fn ledger_availability(ledger: &Ledger) -> Availability {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let available = count(ledger.available);
    Availability {
        sections: vec![SectionAvailability {
            name: SECTION.to_owned(),
            capacity: count(ledger.capacity),
            available,
            held: 0,
            sold: count(ledger.ordered_seats),
            price_cents: ledger.price_cents,
        }],
        total_available: available,
    }
}

/// `reserve: 2000 requests, 2000 answered (150.2/s), 1000 succeeded (75.1/s)`.
fn kind_line(name: &str, report: &KindReport, success_word: &str) -> String {
    format!(
        "{name}: {} requests, {} answered ({:.1}/s), {} {success_word} ({:.1}/s)",
        report.requests,
        report.answered,
        report.answered_per_s,
        report.succeeded,
        report.succeeded_per_s
    )
}

/// `p50 1.234 ms, p90 ..., p99 ..., max ... (n=2000)` or `no samples`.
fn latency_text(report: &KindReport) -> String {
    report
        .latency_ms
        .as_ref()
        .map_or_else(|| "no samples".to_owned(), percentiles_text)
}

fn percentiles_text(l: &Latency) -> String {
    format!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
    )
}

/// `201=1000 409=1000` or `none`.
fn counts_text(report: &KindReport) -> String {
    if report.status_counts.is_empty() {
        return "none".to_owned();
    }
    let mut out = String::new();
    for (status, count) in &report.status_counts {
        let separator = if out.is_empty() { "" } else { " " };
        // Writing to a String cannot fail.
        let _ = write!(out, "{separator}{status}={count}");
    }
    out
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Events per second over `wall`; 0 for an instant phase.
fn per_second(count: u64, wall: Duration) -> f64 {
    let seconds = wall.as_secs_f64();
    if seconds > 0.0 {
        // Counts stay far below 2^53, where f64 is exact.
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Lengths fit in u64 on every supported target.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
