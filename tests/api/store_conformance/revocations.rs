//! Revocations: what each target reaches (with the cascade down delegation
//! chains), the gap-free sequence and its times, and the feed of notices.
use super::fixtures::*;
use mayfly::domain::TaskState;
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::domain::*;
use mayfly::domain::{Event, Target};
use mayfly::store::*;
use std::time::Duration;
use uuid::Uuid;

/// Asserts which of `tokens` are revoked.
async fn assert_revoked<S: Store>(s: &S, revoked: &[&TokenRecord], live: &[&TokenRecord]) {
    for tok in revoked {
        assert!(is_revoked(s, tok).await, "token {} lives on", tok.jti);
    }
    for tok in live {
        assert!(!is_revoked(s, tok).await, "token {} was revoked", tok.jti);
    }
}

fn counts(r: &Revoked) -> (u64, u64) {
    (r.tokens_revoked, r.tasks_stopped)
}

pub async fn revoking_a_token_revokes_it_and_every_token_delegated_from_it<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let root = mint(s, &t, 10).await;
    let sibling = mint(s, &t, 11).await;
    let o1 = delegate(s, &root, &[], SUB, 20).await;
    let child = redeem_ok(s, &o1, 21).await;
    let o2 = delegate(s, &child, &o1.ancestors, SUB2, 22).await;
    let grandchild = redeem_ok(s, &o2, 23).await;
    let o3 = delegate(s, &sibling, &[], SUB, 24).await;
    let nephew = redeem_ok(s, &o3, 25).await;

    let (r, audit) = admin_revocation(Target::Token(root.jti), 30);
    let revoked = s.revoke(&r, &audit).await.unwrap().expect("token exists");

    assert_eq!(counts(&revoked), (3, 0));
    assert_eq!(revoked.event.revocation.target, Target::Token(root.jti));
    assert_revoked(s, &[&root, &child, &grandchild], &[&sibling, &nephew]).await;
    assert_eq!(reread(s, &t).await.state, TaskState::Active);
    assert_recorded(&all_events(s).await, &audit);
}

pub async fn revoking_an_agent_revokes_its_tokens_their_descendants_and_its_tasks<S: Store>(s: &S) {
    let mine = open(s, task(AGENT, 0, 600)).await;
    let a1 = mint(s, &mine, 10).await;
    let a2 = mint(s, &mine, 11).await;
    let o1 = delegate(s, &a1, &[], SUB, 20).await;
    let child = redeem_ok(s, &o1, 21).await;
    let o2 = delegate(s, &child, &o1.ancestors, SUB2, 22).await;
    let grandchild = redeem_ok(s, &o2, 23).await;
    let done = open(s, task(AGENT, 0, 600)).await;
    mint(s, &done, 10).await;
    complete(s, &done, 15).await;
    let theirs = open(s, task(AGENT2, 0, 600)).await;
    let b1 = mint(s, &theirs, 10).await;

    let (r, audit) = admin_revocation(Target::Agent(agent_id(AGENT)), 30);
    let revoked = s.revoke(&r, &audit).await.unwrap().expect("agents exist");

    assert_eq!(counts(&revoked), (4, 1));
    assert_revoked(s, &[&a1, &a2, &child, &grandchild], &[&b1]).await;
    assert_eq!(reread(s, &mine).await.state, TaskState::Revoked);
    assert_eq!(reread(s, &done).await.state, TaskState::Completed);
    assert_eq!(reread(s, &theirs).await.state, TaskState::Active);
    assert_recorded(&all_events(s).await, &audit);
}

pub async fn revoking_a_sub_agent_revokes_the_tokens_delegated_to_it<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let o1 = delegate(s, &parent, &[], SUB, 20).await;
    let child = redeem_ok(s, &o1, 21).await;
    let o2 = delegate(s, &child, &o1.ancestors, SUB2, 22).await;
    let grandchild = redeem_ok(s, &o2, 23).await;

    let revoked = revoke_ok(s, Target::Agent(agent_id(SUB)), 30).await;

    assert_eq!(counts(&revoked), (2, 0), "no task of the sub-agent's stops");
    assert_revoked(s, &[&child, &grandchild], &[&parent]).await;
    assert_eq!(reread(s, &t).await.state, TaskState::Active);
}

