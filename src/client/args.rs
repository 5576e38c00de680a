//! The flags' values a command parses: scopes, checkpoints, tokens (or stdin),
//! freeze targets and time windows. A bad value is a usage error (exit 2).
use super::*;

/// "audience resource action", as the CLI takes scopes.
pub fn parse_scope(s: &str) -> anyhow::Result<pb::Scope> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    match parts.as_slice() {
        [a, r, x] => Ok(pb::Scope {
            audience: a.to_string(),
            resource: r.to_string(),
            action: x.to_string(),
        }),
        _ => Err(usage(format!(
            "scope {s:?} must be three words: \"<audience> <resource> <action>\""
        ))),
    }
}

/// `--checkpoint "<sequence>:<hash>"`, as `mayfly audit verify` printed it.
pub(super) fn parse_checkpoint(c: &str) -> anyhow::Result<(u64, String)> {
    let (seq, hash) = c
        .split_once(':')
        .ok_or_else(|| usage("--checkpoint must be \"<sequence>:<hash>\"".into()))?;
    let seq = seq
        .parse()
        .map_err(|_| usage(format!("--checkpoint sequence {seq:?} is not a number")))?;
    Ok((seq, hash.to_string()))
}

/// A token argument, or stdin for `-`.
pub(super) fn token_arg(token: &str) -> anyhow::Result<String> {
    if token != "-" {
        return Ok(token.to_string());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("reading the token from stdin")?;
    Ok(s.trim().to_string())
}

pub(super) fn freeze_target(t: &FreezeTargetArg) -> pb::FreezeTarget {
    use pb::freeze_target::Target as T;
    pb::FreezeTarget {
        target: Some(match t {
            FreezeTargetArg::Agent { agent } => T::Agent(agent.clone()),
            FreezeTargetArg::Workflow { workflow } => T::Workflow(workflow.clone()),
            FreezeTargetArg::All => T::All(true),
        }),
    }
}

/// RFC 3339, or a duration ago ("90m", "1h").
pub(super) fn when(
    flag: &str,
    s: &Option<String>,
) -> anyhow::Result<Option<prost_types::Timestamp>> {
    let Some(s) = s else { return Ok(None) };
    let t = match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                usage(format!(
                    "{flag} {s:?} is neither an RFC 3339 time nor a duration ago (e.g. 1h)"
                ))
            })?;
            // humantime reads up to 584 billion years; time's calendar starts in
            // year -9999.
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| time::OffsetDateTime::now_utc().checked_sub(ago))
                .ok_or_else(|| {
                    usage(format!(
                        "{flag} {s:?} reaches before the earliest time there is"
                    ))
                })?
        }
    };
    Ok(Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }))
}
