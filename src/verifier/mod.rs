//! The verifier library: what a Rust resource server embeds to check Mayfly tokens
//! locally — signature (keys from the broker's JWKS), issuer, audience, time
//! window, certificate binding, scope, and a live revocation set fed by the
//! broker's `WatchRevocations` stream — failing closed when the stream goes quiet.
//!
//! [`Verifier::connect`] takes an mTLS [`Channel`] to the broker, authenticated
//! with the resource server's own X.509-SVID (an identity with the `verifier`
//! role), fetches the JWKS and starts following revocations in the background.
//! [`Verifier::check`] then makes no network call, except a rate-limited,
//! single-flight JWKS refresh when a token names a key it does not know. A token
//! presented with a certificate other than the one it is bound to is reported to
//! the broker (`ReportMisuse`) in the background, which deviates its task.
//!
//! Until the first heartbeat has arrived (the broker replayed the revocation
//! history and is caught up), and whenever nothing — event or heartbeat — has been
//! heard for longer than [`VerifierConfig::staleness`], every check is
//! [`Verdict::Stale`]. When the broker answers that its store cannot serve the
//! verifier's cursor (`FAILED_PRECONDITION`: the store was restored from a backup
//! or failed over to a lagging standby, so sequence numbers the verifier has
//! passed may now name other revocations), the verifier resyncs: checks are
//! `Stale` again, the store's whole history is replayed from sequence 0 into the
//! set, and the next heartbeat makes it fresh. Entries it already had stay until
//! they expire (they only ever refuse tokens, so a revocation the restore lost
//! stays in force here); the sequence such an entry reports in
//! [`Verdict::Revoked`] is one of the history before the restore. Set the staleness well above the broker's
//! `[revocation] heartbeat` (5 s by default): three heartbeats is a good bound.
//!
//! For the tool's HTTP edge, [`bearer_token`] reads the token of a request's
//! `Authorization` header, and [`ProtectedResource`] holds the tool's RFC 9728
//! metadata: the document to serve at its [`ProtectedResource::well_known_path`]
//! and the [`Answer`] (status, `WWW-Authenticate`, body) to every refusal, as the
//! MCP authorization spec asks of an MCP server.
//!
//! The module sits behind the cargo feature `verifier` (on by default). The feature
//! only gates this module: the crate's server dependencies are not optional yet,
//! so a resource server still compiles them.
//!
//! ```no_run
//! use mayfly::verifier::{RequiredScope, Verdict, Verifier, VerifierConfig};
//! use std::time::Duration;
//! use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
//!
//! # async fn serve(token: &str, client_cert_der: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! // The resource server's own SVID (role `verifier`) and the trust bundle.
//! let tls = ClientTlsConfig::new()
//!     .ca_certificate(Certificate::from_pem(std::fs::read("bundle.pem")?))
//!     .identity(Identity::from_pem(
//!         std::fs::read("crm-api.crt")?,
//!         std::fs::read("crm-api.key")?,
//!     ))
//!     .domain_name("mayfly.internal");
//! let channel = Channel::from_static("https://mayfly.internal:8443")
//!     .tls_config(tls)?
//!     .connect()
//!     .await?;
//!
//! // Issuer as the broker's `[server] issuer`; audience: this tool's name.
//! let verifier = Verifier::connect(
//!     channel,
//!     VerifierConfig::new("https://mayfly.internal", "crm-api"),
//! )
//! .await?;
//! // Optional: wait until the revocation history has been replayed.
//! tokio::time::timeout(Duration::from_secs(30), verifier.synced()).await?;
//!
//! // Per request: the bearer token and the DER of the client certificate of
//! // the TLS session it arrived on.
//! let required = RequiredScope::new("read", "customers/eu/42")?;
//! match verifier.check(token, client_cert_der, &required).await {
//!     Verdict::Valid(claims) => {
//!         tracing::info!(caller = %claims.sub, task = %claims.task, jti = %claims.jti, "allowed");
//!     }
//!     refused => {
//!         // Log why, never the token; answer 401/403/503
//!         // (`ProtectedResource::answer_verdict`).
//!         tracing::info!(verdict = %refused, "refused");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
mod answer;
mod bearer;
mod keys;
mod misuse;
mod resource;
mod revocations;
mod scope;
mod watch;

