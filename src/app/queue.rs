//! The virtual waiting room (API.md, "Fair on-sales"): organizers set an event's queue,
//! customers join it, watch their position and, once admitted, get a signed pass that
//! `reserve` asks for while the queue is enabled (`check_queue_pass`: the key and a cached
//! copy of the settings, no database round trip). Admission is advanced by whichever
//! instance asks (`WaitingRoom::advance`: at most once a second per queue and instance) and
//! by the `run_admission` ticker, through the store's lock, so the rate holds across
//! instances. It never decides the admission rule (the queue module does).

#[cfg(test)]
mod bench;
mod room;

pub use room::{run_admission, WaitingRoom};

use super::{policy, App, AppError, FieldError};
use crate::auth::Principal;
use crate::cache::CacheName;
use crate::domain::concert::in_calendar;
use crate::domain::EventId;
use crate::projections::EventView;
use crate::queue::pass::Claims;
use crate::queue::{QueueError, QueueSettings, Ticket, ARRIVAL_BASE};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A pass lasts this long unless the organizer says otherwise.
pub const DEFAULT_PASS_TTL_SECONDS: u32 = 600;

/// What an organizer sets.
#[derive(Debug, Clone)]
pub struct QueueSettingsInput {
    pub enabled: bool,
    pub admit_per_minute: u32,
    pub pass_ttl_seconds: Option<u32>,
    pub shuffle_until: Option<DateTime<Utc>>,
}

/// A queue's settings, as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueSettingsView {
    pub event_id: Uuid,
    pub enabled: bool,
    pub admit_per_minute: u32,
    pub pass_ttl_seconds: u32,
    pub shuffle_until: Option<DateTime<Utc>>,
}

impl From<QueueSettings> for QueueSettingsView {
    fn from(s: QueueSettings) -> Self {
        QueueSettingsView {
            event_id: s.event_id,
            enabled: s.enabled,
            admit_per_minute: s.admit_per_minute,
            pass_ttl_seconds: s.pass_ttl_seconds,
            shuffle_until: s.shuffle_until,
        }
    }
}

/// A queue as anyone sees it. An event without a queue shows `enabled: false` and zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueSummary {
    pub enabled: bool,
    pub waiting: u64,
    pub admitted: u64,
    pub admit_per_minute: u32,
    /// How long someone joining now would wait, at the configured rate.
    pub estimated_wait_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Waiting,
    Admitted,
    /// Admitted, and the pass's lifetime is over.
    Expired,
}

/// A user's place in a queue; `pass` and `pass_expires_at` only while admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueTicketView {
    pub ticket_id: Uuid,
    pub status: TicketStatus,
    /// Those still waiting ahead, from 1; 0 once admitted.
    pub position: u64,
    pub estimated_wait_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_expires_at: Option<DateTime<Utc>>,
}

impl From<QueueError> for AppError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NoQueue => no_queue(),
            QueueError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "queue store unavailable");
                AppError::Unavailable {
                    detail: "the waiting room is unavailable".into(),
                    retry_after: 1,
                }
            }
            QueueError::Corrupt(_) => AppError::Internal(anyhow::Error::new(e)),
        }
    }
}

fn no_queue() -> AppError {
    AppError::Conflict {
        kind: "no-queue",
        detail: "this event has no enabled waiting room".into(),
    }
}

fn invalid_pass(why: &str) -> AppError {
    AppError::Denied {
        kind: super::error::QUEUE_PASS_INVALID,
        detail: format!("the Queue-Pass is not valid: {why}"),
    }
}

/// Seconds to admit `ahead` people at `rate` per minute, plus the time until admission starts.
fn wait_seconds(ahead: u64, settings: &QueueSettings, now: DateTime<Utc>) -> u64 {
    let rate = u64::from(settings.admit_per_minute.max(1));
    let until_start = settings
        .shuffle_until
        .map_or(0, |s| u64::try_from((s - now).num_seconds()).unwrap_or(0));
    ahead.saturating_mul(60).div_ceil(rate) + until_start
}

