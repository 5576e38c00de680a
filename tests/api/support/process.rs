//! `mayfly serve` as a child process, for what only a real process shows.
use super::pki::mtls_channel;
use super::requests::http_get;
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::identity::devcerts::{DevCa, Issued};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

/// `mayfly serve` as a child process on free ports, for what only a real process
/// shows: its log, signals, its exit.
pub struct Served {
    pub child: tokio::process::Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The log, read as it is written (a full pipe would stall the broker).
    log: tokio::task::JoinHandle<String>,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Served {
    /// Starts `mayfly serve --config <config>` and waits until `/readyz` answers
    /// 200; stderr (the log) is piped.
    pub async fn start(config: &std::path::Path) -> Served {
        Self::start_with(config, None).await
    }

    /// As [`Served::start`], with the process limited to `nofile` file
    /// descriptors (by prlimit(1)).
    pub async fn start_with(config: &std::path::Path, nofile: Option<u64>) -> Served {
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_mayfly"));
                c
            }
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly")),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("MAYFLY_DATABASE_URL")
            .env("MAYFLY_GRPC_ADDR", grpc.to_string())
            .env("MAYFLY_HTTP_ADDR", http.to_string())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = child;
        let mut stderr = child.stderr.take().expect("piped stderr");
        let log = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            // Kept up to 8 MiB; past that it is read and dropped.
            let (mut kept, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < 8 << 20 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        let served = Served {
            child,
            grpc,
            http,
            log,
        };
        for _ in 0..200 {
            if !served.readyz().await.is_empty() {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mayfly serve did not become ready within 10s");
    }

    /// The body of `/readyz` when it answers 200, else empty.
    pub async fn readyz(&self) -> String {
        if tokio::net::TcpStream::connect(self.http).await.is_err() {
            return String::new();
        }
        match tokio::time::timeout(Duration::from_secs(2), http_get(self.http, "/readyz")).await {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    /// Sends `signal` (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub async fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let (log, status) = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(self.log, self.child.wait())
        })
        .await
        .expect("mayfly serve exits after SIGTERM");
        (status.unwrap(), log.unwrap())
    }

    /// An mTLS channel to the process as `identity`.
    pub async fn channel(&self, ca: &DevCa, identity: &Issued) -> Channel {
        mtls_channel(self.grpc, ca, Some(identity)).await.unwrap()
    }

    /// A call as `identity` (none: no client certificate).
    pub async fn list_tasks_as(
        &self,
        ca: &DevCa,
        identity: Option<&Issued>,
    ) -> Result<pb::ListTasksResponse, tonic::Status> {
        let ch = mtls_channel(self.grpc, ca, identity)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect failed: {e}")))?;
        TaskServiceClient::new(ch)
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .map(|r| r.into_inner())
    }
}