pub use answer::{Answer, CONTENT_TYPE};
pub use bearer::{BearerError, bearer_token};
pub use keys::{JwksError, key_set_from_jwks};
pub use resource::{ProtectedResource, ResourceError, WELL_KNOWN};
pub use revocations::{Revocation, RevocationSet, Revoked};
pub use scope::{RequiredScope, RequiredScopeError};

use crate::api::pb;
use crate::api::pb::verifier_service_client::VerifierServiceClient;
use crate::clock::{Clock, SystemClock};
use crate::token::{Claims, KeySet, TokenError};
use keys::KeyCache;
use misuse::Reporter;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use watch::{Follow, Shared};

/// How a [`Verifier`] checks tokens and follows the broker.
#[derive(Clone)]
pub struct VerifierConfig {
    /// The `iss` tokens must carry: the broker's `[server] issuer`.
    pub issuer: String,
    /// The `aud` tokens must carry: this resource server's tool name.
    pub audience: String,
    /// Tolerance on `exp` and `nbf` (default 5 s).
    pub leeway: Duration,
    /// Fail closed when nothing was heard from the broker for longer (default 15 s).
    pub staleness: Duration,
    /// The longest token lifetime the broker grants (default 24 h). A revocation is
    /// forgotten this long (plus leeway and skew) after it happened; a token that
    /// claims a longer life is refused.
    pub max_token_lifetime: Duration,
    /// Margin for agent and "all" revocations, which concern tokens issued up to
    /// the event: how far the clock of the replica that minted may run ahead of the
    /// one that revoked (default 2 s).
    pub clock_skew: Duration,
    /// Reconnect backoff of the revocation stream: first delay (default 100 ms)…
    pub reconnect_min: Duration,
    /// …doubling up to this (default 10 s).
    pub reconnect_max: Duration,
    /// At most one JWKS refresh for an unknown `kid` per interval (default 10 s).
    pub key_refresh_min_interval: Duration,
    /// The JWKS is also refreshed on this schedule, so retired keys leave the
    /// cache (default 5 min).
    pub key_refresh_every: Duration,
    /// Deadline of a JWKS fetch or a misuse report (default 5 s).
    pub request_timeout: Duration,
    /// Report tokens presented with another client certificate (default true).
    pub report_misuse: bool,
    /// The time tokens and revocations are compared with (default: the system clock).
    pub clock: Arc<dyn Clock>,
}

impl VerifierConfig {
    /// The defaults, for tokens of `issuer` meant for `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        VerifierConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(5),
            staleness: Duration::from_secs(15),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            key_refresh_min_interval: Duration::from_secs(10),
            key_refresh_every: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            report_misuse: true,
            clock: Arc::new(SystemClock),
        }
    }

    fn validate(&self) -> Result<(), ConnectError> {
        let bad = |why: &str| Err(ConnectError::Config(why.into()));
        if self.issuer.is_empty() {
            return bad("issuer is empty");
        }
        if self.audience.is_empty() {
            return bad("audience is empty");
        }
        if self.staleness.is_zero() {
            return bad("staleness must be longer than zero");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return bad("reconnect_min must be longer than zero and at most reconnect_max");
        }
        if self.key_refresh_every.is_zero() || self.request_timeout.is_zero() {
            return bad("key_refresh_every and request_timeout must be longer than zero");
        }
        Ok(())
    }
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("staleness", &self.staleness)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .field("clock_skew", &self.clock_skew)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("key_refresh_min_interval", &self.key_refresh_min_interval)
            .field("key_refresh_every", &self.key_refresh_every)
            .field("request_timeout", &self.request_timeout)
            .field("report_misuse", &self.report_misuse)
            .finish_non_exhaustive()
    }
}

