//! The local revocation set: what the broker's revocation stream has revoked, each
//! entry kept only as long as a token it could concern can still be presented.
use crate::token::Claims;
use std::collections::HashMap;

/// What a revocation event applies to, as the verifier keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One token, by `jti`.
    Token(String),
    /// Every token of a task.
    Task(String),
    /// Every token of an agent (SPIFFE ID) issued up to the event.
    Agent(String),
    /// Every token of a workflow's tasks issued up to the event.
    Workflow(String),
    /// Every token issued up to the event.
    All,
}

/// One revocation event: its sequence, its target and when it happened (Unix
/// seconds, the broker's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub sequence: u64,
    pub target: Revoked,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    at: i64,
    /// After this instant (Unix seconds) no token the entry concerns can still be
    /// presented: every one of them has expired, leeway included.
    prune_at: i64,
}

/// Revoked tokens, tasks, agents and "all", looked up per check without I/O.
#[derive(Debug)]
pub struct RevocationSet {
    tokens: HashMap<String, Entry>,
    tasks: HashMap<String, Entry>,
    agents: HashMap<String, Entry>,
    workflows: HashMap<String, Entry>,
    all: Option<Entry>,
    /// Seconds an entry is kept after its event: the longest token lifetime, the
    /// leeway and the skew margin.
    keep: i64,
    /// Margin for the `iat` rule of agent and "all" revocations: the broker that
    /// minted a token may run ahead of the one that revoked.
    skew: i64,
}

impl RevocationSet {
    /// `max_token_lifetime`, `leeway` and `skew` in seconds.
    pub fn new(max_token_lifetime: i64, leeway: i64, skew: i64) -> Self {
        RevocationSet {
            tokens: HashMap::new(),
            tasks: HashMap::new(),
            agents: HashMap::new(),
            workflows: HashMap::new(),
            all: None,
            keep: max_token_lifetime
                .saturating_add(leeway)
                .saturating_add(skew),
            skew,
        }
    }

    /// Records a revocation. An event whose tokens have all expired by `now` (a
    /// replay of old history) is not kept; returns whether it was.
    pub fn apply(&mut self, r: Revocation, now: i64) -> bool {
        let entry = Entry {
            sequence: r.sequence,
            at: r.at,
            prune_at: r.at.saturating_add(self.keep),
        };
        if entry.prune_at <= now {
            return false;
        }
        match r.target {
            Revoked::Token(jti) => keep_longest(self.tokens.entry(jti).or_insert(entry), entry),
            Revoked::Task(task) => keep_longest(self.tasks.entry(task).or_insert(entry), entry),
            // A later agent, workflow or "all" event covers every token an earlier
            // one did (its `iat` bound is later) and is kept longer: it replaces it.
            Revoked::Agent(agent) => keep_latest(self.agents.entry(agent).or_insert(entry), entry),
            Revoked::Workflow(wf) => keep_latest(self.workflows.entry(wf).or_insert(entry), entry),
            Revoked::All => match &mut self.all {
                Some(e) if e.at >= entry.at => {}
                slot => *slot = Some(entry),
            },
        }
        true
    }

    /// The sequence of a revocation that covers the token, if any.
    pub fn revoked(&self, c: &Claims) -> Option<u64> {
        if let Some(e) = self.tokens.get(&c.jti) {
            return Some(e.sequence);
        }
        // A delegated token dies with every token it descends from.
        if let Some(e) = c.ancestors.iter().find_map(|j| self.tokens.get(j)) {
            return Some(e.sequence);
        }
        if let Some(e) = self.tasks.get(&c.task) {
            return Some(e.sequence);
        }
        // Agent, workflow and "all" events revoke what was issued up to them; a
        // token issued later (say, for a new task) is not revoked by them.
        let issued_before = |e: &&Entry| c.iat <= e.at.saturating_add(self.skew);
        if let Some(e) = self.agents.get(&c.sub).filter(issued_before) {
            return Some(e.sequence);
        }
        // ... and with every agent of its delegation chain.
        if let Some(e) = c
            .actors()
            .find_map(|a| self.agents.get(a).filter(issued_before))
        {
            return Some(e.sequence);
        }
        if let Some(e) = self.workflows.get(&c.wf).filter(issued_before) {
            return Some(e.sequence);
        }
        self.all.as_ref().filter(issued_before).map(|e| e.sequence)
    }

