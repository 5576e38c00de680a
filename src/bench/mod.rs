//! A load driver for a running broker, `mayfly bench`'s and the in-process
//! load generators' (`examples/mint_load.rs`, `prune_load.rs`). Workers mint
//! through one edge (gRPC `MintToken`, or the OAuth front door's
//! `POST /oauth/token` over HTTP/1.1 or HTTP/2), each with one request in
//! flight, in tasks an orchestrator opens for them, each task replaced before
//! its budget runs out; they measure what a client sees: rates, latency
//! percentiles, errors by kind. What the broker spends (CPU, memory) is not
//! observable from here: read it on its host.
//!
//! - `edge`: one mint over each edge, on a kept or a new connection, and what
//!   an answer counts as.
//! - `tasks`: the tasks the workers mint in, and the resources they ask for.
//! - `pace`: the `--rate` cap.
//! - `hold`: idle connections held open meanwhile.
//! - `figures`: what a run measured, and its report.
//! - `command`: `mayfly bench`, its flags to a [`Plan`] and its report printed.
mod answer;
mod command;
mod edge;
mod figures;
mod hold;
mod pace;
mod tasks;

pub use command::command;
pub use figures::{ErrorKind, Failure, Figures, Histogram, Latency, Report, Unmeasured};
pub use tasks::{MIN_TASK, TaskPlan};

use crate::client::{Broker, Failed, Svid, exit};
use answer::Outcome;
use edge::{Ask, Route};
use std::sync::Arc;
use std::time::Duration;
use tasks::{Opener, Slot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The way in to the broker's mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// gRPC `MintToken`.
    Grpc,
    /// The OAuth front door, `POST /oauth/token` over HTTP/1.1.
    Http,
    /// The OAuth front door over HTTP/2.
    H2,
}

impl Edge {
    pub fn name(self) -> &'static str {
        match self {
            Edge::Grpc => "grpc",
            Edge::Http => "http",
            Edge::H2 => "h2",
        }
    }
}

/// How a run drives the broker.
#[derive(Debug, Clone)]
pub struct Plan {
    pub edge: Edge,
    /// Workers, each with one request in flight.
    pub concurrency: usize,
    /// A new connection for every request, its handshake in the latency.
    pub new_connection: bool,
    /// Requests a second across all workers, at most.
    pub rate: Option<f64>,
    /// Idle connections held open besides the workers'.
    pub hold: usize,
    /// The lifetime each mint asks for (the broker may grant less).
    pub ttl: Duration,
    /// How long a request (and the connection opened for it) may take.
    pub request_timeout: Duration,
    pub tasks: TaskPlan,
}

/// Who takes part: the broker, the agent that mints and the orchestrator that
/// opens its tasks.
#[derive(Clone)]
pub struct Parties {
    pub broker: Broker,
    pub agent: Svid,
    pub orchestrator: Svid,
}

/// A plan that cannot run: a usage error (exit 2) naming what is wrong.
fn unusable(message: String) -> anyhow::Error {
    crate::client::usage(message)
}

impl Plan {
    fn check(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            return Err(unusable("--concurrency must be at least 1".into()));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(unusable(format!(
                "--rate {rate} must be a positive number of requests a second"
            )));
        }
        let t = &self.tasks;
        if t.duration < MIN_TASK {
            return Err(unusable(format!(
                "--task-duration {:?} must be at least {MIN_TASK:?}",
                t.duration
            )));
        }
        if t.scope.action == "*" {
            return Err(unusable(
                "--scope: a mint names one action; declare it instead of '*'".into(),
            ));
        }
        let asked = crate::domain::Scope::requested(
            t.scope.audience.clone(),
            t.resource("b0-0"),
            t.scope.action.clone(),
        );
        if !asked.is_ok_and(|a| t.scope.covers(&a)) {
            return Err(unusable(format!(
                "--scope {}: no resource to mint under it",
                t.scope
            )));
        }
        Ok(())
    }
}

/// One worker: its way to the broker, its task, how many mints it asked for.
struct Worker {
    index: usize,
    route: Route,
    slot: Arc<Slot>,
    asked: u64,
}

/// What a phase's workers share.
struct Phase {
    opener: Arc<Opener>,
    pace: Option<pace::Pacer>,
    plan: Arc<Plan>,
    stop: CancellationToken,
}

/// How long a worker waits after a task failed to open before it tries again:
/// an opening is not a mint, and a broker refusing every one is not hammered.
const REOPEN_AFTER: Duration = Duration::from_millis(100);

