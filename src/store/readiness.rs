//! A latch that opens once and never closes: readiness is "caught up once", not a polled flag.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Latch {
    open: AtomicBool,
    notify: Notify,
}

impl Latch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the latch. Returns true for the call that opened it, false if it was already open.
    pub fn open(&self) -> bool {
        let first = !self.open.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_waiters();
        }
        first
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once the latch is open (at once if it already is).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so an `open` between the check and the await is not missed.
            notified.as_mut().enable();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn opens_once() {
        let latch = Latch::new();
        assert!(!latch.is_open());
        assert!(latch.open());
        assert!(!latch.open());
        assert!(latch.is_open());
    }

    #[tokio::test]
    async fn wait_resolves_for_waiters_before_and_after_open() {
        let latch = Arc::new(Latch::new());
        let early = tokio::spawn({
            let latch = latch.clone();
            async move { latch.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!early.is_finished());
        latch.open();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), latch.wait())
            .await
            .unwrap();
    }
}
