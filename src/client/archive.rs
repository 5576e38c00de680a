//! `mayfly audit archive` and `mayfly audit verify-archive`: the oldest audit
//! events exported to a file that verifies offline (`domain::audit::archive`),
//! then removed from the store; and an archive verified with no broker.
use super::*;
use crate::domain::audit::archive::{ArchiveVerifier, Bad, Summary, event_line, header_line};
use crate::domain::audit::chain::{Checkpoint, Sealed, from_hex};
use crate::domain::text::rfc3339;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use time::OffsetDateTime;

/// Events asked for per ExportAudit page (the broker bounds a page in bytes).
const PAGE: u32 = 1000;

/// The largest ExportAudit answer read: one event may be as large as the
/// largest request the broker takes (a task's objective, up to 16 MiB), escaped.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The longest line an archive may have (an event with such an objective).
const MAX_LINE: u64 = 64 << 20;

pub(super) async fn archive(
    ch: Channel,
    out: &Printer,
    before: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let before = at_micros(when("--before", &Some(before.to_string()))?)?;
    // Asked before the broker is (creating the file below is what guarantees it).
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let mut client = AdminServiceClient::new(ch).max_decoding_message_size(MAX_ANSWER_BYTES);
    let first = client
        .export_audit(pb::ExportAuditRequest {
            before: Some(timestamp(before)),
            limit: PAGE,
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    let anchor = checkpoint_of("anchor", first.anchor.as_ref())?;
    let through = checkpoint_of("through", first.through.as_ref())?;
    if through.seq == anchor.seq {
        return out.print(&json!({
            "archived": false,
            "message": format!(
                "nothing to archive: no event after event {} is dated before {}; no file written",
                anchor.seq,
                rfc3339(before)
            ),
            "anchor": anchor.to_string(),
        }));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(path),
            _ => anyhow::Error::new(e).context(format!("--out {}", path.display())),
        })?;
    // Until the file is written and verifies, it is not an archive: removed.
    let written = async {
        let n = export(&mut client, file, first, &anchor, &through, before).await?;
        sync_dir(path)?;
        match verify_file(path, None)? {
            Ok(s) if s.anchor == anchor && s.last == through && s.events == n => Ok(s),
            Ok(_) => bail!("the written archive does not hold what the broker exported"),
            Err(bad) => bail!("the written archive does not verify: {bad}"),
        }
    }
    .await;
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(e.context(format!("exporting to {} (removed)", path.display())));
        }
    };
    // The file is an archive now: kept whatever the broker answers (an answer
    // lost after the commit would otherwise lose the only copy).
    let done = client
        .archive_audit(pb::ArchiveAuditRequest {
            through_sequence: through.seq,
            through_hash: crate::domain::audit::chain::to_hex(&through.hash),
            before: Some(timestamp(before)),
        })
        .await
        .map_err(|e| {
            let e = status(e);
            let kept = format!(
                "{} is written and verifies (kept), but the broker did not archive",
                path.display()
            );
            match e.downcast::<Failed>() {
                Ok(f) => Failed {
                    code: f.code,
                    message: format!("{kept}: {}", f.message),
                }
                .into(),
                Err(e) => e.context(kept),
            }
        })?
        .into_inner();
    let now = checkpoint_of("anchor", done.anchor.as_ref())?;
    out.print(&json!({
        "archived": true,
        "file": path.display().to_string(),
        "events_archived": done.events_archived,
        "events_removed": done.events_removed,
        "first": summary.anchor.seq.saturating_add(1),
        "last": summary.last.seq,
        "before": rfc3339(before),
        "anchor": summary.anchor.to_string(),
        "checkpoint": now.to_string(),
    }))
}

fn exists(path: &Path) -> anyhow::Error {
    usage(format!(
        "--out {}: the file exists; an archive is never overwritten",
        path.display()
    ))
}