pub async fn revoking_a_task_revokes_its_tokens_and_stops_it_once<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok1 = mint(s, &t, 10).await;
    let tok2 = mint(s, &t, 11).await;
    let o = delegate(s, &tok1, &[], SUB, 20).await;
    let child = redeem_ok(s, &o, 21).await;
    let other = open(s, task(AGENT, 0, 600)).await;
    let other_tok = mint(s, &other, 10).await;

    let (r, audit) = admin_revocation(Target::Task(t.id), 30);
    let revoked = s.revoke(&r, &audit).await.unwrap().expect("task exists");

    assert_eq!(counts(&revoked), (3, 1));
    assert_revoked(s, &[&tok1, &tok2, &child], &[&other_tok]).await;
    let stopped = reread(s, &t).await;
    assert_eq!(stopped.state, TaskState::Revoked);
    assert!(stopped.ended_at.is_some());
    assert_eq!(reread(s, &other).await.state, TaskState::Active);
    assert_recorded(&s.audit_for_task(t.id).await.unwrap(), &audit);

    let again = revoke_ok(s, Target::Task(t.id), 40).await;
    assert_eq!(counts(&again), (0, 0), "counted twice");
    assert!(again.repeated);
    assert_eq!(again.event, revoked.event, "revoked again");
}

pub async fn revoking_a_workflow_revokes_its_tokens_and_stops_its_tasks<S: Store>(s: &S) {
    let s1 = open(s, task_in(AGENT, WORKFLOW, 0, 600)).await;
    let s2 = open(s, task_in(AGENT2, WORKFLOW, 0, 600)).await;
    let b = open(s, task_in(AGENT, OTHER_WORKFLOW, 0, 600)).await;
    let tok1 = mint(s, &s1, 10).await;
    let tok2 = mint(s, &s2, 10).await;
    let o = delegate(s, &tok1, &[], SUB, 20).await;
    let child = redeem_ok(s, &o, 21).await;
    let billing = mint(s, &b, 10).await;

    let revoked = revoke_ok(s, Target::Workflow(WORKFLOW.into()), 30).await;

    assert_eq!(counts(&revoked), (3, 2));
    assert_revoked(s, &[&tok1, &tok2, &child], &[&billing]).await;
    assert_eq!(reread(s, &s1).await.state, TaskState::Revoked);
    assert_eq!(reread(s, &s2).await.state, TaskState::Revoked);
    assert_eq!(reread(s, &b).await.state, TaskState::Active);
}

pub async fn revoking_everything_revokes_every_token_and_stops_every_task<S: Store>(s: &S) {
    let t1 = open(s, task_in(AGENT, WORKFLOW, 0, 600)).await;
    let t2 = open(s, task_in(AGENT2, OTHER_WORKFLOW, 0, 600)).await;
    let done = open(s, task(AGENT, 0, 600)).await;
    let tok1 = mint(s, &t1, 10).await;
    let tok2 = mint(s, &t2, 10).await;
    let o = delegate(s, &tok1, &[], SUB, 20).await;
    let child = redeem_ok(s, &o, 21).await;
    complete(s, &done, 25).await;

    let revoked = revoke_ok(s, Target::All, 30).await;

    assert_eq!(counts(&revoked), (3, 2));
    assert_revoked(s, &[&tok1, &tok2, &child], &[]).await;
    assert_eq!(s.count_active_tasks().await.unwrap(), 0);
    assert_eq!(reread(s, &done).await.state, TaskState::Completed);
}

pub async fn revoking_an_unknown_token_or_task_is_none_and_writes_nothing<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    let seq = s.last_revocation_seq().await.unwrap();
    let events = all_events(s).await.len();

    assert_eq!(revoke(s, Target::Token(Uuid::new_v4()), 20).await, None);
    assert_eq!(
        revoke(s, Target::Task(task(AGENT, 0, 1).id), 20).await,
        None
    );

    assert_eq!(s.last_revocation_seq().await.unwrap(), seq);
    assert_eq!(s.revocations_after(seq, 10).await.unwrap(), vec![]);
    assert_eq!(all_events(s).await.len(), events, "an audit event written");
    assert!(!is_revoked(s, &tok).await);
    let next = revoke_ok(s, Target::Token(tok.jti), 30).await;
    assert_eq!(next.event.seq, seq + 1, "a sequence number was lost");
}

