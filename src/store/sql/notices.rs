//! Notices of what a broker committed (revocations, approval decisions, new
//! keys), for every broker on the database: PostgreSQL LISTEN/NOTIFY, delivered
//! at commit in commit order; SQLite's one broker tells its own feeds through a
//! broadcast once the commit is through (there is no other broker to tell).
use super::driver::{Conn, Db, map_err};
use crate::store::{Notice, RevocationFeed, StoreError};
use async_trait::async_trait;
use tokio::sync::broadcast;

/// The LISTEN/NOTIFY channel of revocation commits (the payload is the sequence
/// number), approval decisions ([`APPROVAL_NOTICE`]) and new keys ([`KEYS_NOTICE`]).
pub(super) const CHANNEL: &str = "mayfly_revocations";
const APPROVAL_NOTICE: &str = "approval";
const KEYS_NOTICE: &str = "keys";
/// How many notices a slow SQLite feed may fall behind before it is told to
/// catch up.
pub(super) const FEED_CAPACITY: usize = 1024;

/// What a notice says on the channel.
pub(super) fn payload(n: Notice) -> String {
    match n {
        Notice::Revocation(seq) => seq.to_string(),
        Notice::ApprovalDecided => APPROVAL_NOTICE.into(),
        Notice::KeysChanged => KEYS_NOTICE.into(),
    }
}

impl Db {
    /// Starts listening for notices committed by any broker on this database.
    pub async fn feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        Ok(match &self.conn {
            Conn::Postgres(p) => {
                let mut listener = sqlx::postgres::PgListener::connect_with(p)
                    .await
                    .map_err(map_err)?;
                listener.listen(CHANNEL).await.map_err(map_err)?;
                Box::new(PgFeed { listener })
            }
            Conn::Sqlite(l) => Box::new(LocalFeed {
                rx: l.notices.subscribe(),
            }),
        })
    }
}

/// [`RevocationFeed`] over PostgreSQL LISTEN/NOTIFY, on a connection of its own.
struct PgFeed {
    listener: sqlx::postgres::PgListener,
}

#[async_trait]
impl RevocationFeed for PgFeed {
    async fn next(&mut self) -> Result<Option<Notice>, StoreError> {
        loop {
            match self.listener.try_recv().await.map_err(map_err)? {
                // sqlx re-LISTENs on the new connection by itself.
                None => return Ok(None),
                Some(n) => match n.payload() {
                    APPROVAL_NOTICE => return Ok(Some(Notice::ApprovalDecided)),
                    KEYS_NOTICE => return Ok(Some(Notice::KeysChanged)),
                    p => match p.parse::<u64>() {
                        Ok(seq) => return Ok(Some(Notice::Revocation(seq))),
                        // Not ours (someone else NOTIFYing on the channel): ignore.
                        Err(_) => continue,
                    },
                },
            }
        }
    }
}

/// [`RevocationFeed`] over this process's notices (SQLite: there is no other
/// broker to tell).
struct LocalFeed {
    rx: broadcast::Receiver<Notice>,
}

#[async_trait]
impl RevocationFeed for LocalFeed {
    async fn next(&mut self) -> Result<Option<Notice>, StoreError> {
        match self.rx.recv().await {
            Ok(n) => Ok(Some(n)),
            // Fell behind: notices were dropped, so the caller reads the store.
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(None),
            Err(broadcast::error::RecvError::Closed) => {
                Err(StoreError::Unavailable("the store is closed".into()))
            }
        }
    }
}
