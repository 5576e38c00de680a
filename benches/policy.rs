//! One Cedar decision with the example policy set (`examples/policies`): the
//! MintToken decision a broker makes per token, an explicit forbid, and a
//! StartTask with two declared scopes.
//!
//!   cargo bench --bench policy
//!
//! Besides criterion's estimates it prints p50/p99/p99.9 over 200,000 single
//! decisions timed one by one, which is what the target is stated in.
use criterion::{Criterion, criterion_group};
use mayfly::domain::SpiffeId;
use mayfly::domain::{Scope, Task, TaskId, TaskState};
use mayfly::policy::{CedarPolicy, MintInput, Policy, StartInput};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

struct Fixture {
    policy: CedarPolicy,
    agent: SpiffeId,
    coder: SpiffeId,
    orchestrator: SpiffeId,
    support_task: Task,
    coding_task: Task,
    read: Scope,
    push_main: Scope,
    declared: Vec<Scope>,
    now: OffsetDateTime,
}

fn task(agent: &SpiffeId, workflow: &str, now: OffsetDateTime) -> Task {
    Task {
        id: TaskId::new(),
        agent: agent.clone(),
        workflow: workflow.into(),
        objective: "benchmark".into(),
        scopes: vec![],
        state: TaskState::Active,
        opened_by: SpiffeId::parse("spiffe://example.org/orchestrator/main").unwrap(),
        created_at: now - Duration::from_secs(120),
        expires_at: now + Duration::from_secs(1800),
        ended_at: None,
        end_reason: None,
        tokens_minted: 3,
    }
}

fn fixture() -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let policy = CedarPolicy::load(&dir, "prod-eu").expect("the example policies load");
    let id = |s: &str| SpiffeId::parse(s).expect("a valid SPIFFE ID");
    let agent = id("spiffe://example.org/agent/support-eu-1");
    let coder = id("spiffe://example.org/agent/coding-1");
    let now = OffsetDateTime::now_utc();
    let scope = |a: &str, r: &str, x: &str| Scope::declared(a, r, x).expect("a valid scope");
    Fixture {
        support_task: task(&agent, "support-triage", now),
        coding_task: task(&coder, "code-review", now),
        orchestrator: id("spiffe://example.org/orchestrator/main"),
        read: scope("crm-api", "customers/eu/42", "read"),
        push_main: scope("github", "repos/acme/api/branches/main", "push"),
        declared: vec![
            scope("crm-api", "customers/eu/*", "read"),
            scope("tickets", "tickets/4711", "comment"),
        ],
        policy,
        agent,
        coder,
        now,
    }
}

impl Fixture {
    fn mint(&self) -> bool {
        self.policy
            .decide_mint(&MintInput {
                agent: &self.agent,
                task: &self.support_task,
                scope: &self.read,
                requested_ttl: Duration::from_secs(120),
                delegation_depth: 0,
                now: self.now,
            })
            .is_ok()
    }

    fn mint_forbidden(&self) -> bool {
        self.policy
            .decide_mint(&MintInput {
                agent: &self.coder,
                task: &self.coding_task,
                scope: &self.push_main,
                requested_ttl: Duration::from_secs(120),
                delegation_depth: 0,
                now: self.now,
            })
            .is_ok()
    }

    fn start(&self) -> bool {
        self.policy
            .decide_start(&StartInput {
                orchestrator: &self.orchestrator,
                agent: &self.agent,
                workflow: "support-triage",
                objective: "benchmark",
                scopes: &self.declared,
                duration: Duration::from_secs(1800),
                now: self.now,
            })
            .is_ok()
    }
}

fn decisions(c: &mut Criterion) {
    let f = fixture();
    assert!(f.mint(), "the support mint is permitted");
    assert!(!f.mint_forbidden(), "a push to main is forbidden");
    assert!(f.start(), "the support task may open");
    c.bench_function("mint decision (permit)", |b| b.iter(|| black_box(f.mint())));
    c.bench_function("mint decision (forbid wins)", |b| {
        b.iter(|| black_box(f.mint_forbidden()))
    });
    c.bench_function("start decision (2 scopes)", |b| {
        b.iter(|| black_box(f.start()))
    });
}

fn percentiles(name: &str, n: usize, mut one: impl FnMut() -> bool) {
    for _ in 0..n / 10 {
        black_box(one());
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        black_box(one());
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)].as_secs_f64() * 1e6;
    println!(
        "{name:<30} n={n}  p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs",
        at(0.50),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

criterion_group!(benches, decisions);

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick then.
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 200_000 } else { 1_000 };
    let f = fixture();
    percentiles("mint decision (permit)", n, || f.mint());
    percentiles("mint decision (forbid wins)", n, || f.mint_forbidden());
    percentiles("start decision (2 scopes)", n, || f.start());
    if full {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
