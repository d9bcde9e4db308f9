//! Requests in flight: the window every bulk path keeps so that the next request is built and
//! sent while earlier ones are being acknowledged.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use crate::model::{SysError, SysResult};

/// A request in flight.
type Pending<T> = Pin<Box<dyn Future<Output = SysResult<T>> + Send>>;

/// Requests in flight, awaited oldest first, bounded by a count and a byte budget.
pub struct Window<T> {
    pending: VecDeque<(Pending<T>, u64)>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
}

impl<T: Send + 'static> Window<T> {
    /// A window of at most `max_count` requests holding at most `max_bytes` (a request larger
    /// than that still goes, alone).
    pub fn new(max_count: usize, max_bytes: u64) -> Self {
        Window {
            pending: VecDeque::new(),
            bytes: 0,
            max_count: max_count.max(1),
            max_bytes,
        }
    }

    /// Sends a request of `bytes` (`send` starts it and returns its answer to come), after
    /// awaiting the oldest ones until it fits; returns what those answered, oldest first. The
    /// first failure is returned as it is.
    pub async fn push<F>(
        &mut self,
        bytes: u64,
        send: impl FnOnce() -> SysResult<F>,
    ) -> SysResult<Vec<T>>
    where
        F: Future<Output = SysResult<T>> + Send + 'static,
    {
        let mut done = Vec::new();
        while !self.pending.is_empty()
            && (self.pending.len() >= self.max_count || self.bytes + bytes > self.max_bytes)
        {
            done.push(self.oldest().await?);
        }
        let request = send()?;
        self.bytes += bytes;
        self.pending.push_back((Box::pin(request), bytes));
        Ok(done)
    }

    /// Awaits every request still in flight; returns what they answered, oldest first.
    pub async fn finish(mut self) -> SysResult<Vec<T>> {
        let mut done = Vec::with_capacity(self.pending.len());
        while !self.pending.is_empty() {
            done.push(self.oldest().await?);
        }
        Ok(done)
    }

    async fn oldest(&mut self) -> SysResult<T> {
        let (request, bytes) = self.pending.pop_front().expect("a request in flight");
        self.bytes -= bytes;
        request.await
    }
}

/// Runs `request` as a task of its own, so that it progresses on any worker thread while the
/// caller prepares the next. Dropped unawaited (a bulk load that failed), the task is aborted:
/// nothing lands after the load has returned.
pub fn spawned<T: Send + 'static>(
    what: &'static str,
    request: impl Future<Output = SysResult<T>> + Send + 'static,
) -> impl Future<Output = SysResult<T>> + Send + 'static {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(request));
    async move {
        (&mut task.0)
            .await
            .map_err(|e| SysError::failed(format!("{what} task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_at_most_the_count_and_the_bytes_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let request = |i: u64| {
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            move || {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                Ok(spawned("test", async move {
                    tokio::time::sleep(Duration::from_millis(10 * (5 - i % 5))).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                }))
            }
        };
        let mut w = Window::new(3, 250);
        let mut answered = Vec::new();
        for i in 0..10 {
            answered.extend(w.push(100, request(i)).await.unwrap());
        }
        answered.extend(w.finish().await.unwrap());
        assert_eq!(
            answered,
            (0..10).collect::<Vec<_>>(),
            "oldest first, each once"
        );
        // 250 bytes hold two requests of 100, though three would fit by count.
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_returned_and_dropping_the_window_aborts_the_rest() {
        let finished = Arc::new(AtomicUsize::new(0));
        let mut w = Window::new(4, u64::MAX);
        w.push(0, || Ok(async { Err(SysError::failed("boom")) }))
            .await
            .unwrap();
        for _ in 0..3 {
            let finished = Arc::clone(&finished);
            let slow = move || {
                Ok(spawned("test", async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }))
            };
            w.push(0, slow).await.unwrap();
        }
        let e = w.push(0, || Ok(async { Ok(()) })).await.unwrap_err();
        assert_eq!(e.message, "boom");
        drop(w);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0, "aborted, not finished");
    }
}
