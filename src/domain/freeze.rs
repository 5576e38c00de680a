//! Freezes: the kill switch, stopping issuance to an agent, a workflow or all.
use super::SpiffeId;
use time::OffsetDateTime;

/// What a freeze stops issuance to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FreezeTarget {
    Agent(SpiffeId),
    Workflow(String),
    All,
}

impl FreezeTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            FreezeTarget::Agent(_) => "agent",
            FreezeTarget::Workflow(_) => "workflow",
            FreezeTarget::All => "all",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            FreezeTarget::Agent(a) => a.as_str(),
            FreezeTarget::Workflow(w) => w,
            FreezeTarget::All => "",
        }
    }

    pub fn from_parts(kind: &str, value: &str) -> Option<Self> {
        match (kind, value) {
            ("agent", v) => SpiffeId::parse(v).ok().map(FreezeTarget::Agent),
            ("workflow", v) if !v.is_empty() => Some(FreezeTarget::Workflow(v.into())),
            ("all", "") => Some(FreezeTarget::All),
            _ => None,
        }
    }
}

impl std::fmt::Display for FreezeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreezeTarget::All => f.write_str("all issuance"),
            t => write!(f, "{} {}", t.kind(), t.value()),
        }
    }
}

/// A standing freeze: the kill switch, until lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub target: FreezeTarget,
    pub reason: String,
    pub actor: String,
    pub at: OffsetDateTime,
}
