//! What a run measured, as a client sees it: requests, mints, refusals for
//! budget, tasks opened, errors by kind with a few of their messages, and the
//! latency of every mint in a histogram; merged across workers and phases, and
//! reported as one record (JSON for scripts, a table for people).
use super::Edge;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Messages kept per kind of error: enough to see what went wrong, bounded
/// whatever the run's length.
const EXAMPLES: usize = 3;
/// The longest message kept, in bytes: broker refusals are sentences, and a
/// report is read in a terminal.
const MESSAGE: usize = 160;

/// Latencies in microseconds, log-linear: exact below 256 µs, then 128 buckets
/// per power of two, each under 0.8% wide. Fixed memory however long the run
/// (a list of every latency would grow by megabytes a second at full speed).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// Significant bits per bucket.
const BITS: u32 = 8;
const HALF: u64 = 1 << (BITS - 1);

fn bucket(us: u64) -> usize {
    let bits = u64::BITS - us.leading_zeros();
    if bits <= BITS {
        return us as usize;
    }
    let shift = u64::from(bits - BITS);
    (shift * HALF + (us >> shift)) as usize
}

/// The smallest value of bucket `i` (wider than `u64`: the bucket after the
/// last one starts at 2^64).
fn lowest(i: usize) -> u128 {
    let i = i as u128;
    if i < 2 * u128::from(HALF) {
        return i;
    }
    let shift = i / u128::from(HALF) - 1;
    (i - shift * u128::from(HALF)) << shift
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let i = bucket(us);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `p` quantile (nearest rank): the highest value of its bucket, never
    /// above the largest recorded. Zero when nothing was recorded.
    pub fn quantile(&self, p: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let highest = u64::try_from(lowest(i + 1) - 1).unwrap_or(u64::MAX);
                return Duration::from_micros(highest.min(self.max));
            }
        }
        Duration::from_micros(self.max)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max)
    }
}

/// A failed request: a short fixed kind (`grpc Unavailable`, `400
/// invalid_grant`, `connect`, `timeout`) and what was said.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    /// The exit code `mayfly bench` ends with when this stops it before the
    /// run (`client::exit`).
    pub code: u8,
}

impl Failure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>, code: u8) -> Self {
        Failure {
            kind: kind.into(),
            message: message.into(),
            code,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(super) fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Debug, Clone, Default)]
struct Errors {
    count: u64,
    examples: Vec<String>,
}

/// What one worker, one phase or a whole run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Mint requests sent (task openings are not mints).
    pub requests: u64,
    /// Mints answered with a token; their latencies are in `latency`.
    pub latency: Histogram,
    /// Mints refused because the task's budget was spent (each followed by a
    /// new task).
    pub budget_refusals: u64,
    pub tasks_opened: u64,
    /// How long the phase took, from its start until its last worker stopped.
    pub elapsed: Duration,
    errors: BTreeMap<String, Errors>,
}

impl Figures {
    pub fn mints(&self) -> u64 {
        self.latency.len()
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    /// Mints a second over the phase.
    pub fn rate(&self) -> f64 {
        match self.elapsed.as_secs_f64() {
            0.0 => 0.0,
            s => self.mints() as f64 / s,
        }
    }

    pub fn error(&mut self, failure: Failure) {
        let e = self.errors.entry(short(&failure.kind, 64)).or_default();
        e.count += 1;
        let message = short(&failure.message, MESSAGE);
        if e.examples.len() < EXAMPLES && !e.examples.contains(&message) {
            e.examples.push(message);
        }
    }

    /// Adds what `other` measured; the elapsed times add up, as phases run one
    /// after the other (workers of one phase are merged with [`Figures::merge_worker`]).
    pub fn merge(&mut self, other: &Figures) {
        self.merge_worker(other);
        self.elapsed += other.elapsed;
    }

    /// Adds what a worker of the same phase measured.
    pub fn merge_worker(&mut self, other: &Figures) {
        self.requests += other.requests;
        self.latency.merge(&other.latency);
        self.budget_refusals += other.budget_refusals;
        self.tasks_opened += other.tasks_opened;
        for (kind, e) in &other.errors {
            let mine = self.errors.entry(kind.clone()).or_default();
            mine.count += e.count;
            for m in &e.examples {
                if mine.examples.len() < EXAMPLES && !mine.examples.contains(m) {
                    mine.examples.push(m.clone());
                }
            }
        }
    }

    /// The kinds of error, most frequent first.
    pub fn error_kinds(&self) -> Vec<ErrorKind> {
        let mut kinds: Vec<ErrorKind> = self
            .errors
            .iter()
            .map(|(kind, e)| ErrorKind {
                kind: kind.clone(),
                count: e.count,
                examples: e.examples.clone(),
            })
            .collect();
        kinds.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.kind.cmp(&b.kind)));
        kinds
    }
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The report of a run: how it was driven, then what the measured phase saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edge: Edge,
    /// Every request on a new connection (TCP, TLS handshake, request).
    pub new_connection: bool,
    pub concurrency: usize,
    /// The cap on requests a second across workers, if one was set.
    pub rate_limit: Option<f64>,
    /// Idle connections asked for, and how many were open at the end.
    pub hold: usize,
    pub held_connections: usize,
    pub seconds: f64,
    pub requests: u64,
    pub mints: u64,
    pub mints_per_second: f64,
    pub errors: u64,
    pub budget_refusals: u64,
    pub tasks_opened: u64,
    pub latency_ms: Latency,
    pub error_kinds: Vec<ErrorKind>,
    /// The first mint (a check that the broker serves the agent) and the
    /// warm-up: not in the figures above.
    pub unmeasured: Unmeasured,
}

