//! Why a request is refused, as a type: one variant per reason, each with the
//! sentence its caller reads. The pure rules (mint, delegation, step-up, tasks)
//! return these; the broker records them; `error.rs` alone chooses their status
//! codes.
use super::text::{quote, rfc3339};
use super::{Freeze, Scope, SpiffeId, Target, TaskId, TaskState};
use crate::domain::FreezeTarget;
use time::OffsetDateTime;
use uuid::Uuid;

/// What was looked for and not found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Missing {
    #[error("task {0} not found")]
    Task(TaskId),
    #[error("delegation {0} not found")]
    Delegation(Uuid),
    #[error("approval {0} not found")]
    Approval(Uuid),
    /// A revocation's target.
    #[error("{0} not found")]
    Target(Target),
    #[error("{0} is not frozen")]
    Freeze(FreezeTarget),
}

/// Why a task mints nothing now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskClosed {
    #[error("task {task} is {state}, not active")]
    NotActive { task: TaskId, state: TaskState },
    #[error("task {task} passed its deadline")]
    PastDeadline { task: TaskId },
}

/// How a delegated scope is wider than the token it is delegated from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Widening {
    #[error("scope.audience: {} is not the parent token's audience {}", quote(.asked), quote(.held))]
    Audience { asked: String, held: String },
    #[error("scope.action: {} is not the parent token's action {}", quote(.asked), quote(.held))]
    Action { asked: String, held: String },
    #[error("scope.resource: {} is not within the parent token's resource {}", quote(.asked), quote(.held))]
    Resource { asked: String, held: String },
}

