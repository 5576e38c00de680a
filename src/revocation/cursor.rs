//! Where a watch stream stands in the store's revocation history, and the check
//! that the store still holds that history. A stream never claims more than the
//! store has committed: each read from the store starts *at* the event the stream
//! stands on (read again) rather than after it, so a store whose history was
//! replaced — restored from a backup, failed over to a lagging standby — is
//! noticed even once its sequence has grown past the cursor again with other
//! events under the same numbers. No extra query: the anchor is one more row of a
//! read the stream makes anyway.
use crate::domain::Event;
use crate::store::RevocationBounds;
use time::OffsetDateTime;

/// The event a watch stream stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// Before the first event: nothing to check.
    Start,
    /// The event the client says it received last: its sequence, and its time if
    /// the client gave it (without one, only the event's presence is checked).
    Claimed {
        seq: u64,
        at: Option<OffsetDateTime>,
    },
    /// The event this stream sent last, as it was sent.
    Sent(Event),
}

/// Why a stream cannot go on from its anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diverged {
    /// The store has no event at the anchor's sequence.
    Missing,
    /// The store's event at the anchor's sequence is another one.
    Replaced,
}

impl Anchor {
    /// Where a client's cursor stands: `after` (0 for the start) and the time of
    /// its event, if the client gave it.
    pub fn claimed(after: u64, at: Option<OffsetDateTime>) -> Self {
        match after {
            0 => Anchor::Start,
            seq => Anchor::Claimed { seq, at },
        }
    }

    /// The cursor: everything up to it has been sent (by this stream, or before
    /// it, as the client says).
    pub fn seq(&self) -> u64 {
        match self {
            Anchor::Start => 0,
            Anchor::Claimed { seq, .. } => *seq,
            Anchor::Sent(e) => e.seq,
        }
    }

    /// The `after` of the next read: the anchor's own event is read again.
    pub fn read_after(&self) -> u64 {
        self.seq().saturating_sub(1)
    }

    /// How many leading events of `batch` (a read from [`Anchor::read_after`]) are
    /// the anchor itself, already sent: the rest are new. `Err` when the store no
    /// longer holds the anchor's event as the stream knows it.
    pub fn check(&self, batch: &[Event]) -> Result<usize, Diverged> {
        if *self == Anchor::Start {
            return Ok(0);
        }
        match batch.first() {
            Some(e) if e.seq == self.seq() && self.is(e) => Ok(1),
            Some(e) if e.seq == self.seq() => Err(Diverged::Replaced),
            _ => Err(Diverged::Missing),
        }
    }

    /// Whether `e`, at the anchor's sequence, is the anchor's event as far as the
    /// stream knows it.
    fn is(&self, e: &Event) -> bool {
        match self {
            Anchor::Start => false,
            Anchor::Claimed { at, .. } => at.is_none_or(|at| e.revocation.at == at),
            Anchor::Sent(sent) => e == sent,
        }
    }
}

/// A watch cursor the store cannot serve: its history was restored or failed
/// over, or pruned past it. The verifier must drop its claim of completeness
/// and watch again from the start (refused before the stream opens, or ending
/// it): the history kept holds every revocation of every token still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revocation cursor {cursor} {}: resync: treat the revocation set as incomplete and watch again from sequence 0", self.why())]
pub struct Resync {
    pub cursor: u64,
    /// Where the store's history stands.
    pub bounds: RevocationBounds,
    pub why: ResyncReason,
}

impl Resync {
    /// Why a cursor the store does not hold as the stream knows it cannot go on:
    /// before the history kept, the history was pruned past it; otherwise the
    /// store's history is not the one the cursor came from.
    pub fn diverged(cursor: u64, bounds: RevocationBounds, d: Diverged) -> Self {
        let why = if d == Diverged::Missing && cursor < bounds.first {
            ResyncReason::Pruned
        } else {
            d.into()
        };
        Resync {
            cursor,
            bounds,
            why,
        }
    }

    /// A client's cursor the store cannot serve from, known before reading:
    /// past the head, or before the history kept. `None` for any other.
    pub fn at_open(cursor: u64, bounds: RevocationBounds) -> Option<Self> {
        let why = if cursor > bounds.head {
            ResyncReason::Ahead
        } else if cursor > 0 && cursor < bounds.first {
            ResyncReason::Pruned
        } else {
            return None;
        };
        Some(Resync {
            cursor,
            bounds,
            why,
        })
    }

