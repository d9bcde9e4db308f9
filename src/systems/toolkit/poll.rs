//! Waiting for a server's background work: the pacing of every adapter's polling loop.
//!
//! Servers report their background work (mutations, purge, AOF rewrites, queues) only when
//! asked, so settling means asking until it is done. Pauses start at 1 ms and double up to
//! a cap: a wait of a few milliseconds ends within a few milliseconds, and a long one costs
//! at most one query per cap.

use std::time::Duration;

use tokio::time::Instant;

/// The pauses of one polling loop, bounded by a time limit:
///
/// ```
/// # use std::time::Duration;
/// # use dedup_lab::systems::toolkit::Pacer;
/// async fn settle(done: impl AsyncFn() -> bool) -> Result<(), String> {
///     let mut pacer = Pacer::new(Duration::from_secs(60));
///     while !done().await {
///         if !pacer.pause().await {
///             return Err("still busy after 60 s".into());
///         }
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Pacer {
    deadline: Instant,
    pause: Duration,
    cap: Duration,
}

impl Pacer {
    /// A loop that may last `limit`, pausing from 1 ms doubling up to 50 ms: status queries
    /// are cheap, and 50 ms is small beside the waits they serve.
    pub fn new(limit: Duration) -> Self {
        Self {
            deadline: Instant::now() + limit,
            pause: Duration::from_millis(1),
            cap: Duration::from_millis(50),
        }
    }

    /// The same with pauses up to `cap` instead.
    pub fn cap(self, cap: Duration) -> Self {
        Self {
            pause: self.pause.min(cap),
            cap,
            ..self
        }
    }

    /// Sleeps before the next check and returns `true`, or returns `false` at once when the
    /// pause would end past the limit: the caller then reports what is still unfinished.
    pub async fn pause(&mut self) -> bool {
        if Instant::now() + self.pause > self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(self.cap);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_from_one_millisecond_up_to_the_cap() {
        let mut pacer = Pacer::new(Duration::from_secs(5)).cap(Duration::from_millis(4));
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            assert!(pacer.pause().await);
            gaps.push(start.elapsed());
        }
        assert_eq!(gaps, ms(&[1, 2, 4, 4, 4]));
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_pause_that_would_end_past_the_limit() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Duration::from_millis(30)).cap(Duration::from_millis(8));
        let mut pauses = 0;
        while pacer.pause().await {
            pauses += 1;
        }
        // 1+2+4+8+8 = 23 ms fit in 30 ms; the next 8 would end at 31 ms, so it is refused
        // without sleeping.
        assert_eq!(pauses, 5);
        assert_eq!(start.elapsed(), Duration::from_millis(23));
    }
}