    /// Forgets every entry whose tokens have all expired by `now`.
    pub fn prune(&mut self, now: i64) {
        let live = |e: &Entry| e.prune_at > now;
        self.tokens.retain(|_, e| live(e));
        self.tasks.retain(|_, e| live(e));
        self.agents.retain(|_, e| live(e));
        self.workflows.retain(|_, e| live(e));
        self.all = self.all.filter(live);
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.tokens.len()
            + self.tasks.len()
            + self.agents.len()
            + self.workflows.len()
            + usize::from(self.all.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A second agent or workflow event: the later one covers all the earlier did.
fn keep_latest(kept: &mut Entry, new: Entry) {
    if new.at > kept.at {
        *kept = new;
    }
}

/// A second event for the same token or task: keep the first sequence, and the
/// entry as long as the later event asks.
fn keep_longest(kept: &mut Entry, new: Entry) {
    if new.prune_at > kept.prune_at {
        kept.prune_at = new.prune_at;
        kept.at = new.at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Confirmation;

    const HOUR: i64 = 3600;

    fn claims(jti: &str, task: &str, sub: &str, iat: i64) -> Claims {
        Claims {
            iss: "mayfly".into(),
            sub: sub.into(),
            aud: "crm-api".into(),
            exp: iat + 300,
            iat,
            nbf: iat,
            jti: jti.into(),
            scope: "read:customers/eu/*".into(),
            task: task.into(),
            wf: "support".into(),
            cnf: Confirmation {
                x5t_s256: "x".into(),
            },
            act: None,
            client_id: sub.into(),
            depth: 0,
            ancestors: vec![],
        }
    }

    fn rev(sequence: u64, target: Revoked, at: i64) -> Revocation {
        Revocation {
            sequence,
            target,
            at,
        }
    }

    /// Lifetime one hour, leeway 5 s, skew 2 s.
    fn set() -> RevocationSet {
        RevocationSet::new(HOUR, 5, 2)
    }

    #[test]
    fn a_revoked_token_or_task_is_refused_and_others_are_not() {
        let mut s = set();
        assert!(s.apply(rev(1, Revoked::Token("j1".into()), 1000), 1000));
        assert!(s.apply(rev(2, Revoked::Task("t2".into()), 1000), 1000));
        assert_eq!(s.revoked(&claims("j1", "t1", "a", 900)), Some(1));
        assert_eq!(s.revoked(&claims("j2", "t2", "a", 900)), Some(2));
        assert_eq!(s.revoked(&claims("j3", "t1", "a", 900)), None);
    }

    #[test]
    fn an_agent_revocation_concerns_only_tokens_issued_up_to_it_plus_the_skew_margin() {
        let mut s = set();
        s.apply(
            rev(7, Revoked::Agent("spiffe://td/agent/a".into()), 1000),
            1000,
        );
        let a = "spiffe://td/agent/a";
        assert_eq!(s.revoked(&claims("j", "t", a, 990)), Some(7));
        assert_eq!(s.revoked(&claims("j", "t", a, 1000)), Some(7));
        assert_eq!(
            s.revoked(&claims("j", "t", a, 1002)),
            Some(7),
            "within skew"
        );
        assert_eq!(s.revoked(&claims("j", "t", a, 1003)), None, "a later token");
        assert_eq!(
            s.revoked(&claims("j", "t", "spiffe://td/agent/b", 990)),
            None
        );
    }

    #[test]
    fn a_workflow_revocation_concerns_its_tokens_issued_up_to_it() {
        let mut s = set();
        s.apply(rev(8, Revoked::Workflow("support".into()), 1000), 1000);
        let mut c = claims("j", "t", "a", 999);
        assert_eq!(s.revoked(&c), Some(8));
        c.iat = 1003;
        assert_eq!(s.revoked(&c), None, "a later token");
        c.iat = 999;
        c.wf = "billing".into();
        assert_eq!(s.revoked(&c), None, "another workflow");
    }

    #[test]
    fn revoking_all_concerns_every_earlier_token_and_no_later_one() {
        let mut s = set();
        s.apply(rev(3, Revoked::All, 1000), 1000);
        assert_eq!(s.revoked(&claims("j", "t", "anyone", 500)), Some(3));
        assert_eq!(s.revoked(&claims("j", "t", "anyone", 1010)), None);
        // A later "all" replaces it; an earlier one (replayed) does not.
        s.apply(rev(9, Revoked::All, 2000), 2000);
        s.apply(rev(4, Revoked::All, 1500), 2000);
        assert_eq!(s.revoked(&claims("j", "t", "anyone", 1800)), Some(9));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_later_agent_revocation_replaces_an_earlier_one() {
        let mut s = set();
        let a = "spiffe://td/agent/a";
        s.apply(rev(1, Revoked::Agent(a.into()), 1000), 1000);
        s.apply(rev(5, Revoked::Agent(a.into()), 2000), 2000);
        assert_eq!(s.revoked(&claims("j", "t", a, 900)), Some(5));
        assert_eq!(s.revoked(&claims("j", "t", a, 1500)), Some(5));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn entries_are_pruned_once_every_token_they_concern_has_expired() {
        let mut s = set();
        let a = "spiffe://td/agent/a";
        s.apply(rev(1, Revoked::Token("j".into()), 1000), 1000);
        s.apply(rev(2, Revoked::Task("t".into()), 1000), 1000);
        s.apply(rev(3, Revoked::Agent(a.into()), 1000), 1000);
        s.apply(rev(4, Revoked::All, 1000), 1000);
        s.apply(rev(5, Revoked::Workflow("support".into()), 1000), 1000);
        // lifetime + leeway + skew after the event, a token issued at the event
        // (iat within the skew margin) could still be presented within leeway.
        let last = 1000 + HOUR + 5 + 2;
        s.prune(last - 1);
        assert_eq!(s.len(), 5);
        assert_eq!(s.revoked(&claims("j", "x", "b", 1000)), Some(1));
        s.prune(last);
        assert!(s.is_empty());
        assert_eq!(s.revoked(&claims("j", "t", a, 1000)), None);
    }

    #[test]
    fn a_replayed_event_whose_tokens_have_all_expired_is_not_kept() {
        let mut s = set();
        assert!(!s.apply(rev(1, Revoked::Task("t".into()), 1000), 1000 + 2 * HOUR));
        assert!(s.is_empty());
    }

    #[test]
    fn a_repeated_event_keeps_the_entry_as_long_as_the_later_one_asks() {
        let mut s = set();
        s.apply(rev(1, Revoked::Task("t".into()), 1000), 1000);
        s.apply(rev(2, Revoked::Task("t".into()), 2000), 2000);
        assert_eq!(s.revoked(&claims("j", "t", "a", 900)), Some(1));
        s.prune(1000 + HOUR + 7);
        assert_eq!(s.revoked(&claims("j", "t", "a", 900)), Some(1));
    }
}