    fn why(&self) -> String {
        let RevocationBounds { first, head } = self.bounds;
        match self.why {
            ResyncReason::Ahead => format!(
                "is ahead of the store, whose last revocation is {head}: the store was restored or failed over"
            ),
            ResyncReason::Missing => format!(
                "is an event the store no longer holds, whose last revocation is {head}: the store was restored or failed over"
            ),
            ResyncReason::Replaced => format!(
                "names another event in the store, whose last revocation is {head}: the store was restored or failed over"
            ),
            ResyncReason::Pruned => format!(
                "is before the revocation history the store keeps, which starts at event {first} (older events were pruned once every token they concern had expired)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The cursor is past the store's last sequence.
    Ahead,
    /// The store no longer holds the event at the cursor.
    Missing,
    /// The store's event at the cursor is another event.
    Replaced,
    /// The cursor is before the history the store keeps.
    Pruned,
}

impl ResyncReason {
    /// As metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Ahead => "ahead",
            ResyncReason::Missing => "missing",
            ResyncReason::Replaced => "replaced",
            ResyncReason::Pruned => "pruned",
        }
    }
}

impl From<Diverged> for ResyncReason {
    fn from(d: Diverged) -> Self {
        match d {
            Diverged::Missing => ResyncReason::Missing,
            Diverged::Replaced => ResyncReason::Replaced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Revocation, Target, Trigger};

    fn ev(seq: u64, secs: i64) -> Event {
        Event {
            seq,
            revocation: Revocation {
                target: Target::All,
                reason: "drill".into(),
                actor: "spiffe://td/admin/a".into(),
                trigger: Trigger::Admin,
                at: OffsetDateTime::from_unix_timestamp(secs).unwrap(),
            },
        }
    }

    #[test]
    fn from_the_start_every_event_read_is_new() {
        let a = Anchor::claimed(0, None);
        assert_eq!((a.seq(), a.read_after()), (0, 0));
        assert_eq!(a.check(&[]), Ok(0));
        assert_eq!(a.check(&[ev(1, 10), ev(2, 10)]), Ok(0));
    }

    #[test]
    fn a_read_starts_at_the_anchor_which_is_skipped_when_it_is_still_the_same_event() {
        let sent = Anchor::Sent(ev(5, 10));
        assert_eq!((sent.seq(), sent.read_after()), (5, 4));
        assert_eq!(sent.check(&[ev(5, 10)]), Ok(1), "caught up: the head is 5");
        assert_eq!(sent.check(&[ev(5, 10), ev(6, 11)]), Ok(1));
        let claimed = Anchor::claimed(5, Some(ev(5, 10).revocation.at));
        assert_eq!(claimed.check(&[ev(5, 10), ev(6, 11)]), Ok(1));
        // Without a time, the event's presence is all a claim can be checked for.
        assert_eq!(Anchor::claimed(5, None).check(&[ev(5, 99)]), Ok(1));
    }

    #[test]
    fn a_store_without_the_anchor_or_with_another_event_there_has_diverged() {
        let sent = Anchor::Sent(ev(5, 10));
        assert_eq!(sent.check(&[]), Err(Diverged::Missing), "rolled back");
        assert_eq!(sent.check(&[ev(6, 11)]), Err(Diverged::Missing));
        // Rolled back, then grown past the cursor again: event 5 is another one.
        assert_eq!(sent.check(&[ev(5, 30), ev(6, 31)]), Err(Diverged::Replaced));
        let mut other = ev(5, 10);
        other.revocation.target = Target::Workflow("billing".into());
        assert_eq!(sent.check(&[other]), Err(Diverged::Replaced));
        let claimed = Anchor::claimed(5, Some(ev(5, 10).revocation.at));
        assert_eq!(claimed.check(&[ev(5, 30)]), Err(Diverged::Replaced));
        assert_eq!(claimed.check(&[]), Err(Diverged::Missing));
    }

    #[test]
    fn the_resync_message_names_the_cursor_the_head_and_what_to_do() {
        let bounds = RevocationBounds {
            first: 1,
            head: 672,
        };
        let r = Resync::at_open(677, bounds).unwrap();
        assert_eq!(r.why, ResyncReason::Ahead);
        let m = r.to_string();
        assert!(
            m.starts_with(
                "revocation cursor 677 is ahead of the store, whose last revocation is 672"
            ),
            "{m}"
        );
        assert!(m.contains("watch again from sequence 0"), "{m}");
    }

    #[test]
    fn a_cursor_before_the_kept_history_was_pruned_past_and_says_so() {
        let bounds = RevocationBounds {
            first: 120,
            head: 300,
        };
        let r = Resync::at_open(5, bounds).unwrap();
        assert_eq!(r.why, ResyncReason::Pruned);
        let m = r.to_string();
        assert!(
            m.starts_with("revocation cursor 5 is before the revocation history the store keeps, which starts at event 120"),
            "{m}"
        );
        assert!(m.contains("watch again from sequence 0"), "{m}");
        // The start, the first event kept and anything up to the head are served.
        for ok in [0, 120, 200, 300] {
            assert_eq!(Resync::at_open(ok, bounds), None, "{ok}");
        }
        // Found missing while streaming: pruned when before the history kept,
        // otherwise the history is another one.
        assert_eq!(
            Resync::diverged(119, bounds, Diverged::Missing).why,
            ResyncReason::Pruned
        );
        assert_eq!(
            Resync::diverged(150, bounds, Diverged::Missing).why,
            ResyncReason::Missing
        );
        assert_eq!(
            Resync::diverged(119, bounds, Diverged::Replaced).why,
            ResyncReason::Replaced
        );
    }
}
