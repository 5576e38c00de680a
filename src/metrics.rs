//! Prometheus metrics, served on the HTTP port at `/metrics`. Counters are kept
//! where the decisions are made (the broker); what the store or other parts know
//! (active tasks, watch subscribers, policy reloads) is read at scrape time.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Store failures that reached a caller as a gRPC error (`error.rs`); failures
/// the broker absorbs (an audit write of a refusal, a sweep it retries) are logged
/// instead.
pub static STORE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// The broker's certificate, key and trust bundles loaded again after a change.
pub static TLS_RELOADS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Attempts to load changed TLS files that were refused (the previous set stays).
pub static TLS_RELOAD_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `direct`, `delegated` or `approved` for tokens; the audit action for
    /// denials; the trigger for revocations.
    pub kind: String,
}

fn kind(k: &str) -> Kind {
    Kind {
        kind: k.to_string(),
    }
}

pub struct Metrics {
    registry: Registry,
    tokens: Family<Kind, Counter>,
    denials: Family<Kind, Counter>,
    revocations: Family<Kind, Counter>,
    deviations: Counter,
    mint_seconds: Histogram,
    active_tasks: Gauge,
    watch_subscribers: Gauge,
    policy_reloads: Counter,
    policy_reloads_seen: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mayfly");
        let m = Metrics {
            tokens: Family::default(),
            denials: Family::default(),
            revocations: Family::default(),
            deviations: Counter::default(),
            // 0.5 ms to ~4 s.
            mint_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
            ),
            active_tasks: Gauge::default(),
            watch_subscribers: Gauge::default(),
            policy_reloads: Counter::default(),
            policy_reloads_seen: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "tokens_issued",
            "Tokens issued, by kind (direct, delegated, approved)",
            m.tokens.clone(),
        );
        registry.register(
            "denials",
            "Refusals, by the audit action that records them",
            m.denials.clone(),
        );
        registry.register(
            "revocations",
            "Revocation events committed by this broker, by trigger",
            m.revocations.clone(),
        );
        registry.register(
            "deviations",
            "Tasks this broker moved to deviated",
            m.deviations.clone(),
        );
        registry.register(
            "mint_duration_seconds",
            "Time to mint a token, from request to persisted token",
            m.mint_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Calls that failed on the store",
            STORE_ERRORS.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate, key and trust bundle sets loaded after the first",
            TLS_RELOADS.clone(),
        );
        registry.register(
            "tls_reload_failures",
            "Changed TLS files that did not load (the previous set stayed in force)",
            TLS_RELOAD_FAILURES.clone(),
        );
        registry.register(
            "active_tasks",
            "Active tasks (all replicas)",
            m.active_tasks.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Open revocation watch streams on this broker",
            m.watch_subscribers.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy sets loaded after the first",
            m.policy_reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn token_issued(&self, k: &str) {
        self.tokens.get_or_create(&kind(k)).inc();
    }

    pub fn denied(&self, action: &str) {
        self.denials.get_or_create(&kind(action)).inc();
    }

    pub fn revoked(&self, trigger: &str) {
        self.revocations.get_or_create(&kind(trigger)).inc();
    }

    pub fn deviated(&self) {
        self.deviations.inc();
    }

    pub fn mint_took(&self, d: std::time::Duration) {
        self.mint_seconds.observe(d.as_secs_f64());
    }

    /// The text exposition, with the scrape-time readings given.
    pub fn encode(&self, active_tasks: Option<u64>, watchers: usize, reloads: u64) -> String {
        if let Some(n) = active_tasks {
            self.active_tasks.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.watch_subscribers
            .set(i64::try_from(watchers).unwrap_or(i64::MAX));
        let seen = self.policy_reloads_seen.swap(reloads, Ordering::SeqCst);
        self.policy_reloads.inc_by(reloads.saturating_sub(seen));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
