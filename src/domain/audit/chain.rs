//! The audit hash chain. The store seals every event as it commits (one that
//! arrived unsealed, from an older broker, soon after): its position
//! (`seq`, gap-free from 1), the previous event's hash and its own, SHA-256 over a
//! canonical encoding (migrations/20261123000003_audit_chain.sql computes it in
//! PostgreSQL; [`hash`] computes the same here, independently). [`Verifier`]
//! walks the stored chain in order and names the first event that breaks it.
//! Archiving removes the oldest events from the store: the stored chain then
//! starts after its anchor, a [`Checkpoint`] (the last event removed), and is
//! verified from there; the archive verifies offline (`archive`).
use ring::digest;

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"mayfly-audit-v1";

/// A sealed event as stored, in the form the hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// Unix microseconds.
    pub at_micros: i64,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub task: Option<String>,
    pub agent: Option<String>,
    pub jti: Option<String>,
    pub reason: Option<String>,
    /// The detail as the store renders it (PostgreSQL's jsonb text).
    pub detail: String,
}

fn field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(&[0xff; 8]),
        Some(s) => {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// The hash of `e` at its position after `prev`.
pub fn hash(e: &Sealed, prev: &[u8]) -> [u8; 32] {
    let mut m = Vec::with_capacity(256 + e.detail.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&e.seq.to_be_bytes());
    m.extend_from_slice(prev);
    m.extend_from_slice(&e.at_micros.to_be_bytes());
    for v in [
        Some(e.actor.as_str()),
        Some(e.action.as_str()),
        Some(e.outcome.as_str()),
        e.task.as_deref(),
        e.agent.as_deref(),
        e.jti.as_deref(),
        e.reason.as_deref(),
        Some(e.detail.as_str()),
    ] {
        field(&mut m, v);
    }
    let d = digest::digest(&digest::SHA256, &m);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex, as hashes are shown and given back as checkpoints.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 hash in hex (64 digits), if `s` is one.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A position in the chain and the hash of the event there: a checkpoint kept
/// outside the store, the store's anchor (the last event archived and removed,
/// or [`Checkpoint::genesis`]), an archive's first and last. Written
/// `<seq>:<hash>`, as `mayfly audit verify` prints it and `--checkpoint` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Vec<u8>,
}

impl Checkpoint {
    pub fn new(seq: u64, hash: impl Into<Vec<u8>>) -> Self {
        Checkpoint {
            seq,
            hash: hash.into(),
        }
    }

    /// Before the first event: position 0, the genesis hash.
    pub fn genesis() -> Self {
        Checkpoint::new(0, GENESIS)
    }

    /// `<seq>:<hash>` (the hash in hex); the error says what is wrong, quoting
    /// at most a short prefix of the text.
    pub fn parse(s: &str) -> Result<Self, String> {
        use crate::domain::text::quote;
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{} is not \"<sequence>:<hash>\"", quote(s)))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("sequence {} is not a number", quote(seq)))?;
        let hash = from_hex(hash)
            .ok_or_else(|| format!("hash {} is not 64 hex digits (SHA-256)", quote(hash)))?;
        Ok(Checkpoint { seq, hash })
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, to_hex(&self.hash))
    }
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit event {seq}: {why}")]
pub struct Broken {
    /// The position of the first event that does not verify (or is missing).
    pub seq: u64,
    pub why: String,
}

/// Checks a chain fed to it in order, page by page, from where it starts: the
/// first event, or the one after an anchor.
#[derive(Debug, Clone)]
pub struct Verifier {
    start: Checkpoint,
    /// The position of the last event verified.
    last: u64,
    prev: Vec<u8>,
    /// An event's hash recorded outside the store earlier: the chain must still
    /// pass through it.
    checkpoint: Option<Checkpoint>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::after(Checkpoint::genesis())
    }
}

impl Verifier {
    /// A verifier of the chain that follows `start`: the store's anchor (the last
    /// event archived and removed) or an archive's first line.
    pub fn after(start: Checkpoint) -> Self {
        Verifier {
            last: start.seq,
            prev: start.hash.clone(),
            start,
            checkpoint: None,
        }
    }

    /// A verifier from the first event that also requires event `seq` to have
    /// hash `hash`.
    pub fn with_checkpoint(seq: u64, hash: Vec<u8>) -> Self {
        Verifier::default().through(Checkpoint::new(seq, hash))
    }

