//! Reporting a token presented by the wrong client certificate: in the
//! background, once per token, never blocking the check, never logging the token.
use crate::api::pb;
use crate::api::pb::verifier_service_client::VerifierServiceClient;
use crate::token::Claims;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Most tokens remembered as reported; past it (a flood), further reports wait
/// until remembered tokens expire.
const MAX_REMEMBERED: usize = 10_000;

pub(super) struct Reporter {
    channel: Channel,
    timeout: Duration,
    /// Reported jti → its `exp`: one report per token is enough, and a replaying
    /// thief must not turn the verifier into a flood of calls.
    reported: Arc<Mutex<HashMap<String, i64>>>,
}

impl Reporter {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Reporter {
            channel,
            timeout,
            reported: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// True the first time a token is seen (until it expires).
    fn first_report(&self, claims: &Claims, now: i64) -> bool {
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&claims.jti) {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, exp| *exp > now);
            if seen.len() >= MAX_REMEMBERED {
                tracing::warn!(jti = %claims.jti, "too many misuse reports pending; this one is not sent");
                return false;
            }
        }
        seen.insert(claims.jti.clone(), claims.exp);
        true
    }

    /// Reports a certificate-binding mismatch; `presented` is the thumbprint of the
    /// certificate the token came with.
    pub fn binding_mismatch(&self, token: &str, claims: &Claims, presented: &str, now: i64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(jti = %claims.jti, "no tokio runtime: misuse not reported");
            return;
        };
        if !self.first_report(claims, now) {
            return;
        }
        let request = pb::ReportMisuseRequest {
            token: token.to_owned(),
            kind: "binding_mismatch".into(),
            evidence: format!(
                "token {} bound to certificate x5t#S256 {} was presented with certificate x5t#S256 {presented}",
                claims.jti, claims.cnf.x5t_s256
            ),
        };
        let mut client = VerifierServiceClient::new(self.channel.clone());
        let (jti, timeout) = (claims.jti.clone(), self.timeout);
        let reported = Arc::clone(&self.reported);
        // The request holds the token: it is moved into the call, never logged.
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, client.report_misuse(request)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    tracing::warn!(%jti, task = %r.task_id, sequence = r.revocation_sequence, "misuse reported: token presented with another client certificate");
                    return;
                }
                Ok(Err(status)) => {
                    tracing::error!(%jti, code = ?status.code(), message = status.message(), "misuse report failed");
                    // A refusal stands; only a broker that could not answer is asked again.
                    let transient = matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                    );
                    if !transient {
                        return;
                    }
                }
                Err(_) => tracing::error!(%jti, "misuse report timed out"),
            }
            // Not on record: the next presentation of the token reports again.
            reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&jti);
        });
    }
}