impl Widening {
    /// How `asked` is wider than `held`, if it is.
    pub fn of(held: &Scope, asked: &Scope) -> Option<Widening> {
        let pair = |a: &str, h: &str| (a.to_string(), h.to_string());
        if asked.audience != held.audience {
            let (asked, held) = pair(&asked.audience, &held.audience);
            return Some(Widening::Audience { asked, held });
        }
        if asked.action != held.action {
            let (asked, held) = pair(&asked.action, &held.action);
            return Some(Widening::Action { asked, held });
        }
        if !held.covers(asked) {
            let (asked, held) = pair(&asked.resource, &held.resource);
            return Some(Widening::Resource { asked, held });
        }
        None
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    NotFound(#[from] Missing),
    #[error("{caller} does not hold the {} role this call requires", .roles.join(" or "))]
    MissingRole {
        caller: SpiffeId,
        roles: Vec<String>,
    },
    /// Policy denied it; for a sub-agent the reason names it.
    #[error("{}", policy_reason(.reason, .sub_agent.as_ref()))]
    Policy {
        reason: String,
        policies: Vec<String>,
        sub_agent: Option<SpiffeId>,
    },

    // ---- tasks ----------------------------------------------------------------
    #[error("task {task} belongs to another agent")]
    NotOwner { task: TaskId },
    /// Another orchestrator tried to end the task as `to` (complete it, or
    /// report it deviated).
    #[error("task {task} was opened by {opened_by}; only that orchestrator may {}", ending(*.to))]
    NotOpener {
        task: TaskId,
        opened_by: SpiffeId,
        to: TaskState,
    },
    #[error(transparent)]
    TaskClosed(#[from] TaskClosed),
    /// The write refused a freeze that was lifted again since.
    #[error("task {task} changed while minting; retry")]
    ChangedWhileMinting { task: TaskId },
    #[error("workflow {} is no longer defined", quote(.workflow))]
    WorkflowUndefined { workflow: String },
    #[error("issuance is frozen for {} by {} since {}: {}", .0.target, .0.actor, rfc3339(.0.at), .0.reason)]
    Frozen(Freeze),

    // ---- mint -----------------------------------------------------------------
    /// A deviation.
    #[error("deviation: {}scope {scope} is not covered by the scopes declared for task {task}", if *.delegated { "delegated " } else { "" })]
    OutOfScope {
        task: TaskId,
        scope: Scope,
        delegated: bool,
    },
    /// A deviation.
    #[error("deviation: task {task} exceeded its budget of {max} tokens")]
    OutOfBudget { task: TaskId, max: u32 },
    #[error("task {task} or the caller's certificate has less than a second left")]
    NoTimeLeft { task: TaskId },

    // ---- delegation offers ----------------------------------------------------
    /// Someone else's token, stolen or replayed: a deviation.
    #[error("deviation: {presenter} presented a token bound to {holder} to delegate it")]
    ForeignToken {
        presenter: SpiffeId,
        holder: SpiffeId,
    },
    #[error(
        "parent_token is bound to another certificate of yours; mint a new token with the current one"
    )]
    OtherCertificate,
    #[error("parent token {jti} was revoked")]
    ParentRevoked { jti: Uuid },
    #[error("sub_agent: is the caller; a token is not delegated to its own holder")]
    SelfDelegation,
    #[error("{sub_agent} is already in this token's delegation chain")]
    InChain { sub_agent: SpiffeId },
    #[error("{sub_agent} does not hold the agent role, so it could never redeem a delegation")]
    NotAnAgent { sub_agent: SpiffeId },
    #[error(transparent)]
    Widens(#[from] Widening),
    #[error(
        "ttl_seconds: {ttl_seconds} s would outlive the parent token, which expires in {parent_left} s"
    )]
    OutlivesParent { ttl_seconds: u64, parent_left: i64 },
    #[error("delegation depth {depth} exceeds workflow {}'s limit of {max}", quote(.workflow))]
    TooDeep {
        depth: u32,
        workflow: String,
        max: u32,
    },
    #[error(
        "action {} needs step-up approval in workflow {}; step-up actions are not delegated",
        quote(.action),
        quote(.workflow)
    )]
    StepUpNotDelegated { action: String, workflow: String },
    #[error(
        "parent token {parent} already has {max} open delegations; wait until they are redeemed or lapse"
    )]
    TooManyOffers { parent: Uuid, max: u32 },

    // ---- redemptions ----------------------------------------------------------
    #[error("delegation {delegation} names another sub-agent; only it may redeem it")]
    NotTheSubAgent { delegation: Uuid },
    #[error("delegation {delegation} was already redeemed{}", at_time(.at))]
    AlreadyRedeemed {
        delegation: Uuid,
        at: Option<OffsetDateTime>,
    },
    #[error("delegation {delegation} lapsed{}", at_time(.at))]
    OfferLapsed {
        delegation: Uuid,
        at: Option<OffsetDateTime>,
    },
    #[error(
        "the parent token {parent} of delegation {delegation} (or a token above it) was revoked"
    )]
    AncestorRevoked { delegation: Uuid, parent: Uuid },
    #[error("delegation {delegation} or the caller's certificate has less than a second left")]
    OfferNoTimeLeft { delegation: Uuid },

    // ---- step-up --------------------------------------------------------------
    #[error(
        "approval {approval} for {scope} is still pending; wait for the decision with AwaitApproval instead of asking again"
    )]
    ApprovalPending { approval: Uuid, scope: Scope },
    #[error(
        "approval {approval} for {scope} was denied by {}: {}; asking again does not reopen it",
        .by.as_ref().map_or("?", SpiffeId::as_str),
        .reason.as_deref().unwrap_or("")
    )]
    ApprovalDenied {
        approval: Uuid,
        /// Boxed: the largest refusal would make every `Result` carry its size.
        scope: Box<Scope>,
        by: Option<SpiffeId>,
        reason: Option<String>,
    },
    /// More refused repeats than the workflow allows: a deviation.
    #[error(
        "deviation: task {task} repeated refused step-up requests {refusals} times; workflow {} allows {allowed}",
        quote(.workflow)
    )]
    RepeatedStepUp {
        task: TaskId,
        workflow: String,
        refusals: u32,
        allowed: u32,
    },
    #[error("the step-up approval for {scope} changed while it was asked for; ask again")]
    ApprovalChanged { scope: Scope },
    #[error(
        "approval {approval} is {state} now; it was spent or lapsed while this request was made"
    )]
    ApprovalSpent {
        approval: Uuid,
        state: super::ApprovalState,
    },
    #[error("approval {approval} was requested by another agent")]
    NotTheRequester { approval: Uuid },

    // ---- giving a token back --------------------------------------------------
    /// An agent may give back only a token it holds; the security team revokes
    /// any.
    #[error("token {jti} is held by {holder}, not by {presenter}; only its holder gives it back")]
    NotTheHolder {
        jti: Uuid,
        presenter: SpiffeId,
        holder: String,
    },
    #[error("{decider} holds the agent role; agents never decide step-up approvals")]
    AgentDecides { decider: SpiffeId },
    #[error("{decider} requested approval {approval}; nobody decides their own request")]
    OwnApproval { decider: SpiffeId, approval: Uuid },
    #[error("{why}; approval {approval} can no longer be used")]
    ApprovalUnusable { approval: Uuid, why: TaskClosed },
    #[error("{why}; its approvals can no longer be used")]
    ApprovalsUnusable { why: TaskClosed },
    #[error("approval {approval} lapsed at {} without a decision", rfc3339(*.at))]
    ApprovalLapsed { approval: Uuid, at: OffsetDateTime },
    #[error(
        "approval {approval} was already {state} by {} at {}",
        .by.as_ref().map_or("?", SpiffeId::as_str),
        .at.map(rfc3339).unwrap_or_default()
    )]
    ApprovalDecided {
        approval: Uuid,
        state: super::ApprovalState,
        by: Option<SpiffeId>,
        at: Option<OffsetDateTime>,
    },
}

impl Refusal {
    /// Whether the refusal is a deviation: its workflow's deviation response
    /// applies (by default the task is marked deviated and its tokens revoked).
    pub fn is_deviation(&self) -> bool {
        matches!(
            self,
            Refusal::OutOfScope { .. }
                | Refusal::OutOfBudget { .. }
                | Refusal::ForeignToken { .. }
                | Refusal::RepeatedStepUp { .. }
        )
    }
}

/// What ending a task as `to` is called in a refusal.
fn ending(to: TaskState) -> &'static str {
    match to {
        TaskState::Deviated => "report it deviated",
        _ => "complete it",
    }
}

fn policy_reason(reason: &str, sub_agent: Option<&SpiffeId>) -> String {
    match sub_agent {
        None => reason.to_string(),
        Some(a) => format!("sub-agent {a}: {reason}"),
    }
}

fn at_time(at: &Option<OffsetDateTime>) -> String {
    at.map(|t| format!(" at {}", rfc3339(t)))
        .unwrap_or_default()
}
