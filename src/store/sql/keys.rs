//! Signing keys: the public half of every broker's key, while it may verify.
use super::*;

#[async_trait]
impl KeyStore for SqlStore {
    async fn register_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::RegisterKey).await?;
        // A new key, or a renewal of the same key (never a different key under a kid
        // that exists).
        let existed = tx
            .fetch_optional(query("SELECT kid FROM signing_keys WHERE kid = $1").bind(&k.kid))
            .await?
            .is_some();
        tx.execute(
            query(
                "INSERT INTO signing_keys (kid, public_key, created_at, not_after) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kid) DO UPDATE SET not_after = CASE
                     WHEN signing_keys.not_after > excluded.not_after THEN signing_keys.not_after
                     ELSE excluded.not_after END
                 WHERE signing_keys.public_key = excluded.public_key",
            )
            .bind(&k.kid)
            .bind(&k.public_key)
            .bind(k.created_at)
            .bind(k.not_after),
        )
        .await?;
        if !existed {
            // Every broker serves its JWKS from memory: a new key is announced.
            tx.notify(Notice::KeysChanged).await?;
        }
        tx.commit().await
    }

    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(
                query(
                    "SELECT kid, public_key, created_at, not_after FROM signing_keys
                     WHERE not_after > $1 ORDER BY created_at",
                )
                .bind(now),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.text("kid")?,
                    public_key: r.bytes("public_key")?,
                    created_at: r.time("created_at")?,
                    not_after: r.time("not_after")?,
                })
            })
            .collect()
    }
}
