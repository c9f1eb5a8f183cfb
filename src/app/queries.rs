//! The reads: events (drafts only for their owner and admins), a customer's reservations and
//! payments (theirs only, or any for admins), sales analytics for an event's organizer and
//! purchase history. Who may see what is decided in `policy`; the views come from the read
//! models (hot event reads through the cache) and are never used to decide a command.

use super::retries::Dependency;
use super::{policy, App, AppError};
use crate::auth::Principal;
use crate::cache::CacheName;
use crate::domain::{EventId, PaymentId, ReservationId};
use crate::paging::{Page, PageRequest};
use crate::projections::insights::RecentSales;
use crate::projections::{
    EventQuery, EventView, HistoryEntry, PaymentView, ReservationView, SalesView,
};
use uuid::Uuid;

/// Rejects pages outside 1..=`MAX_PAGE` and page sizes outside 1..=100, naming each bad
/// parameter.
pub fn valid_page(page: PageRequest) -> Result<PageRequest, AppError> {
    let mut errors = Vec::new();
    if !(1..=crate::paging::MAX_PAGE).contains(&page.page) {
        errors.push(super::FieldError::new(
            "page",
            "must be between 1 and 2147483647",
        ));
    }
    if !(1..=crate::paging::MAX_PAGE_SIZE).contains(&page.page_size) {
        errors.push(super::FieldError::new(
            "page_size",
            "must be between 1 and 100",
        ));
    }
    if errors.is_empty() {
        Ok(page)
    } else {
        Err(AppError::Validation(errors))
    }
}

impl App {
    /// An event as `viewer` may see it, through the cache (`name` labels the cache metric).
    pub async fn visible_event(
        &self,
        viewer: Option<&Principal>,
        id: Uuid,
        name: CacheName,
    ) -> Result<EventView, AppError> {
        // Anonymous readers too: a buyer who just reserved may read availability without
        // a token.
        let view = self
            .reads
            .fresh_cache()
            .await
            .event(EventId(id), name)
            .await?
            .ok_or(AppError::NotFound("event"))?;
        policy::see_event(viewer, view)
    }

    /// The events `viewer` may see, filtered by status and owner.
    pub async fn list_events(
        &self,
        viewer: Option<&Principal>,
        mut query: EventQuery,
        page: PageRequest,
    ) -> Result<Page<EventView>, AppError> {
        query.viewer = viewer.map(|p| p.user_id);
        query.viewer_is_admin = viewer.is_some_and(|p| p.is_admin());
        Ok(self
            .reads
            .fresh()
            .await
            .events(&query, valid_page(page)?)
            .await?)
    }

    /// The caller's reservation (any, for an admin).
    pub async fn own_reservation(
        &self,
        caller: &Principal,
        id: Uuid,
    ) -> Result<ReservationView, AppError> {
        let view = self.reservation_by_id(ReservationId(id)).await?;
        policy::own_record(caller, view.user_id, "reservation")?;
        Ok(view)
    }

    /// The caller's reservations, newest first (everyone's, for an admin).
    pub async fn list_reservations(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> Result<Page<ReservationView>, AppError> {
        let user = (!caller.is_admin()).then_some(caller.user_id);
        Ok(self
            .reads
            .fresh()
            .await
            .reservations(user, valid_page(page)?)
            .await?)
    }

    /// The caller's payment (any, for an admin).
    pub async fn own_payment(&self, caller: &Principal, id: Uuid) -> Result<PaymentView, AppError> {
        let view = self.payment_view(PaymentId(id)).await?;
        policy::own_record(caller, view.user_id, "payment")?;
        Ok(view)
    }

    /// A user's payments: that user or an admin.
    pub async fn payments_of(
        &self,
        caller: &Principal,
        user: Uuid,
        page: PageRequest,
    ) -> Result<Page<PaymentView>, AppError> {
        policy::user_collection(caller, user)?;
        Ok(self
            .reads
            .fresh()
            .await
            .payments_of(user.into(), valid_page(page)?)
            .await?)
    }

    /// An event's sales so far, for its organizer or an admin. Eventually consistent: the
    /// insights follow the bus.
    pub async fn event_sales(&self, caller: &Principal, id: Uuid) -> Result<SalesView, AppError> {
        let id = EventId(id);
        let event = policy::manage_event(caller, self.event_view(id).await?)?;
        // Before the consumer has seen the event, nothing has been sold that it could show.
        Ok(self.insights.sales(id).await?.unwrap_or_else(|| SalesView {
            event_id: id.0,
            tickets_sold: 0,
            revenue_cents: 0,
            currency: event.currency,
            by_section: Vec::new(),
        }))
    }

    /// A customer's purchases, newest first: that customer or an admin.
    pub async fn purchase_history(
        &self,
        caller: &Principal,
        user: Uuid,
        page: PageRequest,
    ) -> Result<Page<HistoryEntry>, AppError> {
        policy::user_collection(caller, user)?;
        Ok(self
            .insights
            .history(user.into(), valid_page(page)?)
            .await?)
    }

    /// Tickets sold and revenue since `since`, and the holds pending now, for operators.
    pub async fn sales_overview(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(RecentSales, usize), AppError> {
        let reads = self.reads.fresh().await;
        let (recent, holds) = tokio::join!(self.insights.sales_since(since), reads.pending_holds());
        Ok((recent?, holds?.len()))
    }

    pub(crate) async fn event_view(&self, id: EventId) -> Result<EventView, AppError> {
        self.reads
            .fresh()
            .await
            .event(id)
            .await?
            .ok_or(AppError::NotFound("event"))
    }

    pub(crate) async fn reservation_view(
        &self,
        id: ReservationId,
    ) -> Result<ReservationView, AppError> {
        self.reads
            .fresh()
            .await
            .reservation(id)
            .await?
            .ok_or(AppError::NotFound("reservation"))
    }

    /// A reservation by id, for its reader or its payment. One the read models do not show may
    /// exist (a reserve answers from its commit, before they apply it; `recent` knows those
    /// placed here, not those placed on another instance): on a miss, wait until they applied
    /// the log's head and look again, and if they still lag answer 503 (try again), not a 404
    /// that may be false.
    pub(crate) async fn reservation_by_id(
        &self,
        id: ReservationId,
    ) -> Result<ReservationView, AppError> {
        // Placed here and not applied by the read models yet: as its writer committed it.
        if let Some(view) = self.reads.unseen(id) {
            return Ok(view);
        }
        self.retries.first_attempt(Dependency::ReadModels);
        if let Some(view) = self.reads.fresh().await.reservation(id).await? {
            return Ok(view);
        }
        let lagging = AppError::Unavailable {
            detail: "the read models are behind the event log; try again".into(),
            retry_after: 1,
        };
        let caught_up = self.caught_up_with_log().await;
        if !caught_up
            && !self
                .retries
                .may_retry(Dependency::ReadModels, &self.metrics)
        {
            return Err(lagging);
        }
        // Waited for the log's head above (or gave up on it): no second wait.
        match self.reads.applied().reservation(id).await? {
            Some(view) => Ok(view),
            None if caught_up => Err(AppError::NotFound("reservation")),
            None => Err(lagging),
        }
    }

    pub(crate) async fn payment_view(&self, id: PaymentId) -> Result<PaymentView, AppError> {
        self.reads
            .fresh()
            .await
            .payment(id)
            .await?
            .ok_or(AppError::NotFound("payment"))
    }
}
