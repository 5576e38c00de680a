//! `--hold N`: N more mTLS connections as the agent, open and idle for the
//! run, so that what that many connections cost the broker can be read on its
//! host (its RSS). Each makes a `grpc.health.v1` Check at once (the broker
//! closes an authenticated connection that has made no call after
//! `limits.first_request_timeout`), then one every [`REFRESH`], well inside its
//! `limits.idle_timeout` (5 minutes by default), so none is closed as idle.
use crate::client::{Failed, exit};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How often a held connection makes a call.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Connections opened at a time: well under the broker's
/// `limits.max_handshakes`, so that holding takes no handshake slot from the
/// workers' connections.
const OPENING: usize = 16;
/// How long a held connection's check may take.
const CHECK: Duration = Duration::from_secs(10);

/// The held connections, each kept by a task of its own.
pub(super) struct Hold {
    open: Arc<Vec<AtomicBool>>,
    keepers: Vec<JoinHandle<()>>,
}

async fn check(ch: &Channel) -> Result<(), String> {
    let mut client = HealthClient::new(ch.clone());
    let ask = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(CHECK, ask).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {CHECK:?}")),
    }
}

impl Hold {
    /// Opens `n` connections on `endpoint`, each checked once; fails naming
    /// the first failure unless every one opened.
    pub async fn open(endpoint: &Endpoint, n: usize) -> anyhow::Result<Hold> {
        let opened: Vec<Result<Channel, String>> = futures::stream::iter(0..n)
            .map(|_| {
                let endpoint = endpoint.clone();
                async move {
                    let ch = endpoint.connect().await.map_err(|e| {
                        let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
                        format!("{e}{}", cause.unwrap_or_default())
                    })?;
                    check(&ch).await?;
                    Ok(ch)
                }
            })
            .buffer_unordered(OPENING)
            .collect()
            .await;
        let open: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(true)).collect());
        let mut hold = Hold {
            open: open.clone(),
            keepers: Vec::with_capacity(n),
        };
        let mut first_failure = None;
        for (i, r) in opened.into_iter().enumerate() {
            match r {
                Ok(ch) => hold
                    .keepers
                    .push(tokio::spawn(keep(ch, i, n, open.clone()))),
                Err(why) => {
                    first_failure.get_or_insert(why);
                }
            }
        }
        if let Some(why) = first_failure {
            let held = hold.keepers.len();
            hold.stop();
            return Err(Failed {
                code: exit::UNREACHABLE,
                message: format!("--hold {n}: {held} connections opened, then one failed: {why}"),
            }
            .into());
        }
        Ok(hold)
    }

    /// Connections whose last call was answered.
    pub fn open_now(&self) -> usize {
        self.open
            .iter()
            .filter(|o| o.load(Ordering::Relaxed))
            .count()
    }

    /// Closes them all.
    pub fn stop(self) {
        for k in &self.keepers {
            k.abort();
        }
    }
}

/// Keeps connection `i` of `n` busy enough not to be idle: a check every
/// [`REFRESH`], the connections' checks spread across the interval. A
/// connection the broker closed is opened again by the next check (tonic
/// reconnects a channel on its next call).
async fn keep(ch: Channel, i: usize, n: usize, open: Arc<Vec<AtomicBool>>) {
    let mut next = Instant::now() + REFRESH + REFRESH.mul_f64(i as f64 / n.max(1) as f64);
    loop {
        tokio::time::sleep_until(next).await;
        let ok = check(&ch).await.is_ok();
        if let Some(flag) = open.get(i) {
            flag.store(ok, Ordering::Relaxed);
        }
        next += REFRESH;
    }
}

/// Makes room for `fds` file descriptors in this process: raises the soft
/// limit towards the hard one when it is lower, or fails saying how many it
/// may open.
pub(super) fn make_room(fds: u64, what: &str) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return Ok(()); // unlimited
    };
    if current >= fds {
        return Ok(());
    }
    let raised = limit.maximum.map_or(fds, |max| max.min(fds));
    if raised > current {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        )
        .map_err(|e| anyhow::anyhow!("raising the file descriptor limit to {raised}: {e}"))?;
    }
    if raised < fds {
        return Err(Failed {
            code: exit::USAGE,
            message: format!(
                "{what} needs about {fds} file descriptors; this process may open {raised} (ulimit -n)"
            ),
        }
        .into());
    }
    Ok(())
}