pub async fn revocation_sequence_numbers_are_gap_free_in_commit_order<S: Store>(s: &S) {
    assert_eq!(s.last_revocation_seq().await.unwrap(), 0);
    assert_eq!(s.revocations_after(0, 100).await.unwrap(), vec![]);
    let t1 = open(s, task(AGENT, 0, 600)).await;
    let t2 = open(s, task(AGENT2, 0, 600)).await;
    let tok = mint(s, &t1, 10).await;

    let mut events: Vec<Event> = vec![];
    events.push(revoke_ok(s, Target::Token(tok.jti), 20).await.event);
    events.push(complete(s, &t1, 21).await.event);
    assert!(matches!(
        end(s, &t1, TaskState::Completed, 22).await,
        EndOutcome::NotActive(_)
    ));
    events.push(
        revoke_ok(s, Target::Agent(agent_id(AGENT2)), 23)
            .await
            .event,
    );
    assert_eq!(revoke(s, Target::Token(Uuid::new_v4()), 24).await, None);
    events.push(
        revoke_ok(s, Target::Workflow(WORKFLOW.into()), 25)
            .await
            .event,
    );
    events.push(revoke_ok(s, Target::All, 26).await.event);
    events.push(revoke_ok(s, Target::Task(t2.id), 27).await.event);

    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(s.revocations_after(0, 100).await.unwrap(), events);
    assert_eq!(s.revocations_after(2, 2).await.unwrap(), events[2..4]);
    assert_eq!(s.revocations_after(6, 100).await.unwrap(), vec![]);
    assert_eq!(s.last_revocation_seq().await.unwrap(), 6);
}

/// What a watch stream relies on to tell that the store still holds the event it
/// stands on (and so, that it may say it is caught up): the last sequence is the
/// newest event's, and a read from an event's predecessor returns that event
/// again, to the microsecond of its time, as recorded.
pub async fn an_event_reads_back_unchanged_from_its_predecessor_up_to_the_last_sequence<
    S: Store,
>(
    s: &S,
) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let (mut r, audit) = admin_revocation(Target::Task(t.id), 20);
    r.at += Duration::from_micros(123_456);
    let first = s
        .revoke(&r, &audit)
        .await
        .unwrap()
        .expect("the task exists")
        .event;
    assert_eq!(first.revocation.at, r.at, "microseconds are kept");
    let last = revoke_ok(s, Target::All, 21).await.event;

    assert_eq!(s.last_revocation_seq().await.unwrap(), last.seq);
    assert_eq!(
        s.revocations_after(last.seq - 1, 100).await.unwrap(),
        vec![last.clone()],
        "caught up: the anchor and nothing after it"
    );
    assert_eq!(
        s.revocations_after(first.seq - 1, 1).await.unwrap(),
        vec![first.clone()]
    );
    assert_eq!(
        s.revocations_after(first.seq - 1, 100).await.unwrap(),
        vec![first, last]
    );
}

pub async fn a_revocation_is_never_dated_before_the_previous_one<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;

    let first = revoke_ok(s, Target::Token(tok.jti), 100).await.event;
    assert_eq!(first.revocation.at, at(100));
    // A revoker whose clock is behind (or who waited on a lock) comes second.
    let behind = revoke_ok(s, Target::Agent(agent_id(AGENT2)), 50)
        .await
        .event;
    assert!(behind.revocation.at >= at(100), "{behind:?}");
    let ended = complete(s, &t, 60).await.event;
    assert!(ended.revocation.at >= behind.revocation.at, "{ended:?}");

    let stored = s.revocations_after(0, 100).await.unwrap();
    assert_eq!(stored, vec![first, behind, ended], "returned as stored");
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].revocation.at <= w[1].revocation.at)
    );
}

