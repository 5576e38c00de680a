//! Tasks: insert and read, list, count, end (with the revocation of every token),
//! and the sweeper's pages of overdue tasks.
use super::fixtures::*;
use mayfly::domain::{Target, Trigger};
use mayfly::domain::{Task, TaskId, TaskState};
use mayfly::store::*;

fn ids(tasks: Vec<Task>) -> Vec<TaskId> {
    tasks.into_iter().map(|t| t.id).collect()
}

fn filter(agent: Option<&str>, state: Option<TaskState>, limit: u32) -> TaskFilter {
    TaskFilter {
        agent: agent.map(agent_id),
        state,
        limit,
    }
}

pub async fn a_task_reads_back_as_inserted_with_its_audit_event<S: Store>(s: &S) {
    let t = task(AGENT, 0, 600);
    s.insert_task(&t, &opened(&t)).await.unwrap();

    assert_eq!(s.get_task(t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(s.audit_for_task(t.id).await.unwrap(), vec![opened(&t)]);
    assert_eq!(s.get_task(TaskId::new()).await.unwrap(), None);
}

pub async fn list_tasks_filters_by_agent_and_state_newest_first<S: Store>(s: &S) {
    let a1 = open(s, task(AGENT, 0, 600)).await;
    let a2 = open(s, task(AGENT, 10, 600)).await;
    let b = open(s, task(AGENT2, 15, 600)).await;
    let a3 = open(s, task(AGENT, 20, 600)).await;
    complete(s, &a2, 30).await;

    let list = |f| async move { ids(s.list_tasks(&f).await.unwrap()) };
    assert_eq!(
        list(filter(None, None, 100)).await,
        [a3.id, b.id, a2.id, a1.id]
    );
    assert_eq!(
        list(filter(Some(AGENT), None, 100)).await,
        [a3.id, a2.id, a1.id]
    );
    assert_eq!(
        list(filter(Some(AGENT), Some(TaskState::Active), 100)).await,
        [a3.id, a1.id]
    );
    assert_eq!(
        list(filter(None, Some(TaskState::Completed), 100)).await,
        [a2.id]
    );
    assert_eq!(
        list(filter(Some(SUB), None, 100)).await,
        Vec::<TaskId>::new(),
        "an agent without tasks"
    );
    let listed = s.list_tasks(&filter(Some(AGENT), None, 100)).await.unwrap();
    assert_eq!(listed[1], reread(s, &a2).await, "listed as stored");
}

pub async fn list_tasks_returns_the_newest_up_to_the_limit<S: Store>(s: &S) {
    let mut opened = vec![];
    for i in 0..5 {
        opened.push(open(s, task(AGENT, i * 10, 600)).await.id);
    }
    let page = ids(s.list_tasks(&filter(None, None, 2)).await.unwrap());
    assert_eq!(page, [opened[4], opened[3]]);
}

pub async fn count_active_tasks_counts_only_active_tasks<S: Store>(s: &S) {
    assert_eq!(s.count_active_tasks().await.unwrap(), 0);
    let done = open(s, task(AGENT, 0, 600)).await;
    let revoked = open(s, task(AGENT, 0, 600)).await;
    open(s, task(AGENT2, 0, 600)).await;
    open(s, task(AGENT, 5, 600)).await;
    assert_eq!(s.count_active_tasks().await.unwrap(), 4);

    complete(s, &done, 10).await;
    revoke_ok(s, Target::Task(revoked.id), 20).await;
    assert_eq!(s.count_active_tasks().await.unwrap(), 2);
}

pub async fn end_task_ends_the_task_and_revokes_every_token_in_one_event<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok1 = mint(s, &t, 10).await;
    let tok2 = mint(s, &t, 20).await;
    let offer = delegate(s, &tok1, &[], SUB, 25).await;
    let delegated = redeem_ok(s, &offer, 30).await;
    let other = open(s, task(AGENT, 0, 600)).await;
    let other_tok = mint(s, &other, 10).await;
    let before = s.last_revocation_seq().await.unwrap();

    let (revocation, audit) = ending(&t, TaskState::Completed, 40);
    let outcome = s
        .end_task(t.id, TaskState::Completed, &revocation, &audit)
        .await
        .unwrap();

    let (ended, revoked) = match outcome {
        EndOutcome::Ended { task, revoked } => (task, revoked),
        other => panic!("not ended: {other:?}"),
    };
    assert_eq!(ended.id, t.id);
    assert_eq!(ended.state, TaskState::Completed);
    assert!(ended.ended_at.is_some());
    assert_eq!(
        ended.end_reason.as_deref(),
        Some(revocation.reason.as_str())
    );
    assert_eq!(*ended, reread(s, &t).await, "returned as stored");
    assert_eq!(revoked.tokens_revoked, 3, "two minted and one delegated");
    assert_eq!(revoked.tasks_stopped, 1);
    assert_eq!(revoked.event.seq, before + 1);
    let r = &revoked.event.revocation;
    assert_eq!(r.target, Target::Task(t.id));
    assert_eq!(
        (r.reason.as_str(), r.actor.as_str()),
        (revocation.reason.as_str(), ORCH)
    );
    assert_eq!(r.trigger, Trigger::TaskCompleted);
    assert!(r.at >= revocation.at);

    for tok in [&tok1, &tok2, &delegated] {
        assert!(is_revoked(s, tok).await, "token {} lives on", tok.jti);
        let status = s.token_status(tok.jti).await.unwrap().unwrap();
        assert!(status.revoked);
        assert_eq!(status.task_state, TaskState::Completed);
    }
    assert!(!is_revoked(s, &other_tok).await, "another task's token");
    assert_eq!(
        s.revocations_after(before, 10).await.unwrap(),
        vec![revoked.event.clone()]
    );
    assert_eq!(s.last_revocation_seq().await.unwrap(), before + 1);
    let events = s.audit_for_task(t.id).await.unwrap();
    for e in &audit {
        assert_recorded(&events, e);
    }
}

pub async fn end_task_of_an_ended_task_is_not_active_and_writes_nothing<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    mint(s, &t, 10).await;
    complete(s, &t, 20).await;
    let seq = s.last_revocation_seq().await.unwrap();
    let events = s.audit_for_task(t.id).await.unwrap().len();
    let stored = reread(s, &t).await;

    for to in [
        TaskState::Completed,
        TaskState::Deviated,
        TaskState::Expired,
    ] {
        assert_eq!(
            end(s, &t, to, 30).await,
            EndOutcome::NotActive(TaskState::Completed)
        );
    }
    assert_eq!(reread(s, &t).await, stored, "the ended task changed");
    assert_eq!(
        s.last_revocation_seq().await.unwrap(),
        seq,
        "a sequence number was taken"
    );
    assert_eq!(s.revocations_after(seq, 10).await.unwrap(), vec![]);
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);
}