impl Worker {
    async fn run(mut self, phase: Arc<Phase>) -> (Worker, Figures) {
        let mut f = Figures::default();
        while !phase.stop.is_cancelled() {
            self.step(&phase, &mut f).await;
        }
        (self, f)
    }

    /// One mint: a ticket of the worker's task (a new task opened first when
    /// it is spent), the pace's due time, the request.
    async fn step(&mut self, phase: &Phase, f: &mut Figures) {
        let ticket = match self.slot.ticket(&phase.opener).await {
            Ok(t) => t,
            Err(s) => {
                let code = crate::client::refusal(s.clone()).code;
                let kind = format!("open task: grpc {:?}", s.code());
                f.error(Failure::new(kind, s.message(), code));
                tokio::select! {
                    _ = phase.stop.cancelled() => {}
                    _ = tokio::time::sleep(REOPEN_AFTER) => {}
                }
                return;
            }
        };
        f.tasks_opened += u64::from(ticket.opened);
        let started = match &phase.pace {
            None => Instant::now(),
            Some(pace) => {
                let due = pace.due();
                tokio::select! {
                    _ = phase.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => due,
                }
            }
        };
        self.asked += 1;
        let resource = phase
            .plan
            .tasks
            .resource(&format!("b{}-{}", self.index, self.asked));
        let scope = &phase.plan.tasks.scope;
        let ask = Ask {
            task: &ticket.task,
            audience: &scope.audience,
            resource: &resource,
            action: &scope.action,
            ttl: phase.plan.ttl,
        };
        let outcome = self.route.mint(&ask, phase.plan.request_timeout).await;
        f.requests += 1;
        match outcome {
            Outcome::Minted => f.latency.record(started.elapsed()),
            Outcome::Budget => {
                f.budget_refusals += 1;
                self.slot.spent(&ticket, &phase.opener).await;
            }
            Outcome::Failed(why) => f.error(why),
        }
    }
}

/// A broker under load: the workers with their connections and tasks, kept
/// from one phase to the next.
pub struct Bench {
    plan: Arc<Plan>,
    workers: Vec<Worker>,
    opener: Arc<Opener>,
    hold: Option<hold::Hold>,
    /// The first mint and the warm-ups.
    unmeasured: Figures,
}

impl Bench {
    /// Connects the workers (and the held connections), and mints once: the
    /// orchestrator's first task and the agent's first token show before any
    /// load that the broker serves them, or the error says who it refused.
    pub async fn start(plan: Plan, parties: &Parties) -> anyhow::Result<Bench> {
        plan.check()?;
        let unreachable = |e: anyhow::Error| -> anyhow::Error {
            Failed {
                code: exit::UNREACHABLE,
                message: format!("{e:#}"),
            }
            .into()
        };
        let agent = parties.agent.spiffe_id().map_err(unreachable)?;
        let orchestrator = parties.orchestrator.spiffe_id().map_err(unreachable)?;
        // Each worker's connection (or two, one closing as the next opens), the
        // shared and held ones, the orchestrator's, and what the runtime uses.
        let fds = 2 * plan.concurrency as u64 + plan.hold as u64 + 64;
        hold::make_room(fds, "this --concurrency and --hold")?;
        let orch = parties
            .broker
            .connect(&parties.orchestrator)
            .await
            .map_err(unreachable)?;
        let opener = Arc::new(Opener::new(orch, &plan.tasks, agent.as_str()));
        let routes = edge::routes(
            plan.edge,
            plan.concurrency,
            plan.new_connection,
            &parties.broker,
            &parties.agent,
        )
        .await?;
        let shared = Slot::new();
        let mut workers: Vec<Worker> = routes
            .into_iter()
            .enumerate()
            .map(|(index, route)| Worker {
                index,
                route,
                slot: if plan.tasks.shared {
                    shared.clone()
                } else {
                    Slot::new()
                },
                asked: 0,
            })
            .collect();
        let mut unmeasured = Figures::default();
        // The first mint, by hand, to name who was refused.
        let Some(first) = workers.first_mut() else {
            return Err(unusable("--concurrency must be at least 1".into()));
        };
        let ticket = first.slot.ticket(&opener).await.map_err(|s| {
            let mut f = crate::client::refusal(s);
            f.message = format!(
                "the broker refused to open a {} task for {agent} as {orchestrator} (--orchestrator-cert): {}",
                plan.tasks.workflow, f.message
            );
            anyhow::Error::from(f)
        })?;
        unmeasured.tasks_opened += 1;
        let resource = plan.tasks.resource("b0-0");
        let ask = Ask {
            task: &ticket.task,
            audience: &plan.tasks.scope.audience,
            resource: &resource,
            action: &plan.tasks.scope.action,
            ttl: plan.ttl,
        };
        unmeasured.requests += 1;
        let sent = Instant::now();
        match first.route.mint(&ask, plan.request_timeout).await {
            Outcome::Minted => unmeasured.latency.record(sent.elapsed()),
            Outcome::Budget => {
                return Err(Failed {
                    code: exit::CONFLICT,
                    message: format!(
                        "the broker refused the first mint of a new {} task for its budget",
                        plan.tasks.workflow
                    ),
                }
                .into());
            }
            Outcome::Failed(why) => {
                return Err(Failed {
                    code: why.code,
                    message: format!(
                        "the broker refused {agent} (--cert) a token for {} {resource} {} over {}: {why}",
                        plan.tasks.scope.audience,
                        plan.tasks.scope.action,
                        plan.edge.name()
                    ),
                }
                .into());
            }
        }
        // Every worker's first task, so that the measured mints start at once.
        for w in workers.iter().skip(1) {
            let opened = w.slot.prepare(&opener).await.map_err(|s| {
                let mut f = crate::client::refusal(s);
                f.message = format!("opening a task for worker {}: {}", w.index, f.message);
                anyhow::Error::from(f)
            })?;
            unmeasured.tasks_opened += u64::from(opened);
        }
        let hold = match plan.hold {
            0 => None,
            n => Some(hold::Hold::open(&parties.broker.endpoint(&parties.agent)?, n).await?),
        };
        Ok(Bench {
            plan: Arc::new(plan),
            workers,
            opener,
            hold,
            unmeasured,
        })
    }

