//! Archives written and verified offline: intact ones pass, with a checkpoint
//! anywhere in them; each kind of damage names its line.
use super::*;
use crate::domain::audit::chain::{GENESIS, hash};

/// 2026-11-23 10:00:00 UTC, in microseconds.
const T0: i64 = 1_795_428_000_000_000;

/// A chain of `n` events, one second apart from T0 on.
fn chain(n: u64) -> Vec<Sealed> {
    let mut prev = GENESIS.to_vec();
    (1..=n)
        .map(|seq| {
            let mut e = Sealed {
                seq,
                prev_hash: prev.clone(),
                hash: vec![],
                at_micros: T0 + seq as i64 * 1_000_000 + 17,
                actor: "spiffe://example.org/admin/s1".into(),
                action: "revocation".into(),
                outcome: "permit".into(),
                task: (seq % 2 == 0).then(|| "0b9f1d2e-7c1a-4a8e-9d55-0f6c3f8f2a10".into()),
                agent: None,
                jti: None,
                reason: (seq % 3 == 0).then(String::new),
                detail: format!("{{\"n\": {seq}, \"why\": \"line\\nbreak «東京»\"}}"),
            };
            e.hash = hash(&e, &prev).to_vec();
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn at(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap()
}

fn point(e: &Sealed) -> Checkpoint {
    Checkpoint::new(e.seq, e.hash.clone())
}

/// The lines of an archive of `events`, after `anchor`.
fn archive(anchor: &Checkpoint, events: &[Sealed]) -> Vec<String> {
    let last = events.last().map_or(anchor.clone(), point);
    let mut lines = vec![header_line(anchor, &last, at(T0 + 3_600_000_000)).unwrap()];
    lines.extend(events.iter().map(|e| event_line(e).unwrap()));
    lines
}

fn verify(lines: &[String], checkpoint: Option<Checkpoint>) -> Result<Summary, Bad> {
    let mut v = ArchiveVerifier::new(checkpoint);
    for l in lines {
        v.push(l)?;
    }
    v.finish()
}

/// `lines` with line `n` (1 is the header) changed by `edit` as JSON.
fn edited(lines: &[String], n: usize, edit: impl Fn(&mut serde_json::Value)) -> Vec<String> {
    let mut out = lines.to_vec();
    let mut v: serde_json::Value = serde_json::from_str(&out[n - 1]).unwrap();
    edit(&mut v);
    out[n - 1] = v.to_string();
    out
}

#[test]
fn an_archive_verifies_offline_from_its_anchor_through_any_checkpoint_in_it() {
    let full = chain(6);
    let lines = archive(&Checkpoint::genesis(), &full[..4]);
    let s = verify(&lines, None).unwrap();
    assert_eq!(
        (s.anchor, s.last.clone(), s.events),
        (Checkpoint::genesis(), point(&full[3]), 4)
    );
    for c in [Checkpoint::genesis(), point(&full[1]), point(&full[3])] {
        assert_eq!(verify(&lines, Some(c)).unwrap().last, s.last);
    }

    // The next archive starts where this one ends, and verifies against its last.
    let next = archive(&s.last, &full[4..]);
    let t = verify(&next, Some(s.last.clone())).unwrap();
    assert_eq!((t.anchor, t.last, t.events), (s.last, point(&full[5]), 2));
}

#[test]
fn every_field_the_hash_covers_reads_back_exactly() {
    let e = &chain(3)[2];
    let line = event_line(e).unwrap();
    assert_eq!(event(&line).unwrap(), *e);
    // An empty reason is not a missing one, and the detail is the text hashed.
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["reason"], "");
    assert_eq!(v["agent"], serde_json::Value::Null);
    assert_eq!(v["detail"], e.detail.as_str());
    assert_eq!(v["at"], "2026-11-23T10:00:03.000017Z");
}

#[test]
fn an_edited_event_a_gap_a_reordering_and_a_cut_are_each_named_by_line() {
    let full = chain(5);
    let lines = archive(&Checkpoint::genesis(), &full);
    let why = |lines: &[String], checkpoint| verify(lines, checkpoint).unwrap_err();

    let e = why(&edited(&lines, 4, |v| v["reason"] = "routine".into()), None);
    assert_eq!(e.line, 4);
    assert!(e.why.contains("event 3") && e.why.contains("edited"), "{e}");
    let e = why(&edited(&lines, 3, |v| v["detail"] = "{}".into()), None);
    assert_eq!(e.line, 3);
    // The time people read must be the one hashed.
    let e = why(
        &edited(&lines, 2, |v| v["at"] = "2026-11-23T11:00:00Z".into()),
        None,
    );
    assert!(e.why.contains("at_micros"), "{e}");

    let mut gap = lines.clone();
    gap.remove(3);
    let e = why(&gap, None);
    assert_eq!(e.line, 4);
    assert!(e.why.contains("missing"), "{e}");
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    assert_eq!(why(&swapped, None).line, 3);

    let cut = &lines[..4];
    let e = why(cut, None);
    assert_eq!(e.line, 5);
    assert!(e.why.contains("cut short"), "{e}");
    let mut extra = lines.clone();
    extra.push(lines[5].clone());
    assert_eq!(why(&extra, None).line, 7);
}

#[test]
fn a_header_that_does_not_fit_its_events_or_a_checkpoint_is_refused() {
    let full = chain(4);
    let lines = archive(&Checkpoint::genesis(), &full);
    let e = verify(&edited(&lines, 1, |v| v["events"] = 3.into()), None).unwrap_err();
    assert_eq!(e.line, 1);
    let e = verify(
        &edited(&lines, 1, |v| v["last"]["hash"] = to_hex(&GENESIS).into()),
        None,
    );
    assert_eq!(e.unwrap_err().line, 5);
    let e = verify(&edited(&lines, 1, |v| v["version"] = 2.into()), None).unwrap_err();
    assert!(e.why.contains("version 2"), "{e}");
    let e = verify(&edited(&lines, 1, |v| v["format"] = "x".into()), None).unwrap_err();
    assert!(e.why.contains("not a Mayfly audit archive"), "{e}");
    // Dated at or after the header's time.
    let late = edited(&lines, 1, |v| v["before"] = "2026-11-23T10:00:02Z".into());
    let e = verify(&late, None).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.why.contains("not before"), "{e}");

    // A checkpoint outside the archive, or another chain's.
    let outside = Checkpoint::new(9, full[0].hash.clone());
    let e = verify(&lines, Some(outside)).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.why.contains("not in this archive"), "{e}");
    let forged = Checkpoint::new(2, full[0].hash.clone());
    let e = verify(&lines, Some(forged)).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.why.contains("checkpoint"), "{e}");
    let other_start = Checkpoint::new(0, full[0].hash.clone());
    assert_eq!(verify(&lines, Some(other_start)).unwrap_err().line, 1);
}

