//! How long what the broker no longer needs is kept before it is pruned, and
//! the one rule that bounds it from below: revocation events outlive every
//! token they could concern.
use std::time::Duration;
use time::OffsetDateTime;

/// No token lives longer than this: the policy's `max_token_ttl_seconds` is
/// capped at it (and a token never outlives its task's deadline either).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Margin for clocks (replicas', verifiers') and verifiers' leeway.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(3600);

/// The shortest token retention: a token goes no sooner than two margins after
/// it expired, so no verifier still accepts it, and no revocation still marks
/// it (`revoke_tokens` leaves tokens a margin past their expiry alone).
pub const MIN_TOKEN_RETENTION: Duration = Duration::from_secs(2 * CLOCK_MARGIN.as_secs());

/// The shortest retention of lapsed offers and approvals.
pub const MIN_LAPSED_RETENTION: Duration = CLOCK_MARGIN;

/// The shortest revocation history a store may keep. An event concerns tokens
/// issued before it, which expire within [`MAX_TOKEN_TTL`] of their issue: a
/// verifier that replays the retained history from the start (a resync) knows
/// every revocation of every token still valid.
pub const MIN_REVOCATION_HISTORY: Duration =
    Duration::from_secs(MAX_TOKEN_TTL.as_secs() + CLOCK_MARGIN.as_secs());

/// What is kept, and for how long after it stopped mattering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Tokens, after they expire (revoked or not).
    pub tokens: Duration,
    /// Delegation offers never redeemed, after they lapse.
    pub offers: Duration,
    /// Step-up approvals never used, after they lapse (used ones go with their token).
    pub approvals: Duration,
    /// Ended tasks, after they end, once none of their tokens, offers or
    /// approvals is kept: at least [`Retention::min_tasks`], as long as those
    /// are kept (each lapses within [`MAX_TOKEN_TTL`] of its task's end).
    pub tasks: Duration,
    /// Revocation events, after they happened: at least [`MIN_REVOCATION_HISTORY`].
    pub revocations: Duration,
    /// Rows deleted per transaction: small, so no write waits long behind one.
    pub batch: u32,
}

/// A day.
const DAY: u64 = 24 * 3600;

impl Default for Retention {
    /// A month of what the admin queries answer from (`ListTokens`,
    /// `AuditAccess` read the tokens kept), a week of revocation history.
    fn default() -> Self {
        Retention {
            tokens: Duration::from_secs(30 * DAY),
            offers: Duration::from_secs(30 * DAY),
            approvals: Duration::from_secs(30 * DAY),
            tasks: Duration::from_secs(31 * DAY),
            revocations: Duration::from_secs(7 * DAY),
            batch: 500,
        }
    }
}

/// The kinds of row the broker prunes, in the order a pass prunes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prunable {
    Tokens,
    Offers,
    Approvals,
    Tasks,
    Revocations,
}

impl Prunable {
    pub const ALL: [Prunable; 5] = [
        Prunable::Tokens,
        Prunable::Offers,
        Prunable::Approvals,
        Prunable::Tasks,
        Prunable::Revocations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Prunable::Tokens => "tokens",
            Prunable::Offers => "offers",
            Prunable::Approvals => "approvals",
            Prunable::Tasks => "tasks",
            Prunable::Revocations => "revocations",
        }
    }
}

impl Retention {
    /// The shortest task retention with these: what is kept of a task lapses
    /// within [`MAX_TOKEN_TTL`] of its end, and is kept as long as configured
    /// after that. (Shorter, a task would only wait for its rows, and every
    /// pass would read it again.)
    pub fn min_tasks(&self) -> Duration {
        self.tokens
            .max(self.offers)
            .max(self.approvals)
            .saturating_add(MAX_TOKEN_TTL)
    }

    /// How long rows of `kind` are kept: as configured (the configuration is
    /// refused below the least each may be), but revocation events never less
    /// than [`MIN_REVOCATION_HISTORY`].
    pub fn keep(&self, kind: Prunable) -> Duration {
        match kind {
            Prunable::Tokens => self.tokens,
            Prunable::Offers => self.offers,
            Prunable::Approvals => self.approvals,
            Prunable::Tasks => self.tasks,
            Prunable::Revocations => self.revocations.max(MIN_REVOCATION_HISTORY),
        }
    }

    /// Rows of `kind` that stopped mattering before this time are pruned at `now`.
    pub fn cutoff(&self, kind: Prunable, now: OffsetDateTime) -> OffsetDateTime {
        let keep = time::Duration::try_from(self.keep(kind)).unwrap_or(time::Duration::MAX);
        now.checked_sub(keep)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .max(OffsetDateTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_history_outlives_the_longest_token_whatever_is_configured() {
        let r = Retention {
            revocations: Duration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(r.keep(Prunable::Revocations), MIN_REVOCATION_HISTORY);
        assert!(MIN_REVOCATION_HISTORY > MAX_TOKEN_TTL);
        let now = OffsetDateTime::now_utc();
        assert!(r.cutoff(Prunable::Revocations, now) < now - MAX_TOKEN_TTL);
        assert_eq!(
            r.cutoff(Prunable::Tokens, now),
            now - time::Duration::days(30)
        );
    }

    #[test]
    fn an_ended_task_must_be_kept_while_anything_of_it_may_be() {
        let r = Retention {
            tokens: Duration::from_secs(7200),
            ..Default::default()
        };
        assert_eq!(r.min_tasks(), Duration::from_secs(30 * DAY) + MAX_TOKEN_TTL);
        assert!(Retention::default().tasks >= Retention::default().min_tasks());
    }

    #[test]
    fn a_retention_longer_than_time_itself_prunes_nothing() {
        let r = Retention {
            tokens: Duration::MAX,
            ..Default::default()
        };
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            r.cutoff(Prunable::Tokens, now),
            OffsetDateTime::UNIX_EPOCH,
            "nothing expired before 1970"
        );
    }
}
