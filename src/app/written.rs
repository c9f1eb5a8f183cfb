//! Read-your-writes without a wait on the write path: what an instance committed last, and
//! whether a read must wait for the read models to apply it. A command answers from what it
//! committed and raises the mark (`App::create`); a read first waits until the read models
//! applied it (`App::fresh`). When such a wait runs out, reads stop waiting until the read
//! models reach the position it waited for: a lagging or stalled projector makes one read in
//! `READ_YOUR_WRITES_TIMEOUT` slow, not every read.

use crate::runtime::subscription::Progress;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Written {
    /// The log position of the last command committed here.
    last: AtomicU64,
    /// The position the last wait that ran out waited for (0: none did).
    gave_up_on: AtomicU64,
}

impl Written {
    /// Reads that begin from now on wait for `position`.
    pub fn raise(&self, position: u64) {
        self.last.fetch_max(position, Ordering::AcqRel);
    }

    /// Waits until `applied` reached every position committed here before this call, at most
    /// `timeout`; true if it did (or there was nothing to wait for), false if the wait ran
    /// out or was skipped because an earlier one ran out and the read models have not
    /// caught up with it yet.
    pub async fn wait(&self, applied: &Progress, timeout: Duration) -> bool {
        let written = self.last.load(Ordering::Acquire);
        let now = applied.position();
        if now >= written {
            return true;
        }
        if now < self.gave_up_on.load(Ordering::Acquire) {
            return false;
        }
        if applied.wait_for(written, timeout).await {
            return true;
        }
        self.gave_up_on.fetch_max(written, Ordering::AcqRel);
        tracing::warn!(
            written,
            applied = applied.position(),
            "the read models lag behind this instance's writes; reads answer what they show"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A read with nothing new committed here does not wait.
    #[tokio::test(start_paused = true)]
    async fn nothing_written_is_no_wait() {
        let (_applier, applied) = Progress::manual(7);
        let written = Written::default();
        written.raise(7);
        let began = Instant::now();
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    /// A read waits for this instance's last write, and only until the read models apply it.
    #[tokio::test(start_paused = true)]
    async fn a_read_waits_until_the_write_is_applied() {
        let (applier, applied) = Progress::manual(3);
        let written = Written::default();
        written.raise(5);
        let began = Instant::now();
        let apply_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            applier.send_replace(4);
            tokio::time::sleep(Duration::from_millis(40)).await;
            applier.send_replace(5);
            applier
        });
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::from_millis(80));
        drop(apply_later.await.unwrap());
    }

    /// A stalled projector: the first read waits the whole timeout, the reads after it answer
    /// at once until the read models reach what that wait was for; then a new write makes
    /// reads wait again.
    #[tokio::test(start_paused = true)]
    async fn after_a_wait_runs_out_reads_do_not_wait_until_the_read_models_catch_up() {
        let (applier, applied) = Progress::manual(10);
        let written = Written::default();
        written.raise(12);

        let began = Instant::now();
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert_eq!(
            began.elapsed(),
            TIMEOUT,
            "the first read waits the whole timeout"
        );

        // Still stalled, and more written here meanwhile: no read waits.
        written.raise(15);
        applier.send_replace(11);
        let began = Instant::now();
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::ZERO, "later reads do not wait");

        // The read models reached what the wait was for (12), not yet the last write (15):
        // a read waits again, and here they get there.
        applier.send_replace(12);
        let began = Instant::now();
        let catch_up = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            applier.send_replace(15);
            applier
        });
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::from_millis(30));
        drop(catch_up.await.unwrap());
    }
}
