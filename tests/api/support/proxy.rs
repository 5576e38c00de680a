//! A TCP proxy the test can cut or black-hole, in front of PostgreSQL or a broker.
use super::db::{TestDb, admin_url};
use std::net::SocketAddr;
use std::sync::Arc;

/// A TCP proxy (in front of PostgreSQL, or of a broker) that the test can cut
/// (every connection through it is closed and new ones are closed at once, as
/// when the far end is down), black-hole (connections stay open and nothing goes
/// through, as when the far end's host or network is gone) and restore, counting
/// the bytes sent through it.
pub struct Proxy {
    pub addr: SocketAddr,
    state: tokio::sync::watch::Sender<Far>,
    /// Bytes from the near end to the far end.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Far {
    Up,
    Down,
    Gone,
}

impl Proxy {
    /// In front of the PostgreSQL server of `DATABASE_URL`.
    pub async fn to_postgres() -> Proxy {
        let url = admin_url();
        let after = url
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or("127.0.0.1:5432/");
        Self::to(after.split('/').next().unwrap().to_string()).await
    }

    /// In front of `upstream` (host:port).
    pub async fn to(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = tokio::sync::watch::channel(Far::Up);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, counter) = (state.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut far = st.subscribe();
                let now = *far.borrow_and_update();
                match now {
                    Far::Down => continue, // closed at once
                    Far::Gone => {
                        // Held open, never answered, until the far end is back.
                        tokio::spawn(async move {
                            let _client = client;
                            let _ = far.wait_for(|f| *f == Far::Up).await;
                        });
                        continue;
                    }
                    Far::Up => {}
                }
                let (upstream, counter) = (upstream.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let ended = tokio::select! {
                        f = far.wait_for(|f| *f != Far::Up) => f.map(|f| *f).ok(),
                        _ = up => None,
                        _ = down => None,
                    };
                    if ended == Some(Far::Gone) {
                        // Nothing goes through any more; the sockets stay open.
                        let _ = far.wait_for(|f| *f == Far::Up).await;
                    }
                });
            }
        });
        Proxy { addr, state, sent }
    }

    /// The database `db`, reached through this proxy.
    pub fn url_of(&self, db: &TestDb) -> String {
        let name = db.url.rsplit('/').next().unwrap();
        let user = admin_url()
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| u.to_string())
            .unwrap_or("postgres".into());
        format!("postgres://{user}@{}/{name}", self.addr)
    }

    /// The far end is down: connections are closed.
    pub fn cut(&self) {
        self.state.send_replace(Far::Down);
    }

    /// The far end is gone: connections stay open and nothing answers.
    pub fn black_hole(&self) {
        self.state.send_replace(Far::Gone);
    }

    pub fn restore(&self) {
        self.state.send_replace(Far::Up);
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}