/// The next notice (a reconnect, `Ok(None)`, only means one may have been
/// missed; the cases here have nothing to miss, so it is skipped).
async fn next_notice(feed: &mut dyn RevocationFeed) -> Notice {
    let wait = async {
        loop {
            if let Some(n) = feed.next().await.unwrap() {
                return n;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no notice within 10 s")
}

pub async fn the_feed_announces_revocations_committed_after_it_started<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    let mut feed = s.revocation_feed().await.unwrap();

    let revoked = revoke_ok(s, Target::Token(tok.jti), 20).await;
    assert_eq!(
        next_notice(feed.as_mut()).await,
        Notice::Revocation(revoked.event.seq)
    );
    let ended = complete(s, &t, 30).await;
    assert_eq!(
        next_notice(feed.as_mut()).await,
        Notice::Revocation(ended.event.seq)
    );
}

pub async fn the_feed_announces_approval_decisions<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let a = request(s, approval(&t, delete_scope(), 10)).await;
    let mut feed = s.revocation_feed().await.unwrap();

    decide_ok(s, &a, true, 20).await;
    assert_eq!(next_notice(feed.as_mut()).await, Notice::ApprovalDecided);
}

/// Revoking what is already revoked, with nothing live left under it, answers
/// the original event and adds nothing to the stream; the request is audited.
pub async fn revoking_a_target_again_answers_its_event_and_adds_nothing<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    let first = revoke_ok(s, Target::Token(tok.jti), 20).await;
    assert!(!first.repeated);
    let seq = s.last_revocation_seq().await.unwrap();
    let events = all_events(s).await.len();

    let again = revoke_ok(s, Target::Token(tok.jti), 30).await;
    assert!(again.repeated);
    assert_eq!(again.event, first.event);
    assert_eq!(counts(&again), (0, 0));
    assert_eq!(
        s.last_revocation_seq().await.unwrap(),
        seq,
        "a second event"
    );
    assert_eq!(s.revocations_after(seq, 10).await.unwrap(), vec![]);
    let audited = all_events(s).await;
    assert_eq!(audited.len(), events + 1, "the repeat is audited once");
    let repeat = audited.last().unwrap();
    assert_eq!(repeat.detail["repeated"], true);
    assert_eq!(repeat.detail["sequence"], first.event.seq);

    // A token revoked with its task answers the task's event.
    let other = mint(s, &t, 40).await;
    let ended = complete(s, &t, 50).await;
    let through_task = revoke_ok(s, Target::Token(other.jti), 60).await;
    assert!(through_task.repeated);
    assert_eq!(through_task.event, ended.event);
    // So does the task itself, once ended.
    let task_again = revoke_ok(s, Target::Task(t.id), 70).await;
    assert!(task_again.repeated);
    assert_eq!(task_again.event, ended.event);

    for target in [
        Target::Agent(agent_id(AGENT2)),
        Target::Workflow(OTHER_WORKFLOW.into()),
        Target::All,
    ] {
        let first = revoke_ok(s, target.clone(), 80).await;
        let again = revoke_ok(s, target.clone(), 90).await;
        assert!(again.repeated, "{target}");
        assert_eq!(again.event, first.event, "{target}");
    }
    assert_eq!(s.last_revocation_seq().await.unwrap(), seq + 4);
}

/// An agent revoked before is revoked again once it has something live: a new
/// task's token is not covered by the old event.
pub async fn revoking_an_agent_again_revokes_what_it_got_since<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    mint(s, &t, 10).await;
    let first = revoke_ok(s, Target::Agent(agent_id(AGENT)), 20).await;
    assert_eq!(counts(&first), (1, 1));

    let later = open(s, task(AGENT, 30, 600)).await;
    let tok = mint(s, &later, 40).await;
    let again = revoke_ok(s, Target::Agent(agent_id(AGENT)), 50).await;
    assert!(!again.repeated);
    assert_eq!(again.event.seq, first.event.seq + 1);
    assert_eq!(counts(&again), (1, 1));
    assert!(is_revoked(s, &tok).await);
    assert_eq!(reread(s, &later).await.state, TaskState::Revoked);
}

/// Of two identical revocations racing, one revokes and the other answers its
/// event.
pub async fn identical_revocations_racing_make_one_event<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    mint(s, &t, 10).await;
    let (r1, a1) = admin_revocation(Target::Agent(agent_id(AGENT)), 20);
    let (r2, a2) = admin_revocation(Target::Agent(agent_id(AGENT)), 20);
    let (one, two) = tokio::join!(s.revoke(&r1, &a1), s.revoke(&r2, &a2));
    let (one, two) = (one.unwrap().unwrap(), two.unwrap().unwrap());
    assert_eq!(one.event, two.event);
    assert_eq!(
        [one.repeated, two.repeated].iter().filter(|r| **r).count(),
        1
    );
    assert_eq!(s.last_revocation_seq().await.unwrap(), 1);
}