/// Latency percentiles of the mints that got a token, in milliseconds: from
/// sending the request (in `--new-connection` mode, from opening the
/// connection; under `--rate`, from when the request was due) to the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorKind {
    pub kind: String,
    pub count: u64,
    /// The first few distinct messages, cut short.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unmeasured {
    pub seconds: f64,
    pub mints: u64,
    pub tasks_opened: u64,
    pub errors: u64,
}

impl Report {
    pub(super) fn new(
        plan: &super::Plan,
        measured: &Figures,
        unmeasured: &Figures,
        held_connections: usize,
    ) -> Report {
        let l = &measured.latency;
        Report {
            edge: plan.edge,
            new_connection: plan.new_connection,
            concurrency: plan.concurrency,
            rate_limit: plan.rate,
            hold: plan.hold,
            held_connections,
            seconds: (measured.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            requests: measured.requests,
            mints: measured.mints(),
            mints_per_second: (measured.rate() * 10.0).round() / 10.0,
            errors: measured.errors(),
            budget_refusals: measured.budget_refusals,
            tasks_opened: measured.tasks_opened,
            latency_ms: Latency {
                p50: ms(l.quantile(0.50)),
                p99: ms(l.quantile(0.99)),
                p99_9: ms(l.quantile(0.999)),
                max: ms(l.max()),
            },
            error_kinds: measured.error_kinds(),
            unmeasured: Unmeasured {
                seconds: (unmeasured.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                mints: unmeasured.mints(),
                tasks_opened: unmeasured.tasks_opened,
                errors: unmeasured.errors(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_a_bucket_that_holds_it_and_is_under_one_percent_wide() {
        let mut v = 0u64;
        while v < 1 << 40 {
            let i = bucket(v);
            assert!(
                lowest(i) <= v.into() && u128::from(v) < lowest(i + 1),
                "{v} in {i}"
            );
            let width = lowest(i + 1) - lowest(i);
            assert!(
                width == 1 || (width as f64) / (lowest(i) as f64) < 0.008,
                "{v}"
            );
            v = v * 17 / 16 + 1;
        }
        assert_eq!(lowest(bucket(u64::MAX) + 1), 1 << 64);
    }

    #[test]
    fn quantiles_are_nearest_ranks_and_never_above_the_largest_latency() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.len(), 1000);
        assert_eq!(h.quantile(0.0), Duration::from_micros(1));
        assert_eq!(h.quantile(0.1), Duration::from_micros(100));
        let p50 = h.quantile(0.5).as_micros();
        assert!((500..=504).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(h.max(), Duration::from_micros(1000));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(3));
        h.merge(&other);
        assert_eq!(h.quantile(1.0), Duration::from_secs(3));
        assert_eq!(h.len(), 1001);
    }

    #[test]
    fn errors_are_counted_by_kind_with_a_few_short_distinct_messages() {
        let mut a = Figures::default();
        for i in 0..10 {
            a.error(Failure::new(
                "grpc Unavailable",
                format!("down {}", i % 5),
                7,
            ));
        }
        a.error(Failure::new("timeout", "x".repeat(1000), 3));
        let mut b = Figures::default();
        b.error(Failure::new("timeout", "another", 3));
        a.merge_worker(&b);
        assert_eq!(a.errors(), 12);
        let kinds = a.error_kinds();
        assert_eq!(kinds[0].kind, "grpc Unavailable");
        assert_eq!(kinds[0].count, 10);
        assert_eq!(kinds[0].examples, ["down 0", "down 1", "down 2"]);
        assert_eq!(kinds[1].count, 2);
        assert!(kinds[1].examples[0].len() <= MESSAGE + '…'.len_utf8());
        assert_eq!(kinds[1].examples[1], "another");
        assert_eq!(short("né", 2), "n…");
    }
}