    /// This verifier, also requiring the chain to pass through `checkpoint` (or
    /// to start there).
    pub fn through(mut self, checkpoint: Checkpoint) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The hash of the last event verified (where the chain starts, before any).
    pub fn last_hash(&self) -> &[u8] {
        &self.prev
    }

    /// The position of the last event verified (where the chain starts, before
    /// any).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The position the next event must have (none past the last there is).
    fn next(&self) -> u64 {
        self.last.saturating_add(1)
    }

    /// Events verified so far.
    pub fn checked(&self) -> u64 {
        self.last_seq() - self.start.seq
    }

    /// Checks the next event of the chain.
    pub fn push(&mut self, e: &Sealed) -> Result<(), Broken> {
        if e.seq != self.next() || self.last == u64::MAX {
            let why = if e.seq > self.last {
                format!(
                    "missing: the chain goes from event {} to event {} (deleted)",
                    self.last, e.seq
                )
            } else {
                format!("out of order: event {} follows event {}", e.seq, self.last)
            };
            return Err(Broken {
                seq: self.next(),
                why,
            });
        }
        if e.prev_hash != self.prev {
            return Err(Broken {
                seq: e.seq,
                why: format!(
                    "does not follow event {}: its previous hash differs (reordered or replaced)",
                    e.seq - 1
                ),
            });
        }
        if hash(e, &self.prev).as_slice() != e.hash.as_slice() {
            return Err(Broken {
                seq: e.seq,
                why: "its content does not match its hash (edited)".into(),
            });
        }
        if let Some(c) = &self.checkpoint
            && c.seq == e.seq
            && c.hash != e.hash
        {
            return Err(Broken {
                seq: e.seq,
                why: "its hash differs from the checkpoint recorded earlier (the chain was rewritten from here or before)".into(),
            });
        }
        self.prev = e.hash.clone();
        self.last = e.seq;
        Ok(())
    }

    /// Checks that the chain passed through the checkpoint, if there is one
    /// (or starts at it).
    fn passed_checkpoint(&self) -> Result<(), Broken> {
        let Some(c) = &self.checkpoint else {
            return Ok(());
        };
        let start = self.start.seq;
        if c.seq < start {
            return Err(Broken {
                seq: c.seq,
                why: format!(
                    "the checkpoint's event {} comes before this chain, which starts after event {start}",
                    c.seq
                ),
            });
        }
        if c.seq == start && c.hash != self.start.hash {
            return Err(Broken {
                seq: c.seq,
                why: format!(
                    "the chain starts after event {start}, whose hash differs from the checkpoint recorded earlier (the chain was rewritten from here or before)"
                ),
            });
        }
        if c.seq > self.last_seq() {
            return Err(Broken {
                seq: self.next(),
                why: format!(
                    "the chain ends at event {} before the checkpoint's event {} (cut short)",
                    self.last_seq(),
                    c.seq
                ),
            });
        }
        Ok(())
    }

