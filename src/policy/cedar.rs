//! `CedarPolicy`: the start and mint decisions (the request built by `request`,
//! evaluated by `decide`) over a snapshot of a policy directory, and reload that
//! swaps the whole set at once and keeps the old one when the new one is invalid.
use super::load::{LoadError, Loaded, PolicyFiles, load};
use super::request::{declare_context, mint_context, start_context, task_entity, workload};
use super::values::{secs, uid};
use super::{Denied, MintInput, Permit, Policy, StartInput, WorkflowLimits};
use crate::domain::text::quote;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// What `/readyz` and the logs say about the policy set.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    pub policies: usize,
    pub reloads: u64,
    pub failed_reloads: u64,
    /// The error of the last reload attempt, if it failed (the old set stays).
    pub last_error: Option<String>,
}

/// Cedar-backed decisions over a policy directory.
pub struct CedarPolicy {
    dir: PathBuf,
    environment: String,
    current: RwLock<Arc<Loaded>>,
    status: Mutex<PolicyStatus>,
    /// What the directory looked like when the last reload failed, so an
    /// unchanged broken set is not retried (and logged) on every tick.
    failed: Mutex<Option<Scan>>,
}

type Scan = Result<Vec<(PathBuf, Option<SystemTime>, u64)>, String>;

fn scan(dir: &Path) -> Scan {
    PolicyFiles::scan(dir)
        .map(|f| f.fingerprint)
        .map_err(|e| e.to_string())
}

impl CedarPolicy {
    /// Loads and validates a policy directory; refuses an invalid one.
    pub fn load(dir: &Path, environment: &str) -> Result<Self, LoadError> {
        let loaded = load(dir)?;
        let status = PolicyStatus {
            policies: loaded.policies.policies().count(),
            ..Default::default()
        };
        Ok(CedarPolicy {
            dir: dir.to_path_buf(),
            environment: environment.to_string(),
            current: RwLock::new(Arc::new(loaded)),
            status: Mutex::new(status),
            failed: Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the directory again and swaps the whole set in at once. An invalid
    /// set leaves the current one in place; the error is kept for `status()`.
    pub fn reload(&self) -> Result<(), LoadError> {
        let result = load(&self.dir);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(loaded) => {
                status.policies = loaded.policies.policies().count();
                status.reloads += 1;
                status.last_error = None;
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                Ok(())
            }
            Err(e) => {
                status.failed_reloads += 1;
                status.last_error = Some(e.to_string());
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(scan(&self.dir));
                Err(e)
            }
        }
    }

    /// Reloads when a file was added, removed or changed since the last load
    /// (or the last failed attempt). `Ok(false)` when nothing changed.
    pub fn reload_if_changed(&self) -> Result<bool, LoadError> {
        let now = scan(&self.dir);
        let same = now
            .as_ref()
            .is_ok_and(|f| *f == self.current().files.fingerprint);
        let failed_same = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&now);
        if same || failed_same {
            return Ok(false);
        }
        self.reload().map(|_| true)
    }

    pub fn status(&self) -> PolicyStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Policy for CedarPolicy {
    fn workflow(&self, name: &str) -> Option<WorkflowLimits> {
        self.current().workflows.get(name).cloned()
    }

    fn decide_start(&self, i: &StartInput<'_>) -> Result<Permit, Denied> {
        self.start_in(&self.environment, i)
    }

    fn decide_mint(&self, i: &MintInput<'_>) -> Result<Permit, Denied> {
        self.mint_in(&self.environment, i)
    }

    fn reads_token_count(&self) -> bool {
        self.current().reads_token_count
    }

    fn longest_token_ttl(&self) -> Duration {
        // The longest any set could allow: a reload may raise a workflow's TTL
        // while the key registration is already out.
        Duration::from_secs(24 * 3600).min(
            self.current()
                .workflows
                .values()
                .map(|w| w.max_token_ttl)
                .max()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1)),
        )
    }
}

