//! `mayfly token …`: TokenService, for agents (introspection is the verifier's).
use super::*;

pub(super) async fn run(ch: Channel, out: &Printer, cmd: &TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint { task, scope, ttl } => {
            let r = TokenServiceClient::new(ch)
                .mint_token(pb::MintTokenRequest {
                    task_id: task.clone(),
                    scope: Some(parse_scope(scope)?),
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match &r.approval {
                Some(a) => {
                    eprintln!(
                        "this action needs a security team's approval; wait for it with: mayfly token await {}",
                        a.id
                    );
                    out.print(&json!({ "approval": a }))?;
                }
                None => out.print(&minted(&r)?)?,
            }
        }
        TokenCommand::Await { approval, wait } => {
            let r = await_decision(ch, approval, *wait).await?;
            out.print(&json!({
                "approval": r.approval,
                "token": r.token.as_ref().map(minted).transpose()?,
            }))?;
        }
        TokenCommand::Delegate {
            token,
            to,
            scope,
            ttl,
        } => {
            let r = TokenServiceClient::new(ch)
                .delegate(pb::DelegateRequest {
                    parent_token: token_arg(token)?,
                    sub_agent: to.clone(),
                    scope: Some(parse_scope(scope)?),
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r)?;
        }
        TokenCommand::Redeem { delegation } => {
            let r = TokenServiceClient::new(ch)
                .redeem_delegation(pb::RedeemDelegationRequest {
                    delegation_id: delegation.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&minted(&r)?)?;
        }
        TokenCommand::Introspect { token } => super::verifier::introspect(ch, out, token).await?,
    }
    Ok(())
}

/// A minted token: the answer without its `approval`, which is unset whenever
/// there is a token.
fn minted(r: &pb::MintTokenResponse) -> anyhow::Result<Value> {
    without(r, &["approval"])
}

/// Waits for a decision in calls of at most five minutes until `wait` is used up.
pub(super) async fn await_decision(
    ch: Channel,
    approval: &str,
    wait: Duration,
) -> anyhow::Result<pb::AwaitApprovalResponse> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut client = TokenServiceClient::new(ch);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = client
            .await_approval(pb::AwaitApprovalRequest {
                approval_id: approval.to_string(),
                wait_seconds: u32::try_from(left.as_secs().min(300)).unwrap_or(300),
            })
            .await
            .map_err(status)?
            .into_inner();
        let pending = r
            .approval
            .as_ref()
            .is_some_and(|a| a.state == pb::ApprovalState::Pending as i32);
        if !pending || left.is_zero() {
            return Ok(r);
        }
    }
}