    /// Mints for `d`, unmeasured: connections and the broker warm up.
    pub async fn warm_up(&mut self, d: Duration) {
        let f = self.run_for(d).await;
        self.unmeasured.merge(&f);
    }

    /// Mints for `d`; what it measured.
    pub async fn run_for(&mut self, d: Duration) -> Figures {
        let stop = CancellationToken::new();
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                stop.cancel();
            })
        };
        let f = self.run_until(stop).await;
        timer.abort();
        f
    }

    /// Mints until `stop` is cancelled; what it measured. Requests in flight
    /// then are finished and counted.
    pub async fn run_until(&mut self, stop: CancellationToken) -> Figures {
        let start = Instant::now();
        let phase = Arc::new(Phase {
            opener: self.opener.clone(),
            pace: self.plan.rate.map(|r| pace::Pacer::new(r, start)),
            plan: self.plan.clone(),
            stop,
        });
        let running: Vec<_> = self
            .workers
            .drain(..)
            .map(|w| tokio::spawn(w.run(phase.clone())))
            .collect();
        let mut total = Figures::default();
        for r in running {
            match r.await {
                Ok((w, f)) => {
                    self.workers.push(w);
                    total.merge_worker(&f);
                }
                // Its connection went with it; the others go on.
                Err(e) => total.error(Failure::new("worker ended", e.to_string(), 1)),
            }
        }
        total.elapsed = start.elapsed();
        total
    }

    /// Opens again kept front-door connections the broker closed while the
    /// workers were not minting (between phases); how many.
    pub async fn reopen_closed(&mut self) -> anyhow::Result<usize> {
        let mut n = 0;
        for w in &mut self.workers {
            if w.route
                .reopen_if_closed()
                .await
                .map_err(|f| anyhow::anyhow!("{f}"))?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Held connections whose last call was answered.
    pub fn held(&self) -> usize {
        self.hold.as_ref().map_or(0, hold::Hold::open_now)
    }

    /// The first mint and the warm-ups.
    pub fn unmeasured(&self) -> &Figures {
        &self.unmeasured
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The report of a measured phase.
    pub fn report(&self, measured: &Figures) -> Report {
        Report::new(&self.plan, measured, &self.unmeasured, self.held())
    }

    /// Closes every connection.
    pub fn stop(self) {
        if let Some(h) = self.hold {
            h.stop();
        }
    }
}

/// A whole run: start, warm up, measure for `duration`, report.
pub async fn run(
    plan: Plan,
    parties: &Parties,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    let mut bench = Bench::start(plan, parties).await?;
    if !warmup.is_zero() {
        bench.warm_up(warmup).await;
    }
    let measured = bench.run_for(duration).await;
    let report = bench.report(&measured);
    bench.stop();
    Ok(report)
}