fn validate(input: &QueueSettingsInput) -> Result<u32, AppError> {
    let ttl = input.pass_ttl_seconds.unwrap_or(DEFAULT_PASS_TTL_SECONDS);
    let mut errors = Vec::new();
    if !(1..=1_000_000).contains(&input.admit_per_minute) {
        errors.push(FieldError::new(
            "admit_per_minute",
            "must be within 1..=1000000",
        ));
    }
    if !(60..=3600).contains(&ttl) {
        errors.push(FieldError::new(
            "pass_ttl_seconds",
            "must be within 60..=3600",
        ));
    }
    if input.shuffle_until.is_some_and(|at| !in_calendar(&at)) {
        errors.push(FieldError::new(
            "shuffle_until",
            "must be within the years 0001 to 9999",
        ));
    }
    match errors.is_empty() {
        true => Ok(ttl),
        false => Err(AppError::Validation(errors)),
    }
}

impl App {
    /// The event, if `viewer` may see it (drafts: their organizer and admins), from the cache.
    async fn queue_event(
        &self,
        viewer: Option<&Principal>,
        event_id: Uuid,
    ) -> Result<EventView, AppError> {
        // Visibility only (drafts): no need to wait for this instance's reserves, which would
        // put the projector's lag on the waiting room's polls during an on-sale.
        let view = self
            .reads
            .applied_cache()
            .event(EventId(event_id), CacheName::Events)
            .await?
            .ok_or(AppError::NotFound("event"))?;
        policy::see_event(viewer, view)
    }

    /// Sets an event's queue (its organizer or an admin).
    pub async fn put_queue(
        &self,
        caller: &Principal,
        event_id: Uuid,
        input: QueueSettingsInput,
    ) -> Result<QueueSettingsView, AppError> {
        let view = self.queue_event(Some(caller), event_id).await?;
        policy::manage_event(caller, view)?;
        let settings = QueueSettings {
            event_id,
            enabled: input.enabled,
            admit_per_minute: input.admit_per_minute,
            pass_ttl_seconds: validate(&input)?,
            shuffle_until: input.shuffle_until,
        };
        self.queue.put(&settings, self.clock.now()).await?;
        Ok(settings.into())
    }

    /// The queue as anyone may see it.
    pub async fn queue_summary(
        &self,
        viewer: Option<&Principal>,
        event_id: Uuid,
    ) -> Result<QueueSummary, AppError> {
        self.queue_event(viewer, event_id).await?;
        let now = self.clock.now();
        let Some(settings) = self.queue.cached(event_id).await? else {
            return Ok(QueueSummary {
                enabled: false,
                waiting: 0,
                admitted: 0,
                admit_per_minute: 0,
                estimated_wait_seconds: 0,
            });
        };
        self.queue.advance(event_id, now).await?;
        let counts = self.queue.store.counts(event_id).await?;
        Ok(QueueSummary {
            enabled: settings.enabled,
            waiting: counts.waiting,
            admitted: counts.admitted,
            admit_per_minute: settings.admit_per_minute,
            estimated_wait_seconds: wait_seconds(counts.waiting, &settings, now),
        })
    }

    /// Puts the caller in line; `true` the first time. Joins before `shuffle_until` draw a
    /// random place among each other; later ones queue in arrival order behind them.
    pub async fn join_queue(
        &self,
        caller: &Principal,
        event_id: Uuid,
    ) -> Result<(QueueTicketView, bool), AppError> {
        self.queue_event(Some(caller), event_id).await?;
        let settings = self
            .queue
            .cached(event_id)
            .await?
            .filter(|s| s.enabled)
            .ok_or_else(no_queue)?;
        let now = self.clock.now();
        let draw = settings
            .shuffle_until
            .filter(|until| now < *until)
            .map(|_| rand::thread_rng().gen_range(0..ARRIVAL_BASE));
        let (ticket, created) = self
            .queue
            .store
            .join(event_id, caller.user_id.0, draw, now)
            .await?;
        if created && draw.is_some() {
            self.queue.forget_line(event_id).await;
        }
        let ticket = self.admitted_meanwhile(ticket, now).await?;
        Ok((self.ticket_view(&settings, ticket, now).await?, created))
    }