#[test]
fn a_malformed_file_is_an_error_naming_its_line_and_quoting_little() {
    let lines = archive(&Checkpoint::genesis(), &chain(2));
    assert_eq!(verify(&[], None).unwrap_err().line, 1);
    let long = format!("{{\"format\": \"{}\"}}", "\u{202e}x".repeat(50_000));
    for (n, bad) in [
        (1, "not json".to_string()),
        (1, long.clone()),
        (1, "[]".into()),
        (1, String::new()),
        (2, "{\"seq\": 1}".into()),
        (2, long),
        (2, format!("{{\"seq\": \"{}\"}}", "9".repeat(100_000))),
        (2, lines[1].replace("\"hash\":\"", "\"hash\":\"zz")),
        (2, lines[1].replace("\"seq\":1", "\"seq\":1,\"extra\":true")),
        (2, lines[1].replace("\"seq\":1", "\"seq\":-1")),
    ] {
        let mut file = lines.clone();
        if n == 1 {
            file[0] = bad.clone();
        } else {
            file[1] = bad.clone();
        }
        let e = verify(&file, None).unwrap_err();
        assert_eq!(e.line, n, "{e}");
        assert!(e.to_string().len() < 400, "{e}");
        assert!(!e.why.contains('\u{202e}'), "{e}");
    }
}

#[test]
fn positions_at_the_end_of_the_range_verify_or_are_refused_without_overflowing() {
    let mut e = chain(1).remove(0);
    e.seq = u64::MAX;
    e.hash = hash(&e, &GENESIS).to_vec();
    let anchor = Checkpoint::new(u64::MAX - 1, GENESIS);
    let lines = archive(&anchor, std::slice::from_ref(&e));
    assert_eq!(verify(&lines, None).unwrap().last.seq, u64::MAX);
    let mut more = lines.clone();
    more.push(lines[1].clone());
    assert_eq!(verify(&more, None).unwrap_err().line, 3);
    let at_end = Checkpoint::new(u64::MAX, e.hash.clone());
    let empty = archive(&at_end, &[]);
    assert_eq!(verify(&empty, Some(at_end)).unwrap().events, 0);
    let e = verify(&empty, Some(Checkpoint::new(0, GENESIS.to_vec()))).unwrap_err();
    assert!(e.why.contains("not in this archive"), "{e}");
}
