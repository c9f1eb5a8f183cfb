//! A warm start: before an instance takes traffic, the writers of the sales on sale load their
//! sales, so that the first buyers a new instance serves wait for one turn, not for a long
//! sale's load (1.4-1.8 s for 215 000 events on an idle machine, 3-4 s while other instances
//! sell: BENCHMARKS.md, session 33). Start-up waits for the loads for a bounded time; what is
//! still loading then goes on in the background, and a command for such a sale loads it as
//! before. Nothing here is needed for correctness: a writer that loaded its sale catches up
//! with what other instances appended since before deciding (in pages first when its first
//! command comes a while after the load, then in a locked turn).

use crate::domain::concert::EventStatus;
use crate::domain::EventId;
use crate::paging::{PageRequest, MAX_PAGE_SIZE};
use crate::projections::{EventQuery, ReadError, ReadModel};
use crate::runtime::Sales;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long start-up waits for the loads before the instance takes traffic anyway.
pub const WITHIN: Duration = Duration::from_secs(30);

/// Sales loaded at the same time: a load is mostly this process's CPU (decoding and folding
/// each event), and the machines this runs on have a few cores.
const AT_ONCE: usize = 2;

/// Loads the sales on sale into their writers, waiting at most `within`; the loads not done by
/// then go on in the background. A failure only costs the warm start; the loads log what they
/// did when they end, before or after start-up went on.
pub async fn warm_start(reads: &dyn ReadModel, sales: &Sales, within: Duration) {
    let on_sale = match sales_on_sale(reads).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the sales on sale: no warm start");
            return;
        }
    };
    let count = on_sale.len();
    let loading = tokio::spawn(load(sales.clone(), on_sale));
    match tokio::time::timeout(within, loading).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the warm start stopped"),
        Err(_) => tracing::warn!(
            on_sale = count,
            within_s = within.as_secs(),
            "sales on sale still loading: taking traffic meanwhile"
        ),
    }
}

/// Every sale the read models show on sale.
async fn sales_on_sale(reads: &dyn ReadModel) -> Result<Vec<EventId>, ReadError> {
    let query = EventQuery {
        status: Some(EventStatus::OnSale),
        viewer_is_admin: true,
        ..EventQuery::default()
    };
    let mut ids = Vec::new();
    for page in 1.. {
        let request = PageRequest {
            page,
            page_size: MAX_PAGE_SIZE,
        };
        let listed = reads.events(&query, request).await?;
        ids.extend(listed.items.iter().map(|view| EventId(view.id)));
        if u64::from(page) >= listed.total_pages {
            break;
        }
    }
    Ok(ids)
}

/// Loads each sale's writer, `AT_ONCE` at a time, and logs how many loaded and how long
/// that took.
async fn load(sales: Sales, ids: Vec<EventId>) {
    let (started, on_sale) = (Instant::now(), ids.len());
    let turns = Arc::new(Semaphore::new(AT_ONCE));
    let mut loads = JoinSet::new();
    for sale_id in ids {
        let (sales, turns) = (sales.clone(), Arc::clone(&turns));
        loads.spawn(async move {
            let _turn = turns.acquire_owned().await;
            (sale_id, sales.warm(sale_id).await)
        });
    }
    let (mut loaded, mut failed) = (0, 0);
    while let Some(done) = loads.join_next().await {
        match done {
            Ok((_, Ok(()))) => loaded += 1,
            Ok((sale_id, Err(e))) => {
                tracing::warn!(%sale_id, error = %e, "a sale on sale could not be loaded");
                failed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a sale's load stopped");
                failed += 1;
            }
        }
    }
    tracing::info!(
        on_sale,
        loaded,
        failed,
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "sales on sale loaded"
    );
}