pub async fn end_task_to_a_state_that_is_not_final_is_refused_and_writes_nothing<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    mint(s, &t, 10).await;
    let seq = s.last_revocation_seq().await.unwrap();
    let events = s.audit_for_task(t.id).await.unwrap().len();
    let (revocation, audit) = ending(&t, TaskState::Active, 20);
    let refused = s
        .end_task(t.id, TaskState::Active, &revocation, &audit)
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Other(m)) if m.contains("cannot become active")),
        "{refused:?}"
    );
    assert_eq!(reread(s, &t).await.state, TaskState::Active);
    assert_eq!(s.last_revocation_seq().await.unwrap(), seq);
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);
}

pub async fn end_task_of_an_unknown_task_is_not_found_and_writes_nothing<S: Store>(s: &S) {
    open(s, task(AGENT, 0, 600)).await;
    let ghost = task(AGENT, 0, 600);
    let seq = s.last_revocation_seq().await.unwrap();
    let events = all_events(s).await.len();

    assert_eq!(
        end(s, &ghost, TaskState::Completed, 10).await,
        EndOutcome::NotFound
    );
    assert_eq!(s.last_revocation_seq().await.unwrap(), seq);
    assert_eq!(all_events(s).await.len(), events, "an audit event written");
    assert_eq!(s.get_task(ghost.id).await.unwrap(), None);
}

pub async fn overdue_tasks_are_active_tasks_at_or_past_their_deadline_in_order<S: Store>(s: &S) {
    let now = 1000;
    let at_deadline = open(s, task(AGENT, 0, 1000)).await;
    let early = open(s, task(AGENT, 0, 500)).await;
    let middle = open(s, task(AGENT2, 100, 700)).await;
    open(s, task(AGENT, 0, 1001)).await;
    let ended = open(s, task(AGENT, 0, 100)).await;
    complete(s, &ended, 50).await;

    assert_eq!(
        s.overdue_tasks(at(now), None, 100).await.unwrap(),
        vec![
            (early.expires_at, early.id),
            (middle.expires_at, middle.id),
            (at_deadline.expires_at, at_deadline.id),
        ]
    );
    assert_eq!(s.overdue_tasks(at(499), None, 100).await.unwrap(), vec![]);
}

pub async fn overdue_tasks_page_by_cursor_through_equal_deadlines<S: Store>(s: &S) {
    let mut overdue = vec![];
    for lasts in [300, 200, 200, 100, 200] {
        let t = open(s, task(AGENT, 0, lasts)).await;
        overdue.push((t.expires_at, t.id));
    }
    // (deadline, id) order: equal deadlines are ordered by id.
    overdue.sort_by_key(|(deadline, id)| (*deadline, id.0));

    let mut seen = vec![];
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = s.overdue_tasks(at(1000), after, 2).await.unwrap();
        assert!(page.len() <= 2, "a page longer than its limit");
        let Some(last) = page.last() else { break };
        after = Some(*last);
        seen.extend(page);
        pages += 1;
        assert!(pages <= 3, "the cursor does not advance");
    }
    assert_eq!(seen, overdue, "each overdue task once, in order");
}
