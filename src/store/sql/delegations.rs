//! Delegations: an offer of a narrower token to a sub-agent, and its one
//! redemption. In PostgreSQL locks follow the store's order: tasks before tokens
//! (a redemption takes its task's row in the token write, then its ancestors'),
//! so a concurrent revocation cannot deadlock with it.
use super::dialect;
use super::tokens::record;
use super::*;

const DELEGATION_COLUMNS: &str = "id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at, redeemed_at, child_jti";

fn delegation_from_row(r: &Row) -> Result<Delegation, StoreError> {
    Ok(Delegation {
        id: r.uuid("id")?,
        task: TaskId(r.uuid("task_id")?),
        parent_jti: r.uuid("parent_jti")?,
        delegator: r.spiffe_id("delegator")?,
        sub_agent: r.spiffe_id("sub_agent")?,
        scope: scope(r)?,
        depth: r.u32("depth")?,
        act: r.json("act")?,
        ancestors: r.json("ancestors")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        redeemed_at: r.time_opt("redeemed_at")?,
        child_jti: r.uuid_opt("child_jti")?,
    })
}

#[async_trait]
impl DelegationStore for SqlStore {
    async fn insert_delegation(
        &self,
        d: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::InsertDelegation).await?;
        // Offers of one parent take turns (its row lock), so the limit holds.
        tx.execute(
            query(format!(
                "SELECT 1 FROM tokens WHERE jti = $1 {}",
                dialect::lock(db, "FOR NO KEY UPDATE")
            ))
            .bind(d.parent_jti),
        )
        .await?;
        let open = tx
            .fetch_one(
                query(
                    "SELECT count(*) AS n FROM delegations
                     WHERE parent_jti = $1 AND redeemed_at IS NULL AND expires_at > $2",
                )
                .bind(d.parent_jti)
                .bind(d.created_at),
            )
            .await?
            .u64("n")?;
        if open >= u64::from(open_limit) {
            return Ok(false);
        }
        tx.execute(
            query(
                "INSERT INTO delegations (id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(d.id)
            .bind(d.task.0)
            .bind(d.parent_jti)
            .bind(&d.delegator)
            .bind(&d.sub_agent)
            .bind(&d.scope.audience)
            .bind(&d.scope.resource)
            .bind(&d.scope.action)
            .bind(d.depth)
            .bind(d.act.clone())
            .bind(json(&d.ancestors)?)
            .bind(d.created_at)
            .bind(d.expires_at),
        )
        .await?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_delegation(&self, id: Uuid) -> Result<Option<Delegation>, StoreError> {
        let db = &self.db;
        let row = db
            .fetch_optional(
                query(format!(
                    "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        row.as_ref().map(delegation_from_row).transpose()
    }

    async fn redeem_delegation(
        &self,
        id: Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError> {
        let db = &self.db;
        let now = child.issued_at;
        let mut tx = db.begin(Write::RedeemDelegation).await?;
        // The offer's row lock makes two redemptions take turns: the second sees the
        // first's redemption.
        let offer = tx
            .fetch_optional(
                query(format!(
                    "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE id = $1 {}",
                    dialect::lock(db, "FOR UPDATE")
                ))
                .bind(id),
            )
            .await?;
        let Some(offer) = offer.as_ref().map(delegation_from_row).transpose()? else {
            return Ok(Redeem::NotFound);
        };
        if offer.redeemed_at.is_some() {
            return Ok(Redeem::AlreadyRedeemed);
        }
        if offer.expires_at <= now {
            return Ok(Redeem::Expired);
        }
        let parent = offer.parent_jti;
        if child.parent != Some(parent)
            || child.task != offer.task
            || offer.ancestors.last() != Some(&parent)
        {
            return Err(StoreError::Other(format!(
                "delegation {id}: the child token does not descend from its parent"
            )));
        }
        let owner = tx
            .fetch_one(query("SELECT agent FROM tasks WHERE id = $1").bind(offer.task.0))
            .await?
            .spiffe_id("agent")?;
        // The task's row first (the token write takes it), then the ancestors'.
        if let Err(refusal) = record(db, &mut tx, child, &owner, budget, audit).await? {
            tx.rollback().await?;
            return Ok(Redeem::Refused(refusal));
        }
        // Every ancestor present and unrevoked. PostgreSQL share-locks each, root
        // first (the foreign key's key-share lock would not conflict with a
        // revocation's update): a revocation that holds any of them is waited for,
        // and one that comes later waits for this commit, so its cascade sees this
        // child. Root first, as a chain names each agent once, so no revocation
        // holds two of them.
        for jti in &offer.ancestors {
            let row = tx
                .fetch_optional(
                    query(format!(
                        "SELECT revoked_at FROM tokens WHERE jti = $1 {}",
                        dialect::lock(db, "FOR SHARE")
                    ))
                    .bind(*jti),
                )
                .await?;
            let live = match row {
                Some(r) => r.time_opt("revoked_at")?.is_none(),
                None => false,
            };
            if !live {
                tx.rollback().await?;
                return Ok(Redeem::ParentRevoked);
            }
        }
        tx.execute(
            query("UPDATE delegations SET redeemed_at = $2, child_jti = $3 WHERE id = $1")
                .bind(id)
                .bind(now)
                .bind(child.jti),
        )
        .await?;
        tx.commit().await?;
        Ok(Redeem::Redeemed)
    }
}
