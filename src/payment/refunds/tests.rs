//! When refund settlement writes its checkpoint, and what a restart asks the gateway again.

use super::*;
use crate::clock::SystemClock;
use crate::payment::simulated::{Ledger, SimulatedGateway};
use crate::runtime::checkpoints::MemoryCheckpoints;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Memory checkpoints that count their writes.
#[derive(Default)]
struct Counted {
    inner: MemoryCheckpoints,
    saves: AtomicUsize,
}

#[async_trait]
impl Checkpoints for Counted {
    async fn load(&self, name: &str) -> anyhow::Result<u64> {
        self.inner.load(name).await
    }

    async fn save(&self, name: &str, position: u64) -> anyhow::Result<()> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.inner.save(name, position).await
    }
}

fn gateway() -> Arc<SimulatedGateway> {
    Arc::new(SimulatedGateway::new(
        Duration::ZERO,
        0.0,
        Arc::new(SystemClock),
        Ledger::memory(),
    ))
}

/// Batch by batch through a history, the checkpoint is written after the batches that hold a
/// refund and no others; a restart resumes at the last refund and asks the gateway nothing.
#[tokio::test]
async fn the_checkpoint_is_written_after_refunds_only_and_a_restart_repeats_none() {
    let log = crate::projections::contract::history();
    let refunds: Vec<u64> = log
        .iter()
        .filter(|e| e.event_type == "payment.refunded")
        .map(|e| e.position)
        .collect();
    assert!(!refunds.is_empty(), "the history refunds something");
    let checkpoints = Arc::new(Counted::default());
    let gateway = gateway();
    let settlement = RefundSettlement::new(gateway.clone(), checkpoints.clone());
    assert_eq!(settlement.checkpoint().await.unwrap(), 0);
    for event in &log {
        settlement
            .handle(std::slice::from_ref(event))
            .await
            .unwrap();
    }
    assert_eq!(checkpoints.saves.load(Ordering::SeqCst), refunds.len());
    assert_eq!(gateway.calls(), refunds.len() as u64);
    let last_refund = refunds.last().copied().unwrap();
    assert_eq!(checkpoints.load(NAME).await.unwrap(), last_refund);

    let restarted = RefundSettlement::new(gateway.clone(), checkpoints.clone());
    let from = restarted.checkpoint().await.unwrap();
    let rest: Vec<_> = log.iter().filter(|e| e.position > from).cloned().collect();
    assert!(
        !rest.is_empty(),
        "events after the last refund are replayed"
    );
    restarted.handle(&rest).await.unwrap();
    assert_eq!(
        gateway.calls(),
        refunds.len() as u64,
        "a refund was asked again"
    );
}

/// With nothing to settle, the checkpoint still follows: it never trails by
/// `SAVE_EVERY_EVENTS` events, yet is written far less than once per batch; and once
/// `SAVE_EVERY` has passed, the next batch writes it.
#[tokio::test]
async fn with_nothing_to_settle_the_checkpoint_moves_every_n_events_or_after_a_while() {
    let log: Vec<_> = crate::projections::contract::history()
        .into_iter()
        .filter(|e| e.event_type != "payment.refunded")
        .collect();
    let checkpoints = Arc::new(Counted::default());
    let mut settlement = RefundSettlement::new(gateway(), checkpoints.clone());
    settlement.save_every = (5, Duration::from_secs(3600));
    for event in &log {
        settlement
            .handle(std::slice::from_ref(event))
            .await
            .unwrap();
        let saved = checkpoints.load(NAME).await.unwrap();
        assert!(
            event.position - saved < 5,
            "{saved} trails {}",
            event.position
        );
    }
    let saves = checkpoints.saves.load(Ordering::SeqCst);
    assert!(
        saves > 0 && saves <= log.len() / 4,
        "{saves} saves for {} batches",
        log.len()
    );

    let checkpoints = Arc::new(Counted::default());
    let mut settlement = RefundSettlement::new(gateway(), checkpoints.clone());
    settlement.save_every = (u64::MAX, Duration::ZERO);
    settlement.handle(&log[..1]).await.unwrap();
    assert_eq!(checkpoints.load(NAME).await.unwrap(), log[0].position);
}
