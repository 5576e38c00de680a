//! `--rate`: requests across all workers fall due at fixed intervals from the
//! start of a phase, each worker taking the next due time. A request's latency
//! counts from when it was due, not from when a worker got to send it: when
//! the broker stalls, the requests that should have gone out meanwhile show
//! up in the percentiles as waits, rather than silently not being made (the
//! correction wrk2 makes for coordinated omission).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct Pacer {
    start: Instant,
    /// Requests a second.
    rate: f64,
    /// Due times handed out.
    taken: AtomicU64,
}

impl Pacer {
    pub fn new(rate: f64, start: Instant) -> Self {
        Pacer {
            start,
            rate,
            taken: AtomicU64::new(0),
        }
    }

    /// When the next request is due.
    pub fn due(&self) -> Instant {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        self.start + Duration::from_nanos((n as f64 * 1e9 / self.rate).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced_at_the_rate_from_the_start() {
        let start = Instant::now();
        let p = Pacer::new(200.0, start);
        let due: Vec<Duration> = (0..4).map(|_| p.due() - start).collect();
        assert_eq!(
            due,
            [0, 5, 10, 15].map(Duration::from_millis),
            "every 5 ms at 200/s"
        );
    }
}