/// Writes the header and every page of the export to `file`, then flushes and
/// syncs it; returns how many events it wrote.
async fn export(
    client: &mut AdminServiceClient<Channel>,
    file: std::fs::File,
    mut page: pb::ExportAuditResponse,
    anchor: &Checkpoint,
    through: &Checkpoint,
    before: OffsetDateTime,
) -> anyhow::Result<u64> {
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{}", header_line(anchor, through, before)?)?;
    let mut n = 0;
    loop {
        for e in &page.events {
            writeln!(w, "{}", event_line(&sealed_of(e)?)?)?;
            n += 1;
        }
        if page.next_after == 0 {
            break;
        }
        page = client
            .export_audit(pb::ExportAuditRequest {
                through_sequence: through.seq,
                after_sequence: page.next_after,
                limit: PAGE,
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        if checkpoint_of("through", page.through.as_ref())? != *through {
            bail!("the export's last event changed while it was read");
        }
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(n)
}

/// The directory entry of a new file survives a crash too.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Directories cannot be opened (nor need this) everywhere.
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all()
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// `mayfly audit verify-archive <file> [--checkpoint <seq>:<hash>]`, offline.
pub(super) fn verify(out: &Printer, file: &Path, checkpoint: Option<&str>) -> anyhow::Result<()> {
    let checkpoint = checkpoint
        .map(|c| Checkpoint::parse(c).map_err(|why| usage(format!("--checkpoint: {why}"))))
        .transpose()?;
    match verify_file(file, checkpoint)? {
        Ok(s) => out.print(&json!({
            "intact": true,
            "file": file.display().to_string(),
            "events": s.events,
            "first": s.anchor.seq.saturating_add(1),
            "last": s.last.seq,
            "before": rfc3339(s.before),
            "anchor": s.anchor.to_string(),
            "checkpoint": s.last.to_string(),
        })),
        Err(bad) => {
            // A broken archive fails the command whatever became of its output.
            let _ = out.print(&json!({
                "intact": false,
                "file": file.display().to_string(),
                "line": bad.line,
                "problem": bad.why,
            }));
            Err(Failed {
                code: 1,
                message: format!("{} is not an intact archive: {bad}", file.display()),
            }
            .into())
        }
    }
}

/// Verifies the archive at `path` line by line; an error reading it is the
/// outer error, a line that does not verify the inner one.
fn verify_file(
    path: &Path,
    checkpoint: Option<Checkpoint>,
) -> anyhow::Result<Result<Summary, Bad>> {
    let file = std::fs::File::open(path).map_err(|e| Failed {
        code: exit::USAGE,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut r = std::io::BufReader::new(file);
    let mut v = ArchiveVerifier::new(checkpoint);
    let (mut buf, mut line) = (Vec::new(), 0);
    loop {
        buf.clear();
        let n = (&mut r)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() as u64 > MAX_LINE {
            let why = format!("longer than {MAX_LINE} bytes");
            return Ok(Err(Bad { line, why }));
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            let why = "not UTF-8 text".to_string();
            return Ok(Err(Bad { line, why }));
        };
        if let Err(bad) = v.push(text) {
            return Ok(Err(bad));
        }
    }
    Ok(v.finish())
}

fn checkpoint_of(field: &str, c: Option<&pb::AuditCheckpoint>) -> anyhow::Result<Checkpoint> {
    let c = c.ok_or_else(|| anyhow::anyhow!("the broker's answer has no {field}"))?;
    let hash = from_hex(&c.hash)
        .ok_or_else(|| anyhow::anyhow!("the broker's {field} hash is not 64 hex digits"))?;
    Ok(Checkpoint::new(c.sequence, hash))
}

fn sealed_of(e: &pb::SealedAuditEvent) -> anyhow::Result<Sealed> {
    let hex = |what: &str, h: &str| {
        from_hex(h).ok_or_else(|| {
            anyhow::anyhow!(
                "the broker sent event {} with a {what} that is not 64 hex digits",
                e.sequence
            )
        })
    };
    Ok(Sealed {
        seq: e.sequence,
        prev_hash: hex("prev_hash", &e.prev_hash)?,
        hash: hex("hash", &e.hash)?,
        at_micros: e.at_micros,
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        task: e.task_id.clone(),
        agent: e.agent.clone(),
        jti: e.jti.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
    })
}

/// A `--before` time, to the microsecond the store keeps (the header says the
/// time the broker checks).
fn at_micros(t: Option<prost_types::Timestamp>) -> anyhow::Result<OffsetDateTime> {
    let t = t.ok_or_else(|| usage("--before is required".into()))?;
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos / 1000 * 1000);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| usage("--before is not a valid time".into()))
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}
