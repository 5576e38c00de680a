//! `mayfly token introspect`, `mayfly watch`, `mayfly jwks`: VerifierService,
//! for resource servers.
use super::*;

pub(super) async fn introspect(ch: Channel, out: &Printer, token: &str) -> anyhow::Result<()> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the token from stdin")?;
        s.trim().to_string()
    } else {
        token.to_string()
    };
    let r = VerifierServiceClient::new(ch)
        .introspect(pb::IntrospectRequest { token })
        .await
        .map_err(status)?
        .into_inner();
    let claims: Value = if r.active {
        serde_json::from_str(&r.claims_json).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    out.print(&json!({"active": r.active, "claims": claims}))?;
    Ok(())
}

pub(super) async fn watch(ch: Channel, out: &Printer, after: u64) -> anyhow::Result<()> {
    let mut stream = VerifierServiceClient::new(ch)
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: after,
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    // Events as JSON lines; heartbeats only keep the stream honest.
    while let Some(msg) = stream.message().await.map_err(status)? {
        if let Some(pb::watch_revocations_response::Kind::Event(ev)) = msg.kind
            && !out.emit_line(&serde_json::to_string(&ev)?)?
        {
            return Ok(());
        }
    }
    Ok(())
}

pub(super) async fn jwks(ch: Channel, out: &Printer) -> anyhow::Result<()> {
    let r = VerifierServiceClient::new(ch)
        .get_jwks(pb::GetJwksRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let v: Value =
        serde_json::from_str(&r.jwks_json).context("the broker sent invalid JWKS JSON")?;
    out.print(&v)?;
    Ok(())
}