    /// Checks the end of the chain against the store's head.
    pub fn finish(&self, head_seq: u64, head_hash: &[u8]) -> Result<(), Broken> {
        self.passed_checkpoint()?;
        if head_seq != self.last_seq() || head_hash != self.prev.as_slice() {
            return Err(Broken {
                seq: self.next(),
                why: format!(
                    "the chain's head is at event {head_seq} but the stored events end at event {} (deleted from the end, or the head was altered)",
                    self.last_seq()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Sealed> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let mut e = Sealed {
                    seq,
                    prev_hash: prev.clone(),
                    hash: vec![],
                    at_micros: 1_795_428_000_000_000 + seq as i64,
                    actor: "spiffe://example.org/agent/a".into(),
                    action: "token_minted".into(),
                    outcome: "permit".into(),
                    task: Some("0b9f1d2e-7c1a-4a8e-9d55-0f6c3f8f2a10".into()),
                    agent: None,
                    jti: None,
                    reason: (seq % 2 == 0).then(|| "why".into()),
                    detail: format!("{{\"n\": {seq}}}"),
                };
                e.hash = hash(&e, &prev).to_vec();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(events: &[Sealed]) -> Result<u64, Broken> {
        let mut v = Verifier::default();
        for e in events {
            v.push(e)?;
        }
        let head = events.last().map_or(GENESIS.to_vec(), |e| e.hash.clone());
        v.finish(events.len() as u64, &head)?;
        Ok(v.checked())
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash(&chain(1)[0], &GENESIS);
        assert_eq!(from_hex(&to_hex(&h)), Some(h.to_vec()));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn an_edit_a_deletion_and_a_reordering_are_each_named() {
        let mut edited = chain(5);
        edited[2].reason = Some("nothing to see".into());
        assert_eq!(verify(&edited).unwrap_err().seq, 3);
        let mut null_vs_empty = chain(5);
        null_vs_empty[0].agent = Some(String::new());
        assert_eq!(verify(&null_vs_empty).unwrap_err().seq, 1);

        let mut deleted = chain(5);
        deleted.remove(1);
        let err = verify(&deleted).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.why.contains("missing"), "{err}");

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        (swapped[1].seq, swapped[2].seq) = (2, 3);
        let err = verify(&swapped).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.why.contains("previous hash"), "{err}");
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_a_checkpoint() {
        let honest = chain(5);
        let mut forged = chain(5);
        forged[1].reason = Some("rewritten".into());
        let mut prev = forged[0].hash.clone();
        for e in forged.iter_mut().skip(1) {
            e.prev_hash = prev.clone();
            e.hash = hash(e, &prev).to_vec();
            prev = e.hash.clone();
        }
        assert_eq!(verify(&forged), Ok(5), "consistent on its own");
        let mut v = Verifier::with_checkpoint(3, honest[2].hash.clone());
        let err = forged.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert_eq!(err.seq, 3);
        let mut v = Verifier::with_checkpoint(3, honest[2].hash.clone());
        honest.iter().try_for_each(|e| v.push(e)).unwrap();
        v.finish(5, &honest[4].hash).unwrap();
        let mut v = Verifier::with_checkpoint(9, honest[2].hash.clone());
        honest.iter().try_for_each(|e| v.push(e)).unwrap();
        assert!(
            v.finish(5, &honest[4].hash).is_err(),
            "cut short of the checkpoint"
        );
    }

    #[test]
    fn events_deleted_from_the_end_are_caught_by_the_head() {
        let full = chain(5);
        let mut v = Verifier::default();
        for e in &full[..3] {
            v.push(e).unwrap();
        }
        let err = v.finish(5, &full[4].hash).unwrap_err();
        assert_eq!(err.seq, 4);
    }

    #[test]
    fn a_chain_stored_after_an_anchor_verifies_from_it_and_names_what_breaks_it() {
        let full = chain(6);
        let anchor = Checkpoint::new(2, full[1].hash.clone());
        let mut v = Verifier::after(anchor.clone());
        for e in &full[2..] {
            v.push(e).unwrap();
        }
        v.finish(6, &full[5].hash).unwrap();
        assert_eq!((v.checked(), v.last_seq()), (4, 6));

        // Nothing stored after it: the anchor is the head.
        let v = Verifier::after(Checkpoint::new(6, full[5].hash.clone()));
        v.finish(6, &full[5].hash).unwrap();
        assert_eq!(v.checked(), 0);

        // The first stored event must follow the anchor.
        let mut v = Verifier::after(Checkpoint::new(2, GENESIS.to_vec()));
        assert_eq!(v.push(&full[2]).unwrap_err().seq, 3);
        let mut v = Verifier::after(anchor.clone());
        let err = v.push(&full[3]).unwrap_err();
        assert!(err.why.contains("missing"), "{err}");

        // A checkpoint at the anchor is checked against its hash; one before it
        // cannot be checked here.
        let through = |c: Checkpoint| {
            let mut v = Verifier::after(anchor.clone()).through(c);
            full[2..].iter().try_for_each(|e| v.push(e))?;
            v.finish(6, &full[5].hash)
        };
        through(Checkpoint::new(2, full[1].hash.clone())).unwrap();
        through(Checkpoint::new(4, full[3].hash.clone())).unwrap();
        let err = through(Checkpoint::new(2, full[0].hash.clone())).unwrap_err();
        assert!(err.why.contains("checkpoint"), "{err}");
        let err = through(Checkpoint::new(1, full[0].hash.clone())).unwrap_err();
        assert!(err.why.contains("comes before"), "{err}");
    }

    #[test]
    fn a_checkpoint_is_written_and_read_as_sequence_colon_hash() {
        let c = Checkpoint::new(12, hash(&chain(1)[0], &GENESIS).to_vec());
        assert_eq!(Checkpoint::parse(&c.to_string()), Ok(c.clone()));
        assert_eq!(
            Checkpoint::genesis().to_string(),
            format!("0:{}", "0".repeat(64))
        );
        for bad in ["12", "x:ab", "-1:00", "12:abc", ""] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad}");
        }
        let long = format!("1:{}", "z".repeat(10_000));
        let err = Checkpoint::parse(&long).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }
}