/// A quarantine: everything of the agent revoked (its tokens, what was delegated
/// from them, its active tasks) with one event, and its issuance frozen, in one
/// transaction; a repeat adds nothing; the freeze holds until lifted.
pub async fn quarantining_an_agent_revokes_all_of_it_and_freezes_it_with_one_event<S: Store>(
    s: &S,
) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    let o = delegate(s, &tok, &[], SUB, 20).await;
    let child = redeem_ok(s, &o, 21).await;
    let other = open(s, task(AGENT2, 0, 600)).await;
    let other_tok = mint(s, &other, 10).await;
    let seq = s.last_revocation_seq().await.unwrap();

    let (r, audit) = quarantine_of(AGENT, 30);
    let f = freeze_of(FreezeTarget::Agent(agent_id(AGENT)), 30);
    let q = s.quarantine(&r, &f, &audit).await.unwrap();

    assert!(!q.revoked.repeated);
    assert!(q.newly_frozen);
    assert_eq!(q.freeze, f);
    assert_eq!(counts(&q.revoked), (2, 1));
    assert_eq!(s.last_revocation_seq().await.unwrap(), seq + 1, "one event");
    assert_revoked(s, &[&tok, &child], &[&other_tok]).await;
    assert_eq!(reread(s, &t).await.state, TaskState::Revoked);
    assert_eq!(reread(s, &other).await.state, TaskState::Active);
    assert_eq!(s.list_freezes().await.unwrap(), vec![f.clone()]);
    let recorded = all_events(s).await;
    let event = recorded
        .iter()
        .find(|e| e.action == Action::AgentQuarantined)
        .expect("the quarantine is audited");
    assert_eq!(event.detail["sequence"], q.revoked.event.seq);
    assert_eq!(event.detail["newly_frozen"], true);

    // Again: the original event, the standing freeze, nothing added.
    let (r2, audit2) = quarantine_of(AGENT, 35);
    let f2 = freeze_of(FreezeTarget::Agent(agent_id(AGENT)), 35);
    let again = s.quarantine(&r2, &f2, &audit2).await.unwrap();
    assert!(again.revoked.repeated);
    assert_eq!(again.revoked.event, q.revoked.event);
    assert!(!again.newly_frozen);
    assert_eq!(again.freeze, f);
    assert_eq!(s.last_revocation_seq().await.unwrap(), seq + 1);

    // A new task of the agent takes no token while the freeze stands.
    let later = open(s, task(AGENT, 40, 600)).await;
    assert_refused(s, &token(&later, 50), BUDGET, Refusal::Frozen).await;

    unfreeze(s, &FreezeTarget::Agent(agent_id(AGENT)), 70)
        .await
        .expect("frozen");
    mint(s, &later, 80).await;
}

/// A quarantine names one agent for its revocation and its freeze.
pub async fn a_quarantine_of_two_targets_is_refused_and_writes_nothing<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    let (r, audit) = quarantine_of(AGENT, 20);
    for f in [
        freeze_of(FreezeTarget::Agent(agent_id(AGENT2)), 20),
        freeze_of(FreezeTarget::All, 20),
    ] {
        assert!(s.quarantine(&r, &f, &audit).await.is_err());
    }
    assert!(!is_revoked(s, &tok).await);
    assert_eq!(s.list_freezes().await.unwrap(), vec![]);
    assert_eq!(s.last_revocation_seq().await.unwrap(), 0);
}

/// A security team's quarantine of `agent` at `secs`, with its audit event.
fn quarantine_of(agent: &str, secs: i64) -> (Revocation, AuditEvent) {
    let (r, _) = admin_revocation(Target::Agent(agent_id(agent)), secs);
    let e = AuditEvent::new(at(secs), ADMIN, Action::AgentQuarantined)
        .agent(agent)
        .reason(&r.reason);
    (r, e)
}