/// Decisions in a given environment (the broker's own, or a policy test case's).
impl CedarPolicy {
    pub fn start_in(&self, environment: &str, i: &StartInput<'_>) -> Result<Permit, Denied> {
        // One snapshot for the whole decision: a reload never splits it.
        let set = self.current();
        let wf = set
            .workflows
            .get(i.workflow)
            .ok_or_else(|| Denied::new(format!("workflow {} is not defined", quote(i.workflow))))?;
        if i.duration > wf.max_task_duration {
            return Err(Denied {
                reason: format!(
                    "duration {}s exceeds workflow {} maximum of {}s",
                    i.duration.as_secs(),
                    quote(i.workflow),
                    wf.max_task_duration.as_secs()
                ),
                policies: vec![format!("workflow:{}", i.workflow)],
            });
        }
        let wf_uid = uid("Mayfly::Workflow", i.workflow);
        let agent = workload("Mayfly::Agent", i.agent)?;
        let orch = workload("Mayfly::Orchestrator", i.orchestrator)?;
        let (slice, needs) = set.slice(("StartTask", i.workflow));
        let mut policies = set.decide(
            orch.uid(),
            ("StartTask", slice),
            wf_uid.clone(),
            start_context(i.agent, secs(i.duration), i.scopes, environment, i.now),
            (
                vec![agent.clone(), orch.clone()],
                set.workflow_entity(&wf_uid, needs).into_iter().collect(),
            ),
            || {
                format!(
                    "{} opening workflow {} for {}",
                    i.orchestrator,
                    quote(i.workflow),
                    i.agent
                )
            },
        )?;
        for (n, scope) in i.scopes.iter().enumerate() {
            let (slice, needs) = set.slice(("DeclareScope", &scope.audience));
            let (resource, mut file) =
                set.resource(scope, needs.file_entities)
                    .map_err(|d| Denied {
                        reason: format!("scopes[{n}]: {}", d.reason),
                        ..d
                    })?;
            file.extend(set.workflow_entity(&wf_uid, needs));
            let p = set.decide(
                agent.uid(),
                ("DeclareScope", slice),
                resource.uid(),
                declare_context(&wf_uid, i.orchestrator, scope, environment),
                (vec![agent.clone(), orch.clone(), resource], file),
                || format!("declaring scope {scope} in workflow {}", quote(i.workflow)),
            )?;
            policies.extend(p);
        }
        policies.sort();
        policies.dedup();
        Ok(Permit {
            policies,
            limits: wf.clone(),
        })
    }

    pub fn mint_in(&self, environment: &str, i: &MintInput<'_>) -> Result<Permit, Denied> {
        let set = self.current();
        let wf = set.workflows.get(&i.task.workflow).ok_or_else(|| {
            Denied::new(format!(
                "workflow {} is no longer defined",
                quote(&i.task.workflow)
            ))
        })?;
        let wf_uid = uid("Mayfly::Workflow", &i.task.workflow);
        let (slice, needs) = set.slice(("Mint", &i.scope.audience));
        let agent = workload("Mayfly::Agent", i.agent)?;
        // The task entity only when a policy can reach it (`Needs::task`). Its
        // agent is the task's own: for a delegated token (depth > 0) not the
        // principal, which is the sub-agent.
        let mut task = vec![];
        if needs.task {
            let owner = if i.delegation_depth == 0 {
                agent.uid()
            } else {
                let owner = workload("Mayfly::Agent", &i.task.agent)?;
                let uid = owner.uid();
                task.push(owner);
                uid
            };
            task.push(task_entity(i, &wf_uid, owner)?);
        }
        let (resource, mut file) = set.resource(i.scope, needs.file_entities)?;
        file.extend(set.workflow_entity(&wf_uid, needs));
        let (principal, requested) = (agent.uid(), resource.uid());
        let mut built = vec![agent, resource];
        built.extend(task);
        let policies = set.decide(
            principal,
            ("Mint", slice),
            requested,
            mint_context(i, &wf_uid, environment),
            (built, file),
            || format!("minting {} in task {}", i.scope, i.task.id),
        )?;
        Ok(Permit {
            policies,
            limits: wf.clone(),
        })
    }
}
