//! Archiving the audit trail: the oldest sealed events are exported to a file of
//! JSON lines and removed from the store, whose chain is then anchored at the
//! last of them. The file verifies offline, with no broker: a header line, then
//! one line per event with every field the hash covers, in chain order from the
//! event the archive starts after (the store's anchor when it was exported).
//! Why an archive request does not match the store is [`Refused`].
//!
//! ```text
//! {"format":"mayfly-audit-archive","version":1,"anchor":{"seq":0,"hash":"00…"},"last":{"seq":2,"hash":"9f…"},"events":2,"before":"2026-11-23T10:00:00Z"}
//! {"seq":1,"prev_hash":"00…","hash":"4c…","at":"…","at_micros":…,"actor":"…","action":"task_opened","outcome":"permit","task":"…","agent":"…","jti":null,"reason":null,"detail":"{\"workflow\": \"support\"}"}
//! ```
use super::chain::{Broken, Checkpoint, Sealed, Verifier, from_hex, to_hex};
use crate::domain::text::{quote, rfc3339};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The header's `format`.
pub const FORMAT: &str = "mayfly-audit-archive";
/// The header's `version`: the one this code writes and reads.
pub const VERSION: u32 = 1;

/// Why an export or an archive of the audit trail was refused: the request
/// does not match the store as it is now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("event {seq} is not sealed yet: the chain's head is at event {head}")]
    NotSealed { seq: u64, head: u64 },
    #[error(
        "event {seq} is archived already: the stored chain starts after event {anchor}; export again"
    )]
    Archived { seq: u64, anchor: u64 },
    #[error(
        "the store's anchor moved to event {anchor} meanwhile (another archive ran); export again"
    )]
    AnchorMoved { anchor: u64 },
    #[error(
        "event {seq} is missing from the store: the chain is broken (run `mayfly audit verify`)"
    )]
    Missing { seq: u64 },
    #[error(
        "event {seq} has another hash than {given} in the store: the archive does not match it"
    )]
    HashDiffers { seq: u64, given: String },
    #[error("event {seq} is dated {}, not before {}", rfc3339(*.at), rfc3339(*.before))]
    NotBefore {
        seq: u64,
        at: OffsetDateTime,
        before: OffsetDateTime,
    },
    #[error(
        "the stored chain is broken at event {}: {}; archiving would remove the evidence (run `mayfly audit verify`)",
        .0.seq, .0.why
    )]
    Broken(Broken),
    #[error(
        "checkpoint_sequence: event {seq} was archived (the stored chain starts after event {anchor}); verify the archive that holds it against this checkpoint (`mayfly audit verify-archive <file> --checkpoint`)"
    )]
    CheckpointArchived { seq: u64, anchor: u64 },
}

/// A position and hash as the file writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    seq: u64,
    hash: String,
}

impl From<&Checkpoint> for Position {
    fn from(c: &Checkpoint) -> Self {
        Position {
            seq: c.seq,
            hash: to_hex(&c.hash),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    /// The event the archive starts after.
    anchor: Position,
    /// The archive's last event.
    last: Position,
    events: u64,
    /// Every event in the archive is dated before this (RFC 3339).
    before: String,
}

/// An event's line: every field its hash covers, as the store renders them
/// (the detail as the exact text hashed), and its time in RFC 3339 for people
/// (checked against `at_micros`, which the hash covers).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    prev_hash: String,
    hash: String,
    at: String,
    at_micros: i64,
    actor: String,
    action: String,
    outcome: String,
    task: Option<String>,
    agent: Option<String>,
    jti: Option<String>,
    reason: Option<String>,
    detail: String,
}

/// What an archive holds, by its header (and, once verified, its events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The event the archive starts after: the previous archive's last event, or
    /// the genesis.
    pub anchor: Checkpoint,
    /// The last event: the checkpoint to keep.
    pub last: Checkpoint,
    pub events: u64,
    pub before: OffsetDateTime,
}

/// The header line of an archive of the events after `anchor` up to `last`,
/// all dated before `before`.
pub fn header_line(
    anchor: &Checkpoint,
    last: &Checkpoint,
    before: OffsetDateTime,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Header {
        format: FORMAT.into(),
        version: VERSION,
        anchor: anchor.into(),
        last: last.into(),
        events: last.seq.saturating_sub(anchor.seq),
        before: rfc3339(before),
    })
}

/// An event's line.
pub fn event_line(e: &Sealed) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Line {
        seq: e.seq,
        prev_hash: to_hex(&e.prev_hash),
        hash: to_hex(&e.hash),
        at: at_text(e.at_micros),
        at_micros: e.at_micros,
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        task: e.task.clone(),
        agent: e.agent.clone(),
        jti: e.jti.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
    })
}

fn at_text(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// A line that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct Bad {
    /// 1 is the header.
    pub line: u64,
    pub why: String,
}

/// Checks an archive fed to it line by line (each without its newline): every
/// hash recomputed, positions gap-free from the header's anchor, every event
/// dated before the header's time, the last one the header's, and a checkpoint,
/// if given, passed through (or the anchor or the last event).
pub struct ArchiveVerifier {
    line: u64,
    checkpoint: Option<Checkpoint>,
    open: Option<(Summary, Verifier)>,
}

impl ArchiveVerifier {
    pub fn new(checkpoint: Option<Checkpoint>) -> Self {
        ArchiveVerifier {
            line: 0,
            checkpoint,
            open: None,
        }
    }

