//! Why the broker closed or refused a connection, counted, and summed up in one
//! log line per interval with a few examples: an attacker cannot fill the disk.
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::warn;

/// Why the broker closed or refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Refused,
    Evicted,
    HandshakeTimeout,
    HandshakeFailed,
    HandshakeEvicted,
    Unauthenticated,
    FirstRequestTimeout,
    IdleTimeout,
    Lifetime,
    AcceptFailed,
}

const REASONS: [Reason; 10] = [
    Reason::Refused,
    Reason::Evicted,
    Reason::HandshakeTimeout,
    Reason::HandshakeFailed,
    Reason::HandshakeEvicted,
    Reason::Unauthenticated,
    Reason::FirstRequestTimeout,
    Reason::IdleTimeout,
    Reason::Lifetime,
    Reason::AcceptFailed,
];

impl Reason {
    pub(super) fn label(self) -> &'static str {
        match self {
            Reason::Refused => "refused_at_cap",
            Reason::Evicted => "evicted",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::HandshakeEvicted => "handshake_evicted",
            Reason::Unauthenticated => "without_valid_svid",
            Reason::FirstRequestTimeout => "first_request_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::Lifetime => "lifetime",
            Reason::AcceptFailed => "accept_failed",
        }
    }

    /// Worth a warning in the summary: idle connections closing is routine.
    fn is_refusal(self) -> bool {
        !matches!(self, Reason::IdleTimeout | Reason::Lifetime)
    }
}

/// Refusals since the last summary, and a few distinct examples of each kind
/// with a reason worth showing (a handshake error, an SVID check), so the log
/// says what is going on without growing with the attack.
#[derive(Default)]
pub(super) struct RefusalLog {
    counts: [AtomicU64; REASONS.len()],
    /// Examples offered this interval: past [`EXAMPLE_TRIES`] of a kind, no more
    /// are looked at (nor formatted).
    tries: [AtomicU64; REASONS.len()],
    /// (kind, what went wrong, who): at most [`EXAMPLES`] per kind.
    examples: Mutex<Vec<(Reason, String, String)>>,
}

/// The longest example quoted in a summary, and how many distinct ones of a
/// kind are kept per interval.
const EXAMPLE_CHARS: usize = 160;
const EXAMPLES: usize = 3;
const EXAMPLE_TRIES: u64 = 32;

impl RefusalLog {
    pub(super) fn count(&self, r: Reason) {
        self.counts[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn note(&self, r: Reason, why: impl FnOnce() -> String) {
        self.count(r);
        self.keep(r, String::new(), why);
    }

    pub(super) fn sample(&self, r: Reason, peer: SocketAddr, why: impl FnOnce() -> String) {
        self.keep(r, peer.to_string(), why);
    }

    fn keep(&self, r: Reason, who: String, why: impl FnOnce() -> String) {
        if self.tries[r as usize].fetch_add(1, Ordering::Relaxed) >= EXAMPLE_TRIES {
            return;
        }
        let mut ex = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if ex.iter().filter(|(k, ..)| *k == r).count() >= EXAMPLES {
            return;
        }
        let why: String = why().chars().take(EXAMPLE_CHARS).collect();
        if !ex.iter().any(|(k, w, _)| *k == r && *w == why) {
            ex.push((r, why, who));
        }
    }

    /// One line for everything refused in the last `every`, if anything was.
    pub(super) fn flush(&self, every: Duration) {
        for t in &self.tries {
            t.store(0, Ordering::Relaxed);
        }
        let counts: Vec<(Reason, u64)> = REASONS
            .iter()
            .map(|r| (*r, self.counts[*r as usize].swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let examples =
            std::mem::take(&mut *self.examples.lock().unwrap_or_else(|p| p.into_inner()));
        if !counts.iter().any(|(r, _)| r.is_refusal()) {
            return;
        }
        let counts = counts
            .iter()
            .map(|(r, n)| format!("{}={n}", r.label()))
            .collect::<Vec<_>>()
            .join(" ");
        let examples = examples
            .iter()
            .map(|(r, why, who)| format!("{} ({who}): {why}", r.label()))
            .collect::<Vec<_>>()
            .join("; ");
        warn!(
            period_s = every.as_secs(),
            %counts,
            %examples,
            "connections refused or closed by the broker (details in mayfly_connections_* metrics)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_every_refusal_and_keeps_a_few_short_distinct_examples() {
        let log = RefusalLog::default();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..1000 {
            log.count(Reason::HandshakeFailed);
            let why = format!("{} {}", i % 2, "x".repeat(500));
            log.sample(Reason::HandshakeFailed, peer, || why);
        }
        let failed = || log.counts[Reason::HandshakeFailed as usize].load(Ordering::Relaxed);
        assert_eq!(failed(), 1000);
        let ex = log.examples.lock().unwrap().clone();
        // Two distinct reasons: kept once each.
        assert_eq!(ex.len(), 2);
        assert!(ex[0].1.starts_with("0 x") && ex[1].1.starts_with("1 x"));
        assert_eq!(ex[0].1.chars().count(), EXAMPLE_CHARS);
        assert_eq!(ex[0].2, "127.0.0.1:9");
        log.flush(Duration::from_secs(60));
        assert_eq!(failed(), 0);
        assert!(log.examples.lock().unwrap().is_empty());
    }
}