/// Why [`Verifier::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("verifier configuration: {0}")]
    Config(String),
    #[error("cannot fetch the broker's JWKS: {code:?}: {message}")]
    Jwks { code: tonic::Code, message: String },
    #[error(transparent)]
    BadJwks(#[from] JwksError),
    #[error("Verifier::connect must run inside a tokio runtime")]
    NoRuntime,
}

/// The outcome of a check; everything but `Valid` is a refusal, named so a
/// resource server can log why.
// Returned once per check and matched at once: boxing the claims would cost an
// allocation per valid check for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(Claims),
    /// Not a well-formed Mayfly access token (JWT, header, claims).
    Malformed,
    BadSignature,
    /// Signed by a key the broker does not publish (after a refresh, if allowed).
    UnknownKey,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    /// Claims a lifetime beyond [`VerifierConfig::max_token_lifetime`], longer than
    /// revocations are remembered.
    LifetimeExceeded,
    /// Revoked by the revocation event with this sequence number.
    Revoked {
        sequence: u64,
    },
    /// Presented with a client certificate other than the one it is bound to.
    NotBoundToClient,
    ScopeNotCovered,
    /// The revocation stream has not caught up yet (at start, or resyncing after
    /// the broker's store was restored or failed over), or has been silent past
    /// the staleness bound: every token is refused.
    Stale,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }

    /// A short, stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Valid(_) => "valid",
            Verdict::Malformed => "malformed",
            Verdict::BadSignature => "bad_signature",
            Verdict::UnknownKey => "unknown_key",
            Verdict::WrongIssuer => "wrong_issuer",
            Verdict::WrongAudience => "wrong_audience",
            Verdict::Expired => "expired",
            Verdict::NotYetValid => "not_yet_valid",
            Verdict::LifetimeExceeded => "lifetime_exceeded",
            Verdict::Revoked { .. } => "revoked",
            Verdict::NotBoundToClient => "not_bound_to_client",
            Verdict::ScopeNotCovered => "scope_not_covered",
            Verdict::Stale => "stale",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Revoked { sequence } => write!(f, "revoked (event {sequence})"),
            v => f.write_str(v.as_str()),
        }
    }
}

/// Checks Mayfly tokens locally. Cheap to clone; the background work stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: VerifierConfig,
    channel: Channel,
    keys: Arc<KeyCache>,
    shared: Arc<Shared>,
    reporter: Reporter,
    leeway: i64,
    max_lifetime: i64,
    _stop: DropGuard,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.inner.config)
            .field("cursor", &self.cursor())
            .finish_non_exhaustive()
    }
}

/// Whole seconds, saturating.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

async fn fetch_jwks(channel: Channel, timeout: Duration) -> Result<String, tonic::Status> {
    let mut client = VerifierServiceClient::new(channel);
    match tokio::time::timeout(timeout, client.get_jwks(pb::GetJwksRequest {})).await {
        Ok(r) => r.map(|r| r.into_inner().jwks_json),
        Err(_) => Err(tonic::Status::deadline_exceeded("GetJwks timed out")),
    }
}

