//! Prometheus metrics, served on the HTTP port at `/metrics`. Counters are kept
//! where the decisions are made (the broker); what other parts know (watch
//! subscribers, policy reloads) is read from memory at scrape time, and the
//! store's active-task count is refreshed in the background: a scrape never
//! queries the store.
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
/// Times the store probe found the store down (calls then fail fast).
pub static STORE_OUTAGES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// The broker's certificate, key and trust bundles loaded again after a change.
pub static TLS_RELOADS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Attempts to load changed TLS files that were refused (the previous set stays).
pub static TLS_RELOAD_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Connections the broker closed before the client did, by listener (`grpc`,
/// `http`) and reason: `evicted` (room for a newer one at the connection cap),
/// `handshake_timeout`, `handshake_failed`, `handshake_evicted`,
/// `first_request_timeout`, `idle_timeout`, `lifetime`.
pub static CONNECTIONS_CLOSED: LazyLock<Family<Conn, Counter>> = LazyLock::new(Family::default);
/// Connections refused at accept because the cap was full of connections that
/// proved an identity, by listener (`reason` is `cap`).
pub static CONNECTIONS_REFUSED: LazyLock<Family<Conn, Counter>> = LazyLock::new(Family::default);
/// Completed handshakes without a valid X.509-SVID (every call on them is
/// refused), by listener (`reason` is the SVID check that failed, in short).
pub static CONNECTIONS_UNAUTHENTICATED: LazyLock<Family<Conn, Counter>> =
    LazyLock::new(Family::default);
/// Open connections, all listeners.
pub static CONNECTIONS_OPEN: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// TLS handshakes in progress (after the ClientHello).
pub static HANDSHAKES_IN_PROGRESS: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// Mints recorded per transaction by the group commit (store/sql/mints.rs).
pub static MINT_BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 9,
    ))
});

/// Background workers started again after a panic, by worker.
pub static WORKER_RESTARTS: LazyLock<Family<Worker, Counter>> = LazyLock::new(Family::default);

/// Rows pruned after their retention, by kind (`tokens`, `offers`, …).
pub static PRUNED: LazyLock<Family<Pruned, Counter>> = LazyLock::new(Family::default);
/// Pruning batches that failed, by kind.
pub static PRUNE_FAILURES: LazyLock<Family<Pruned, Counter>> = LazyLock::new(Family::default);
/// Revocation watches refused or ended for a resync, by reason (`ahead`,
/// `missing`, `replaced`, `pruned`).
pub static WATCH_RESYNCS: LazyLock<Family<Reason, Counter>> = LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Pruned {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Worker {
    pub worker: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Conn {
    pub listener: &'static str,
    pub reason: &'static str,
}

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
            "mint_batch_size",
            "Mints judged per token-writing transaction (group commit: 1 when idle)",
            MINT_BATCH_SIZE.clone(),
        );
        registry.register(
            "store_errors",
            "Calls that failed on the store",
            STORE_ERRORS.clone(),
        );
        registry.register(
            "store_outages",
            "Times the store probe found the store down (calls then fail fast until it answers)",
            STORE_OUTAGES.clone(),
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
            "pruned_rows",
            "Rows pruned after their retention, by kind",
            PRUNED.clone(),
        );
        registry.register(
            "prune_failures",
            "Pruning batches that failed, by kind",
            PRUNE_FAILURES.clone(),
        );
        registry.register(
            "watch_resyncs",
            "Revocation watches refused or ended for a resync, by reason",
            WATCH_RESYNCS.clone(),
        );
        registry.register(
            "worker_restarts",
            "Background workers started again after a panic, by worker",
            WORKER_RESTARTS.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the broker closed, by listener and reason",
            CONNECTIONS_CLOSED.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at accept: the cap was full of authenticated connections",
            CONNECTIONS_REFUSED.clone(),
        );
        registry.register(
            "connections_unauthenticated",
            "Handshakes that completed without a valid X.509-SVID, by listener and reason",
            CONNECTIONS_UNAUTHENTICATED.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections, all listeners",
            CONNECTIONS_OPEN.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "TLS handshakes in progress (after the ClientHello)",
            HANDSHAKES_IN_PROGRESS.clone(),
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

    /// The active tasks of all replicas, as last counted in the background.
    pub fn set_active_tasks(&self, n: u64) {
        self.active_tasks.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition, with the in-process readings given.
    pub fn encode(&self, watchers: usize, reloads: u64) -> String {
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