    /// Checks the next line.
    pub fn push(&mut self, text: &str) -> Result<(), Bad> {
        self.line += 1;
        let line = self.line;
        let bad = |why: String| Bad { line, why };
        let Some((summary, chain)) = &mut self.open else {
            let (summary, chain) = self.header(text).map_err(bad)?;
            self.open = Some((summary, chain));
            return Ok(());
        };
        let e = event(text).map_err(bad)?;
        if chain.last_seq() >= summary.last.seq {
            return Err(bad(format!(
                "event {}: the header says the archive ends at event {}",
                e.seq, summary.last.seq
            )));
        }
        chain
            .push(&e)
            .map_err(|b| bad(format!("event {}: {}", b.seq, b.why)))?;
        let before = summary.before;
        if micros(before) <= i128::from(e.at_micros) {
            return Err(bad(format!(
                "event {} is dated {}, not before the header's {}",
                e.seq,
                at_text(e.at_micros),
                rfc3339(before)
            )));
        }
        Ok(())
    }

    /// Checks that the archive ended where its header says.
    pub fn finish(self) -> Result<Summary, Bad> {
        let line = self.line + 1;
        let Some((summary, chain)) = self.open else {
            return Err(Bad {
                line: 1,
                why: "the file is empty: no header line".into(),
            });
        };
        if chain.last_seq() != summary.last.seq {
            return Err(Bad {
                line,
                why: format!(
                    "the archive ends at event {}, but its header says it holds events up to {} (cut short)",
                    chain.last_seq(),
                    summary.last.seq
                ),
            });
        }
        if chain.last_hash() != summary.last.hash.as_slice() {
            return Err(Bad {
                line: self.line,
                why: format!(
                    "event {} has another hash than the header's last event",
                    summary.last.seq
                ),
            });
        }
        Ok(summary)
    }

    fn header(&self, text: &str) -> Result<(Summary, Verifier), String> {
        let h: Header = parse(text, "an archive header")?;
        if h.format != FORMAT {
            return Err(format!(
                "not a Mayfly audit archive: format is {}, not {FORMAT:?}",
                quote(&h.format)
            ));
        }
        if h.version != VERSION {
            return Err(format!(
                "archive format version {} is not supported (this mayfly reads version {VERSION})",
                h.version
            ));
        }
        let anchor = Checkpoint::new(h.anchor.seq, hex("anchor.hash", &h.anchor.hash)?);
        let last = Checkpoint::new(h.last.seq, hex("last.hash", &h.last.hash)?);
        let before = OffsetDateTime::parse(&h.before, &Rfc3339)
            .map_err(|_| format!("before: {} is not an RFC 3339 time", quote(&h.before)))?;
        if last.seq < anchor.seq || h.events != last.seq - anchor.seq {
            return Err(format!(
                "the header's count ({} events) does not fit its positions (after event {}, up to event {})",
                h.events, anchor.seq, last.seq
            ));
        }
        if last.seq == anchor.seq && last.hash != anchor.hash {
            return Err("an archive of no events ends where it starts, with the same hash".into());
        }
        let mut chain = Verifier::after(anchor.clone());
        if let Some(c) = &self.checkpoint {
            let start = &anchor;
            if c.seq < start.seq || c.seq > last.seq {
                return Err(format!(
                    "the checkpoint's event {} is not in this archive, which holds events {} to {} (after event {})",
                    c.seq,
                    start.seq.saturating_add(1),
                    last.seq,
                    start.seq
                ));
            }
            if c.seq == start.seq && c.hash != start.hash {
                return Err(format!(
                    "the archive starts after event {}, whose hash differs from the checkpoint's (it does not continue the chain the checkpoint was taken from)",
                    start.seq
                ));
            }
            if c.seq == last.seq && c.hash != last.hash {
                return Err(format!(
                    "the header's last event {} has another hash than the checkpoint's",
                    last.seq
                ));
            }
            chain = chain.through(c.clone());
        }
        let summary = Summary {
            anchor,
            last,
            events: h.events,
            before,
        };
        Ok((summary, chain))
    }
}

fn micros(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos().div_euclid(1000)
}

/// An event's line as the chain's hash covers it.
fn event(text: &str) -> Result<Sealed, String> {
    let l: Line = parse(text, "an audit event")?;
    let at = OffsetDateTime::parse(&l.at, &Rfc3339)
        .map_err(|_| format!("at: {} is not an RFC 3339 time", quote(&l.at)))?;
    if micros(at) != i128::from(l.at_micros) || at.nanosecond() % 1000 != 0 {
        return Err(format!(
            "event {}: at {} is not its at_micros {}",
            l.seq,
            quote(&l.at),
            l.at_micros
        ));
    }
    Ok(Sealed {
        seq: l.seq,
        prev_hash: hex("prev_hash", &l.prev_hash)?,
        hash: hex("hash", &l.hash)?,
        at_micros: l.at_micros,
        actor: l.actor,
        action: l.action,
        outcome: l.outcome,
        task: l.task,
        agent: l.agent,
        jti: l.jti,
        reason: l.reason,
        detail: l.detail,
    })
}

fn hex(field: &str, s: &str) -> Result<Vec<u8>, String> {
    from_hex(s).ok_or_else(|| format!("{field}: {} is not 64 hex digits (SHA-256)", quote(s)))
}

/// `text` as JSON of type `T`; the error is serde's, without its position in the
/// line (the caller names the line) and cut short, since it may quote the value.
fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let why = full
            .rsplit_once(" at line ")
            .map_or(full.as_str(), |(w, _)| w);
        format!("not {what}: {} (column {})", short(why), e.column())
    })
}

/// At most [`SHORT`] characters of `s`, hidden and control characters escaped.
fn short(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == SHORT {
            out.push('…');
            break;
        }
        if c.is_control() || crate::domain::text::is_hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

const SHORT: usize = 100;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