impl Verifier {
    /// Fetches the broker's keys and starts following its revocations from the
    /// beginning. Fails when the configuration is invalid or the JWKS cannot be
    /// fetched; the revocation stream connects (and reconnects) in the background.
    pub async fn connect(
        channel: Channel,
        config: VerifierConfig,
    ) -> Result<Verifier, ConnectError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let json = fetch_jwks(channel.clone(), config.request_timeout)
            .await
            .map_err(|s| ConnectError::Jwks {
                code: s.code(),
                message: s.message().to_string(),
            })?;
        let keys = Arc::new(KeyCache::new(
            key_set_from_jwks(&json)?,
            config.key_refresh_min_interval,
        ));
        let leeway = secs(config.leeway);
        let max_lifetime = secs(config.max_token_lifetime);
        let shared = Arc::new(Shared::new(RevocationSet::new(
            max_lifetime,
            leeway,
            secs(config.clock_skew),
        )));
        let stop = CancellationToken::new();
        runtime.spawn(
            Follow {
                channel: channel.clone(),
                shared: shared.clone(),
                clock: config.clock.clone(),
                staleness: config.staleness,
                backoff_min: config.reconnect_min,
                backoff_max: config.reconnect_max,
                stop: stop.clone(),
            }
            .run(),
        );
        runtime.spawn(refresh_keys(
            keys.clone(),
            channel.clone(),
            config.key_refresh_every,
            config.request_timeout,
            stop.clone(),
        ));
        tracing::info!(issuer = %config.issuer, audience = %config.audience, "verifier started");
        Ok(Verifier {
            inner: Arc::new(Inner {
                reporter: Reporter::new(channel.clone(), config.request_timeout),
                config,
                channel,
                keys,
                shared,
                leeway,
                max_lifetime,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// Checks a token presented with the client certificate `client_cert_der` (the
    /// DER of the leaf of the TLS session it came on) for `required`. No network
    /// call, except a JWKS refresh for an unknown key (rate-limited, shared by
    /// concurrent checks).
    pub async fn check(
        &self,
        token: &str,
        client_cert_der: &[u8],
        required: &RequiredScope,
    ) -> Verdict {
        let i = &*self.inner;
        if !i.shared.is_fresh(i.config.staleness) {
            return Verdict::Stale;
        }
        let Ok(kid) = KeySet::kid_of(token) else {
            return Verdict::Malformed;
        };
        let mut keys = i.keys.current();
        if !keys.contains(&kid) {
            let fetch = || fetch_jwks(i.channel.clone(), i.config.request_timeout);
            match i.keys.refresh_for(&kid, fetch).await {
                Some(k) => keys = k,
                None => return Verdict::UnknownKey,
            }
        }
        let now = i.config.clock.now().unix_timestamp();
        let claims = match keys.verify(token, now, i.leeway) {
            Ok(c) => c,
            Err(e) => {
                return match e {
                    TokenError::Malformed(_) | TokenError::Header => Verdict::Malformed,
                    TokenError::UnknownKey(_) => Verdict::UnknownKey,
                    TokenError::Signature => Verdict::BadSignature,
                    TokenError::Expired => Verdict::Expired,
                    TokenError::NotYetValid => Verdict::NotYetValid,
                };
            }
        };
        if claims.iss != i.config.issuer {
            return Verdict::WrongIssuer;
        }
        if claims.aud != i.config.audience {
            return Verdict::WrongAudience;
        }
        if claims.exp.saturating_sub(claims.iat) > i.max_lifetime {
            return Verdict::LifetimeExceeded;
        }
        // Checked before revocation: a stolen token is worth reporting even when
        // its task has ended (the broker audits the report all the same).
        let presented = crate::identity::thumbprint(client_cert_der);
        if presented != claims.cnf.x5t_s256 {
            if i.config.report_misuse {
                i.reporter.binding_mismatch(token, &claims, &presented, now);
            }
            return Verdict::NotBoundToClient;
        }
        let revoked = i
            .shared
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked(&claims);
        if let Some(sequence) = revoked {
            return Verdict::Revoked { sequence };
        }
        if !required.is_covered_by(&claims.scope) {
            return Verdict::ScopeNotCovered;
        }
        Verdict::Valid(claims)
    }

    /// The sequence of the last revocation event applied since the last
    /// (re)sync: 0 right after a resync, until the history is replayed.
    pub fn cursor(&self) -> u64 {
        self.inner.shared.cursor()
    }

    /// True once the broker has said the revocation history is fully replayed
    /// (a heartbeat), until a resync starts it again.
    pub fn is_synced(&self) -> bool {
        self.inner.shared.is_synced()
    }

    /// Resolves once the revocation history is replayed (a heartbeat since the
    /// start or the last resync); checks are [`Verdict::Stale`] until then.
    pub async fn synced(&self) {
        self.inner.shared.wait_synced().await
    }
}

/// Refreshes the keys on a schedule until `stop`.
async fn refresh_keys(
    keys: Arc<KeyCache>,
    channel: Channel,
    every: Duration,
    timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        keys.refresh(|| fetch_jwks(channel.clone(), timeout)).await;
    }
}
