//! Property tests of the archive file reader (outside input: a file anyone may
//! have edited) and of checkpoints: nothing panics; a refusal names a line in
//! the file and says little of it; an archive with any character changed
//! verifies only if what it holds is unchanged (its header's time may change
//! while every event is still dated before it); any positions in a header are
//! refused or accepted without overflowing.
use super::*;
use crate::domain::audit::chain::{GENESIS, hash};
use crate::testing::{any_text, matching};
use proptest::prelude::*;

/// A field's value: often plain, sometimes any text, sometimes absent.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => matching("[a-z_/:.{}\" 0-9-]{0,24}"), 1 => any_text()]
}

/// An archive after a random anchor: its lines, and each event as hashed.
fn archive() -> impl Strategy<Value = (Vec<String>, Vec<Sealed>)> {
    let event = (
        any::<i64>(),
        text(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        text(),
    );
    (0u64..1_000_000, prop::collection::vec(event, 0..5)).prop_map(|(start, fields)| {
        let anchor = Checkpoint::new(start, GENESIS);
        let mut prev = GENESIS.to_vec();
        let mut latest = i64::MIN;
        let events: Vec<Sealed> = (fields.into_iter().enumerate())
            .map(|(i, (at, actor, action, agent, reason, detail))| {
                // Micros an RFC 3339 time can show (years 1..9999).
                let at = at.rem_euclid(250_000_000_000_000_000) - 62_000_000_000_000_000;
                latest = latest.max(at);
                let mut e = Sealed {
                    seq: start + 1 + i as u64,
                    prev_hash: prev.clone(),
                    hash: vec![],
                    at_micros: at,
                    actor,
                    action,
                    outcome: "permit".into(),
                    task: None,
                    agent,
                    jti: None,
                    reason,
                    detail,
                };
                e.hash = hash(&e, &prev).to_vec();
                prev = e.hash.clone();
                e
            })
            .collect();
        let last = events
            .last()
            .map_or(anchor.clone(), |e| Checkpoint::new(e.seq, e.hash.clone()));
        let before =
            OffsetDateTime::from_unix_timestamp_nanos((i128::from(latest.max(0)) + 1) * 1000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut lines = vec![header_line(&anchor, &last, before).unwrap_or_default()];
        lines.extend(events.iter().map(|e| event_line(e).unwrap_or_default()));
        (lines, events)
    })
}

fn verify(lines: &[String]) -> Result<Summary, Bad> {
    let mut v = ArchiveVerifier::new(None);
    for l in lines {
        v.push(l)?;
    }
    v.finish()
}

/// A refusal names a line of the file (or the one after its last) and quotes
/// little of it.
fn names_a_line(bad: &Bad, lines: usize) -> Result<(), TestCaseError> {
    prop_assert!((1..=lines as u64 + 1).contains(&bad.line), "{bad}");
    // At most a short prefix of any value, each hidden character escaped.
    prop_assert!(bad.why.len() < 1500, "{} bytes: {bad}", bad.why.len());
    prop_assert!(!bad.why.contains('\n'), "{bad}");
    Ok(())
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn an_archive_with_a_character_changed_verifies_only_if_what_it_holds_is_the_same(
        (lines, events) in archive(),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        to in prop_oneof![any::<char>(), prop::sample::select(vec!['0', '9', 'a', 'f', 'A', '"', '\\', '{', '}', ',', ':', ' '])],
    ) {
        let original = verify(&lines).map_err(|b| TestCaseError::fail(b.to_string()))?;
        let n = which.index(lines.len());
        let chars: Vec<char> = lines[n].chars().collect();
        let i = at.index(chars.len().max(1)).min(chars.len().saturating_sub(1));
        let mut changed = lines.clone();
        changed[n] = chars.iter().enumerate().map(|(k, c)| if k == i { to } else { *c }).collect();
        match verify(&changed) {
            Ok(s) => {
                // The header's time is no hash's: it may say any time that every
                // event is dated before.
                let latest = events.iter().map(|e| i128::from(e.at_micros)).max();
                prop_assert!(latest.is_none_or(|at| at < micros(s.before)), "{s:?}");
                prop_assert_eq!(&Summary { before: original.before, ..s }, &original);
                if n > 0 {
                    let again = event(&changed[n]).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(&again, &events[n - 1]);
                }
            }
            Err(bad) => {
                names_a_line(&bad, lines.len())?;
                prop_assert!(bad.line > n as u64, "{bad} (changed line {})", n + 1);
            }
        }
    }

    #[test]
    fn any_lines_are_refused_naming_a_line_without_panicking(
        first in prop_oneof![any_text(), matching("\\{\"format\":\"mayfly-audit-archive\",\"version\":1,\"anchor\":\\{\"seq\":[0-9]{1,20},\"hash\":\"0{64}\"\\},\"last\":\\{\"seq\":[0-9]{1,20},\"hash\":\"[0f]{64}\"\\},\"events\":[0-9]{1,20},\"before\":\"2026-11-23T10:00:00Z\"\\}")],
        rest in prop::collection::vec(prop_oneof![any_text(), matching("\\{\"seq\":[0-9]{1,20}[a-z\":,0-9]{0,40}\\}")], 0..4),
        checkpoint in proptest::option::of((any::<u64>(), prop::sample::select(vec![GENESIS.to_vec(), vec![0xff; 32]]))),
    ) {
        let mut lines = vec![first];
        lines.extend(rest);
        let mut v = ArchiveVerifier::new(checkpoint.map(|(seq, h)| Checkpoint::new(seq, h)));
        let mut done = Ok(());
        for l in &lines {
            done = v.push(l);
            if done.is_err() {
                break;
            }
        }
        if let Err(bad) = done.and_then(|()| v.finish().map(drop)) {
            names_a_line(&bad, lines.len())?;
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_it_is_written_and_anything_else_is_refused(
        seq in any::<u64>(),
        hash in prop::collection::vec(any::<u8>(), 32),
        other in prop_oneof![any_text(), matching("[0-9]{0,21}:[0-9a-fA-F]{60,68}")],
    ) {
        let c = Checkpoint::new(seq, hash);
        prop_assert_eq!(Checkpoint::parse(&c.to_string()), Ok(c));
        if let Err(why) = Checkpoint::parse(&other) {
            prop_assert!(why.len() < 300, "{why}");
        }
    }
}