    /// The caller's place in line, and their pass once admitted.
    pub async fn my_queue_ticket(
        &self,
        caller: &Principal,
        event_id: Uuid,
    ) -> Result<QueueTicketView, AppError> {
        self.queue_event(Some(caller), event_id).await?;
        let settings = self
            .queue
            .cached(event_id)
            .await?
            .ok_or(AppError::NotFound("queue ticket"))?;
        let ticket = self
            .queue
            .store
            .ticket(event_id, caller.user_id.0)
            .await?
            .ok_or(AppError::NotFound("queue ticket"))?;
        let now = self.clock.now();
        let ticket = self.admitted_meanwhile(ticket, now).await?;
        self.ticket_view(&settings, ticket, now).await
    }

    /// The ticket after letting admission advance (it may have been admitted just now).
    async fn admitted_meanwhile(
        &self,
        ticket: Ticket,
        now: DateTime<Utc>,
    ) -> Result<Ticket, AppError> {
        if ticket.admitted_at.is_some() || !self.queue.advance(ticket.event_id, now).await? {
            return Ok(ticket);
        }
        Ok(self
            .queue
            .store
            .ticket(ticket.event_id, ticket.user_id)
            .await?
            .unwrap_or(ticket))
    }

    async fn ticket_view(
        &self,
        settings: &QueueSettings,
        ticket: Ticket,
        now: DateTime<Utc>,
    ) -> Result<QueueTicketView, AppError> {
        let mut view = QueueTicketView {
            ticket_id: ticket.id,
            status: TicketStatus::Waiting,
            position: 0,
            estimated_wait_seconds: 0,
            pass: None,
            pass_expires_at: None,
        };
        let Some(admitted_at) = ticket.admitted_at else {
            view.position = self.queue.position(&ticket).await?;
            view.estimated_wait_seconds = wait_seconds(view.position, settings, now);
            return Ok(view);
        };
        let expires_at =
            (admitted_at.timestamp()).saturating_add(i64::from(settings.pass_ttl_seconds));
        if now.timestamp() >= expires_at {
            view.status = TicketStatus::Expired;
            return Ok(view);
        }
        view.status = TicketStatus::Admitted;
        view.pass = Some(self.queue.key.issue(&Claims {
            user_id: ticket.user_id,
            event_id: ticket.event_id,
            expires_at,
        }));
        view.pass_expires_at = DateTime::from_timestamp(expires_at, 0);
        Ok(view)
    }

    /// While the event's queue is enabled, a reservation needs the caller's unexpired pass
    /// for this event. Costs no database round trip within `room::SETTINGS_FRESH` of the
    /// last look at the settings.
    pub(crate) async fn check_queue_pass(
        &self,
        caller: &Principal,
        event_id: Uuid,
        pass: Option<&str>,
    ) -> Result<(), AppError> {
        if !self.queue.cached_enabled(event_id).await? {
            return Ok(());
        }
        let pass = pass.ok_or_else(|| AppError::Denied {
            kind: super::error::QUEUE_PASS_REQUIRED,
            detail: "this event's sale runs through a waiting room: join it and send the \
                     pass you get when admitted in the Queue-Pass header"
                .into(),
        })?;
        let claims = self
            .queue
            .key
            .verify(pass)
            .map_err(|_| invalid_pass("forged"))?;
        if claims.user_id != caller.user_id.0 {
            return Err(invalid_pass("issued to another user"));
        }
        if claims.event_id != event_id {
            return Err(invalid_pass("issued for another event"));
        }
        if self.clock.now().timestamp() >= claims.expires_at {
            return Err(invalid_pass("expired"));
        }
        Ok(())
    }
}
